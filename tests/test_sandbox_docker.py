"""The sandbox contract against a real Docker engine (warm pool of containers reset by their PID 1).

Skipped, with the reason shown, when no engine answers; CI starts one with
``.ci/start_docker.sh`` so these run for real there.
"""

from __future__ import annotations

import os
import time

import pytest
from test_sandbox_bubblewrap import FAST, SandboxContract

from rlvr.sandboxes import Limits, get_sandbox


def _docker_sandbox(**kwargs):
    try:
        return get_sandbox("docker", **kwargs)
    except RuntimeError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the Docker tests for real, but no engine is usable: {exc}")
        pytest.skip(f"no usable Docker engine: {exc}")


@pytest.mark.docker
class TestDocker(SandboxContract):
    """Every attack of the contract, against containers from the warm pool."""

    @pytest.fixture(scope="class")
    def sandbox(self):
        box = _docker_sandbox(pool_size=3)
        yield box
        box.close()

    def test_oom_verdict_does_not_leak_into_next_run(self, sandbox):
        oom = sandbox.run("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))\n", limits=Limits(timeout_s=20, memory_mb=4096))
        assert oom.status == "memory_limit", oom  # the container's cgroup cap (512 MB), not RLIMIT_AS
        for _ in range(3):  # whichever container comes next, its OOM counter starts at zero
            r = sandbox.run("import os\nos.kill(os.getpid(), 9)", limits=FAST)
            assert (r.status, r.exit_code) == ("runtime_error", -9), r

    def test_container_is_reset_not_reused_dirty(self, sandbox):
        marks = ["/dev/shm/mark", "/tmp/mark", "/sandbox/mark"]
        sandbox.run(f"for p in {marks!r}:\n    open(p, 'w').write('x')\nimport os\nos.setsid() if os.fork() == 0 else None\nimport time\ntime.sleep(0.2)", limits=FAST)
        for _ in range(4):  # more runs than containers in the pool: one of them reuses the dirty container
            r = sandbox.run(f"import os\nprint(any(map(os.path.exists, {marks!r})), sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))", limits=FAST)
            exists, pids = r.stdout.split(" ", 1)
            assert exists == "False"
            assert len(eval(pids)) == 2, r.stdout  # PID 1 (the job runner) and this program only

    def test_clean_runs_keep_their_container(self, sandbox):
        """A run that ends normally leaves a reset container, not one to restart: PID 1 (whose
        start time a restart would change) serves many runs."""
        sandbox.wait_until_ready(60)
        starts = set()
        for _ in range(9):  # three rounds of a pool of 3
            r = sandbox.run("print(open('/proc/1/stat').read().rsplit(')', 1)[1].split()[19])", limits=FAST)
            assert r.status == "ok", r
            starts.add(r.stdout)
        assert len(starts) <= 3, starts

    def test_warm_pool_is_fast(self, sandbox):
        time.sleep(2)  # let the pool refill
        r = sandbox.run("print(1)", limits=FAST)
        assert r.status == "ok"
        assert r.wall_s < 2.0, r.wall_s  # a cold `docker run` is ~0.6 s here; this guards against a cold path only


@pytest.mark.docker
def test_missing_image_says_how_to_build():
    _docker_sandbox(pool_size=1).close()
    with pytest.raises(RuntimeError, match="build-image"):
        get_sandbox("docker", image="rlvr-no-such-image:0")


def test_no_engine_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(RuntimeError, match="no Docker engine reachable"):
        get_sandbox("docker")
