"""Sandboxes that run untrusted programs: the ``Sandbox`` protocol and its backends.

``get_sandbox("bubblewrap")`` (the local default: Linux namespaces, no daemon) or
``get_sandbox("docker")`` (a warm pool of locked-down containers)::

    from rlvr.sandboxes import get_sandbox, Limits

    box = get_sandbox("bubblewrap")
    result = box.run("print(input()[::-1])", stdin="abc", limits=Limits(timeout_s=5))
    assert result.stdout == "cba\\n"
"""

from __future__ import annotations

from typing import Any

from rlvr.sandboxes.base import STATUSES, ExecResult, Limits, Sandbox

__all__ = ["Limits", "ExecResult", "Sandbox", "STATUSES", "get_sandbox", "SANDBOXES"]

SANDBOXES = ("bubblewrap", "docker")


def get_sandbox(name: str, **options: Any) -> Sandbox:
    """The sandbox called ``name`` (``"bubblewrap"`` or ``"docker"``), built with ``options``.

    Raises ``ValueError`` for an unknown name, and the backend's own error (with what to
    install) when it cannot run here. Never falls back to running unsandboxed.
    """
    if name == "bubblewrap":
        from rlvr.sandboxes.bubblewrap import BubblewrapSandbox

        return BubblewrapSandbox(**options)
    if name == "docker":
        from rlvr.sandboxes.docker import DockerSandbox

        return DockerSandbox(**options)
    raise ValueError(f"unknown sandbox {name!r}; known sandboxes: {', '.join(SANDBOXES)}")
