"""``python -m rlvr.eval preferences --reward NAME_OR_PATH --pairs FILE``: does a reward agree with preference pairs?

:func:`evaluate_preferences` scores each pair's chosen and rejected completion with the
reward (one batched ``score`` call; the pair's ``reference`` is the samples' reference) and
counts, RewardBench-style:

- ``accuracy``: the share of ALL pairs whose chosen scored strictly above its rejected;
- ``wins`` / ``losses`` / ``ties``: among pairs where both outcomes are OK (a tie is never a win);
- ``non_ok_pairs``: pairs where either outcome is not OK (never a win, never a loss), and
  ``n_ok`` / ``n_timeout`` / ``n_error`` / ``n_abstain``: the outcome counts, two per pair;
- ``accuracy_decided``: wins / (wins + losses), the agreement where the reward gave an order;
- ``margin_mean``: mean ``score(chosen) - score(rejected)`` over pairs with both outcomes OK.

``--reward`` is a registered verifier name (``math``, say: the pairs' ``reference`` is the gold
answer), a reward-model directory (a ``transformers`` sequence classifier, loaded as
:class:`~rlvr.verifiers.reward_model.RewardModelReward`, e.g. a ``--trainer reward`` run's
``final/``), or ``preferences:FILE`` for a :class:`~rlvr.preferences.PreferenceLookup` of a
pairs file. Bad input is one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlvr.preferences import PreferencePair
from rlvr.rewards import Reward, Sample, Status, score_or_error

__all__ = ["add_parser", "evaluate_preferences", "load_reward", "reward_kind"]


def evaluate_preferences(reward: Reward, pairs: Sequence[PreferencePair], num_examples: int = 5) -> dict[str, Any]:
    """How often ``reward`` scores each pair's chosen completion above its rejected one.

    Args:
        reward: Any Reward.
        pairs: The preference pairs (``reference`` and ``info`` go into the samples).
        num_examples: Disagreements shown under ``examples`` (pairs the reward ordered the other way or tied).

    Returns:
        ``pairs``, ``accuracy``, ``wins``, ``losses``, ``ties``, ``non_ok_pairs``,
        ``accuracy_decided``, ``margin_mean``, ``n_ok`` / ``n_timeout`` / ``n_error`` /
        ``n_abstain``, ``reward_time_s``, ``examples`` (see the module docstring).
    """
    samples = []
    for p in pairs:
        samples.append(Sample(p.prompt, p.chosen, p.reference, dict(p.info)))
        samples.append(Sample(p.prompt, p.rejected, p.reference, dict(p.info)))
    start = time.perf_counter()
    outcomes = score_or_error(reward, samples) if samples else []
    elapsed = time.perf_counter() - start
    wins = losses = ties = non_ok = 0
    margins: list[float] = []
    examples: list[dict[str, Any]] = []
    for i, p in enumerate(pairs):
        chosen, rejected = outcomes[2 * i], outcomes[2 * i + 1]
        if chosen.status is not Status.OK or rejected.status is not Status.OK:
            non_ok += 1
            continue
        margin = chosen.score - rejected.score
        margins.append(margin)
        if margin > 0:
            wins += 1
            continue
        if margin == 0:
            ties += 1
        else:
            losses += 1
        if len(examples) < num_examples:
            examples.append({"prompt": _last_message(p.prompt), "chosen": p.chosen, "rejected": p.rejected,
                             "chosen_score": chosen.score, "rejected_score": rejected.score})
    return {
        "reward": getattr(reward, "name", "?"),
        "pairs": len(pairs),
        "accuracy": wins / len(pairs) if pairs else 0.0,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "non_ok_pairs": non_ok,
        "accuracy_decided": wins / (wins + losses) if wins + losses else 0.0,
        "margin_mean": sum(margins) / len(margins) if margins else 0.0,
        **{f"n_{s.value}": sum(o.status is s for o in outcomes) for s in Status},
        "reward_time_s": elapsed,
        "examples": examples,
    }


def _last_message(prompt: Any) -> str:
    return prompt[-1]["content"] if isinstance(prompt, list) and prompt else str(prompt)


def reward_kind(spec: str) -> str:
    """What ``--reward`` names -- ``"lookup"``, ``"model"`` or ``"verifier"`` -- checked without loading anything."""
    from rlvr.registry import list_verifiers

    if spec.startswith("preferences:"):
        if not Path(spec[len("preferences:") :]).exists():
            raise ValueError(f"--reward {spec}: no such file or directory")
        return "lookup"
    if Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise ValueError(f"--reward {spec}: a directory without config.json, so not a reward model")
        return "model"
    if spec in list_verifiers():
        return "verifier"
    raise ValueError(
        f"--reward {spec!r} is not a registered verifier ({', '.join(list_verifiers())}), "
        "a reward-model directory, or preferences:FILE"
    )


def load_reward(spec: str, **kwargs: Any) -> Reward:
    """The Reward ``--reward`` names: ``preferences:FILE``, a reward-model directory, or a registered verifier."""
    kind = reward_kind(spec)
    if kind == "lookup":
        from rlvr.preferences import PreferenceLookup, load_pairs

        return PreferenceLookup(load_pairs(spec[len("preferences:") :]), name=spec)
    if kind == "model":
        from rlvr.verifiers.reward_model import RewardModelReward

        return RewardModelReward(spec, name=f"reward_model:{Path(spec).name}", **kwargs)
    from rlvr.registry import load_verifier

    return load_verifier(spec, **kwargs)


# =======================================================================================
# Command line
# =======================================================================================


def add_parser(sub: Any) -> None:
    """The ``preferences`` subcommand of ``python -m rlvr.eval``."""
    p = sub.add_parser("preferences", help="preference accuracy of a reward on pairs (chosen scored above rejected)")
    p.add_argument("--reward", required=True, help="a verifier name, a reward-model directory, or preferences:FILE")
    p.add_argument("--pairs", required=True, help="the pairs (JSONL, .json/.parquet/.csv, or a saved datasets directory)")
    p.add_argument("--reward-kwargs", default="{}", help="options for the reward, as a JSON object")
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.set_defaults(func=_preferences_cmd)


def _preferences_cmd(args: argparse.Namespace) -> int:
    from rlvr.preferences import LoadReport, load_pairs

    try:
        kwargs = json.loads(args.reward_kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--reward-kwargs must be a JSON object, got {args.reward_kwargs!r} ({exc.msg})") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"--reward-kwargs must be a JSON object, got {args.reward_kwargs!r}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.json and not Path(args.json).parent.is_dir():
        raise ValueError(f"--json {args.json}: directory {Path(args.json).parent} does not exist")
    reward_kind(args.reward)
    report = LoadReport()
    pairs = load_pairs(args.pairs, report=report)[: args.limit]
    try:
        reward = load_reward(args.reward, **kwargs)
    except TypeError as exc:
        raise ValueError(f"--reward-kwargs {args.reward_kwargs} do not fit reward {args.reward!r} ({exc})") from None
    result = evaluate_preferences(reward, pairs)
    if hasattr(reward, "close"):
        reward.close()
    result["pairs_file"] = str(args.pairs)
    result["rows_skipped"] = report.n_skipped
    width = max(len(k) for k in result)
    for key, value in result.items():
        if key == "examples":
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - ``python -m rlvr.eval preferences`` is the entry
    from rlvr.eval import main

    sys.exit(main(["preferences", *sys.argv[1:]]))
