"""The reward-model trainer: its losses against hand-derived values, learning a separable preference, resume, bad configs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from rlvr.trainers.config import ConfigError
from rlvr.trainers.reward_config import RewardConfig
from rlvr.trainers.reward_trainer import bradley_terry_loss, center_rewards_loss, reward_model_loss

# =======================================================================================
# Losses
# =======================================================================================


def test_bradley_terry_loss_hand_values():
    """-logsigmoid(d) = log(1 + exp(-d)) with d = r_c - r_r - margin:

    - r_c=1, r_r=0:             d=1  -> log(1 + e^-1) = 0.3132617
    - r_c=0, r_r=0:             d=0  -> log 2         = 0.6931472
    - r_c=0, r_r=2:             d=-2 -> log(1 + e^2)  = 2.1269280
    - r_c=2, r_r=1, margin=1:   d=0  -> log 2         = 0.6931472
    """
    chosen, rejected = torch.tensor([1.0, 0.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 2.0, 1.0])
    margin = torch.tensor([0.0, 0.0, 0.0, 1.0])
    expected = torch.tensor([0.3132617, 0.6931472, 2.1269280, 0.6931472])
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, margin), expected)
    torch.testing.assert_close(bradley_terry_loss(chosen[:3], rejected[:3]), expected[:3])


def test_center_rewards_and_batch_loss_hand_values():
    """Centering adds c * (r_c + r_r)^2 per pair:

    - c=0.01, r_c=1, r_r=0.5: 0.01 * 2.25 = 0.0225;   r_c=-1, r_r=1: 0
    - the batch loss of pairs (1, 0) and (0, 0) with c=0.1:
      mean(0.3132617, 0.6931472) + 0.1 * mean(1, 0) = 0.5032044 + 0.05 = 0.5532044
    """
    torch.testing.assert_close(center_rewards_loss(torch.tensor([1.0, -1.0]), torch.tensor([0.5, 1.0]), 0.01), torch.tensor([0.0225, 0.0]))
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
    assert math.isclose(float(reward_model_loss(chosen, rejected)), 0.5032044, abs_tol=1e-6)
    assert math.isclose(float(reward_model_loss(chosen, rejected, center_rewards_coefficient=0.1)), 0.5532044, abs_tol=1e-6)


def test_batch_loss_matches_trl_compute_loss():
    """TRL 1.16 RewardTrainer.compute_loss: -logsigmoid(r_c - r_r - margin).mean() + c * mean((r_c + r_r) ** 2)."""
    g = torch.Generator().manual_seed(0)
    chosen, rejected, margin = (torch.randn(16, generator=g) for _ in range(3))
    trl = -torch.nn.functional.logsigmoid(chosen - rejected - margin).mean() + 0.05 * torch.mean((chosen + rejected) ** 2)
    torch.testing.assert_close(reward_model_loss(chosen, rejected, margin, 0.05), trl)
    trl = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    torch.testing.assert_close(reward_model_loss(chosen, rejected), trl)


# =======================================================================================
# Config
# =======================================================================================


def _write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_config_fails_before_any_model_loads(tmp_path):
    good = _write_pairs(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    cases = [
        ({}, "pairs: no preference data"),
        ({"pairs": str(tmp_path / "missing.jsonl")}, "no such file"),
        ({"pairs": str(good), "eval_pairs": str(tmp_path / "nope.jsonl")}, "eval_pairs"),
        ({"pairs": str(good), "eval_fraction": 1.0}, "eval_fraction"),
        ({"pairs": str(good), "batch_size": 10, "micro_batch_size": 4}, "use batch_size 8 or 12"),
        ({"pairs": str(good), "center_rewards_coefficient": -1}, "center_rewards_coefficient"),
        ({"pairs": str(good), "max_length": 0}, "max_length"),
        ({"pairs": str(good), "num_epochs": 0}, "num_epochs"),
        ({"pairs": str(good), "learning_rate": "fast"}, "learning_rate"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError, match=message):
            RewardConfig.from_dict(values)
    assert RewardConfig(pairs=str(good)).trainer == "rlvr.trainers.reward_trainer:RewardTrainer"


def test_unusable_pairs_file_fails_before_the_model(tmp_path):
    from rlvr.trainers.reward_trainer import RewardTrainer

    bad = _write_pairs(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}])
    config = RewardConfig(pairs=str(bad), output_dir=str(tmp_path / "run"), progress_bar=False)
    with pytest.raises(ConfigError, match="pairs: .*no usable pairs.*expected columns prompt, chosen, rejected"):
        RewardTrainer(config, model="/no/such/model")  # the pairs are read first: the model is never reached
    assert not (tmp_path / "run").exists()


def test_cli_bad_input_is_one_error_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rlvr.train", "--trainer", "reward", "--pairs", str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "RewardConfig.pairs" in result.stderr


# =======================================================================================
# Training
# =======================================================================================

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "lemon", "ocean", "candle", "forest", "rocket",
         "violet", "basket", "mirror", "garden", "silver", "pepper", "meadow", "castle", "button", "shadow", "harbor", "pencil"]


def _separable_pairs(words):
    """Chosen completions say 'great', rejected ones 'awful': one keyword separates them."""
    return [
        {"prompt": [{"role": "user", "content": f"Describe the {w}."}], "chosen": f"The {w} is great.", "rejected": f"The {w} is awful."}
        for w in words
    ]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from conftest import tiny_causal_lm
    from transformers import AutoTokenizer

    from rlvr.models import resolve_model

    path = tmp_path_factory.mktemp("tiny") / "model"
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tiny_causal_lm(tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.slow
def test_learns_a_separable_preference_and_final_scores(tmp_path, tiny_model_dir):
    from rlvr.eval.preferences import evaluate_preferences
    from rlvr.preferences import load_pairs
    from rlvr.trainers.reward_trainer import RewardTrainer
    from rlvr.verifiers.reward_model import RewardModelReward

    train = _write_pairs(tmp_path / "train.jsonl", _separable_pairs(WORDS[:18]))
    held = _write_pairs(tmp_path / "held.jsonl", _separable_pairs(WORDS[18:]))
    config = RewardConfig(
        model=str(tiny_model_dir), pairs=str(train), eval_pairs=str(held), batch_size=6, micro_batch_size=3, max_steps=12,
        learning_rate=3e-3, output_dir=str(tmp_path / "run"), progress_bar=False, bf16=False,
    )
    trainer = RewardTrainer.from_config(config)
    summary = trainer.train()
    assert summary["before"]["pairs"] == 6 and summary["after"]["accuracy"] == 1.0, summary
    assert summary["after"]["margin_mean"] > summary["before"]["margin_mean"] + 1
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert {"loss", "accuracy", "margin_mean", "reward_mean"} <= set(metrics[0])
    assert metrics[-1]["loss"] < metrics[0]["loss"] and metrics[-1]["accuracy"] == 1.0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["after"]["accuracy"] == 1.0

    final = RewardModelReward(str(tmp_path / "run" / "final"))  # what GRPO or rlvr.eval would load
    result = evaluate_preferences(final, load_pairs(held))
    assert result["accuracy"] == 1.0 and result["n_ok"] == 12

    # an online run names it on the command line: --verifier reward_model --verifier_kwargs '{model: DIR}'
    from rlvr.trainers.grpo_config import GRPOConfig
    from rlvr.trainers.online import environment_and_reward

    config = GRPOConfig(verifier="reward_model", verifier_kwargs={"model": str(tmp_path / "run" / "final")})
    _, reward = environment_and_reward(config)
    assert isinstance(reward, RewardModelReward)
    assert evaluate_preferences(reward, load_pairs(held))["accuracy"] == 1.0


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run_with_lora(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from rlvr.trainers.reward_trainer import RewardTrainer
    from rlvr.verifiers.reward_model import RewardModelReward

    pairs = _write_pairs(tmp_path / "pairs.jsonl", [{**p, "margin": 0.5} for p in _separable_pairs(WORDS[:10])])

    def config(out, **kw):
        return RewardConfig(
            model=str(tiny_model_dir), pairs=str(pairs), eval_fraction=0.0, batch_size=4, micro_batch_size=2, max_steps=4,
            learning_rate=1e-3, lora_r=4, lora_alpha=8, center_rewards_coefficient=0.01, output_dir=str(out),
            progress_bar=False, bf16=False, save_steps=2, **kw,
        )

    full = RewardTrainer(config(tmp_path / "full"))
    full.train()
    resumed = RewardTrainer(config(tmp_path / "resumed"))
    resumed.resume(tmp_path / "full" / "checkpoint-2")
    assert resumed.step == 2
    resumed.train()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line)["loss"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and again == losses[2:]
    a = load_file(str(tmp_path / "full" / "checkpoint-4" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoint-4" / "trainable.safetensors"))
    assert a.keys() == b.keys() and any("score" in k for k in a) and any("lora_" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # the merged LoRA model loads back as a reward model
    out = RewardModelReward(str(tmp_path / "resumed" / "final")).score([])
    assert out == []


DDP_SCRIPT = """
import sys
from rlvr.trainers.reward_config import RewardConfig
from rlvr.trainers.reward_trainer import RewardTrainer
from rlvr.trainers.run import finish_processes

if __name__ == "__main__":
    model_dir, pairs, out = sys.argv[1:4]
    RewardTrainer(RewardConfig(model=model_dir, pairs=pairs, output_dir=out, **CONFIG)).train()
    finish_processes()
"""
DDP_CONFIG = {"eval_fraction": 0.0, "batch_size": 4, "micro_batch_size": 2, "max_steps": 2, "learning_rate": 1e-3,
              "progress_bar": False, "bf16": False}


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, tiny_model_dir):
    """4 pairs, batch 4: one process sees all four per step, two processes two each; the averaged gradient is the same."""
    from conftest import subprocess_env
    from safetensors.torch import load_file

    from rlvr.trainers.reward_trainer import RewardTrainer

    pairs = _write_pairs(tmp_path / "pairs.jsonl", _separable_pairs(WORDS[:4]))
    RewardTrainer(RewardConfig(model=str(tiny_model_dir), pairs=str(pairs), output_dir=str(tmp_path / "one"), **DDP_CONFIG)).train()
    script = tmp_path / "train_reward.py"
    script.write_text(DDP_SCRIPT.replace("**CONFIG", f"**{DDP_CONFIG!r}"))
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"  # two processes on a small machine
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script), str(tiny_model_dir),
         str(pairs), str(tmp_path / "two")],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = ("one", "two")
    losses = {n: [json.loads(line)["loss"] for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()] for n in runs}
    assert len(losses["one"]) == 2 and losses["one"] == pytest.approx(losses["two"], rel=1e-5)
    one, two = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in runs)
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-6)
