"""What a sandbox is: ``Limits`` in, ``ExecResult`` out, one ``run`` method.

A sandbox runs one untrusted Python program with a stdin, some files in a fresh work
directory, and hard limits; it returns what the program printed, how it ended, and the
files asked for. Backends: :mod:`rlvr.sandboxes.bubblewrap` (the local default) and
:mod:`rlvr.sandboxes.docker`. Each backend's module docstring states its threat model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Limits", "ExecResult", "Sandbox", "STATUSES"]

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
    """

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    wall_s: float
    files: Mapping[str, bytes] = field(default_factory=dict)

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
