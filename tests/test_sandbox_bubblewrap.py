"""Adversarial tests of the bubblewrap sandbox: one attacked property per test, real bwrap.

``SandboxContract`` holds the attacks every backend must stop; ``tests/test_sandbox_docker.py``
runs the same class against a real Docker engine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from rlvr.sandboxes import ExecResult, Limits, Sandbox, get_sandbox

FAST = Limits(timeout_s=10, memory_mb=256, max_output_bytes=1 << 16, max_processes=32)


def _host_pids_with_marker(marker: str) -> list[int]:
    """Host processes whose command line contains ``marker`` (any namespace, any uid)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


class SandboxContract:
    """Attacks every sandbox backend must stop, and controls every backend must pass."""

    @pytest.fixture
    def sandbox(self) -> Sandbox:
        raise NotImplementedError

    # --- controls: normal programs work ---------------------------------------------------

    def test_control_reads_stdin(self, sandbox):
        r = sandbox.run("import sys\nprint(sys.stdin.read().upper())", stdin="hello\nworld", limits=FAST)
        assert r.status == "ok", r
        assert r.stdout == "HELLO\nWORLD\n"

    def test_control_writes_work_dir_and_reads_files(self, sandbox):
        program = (
            "data = open('data/in.txt').read()\n"
            "open('out.txt', 'w').write(data * 2)\n"
            "import tempfile, os\n"
            "with tempfile.NamedTemporaryFile('w', delete=False) as f: f.write('t')\n"
            "print(len(data), os.path.getsize(f.name))\n"
        )
        r = sandbox.run(program, files={"data/in.txt": "abc"}, fetch=["out.txt"], limits=FAST)
        assert r.status == "ok", r
        assert r.stdout == "3 1\n"
        assert r.files == {"out.txt": b"abcabc"}

    def test_control_prints_100_kb(self, sandbox):
        r = sandbox.run("print('x' * 100_000)", limits=Limits(timeout_s=10, max_output_bytes=1 << 20))
        assert r.status == "ok" and not r.truncated
        assert r.stdout == "x" * 100_000 + "\n"

    def test_control_exit_code_and_stderr(self, sandbox):
        r = sandbox.run("import sys\nsys.stderr.write('bad')\nsys.exit(3)", limits=FAST)
        assert (r.status, r.exit_code, r.stderr) == ("runtime_error", 3, "bad")

    # --- attacks ---------------------------------------------------------------------------

    def test_network_unreachable(self, sandbox):
        program = (
            "import socket\n"
            "for host, port in [('1.1.1.1', 53), ('8.8.8.8', 443), ('172.17.0.1', 2375), ('pypi.org', 443)]:\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=2).close()\n"
            "        print('CONNECTED', host)\n"
            "    except OSError as e:\n"
            "        print('blocked', host)\n"
        )
        r = sandbox.run(program, limits=FAST)
        assert r.status == "ok", r
        assert "CONNECTED" not in r.stdout
        assert r.stdout.count("blocked") == 4

    def test_host_files_unreadable(self, sandbox, tmp_path):
        secret = tmp_path / "secret.txt"
        secret.write_text("TOP-SECRET-" + uuid.uuid4().hex)
        os.chmod(tmp_path, 0o755)
        os.chmod(secret, 0o644)  # world-readable on the host: only the mount namespace hides it
        targets = [str(secret), "/root/.bashrc", "/etc/shadow", "/etc/passwd", "/etc/hostname", os.path.abspath("pyproject.toml"), "/var/run/docker.sock"]
        host = {}
        for p in targets:
            try:
                host[p] = hashlib.sha256(open(p, "rb").read()).hexdigest()
            except OSError:
                pass
        program = (
            "import hashlib\n"
            f"for p in {targets!r}:\n"
            "    try:\n"
            "        print(p, hashlib.sha256(open(p, 'rb').read()).hexdigest())\n"
            "    except OSError:\n"
            "        print(p, 'denied')\n"
        )
        r = sandbox.run(program, limits=FAST)
        assert r.status == "ok", r
        seen = dict(line.rsplit(" ", 1) for line in r.stdout.splitlines())
        assert seen[str(secret)] == "denied"
        leaked = [p for p, digest in seen.items() if host.get(p) == digest]
        assert leaked == [], f"host files readable in the sandbox: {leaked}"

    def test_host_env_vars_invisible(self, sandbox, monkeypatch):
        token = "tok-" + uuid.uuid4().hex
        monkeypatch.setenv("RLVR_TEST_API_KEY", token)
        r = sandbox.run("import os\nprint(dict(os.environ))\nprint(open('/proc/1/environ','rb').read() if os.path.exists('/proc/1/environ') else '')", limits=FAST)
        assert token not in r.stdout + r.stderr
        assert "RLVR_TEST_API_KEY" not in r.stdout

    def test_writes_do_not_reach_host_or_next_run(self, sandbox):
        mark = uuid.uuid4().hex
        program = (
            "import os\n"
            f"for p in ['leak.txt', '/tmp/rlvr-leak-{mark}', '/dev/shm/rlvr-leak-{mark}', '/usr/rlvr-leak-{mark}', '/rlvr-leak-{mark}']:\n"
            "    try:\n"
            "        open(p, 'w').write('x'); print('wrote', p)\n"
            "    except OSError:\n"
            "        print('denied', p)\n"
        )
        first = sandbox.run(program, limits=FAST)
        assert first.status == "ok", first
        assert f"denied /usr/rlvr-leak-{mark}" in first.stdout
        for host_path in (f"/tmp/rlvr-leak-{mark}", f"/dev/shm/rlvr-leak-{mark}", f"/usr/rlvr-leak-{mark}", f"/rlvr-leak-{mark}"):
            assert not os.path.exists(host_path)
        second = sandbox.run(
            f"import os\nprint([p for p in ['leak.txt', '/tmp/rlvr-leak-{mark}', '/dev/shm/rlvr-leak-{mark}', '/rlvr-leak-{mark}'] if os.path.exists(p)])",
            limits=FAST,
        )
        assert second.stdout == "[]\n", second

    def test_process_cap_holds(self, sandbox):
        program = (
            "import os, time\n"
            "n = 0\n"
            "try:\n"
            "    for _ in range(500):\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(30); os._exit(0)\n"
            "        n += 1\n"
            "except OSError:\n"
            "    pass\n"
            "print(n)\n"
            "os.kill(-1, 9)\n"
        )
        r = sandbox.run(program, limits=Limits(timeout_s=20, memory_mb=256, max_processes=16))
        assert r.stdout.strip().isdigit(), r
        assert int(r.stdout) < 16, f"forked {r.stdout.strip()} children under a cap of 16 (host uid {os.geteuid()})"

    def test_fork_bomb_contained(self, sandbox):
        marker = "forkbomb-" + uuid.uuid4().hex
        program = f"import os\n# {marker}\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
        start = time.monotonic()
        r = sandbox.run(program, limits=Limits(timeout_s=3, memory_mb=128, max_processes=32))
        assert r.status == "timeout"
        assert time.monotonic() - start < 15
        time.sleep(0.5)
        assert subprocess.run(["true"]).returncode == 0  # the host can still start processes
        assert _host_pids_with_marker(marker) == []

    def test_memory_bomb_contained(self, sandbox):
        r = sandbox.run("x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n", limits=Limits(timeout_s=10, memory_mb=200))
        assert r.status == "memory_limit", r

    def test_infinite_loop_killed_on_time(self, sandbox):
        start = time.monotonic()
        r = sandbox.run("while True:\n    pass\n", limits=Limits(timeout_s=1.5))
        elapsed = time.monotonic() - start
        assert r.status == "timeout" and r.exit_code is None
        assert elapsed < 6, elapsed

    def test_sigterm_ignoring_setsid_daemon_killed(self, sandbox):
        marker = "daemon-" + uuid.uuid4().hex
        daemon = (
            "import os, signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
            "if os.fork(): os._exit(0)\n"
            "os.setsid()\n"
            "while True:\n"
            "    open('/tmp/alive', 'w').write(str(time.time())); time.sleep(0.05)\n"
        )
        program = (
            "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', {daemon!r}, '{marker}'], start_new_session=True)\n"
            "time.sleep(0.5)\n"
            "print('started')\n"
        )
        r = sandbox.run(program, limits=FAST)
        assert r.stdout == "started\n", r
        deadline = time.monotonic() + 5
        while _host_pids_with_marker(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _host_pids_with_marker(marker) == []
        nxt = sandbox.run("import os\nprint(os.path.exists('/tmp/alive'))", limits=FAST)
        assert nxt.stdout == "False\n"

    def test_huge_output_truncated(self, sandbox):
        r = sandbox.run("import sys\nfor _ in range(200):\n    sys.stdout.write('y' * 100_000)\n", limits=Limits(timeout_s=20, max_output_bytes=50_000))
        assert r.truncated
        assert len(r.stdout) <= 50_000
        assert r.stdout.startswith("y" * 1000)

    def test_core_dumps_absent(self, sandbox):
        program = "import os, resource\nprint(resource.getrlimit(resource.RLIMIT_CORE), flush=True)\nos.abort()\n"
        r = sandbox.run(program, limits=FAST, fetch=["core"])
        assert r.stdout == "(0, 0)\n", r
        assert r.exit_code == -6
        assert r.files == {}
        listing = sandbox.run("import os\nprint(os.listdir('.'))", limits=FAST)
        assert "core" not in listing.stdout

    def test_grader_survives_kill_all(self, sandbox):
        results: dict[str, ExecResult] = {}

        def neighbour() -> None:
            results["neighbour"] = sandbox.run("import time\ntime.sleep(2)\nprint('survived')", limits=FAST)

        t = threading.Thread(target=neighbour)
        t.start()
        time.sleep(0.5)
        r = sandbox.run("import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('after')", limits=FAST)
        t.join()
        assert isinstance(r, ExecResult) and r.status in ("ok", "runtime_error")
        assert results["neighbour"].stdout == "survived\n", results["neighbour"]

    def test_fetch_does_not_follow_symlinks(self, sandbox):
        r = sandbox.run("import os\nos.symlink('/etc/hostname', 'out.txt')\nos.symlink('/proc/self/environ', 'env')", fetch=["out.txt", "env"], limits=FAST)
        assert r.status == "ok", r
        assert r.files == {}


class TestBubblewrap(SandboxContract):
    """The contract against a real bubblewrap sandbox."""

    @pytest.fixture(scope="class")
    def sandbox(self):
        if shutil.which("bwrap") is None:
            pytest.skip("bubblewrap not installed: apt-get install -y bubblewrap")
        return get_sandbox("bubblewrap")


def test_unknown_sandbox_lists_known():
    with pytest.raises(ValueError, match="bubblewrap, docker"):
        get_sandbox("chroot")


def test_missing_bwrap_fails_closed(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="apt-get install -y bubblewrap"):
        get_sandbox("bubblewrap")


def test_broken_bwrap_is_sandbox_error(fake_dir):
    """A bwrap that fails before the program runs is a sandbox_error, never a program result."""
    fake = fake_dir / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    r = get_sandbox("bubblewrap", bwrap=str(fake)).run("print(1)", limits=FAST)
    assert r.status == "sandbox_error"
    assert "setting up uid map: Permission denied" in r.stderr


def test_program_cannot_fake_sandbox_error():
    r = get_sandbox("bubblewrap").run("import sys\nsys.stderr.write('bwrap: setting up uid map: Permission denied')\nsys.exit(1)", limits=FAST)
    assert r.status == "runtime_error"


def test_runs_as_unprivileged_user_without_capabilities():
    r = get_sandbox("bubblewrap").run(
        "import os\nprint(os.getuid(), os.getgid())\nprint([l for l in open('/proc/self/status') if l.startswith(('CapEff', 'NoNewPrivs'))])",
        limits=FAST,
    )
    assert r.stdout.startswith("65534 65534\n"), r
    assert "CapEff:\\t0000000000000000" in r.stdout and "NoNewPrivs:\\t1" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="bwrap drops to host uid 65534 only when started by root")
@pytest.mark.parametrize("via_setpriv", [True, False], ids=["setpriv", "popen-user"])
def test_bwrap_itself_runs_as_host_nobody_without_groups(via_setpriv):
    """Under root the bwrap process is host uid/gid 65534 with no supplementary groups and no
    capabilities, whether it is dropped there by setpriv(1) or by Popen's user=/group=."""
    box = get_sandbox("bubblewrap", warm=0)
    if via_setpriv and box._setpriv is None:
        pytest.skip("setpriv(1) is not installed (util-linux)")
    if not via_setpriv:
        box._setpriv = None
    started = box._start()
    try:
        seen = b""
        while b"child-pid" not in seen:  # bwrap is up (setpriv has exec'd it) once it reports its child
            chunk = os.read(started.status_r, 4096)
            assert chunk, f"bwrap did not start: {started.proc.stderr.read()!r}"
            seen += chunk
        status = Path(f"/proc/{started.proc.pid}/status").read_text()
    finally:
        started.discard()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split() == ["65534"] * 4, status
    assert fields["Gid"].split() == ["65534"] * 4, status
    assert fields["Groups"].split() == [], status
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0, status
