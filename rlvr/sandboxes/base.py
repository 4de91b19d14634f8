"""What a sandbox is: ``Limits`` in, ``ExecResult`` out, one ``run`` method.

A sandbox runs one untrusted Python program with a stdin, some files in a fresh work
directory, and hard limits; it returns what the program printed, how it ended, and the
files asked for. Backends: :mod:`rlvr.sandboxes.bubblewrap` (the local default) and
:mod:`rlvr.sandboxes.docker`. Each backend's module docstring states its threat model.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Limits", "ExecResult", "Sandbox", "STATUSES", "DENIED_SYSCALLS", "seccomp_filter"]

STATUSES = ("ok", "runtime_error", "timeout", "memory_limit", "sandbox_error")


@dataclass(frozen=True)
class Limits:
    """Hard limits on one run.

    Attributes:
        timeout_s: Wall-clock seconds before the whole process tree is killed.
        memory_mb: Memory cap (address space per process for bubblewrap, cgroup for Docker).
        max_output_bytes: Bytes kept of stdout and of stderr each; the rest is dropped and
            ``ExecResult.truncated`` is set.
        max_processes: Most processes (and threads) the program may have at once.
    """

    timeout_s: float = 10
    memory_mb: int = 512
    max_output_bytes: int = 1 << 20
    max_processes: int = 64

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"Limits.timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_mb < 16:
            raise ValueError(f"Limits.memory_mb must be >= 16 (a Python interpreter needs ~10 MB), got {self.memory_mb}")
        if self.max_output_bytes < 0:
            raise ValueError(f"Limits.max_output_bytes must be >= 0, got {self.max_output_bytes}")
        if self.max_processes < 1:
            raise ValueError(f"Limits.max_processes must be >= 1, got {self.max_processes}")


@dataclass(frozen=True)
class ExecResult:
    """How one run ended.

    Attributes:
        status: ``"ok"`` (exit code 0), ``"runtime_error"`` (any other exit), ``"timeout"``
            (killed at the wall-clock deadline), ``"memory_limit"`` (died of the memory cap),
            ``"sandbox_error"`` (the sandbox itself failed; the program may not have run).
        exit_code: The program's exit code; a negative number is the signal that killed it;
            ``None`` when it never finished (timeout, sandbox error).
        stdout: What the program printed (decoded as UTF-8 with replacement), capped.
        stderr: Its standard error, capped; for ``sandbox_error`` the sandbox's own message.
        truncated: Whether stdout or stderr went over ``Limits.max_output_bytes``.
        wall_s: Wall-clock seconds of the run, sandbox start-up included.
        files: The fetched files that existed as regular files, by the name asked for.
        pool_miss: The run found no warm sandbox ready and waited for one (started on the
            caller's path, or a busy pool).
        wait_s: Seconds the run waited for its sandbox before the program could start.
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    wall_s: float
    files: Mapping[str, bytes] = field(default_factory=dict)
    pool_miss: bool = False
    wait_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the program exited with code 0."""
        return self.status == "ok"


@runtime_checkable
class Sandbox(Protocol):
    """Runs an untrusted Python program under :class:`Limits`."""

    def run(
        self,
        program: str,
        *,
        stdin: str = "",
        files: Mapping[str, str | bytes] = {},
        limits: Limits = Limits(),
        fetch: Sequence[str] = (),
    ) -> ExecResult:
        """Run ``program`` (Python source) with ``stdin``; ``files`` are written to its work
        directory first (relative paths); ``fetch`` names files to read back afterwards."""
        ...


def check_relative_path(name: str) -> str:
    """Return ``name`` if it is a plain relative path inside the work dir, else raise ValueError."""
    import posixpath

    norm = posixpath.normpath(name)
    if not name or name.startswith("/") or norm.startswith("..") or norm == "." or "\0" in name:
        raise ValueError(f"sandbox file name {name!r} must be a relative path inside the work directory (no '/', '..', NUL)")
    return norm


# System calls that both backends deny to sandboxed programs with EPERM (a seccomp filter on
# top of everything else; Docker's own default profile denies most of them too). None of them
# is needed by ordinary programs (threads, subprocess, multiprocessing, numpy); each gives a
# program a way at another process or at the kernel's less-exercised code.
DENIED_SYSCALLS = (
    # reading or writing another process (a harness's secrets, the sandbox's init)
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    # large kernel attack surface that no test program needs
    "perf_event_open", "bpf", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    # the kernel keyring is not namespaced
    "keyctl", "add_key", "request_key",
    # host-wide operations (refused for lack of capabilities anyway: denied by name as well)
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
    "acct", "mount", "umount2", "pivot_root", "unshare", "setns", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr", "open_by_handle_at", "name_to_handle_at", "quotactl", "syslog",
    "settimeofday", "clock_settime", "clock_adjtime", "lookup_dcookie", "uselib", "iopl", "ioperm",
)  # fmt: skip

# Run by a Python that has libseccomp's own binding (Debian's python3-seccomp): the filter
# allows everything but DENIED_SYSCALLS (argv), which fail with EPERM, and kills the process
# on a system call of another architecture's ABI (32-bit int 0x80, x32), whose numbers the
# list does not cover. Writes the compiled BPF program to stdout.
_SECCOMP_GENERATOR = r"""
import errno, sys, seccomp
f = seccomp.SyscallFilter(seccomp.ALLOW)
f.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
for name in sys.argv[1:]:
    if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) >= 0:  # iopl, ioperm: x86 only
        f.add_rule(seccomp.ERRNO(errno.EPERM), name)
sys.stdout.flush()
f.export_bpf(sys.stdout)
"""

SECCOMP_HINT = "apt-get install -y python3-seccomp (libseccomp's Python binding, used to compile the sandbox's seccomp filter)"


@functools.lru_cache(maxsize=None)
def seccomp_filter() -> bytes:
    """The compiled seccomp BPF program (``struct sock_filter[]``) that denies ``DENIED_SYSCALLS``.

    Compiled once per process by libseccomp (its Python binding, ``import seccomp``: this
    interpreter's if it has one, else the system ``/usr/bin/python3``'s, which Debian's
    ``python3-seccomp`` provides). Raises RuntimeError with what to install when neither has it:
    the sandboxes never run without the filter.
    """
    errors = []
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        try:
            proc = subprocess.run([python, "-c", _SECCOMP_GENERATOR, *DENIED_SYSCALLS], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append(f"{python}: {exc}")
            continue
        if proc.returncode == 0 and proc.stdout and len(proc.stdout) % 8 == 0:
            return proc.stdout
        errors.append(f"{python}: {proc.stderr.decode(errors='replace').strip().splitlines()[-1:] or proc.returncode}")
    raise RuntimeError(f"cannot compile the sandbox's seccomp filter ({'; '.join(map(str, errors))}): {SECCOMP_HINT}")
