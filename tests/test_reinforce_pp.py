"""REINFORCE++ (experimental): per-token KL in the reward, returns, global whitening, and the
trainer on a tiny real model; the experimental layer warns on import and registers through
the ``rlvr.trainers`` entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import subprocess_env, tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.environments.base import Task
from rlvr.models import resolve_model
from rlvr.rewards import FunctionReward, Outcome, Sample
from rlvr.trainers.config import ConfigError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from rlvr.experimental.reinforce_pp_config import ReinforcePPConfig
    from rlvr.experimental.reinforce_pp_trainer import (
        ReinforcePPTrainer,
        discounted_returns,
        global_whiten,
        group_mean_baseline,
        token_rewards,
    )


def test_token_rewards_by_hand():
    """Sequence 1 (3 tokens, score 1): KL log-ratios 0.1, 0.2, -0.1 with beta 0.5 -> -0.05, -0.1, 0.05 + 1 = 1.05.
    Sequence 2 (2 tokens of 3, score 0): log-ratios 0.4, 0.4 -> -0.2, -0.2, and 0 on the padding."""
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    old = torch.tensor([[0.1, 0.2, -0.1], [0.4, 0.4, 9.0]])
    r = token_rewards(torch.tensor([1.0, 0.0]), mask, 0.5, old, torch.zeros(2, 3))
    assert torch.allclose(r, torch.tensor([[-0.05, -0.1, 1.05], [-0.2, -0.2, 0.0]]), atol=1e-6)
    assert torch.equal(token_rewards(torch.tensor([2.0, 3.0]), mask, 0.0), torch.tensor([[0.0, 0, 2], [0, 3, 0]]))


def test_discounted_returns_match_a_python_loop():
    torch.manual_seed(0)
    rewards = torch.randn(4, 7)
    mask = torch.ones(4, 7)
    for b, n in enumerate([7, 5, 1, 0]):
        mask[b, n:] = 0
    for gamma in (1.0, 0.9, 0.0):
        got = discounted_returns(rewards * mask, mask, gamma)
        for b in range(4):
            g = 0.0
            for t in reversed(range(7)):
                g = (rewards[b, t].item() + gamma * g) if mask[b, t] else 0.0
                assert abs(got[b, t].item() - g) < 1e-5, (gamma, b, t)


def test_global_whitening_uses_the_whole_step():
    """Masked values 1, 2, 3 (and 100 outside the mask): mean 2, unbiased std 1 -> -1, 0, 1; the outside is 0.
    Split in two shares with the step's totals (3, 6, 14), each share gives the same values."""
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert torch.allclose(global_whiten(x, m), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(global_whiten(x[1:], m[1:], (3.0, 6.0, 14.0)), torch.tensor([[1.0, 0.0]]), atol=1e-6)


def test_group_mean_baseline_skips_failed_outcomes():
    """Group (1, 0, [error], 0.5): mean of the OK ones 0.5 -> 0.5, -0.5, 0, 0."""
    out = group_mean_baseline(torch.tensor([1.0, 0.0, 9.0, 0.5]), torch.tensor([True, True, False, True]), 4)
    assert torch.allclose(out, torch.tensor([0.5, -0.5, 0.0, 0.0]))


def test_experimental_layer_warns_on_import():
    code = "import warnings; warnings.simplefilter('error'); import rlvr.experimental.reinforce_pp_config"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode != 0 and "FutureWarning" in proc.stderr and "semantic versioning" in proc.stderr


def test_registered_as_a_trainer_with_help():
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.train", "--trainer", "reinforce_pp", "--help"], capture_output=True, text=True, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert "baseline" in proc.stdout and "gamma" in proc.stdout


@pytest.mark.parametrize(
    "overrides, field",
    [({"baseline": "critic"}, "baseline"), ({"gamma": 1.5}, "gamma"), ({"num_generations": 1, "generation_batch_size": 4}, "num_generations")],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"ReinforcePPConfig.{field}"):
        ReinforcePPConfig(**overrides)


TASKS = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in ["cats", "rain", "trees", "bread"]]


def length_reward(sample: Sample) -> float:
    return 1.0 if len(sample.completion) % 3 == 0 else 0.0


class SometimesBroken:
    name = "sometimes_broken"

    def score(self, samples):
        return [Outcome.error("checker crashed") if len(s.completion) % 4 == 0 else Outcome.ok(length_reward(s)) for s in samples]


@pytest.mark.slow
@pytest.mark.parametrize("reward", [FunctionReward(length_reward, name="len3"), SometimesBroken()], ids=["ok", "errors"])
def test_training_changes_weights_and_logs(tmp_path, reward):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    cfg = ReinforcePPConfig(
        generator="hf", max_steps=2, num_generations=4, generation_batch_size=8, max_completion_length=8, micro_batch_size=4,
        learning_rate=1e-2, beta=0.05, output_dir=str(tmp_path), progress_bar=False, system_prompt=None, bf16=False,
        eval_before=False, eval_after=False, save_final_model=False,
    )  # fmt: skip
    trainer = ReinforcePPTrainer(cfg, model=tiny_causal_lm(tokenizer), reward=reward, train_tasks=TASKS, tokenizer=tokenizer)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("loss", "grad_norm", "kl", "return_mean", "entropy", "clip_ratio_low", "is_ratio_mean", "train_tokens"):
        assert all(key in r for r in rows), key
    assert all(r["n_ok"] + r["n_error"] == 8 for r in rows)
