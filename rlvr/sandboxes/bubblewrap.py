"""The local default sandbox: bubblewrap (``bwrap``) namespaces around a system Python.

Each run gets its own ``bwrap`` sandbox, used once. ``warm`` sandboxes are started ahead of
time (bwrap up, a small trusted boot program waiting on stdin, nothing of any job inside),
so a run only sends its program, files and stdin and streams the output back.

Threat model -- what it covers:

- **Network**: a new, empty network namespace (loopback only, down). No sockets leave.
- **Host files**: a new mount namespace that holds only ``/usr`` (plus the ``/bin``,
  ``/lib``, ``/lib64`` links) and the interpreter's prefix, read-only; a fresh ``/proc``, a
  minimal ``/dev``. ``/root``, ``/home``, ``/etc``, ``/work``, sockets (the Docker socket
  included) are simply not there. The work directory ``/sandbox`` (and ``/tmp``, a link to
  it) is a new tmpfs capped at ``work_dir_mb``; it vanishes with the run, so nothing a
  program writes reaches the host or the next run.
- **Identity**: a new user namespace; the program is uid/gid 65534 inside with every
  capability dropped and ``no_new_privs`` set. When the caller is root, ``bwrap`` itself is
  started as host uid 65534 (``nobody``, no supplementary groups; dropped there by
  ``setpriv`` where util-linux has it, else by ``Popen(user=...)``), so even an escape lands
  on an unprivileged host user. Further user namespaces are disabled (``--disable-userns``).
- **Environment**: cleared; only ``PATH``, ``HOME``, ``LANG`` are set. Nothing of the host's
  environment (tokens, keys) leaks.
- **Processes**: new pid, ipc and uts namespaces. ``kill(-1)`` reaches only the sandbox. The
  process cap (``RLIMIT_NPROC``) is set inside the new user namespace, where the kernel
  counts per namespace and per uid, so it holds even when the host user is root and does
  not count other runs. At the wall-clock deadline the bwrap process group is killed with
  SIGKILL; the pid namespace's init dies with it and the kernel kills everything left,
  ``setsid`` daemons and SIGTERM-ignoring children included.
- **System calls**: a seccomp filter (compiled by libseccomp, installed by bwrap's
  ``--seccomp`` just before the interpreter starts, inherited by every process of the run)
  makes ``ptrace``, ``process_vm_readv``/``process_vm_writev``, ``perf_event_open``, ``bpf``,
  ``userfaultfd``, ``io_uring_*``, the keyring calls (``keyctl``, ``add_key``,
  ``request_key``), ``kexec_*``, module loading, mounts, ``unshare``/``setns`` and the rest
  of :data:`rlvr.sandboxes.base.DENIED_SYSCALLS` fail with ``EPERM`` (a program sees an
  ordinary error and may go on; nothing is killed silently). A system call through another
  architecture's ABI (32-bit ``int 0x80``, x32), whose numbers the list cannot name, kills
  the process. So a program cannot trace or read its parent even where Yama's
  ``ptrace_scope`` is 0.
- **Resources**: rlimits on CPU seconds, address space (``memory_mb``), file size, open
  files, processes; core dumps off. stdout and stderr are read incrementally and each
  capped at ``max_output_bytes`` (``truncated`` says so); the rest is drained and dropped.
- **Fetched files** are opened with ``O_NOFOLLOW`` and must be regular files, so a symlink
  planted by the program cannot make the sandbox read another file.
- **Failures of the sandbox itself** (bwrap missing or refused) are ``sandbox_error``,
  decided from bwrap's own status pipe, which a program cannot write before it exists.

What it does NOT cover:

- Kernel exploits: the sandbox shares the host kernel (use Docker with gVisor, or a VM,
  for hostile code with kernel 0-days in scope). The seccomp filter is a deny list: it
  shrinks the kernel surface a program reaches, it is not an allow list of what a program
  may call.
- Total memory across processes: ``RLIMIT_AS`` caps each process, so ``max_processes``
  processes may together use up to ``max_processes * memory_mb``; keep both moderate, or
  use Docker for a cgroup memory cap.
- CPU contention: a busy program slows the host's other work until its deadline.
- Side channels (timing, cache) and anything readable under ``/usr``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence

from rlvr.sandboxes.base import ExecResult, Limits, check_relative_path, seccomp_filter

__all__ = ["BubblewrapSandbox", "find_bwrap", "classify_failure"]

WORK_DIR = "/sandbox"
SANDBOX_UID = 65534
_INSTALL_HINT = "apt-get install -y bubblewrap, or pass sandbox='docker'"

# The sandbox's first program. It reads a header (files, rlimits, names to fetch) from
# stdin -- exactly its length, so the rest of stdin stays unread for the program -- writes
# the files, sets the rlimits (inside the new user namespace, where RLIMIT_NPROC counts
# only this sandbox), then runs /sandbox/main.py in this interpreter as ``__main__``. With
# files to fetch it forks: the child runs the program, the parent sends the files
# (O_NOFOLLOW, regular files only) on an inherited pipe as netstrings. Started ahead of
# time, it waits in the warm pool with nothing of any job.
_BOOT = r"""
import os, sys
_fetch_fd = int(sys.argv[1])
_work = os.getcwd()
def _read(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            os._exit(125)
        buf += chunk
    return buf
def _items(buf):
    i = 0
    while i < len(buf):
        j = buf.index(b":", i)
        n = int(buf[i:j])
        yield buf[j + 1:j + 1 + n]
        i = j + 1 + n
import resource
compile("pass", "", "exec")  # the first compile in a process costs ~0.6 ms: pay it while waiting in the pool
_head = list(_items(_read(int(_read(10)))))
_limits, _cap, _nfiles = _head[0].decode(), int(_head[1]), int(_head[2])
_files = [(_head[3 + 2 * k].decode(), _head[4 + 2 * k]) for k in range(_nfiles)]
_fetch = [x.decode() for x in _head[3 + 2 * _nfiles:]]
_name = _data = None
for _name, _data in _files:
    if os.path.dirname(_name):
        os.makedirs(os.path.dirname(_name), exist_ok=True)
    with open(_name, "wb") as _f:
        _f.write(_data)
del _head, _files, _name, _data
for _item in _limits.split(","):
    _key, _value = _item.split("=")
    resource.setrlimit(getattr(resource, _key), (int(_value), int(_value)))
_path = os.path.join(_work, "main.py")
sys.argv = [_path]
sys.path.insert(0, _work)
_main = type(sys)("__main__")
_main.__file__ = _path
_main.__builtins__ = __builtins__
_code = compile(open(_path, "rb").read(), _path, "exec")
_pid = os.fork() if _fetch else 0
if _pid == 0:
    os.close(_fetch_fd)
    sys.modules["__main__"] = _main
    exec(_code, _main.__dict__)
    sys.exit(0)
_status = os.waitpid(_pid, 0)[1]
import stat
_out = os.fdopen(_fetch_fd, "wb")
for _name in _fetch:
    try:
        _fd = os.open(os.path.join(_work, _name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        continue
    try:
        if stat.S_ISREG(os.fstat(_fd).st_mode):
            _data = os.read(_fd, _cap)
            _n = _name.encode()
            _out.write(b"%d:%s%d:%s" % (len(_n), _n, len(_data), _data))
    finally:
        os.close(_fd)
_out.close()
os._exit(os.waitstatus_to_exitcode(_status) if os.WIFEXITED(_status) else 128 + os.WTERMSIG(_status))
"""


def find_bwrap() -> str:
    """Path of the ``bwrap`` executable, or a RuntimeError that says how to install it."""
    path = shutil.which("bwrap")
    if path is None:
        raise RuntimeError(f"bubblewrap not found (no `bwrap` on PATH): {_INSTALL_HINT}")
    return path


def classify_failure(exit_code: int | None, stderr: str) -> str:
    """``"memory_limit"`` if a non-zero exit looks like the memory cap, else ``"runtime_error"``.

    Under ``RLIMIT_AS`` an allocation fails (Python raises MemoryError, C code reports
    ENOMEM / ``std::bad_alloc``) instead of the kernel killing the process.
    """
    tail = stderr[-2000:]
    markers = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory", "failed to allocate")
    if any(m in tail for m in markers):
        return "memory_limit"
    return "runtime_error"


class BubblewrapSandbox:
    """Run untrusted Python in a bubblewrap sandbox (see the module docstring for the threat model).

    Args:
        python: Interpreter to run inside. Default ``/usr/bin/python3`` if present, else this
            interpreter. It must live somewhere the unprivileged sandbox user can read (not
            under ``/root``); its prefix is bound read-only when it is outside ``/usr``.
        site_packages: Let programs import the interpreter's site-packages. Off by default:
            ``python -S`` starts faster and the standard library is all tests need.
        work_dir_mb: Size cap of the tmpfs work directory (and of any one file written).
        extra_ro_binds: More host paths to bind read-only at the same place.
        bwrap: Path of ``bwrap``; found on PATH by default.
        warm: Sandboxes kept started ahead of time (bwrap up, the interpreter waiting for
            its job on stdin), which takes ~10 ms of start-up off each run. Default: one per
            CPU; 0 starts each sandbox on demand. A warm sandbox has seen no job; each runs
            exactly one program and then exits.
    """

    name = "bubblewrap"

    def __init__(
        self,
        python: str | None = None,
        site_packages: bool = False,
        work_dir_mb: int = 64,
        extra_ro_binds: Sequence[str] = (),
        bwrap: str | None = None,
        warm: int | None = None,
    ) -> None:
        self.bwrap = bwrap or find_bwrap()
        if not os.access(self.bwrap, os.X_OK):
            raise RuntimeError(f"bubblewrap at {self.bwrap!r} is not executable: {_INSTALL_HINT}")
        if python is None:
            python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        self.python = os.path.realpath(python)
        if not os.path.isfile(self.python):
            raise ValueError(f"sandbox python {python!r} does not exist; pass python='/usr/bin/python3' or another interpreter")
        self.site_packages = site_packages
        self.work_dir_mb = int(work_dir_mb)
        self._root = os.geteuid() == 0
        # As root, bwrap is started as `nobody` through setpriv(1) when it is there: Popen's
        # user=/group= force a full fork() of this (possibly many-GiB) process, ~70 ms for a
        # 3 GiB trainer, where setpriv lets Popen use vfork() (~0.1 ms).
        self._setpriv = shutil.which("setpriv", path="/usr/bin:/bin") if self._root else None
        binds = [p for p in extra_ro_binds]
        prefix = os.path.dirname(os.path.dirname(self.python))
        if not self.python.startswith("/usr/"):
            binds.append(prefix)
        for path in binds:
            if self._root and not _traversable_by_nobody(path):
                raise ValueError(
                    f"{path!r} is not readable by the unprivileged sandbox user (uid {SANDBOX_UID}); "
                    "use a system interpreter (python='/usr/bin/python3') or one outside /root"
                )
        self._base_args = self._build_base_args(binds)
        self._seccomp = seccomp_filter()  # RuntimeError with what to install: never run without it
        self.warm = (os.cpu_count() or 2) if warm is None else max(0, int(warm))
        self._pool: list[_Started] = []
        self._cond = threading.Condition()
        self._refiller: threading.Thread | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _discard_all, self._pool)

    def _build_base_args(self, binds: Sequence[str]) -> list[str]:
        args = [
            self.bwrap,
            "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--disable-userns", "--assert-userns-disabled",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--hostname", "sandbox",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", WORK_DIR, "--setenv", "LANG", "C.UTF-8",
            "--ro-bind", "/usr", "/usr",
        ]  # fmt: skip
        for link in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        for path in binds:
            args += ["--ro-bind", path, path]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--size", str(self.work_dir_mb << 20), "--perms", "0700", "--tmpfs", WORK_DIR, "--symlink", WORK_DIR, "/tmp"]
        args += ["--chdir", WORK_DIR]
        return args

    # -- starting sandboxes ---------------------------------------------------------------------

    def _start(self) -> _Started | ExecResult:
        """Start one sandbox (bwrap + BOOT waiting on stdin); an ExecResult if it cannot start."""
        status_r, status_w = os.pipe()
        fetch_r, fetch_w = os.pipe()
        # bwrap reads the compiled filter from this pipe to its end, and installs it just before
        # it execs the interpreter (a few hundred bytes: they fit in the pipe's buffer).
        seccomp_r, seccomp_w = os.pipe()
        os.write(seccomp_w, self._seccomp)
        os.close(seccomp_w)
        py = [self.python, "-E", "-s"] + ([] if self.site_packages else ["-S"])
        argv = self._base_args + ["--json-status-fd", str(status_w), "--seccomp", str(seccomp_r)] + py + ["-c", _BOOT, str(fetch_w)]
        drop = self._root and not self._setpriv  # drop to nobody in Popen's child (fork, no vfork)
        if self._root and self._setpriv:
            argv = [self._setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups", "--"] + argv
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w, fetch_w, seccomp_r),
                start_new_session=True,
                user=SANDBOX_UID if drop else None,
                group=SANDBOX_UID if drop else None,
                extra_groups=[] if drop else None,
                env={"PATH": "/usr/bin:/bin"},
            )
        except OSError as exc:
            for fd in (status_r, status_w, fetch_r, fetch_w, seccomp_r):
                os.close(fd)
            return ExecResult("sandbox_error", None, "", f"could not start bwrap: {exc} ({_INSTALL_HINT})", False, 0.0)
        os.close(status_w)  # EOF on these means the sandbox closed them
        os.close(fetch_w)
        os.close(seccomp_r)
        return _Started(proc, status_r, fetch_r)

    def _take(self) -> tuple[_Started | ExecResult, bool]:
        """A started sandbox from the warm pool, or a fresh one when the pool is empty; and whether it came from the pool."""
        if self.warm <= 0:
            return self._start(), False
        with self._cond:
            if self._closed:
                raise RuntimeError("this BubblewrapSandbox was closed")
            if self._refiller is None:
                self._refiller = threading.Thread(target=self._refill, name="rlvr-bwrap-pool", daemon=True)
                self._refiller.start()
            started = self._pool.pop(0) if self._pool else None
            self._cond.notify_all()
        # A sandbox started here lives no longer than this call, so starting it from the
        # caller's thread is safe; pool sandboxes come from the long-lived refill thread
        # because bwrap's --die-with-parent fires when the *thread* that started it ends.
        return (started, True) if started is not None else (self._start(), False)

    def wait_until_ready(self, timeout_s: float = 30.0) -> bool:
        """Block until the warm pool is full (True), or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._cond:
                if len(self._pool) >= self.warm or self._refiller is None:
                    return True
            time.sleep(0.005)
        return False

    def _refill(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._pool) >= self.warm:
                    self._cond.wait()
                if self._closed:
                    return
            fresh = self._start()
            if isinstance(fresh, ExecResult):
                time.sleep(0.5)  # run() reports the failure; do not spin
                continue
            with self._cond:
                if self._closed:
                    fresh.discard()
                    return
                self._pool.append(fresh)

    def close(self) -> None:
        """Kill the sandboxes waiting in the warm pool."""
        with self._cond:
            self._closed = True
            pool = list(self._pool)
            self._pool.clear()
            self._cond.notify_all()
        for started in pool:
            started.discard()

    def __getstate__(self) -> dict:
        # Picklable (e.g. inside a reward sent to a worker process): the warm pool stays here.
        state = dict(self.__dict__)
        for key in ("_pool", "_cond", "_refiller", "_finalizer"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool = []
        self._cond = threading.Condition()
        self._refiller = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _discard_all, self._pool)

    def __enter__(self) -> BubblewrapSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one run ------------------------------------------------------------------------------

    def run(
        self,
        program: str,
        *,
        stdin: str = "",
        files: Mapping[str, str | bytes] = {},
        limits: Limits = Limits(),
        fetch: Sequence[str] = (),
    ) -> ExecResult:
        """Run ``program`` in a fresh sandbox; see :class:`rlvr.sandboxes.Sandbox`."""
        start = time.monotonic()
        entries = [("main.py", program.encode())]
        for name, content in files.items():
            entries.append((check_relative_path(name), content.encode() if isinstance(content, str) else bytes(content)))
        fetch_names = [check_relative_path(n) for n in fetch]
        rlimits = (
            f"RLIMIT_NPROC={limits.max_processes},RLIMIT_AS={limits.memory_mb << 20},RLIMIT_CPU={int(limits.timeout_s) + 2},"
            f"RLIMIT_FSIZE={self.work_dir_mb << 20},RLIMIT_NOFILE=256,RLIMIT_CORE=0"
        )
        items = [rlimits.encode(), str(limits.max_output_bytes).encode(), str(len(entries)).encode()]
        for name, data in entries:
            items += [name.encode(), data]
        items += [n.encode() for n in fetch_names]
        header = b"".join(b"%d:%s" % (len(x), x) for x in items)
        taken = time.monotonic()
        started, from_pool = self._take()
        if isinstance(started, ExecResult):
            return started
        wait_s = time.monotonic() - taken
        result = self._execute(started, b"%010d" % len(header) + header + stdin.encode(), limits, start, fetch_names)
        return dataclasses.replace(result, pool_miss=not from_pool, wait_s=wait_s)

    def _execute(self, started: _Started, payload: bytes, limits: Limits, start: float, fetch_names: list[str]) -> ExecResult:
        proc = started.proc
        cap = limits.max_output_bytes
        out = {"stdout": bytearray(), "stderr": bytearray(), "status": bytearray(), "fetch": bytearray()}
        truncated = False
        sel = selectors.DefaultSelector()
        os.set_blocking(proc.stdin.fileno(), False)
        pending = memoryview(payload)
        sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        sel.register(started.status_r, selectors.EVENT_READ, "status")
        sel.register(started.fetch_r, selectors.EVENT_READ, "fetch")
        deadline = start + limits.timeout_s
        timed_out = False
        open_reads = 4
        fetch_cap = (cap + 4096) * len(fetch_names) + 65536
        try:
            while open_reads:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(timeout=remaining):
                    which = key.data
                    if which == "stdin":
                        try:
                            n = os.write(proc.stdin.fileno(), pending[:65536])
                        except OSError:  # the program closed its stdin or died: the rest is dropped
                            n = len(pending)
                        pending = pending[n:]
                        if not pending:
                            sel.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_reads -= 1
                        continue
                    buf = out[which]
                    limit = cap if which in ("stdout", "stderr") else fetch_cap
                    room = limit - len(buf)
                    if len(chunk) > room:
                        truncated = truncated or which in ("stdout", "stderr")
                        chunk = chunk[: max(0, room)]
                    buf += chunk
            if not timed_out and not _exited(proc, max(0.5, deadline - time.monotonic())):
                timed_out = True
        finally:
            # Kill the whole group while bwrap is still unreaped (its pid, hence the group id,
            # cannot have been reused), then reap it.
            _kill_group(proc)
            code = proc.wait()
            sel.close()
            started.close_pipes()
        wall = time.monotonic() - start
        stdout = out["stdout"].decode("utf-8", "replace")
        stderr = out["stderr"].decode("utf-8", "replace")
        status_text = out["status"].decode("utf-8", "replace")
        if "child-pid" not in status_text:
            if timed_out:
                return ExecResult("sandbox_error", None, stdout, f"bwrap did not start within {limits.timeout_s:g} s", truncated, wall)
            return ExecResult(
                "sandbox_error", None, stdout, f"bwrap failed before the program ran (exit {code}): {stderr.strip()[-2000:]}", truncated, wall
            )
        files = _parse_fetch(bytes(out["fetch"]), fetch_names) if fetch_names else {}
        if timed_out:
            return ExecResult("timeout", None, stdout, stderr, truncated, wall, files)
        exit_code = _exit_code(status_text, code)
        if exit_code == 125 and not stdout and not stderr and pending:
            return ExecResult("sandbox_error", None, stdout, "the sandbox's boot program did not receive its job", truncated, wall)
        if exit_code == 0:
            return ExecResult("ok", 0, stdout, stderr, truncated, wall, files)
        if exit_code == -signal.SIGXCPU:
            return ExecResult("timeout", exit_code, stdout, stderr, truncated, wall, files)
        return ExecResult(classify_failure(exit_code, stderr), exit_code, stdout, stderr, truncated, wall, files)

    def __repr__(self) -> str:
        return f"BubblewrapSandbox(python={self.python!r}, work_dir_mb={self.work_dir_mb})"


class _Started:
    """A started sandbox: the bwrap process and our ends of its status and fetch pipes."""

    def __init__(self, proc: subprocess.Popen, status_r: int, fetch_r: int) -> None:
        self.proc = proc
        self.status_r = status_r
        self.fetch_r = fetch_r

    def close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None and not f.closed:
                f.close()
        for fd in (self.status_r, self.fetch_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self.status_r = self.fetch_r = -1

    def discard(self) -> None:
        _kill_group(self.proc)
        self.proc.wait()
        self.close_pipes()


def _exit_code(status_text: str, fallback: int) -> int:
    """The program's exit code from bwrap's JSON status (a signal death as ``-signum``)."""
    for line in status_text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("exit-code"), int):
            fallback = doc["exit-code"]
    if fallback > 128 and fallback - 128 < 65:
        return -(fallback - 128)
    return fallback


def _parse_fetch(data: bytes, names: list[str]) -> dict[str, bytes]:
    """Netstring pairs (name, content) from the boot program; the program may have scribbled on
    the pipe, which only spoils its own files."""
    files: dict[str, bytes] = {}
    i = 0
    try:
        while i < len(data):
            fields = []
            for _ in range(2):
                j = data.index(b":", i)
                n = int(data[i:j])
                fields.append(data[j + 1 : j + 1 + n])
                i = j + 1 + n
            name = fields[0].decode("utf-8", "replace")
            if name in names and name not in files:
                files[name] = fields[1]
    except ValueError:
        pass
    return files


def _discard_all(pool: list[_Started]) -> None:
    for started in list(pool):
        started.discard()
    pool.clear()


def _exited(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``proc`` to exit WITHOUT reaping it (a pidfd)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return True  # already reaped
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _traversable_by_nobody(path: str) -> bool:
    """Whether every directory on the way to ``path`` lets 'other' users through."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(2, len(parts) + 1):
        p = "/".join(parts[:i]) or "/"
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return False
        if not mode & 0o001 and os.path.isdir(p):
            return False
    return True
