"""Rows whose gradient is exactly 0 are not computed, and the step is the same without them.

A GRPO group whose completions all score the same has advantage 0 on every row; with no KL
term each such row's loss, and so its gradient, is exactly 0. RLOO's loss likewise counts only
sequences with an advantage. ``online.rows_to_train`` leaves those rows out of the forward and
backward passes; the normalisers (sequences, tokens, bnpo's per-micro-batch counts) still count
them, and a step with no row left still moves AdamW as zero gradients would. The reference
here is the same trainer computing every row (``skip_zero_advantage=False``), on the same
batch, from the same weights.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.environments.base import Task
from rlvr.generation import Generation
from rlvr.models import resolve_model
from rlvr.rewards import FunctionReward, Outcome, Status
from rlvr.trainers import online
from rlvr.trainers.grpo_config import GRPOConfig
from rlvr.trainers.grpo_trainer import GRPOTrainer
from rlvr.trainers.rloo_config import RLOOConfig
from rlvr.trainers.rloo_trainer import RLOOTrainer
from rlvr.trainers.rollouts import Rollout, new_timing


def test_rows_to_train_drops_rows_and_empty_chunks():
    train = torch.tensor([True, False, False, False, True, True, False])
    assert online.rows_to_train(train, 3, [5] * 7, world_size=1) == [[0], [4, 5]]
    assert online.rows_to_train(torch.ones(5, dtype=torch.bool), 2, [1] * 5, 1) == [[0, 1], [2, 3], [4]]
    # nothing to compute: one process skips the pass entirely ...
    assert online.rows_to_train(torch.zeros(4, dtype=torch.bool), 2, [3, 1, 2, 5], 1) == []
    # ... several must each join the all-reduce: the shortest row, whose gradient is 0
    assert online.rows_to_train(torch.zeros(4, dtype=torch.bool), 2, [3, 1, 2, 5], 2) == [[1]]
    assert online.rows_to_train(torch.zeros(0, dtype=torch.bool), 2, [], 2) == []


def test_loss_token_counts_match_the_masks():
    task = Task([{"role": "user", "content": "?"}])
    batch = [
        Rollout(task, Generation("", [1], [2, 3, 4], finish_reason="stop"), Outcome(1.0, Status.OK)),
        Rollout(task, Generation("", [1], [2, 3], finish_reason="length"), Outcome(1.0, Status.OK)),
        Rollout(task, Generation("", [1], [], finish_reason="stop"), Outcome(1.0, Status.OK)),
    ]
    assert online.loss_token_counts(batch, False).tolist() == [3.0, 2.0, 0.0]
    assert online.loss_token_counts(batch, True).tolist() == [3.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------- trainers


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


TASKS = [Task([{"role": "user", "content": f"Name a {w}."}], w) for w in ["cat", "tree", "stone", "river"]]


def make_batch(scores: list[list[float]], vocab: int, seed: int = 0) -> list[Rollout]:
    """Groups of 4 random completions (lengths 1-9, some truncated) with the given scores and
    sampler log-probs near the trainer's."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g, group in enumerate(scores):
        prompt = torch.randint(1, vocab, (int(torch.randint(3, 12, (1,), generator=gen)),), generator=gen).tolist()
        for k, score in enumerate(group):
            n = int(torch.randint(1, 10, (1,), generator=gen))
            completion = torch.randint(1, vocab, (n,), generator=gen).tolist()
            logprobs = (-torch.rand(n, generator=gen) * 0.1 - 10.5).tolist()
            finish = "length" if (g + k) % 5 == 0 else "stop"
            out.append(Rollout(TASKS[g % 4], Generation("", prompt, completion, logprobs, finish, g), Outcome(score, Status.OK)))
    return out


def make(cls, config_cls, tokenizer, tmp_path, skip: bool, **overrides):
    out = tmp_path / ("skip" if skip else "all")
    out.mkdir()
    values = {
        "generator": "hf",
        "max_steps": 10,
        "num_generations": 4,
        "generation_batch_size": 12,
        "max_completion_length": 9,
        "micro_batch_size": 3,  # chunks straddle groups
        "learning_rate": 1e-3,
        "eval_before": False,
        "eval_after": False,
        "output_dir": str(out),
        "progress_bar": False,
        "system_prompt": None,
        "bf16": False,
        "skip_zero_advantage": skip,
    }
    values.update(overrides)
    return cls(
        config_cls(**values),
        model=tiny_causal_lm(tokenizer, seed=0),
        reward=FunctionReward(lambda s: 0.0, name="zero"),
        train_tasks=TASKS,
        eval_tasks=TASKS[:1],
        tokenizer=tokenizer,
    )


MIXED = [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0], [0.5, 0.0, 1.0, 0.25]]  # one tied group
TIED = [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]]  # nothing to learn


def run_steps(trainer, batches):
    rows = []
    for b in batches:
        trainer._train_on(b, {}, new_timing())
        rows.append(trainer.history[-1])
    return rows


def assert_same_weights(a, b, tol: float = 1e-6):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    for name in sa:
        diff = (sa[name] - sb[name]).abs().max().item()
        assert diff <= tol * max(1.0, sa[name].abs().max().item()), f"{name} differs by {diff}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,overrides",
    [
        ("grpo", {"loss_type": "dapo"}),
        ("grpo", {"loss_type": "grpo", "mask_truncated_completions": True}),
        ("grpo", {"loss_type": "dr_grpo"}),
        ("grpo", {"loss_type": "bnpo", "num_iterations": 2}),
        ("grpo", {"loss_type": "dapo", "scale_rewards": "batch", "importance_sampling_correction": False}),
        ("rloo", {}),
        ("rloo", {"beta": 0.1, "num_iterations": 2}),
        ("rloo", {"normalize_advantages": True, "mask_truncated_completions": True}),
    ],
)
def test_skipping_gives_the_same_steps(tokenizer, tmp_path, method, overrides):
    cls, config_cls = (GRPOTrainer, GRPOConfig) if method == "grpo" else (RLOOTrainer, RLOOConfig)
    skip = make(cls, config_cls, tokenizer, tmp_path, True, **overrides)
    full = make(cls, config_cls, tokenizer, tmp_path, False, **overrides)
    vocab = skip.model.config.vocab_size
    # a step with signal, then one with none (AdamW still moves on its momentum), then signal again
    batches = [make_batch(MIXED, vocab, 0), make_batch(TIED, vocab, 1), make_batch(MIXED, vocab, 2)]
    skipped, computed = run_steps(skip, batches), run_steps(full, batches)
    assert_same_weights(skip, full)
    for s, c in zip(skipped, computed):
        assert s["loss"] == pytest.approx(c["loss"], rel=1e-5, abs=1e-8)
        assert s["grad_norm"] == pytest.approx(c["grad_norm"], rel=1e-4, abs=1e-8)
        assert c["skipped_rows"] == 0
        assert s["train_tokens"] <= c["train_tokens"]
    # (RLOO's KL is part of the reward, and whitening moves a tied group's advantages off 0)
    if overrides.get("beta", 0) == 0:
        if not overrides.get("normalize_advantages"):
            assert skipped[0]["skipped_rows"] >= 4  # the tied group at least
        assert skipped[1]["skipped_rows"] == 12 and skipped[1]["train_tokens"] == 0
    if method == "grpo":
        for s, c in zip(skipped, computed):  # the clip ratios count every row's tokens
            assert s["clip_ratio_low"] == pytest.approx(c["clip_ratio_low"], abs=1e-9)
            assert s["clip_ratio_high"] == pytest.approx(c["clip_ratio_high"], abs=1e-9)


@pytest.mark.slow
def test_kl_term_rows_are_always_computed(tokenizer, tmp_path):
    """With beta > 0 every GRPO row carries a KL gradient: nothing may be skipped."""
    trainer = make(GRPOTrainer, GRPOConfig, tokenizer, tmp_path, True, beta=0.1)
    vocab = trainer.model.config.vocab_size
    _, row = run_steps(trainer, [make_batch(MIXED, vocab, 0), make_batch(TIED, vocab, 1)])  # the policy moves off the reference first
    assert row["skipped_rows"] == 0 and row["train_tokens"] > 0 and row["grad_norm"] > 0
