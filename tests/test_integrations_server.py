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
from pathlib import Path

import pytest

from rlvr.integrations.remote import RemoteReward
from rlvr.rewards import Outcome, Sample, Status

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``python -m rlvr serve`` process on 127.0.0.1; ``stop()`` always ends it."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
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
