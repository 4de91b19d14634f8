"""Adversarial tests of the bubblewrap sandbox: one attacked property per test, real bwrap.

``SandboxContract`` holds the attacks every backend must stop; ``tests/test_sandbox_docker.py``
runs the same class against a real Docker engine.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import struct
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


# Programs that try to hold a run past its deadline (``Limits(timeout_s=2)``), and the status
# each must end with. Every one must be back within the deadline + 1.5 s.
HOSTILE = {
    "stdout_flood": ('import sys\nwhile True:\n    sys.stdout.write("A" * 65536 + "\\n")\n', "timeout"),
    "stderr_flood": ('import sys\nwhile True:\n    sys.stderr.write("E" * 65536 + "\\n")\n', "timeout"),
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", "timeout"),
    "sleep": ("import time\ntime.sleep(3600)\n", "timeout"),
    "ignores_sigterm": (
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
        "timeout",
    ),
    "child_outlives_parent": (
        "import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    while True:\n"
        "        sys.stdout.write('child\\n'); sys.stdout.flush(); time.sleep(0.01)\ntime.sleep(0.2)\nprint('parent done')\n",
        "ok",
    ),
}

# System calls the sandbox's seccomp filter denies (rlvr.sandboxes.base.DENIED_SYSCALLS), each
# called with arguments under which it would succeed, or fail with another errno than EPERM,
# for an unprivileged program without the filter (see test_syscall_probes_work_without_the_filter).
_NR = {
    "x86_64": dict(ptrace=101, process_vm_readv=310, process_vm_writev=311, perf_event_open=298, bpf=321, userfaultfd=323, keyctl=250,
                   add_key=248, request_key=249, kexec_load=246, kexec_file_load=320, io_uring_setup=425, io_uring_enter=426,
                   io_uring_register=427, unshare=272),
    "aarch64": dict(ptrace=117, process_vm_readv=270, process_vm_writev=271, perf_event_open=241, bpf=280, userfaultfd=282, keyctl=219,
                    add_key=217, request_key=218, kexec_load=104, kexec_file_load=294, io_uring_setup=425, io_uring_enter=426,
                    io_uring_register=427, unshare=97),
}  # fmt: skip
_PROBE = """import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {nr!r}
def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
def buf(n, fields=()):
    b = ctypes.create_string_buffer(n)
    for off, ctype, value in fields:
        ctype.from_buffer(b, off).value = value
    return b
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
here, there = buf(16, [(0, ctypes.c_uint64, 42)]), buf(16)
local, remote = iovec(ctypes.addressof(there), 8), iovec(ctypes.addressof(here), 8)
def addr(b):
    return ctypes.addressof(b)
r, e = {call}
print(r, errno.errorcode.get(e, e))
"""
SYSCALL_ATTACKS = {
    "ptrace": 'call("ptrace", 16, os.getppid(), 0, 0)',  # PTRACE_ATTACH to the parent
    "process_vm_readv": 'call("process_vm_readv", os.getpid(), addr(local), 1, addr(remote), 1, 0)',
    "process_vm_writev": 'call("process_vm_writev", os.getpid(), addr(local), 1, addr(remote), 1, 0)',
    # a software task-clock counter on itself, user space only: allowed at perf_event_paranoid <= 2
    "perf_event_open": 'call("perf_event_open", addr(buf(128, [(0, ctypes.c_uint32, 1), (4, ctypes.c_uint32, 112), (8, ctypes.c_uint64, 1), (40, ctypes.c_uint64, 0b1100001)])), 0, -1, -1, 0)',
    "bpf": 'call("bpf", 0, addr(buf(128, [(0, ctypes.c_uint32, 2), (4, ctypes.c_uint32, 4), (8, ctypes.c_uint32, 4), (12, ctypes.c_uint32, 1)])), 72)',
    "userfaultfd": 'call("userfaultfd", 1 | os.O_CLOEXEC)',  # UFFD_USER_MODE_ONLY: needs no privilege
    "keyctl": 'call("keyctl", 0, -3, 0)',  # KEYCTL_GET_KEYRING_ID of the session keyring
    "add_key": 'call("add_key", addr(ctypes.create_string_buffer(b"user")), addr(ctypes.create_string_buffer(b"k")), addr(ctypes.create_string_buffer(b"v")), 1, -2)',
    "request_key": 'call("request_key", addr(ctypes.create_string_buffer(b"user")), addr(ctypes.create_string_buffer(b"k")), 0, 0)',
    "kexec_load": 'call("kexec_load", 0, 0, 0, 0)',
    "kexec_file_load": 'call("kexec_file_load", -1, -1, 0, 0, 2)',
    "io_uring_setup": 'call("io_uring_setup", 1, addr(buf(120)))',
    "io_uring_enter": 'call("io_uring_enter", -1, 0, 0, 0, 0, 0)',  # EBADF without the filter
    "io_uring_register": 'call("io_uring_register", -1, 0, 0, 0)',
    "unshare": 'call("unshare", 0x200)',  # CLONE_FS: allowed to anyone without the filter
}  # fmt: skip


def syscall_probe(name: str) -> str:
    """A program that makes the system call ``name`` and prints ``<return value> <errno name>``."""
    nr = _NR.get(platform.machine())
    if nr is None:
        pytest.skip(f"no system call numbers for {platform.machine()} in this test")
    return _PROBE.format(nr=nr, call=SYSCALL_ATTACKS[name])


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

    def test_control_program_is_a_real_main_module(self, sandbox):
        """What works under ``python main.py`` works here: pickling functions of ``__main__``
        (multiprocessing with fork and with spawn), ``__file__``, ``sys.argv[0]``."""
        program = (
            "import multiprocessing, pickle, sys\n"
            "from multiprocessing import Pool\n"
            "def sq(x):\n"
            "    return x * x\n"
            "if __name__ == '__main__':\n"
            "    with Pool(2) as p:\n"
            "        print(p.map(sq, range(5)))\n"
            "    with multiprocessing.get_context('spawn').Pool(1) as p:\n"
            "        print(p.map(sq, [7]))\n"
            "    print(pickle.loads(pickle.dumps(sq)) is sq, sys.modules['__main__'].__file__ == sys.argv[0] == __file__)\n"
        )
        r = sandbox.run(program, limits=Limits(timeout_s=30, memory_mb=512, max_processes=32))
        assert r.status == "ok", r
        assert r.stdout == "[0, 1, 4, 9, 16]\n[49]\nTrue True\n"

    def test_control_threads_and_subprocess_under_the_syscall_filter(self, sandbox):
        program = (
            "import subprocess, sys, threading\n"
            "out = []\n"
            "ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(sorted(out), subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout.strip())\n"
        )
        r = sandbox.run(program, limits=FAST)
        assert (r.status, r.stdout) == ("ok", "[0, 1, 2, 3, 4, 5, 6, 7] 42\n"), r

    # --- attacks ---------------------------------------------------------------------------

    @pytest.mark.parametrize("pattern", sorted(HOSTILE))
    def test_run_returns_by_its_deadline(self, sandbox, pattern):
        program, status = HOSTILE[pattern]
        limits = Limits(timeout_s=2, memory_mb=128, max_output_bytes=1 << 20, max_processes=32)
        start = time.monotonic()
        r = sandbox.run(program, limits=limits)
        elapsed = time.monotonic() - start
        assert r.status == status, r
        assert elapsed < limits.timeout_s + 1.5, f"{pattern}: returned after {elapsed:.1f} s with timeout_s={limits.timeout_s}"

    @pytest.mark.parametrize("name", sorted(SYSCALL_ATTACKS))
    def test_denied_syscall_fails_with_eperm(self, sandbox, name):
        r = sandbox.run(syscall_probe(name), limits=FAST)
        assert r.status == "ok", r  # denied with an error, not a silent kill
        assert r.stdout == "-1 EPERM\n", f"{name}: {r.stdout!r}"

    def test_ipc_objects_do_not_reach_next_run(self, sandbox):
        create = (
            "import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.shmget(0, 4096, 0o1600) >= 0, libc.msgget(0, 0o1600) >= 0, libc.semget(0, 1, 0o1600) >= 0)\n"
        )
        first = sandbox.run(create, limits=FAST)
        assert first.stdout == "True True True\n", first
        count = "print([len(open('/proc/sysvipc/' + k).read().splitlines()) - 1 for k in ('shm', 'msg', 'sem')])"
        for _ in range(4):  # more runs than a Docker pool has containers: one of them reuses the first's
            r = sandbox.run(count, limits=FAST)
            assert r.stdout == "[0, 0, 0]\n", r

    def test_previous_runs_stdin_not_in_memory(self, sandbox):
        """A run's stdin (a harness's tests) must not be readable from any later run's memory."""
        secret = "SECRET-" + uuid.uuid4().hex
        # ~160 KB: large enough that the pages it passed through would still hold copies
        # (without the Docker PID 1's re-exec after each run, the scan below finds them).
        first = sandbox.run("import sys\nprint(len(sys.stdin.read()))", stdin=secret * 4096, limits=FAST)
        assert first.stdout == f"{len(secret) * 4096}\n", first
        scan = (
            "import ctypes, re\n"
            "ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE 1: its own /proc/self/mem readable\n"
            "pattern = re.compile(b'SEC' + b'RET-[0-9a-f]{32}')\n"
            "found = set()\n"
            "for pid in ('self', '1'):\n"
            "    try:\n"
            "        maps = open(f'/proc/{pid}/maps').read().splitlines()\n"
            "        mem = open(f'/proc/{pid}/mem', 'rb', 0)\n"
            "    except OSError:\n"
            "        continue\n"
            "    for line in maps:\n"
            "        lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
            "        if 'r' not in line.split()[1]:\n"
            "            continue\n"
            "        try:\n"
            "            mem.seek(lo)\n"
            "            found.update(m.decode() for m in pattern.findall(mem.read(hi - lo)))\n"
            "        except (OSError, OverflowError, ValueError):\n"
            "            pass\n"
            "print(sorted(found))\n"
        )
        for _ in range(4):  # more runs than a Docker pool has containers: one of them reuses the first's
            r = sandbox.run(scan, limits=Limits(timeout_s=20, memory_mb=512))
            assert r.status == "ok", r
            assert secret not in r.stdout, r.stdout


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


def test_syscall_probes_work_without_the_filter():
    """The control for test_denied_syscall_fails_with_eperm: the same sandbox with an allow-all
    filter in place of rlvr's lets these calls through, so EPERM there is the filter's doing."""
    box = get_sandbox("bubblewrap", warm=0)
    box._seccomp = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K SECCOMP_RET_ALLOW
    seen = {name: box.run(syscall_probe(name), limits=FAST).stdout for name in ("process_vm_readv", "io_uring_enter", "unshare")}
    assert seen == {"process_vm_readv": "8 0\n", "io_uring_enter": "-1 EBADF\n", "unshare": "0 0\n"}, seen


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
