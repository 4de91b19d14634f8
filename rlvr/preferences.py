"""Preference data and the reward interface, both ways.

- Any :class:`~rlvr.rewards.Reward` -- a verifier, a reward model -- becomes preference data:
  :func:`pairs_from_reward` turns groups of completions into DPO/ORPO pairs (best vs worst
  of each group), :func:`labels_from_reward` into KTO labels (desirable or not).
- A preference dataset becomes a Reward: :class:`PreferenceLookup` scores a completion 1.0
  where the dataset chose it, 0.0 where it rejected it, and abstains otherwise.

Only ``Status.OK`` outcomes make pairs or labels: a completion whose check timed out or
errored says nothing about its quality, so it is left out (and counted).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr.rewards import Outcome, Reward, Sample, Status, check_outcomes

logger = logging.getLogger(__name__)

__all__ = [
    "PreferencePair",
    "Label",
    "load_pairs",
    "pairs_from_reward",
    "labels_from_reward",
    "PreferenceLookup",
]


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred and a dispreferred completion.

    Attributes:
        prompt: Text or chat messages.
        chosen: The preferred completion.
        rejected: The dispreferred completion.
        chosen_score: The chosen completion's reward, when it came from one.
        rejected_score: The rejected completion's reward, when it came from one.
        info: Anything else (source, task id, ...).
    """

    prompt: str | list[dict]
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("chosen", "rejected"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"PreferencePair.{name} must be a str, got {type(getattr(self, name)).__name__}")


@dataclass(frozen=True)
class Label:
    """A KTO example: one completion, desirable or not."""

    prompt: str | list[dict]
    completion: str
    desirable: bool
    score: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


def _rows(source: str | Path | Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    if isinstance(source, (str, Path)):
        from rlvr.environments.files import read_jsonl

        return read_jsonl(source)
    return source


def load_pairs(
    source: str | Path | Iterable[Mapping[str, Any]],
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
) -> list[PreferencePair]:
    """Pairs from a JSONL file or any iterable of rows (a ``datasets`` dataset works).

    A row without the three columns, or with a non-text completion, is reported and skipped.
    """
    pairs = []
    for i, row in enumerate(_rows(source)):
        missing = [k for k in (prompt_key, chosen_key, rejected_key) if row.get(k) is None]
        if missing:
            logger.warning("preference row %d skipped: missing %s", i, ", ".join(missing))
            continue
        try:
            info = {k: v for k, v in row.items() if k not in (prompt_key, chosen_key, rejected_key)}
            pairs.append(PreferencePair(row[prompt_key], row[chosen_key], row[rejected_key], info=info))
        except TypeError as exc:
            logger.warning("preference row %d skipped: %s", i, exc)
    return pairs


def _score_groups(groups: Sequence[Sequence[Sample]], reward: Reward) -> list[list[Outcome]]:
    flat = [s for g in groups for s in g]
    outcomes = check_outcomes(reward.name, flat, reward.score(flat))
    out, k = [], 0
    for g in groups:
        out.append(outcomes[k : k + len(g)])
        k += len(g)
    return out


def pairs_from_reward(groups: Sequence[Sequence[Sample]], reward: Reward, min_margin: float = 1e-6) -> list[PreferencePair]:
    """One pair per group: its best-scored completion over its worst.

    ``groups`` holds, for each prompt, several samples of that prompt. A group whose best and
    worst scores differ by less than ``min_margin`` gives no pair (a tie teaches nothing);
    completions whose outcome is not OK are left out. Scoring is one batched ``score`` call.
    """
    pairs = []
    for group, outcomes in zip(groups, _score_groups(groups, reward)):
        scored = [(o.score, s) for s, o in zip(group, outcomes) if o.status is Status.OK]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda x: x[0])
        worst = min(scored, key=lambda x: x[0])
        if best[0] - worst[0] < min_margin:
            continue
        pairs.append(PreferencePair(best[1].prompt, best[1].completion, worst[1].completion, best[0], worst[0], dict(best[1].info)))
    return pairs


def labels_from_reward(samples: Sequence[Sample], reward: Reward, threshold: float = 0.5) -> list[Label]:
    """KTO labels: a completion scoring ``>= threshold`` is desirable, below is not.

    Completions whose outcome is not OK (abstained, timed out, errored) get no label.
    """
    [outcomes] = _score_groups([samples], reward)
    return [
        Label(s.prompt, s.completion, o.score >= threshold, o.score, dict(s.info))
        for s, o in zip(samples, outcomes)
        if o.status is Status.OK
    ]


def _prompt_key(prompt: str | list[dict]) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


class PreferenceLookup:
    """A preference dataset presented as a Reward.

    A completion the dataset chose for that prompt scores 1.0, one it rejected scores 0.0
    (a completion both chosen and rejected somewhere scores the fraction of times it was
    chosen); anything else abstains: the dataset has no opinion on it.
    """

    def __init__(self, pairs: Iterable[PreferencePair], name: str = "preference_lookup") -> None:
        self.name = name
        self._votes: dict[tuple[str, str], list[int]] = {}
        for p in pairs:
            key = _prompt_key(p.prompt)
            self._votes.setdefault((key, p.chosen), [0, 0])[0] += 1
            self._votes.setdefault((key, p.rejected), [0, 0])[1] += 1

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Look each (prompt, completion) up."""
        out = []
        for s in samples:
            votes = self._votes.get((_prompt_key(s.prompt), s.completion))
            if votes is None:
                out.append(Outcome.abstain("not in the preference data"))
            else:
                chosen, rejected = votes
                out.append(Outcome.ok(chosen / (chosen + rejected), f"chosen {chosen}x, rejected {rejected}x"))
        return out
