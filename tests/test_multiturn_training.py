"""Online trainers on multi-turn environments (tiny real model, real sandbox, HF generation):
metrics, transcripts, failures, the config's checks, and resume after SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import subprocess_env, tiny_causal_lm
from test_episodes import Scripted
from transformers import AutoTokenizer

from rlvr.environments.arithmetic import Arithmetic
from rlvr.environments.code_feedback import CodeArithFeedback
from rlvr.environments.math_python import MathPython
from rlvr.eval.env import evaluate_environment
from rlvr.experimental.reinforce_pp_config import ReinforcePPConfig
from rlvr.experimental.reinforce_pp_trainer import ReinforcePPTrainer, discounted_returns, token_rewards
from rlvr.generation import HFGenerator
from rlvr.models import resolve_model
from rlvr.trainers import online
from rlvr.trainers.config import ConfigError
from rlvr.trainers.grpo_config import GRPOConfig
from rlvr.trainers.grpo_trainer import GRPOTrainer
from rlvr.trainers.ppo_config import PPOConfig
from rlvr.trainers.ppo_trainer import PPOTrainer
from rlvr.trainers.rloo_config import RLOOConfig
from rlvr.trainers.rloo_trainer import RLOOTrainer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def _values(tmp_path, **overrides):
    values = {
        "generator": "hf",
        "max_steps": 2,
        "num_generations": 4,
        "generation_batch_size": 8,
        "max_completion_length": 8,
        "micro_batch_size": 4,
        "learning_rate": 1e-2,
        "eval_max_tasks": 2,
        "output_dir": str(tmp_path),
        "progress_bar": False,
        "bf16": False,
        "max_episode_tokens": 600,
    }
    values.update(overrides)
    return values


MULTI_TURN_METRICS = ["turns_mean", "tool_calls_mean", "tool_errors", "tool_time_s", "masked_tokens", "env_time_s", "n_error", "n_timeout"]


def test_grpo_on_code_feedback_logs_episodes_and_transcripts(tokenizer, tmp_path):
    env = CodeArithFeedback(n_train=20, n_test=2)
    trainer = GRPOTrainer(GRPOConfig(**_values(tmp_path, log_transcripts=3)), model=tiny_causal_lm(tokenizer), env=env, tokenizer=tokenizer)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in MULTI_TURN_METRICS:
        assert all(key in r for r in rows), key
    assert all(1 <= r["turns_mean"] <= 3 and r["masked_tokens"] > 0 for r in rows)
    assert all(r["sandbox_runs"] >= 8 for r in rows)  # the hidden tests of every episode ran in the sandbox
    transcripts = [json.loads(line) for line in (tmp_path / "transcripts.jsonl").read_text().splitlines()]
    assert [t["step"] for t in transcripts] == [1, 1, 1, 2, 2, 2]
    first = transcripts[0]
    assert first["messages"][0]["role"] == "system" and first["messages"][1]["role"] == "user"
    assert first["messages"][2]["role"] == "assistant" and first["turns"] >= 1 and first["status"] == "ok"
    assert set(first) >= {"step", "messages", "score", "status", "reason", "turns", "finish_reason"}
    for key in ("turns_mean", "tool_calls_mean", "masked_tokens"):
        assert key in summary["before"] and key in summary["after"]
    assert summary["after"]["max_turns"] == 3
    if rows[0]["skipped_rows"] < 8 or rows[1]["skipped_rows"] < 8:
        assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())


def test_loss_counts_only_sampled_tokens(tokenizer, tmp_path):
    env = Scripted(("ok", "ok"))
    trainer = GRPOTrainer(
        GRPOConfig(**_values(tmp_path, max_turns=3)), model=tiny_causal_lm(tokenizer), env=env, tokenizer=tokenizer
    )
    metrics: dict = {}
    batch = online.collect_groups(trainer.generator, trainer.data, trainer.config, 0, trainer.processes, metrics, online.rollouts.new_timing())
    counts = online.loss_token_counts(batch, False)
    assert counts.tolist() == [float(sum(r.generation.model_mask)) for r in batch]
    assert all(len(r.generation.completion_ids) > c for r, c in zip(batch, counts.tolist()))


def test_failed_episodes_are_counted_not_trained_on(tokenizer, tmp_path):
    env = Scripted(("ok", "raise"))
    trainer = GRPOTrainer(GRPOConfig(**_values(tmp_path, max_steps=1, eval_before=False, eval_after=False)), model=tiny_causal_lm(tokenizer), env=env, tokenizer=tokenizer)
    trainer.train()
    [row] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["n_error"] == 4 and row["n_ok"] == 4


@pytest.mark.parametrize("method", ["rloo", "reinforce_pp"])
def test_rloo_and_reinforce_pp_train_on_episodes(tokenizer, tmp_path, method):
    env = Scripted(("ok", "ok"))
    if method == "rloo":
        trainer = RLOOTrainer(RLOOConfig(**_values(tmp_path, max_steps=1, beta=0.05)), model=tiny_causal_lm(tokenizer), env=env, tokenizer=tokenizer)
    else:
        trainer = ReinforcePPTrainer(ReinforcePPConfig(**_values(tmp_path, max_steps=1, beta=0.05)), model=tiny_causal_lm(tokenizer), env=env, tokenizer=tokenizer)
    trainer.train()
    [row] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["turns_mean"] == 3.0 and row["masked_tokens"] > 0 and row["grad_norm"] > 0


def test_ppo_refuses_multi_turn_before_loading_a_model(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="GAE"):
        PPOTrainer(PPOConfig(**_values(tmp_path)), model="no-such-model", env=Scripted(), tokenizer=tokenizer)


def test_config_checks(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="single-turn"):
        GRPOTrainer(GRPOConfig(**_values(tmp_path, max_turns=3)), model=tiny_causal_lm(tokenizer), env=Arithmetic(n_train=4), tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="turn_timeout_s"):  # four 5 s tool calls do not fit a 10 s turn
        GRPOTrainer(GRPOConfig(**_values(tmp_path, turn_timeout_s=10)), model=tiny_causal_lm(tokenizer), env=MathPython(), tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="max_episode_tokens"):
        GRPOConfig(max_episode_tokens=64, max_completion_length=64)
    with pytest.raises(ConfigError, match="vllm_max_model_len"):
        GRPOConfig(generator="auto", max_episode_tokens=4096)
    with pytest.raises(ConfigError, match="turn_timeout_s"):
        GRPOConfig(turn_timeout_s=0)
    with pytest.raises(ConfigError, match="max_turns"):
        GRPOConfig(max_turns=0)
    assert GRPOConfig(generator="hf", max_episode_tokens=4096).max_episode_tokens == 4096


def test_evaluation_with_one_turn_and_with_three(tokenizer):
    env = Scripted(("ok", "ok"))
    gen = HFGenerator(tiny_causal_lm(tokenizer), tokenizer)
    one = evaluate_environment(env, gen, max_new_tokens=4, max_turns=1)
    three = evaluate_environment(env, gen, max_new_tokens=4, max_turns=3)
    assert (one["turns_mean"], three["turns_mean"]) == (1.0, 3.0)
    assert one["masked_tokens"] == 0 and three["masked_tokens"] > 0 and three["max_turns"] == 3
    assert "messages" in three["examples"][0]
    with pytest.raises(ValueError, match="single-turn"):
        evaluate_environment(Arithmetic(n_test=2), gen, max_turns=2)


def test_reinforce_pp_returns_skip_the_environments_tokens():
    """mask 1 1 0 0 1 (two turns, two env tokens between): score 1 on the last sampled token, gamma 0.5,
    no KL. Returns: t4 = 1; t1 = 0 + 0.5 * 1 = 0.5; t0 = 0.25; env tokens 0."""
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0, 0.0]])
    rewards = token_rewards(torch.tensor([1.0]), mask, 0.0)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]]
    assert discounted_returns(rewards, mask, 0.5).tolist() == [[0.25, 0.5, 0.0, 0.0, 1.0, 0.0]]


def test_resume_after_sigkill_writes_the_same_transcripts(tokenizer, tmp_path):
    """A run killed with SIGKILL after its second checkpoint and resumed writes, line for line, the
    transcripts (and metrics steps) of the run that was never interrupted."""
    model_dir = tmp_path / "tiny"
    tiny_causal_lm(tokenizer, seed=0).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    args = [
        "--model", str(model_dir), "--env", "code_arith_feedback", "--env_kwargs", "{n_train: 20, n_test: 2}",
        "--generator", "hf", "--num_generations", "2", "--generation_batch_size", "4", "--max_completion_length", "6",
        "--max_episode_tokens", "600", "--max_steps", "4", "--save_steps", "1", "--log_transcripts", "2",
        "--eval_before", "false", "--eval_after", "false", "--save_final_model", "false", "--progress_bar", "false",
        "--learning_rate", "1e-3", "--bf16", "false",
    ]  # fmt: skip
    env = subprocess_env()
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([sys.executable, "-m", "rlvr.train", *args, "--output-dir", str(straight)], check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen([sys.executable, "-m", "rlvr.train", *args, "--output-dir", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    log = killed / "transcripts.jsonl"
    # killed once step 3's episodes are logged (after checkpoint 2), usually before checkpoint 3: the resumed
    # run must drop those lines and write them again, not keep them twice
    while not ((killed / "checkpoint-2" / "trainer_state.json").exists() and log.exists() and '"step": 3' in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its third step"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run([sys.executable, "-m", "rlvr.train", "--resume", str(killed), "--progress_bar", "false"], check=True, env=env, capture_output=True, timeout=600)

    def transcripts(run):
        return [json.loads(line) for line in (run / "transcripts.jsonl").read_text().splitlines()]

    assert [r["step"] for r in transcripts(straight)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert transcripts(killed) == transcripts(straight)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_drops_log_lines_after_the_checkpoint_and_a_line_cut_short(tmp_path):
    from rlvr.trainers.run import truncate_metrics

    log = tmp_path / "transcripts.jsonl"
    log.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n{"step": 3, "x": 3}\n{"step": 3, "x"')
    truncate_metrics(log, 2)
    assert log.read_text() == '{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n'
