"""Entry-point registry: verifiers, environments and trainers from any installed distribution.

A package registers its own in its ``pyproject.toml``; rlvr registers its built-ins the
same way::

    [project.entry-points."rlvr.verifiers"]
    math = "rlvr.verifiers.math:MathVerifier"

    [project.entry-points."rlvr.environments"]
    gsm8k = "rlvr.environments.gsm8k:GSM8K"

    [project.entry-points."rlvr.trainers"]
    grpo = "rlvr.trainers.grpo_config:GRPOConfig"

A trainer is registered by its CONFIG class, whose ``trainer`` class attribute names the
trainer class (``"module:Class"``): ``python -m rlvr.train --trainer NAME`` checks a config
without importing torch, and imports the trainer only to train. The experimental layer
registers its trainers the same way, so stable code never imports it.

Loading is lazy: listing reads only package metadata; ``load_*`` imports the one module
it needs. This is the project's only registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
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
    "TRAINERS",
    "list_trainers",
    "load_trainer_config",
    "load_trainer_class",
]

VERIFIERS = "rlvr.verifiers"
ENVIRONMENTS = "rlvr.environments"
TRAINERS = "rlvr.trainers"


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
    obj = _load_object(group, name)
    return obj(**kwargs) if callable(obj) else obj


def _load_object(group: str, name: str) -> Any:
    regs = _registrations(group)
    if name not in regs:
        kind = group.rsplit(".", 1)[-1][:-1]
        known = ", ".join(regs) or "none"
        raise RegistryError(
            f"unknown {kind} {name!r}; known {kind}s: {known}. "
            f"A plugin registers one under the entry-point group {group!r}."
        )
    reg = regs[name]
    return EntryPoint(reg.name, reg.target, group).load()


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


def list_trainers() -> dict[str, Registration]:
    """Every registered trainer, by name."""
    return _registrations(TRAINERS)


def load_trainer_config(name: str) -> type:
    """The config class registered as trainer ``name`` (imports its config module only)."""
    cls = _load_object(TRAINERS, name)
    if not isinstance(cls, type) or not isinstance(getattr(cls, "trainer", None), str) or ":" not in cls.trainer:
        raise RegistryError(
            f"trainer {name!r} is registered as {list_trainers()[name].target}, which is not a config class with a "
            "'trainer = \"module:Class\"' attribute; register the trainer's config class"
        )
    return cls


def load_trainer_class(config_class: type) -> type:
    """The trainer class a config class names in its ``trainer`` attribute."""
    module, _, attr = config_class.trainer.partition(":")
    return getattr(import_module(module), attr)
