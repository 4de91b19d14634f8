"""Entry-point registry: verifiers and environments from any installed distribution.

A package registers its own in its ``pyproject.toml``; rlvr registers its built-ins the
same way::

    [project.entry-points."rlvr.verifiers"]
    math = "rlvr.verifiers.math:MathVerifier"

    [project.entry-points."rlvr.environments"]
    gsm8k = "rlvr.environments.gsm8k:GSM8K"

Loading is lazy: listing reads only package metadata; ``load_*`` imports the one module
it needs. This is the project's only registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

__all__ = [
    "VERIFIERS",
    "ENVIRONMENTS",
    "Registration",
    "RegistryError",
    "list_verifiers",
    "load_verifier",
    "list_environments",
    "load_environment",
]

VERIFIERS = "rlvr.verifiers"
ENVIRONMENTS = "rlvr.environments"


class RegistryError(LookupError):
    """An unknown or doubly registered name."""


@dataclass(frozen=True)
class Registration:
    """One registered name: where it points and which distribution provides it."""

    name: str
    target: str
    distribution: str
    version: str


def _registrations(group: str) -> dict[str, Registration]:
    seen: dict[str, list[Registration]] = {}
    for ep in entry_points(group=group):
        dist = getattr(ep, "dist", None)
        reg = Registration(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
        same = seen.setdefault(ep.name, [])
        # The same distribution seen twice on sys.path (an editable install beside a
        # build directory, say) is one registration, not a clash.
        if not any(r.target == reg.target and r.distribution == reg.distribution for r in same):
            same.append(reg)
    kind = group.rsplit(".", 1)[-1][:-1]
    out = {}
    for name, regs in seen.items():
        if len(regs) > 1:
            who = ", ".join(f"{r.distribution} {r.version} ({r.target})" for r in regs)
            raise RegistryError(
                f"{kind} {name!r} is registered by more than one distribution: {who}. "
                f"Uninstall one of them, or rename the entry point in group {group!r}."
            )
        out[name] = regs[0]
    return dict(sorted(out.items()))


def _load(group: str, name: str, kwargs: dict[str, Any]) -> Any:
    regs = _registrations(group)
    if name not in regs:
        kind = group.rsplit(".", 1)[-1][:-1]
        known = ", ".join(regs) or "none"
        raise RegistryError(
            f"unknown {kind} {name!r}; known {kind}s: {known}. "
            f"A plugin registers one under the entry-point group {group!r}."
        )
    reg = regs[name]
    obj = EntryPoint(reg.name, reg.target, group).load()
    return obj(**kwargs) if callable(obj) else obj


def list_verifiers() -> dict[str, Registration]:
    """Every registered verifier, by name."""
    return _registrations(VERIFIERS)


def load_verifier(name: str, **kwargs: Any) -> Any:
    """Import the verifier registered as ``name`` and build it with ``kwargs``."""
    return _load(VERIFIERS, name, kwargs)


def list_environments() -> dict[str, Registration]:
    """Every registered environment, by name."""
    return _registrations(ENVIRONMENTS)


def load_environment(name: str, **kwargs: Any) -> Any:
    """Import the environment registered as ``name`` and build it with ``kwargs``."""
    return _load(ENVIRONMENTS, name, kwargs)
