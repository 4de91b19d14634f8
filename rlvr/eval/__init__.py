"""``python -m rlvr.eval``: measure rewards and policies.

- ``python -m rlvr.eval verifier NAME --cases FILE``: is a reward right? Accuracy,
  precision, recall, false positives/negatives and latency on labeled rows
  (:mod:`rlvr.eval.verifier`).
- ``python -m rlvr.eval env NAME --model M``: pass@k, accuracy and mean reward of a model on
  an environment (:mod:`rlvr.eval.env`); :func:`evaluate_environment` is also the trainers'
  held-out evaluation.
- ``python -m rlvr.eval preferences --reward NAME_OR_PATH --pairs FILE``: how often a reward
  (a verifier, a reward-model directory, ``preferences:FILE``) scores each pair's chosen
  completion above its rejected one, with ties and non-OK outcomes counted apart
  (:mod:`rlvr.eval.preferences`, :func:`evaluate_preferences`).

Every bad input (a missing file, an unknown name, a bad option) is one ``error: ...`` line
and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "LabeledCase",
    "Report",
    "evaluate_environment",
    "evaluate_math_verify",
    "evaluate_preferences",
    "evaluate_reward",
    "load_cases",
    "main",
    "pass_at_k",
]

_LAZY = {
    "LabeledCase": "rlvr.eval.verifier",
    "Report": "rlvr.eval.verifier",
    "evaluate_math_verify": "rlvr.eval.verifier",
    "evaluate_reward": "rlvr.eval.verifier",
    "load_cases": "rlvr.eval.verifier",
    "evaluate_environment": "rlvr.eval.env",
    "pass_at_k": "rlvr.eval.env",
    "evaluate_preferences": "rlvr.eval.preferences",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlvr.eval' has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m rlvr.eval`` command line."""
    from rlvr.eval import env, preferences, verifier

    parser = argparse.ArgumentParser(prog="python -m rlvr.eval", description="Evaluate rewards and environments.")
    sub = parser.add_subparsers(dest="command", required=True)
    verifier.add_parser(sub)
    env.add_parser(sub)
    preferences.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    from rlvr.registry import RegistryError

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except (RegistryError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
