"""RLOO: the leave-one-out baseline, the KL folded into the reward, the sequence-level clip,
and the trainer on a tiny real model (generation with ``transformers``)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.environments.base import Task
from rlvr.models import resolve_model
from rlvr.rewards import FunctionReward, Outcome, Sample
from rlvr.trainers.config import ConfigError
from rlvr.trainers.rloo_config import RLOOConfig
from rlvr.trainers.rloo_trainer import (
    RLOOTrainer,
    kl_penalized_rewards,
    normalize_advantages,
    rloo_advantages,
    sequence_clipped_loss,
    sequence_importance_weights,
)

# --------------------------------------------------------------------------- pure math


def test_leave_one_out_baseline_by_hand():
    """Group 1: rewards 1, 0, 0, 1 (all OK). Baselines are the means of the other three:
    1 - (0+0+1)/3 = 2/3, 0 - (1+0+1)/3 = -2/3, -2/3, 2/3.
    Group 2: rewards 1, 0.5, x, 0 with the third an ERROR: it gets 0 and is in no baseline;
    1 - (0.5+0)/2 = 0.75, 0.5 - (1+0)/2 = 0, 0 - (1+0.5)/2 = -0.75.
    Group 3: only one OK outcome: no baseline exists, every advantage is 0."""
    rewards = torch.tensor([1, 0, 0, 1, 1, 0.5, 7.0, 0, 1, 3.0, 3.0, 3.0])
    valid = torch.tensor([1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 0], dtype=torch.bool)
    adv, usable = rloo_advantages(rewards, valid, 4)
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.75, 0.0, 0.0, -0.75, 0, 0, 0, 0]
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-6)
    assert usable.tolist() == [True, True, False]


def test_leave_one_out_equals_scaled_centering():
    """A_i = r_i - (S - r_i)/(k-1) = k/(k-1) (r_i - S/k): the leave-one-out advantage is the group-centred
    reward scaled by k/(k-1)."""
    torch.manual_seed(0)
    r = torch.rand(5 * 6)
    adv, _ = rloo_advantages(r, torch.ones(30, dtype=torch.bool), 6)
    g = r.view(5, 6)
    assert torch.allclose(adv.view(5, 6), (g - g.mean(1, keepdim=True)) * 6 / 5, atol=1e-6)


def test_kl_is_folded_into_the_reward_by_hand():
    """Sequence 1: score 1, log-ratios old - ref = 0.1, -0.2, (masked 5.0): KL = -0.1, reward = 1 - 0.5 * (-0.1) = 1.05.
    Sequence 2: score 0, log-ratios 0.3, 0.3, 0.3: KL = 0.9, reward = 0 - 0.5 * 0.9 = -0.45.
    With reward_clip_range [0, 0.5] the scores are clamped first: 0.5 + 0.05 = 0.55 and -0.45."""
    scores = torch.tensor([1.0, 0.0])
    old = torch.tensor([[0.1, -0.2, 5.0], [0.3, 0.3, 0.3]])
    ref = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards, kl = kl_penalized_rewards(scores, old, ref, mask, beta=0.5)
    assert torch.allclose(kl, torch.tensor([-0.1, 0.9]), atol=1e-6)
    assert torch.allclose(rewards, torch.tensor([1.05, -0.45]), atol=1e-6)
    clipped, _ = kl_penalized_rewards(scores, old, ref, mask, beta=0.5, clip_range=[0.0, 0.5])
    assert torch.allclose(clipped, torch.tensor([0.55, -0.45]), atol=1e-6)
    plain, zero = kl_penalized_rewards(scores, None, None, mask, beta=0.0)
    assert torch.equal(plain, scores) and not zero.any()


def test_normalize_advantages_over_counted_entries_only():
    """Counted entries 1, 2, 3 (the 4th is excluded): mean 2, unbiased std 1 -> -1, 0, 1 (eps 1e-4 aside); the excluded stays 0."""
    a = torch.tensor([1.0, 2.0, 3.0, 10.0])
    out = normalize_advantages(a, torch.tensor([1.0, 1.0, 1.0, 0.0]), eps=0.0)
    assert torch.allclose(out, torch.tensor([-1.0, 0.0, 1.0, 0.0]), atol=1e-6)
    # the whole step's statistics (two processes' shares) give the same values as one tensor
    total = (3.0, 6.0, 14.0)
    assert torch.allclose(normalize_advantages(a[:2], torch.ones(2), total, eps=0.0), torch.tensor([-1.0, 0.0]), atol=1e-6)


def test_sequence_clip_by_hand():
    """Sequence log-prob sums move by log(1.5), log(0.5), log(1.1), log(0.7) with advantages 1, -1, -2, 1 and
    epsilon 0.2: ratios 1.5 (A>0: clipped to 1.2 -> loss -1.2), 0.5 (A<0: clipped to 0.8 -> loss 0.8),
    1.1 (inside: loss 2.2), 0.7 (A>0, below the band: min(0.7, 0.8) = 0.7, not clipped -> loss -0.7)."""
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7]))
    adv = torch.tensor([1.0, -1.0, -2.0, 1.0])
    loss, low, high = sequence_clipped_loss(new, old, adv, 0.2, 0.2)
    assert torch.allclose(loss, torch.tensor([-1.2, 0.8, 2.2, -0.7]), atol=1e-6)
    assert low.tolist() == [False, True, False, False] and high.tolist() == [True, False, False, False]


def test_sequence_importance_weights_are_capped():
    """Sums of trainer log-probs 0 and log 3 against the sampler's 0 and 0: raw ratios 1 and 3, capped at 2."""
    w, raw = sequence_importance_weights(torch.tensor([0.0, math.log(3)]), torch.zeros(2), cap=2.0)
    assert torch.allclose(raw, torch.tensor([1.0, 3.0])) and torch.allclose(w, torch.tensor([1.0, 2.0]))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"num_generations": 1, "generation_batch_size": 4}, "num_generations"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"beta": -1}, "beta"),
        ({"num_iterations": 0}, "num_iterations"),
        ({"reward_clip_range": [1.0, 0.0]}, "reward_clip_range"),
        ({"generation_batch_size": 12}, "generation_batch_size"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"RLOOConfig.{field}"):
        RLOOConfig(**overrides)


# --------------------------------------------------------------------------- trainer

TASKS = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in ["cats", "rain", "trees", "bread", "stone", "wind"]]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def length_reward(sample: Sample) -> float:
    return 1.0 if len(sample.completion) % 3 == 0 else 0.0


def make_trainer(tokenizer, tmp_path, reward=None, **overrides) -> RLOOTrainer:
    values = {
        "generator": "hf", "max_steps": 3, "num_generations": 4, "generation_batch_size": 8, "max_completion_length": 8,
        "micro_batch_size": 4, "learning_rate": 1e-2, "eval_max_tasks": 2, "output_dir": str(tmp_path),
        "progress_bar": False, "system_prompt": None, "bf16": False,
    }  # fmt: skip
    values.update(overrides)
    return RLOOTrainer(
        RLOOConfig(**values),
        model=tiny_causal_lm(tokenizer),
        reward=reward or FunctionReward(length_reward, name="len3"),
        train_tasks=TASKS,
        eval_tasks=TASKS[:2],
        tokenizer=tokenizer,
    )


def lines(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


REQUIRED = [
    "step", "reward_mean", "accuracy", "completion_len_mean", "loss", "grad_norm", "clip_ratio_low", "clip_ratio_high",
    "kl", "kl_penalized_reward_mean", "entropy", "approx_kl_old", "advantage_mean", "advantage_std", "frac_usable_groups",
    "is_ratio_mean", "train_tokens", "useful_tokens", "step_time_s", "generation_time_s", "n_ok", "n_error",
]  # fmt: skip


@pytest.mark.slow
def test_training_changes_weights_and_logs_every_metric(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, beta=0.05, num_iterations=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items()), "no weight changed"
    rows = lines(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in REQUIRED:
        assert all(key in r for r in rows), f"metric {key} missing"
    assert all(r["entropy"] > 0 for r in rows)
    assert json.loads((tmp_path / "config.json").read_text())["trainer"] == "rloo"
    assert set(summary) >= {"before", "after"} and (tmp_path / "final" / "config.json").exists()


@pytest.mark.slow
def test_resume_equals_uninterrupted(tokenizer, tmp_path):
    kw = {"max_steps": 4, "eval_before": False, "eval_after": False, "save_final_model": False, "num_iterations": 2}
    full = make_trainer(tokenizer, tmp_path / "full", **kw)
    full.train()
    first = make_trainer(tokenizer, tmp_path / "part", save_steps=2, **kw)
    first.output_dir.mkdir(parents=True)
    first.training_step()  # two optimizer steps (num_iterations=2): the checkpoint is written at step 2
    assert (tmp_path / "part" / "checkpoint-2" / "trainer_state.json").exists()
    resumed = make_trainer(tokenizer, tmp_path / "part", save_steps=2, **kw)
    resumed.resume(tmp_path / "part")
    assert resumed.step == 2
    resumed.train()
    a, b = lines(tmp_path / "full"), lines(tmp_path / "part")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "completion_len_mean", "loss", "grad_norm"):
            assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


class FailingSome:
    """Scores by length, but every completion whose length is even is an ERROR or a TIMEOUT."""

    name = "failing_some"

    def score(self, samples):
        out = []
        for s in samples:
            n = len(s.completion)
            if n % 2 == 0:
                out.append(Outcome.timeout("too slow") if n % 4 == 0 else Outcome.error("checker crashed"))
            else:
                out.append(Outcome.ok(1.0 if n % 3 == 0 else 0.0))
        return out


@pytest.mark.slow
def test_failed_rewards_are_left_out_of_baselines_and_loss(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, reward=FailingSome(), max_steps=2, eval_before=False, eval_after=False,
                           save_final_model=False)  # fmt: skip
    trainer.train()
    rows = lines(tmp_path)
    assert len(rows) == 2 and sum(r["n_timeout"] + r["n_error"] for r in rows) > 0
    assert all(r["n_ok"] + r["n_timeout"] + r["n_error"] + r["n_abstain"] == 8 for r in rows)
    # the advantages of the step, recomputed: a failed completion has 0 and is in no baseline
    scores = torch.tensor([1.0, 0.0, 5.0, 0.0])
    adv, _ = rloo_advantages(scores, torch.tensor([True, True, False, True]), 4)
    assert adv[2] == 0 and torch.allclose(adv[:2], torch.tensor([1.0, -0.5]))


@pytest.mark.slow
def test_lora_reference_is_the_adapter_disabled_model(tokenizer, tmp_path):
    """Under LoRA no second model is loaded; at step 1 the adapters are zero, so KL to the reference is exactly 0."""
    trainer = make_trainer(tokenizer, tmp_path, lora_r=4, beta=0.1, max_steps=2, eval_before=False, eval_after=False,
                           save_final_model=False)  # fmt: skip
    assert trainer.ref_model is None
    trainer.train()
    rows = lines(tmp_path)
    assert abs(rows[0]["kl"]) < 1e-6 and rows[1]["kl"] != 0.0
