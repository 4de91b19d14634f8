"""``python -m rlvr serve`` as a real process on 127.0.0.1, and ``RemoteReward`` against it.

The servers here serve either the real math verifier or :class:`Echo` below (imported by
the server as ``test_integrations_server:Echo``), whose completions tell it to sleep, hang,
or write its worker's pid and wait to be killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from rlvr.integrations.remote import RemoteReward
from rlvr.rewards import Outcome, Sample, Status, isolated

TESTS = Path(__file__).resolve().parent


class Echo:
    """OK 1.0 when the completion equals the reference, else 0.0; ``"hang"`` never returns,
    ``"sleep:S"`` sleeps S seconds, ``"pidfile:PATH"`` writes the worker's pid there and sleeps."""

    name = "echo"

    def score(self, samples):
        out = []
        for s in samples:
            c = s.completion
            if c == "hang":
                time.sleep(600)
            elif c.startswith("sleep:"):
                time.sleep(float(c[6:]))
            elif c.startswith("pidfile:"):
                Path(c[8:]).write_text(str(os.getpid()))
                time.sleep(30)
            out.append(Outcome.ok(float(c == s.reference), "compared", metrics={"len": float(len(c))}))
        return out


class Len3:
    """1.0 for a completion whose length is a multiple of 3: a signal a tiny random model gets."""

    name = "len3"

    def score(self, samples):
        return [Outcome.ok(float(len(s.completion) % 3 == 0)) for s in samples]


# A reward that keeps its own deadline (an isolated one): the server scores it without a
# second layer of workers, on --concurrency copies of it.
ISOLATED_ECHO = isolated(Echo(), timeout_s=5, max_workers=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``python -m rlvr serve`` process on 127.0.0.1; ``stop()`` always ends it."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlvr", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    self.health = json.loads(r.read())
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not come up: {self.proc.stdout.read()[-2000:]}") from None
                time.sleep(0.2)

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": content_type}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def echo_server():
    server = Server("--reward", "test_integrations_server:Echo", "--workers", "2", "--concurrency", "2", "--timeout", "2", "--max-batch", "300", "--max-body-mb", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def math_server():
    server = Server("--reward", "math")
    yield server
    server.stop()


def test_remote_reward_scores_math_through_the_server(math_server):
    remote = RemoteReward(math_server.url, reward="math")
    assert remote.health()["reward"] == "math"
    outs = remote.score([Sample("", "so \\boxed{0.5}", "\\frac12"), Sample("", "\\boxed{x^2+2x+1}", "(x+1)^2"), Sample("", "\\boxed{3}", "4"), Sample("", "x", None)])
    assert [o.status for o in outs] == [Status.OK, Status.OK, Status.OK, Status.ERROR]
    assert [o.score for o in outs[:3]] == [1.0, 1.0, 0.0]
    assert "numeric" in outs[0].reason and outs[0].metrics == {"extracted": 1.0}
    assert "reference" in outs[3].reason  # the server's reason comes through
    assert remote.score([]) == []


def test_openrlhf_remote_rm_protocol(math_server):
    """OpenRLHF's HTTP reward call (openrlhf/utils/agent.py ``_fetch_rewards_via_http``)::

        payload = {"query": queries_list[s:e], "prompts": prompts_list[s:e], "labels": labels_list[s:e]}
        async with session.post(url, json=data) as response: ... return await response.json()

    and reads ``rewards``, ``scores`` and ``extra_logs`` from the answer (serve_rm.py answers
    ``{"rewards": rewards, "scores": rewards, "extra_logs": {...}}``).
    """
    body = {"query": ["Q: 1/2? A: \\boxed{0.5}<|im_end|>", "Q: 2+2? A: \\boxed{5}"], "prompts": ["Q: 1/2? A: ", "Q: 2+2? A: "], "labels": ["1/2", "4"]}
    status, data = math_server.post("/get_reward", json.dumps(body).encode())
    assert status == 200
    assert data["rewards"] == [1.0, 0.0] and data["scores"] == [1.0, 0.0]
    assert data["extra_logs"]["rlvr/failed"] == [0.0, 0.0]
    assert all(len(v) == 2 for v in data["extra_logs"].values())
    status, data = math_server.post("/get_reward", json.dumps({"query": ["\\boxed{1}"]}).encode())  # old clients send query only
    assert status == 200 and data["extra_logs"]["rlvr/error"] == [1.0]  # no label: a flagged failure


def test_200_concurrent_requests_all_answered(echo_server):
    remote = RemoteReward(echo_server.url, timeout_s=60)

    def one(i: int) -> Outcome:
        [out] = remote.score([Sample("", f"c{i}", f"c{i}" if i % 2 else "other")])
        return out

    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(one, i) for i in range(200)]
        outs = [f.result(timeout=120) for f in futures]
    assert all(o.status is Status.OK for o in outs), [o.reason for o in outs if o.status is not Status.OK][:3]
    assert [o.score for o in outs] == [float(i % 2) for i in range(200)]
    assert [o.metrics["len"] for o in outs] == [float(len(f"c{i}")) for i in range(200)]  # each its own answer


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(echo_server):
    status, data = echo_server.post("/v1/score", b'{"samples": [')
    assert status == 400 and "not valid JSON" in data["detail"]
    status, data = echo_server.post("/v1/score", json.dumps({"samples": [{"completion": "x" * (2 << 20)}]}).encode())
    assert status == 413 and "--max-body-mb" in data["detail"]
    status, data = echo_server.post("/v1/score", json.dumps({"reward": "nope", "samples": []}).encode())
    assert status == 404 and "serves reward 'echo', not 'nope'" in data["detail"]
    status, data = echo_server.post("/v1/score", json.dumps({"samples": [{"completion": "a"}] * 301}).encode())
    assert status == 413 and "at most 300" in data["detail"]
    status, data = echo_server.post("/v1/score", json.dumps({"samples": [{"completion": 5}]}).encode())
    assert status == 422 and "samples[0].completion" in data["detail"]
    status, data = echo_server.post("/v1/score", json.dumps([1, 2]).encode())
    assert status == 422
    status, data = echo_server.post("/get_reward", json.dumps({"query": ["a", "b"], "labels": ["a"]}).encode())
    assert status == 422 and "'labels'" in data["detail"]
    [out] = RemoteReward(echo_server.url, reward="other").score([Sample("", "a")])
    assert out.status is Status.ERROR and "404" in out.reason
    [out] = RemoteReward(echo_server.url).score([Sample("", "a", "a")])
    assert out.status is Status.OK and out.score == 1.0


def test_unknown_reward_name_at_startup_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "rlvr", "serve", "--reward", "no-such-verifier", "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown verifier 'no-such-verifier'" in proc.stderr and "known verifiers" in proc.stderr


def test_a_hanging_reward_is_a_timeout_while_other_requests_are_served(echo_server):
    """The server's deadline is 2 s (``--timeout 2``): the quick request, sent while the
    hanging batch holds one set of workers, is answered before that batch is."""
    remote = RemoteReward(echo_server.url)
    result: dict[str, object] = {}

    def hang() -> None:
        start = time.monotonic()
        result["outs"] = remote.score([Sample("", "hang"), Sample("", "ok", "ok")])
        result["done"] = time.monotonic()
        result["elapsed"] = result["done"] - start

    t = threading.Thread(target=hang)
    t.start()
    time.sleep(0.3)
    [quick] = remote.score([Sample("", "fast", "fast")])
    quick_done = time.monotonic()
    t.join(timeout=30)
    assert not t.is_alive()
    assert quick.status is Status.OK and quick.score == 1.0
    assert quick_done < result["done"]  # served while the other batch hangs
    hung, ok = result["outs"]
    assert hung.status is Status.TIMEOUT and "deadline" in hung.reason
    assert ok.status is Status.OK and ok.score == 1.0
    assert 2.0 <= result["elapsed"] < 10


def test_killing_a_worker_mid_request_is_an_error_and_the_next_request_is_served(echo_server, tmp_path):
    pidfile = tmp_path / "worker.pid"
    remote = RemoteReward(echo_server.url)
    result: dict[str, list] = {}
    t = threading.Thread(target=lambda: result.setdefault("outs", remote.score([Sample("", f"pidfile:{pidfile}")])))
    t.start()
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline, "the worker never started the sample"
        time.sleep(0.05)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    t.join(timeout=30)
    [out] = result["outs"]
    assert out.status is Status.ERROR and "SIGKILL" in out.reason
    assert [o.score for o in remote.score([Sample("", "a", "a"), Sample("", "b", "c")])] == [1.0, 0.0]
    assert echo_server.proc.poll() is None


def test_remote_reward_against_no_server_is_an_error_outcome():
    remote = RemoteReward(f"http://127.0.0.1:{free_port()}", timeout_s=5)
    [out] = remote.score([Sample("", "x")])
    assert out.status is Status.ERROR and "unreachable" in out.reason
    with pytest.raises(ConnectionError, match="python -m rlvr serve"):
        remote.health()
    start = time.monotonic()
    with pytest.raises(ConnectionError):
        remote.wait_ready(timeout_s=0.5)
    assert 0.5 <= time.monotonic() - start < 5
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(ConnectionError, match="exited with code 0"):
        remote.wait_ready(timeout_s=60, process=gone)  # a server that died is not waited for


# -- the wire keeps what a sample is; bad input is a 4xx; /health tells what is in force --------


def test_json_nested_past_any_limit_is_a_400_and_the_server_keeps_serving(echo_server):
    for depth in (100_000, 100):
        status, data = echo_server.post("/v1/score", b'{"samples": ' + b"[" * depth + b"]" * depth + b"}")
        assert status == 400 and "nests deeper" in data["detail"], depth
    status, data = echo_server.post("/get_reward", json.dumps({"query": ["a"], "labels": [[[[["a"]]]] * 1]}).encode())
    assert status == 200  # a few levels are fine
    status, data = echo_server.post("/v1/score", b'{"samples": [{"completion": "x", "reference": ' + b"1" * 5000 + b"}]}")
    assert status == 400  # an integer past Python's 4300 digits
    start = time.monotonic()
    tag = {"$rlvr": "fraction", "value": "1e30000000"}  # would build a 30-million-digit integer
    status, data = echo_server.post("/v1/score", json.dumps({"samples": [{"completion": "x", "reference": tag}]}).encode())
    assert status == 422 and time.monotonic() - start < 5
    [out] = RemoteReward(echo_server.url).score([Sample("", "a", "a")])
    assert out.status is Status.OK and out.score == 1.0


def test_a_sample_scores_the_same_either_side_of_the_wire(math_server):
    """Fractions, Decimals, NaN, lists, tuples and numpy values as references: the server
    gets the value itself, not its repr."""
    import numpy as np

    from rlvr.registry import load_verifier

    samples = [
        Sample("", "\\boxed{0.5}", Fraction(1, 2)),
        Sample("", "\\boxed{1/4}", Decimal("0.25")),
        Sample("", "\\boxed{3}", float("nan")),
        Sample("", "\\boxed{3}", ["2", "3"]),
        Sample("", "\\boxed{3}", ("2", "4")),
        Sample("", "\\boxed{7}", np.array([6, 7])),
        Sample("", "\\boxed{7}", np.int64(7)),
        Sample("", "\\boxed{2}", Fraction(4, 2)),
        Sample("", "\\boxed{oo}", float("inf")),
    ]
    local = load_verifier("math").score(samples)
    remote = RemoteReward(math_server.url, reward="math").score(samples)
    assert [(o.status, o.score) for o in remote] == [(o.status, o.score) for o in local]
    assert [o.score for o in local[:2]] == [1.0, 1.0] and local[2].status is Status.ERROR
    [unsendable] = RemoteReward(math_server.url).score([Sample("", "\\boxed{1}", object())])
    assert unsendable.status is Status.ERROR and "cannot be sent" in unsendable.reason
    odd_prompt = Sample([{"role": "user", "content": object()}], "\\boxed{1}", "1")
    outs = RemoteReward(math_server.url).score([odd_prompt, Sample("", "\\boxed{1}", "1")])
    assert [o.status for o in outs] == [Status.ERROR, Status.OK]  # only the sample JSON cannot carry
    with pytest.raises(ValueError, match="out of range"):
        RemoteReward("http://127.0.0.1:99999")


def test_health_reports_the_deadline_and_concurrency_in_force(math_server, echo_server):
    assert math_server.health["timeout_s"] == 2.0  # the math verifier's own deadline, not a server default
    assert math_server.health["deadline"] == "the reward's own" and math_server.health["concurrency"] == 2
    assert echo_server.health["timeout_s"] == 2.0 and echo_server.health["deadline"] == "server workers"
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr", "serve", "--reward", "math", "--timeout", "5", "--port", str(free_port())], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "--option timeout_s=" in proc.stderr


def test_concurrency_is_honoured_for_a_reward_with_its_own_deadline():
    """Two batches that each take 1.5 s are scored at the same time on two copies of the reward."""
    server = Server("--reward", "test_integrations_server:ISOLATED_ECHO", "--concurrency", "2")
    try:
        assert server.health["concurrency"] == 2 and server.health["timeout_s"] == 5.0
        remote = RemoteReward(server.url)
        start = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(lambda _: remote.score([Sample("", "sleep:1.5", "x")]), range(2)))
        elapsed = time.monotonic() - start
    finally:
        server.stop()
    assert all(o.status is Status.OK for [o] in outs)
    assert elapsed < 2.8, f"{elapsed:.2f} s: the two batches ran one after the other"


def test_openrlhf_0_8_http_without_extra_logs(math_server):
    """OpenRLHF 0.8.x (openrlhf/utils/remote_rm_utils.py, ``request_api_wrapper``) posts the
    whole batch and ``torch.cat`` s ``extra_logs`` values, which JSON lists cannot be:
    ``/get_reward?extra_logs=0`` leaves them out."""
    import torch

    body = {"query": ["<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n\\boxed{4}<|im_end|>"], "prompts": ["<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"], "labels": ["4"]}
    status, data = math_server.post("/get_reward?extra_logs=0", json.dumps(body).encode())
    assert status == 200 and "extra_logs" not in data
    rewards_info = [data]
    rewards = torch.cat([torch.as_tensor(info["rewards"]) for info in rewards_info], dim=0)  # 0.8.11 experience_maker.py
    assert rewards.tolist() == [1.0]


def test_remote_is_a_registered_verifier_for_rlvr_trainers():
    from rlvr.registry import load_verifier
    from rlvr.trainers import online
    from rlvr.trainers.grpo_config import GRPOConfig

    reward = load_verifier("remote", url="http://127.0.0.1:9", reward="math")
    assert isinstance(reward, RemoteReward) and reward.name == "math"
    _, reward = online.environment_and_reward(GRPOConfig(env="gsm8k", verifier="remote", verifier_kwargs={"url": "http://127.0.0.1:9"}))
    assert isinstance(reward, RemoteReward)
    from rlvr.trainers.config import ConfigError

    with pytest.raises(ConfigError, match="http:// or https://"):  # a bad value is a config error, not a traceback
        online.environment_and_reward(GRPOConfig(env="gsm8k", verifier="remote", verifier_kwargs={"url": "ftp://x"}))


class ServerThatDies:
    """A RemoteReward whose server is stopped before the trainer's second scoring call and
    started again (same port) before the third."""

    def __init__(self, server: Server) -> None:
        from rlvr.registry import load_verifier

        self.server = server
        self.remote = load_verifier("remote", url=server.url)
        self.name = self.remote.name
        self.calls = 0

    def score(self, samples):
        self.calls += 1
        if self.calls == 2:
            self.server.stop()
        elif self.calls == 3:
            self.server = Server("--reward", "test_integrations_server:Len3", port=self.server.port)
        return self.remote.score(samples)


@pytest.mark.slow
def test_a_run_scoring_through_a_server_that_dies_goes_on_and_resumes(tmp_path):
    """rlvr's GRPOTrainer scores through ``--verifier remote``: while the server is down a
    step's outcomes are ERROR with the reason (not zeros), and scoring resumes when it is back."""
    from conftest import tiny_causal_lm
    from transformers import AutoTokenizer

    from rlvr.environments.base import Task
    from rlvr.models import resolve_model
    from rlvr.trainers.grpo_config import GRPOConfig
    from rlvr.trainers.grpo_trainer import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tasks = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in ["cats", "rain", "trees", "bread"]]
    reward = ServerThatDies(Server("--reward", "test_integrations_server:Len3"))
    config = GRPOConfig(
        generator="hf", max_steps=3, num_generations=4, generation_batch_size=8, max_completion_length=8, micro_batch_size=4,
        learning_rate=1e-2, output_dir=str(tmp_path), progress_bar=False, system_prompt=None, bf16=False,
        eval_before=False, eval_after=False, save_final_model=False,
    )
    try:
        GRPOTrainer(config, model=tiny_causal_lm(tokenizer), reward=reward, train_tasks=tasks, tokenizer=tokenizer).train()
    finally:
        reward.server.stop()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["n_error"] for r in rows] == [0, 8, 0]
    assert rows[0]["n_ok"] == rows[2]["n_ok"] == 8
