"""Precision by measurement (rlvr.precision): the decision from given rates, the cache and its key,
the override, what a run records (config.json, mfu), and runs whose engine and trainer differ."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr import precision
from rlvr.models import resolve_model
from rlvr.precision import MARGIN, decide, machine_key, machine_precision
from rlvr.trainers.config import ConfigError
from rlvr.trainers.grpo_config import GRPOConfig
from rlvr.trainers.run import model_flops_utilization

CPU = torch.device("cpu")


# rates in GFLOP/s as the machines of the docstring measured them (1024^2, 2 threads) and made-up near ties
@pytest.mark.parametrize(
    "rates, train_bf16, engine",
    [
        # AMD EPYC Zen 5 (avx512_bf16, no AMX): bf16 4.4x
        ({"train": {"float32": 208, "bfloat16": 925}, "decode": {"float32": 100, "bfloat16": 380}}, True, "bfloat16"),
        # Xeon without AMX or avx512_bf16: bf16 slower
        ({"train": {"float32": 233, "bfloat16": 142}, "decode": {"float32": 110, "bfloat16": 70}}, False, "float32"),
        # AVX2 only: bf16 not timed past the small matmul
        ({"sniff": {"float32": 170, "bfloat16": 1}, "train": {"float32": 190}, "decode": {"float32": 106}}, False, "float32"),
        # a near tie stays fp32 (below the margin), both for training and for the engine
        ({"train": {"float32": 200, "bfloat16": 200 * MARGIN * 0.99}, "decode": {"float32": 100, "bfloat16": 105}}, False, "float32"),
        # at the margin: bf16
        ({"train": {"float32": 200, "bfloat16": 200 * MARGIN}, "decode": {"float32": 100, "bfloat16": 100 * MARGIN}}, True, "bfloat16"),
        # training and decoding may disagree: each takes its own winner
        ({"train": {"float32": 200, "bfloat16": 150}, "decode": {"float32": 100, "bfloat16": 300}}, False, "bfloat16"),
        # fp16 wins the engine only when it beats bf16 by the margin too
        ({"train": {"float32": 200, "bfloat16": 800}, "decode": {"float32": 100, "bfloat16": 400, "float16": 420}}, True, "bfloat16"),
        ({"train": {"float32": 200, "bfloat16": 800}, "decode": {"float32": 100, "bfloat16": 400, "float16": 900}}, True, "float16"),
        ({"train": {"float32": 200}, "decode": {"float32": 100, "float16": 300}}, False, "float16"),
        # nothing measured: fp32
        ({}, False, "float32"),
    ],
)
def test_decide_from_rates(rates, train_bf16, engine):
    got_bf16, got_engine, why = decide(rates)
    assert (got_bf16, got_engine) == (train_bf16, engine)
    assert why and "1.10x" in why


def test_the_probe_measures_this_machine_and_chooses_by_it():
    rates = precision.probe(CPU, budget_s=0.3)
    assert rates["train"]["float32"] > 1 and rates["peak"]["float32"] > 1 and rates["decode"]["float32"] > 1
    assert "bfloat16" in rates["sniff"]
    # bf16 is timed past the small matmul only where it is not hopeless here
    hopeless = rates["sniff"]["bfloat16"] < rates["sniff"]["float32"] / precision._HOPELESS
    assert ("bfloat16" not in rates["train"]) == hopeless
    assert decide(rates)[0] is (not hopeless and rates["train"]["bfloat16"] >= MARGIN * rates["train"]["float32"])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh precision cache, no override, and no choice remembered from earlier in the process."""
    monkeypatch.setenv("RLVR_PRECISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RLVR_PRECISION", raising=False)
    precision._machine_precision.cache_clear()
    yield tmp_path / "cache"
    precision._machine_precision.cache_clear()


def _write(path, key, gflops):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "gflops": gflops, "probe_s": 0.5}))


FAST_BF16 = {"train": {"float32": 200.0, "bfloat16": 900.0}, "decode": {"float32": 100.0, "bfloat16": 400.0}, "peak": {"float32": 210.0, "bfloat16": 950.0}}


def test_first_use_measures_and_caches_then_reads_the_cache(cache):
    first = machine_precision(CPU)
    assert first.source == "probe" and first.probe_s > 0 and first.cache_path and first.cache_path.startswith(str(cache))
    assert first.summary().count("\n") >= 6 and "GFLOP/s" in first.summary()
    saved = json.loads(open(first.cache_path).read())
    assert saved["key"] == machine_key(CPU) and saved["gflops"] == first.gflops
    # a new process (the in-memory choice forgotten) reads the file: rates planted there decide
    precision._machine_precision.cache_clear()
    _write(precision._cache_file(machine_key(CPU)), machine_key(CPU), FAST_BF16)
    again = machine_precision(CPU)
    assert again.source == "cache" and again.gflops == FAST_BF16
    assert again.train_bf16 and again.engine_dtype == "bfloat16" and again.peak_gflops() == 950.0


def test_the_key_names_cpu_flags_torch_and_threads(cache, monkeypatch):
    key = machine_key(CPU)
    name, flags = precision.cpu_identity()
    assert key["name"] == name and key["torch"] == torch.__version__ and key["threads"] == torch.get_num_threads()
    assert key["version"] == precision.PROBE_VERSION and len(key["flags_hash"]) == 16
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        assert machine_key(CPU) != key and precision._cache_file(machine_key(CPU)) != precision._cache_file(key)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda key: {"key": {**key, "torch": "0.0.1"}, "gflops": FAST_BF16},  # another torch
        lambda key: {"key": {**key, "version": key["version"] - 1}, "gflops": FAST_BF16},  # an older probe
        lambda key: {"key": {**key, "flags_hash": "0" * 16}, "gflops": FAST_BF16},  # another CPU's flags
        lambda key: {"key": key, "gflops": {"train": {"float32": -1.0}}},  # nonsense numbers
        lambda key: {"key": key},  # no numbers
        lambda key: "[1, 2",  # cut short (a killed process, a full disk)
    ],
)
def test_a_cache_for_another_machine_or_spoiled_is_measured_again(cache, spoil):
    key = machine_key(CPU)
    path = precision._cache_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = spoil(key)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    choice = machine_precision(CPU)
    assert choice.source == "probe" and choice.gflops != FAST_BF16
    assert json.loads(path.read_text())["key"] == key  # rewritten whole


def test_a_cache_that_cannot_be_written_costs_only_a_probe(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("RLVR_PRECISION_CACHE", str(blocker / "precision"))
    monkeypatch.delenv("RLVR_PRECISION", raising=False)
    precision._machine_precision.cache_clear()
    try:
        choice = machine_precision(CPU)
    finally:
        precision._machine_precision.cache_clear()
    assert choice.source == "probe" and choice.cache_path is None and choice.gflops["train"]["float32"] > 0


@pytest.mark.parametrize("value, bf16, engine", [("bf16", True, "bfloat16"), ("fp32", False, "float32"), ("BF16", True, "bfloat16")])
def test_the_override_decides_for_the_machine(cache, monkeypatch, value, bf16, engine):
    _write(precision._cache_file(machine_key(CPU)), machine_key(CPU), {**FAST_BF16, "train": {"float32": 900.0, "bfloat16": 200.0}})
    monkeypatch.setenv("RLVR_PRECISION", value)
    choice = machine_precision(CPU)
    assert (choice.train_bf16, choice.engine_dtype) == (bf16, engine)
    assert choice.source == f"RLVR_PRECISION={value.lower()}" and choice.gflops  # the numbers stay, for mfu


def test_a_bad_override_fails_before_anything_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("RLVR_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="RLVR_PRECISION='fp8': use one of auto, fp32, bf16"):
        GRPOConfig(output_dir=str(tmp_path / "run"))
    env = {**__import__("os").environ, "RLVR_PRECISION": "half"}
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.train", "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: RLVR_PRECISION='half'") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_doctor_shows_the_choice_and_why():
    proc = subprocess.run([sys.executable, "-m", "rlvr", "doctor"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    assert {"device", "train", "trainer", "engine", "source", "why"} <= {k.strip() for k in lines}
    assert "GFLOP/s" in lines["train"]


def test_mfu_from_tokens_seconds_and_the_peak():
    class P:
        train_flops_per_token, peak_flops = 6 * 100e6, 200e9

    # 1000 tokens x 600 MFLOP = 600 GFLOP in 5 s on 2 processes of 200 GFLOP/s: 0.3
    assert model_flops_utilization(P, {"train_tokens": 1000, "train_time_s": 5.0}, 2) == pytest.approx(0.3)
    assert model_flops_utilization(P, {"train_tokens": 1000, "step_time_s": 3.0}, 1) == pytest.approx(1.0)
    assert model_flops_utilization(P, {"train_time_s": 5.0}, 1) is None
    P.peak_flops = None
    assert model_flops_utilization(P, {"train_tokens": 1000, "train_time_s": 5.0}, 1) is None


def test_train_flops_per_token_counts_every_weight_a_token_passes():
    from rlvr.trainers.modeling import train_flops_per_token

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    model = tiny_causal_lm(tok, hidden=32, heads=4)  # tied embeddings
    everything = sum(p.numel() for p in model.parameters())  # the tied matrix once
    # the embedding lookup costs nothing, the output projection (the same matrix) 2 FLOPs per weight
    assert train_flops_per_token(model, lora=False) == 6 * everything
    assert train_flops_per_token(model, lora=True) == 4 * everything


def _tiny_dir(tmp_path):
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tiny_causal_lm(tok, seed=0).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_config_json_records_the_choice_and_metrics_carry_mfu(cache, tmp_path):
    """A run with ``bf16: null`` takes the machine's choice (here the planted cache says bf16), and
    ``config.json`` says so, with the probe's numbers; each metrics line carries ``mfu``."""
    from rlvr.train import main

    _write(precision._cache_file(machine_key(CPU)), machine_key(CPU), FAST_BF16)
    out = tmp_path / "run"
    argv = ["--model", str(_tiny_dir(tmp_path)), "--generator", "hf", "--num_generations", "4", "--generation_batch_size", "8",
            "--max_completion_length", "6", "--max_steps", "2", "--eval_before", "false", "--eval_after", "false",
            "--save_final_model", "false", "--skip_zero_advantage", "false", "--progress_bar", "false",
            "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["trainer_precision"] == "bf16 autocast"
    assert resolved["precision"]["source"] == "cache" and resolved["precision"]["gflops"] == FAST_BF16
    assert resolved["precision"]["train_bf16"] is True and resolved["train_flops_per_token"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert row["train_tokens"] > 0
        expected = row["train_tokens"] * resolved["train_flops_per_token"] / (row["train_time_s"] * 950e9)
        assert row["mfu"] == pytest.approx(expected)
