"""``python -m rlvr.train``: config parsing, early failures, and a tiny end-to-end run with resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.models import resolve_model
from rlvr.registry import RegistryError
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


def _run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlvr.train", *args], capture_output=True, text=True, timeout=300, check=False, cwd=cwd
    )


NO_TORCH = (
    "import sys\n"
    "from rlvr.train import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('torch loaded' if 'torch' in sys.modules else 'no torch', rc)\n"
)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_generations", "1"], "GRPOConfig.num_generations: got 1"),
        (["--trainer", "nope"], "unknown trainer 'nope'; known trainers: "),
        (["--nonsense_field", "3"], "unknown GRPOConfig field 'nonsense_field'"),
        (["--resume", "/no/such/run"], "no such directory"),
    ],
)
def test_bad_config_fails_in_a_line_without_importing_torch(tmp_path, argv, message):
    """The real CLI in a subprocess: exit code 2, one line on stderr, nothing written, and torch never imported."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *argv, "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout.split() == ["no", "torch", "2"], proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env", "nope"], "unknown environment 'nope'; known environments:"),
        (["--env", "jsonl:/missing.jsonl"], "no JSONL file at /missing.jsonl"),
        (["--model", "/missing"], "no model directory at /missing; give a local directory with config.json"),
        (["--env_kwargs", "{no_such_option: 1}"], "env_kwargs"),
        (["--verifier", "nope"], "unknown verifier 'nope'"),
    ],
)
def test_bad_setup_is_one_line_and_writes_nothing(tmp_path, argv, message):
    proc = _run_cli(*argv, "--progress_bar", "false", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_help_lists_the_trainers_fields():
    proc = _run_cli("--trainer", "grpo", "--help")
    assert proc.returncode == 0
    assert "GRPOConfig fields" in proc.stdout and "--num_generations (8)" in proc.stdout and "--learning_rate" in proc.stdout
    assert "Completions per prompt" in proc.stdout  # each field's one-line doc


def test_config_file_may_name_the_trainer(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("trainer: grpo\nnum_generations: 4\ngeneration_batch_size: 8\n")
    config, _ = parse_config(["--config", str(cfg)])
    assert isinstance(config, GRPOConfig) and config.num_generations == 4
    cfg.write_text("trainer: nope\n")
    with pytest.raises(RegistryError, match="unknown trainer 'nope'"):
        parse_config(["--config", str(cfg)])


def test_resume_reads_the_trainer_from_the_checkpoint(tmp_path):
    ckpt = tmp_path / "run" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    config = GRPOConfig(num_generations=4, generation_batch_size=8).to_dict()
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 3, "trainer": "grpo", "config": config}))
    parsed, resume = parse_config(["--resume", str(tmp_path / "run"), "--max_steps", "9"])
    assert isinstance(parsed, GRPOConfig) and parsed.num_generations == 4 and parsed.max_steps == 9
    assert resume == str(tmp_path / "run") and parsed.output_dir == str(tmp_path / "run")
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 3, "trainer": "other", "config": config}))
    with pytest.raises(ConfigError, match="is a 'other' run; resume it with --trainer other"):
        parse_config(["--resume", str(tmp_path / "run"), "--trainer", "grpo"])


def test_yaml_config_plus_overrides(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("learning_rate: 2e-5\nnum_generations: 4\ngeneration_batch_size: 8\nenv_kwargs: {digits: 2}\n")
    config, resume = parse_config(["--config", str(cfg), "--max-steps", "7", "--bf16", "--output-dir", str(tmp_path / "o")])
    assert isinstance(config, GRPOConfig) and resume is None
    assert config.learning_rate == 2e-5 and config.num_generations == 4 and config.max_steps == 7
    assert config.bf16 is True and config.env_kwargs == {"digits": 2} and config.output_dir == str(tmp_path / "o")


def test_none_unsets_an_optional_text_field(tmp_path):
    """A config file names a labels file; --labels none on the command line drops it for --pairs."""
    cfg = tmp_path / "kto.yaml"
    cfg.write_text("trainer: kto\nlabels: labels.jsonl\n")
    config, _ = parse_config(["--config", str(cfg), "--labels", "none", "--pairs", "pairs.jsonl", "--verifier", "None"])
    assert config.labels is None and config.pairs == "pairs.jsonl" and config.verifier is None
    with pytest.raises(ConfigError, match="exactly one of"):
        parse_config(["--config", str(cfg), "--pairs", "pairs.jsonl"])


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
    assert {"before", "after", "wall_time_s"} <= set(summary) and summary["before"]["tasks"] == 4
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["trainer"] == "grpo" and state["step"] == 1
    assert json.loads((out / "config.json").read_text())["trainer"] == "grpo"
    # resume from the run directory: the config comes from the checkpoint, max_steps is raised
    assert main(["--resume", str(out), "--max_steps", "3", "--progress_bar", "false"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_config_is_a_valid_config_of_its_trainer(path):
    """Each file in examples/ names its trainer and passes that trainer's checks (no model is loaded)."""
    import warnings

    import yaml

    from rlvr.train import parse_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # experimental trainers warn on import
        config, _ = parse_config(["--config", str(path)])
    from rlvr.registry import load_trainer_config

    named = yaml.safe_load(path.read_text()).get("trainer", "grpo")
    assert type(config) is load_trainer_config(named)
