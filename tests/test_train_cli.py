"""``python -m rlvr.train``: config parsing, early failures, and a tiny end-to-end run with resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.models import resolve_model
from rlvr.train import main, parse_config
from rlvr.trainers.grpo_config import ConfigError, GRPOConfig


@pytest.mark.parametrize(
    "argv, field, fix",
    [
        (["--num_generations", "1"], "num_generations", "at least 2"),
        (["--generation_batch_size", "12", "--num_generations", "8"], "generation_batch_size", "Use 8 or 16"),
        (["--loss_type", "ppo"], "loss_type", "use one of grpo, dr_grpo, dapo, bnpo"),
        (["--scale_rewards", "std"], "scale_rewards", "group, batch, none"),
        (["--learning-rate", "-1"], "learning_rate", "> 0"),
        (["--temperature", "0"], "temperature", "> 0"),
        (["--report_to", "comet"], "report_to", "tensorboard"),
    ],
)
def test_bad_config_names_field_and_fix(argv, field, fix):
    with pytest.raises(ConfigError) as err:
        parse_config(argv)
    assert f"GRPOConfig.{field}" in str(err.value) and fix in str(err.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="unknown GRPOConfig field 'num_generation'.*did you mean num_generations"):
        parse_config(["--num_generation", "8"])


def test_cli_fails_before_loading_any_model(tmp_path):
    """The real CLI in a subprocess: exit code 2, the message on stderr, no run directory, and
    quickly (no model or engine was loaded)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.train", "--num_generations", "1", "--output-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "GRPOConfig.num_generations" in proc.stderr and "at least 2" in proc.stderr
    assert not (tmp_path / "run").exists()
    assert "transformers" not in proc.stderr.lower() or "Traceback" not in proc.stderr
    assert time.perf_counter() - start < 60


def test_yaml_config_plus_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("learning_rate: 2e-5\nnum_generations: 4\ngeneration_batch_size: 8\nenv_kwargs: {digits: 2}\n")
    config, resume = parse_config(["--config", str(cfg), "--max-steps", "7", "--bf16", "--output-dir", str(tmp_path / "o")])
    assert isinstance(config, GRPOConfig) and resume is None
    assert config.learning_rate == 2e-5 and config.num_generations == 4 and config.max_steps == 7
    assert config.bf16 is True and config.env_kwargs == {"digits": 2} and config.output_dir == str(tmp_path / "o")


@pytest.mark.slow
def test_end_to_end_tiny_model_and_resume(tmp_path):
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    model = tiny_causal_lm(tok, seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "run"
    common = [
        "--model",
        str(tmp_path / "tiny"),
        "--generator",
        "hf",
        "--num_generations",
        "4",
        "--generation_batch_size",
        "8",
        "--max_completion_length",
        "6",
        "--eval_max_tasks",
        "4",
        "--env_kwargs",
        "{n_train: 20, n_test: 4}",
        "--progress_bar",
        "false",
        "--learning_rate",
        "1e-3",
        "--report_to",
        "tensorboard",
    ]
    assert main(common + ["--max_steps", "2", "--save_steps", "1", "--output-dir", str(out)]) == 0
    for name in (
        "metrics.jsonl",
        "eval.json",
        "curves.png",
        "config.json",
        "final/config.json",
        "final/model.safetensors",
        "checkpoint-1/trainer_state.json",
    ):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").iterdir())
    summary = json.loads((out / "eval.json").read_text())
    assert {"before", "after", "wall_time_s"} <= set(summary) and summary["before"]["n"] == 4
    # resume from the run directory: the config comes from the checkpoint, max_steps is raised
    assert main(["--resume", str(out), "--max_steps", "3", "--progress_bar", "false"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
