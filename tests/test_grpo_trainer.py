"""GRPOTrainer end to end on a tiny real model (2-layer Llama from a config, SmolLM2's tokenizer).

Generation here is ``HFGenerator`` (the vLLM path has its own tests in test_generation.py).
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from conftest import tiny_causal_lm
from transformers import AutoTokenizer, LlamaForCausalLM

from rlvr.environments.base import Task
from rlvr.generation import HFGenerator
from rlvr.models import resolve_model
from rlvr.rewards import FunctionReward, Sample, isolated
from rlvr.trainers import online
from rlvr.trainers.grpo_config import GRPOConfig
from rlvr.trainers.grpo_trainer import GRPOTrainer
from rlvr.trainers.rollouts import new_timing

pytestmark = pytest.mark.slow


def tiny_model(tokenizer, seed: int = 0):
    return tiny_causal_lm(tokenizer, seed=seed)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


TASKS = [
    Task([{"role": "user", "content": f"Say something about {w}."}], w)
    for w in ["cats", "rain", "trees", "bread", "stone", "wind"]
]


def length_reward(sample: Sample) -> float:
    """Rewards short completions: a signal a random tiny model can climb."""
    return 1.0 if len(sample.completion) % 3 == 0 else 0.0


def make_trainer(tokenizer, tmp_path, reward=None, **overrides) -> GRPOTrainer:
    values = {
        "generator": "hf",
        "max_steps": 3,
        "num_generations": 4,
        "generation_batch_size": 8,
        "max_completion_length": 8,
        "micro_batch_size": 4,
        "learning_rate": 1e-2,
        "eval_max_tasks": 2,
        "output_dir": str(tmp_path),
        "progress_bar": False,
        "system_prompt": None,
        "bf16": False,
    }
    values.update(overrides)
    return GRPOTrainer(
        GRPOConfig(**values),
        model=tiny_model(tokenizer),
        reward=reward or FunctionReward(length_reward, name="len3"),
        train_tasks=TASKS,
        eval_tasks=TASKS[:2],
        tokenizer=tokenizer,
    )


REQUIRED = [
    "step",
    "reward_mean",
    "reward_std",
    "accuracy",
    "completion_len_mean",
    "step_time_s",
    "generation_time_s",
    "reward_time_s",
    "frac_zero_std_groups",
    "n_timeout",
    "n_error",
    "n_abstain",
    "loss",
    "grad_norm",
    "is_ratio_mean",
    "is_ratio_p5",
    "is_ratio_p95",
    "is_frac_capped",
    "clip_ratio_low",
    "clip_ratio_high",
    "kl",
    "train_tokens",
    "useful_tokens",
]


def test_training_changes_weights_and_logs_every_metric(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, beta=0.05)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no weight changed"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in REQUIRED:
        assert all(key in r for r in rows), f"metric {key} missing"
    # HF generation and the trainer run the same fp32 model: importance ratios ~ 1
    assert abs(rows[0]["is_ratio_mean"] - 1) < 1e-3
    # useful = each distinct prompt once + the real completion tokens; the packed forward computes
    # little more than that (padding only at the end of its rows)
    for r in rows:
        assert 0 < r["useful_tokens"] <= r["train_tokens"] < 1.5 * r["useful_tokens"]
        assert r["useful_tokens"] >= r["completion_len_mean"] * 8
    config = json.loads((tmp_path / "config.json").read_text())
    resolved = config["resolved"]
    assert config["trainer"] == "grpo" and {k: resolved[k] for k in ("trainer_precision", "generator", "engine_dtype")} == {
        "trainer_precision": "fp32", "generator": "hf", "engine_dtype": "the trainer's model",
    }
    assert resolved["precision"]["train_bf16"] is False and resolved["precision"]["source"]
    assert all(0 < r["mfu"] < 1 for r in rows)
    assert set(summary) >= {"before", "after"} and (tmp_path / "eval.json").exists()
    assert (tmp_path / "final" / "config.json").exists() and (tmp_path / "final" / "tokenizer.json").exists()


def test_resume_equals_uninterrupted(tokenizer, tmp_path):
    """Run 4 steps straight; run 2 steps (checkpoint at 2), then a fresh trainer resumes to 4.
    Same rollouts, losses, gradient norms and final weights, bit for bit."""
    kw = {"max_steps": 4, "eval_before": False, "eval_after": False, "save_final_model": False}
    full = make_trainer(tokenizer, tmp_path / "full", **kw)
    full.train()
    first = make_trainer(tokenizer, tmp_path / "part", save_steps=2, **kw)
    first.output_dir.mkdir(parents=True)
    first.training_step()  # interrupted after step 2 (the checkpoint is written at step 2)
    first.training_step()
    assert (tmp_path / "part" / "checkpoint-2" / "trainer_state.json").exists()
    resumed = make_trainer(tokenizer, tmp_path / "part", save_steps=2, **kw)
    resumed.resume(tmp_path / "part")
    assert resumed.step == 2
    resumed.train()

    def lines(p):
        return [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]

    a, b = lines(tmp_path / "full"), lines(tmp_path / "part")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert (ra["reward_mean"], ra["completion_len_mean"]) == (rb["reward_mean"], rb["completion_len_mean"])
        for key in ("loss", "grad_norm"):
            assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def _sleepy(sample: Sample) -> float:
    import time as _t

    if sample.completion and len(sample.completion) % 2 == 0:
        _t.sleep(30)
    return 1.0 if len(sample.completion) % 3 == 0 else 0.0


def test_reward_timeouts_do_not_stop_training(tokenizer, tmp_path):
    reward = isolated(FunctionReward(_sleepy, name="sleepy"), timeout_s=1.0, max_workers=2)
    try:
        trainer = make_trainer(
            tokenizer, tmp_path, reward=reward, max_steps=2, eval_before=False, eval_after=False, save_final_model=False
        )
        start = time.perf_counter()
        trainer.train()
    finally:
        reward.close()
    assert time.perf_counter() - start < 60
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert sum(r["n_timeout"] for r in rows) > 0
    assert all(r["n_ok"] + r["n_timeout"] + r["n_error"] + r["n_abstain"] == 8 for r in rows)


def test_lora_trains_adapters_only_and_saves_a_merged_model(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, max_steps=2, lora_r=4, eval_before=False, eval_after=False)
    base_before = {k: v.clone() for k, v in trainer.model.get_base_model().state_dict().items() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    trainer.train()
    for k, v in trainer.model.get_base_model().state_dict().items():
        if k in base_before:
            assert torch.equal(v, base_before[k]), k
    assert any(not torch.equal(v, dict(trainer.model.named_parameters())[k]) for k, v in lora_before.items())
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "final")
    assert not any("lora" in k for k in merged.state_dict())
    # merged = base + B @ A * scale: the saved weights differ from the base where LoRA learned something
    base = {k.replace(".base_layer.", "."): v for k, v in base_before.items()}
    changed = [k for k, v in merged.state_dict().items() if k in base and not torch.equal(v, base[k])]
    assert any("proj" in k for k in changed) and "model.embed_tokens.weight" not in changed


class PerPromptGenerator(HFGenerator):
    """``transformers`` generation that seeds prompt i of a call ``seed + i * n`` on its own, as vLLM does:
    each prompt's completions then do not depend on which other prompts share the call."""

    def generate(self, prompts, n, sampling):
        out = []
        for i, p in enumerate(prompts):
            gens = super().generate([p], n, dataclasses.replace(sampling, seed=sampling.seed + i * n))
            out.extend(dataclasses.replace(g, prompt_index=i) for g in gens)
        return out


def test_reward_overlap_chunks_change_nothing_but_timing(tokenizer, tmp_path):
    """Scoring chunk 1 while chunk 2 generates is the same computation: with a per-prompt seeded
    generator, 2 chunks train bit-identically to 1."""

    def run(chunks):
        out = tmp_path / f"chunks{chunks}"
        trainer = make_trainer(
            tokenizer, out, max_steps=2, generation_batch_size=16, reward_overlap_chunks=chunks,
            eval_before=False, eval_after=False, save_final_model=False,
        )  # fmt: skip
        trainer.generator = PerPromptGenerator(trainer.model, tokenizer)
        trainer.train()
        return trainer, [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    one, rows1 = run(1)
    two, rows2 = run(2)
    for a, b in zip(rows1, rows2):
        for key in ("reward_mean", "completion_len_mean", "loss", "grad_norm"):
            assert a[key] == b[key], (key, a[key], b[key])
    for k, v in one.model.state_dict().items():
        assert torch.equal(v, two.model.state_dict()[k]), k


def collect(trainer, metrics):
    return online.collect_groups(trainer.generator, trainer.data, trainer.config, trainer.step, trainer.processes, metrics, new_timing())


def test_dynamic_sampling_drops_tied_groups(tokenizer, tmp_path):
    """Groups whose rewards all tie carry no signal: with dynamic sampling the batch keeps only groups
    with a reward spread, drawing more prompts, unless the rounds run out."""
    trainer = make_trainer(tokenizer, tmp_path, dynamic_sampling=True, max_dynamic_sampling_rounds=4)
    for _ in range(3):
        metrics: dict = {}
        batch = collect(trainer, metrics)
        assert 1 <= metrics["dynamic_sampling_rounds"] <= 4
        groups = [batch[i : i + 4] for i in range(0, len(batch), 4)]
        if metrics["dynamic_sampling_rounds"] < 4:  # it stopped early: it found enough untied groups
            assert len(groups) == 2
            assert all(len({r.outcome.score for r in g}) > 1 for g in groups)
        trainer.step += 1


def test_num_iterations_takes_several_optimizer_steps_per_batch(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, max_steps=4, num_iterations=2, eval_before=False, eval_after=False, save_final_model=False)
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # steps 1-2 train on one generation batch, steps 3-4 on the next
    assert rows[0]["reward_mean"] == rows[1]["reward_mean"] and rows[0]["completion_len_mean"] == rows[1]["completion_len_mean"]
    assert rows[1]["generation_time_s"] == 0.0 and rows[0]["generation_time_s"] > 0
    # the second iteration's ratio is no longer 1: the weights moved after the first step
    assert rows[0]["clip_ratio_low"] == rows[0]["clip_ratio_high"] == 0.0
    assert rows[0]["loss"] != rows[1]["loss"]


def test_masked_truncated_completions_give_no_gradient(tokenizer, tmp_path):
    """max_completion_length=8 with a model that never stops: every completion is truncated, so with
    mask_truncated_completions the loss is 0 and no weight gets a gradient."""
    trainer = make_trainer(tokenizer, tmp_path, mask_truncated_completions=True)
    metrics: dict = {}
    batch = collect(trainer, metrics)
    assert all(r.generation.finish_reason == "length" for r in batch), "a completion stopped; the test proves nothing"
    trainer._train_on(batch, metrics, new_timing())
    assert trainer.history[-1]["loss"] == 0.0
    assert all(p.grad is None or not p.grad.any() for p in trainer.model.parameters())


def test_gradient_checkpointing_with_lora_trains(tokenizer, tmp_path):
    trainer = make_trainer(
        tokenizer,
        tmp_path,
        max_steps=1,
        gradient_checkpointing=True,
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
        eval_before=False,
        eval_after=False,
        save_final_model=False,
    )
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert before and any(not torch.equal(v, after[k]) for k, v in before.items())
    assert torch.isfinite(torch.tensor(trainer.history[-1]["loss"]))


def test_system_prompt_reaches_the_policy_the_reward_and_the_evaluation(tokenizer, tmp_path):
    """The system prompt is applied once to every task: a prompt-aware reward sees the prompt the policy answered."""
    seen = []

    def record(sample: Sample) -> float:
        seen.append(sample.prompt)
        return 0.0

    trainer = make_trainer(
        tokenizer, tmp_path, reward=FunctionReward(record, name="record"), system_prompt="Be brief.", max_steps=1,
        save_final_model=False, eval_after=False,
    )  # fmt: skip
    trainer.train()
    assert len(seen) == 2 + 8  # 2 held-out tasks (greedy), then 8 training completions
    for prompt in seen:
        assert prompt[0] == {"role": "system", "content": "Be brief."} and prompt[1]["role"] == "user"
    # the generator is given the tasks' prompts, which are these
    assert all(t.prompt[0]["content"] == "Be brief." for t in trainer.train_tasks + trainer.eval_tasks)
