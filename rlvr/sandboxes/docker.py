"""Docker sandbox: a warm pool of locked-down containers, each reset by its PID 1 after every run.

``DockerSandbox`` talks to a local engine through the Docker SDK (``import docker``). It
keeps ``pool_size`` containers started, each attached once (one stream for all its runs)
and with a trusted Python interpreter as PID 1 waiting on its stdin for a job. ``run``
sends the program, its files and its stdin on that stream and reads the output back
(a few ms of overhead, against ~0.6-1 s for a ``docker run`` per program). PID 1 forks the
program as a real ``__main__`` module file (``/sandbox/main.py``, so ``multiprocessing``
and pickling work as under ``python main.py``), enforces the deadline itself, and after the
program ends it *resets the container*: it SIGKILLs every other process (``kill(-1)``,
repeated until ``/proc`` lists none), empties ``/sandbox``, ``/tmp``, ``/dev/shm`` and
``/dev/mqueue``, removes every System V IPC object, then writes the run's result behind a
per-run token the program never had, and re-executes itself so that nothing of the job stays
in its memory. A container whose reset was not confirmed in time (a stream that breaks, a
deadline passed without the result) is killed and started again by a background thread,
off the caller's path, before anyone else gets it; the caller never waits on the engine
after its deadline.

The default image, ``rlvr-python:3.11``, is built locally without a registry from the
host's Debian Python (``/usr/bin/python3.11``, its standard library and the shared
libraries it links) by ``python -m rlvr.sandboxes.docker build-image``.

Threat model -- what it covers:

- **Network**: ``network_mode="none"``: no interface but loopback.
- **Host files**: only the image's files (the Python runtime) on a read-only root; the work
  directory ``/sandbox`` and ``/tmp`` are size-capped tmpfs mounts. No host path and never
  the Docker socket is mounted.
- **Identity**: uid/gid 65534, ``cap_drop=["ALL"]``, ``no-new-privileges``.
- **Environment**: only ``PATH``, ``HOME``, ``LANG`` (plus Docker's ``HOSTNAME``); nothing of
  the host's environment.
- **System calls**: Docker's default seccomp profile, and under it rlvr's own filter
  (installed by PID 1, inherited by every program): the calls of
  :data:`rlvr.sandboxes.base.DENIED_SYSCALLS` (``ptrace``, ``process_vm_*``, ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, keyring, ``kexec_*``, mounts, ...)
  fail with ``EPERM``, the same list as the bubblewrap backend (Docker 20.10's profile alone
  lets ``io_uring_setup`` through).
- **Processes and resources**: the container's cgroup caps memory (``memory_mb``, no swap),
  processes (``pids_limit``) and CPU (``cpus``); rlimits cap file size, address space and
  CPU seconds; core dumps are off. At the deadline PID 1 kills every process of the run, so
  daemons and signal-ignoring children die with it; ``kill(-1)`` reaches only the container
  and never PID 1 (the kernel delivers no signal to a namespace's init that it has no
  handler for). PID 1 is non-dumpable and ``ptrace`` is denied, so a program cannot read
  the end token or another run's data out of it.
- **Persistence**: between two runs, PID 1 resets the container (above) and re-executes
  itself; a run starts only after the previous run's result, which PID 1 writes only once
  no other process is left. A container whose reset is not confirmed is restarted.
- **Output**: stdout/stderr are read incrementally from the stream, each capped; the
  result's end token is read by PID 1 only after the program was forked, so a program cannot
  forge the end of its run.
- **Deadline**: ``run`` returns within ``timeout_s`` plus a fraction of a second whatever
  the program does (floods its output, forks, sleeps, ignores signals, leaves children):
  no engine call is made after the deadline; a container that did not report back in time
  is handed to the background restore.

What it does NOT cover:

- Kernel exploits and container escapes through kernel bugs (runc shares the host
  kernel; use a gVisor ``runtime="runsc"`` if that is in scope: pass ``runtime=``).
- Whoever can reach the Docker socket is root on the host: the sandbox never mounts it,
  but the process that drives Docker must itself be trusted.
- State the kernel keeps per container beyond processes, files and IPC objects: the pid
  counter goes on across runs (a program sees that runs came before it), and so do the
  cgroup's counters (rlvr compares the OOM-kill counter before and after each run).
  Timing side channels between runs of one container.
- CPU contention between containers and the host.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import queue
import secrets
import select
import struct
import subprocess
import sys
import tarfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence

from rlvr.sandboxes.base import ExecResult, Limits, check_relative_path, seccomp_filter
from rlvr.sandboxes.bubblewrap import classify_failure

__all__ = ["DockerSandbox", "build_image", "DEFAULT_IMAGE"]

DEFAULT_IMAGE = "rlvr-python:3.11"
WORK_DIR = "/sandbox"
UID = "65534:65534"
# After its deadline a run waits at most this long for PID 1's result (kill, fetch, reset);
# past it the run returns "timeout" and the container is restarted in the background.
_GRACE_S = 0.5
_TOKEN_BYTES = 16  # hex characters: 32
_START_HINT = (
    "start one with `dockerd --storage-driver vfs --iptables=false --bridge=none &` "
    "(or `.ci/start_docker.sh`), or use sandbox='bubblewrap'"
)

# PID 1 of each pool container (argv: the seccomp filter as hex, empty once installed).
# One job per process image: it waits for a job on stdin (12-byte length + netstring header),
# writes the files, writes the job's start token to stderr, forks the program (a real
# ``__main__`` module from /sandbox/main.py, with the job's rlimits), and only then reads the
# 32-character end token (so the program never has it in memory) and pumps the program's
# stdin, which follows, into a pipe. At the program's exit or the deadline it kills every
# other process, fetches the files asked for (O_NOFOLLOW, regular files only), resets the
# container (tmpfs mounts emptied, SysV IPC removed), writes the end token to stdout and the
# end token + 12-byte length + netstring result to stderr, and re-executes itself (a fresh
# image: the next program, forked from it, inherits no page this job's data passed through).
# Standard library only, few imports: their cost is paid once per run.
_BOOT = r"""
import os, sys, ctypes, _signal
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0 (reset by every exec): nothing of a job can be read out of PID 1
_signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # PID 1 gets no signal it has no handler for: none, then
_argv = open("/proc/self/cmdline", "rb").read().split(b"\0")[:-1]
if _argv[-1]:
    _libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS (Docker's no-new-privileges sets it too)
    _bpf = ctypes.create_string_buffer(bytes.fromhex(_argv[-1].decode()))
    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    if _libc.prctl(22, 2, ctypes.byref(_Prog(len(_bpf.raw) // 8, ctypes.addressof(_bpf))), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        os.write(2, b"rlvr sandbox: cannot install the seccomp filter (errno %d)" % ctypes.get_errno())
        os._exit(126)
    _argv[-1] = b""
import resource, select, stat, time
def _read(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            os._exit(0)  # the engine closed stdin: the container is being removed
        buf += chunk
    return buf
def _items(buf):
    i = 0
    while i < len(buf):
        j = buf.index(b":", i)
        n = int(buf[i:j])
        yield buf[j + 1:j + 1 + n]
        i = j + 1 + n
def _netstrings(items):
    return b"".join(b"%d:%s" % (len(x), x) for x in items)
def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
def _oom_kills():
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            for line in open(path):
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return 0
def _others():
    alive = []
    for p in os.listdir("/proc"):
        if p.isdigit() and p != "1":
            try:
                with open("/proc/" + p + "/stat", "rb") as f:
                    st = f.read()
            except OSError:
                continue
            if st[st.rindex(b")") + 2:st.rindex(b")") + 3] != b"Z":
                alive.append(p)
    return alive
def _kill_all(limit_s):
    end = time.monotonic() + limit_s
    while True:
        try:
            os.kill(-1, 9)  # every process but PID 1; repeated, so a fork racing it is caught next round
        except ProcessLookupError:
            pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not _others():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.001)
def _empty(path, top):
    clean = True
    try:
        if not top:
            os.chmod(path, 0o700)
        names = os.listdir(path)
    except OSError:
        return False
    for name in names:
        p = os.path.join(path, name)
        try:
            if stat.S_ISDIR(os.lstat(p).st_mode):
                clean = _empty(p, False) and clean
                os.rmdir(p)
            else:
                os.unlink(p)
        except OSError:
            clean = False
    return clean
def _reset():
    clean = True
    for d in ("/sandbox", "/tmp", "/dev/shm", "/dev/mqueue"):
        if os.path.isdir(d):
            clean = _empty(d, True) and clean
    for kind, rm in (("shm", lambda i: _libc.shmctl(i, 0, None)), ("msg", lambda i: _libc.msgctl(i, 0, None)), ("sem", lambda i: _libc.semctl(i, 0, 0))):
        try:
            rows = open("/proc/sysvipc/" + kind).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            if rm(int(row.split()[1])) != 0:  # IPC_RMID
                clean = False
    return clean
# The job: netstrings of start token, seconds to the deadline, stdin length, fetch cap,
# rlimits ("NAME=value,..."), the number of files, (name, content) per file, names to fetch.
_job = list(_items(_read(int(_read(12)))))
_deadline = time.monotonic() + float(_job[1])
_left, _fetch_cap, _nfiles = int(_job[2]), int(_job[3]), int(_job[5])
_work = "/sandbox"
os.chdir(_work)
for _k in range(_nfiles):
    _name = _job[6 + 2 * _k].decode()
    if os.path.dirname(_name):
        os.makedirs(os.path.dirname(_name), exist_ok=True)
    with open(_name, "wb") as _f:
        _f.write(_job[7 + 2 * _k])
_fetch = [_x.decode() for _x in _job[6 + 2 * _nfiles:]]
_oom0 = _oom_kills()
os.write(2, _job[0])
_stdin_r, _stdin_w = os.pipe()
_pid = os.fork()
if _pid == 0:
    os.dup2(_stdin_r, 0)
    os.close(_stdin_r)
    os.close(_stdin_w)
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # as under `python main.py`,
    _libc.prctl(4, 1, 0, 0, 0)  # and dumpable (its own /proc/self/maps readable): it holds only its own job
    try:
        with open("/proc/self/oom_score_adj", "w") as _f:
            _f.write("1000")  # under the memory cap the kernel kills the program, not PID 1
    except OSError:
        pass
    for _item in _job[4].decode().split(","):
        _res, _value = _item.split("=")
        resource.setrlimit(getattr(resource, _res), (int(_value), int(_value)))
    _path = os.path.join(_work, "main.py")
    sys.argv = [_path]
    sys.path.insert(0, _work)
    _main = type(sys)("__main__")
    _main.__file__ = _path
    _main.__builtins__ = __builtins__
    _code = compile(open(_path, "rb").read(), _path, "exec")
    del _job
    sys.modules["__main__"] = _main
    exec(_code, _main.__dict__)
    sys.exit(0)
os.close(_stdin_r)
_end = _read(32)
_pending = b""
os.set_blocking(_stdin_w, False)
_pidfd = os.pidfd_open(_pid)
_status = None
while True:
    _remaining = _deadline - time.monotonic()
    if _remaining <= 0:
        break
    _r, _w, _ = select.select([_pidfd] + ([0] if _left and not _pending else []), [_stdin_w] if _pending else [], [], _remaining)
    if _pidfd in _r:
        _status = os.waitpid(_pid, 0)[1]
        break
    if 0 in _r:
        _pending = os.read(0, min(_left, 65536))
        if not _pending:
            os._exit(0)
        _left -= len(_pending)
        if _stdin_w < 0:
            _pending = b""
    if _w:
        try:
            _pending = _pending[os.write(_stdin_w, _pending):]
        except BlockingIOError:
            pass
        except OSError:  # the program closed its stdin: the rest is read and dropped
            _pending = b""
            os.close(_stdin_w)
            _stdin_w = -1
    if _stdin_w >= 0 and not _left and not _pending:
        os.close(_stdin_w)
        _stdin_w = -1
_clean = _kill_all(2.0)
if _stdin_w >= 0:
    os.close(_stdin_w)
os.close(_pidfd)
while _left > 0:  # the rest of the program's stdin, so the next job's header starts where it should
    _left -= len(_read(min(_left, 65536)))
_files = []
for _name in _fetch:
    try:
        _fd = os.open(_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        continue
    try:
        if stat.S_ISREG(os.fstat(_fd).st_mode):
            _files += [_name.encode(), os.read(_fd, _fetch_cap)]
    finally:
        os.close(_fd)
_oom = _oom_kills() > _oom0
_clean = _reset() and _clean
# The result: netstrings of exit code ("" at the deadline), OOM kill seen, reset confirmed, then (name, content) per fetched file.
_code = b"" if _status is None else b"%d" % os.waitstatus_to_exitcode(_status)
_result = _netstrings([_code, b"%d" % _oom, b"%d" % _clean] + _files)
_write_all(1, _end)
_write_all(2, _end + b"%012d" % len(_result) + _result)
os.execv(_argv[0], _argv)
"""


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass  # already gone


def _remove_labelled(client, label: str) -> None:
    try:
        for c in client.containers.list(all=True, filters={"label": f"rlvr.sandbox={label}"}):
            _remove(c)
    except Exception:
        pass  # the engine is gone; nothing left to remove


def _client():
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a dependency
        raise RuntimeError("the Docker SDK is missing: pip install docker, or use sandbox='bubblewrap'") from exc
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # the SDK raises many types for "no engine"
        raise RuntimeError(f"no Docker engine reachable ({type(exc).__name__}: {exc}); {_START_HINT}") from exc
    return client


class _Box:
    """One pool container and the attach stream all its runs go through."""

    def __init__(self, container, sock) -> None:
        self.container = container
        self.sock = sock  # keeps the SDK's wrapper (and so the socket) alive
        self.raw = getattr(sock, "_sock", sock)
        self.raw.setblocking(False)
        self.pids: int | None = None

    def close_stream(self) -> None:
        try:
            self.raw.close()
        except OSError:
            pass


class DockerSandbox:
    """Run untrusted Python in warm containers, reset after every run (threat model: module docstring).

    Args:
        image: Image with ``python3`` on PATH. Default ``rlvr-python:3.11`` (build it with
            ``python -m rlvr.sandboxes.docker build-image``).
        pool_size: Containers kept started (each ~10 MB of memory while waiting). Runs in
            parallel beyond it wait for a container, and that wait counts against their
            deadline: size it to the most runs in flight at once (``CodeVerifier``'s
            ``max_workers``). Default: one per CPU.
        cpus: CPU share of each container.
        work_dir_mb: Size of the ``/sandbox`` and ``/tmp`` tmpfs mounts.
        memory_mb: Container memory cap (cgroup); ``Limits.memory_mb`` also caps each
            process's address space.
        max_processes: The containers' pids cap (a cgroup: it holds for root and does not
            count other containers); a run with another ``Limits.max_processes`` updates it.
        runtime: OCI runtime (``"runsc"`` for gVisor), default the engine's.
        python: Interpreter inside the image.
    """

    name = "docker"

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        pool_size: int | None = None,
        cpus: float = 1.0,
        work_dir_mb: int = 64,
        memory_mb: int = 512,
        max_processes: int = 64,
        runtime: str | None = None,
        python: str = "/usr/bin/python3",
    ) -> None:
        self.client = _client()
        import docker.errors

        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise RuntimeError(
                f"Docker image {image!r} not found; build rlvr's default with "
                f"`python -m rlvr.sandboxes.docker build-image --tag {DEFAULT_IMAGE}` (images cannot be pulled here)"
            ) from None
        self.image = image
        self.pool_size = max(1, int(pool_size if pool_size is not None else os.cpu_count() or 2))
        self.cpus = cpus
        self.work_dir_mb = int(work_dir_mb)
        self.memory_mb = int(memory_mb)
        self.max_processes = int(max_processes)
        self.runtime = runtime
        self.python = python
        self._seccomp_hex = seccomp_filter().hex()  # RuntimeError with what to install: never run without it
        self._label = f"rlvr-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        self._ready: queue.Queue = queue.Queue()
        self._dirty: queue.Queue = queue.Queue()
        self._closed = False
        self._workers = [threading.Thread(target=self._restore_loop, name="rlvr-docker-pool", daemon=True) for _ in range(self.pool_size)]
        for _ in range(self.pool_size):
            self._dirty.put(None)  # None: create a new container
        for t in self._workers:
            t.start()
        # At interpreter exit, remove whatever close() was not called for.
        self._finalizer = weakref.finalize(self, _remove_labelled, self.client, self._label)

    # -- the pool ---------------------------------------------------------------------------

    def _create(self):
        from docker.types import LogConfig, Ulimit

        kwargs = dict(
            image=self.image,
            command=[self.python, "-E", "-s", "-S", "-c", _BOOT, self._seccomp_hex],
            detach=True,
            stdin_open=True,
            user=UID,
            network_mode="none",
            read_only=True,
            tmpfs={
                WORK_DIR: f"size={self.work_dir_mb}m,uid=65534,gid=65534,exec",
                "/tmp": f"size={self.work_dir_mb}m,uid=65534,gid=65534",
            },
            working_dir=WORK_DIR,
            mem_limit=f"{self.memory_mb}m",
            memswap_limit=f"{self.memory_mb}m",
            pids_limit=self.max_processes,
            nano_cpus=int(self.cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ulimits=[Ulimit(name="core", soft=0, hard=0), Ulimit(name="nofile", soft=256, hard=256)],
            environment={"PATH": "/usr/bin:/bin", "HOME": WORK_DIR, "LANG": "C.UTF-8"},
            labels={"rlvr.sandbox": self._label},
            hostname="sandbox",
            ipc_mode="private",
            # Output reaches the caller through the attach stream only: a log driver would
            # copy every run's output to disk (and an output flood would stall the engine).
            log_config=LogConfig(type="none"),
        )
        if self.runtime:
            kwargs["runtime"] = self.runtime
        return self.client.containers.create(**kwargs)

    def _attach_and_start(self, container) -> _Box:
        # Attach before start, so PID 1's first words (a boot failure) are on the stream.
        sock = self.client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        try:
            container.start()
            container.reload()
            if container.status != "running":
                raise RuntimeError(f"container {container.short_id} did not start ({container.status})")
        except Exception:
            getattr(sock, "_sock", sock).close()
            raise
        return _Box(container, sock)

    def _restore_loop(self) -> None:
        """Create containers, and restart those whose reset was not confirmed (kill, start again)."""
        while True:
            box = self._dirty.get()
            if self._closed:
                if box is not None:
                    box.close_stream()
                    _remove(box.container)
                return
            container = None if box is None else box.container
            try:
                if box is not None:
                    box.close_stream()
                    try:
                        container.kill()
                    except Exception:
                        pass  # it has already exited
                    self.client.api.wait(container.id, timeout=30)
                else:
                    container = self._create()
                fresh = self._attach_and_start(container)
                fresh.pids = None if box is None else box.pids
            except Exception as exc:
                if container is not None:
                    _remove(container)
                if box is None:
                    self._ready.put(exc)
                    time.sleep(1.0)
                self._dirty.put(None)  # replace it with a new one
                continue
            if self._closed:
                fresh.close_stream()
                _remove(container)
                return
            self._ready.put(fresh)

    def wait_until_ready(self, timeout_s: float = 60.0) -> bool:
        """Block until every pool container is started and idle; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._ready.qsize() >= self.pool_size:
                return True
            time.sleep(0.02)
        return False

    def _take(self, wait_s: float) -> tuple[_Box, bool]:
        """A ready container, and whether one was ready at once (False: the run waited for one)."""
        try:
            item, ready = self._ready.get_nowait(), True
        except queue.Empty:
            item, ready = self._ready.get(timeout=wait_s), False
        if isinstance(item, Exception):
            raise item
        return item, ready

    def close(self) -> None:
        """Stop the pool and remove every container of this sandbox."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._dirty.put(None)
        for t in self._workers:
            t.join(timeout=60)
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Box):
                item.close_stream()
                _remove(item.container)
        self._finalizer()

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one run ---------------------------------------------------------------------------

    def run(
        self,
        program: str,
        *,
        stdin: str = "",
        files: Mapping[str, str | bytes] = {},
        limits: Limits = Limits(),
        fetch: Sequence[str] = (),
    ) -> ExecResult:
        """Run ``program`` in a warm container from the pool; see :class:`rlvr.sandboxes.Sandbox`."""
        start = time.monotonic()
        entries = [(b"main.py", program.encode())]
        for name, content in files.items():
            entries.append((check_relative_path(name).encode(), content.encode() if isinstance(content, str) else bytes(content)))
        rlimits = (
            f"RLIMIT_AS={limits.memory_mb << 20},RLIMIT_CPU={int(limits.timeout_s) + 2},"
            f"RLIMIT_FSIZE={self.work_dir_mb << 20},RLIMIT_CORE=0"
        )
        stdin_bytes = stdin.encode()
        # The job header (see _BOOT); item 1, the seconds left to the deadline, is set at sending.
        job = [secrets.token_hex(_TOKEN_BYTES).encode(), b"", b"%d" % len(stdin_bytes), b"%d" % limits.max_output_bytes, rlimits.encode()]
        job.append(b"%d" % len(entries))
        for name, data in entries:
            job += [name, data]
        job += [f"{WORK_DIR}/{check_relative_path(n)}".encode() for n in fetch]
        try:
            box, ready = self._take(wait_s=max(30.0, limits.timeout_s))
        except queue.Empty:
            return ExecResult(
                "sandbox_error", None, "", f"no warm container became free in time: pool_size={self.pool_size} is too small for the runs in flight",
                False, time.monotonic() - start,
            )  # fmt: skip
        except Exception as exc:
            return ExecResult("sandbox_error", None, "", f"could not start a container: {exc}", False, time.monotonic() - start)
        # The program's deadline counts from when it has a container (waiting for a free
        # one is the pool's fault, not the program's; size the pool to the runs in flight).
        got = time.monotonic()
        deadline = got + limits.timeout_s
        clean = False
        try:
            result, clean = self._run_in(box, job, stdin_bytes, limits, start, deadline)
            return dataclasses.replace(result, pool_miss=not ready, wait_s=got - start)
        finally:
            # A confirmed reset puts the container straight back; anything else restarts it.
            (self._ready if clean and not self._closed else self._dirty).put(box)

    def _run_in(self, box: _Box, job: list[bytes], stdin: bytes, limits: Limits, start: float, deadline: float) -> tuple[ExecResult, bool]:
        if limits.max_processes != (box.pids or self.max_processes):
            try:
                api = self.client.api
                url = api._url("/containers/{0}/update", box.container.id)
                api._raise_for_status(api._post_json(url, data={"PidsLimit": limits.max_processes}))
                box.pids = limits.max_processes
            except Exception as exc:
                return ExecResult("sandbox_error", None, "", f"could not set the pids limit: {exc}", False, time.monotonic() - start), False
        cap = limits.max_output_bytes
        token = job[0]
        n_fetch = len(job) - 6 - 2 * int(job[5])
        end = secrets.token_hex(_TOKEN_BYTES).encode()
        job[1] = b"%.6f" % max(0.01, deadline - time.monotonic())
        header = b"".join(b"%d:%s" % (len(x), x) for x in job)
        outgoing = memoryview(b"%12d" % len(header) + header + end + stdin)
        stream = _Streams(cap, token, end, trailer_cap=(cap + 4096) * n_fetch + 4096)
        raw = box.raw
        hard = deadline + _GRACE_S
        buf = bytearray()
        eof = False
        poller = select.poll()  # not select(): a long-lived trainer's fds may be past FD_SETSIZE
        try:
            while not stream.done:
                left = hard - time.monotonic()
                if left <= 0:
                    break
                poller.register(raw, select.POLLIN | (select.POLLOUT if outgoing else 0))
                events = dict(poller.poll(left * 1000))
                flags = events.get(raw.fileno(), 0)
                if flags & select.POLLOUT and outgoing:
                    try:
                        outgoing = outgoing[raw.send(outgoing[:65536]) :]
                    except BlockingIOError:
                        pass
                if not flags & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    continue
                try:
                    chunk = raw.recv(262144)
                except BlockingIOError:
                    continue
                if not chunk:
                    eof = True
                    break
                buf += chunk
                pos = 0
                while len(buf) - pos >= 8:
                    kind, size = buf[pos], struct.unpack(">I", buf[pos + 4 : pos + 8])[0]
                    if len(buf) - pos < 8 + size:
                        break
                    stream.feed(kind, buf[pos + 8 : pos + 8 + size])
                    pos += 8 + size
                del buf[:pos]
        except OSError as exc:
            return ExecResult("sandbox_error", None, "", f"docker attach stream failed: {exc}", False, time.monotonic() - start), False
        wall = time.monotonic() - start
        stdout, stderr, truncated = stream.outputs()
        if not stream.started:
            if eof:
                return ExecResult("sandbox_error", None, stdout, f"sandbox boot failed: {stderr.strip()[-2000:]}", truncated, wall), False
            return ExecResult("sandbox_error", None, stdout, "the container did not start the program in time", truncated, wall), False
        if not stream.done:
            if eof and self._oom_killed(box.container):
                return ExecResult("memory_limit", None, stdout, stderr, truncated, wall), False
            if eof:
                return ExecResult("sandbox_error", None, stdout, f"the container's PID 1 died: {stderr.strip()[-2000:]}", truncated, wall), False
            return ExecResult("timeout", None, stdout, stderr, truncated, wall), False
        doc = stream.result
        if doc.get("broken"):
            return ExecResult("sandbox_error", None, stdout, "the container's PID 1 sent a result that does not parse", truncated, wall), False
        files, code, clean = doc["files"], doc["exit"], doc["clean"]
        if code is None:
            return ExecResult("timeout", None, stdout, stderr, truncated, wall, files), clean
        if code == 0:
            return ExecResult("ok", 0, stdout, stderr, truncated, wall, files), clean
        if code == -24:  # SIGXCPU: the CPU-seconds limit
            return ExecResult("timeout", code, stdout, stderr, truncated, wall, files), clean
        status = "memory_limit" if doc["oom"] else classify_failure(code, stderr)
        return ExecResult(status, code, stdout, stderr, truncated, wall, files), clean

    def _oom_killed(self, container) -> bool:
        try:
            container.reload()
            return bool(container.attrs["State"].get("OOMKilled"))
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"DockerSandbox(image={self.image!r}, pool_size={self.pool_size})"


def _parse_result(payload: bytes) -> dict:
    """PID 1's result (netstrings: exit code or "" at the deadline, OOM kill seen, reset
    confirmed, then name and content of each fetched file) as a dict."""
    items, i = [], 0
    try:
        while i < len(payload):
            j = payload.index(b":", i)
            n = int(payload[i:j])
            items.append(payload[j + 1 : j + 1 + n])
            i = j + 1 + n
        code = int(items[0]) if items[0] else None
        prefix = (WORK_DIR + "/").encode()
        files = {
            items[k][len(prefix) :].decode("utf-8", "replace"): items[k + 1]
            for k in range(3, len(items) - 1, 2)
            if items[k].startswith(prefix)
        }
        return {"exit": code, "oom": items[1] == b"1", "clean": items[2] == b"1", "files": files}
    except (ValueError, IndexError):  # PID 1 wrote it, so this is a broken sandbox: restart the container
        return {"exit": None, "oom": False, "clean": False, "files": {}, "broken": True}


class _Streams:
    """The program's stdout and stderr as they come off one run's attach stream.

    stdout is the program's output then the end token; stderr is the start token, the
    program's stderr, then the end token, a 12-digit length and PID 1's result. Only
    the first ``cap`` bytes of each output are kept; the token search looks at a tail.
    """

    def __init__(self, cap: int, token: bytes, end: bytes, trailer_cap: int) -> None:
        self.cap, self.token, self.end = cap, token, end
        self.out, self.err = bytearray(), bytearray()
        self.out_total = self.err_total = 0
        self.out_tail, self.err_tail = bytearray(), bytearray()
        self.tail_cap = len(end) + 12 + trailer_cap
        self.out_done = False
        self.result: dict | None = None
        self.err_prog_len = 0

    @property
    def started(self) -> bool:
        return bytes(self.err[: len(self.token)]) == self.token

    @property
    def done(self) -> bool:
        return self.out_done and self.result is not None

    def feed(self, kind: int, body: bytes | bytearray) -> None:
        if kind == 1 and not self.out_done:
            room = self.cap + len(self.end) - len(self.out)
            self.out += body[: max(0, room)]
            self.out_total += len(body)
            self.out_tail += body
            del self.out_tail[: -len(self.end)]
            self.out_done = bytes(self.out_tail) == self.end
        elif kind == 2 and self.result is None:
            room = len(self.token) + self.cap - len(self.err)
            self.err += body[: max(0, room)]
            self.err_total += len(body)
            self.err_tail += body
            del self.err_tail[: -self.tail_cap]
            idx = self.err_tail.rfind(self.end)
            if idx >= 0 and len(self.err_tail) >= idx + len(self.end) + 12:
                size_text = bytes(self.err_tail[idx + len(self.end) : idx + len(self.end) + 12])
                if size_text.isdigit():
                    size = int(size_text)
                    trailer_end = idx + len(self.end) + 12 + size
                    if len(self.err_tail) >= trailer_end:
                        self.result = _parse_result(bytes(self.err_tail[trailer_end - size : trailer_end]))
                        self.err_prog_len = self.err_total - (len(self.err_tail) - idx) - len(self.token)

    def outputs(self) -> tuple[str, str, bool]:
        """(stdout, stderr, truncated) of the program, tokens and result stripped."""
        out_len = self.out_total - len(self.end) if self.out_done else self.out_total
        if self.result is not None:
            err_len = self.err_prog_len
        else:
            err_len = self.err_total - len(self.token) if self.started else self.err_total
        out = bytes(self.out[: min(self.cap, max(0, out_len))])
        skip = len(self.token) if self.started else 0
        err = bytes(self.err[skip : skip + min(self.cap, max(0, err_len))])
        truncated = out_len > self.cap or err_len > self.cap
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), truncated


# -- the default image ----------------------------------------------------------------------


def _shared_libs(paths: Sequence[str]) -> set[str]:
    """Every shared library the given executables / extension modules load (via ldd)."""
    libs: set[str] = set()
    for path in paths:
        try:
            out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in out.splitlines():
            parts = line.split()
            for p in parts:
                if p.startswith("/") and os.path.exists(p):
                    libs.add(p)
    return libs


def build_image(tag: str = DEFAULT_IMAGE, python: str = "/usr/bin/python3.11") -> str:
    """Build a minimal Python image from this host's files with ``docker import`` (no registry).

    The tarball holds ``python`` (a Debian-layout interpreter under /usr), its standard
    library without tests/IDLE/tkinter, the shared libraries it and its extension modules
    link, and the ``/bin``, ``/lib``, ``/lib64`` links. Returns the image id.
    """
    python = os.path.realpath(python)
    if not python.startswith("/usr/bin/"):
        raise RuntimeError(f"build_image needs a system interpreter under /usr/bin (apt-get install -y python3), got {python}")
    version = os.path.basename(python).replace("python", "")
    stdlib = f"/usr/lib/python{version}"
    if not os.path.isdir(stdlib):
        raise RuntimeError(f"standard library {stdlib} not found for {python}")
    skip = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages", "dist-packages", "config-" + version + "-x86_64-linux-gnu"}
    dynload = os.path.join(stdlib, "lib-dynload")
    exts = [os.path.join(dynload, f) for f in os.listdir(dynload) if f.endswith(".so")]
    libs = _shared_libs([python] + exts)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name.lstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)

        def add_link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name.lstrip("/"))
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)

        for d in ("/usr", "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/lib/x86_64-linux-gnu", "/sandbox", "/tmp", "/etc", "/proc", "/dev", "/sys"):
            add_dir(d)
        add_link("/bin", "usr/bin")
        add_link("/lib", "usr/lib")
        add_link("/lib64", "usr/lib64")
        tar.add(python, arcname=python.lstrip("/"))
        add_link("/usr/bin/python3", os.path.basename(python))
        tar.add(
            stdlib,
            arcname=stdlib.lstrip("/"),
            filter=lambda ti: None if os.path.basename(ti.name) in skip else ti,
        )
        added: set[str] = set()
        for lib in sorted(libs):
            # Store each library at the path the loader asked for (through /lib links it is /usr/lib...).
            real = os.path.realpath(lib)
            for target in {real, os.path.realpath(os.path.dirname(lib)) + "/" + os.path.basename(lib)}:
                if target in added:
                    continue
                added.add(target)
                if target == real:
                    tar.add(real, arcname=real.lstrip("/"))
                else:
                    add_link(target, os.path.relpath(real, os.path.dirname(target)))
        passwd = b"root:x:0:0::/:/nonexistent\nnobody:x:65534:65534::/sandbox:/nonexistent\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(passwd))
    client = _client()
    repo, _, tag_name = tag.partition(":")
    result = client.api.import_image_from_data(
        buf.getvalue(), repository=repo, tag=tag_name or "latest", changes=["USER 65534:65534", f"WORKDIR {WORK_DIR}", "ENV LANG=C.UTF-8"]
    )
    image = client.images.get(tag)
    check = client.containers.run(tag, [python, "-S", "-c", "import json, subprocess, resource; print('ok')"], remove=True, network_mode="none")
    if check.strip() != b"ok":
        raise RuntimeError(f"image {tag} was built but its python does not run: {check!r} ({result})")
    return image.id


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rlvr.sandboxes.docker build-image [--tag T] [--python P]``."""
    parser = argparse.ArgumentParser(prog="python -m rlvr.sandboxes.docker")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-image", help="build the default sandbox image from this host's Python (no registry needed)")
    b.add_argument("--tag", default=DEFAULT_IMAGE)
    b.add_argument("--python", default="/usr/bin/python3.11")
    args = parser.parse_args(argv)
    if args.cmd == "build-image":
        image_id = build_image(args.tag, args.python)
        print(f"built {args.tag} ({image_id[:19]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
