"""Preference data and the reward interface, both ways.

- Any :class:`~rlvr.rewards.Reward` -- a verifier, a reward model -- becomes preference data:
  :func:`pairs_from_reward` turns groups of completions into DPO/ORPO pairs (best vs worst
  of each group), :func:`labels_from_reward` into KTO labels (desirable or not).
- A preference dataset becomes a Reward: :class:`PreferenceLookup` scores a completion 1.0
  where the dataset chose it, 0.0 where it rejected it, and abstains otherwise.

- Files become pairs and labels: :func:`load_pairs` (``prompt`` / ``chosen`` / ``rejected``)
  and :func:`load_labels` (``prompt`` / ``completion`` / ``label``) read a JSONL file, a
  directory written by ``datasets``' ``save_to_disk``, a ``.json`` / ``.parquet`` / ``.csv``
  file or a directory of them, or any iterable of rows; :func:`unpair` turns pairs into labels.

Only ``Status.OK`` outcomes make pairs or labels: a completion whose check timed out or
errored says nothing about its quality, so it is left out (and counted).

Bad rows never stop a run: a row without a needed column, an empty or non-text completion,
a pair whose chosen and rejected are the same text, a line that is not UTF-8 or not JSON, is
reported (``file:line``, a logging warning) and skipped, and counted in the
:class:`LoadReport` the caller may pass in. A source with no usable row at all raises
:class:`PairsError`, naming the columns it expected and those it found.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr.rewards import Outcome, Reward, Sample, Status, check_outcomes

logger = logging.getLogger(__name__)

__all__ = [
    "PreferencePair",
    "Label",
    "LoadReport",
    "PairsError",
    "PAIR_COLUMNS",
    "LABEL_COLUMNS",
    "load_pairs",
    "load_labels",
    "unpair",
    "pair_from_outcomes",
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
        reference: The task's gold answer or tests, when the pair came from a task (lets a
            verifier re-score the pair).
        margin: How much better chosen is than rejected, for losses that use one (the reward
            trainer's ``-logsigmoid(r_c - r_r - margin)``); None = no margin.
    """

    prompt: str | list[dict]
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    reference: Any = None
    margin: float | None = None

    def __post_init__(self) -> None:
        for name in ("chosen", "rejected"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"PreferencePair.{name} must be a str, got {type(getattr(self, name)).__name__}")


@dataclass(frozen=True)
class Label:
    """A KTO example: one completion, desirable or not.

    Attributes:
        prompt: Text or chat messages.
        completion: The completion.
        desirable: True for a desirable completion (the ``label`` column).
        score: The completion's reward, when it came from one.
        info: Anything else (source, task id, ...).
        reference: The task's gold answer or tests, when known.
    """

    prompt: str | list[dict]
    completion: str
    desirable: bool
    score: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    reference: Any = None


PAIR_COLUMNS = ("prompt", "chosen", "rejected")
"""The columns a pairs source needs (TRL's preference format); ``reference``, ``chosen_score``,
``rejected_score`` and ``margin`` are optional, any other column goes to ``info``."""
LABEL_COLUMNS = ("prompt", "completion", "label")
"""The columns a KTO labels source needs (TRL's unpaired format); ``reference`` and ``score`` are optional."""
_DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class PairsError(ValueError):
    """A preference source that cannot be read, or that holds no usable row; the message says what to fix."""


@dataclass
class LoadReport:
    """What a load kept and skipped (pass one to :func:`load_pairs` / :func:`load_labels` to get it filled).

    Attributes:
        source: The file, directory or ``<rows>``.
        rows: Rows (lines) read, good and bad, blank lines not counted.
        kept: Rows that became pairs or labels.
        skipped: Skipped rows by reason (``missing column``, ``empty prompt``, ``empty completion``, ``identical``,
            ``not utf-8``, ``not json``, ``not an object``, ``bad value``).
        problems: ``where: why`` for the first skipped rows (``file:line`` for files).
        columns: The columns seen in the rows read.
    """

    source: str = ""
    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        """Rows skipped, all reasons."""
        return sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for a summary JSON)."""
        return {"source": self.source, "rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped), "problems": list(self.problems)}


class _BadRow(Exception):
    """One row that cannot be used: ``kind`` (a :attr:`LoadReport.skipped` key) and why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_MAX_PROBLEMS = 50


def _read_jsonl_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, row or _BadRow)`` for each non-blank line; a bad line never ends the file."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, _BadRow("not utf-8", f"not UTF-8 text ({exc.reason} at byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, _BadRow("not json", f"not valid JSON ({exc.msg}, column {exc.colno})")


def _read_file(path: Path) -> Iterator[tuple[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            whole = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            whole = None  # JSON lines under a .json name (as ``datasets`` also reads them)
        if isinstance(whole, list):
            yield from ((f"{path}[{i}]", row) for i, row in enumerate(whole))
            return
        if isinstance(whole, dict) and not any(isinstance(v, (str, int, float, bool)) for v in whole.values()):
            raise PairsError(f"{path}: a JSON object of {sorted(whole)[:5]}, not rows; give a list of rows or JSON lines")
    if suffix in (".json", ".jsonl"):
        yield from _read_jsonl_lines(path)
    elif suffix == ".csv":
        import csv

        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield f"{path}:{reader.line_num}", {k: (v if v != "" else None) for k, v in row.items() if k is not None}
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[row {i}]", row
    else:
        raise PairsError(f"{path}: unknown file type {suffix!r}; use {', '.join(_DATA_SUFFIXES)} or a saved datasets directory")


def _read_source(source: str | Path | Iterable[Mapping[str, Any]], split: str) -> tuple[str, Iterator[tuple[str, Any]]]:
    """The source's name and its ``(where, row or _BadRow)`` items."""
    if not isinstance(source, (str, Path)):
        if isinstance(source, Mapping):  # a DatasetDict, or {split: rows}
            if split not in source:
                raise PairsError(f"no split {split!r} in the given dataset; it has {', '.join(map(str, source))}: pass split=...")
            source = source[split]
        return "<rows>", ((f"row {i}", row) for i, row in enumerate(source))
    path = Path(source)
    if not path.exists():
        raise PairsError(f"{path}: no such file or directory")
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise PairsError(f"{path}: no split {split!r}; it has {', '.join(ds)}: pass split=...")
            ds = ds[split]
        return str(path), ((f"{path}[row {i}]", row) for i, row in enumerate(ds))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES)
        if not files:
            raise PairsError(f"{path}: a directory with no {', '.join(_DATA_SUFFIXES)} file and no saved datasets dataset in it")
        return str(path), (item for f in files for item in _read_file(f))
    return str(path), _read_file(path)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, Mapping) and "role" in m for m in value)


def _check_prompt(prompt: Any, key: str) -> str | list[dict]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise _BadRow("empty prompt", f"{key} is empty")
        return prompt
    if _is_messages(prompt) and all(isinstance(m.get("content"), str) for m in prompt):
        return [dict(m) for m in prompt]
    raise _BadRow("bad value", f"{key} must be text or chat messages (a list of {{role, content}}), got {type(prompt).__name__}")


def _completion_text(value: Any, prompt: Any, key: str) -> str:
    """A completion as text: text itself, or the assistant turns of a message list (a repeated prompt at its head dropped)."""
    if _is_messages(value):
        messages = list(value)
        if isinstance(prompt, list) and [dict(m) for m in messages[: len(prompt)]] == prompt:
            messages = messages[len(prompt) :]
        if not messages or any(m.get("role") != "assistant" or not isinstance(m.get("content"), str) for m in messages):
            raise _BadRow("bad value", f"{key} is a message list that does not end in assistant text after the prompt")
        value = "".join(m["content"] for m in messages)
    if not isinstance(value, str):
        raise _BadRow("bad value", f"{key} must be text or chat messages, got {type(value).__name__}")
    if not value.strip():
        raise _BadRow("empty completion", f"{key} is empty")
    return value


def _implicit_prompt(chosen: Any, rejected: Any) -> list[dict] | None:
    """The shared leading non-assistant turns of two message lists (TRL's implicit-prompt format)."""
    if not (_is_messages(chosen) and _is_messages(rejected)):
        return None
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n and chosen[n - 1].get("role") == "assistant":
        n -= 1
    return [dict(m) for m in chosen[:n]] or None


def _number(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise _BadRow("bad value", f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _BadRow("bad value", f"{key} must be a number, got {value!r:.40}") from None
    if not math.isfinite(number):
        raise _BadRow("bad value", f"{key} must be finite, got {value!r}")
    return number


def _load(
    source: str | Path | Iterable[Mapping[str, Any]],
    split: str,
    make: Callable[[Mapping[str, Any]], Any],
    needed: Sequence[str],
    what: str,
    report: LoadReport | None,
) -> list[Any]:
    report = report if report is not None else LoadReport()
    name, items = _read_source(source, split)
    report.source = name
    columns: dict[str, None] = dict.fromkeys(report.columns)
    out = []
    for where, row in items:
        report.rows += 1
        try:
            if isinstance(row, _BadRow):
                raise row
            if not isinstance(row, Mapping):
                raise _BadRow("not an object", f"a row must be a JSON object with {', '.join(needed)}, got {type(row).__name__}")
            columns.update(dict.fromkeys(row))
            out.append(make(row))
            report.kept += 1
        except _BadRow as bad:
            report.skipped[bad.kind] = report.skipped.get(bad.kind, 0) + 1
            if len(report.problems) < _MAX_PROBLEMS:
                report.problems.append(f"{where}: {bad}")
            logger.warning("%s: skipped, %s", where, bad)
    report.columns = list(columns)
    if report.n_skipped:
        reasons = ", ".join(f"{n} {kind}" for kind, n in sorted(report.skipped.items()))
        logger.warning("%s: %d of %d rows skipped (%s); %d %s kept", name, report.n_skipped, report.rows, reasons, report.kept, what)
    if not out:
        found = ", ".join(report.columns) if report.columns else "no readable row"
        skipped = f"; {report.n_skipped} rows skipped, e.g. {report.problems[0]}" if report.problems else ""
        raise PairsError(
            f"{name}: no usable {what} in {report.rows} rows; expected columns {', '.join(needed)}, found: {found}{skipped}"
        )
    return out


def load_pairs(
    source: str | Path | Iterable[Mapping[str, Any]],
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    *,
    split: str = "train",
    report: LoadReport | None = None,
) -> list[PreferencePair]:
    """Preference pairs from a file, a directory or rows.

    Args:
        source: A JSONL file; a ``.json`` (rows or JSON lines), ``.parquet`` or ``.csv`` file; a
            directory written by ``datasets``' ``save_to_disk``; a directory of such files; or
            an iterable of rows (a ``datasets.Dataset`` works).
        prompt_key / chosen_key / rejected_key: The column names (TRL's by default).
        split: The split to read from a ``DatasetDict``.
        report: Filled with what was read and skipped (see :class:`LoadReport`).

    ``prompt``, ``chosen`` and ``rejected`` are text or chat messages. A ``chosen`` / ``rejected``
    given as messages (TRL's conversational format) becomes the text of its assistant turns,
    the prompt's messages dropped where they are repeated at its head; without a ``prompt``
    column the prompt is the messages that ``chosen`` and ``rejected`` share at their head.
    ``reference``, ``chosen_score``, ``rejected_score`` and ``margin`` are kept in the pair, any
    other column in ``info``. A bad row is reported as ``file:line`` and skipped.

    Raises:
        PairsError: The source cannot be read, or holds no usable pair.
    """
    keys = (prompt_key, chosen_key, rejected_key)

    def make(row: Mapping[str, Any]) -> PreferencePair:
        prompt = row.get(prompt_key)
        if prompt is None:
            prompt = _implicit_prompt(row.get(chosen_key), row.get(rejected_key))
        missing = [k for k in keys if (prompt if k == prompt_key else row.get(k)) is None]
        if missing:
            raise _BadRow("missing column", f"missing column {', '.join(missing)} (expected {', '.join(keys)})")
        prompt = _check_prompt(prompt, prompt_key)
        chosen = _completion_text(row[chosen_key], prompt, chosen_key)
        rejected = _completion_text(row[rejected_key], prompt, rejected_key)
        if chosen == rejected:
            raise _BadRow("identical", f"{chosen_key} and {rejected_key} are the same text")
        scores = [_number(row, k) for k in ("chosen_score", "rejected_score", "margin")]
        info = {k: v for k, v in row.items() if k not in (*keys, "reference", "chosen_score", "rejected_score", "margin")}
        return PreferencePair(prompt, chosen, rejected, scores[0], scores[1], info, row.get("reference"), scores[2])

    return _load(source, split, make, keys, "pairs", report)


def _label_value(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise _BadRow("bad value", f"{key} must be true or false, got {value!r:.40}")


def load_labels(
    source: str | Path | Iterable[Mapping[str, Any]],
    prompt_key: str = "prompt",
    completion_key: str = "completion",
    label_key: str = "label",
    *,
    split: str = "train",
    report: LoadReport | None = None,
) -> list[Label]:
    """KTO labels (``prompt`` / ``completion`` / ``label``) from the sources :func:`load_pairs` reads.

    ``label`` is a boolean (``1``/``0`` and ``"true"``/``"false"`` are accepted); ``completion``
    is text or assistant messages; ``reference`` and ``score`` are kept, other columns go to
    ``info``. A bad row is reported as ``file:line`` and skipped.

    Raises:
        PairsError: The source cannot be read, or holds no usable label.
    """
    keys = (prompt_key, completion_key, label_key)

    def make(row: Mapping[str, Any]) -> Label:
        missing = [k for k in keys if row.get(k) is None]
        if missing:
            raise _BadRow("missing column", f"missing column {', '.join(missing)} (expected {', '.join(keys)})")
        prompt = _check_prompt(row[prompt_key], prompt_key)
        completion = _completion_text(row[completion_key], prompt, completion_key)
        info = {k: v for k, v in row.items() if k not in (*keys, "reference", "score")}
        return Label(prompt, completion, _label_value(row[label_key], label_key), _number(row, "score"), info, row.get("reference"))

    return _load(source, split, make, keys, "labels", report)


def unpair(pairs: Iterable[PreferencePair]) -> list[Label]:
    """KTO labels from pairs: each pair's chosen as desirable, then its rejected as undesirable."""
    out = []
    for p in pairs:
        out.append(Label(p.prompt, p.chosen, True, p.chosen_score, dict(p.info), p.reference))
        out.append(Label(p.prompt, p.rejected, False, p.rejected_score, dict(p.info), p.reference))
    return out


def _score_groups(groups: Sequence[Sequence[Sample]], reward: Reward) -> list[list[Outcome]]:
    flat = [s for g in groups for s in g]
    outcomes = check_outcomes(reward.name, flat, reward.score(flat))
    out, k = [], 0
    for g in groups:
        out.append(outcomes[k : k + len(g)])
        k += len(g)
    return out


def pair_from_outcomes(samples: Sequence[Sample], outcomes: Sequence[Outcome], min_margin: float = 1e-6) -> PreferencePair | None:
    """The pair one prompt's scored samples give: its best-scored completion over its worst, or None.

    Only OK outcomes count. None when fewer than two are OK, or when the best and worst
    scores differ by less than ``min_margin`` (a tie teaches nothing). The first of equally
    scored completions is taken, so the result is deterministic.
    """
    scored = [(o.score, s) for s, o in zip(samples, outcomes) if o.status is Status.OK]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda x: x[0])
    worst = min(scored, key=lambda x: x[0])
    if best[0] - worst[0] < min_margin:
        return None
    return PreferencePair(
        best[1].prompt, best[1].completion, worst[1].completion, best[0], worst[0], dict(best[1].info), best[1].reference
    )


def pairs_from_reward(groups: Sequence[Sequence[Sample]], reward: Reward, min_margin: float = 1e-6) -> list[PreferencePair]:
    """One pair per group: its best-scored completion over its worst (see :func:`pair_from_outcomes`).

    ``groups`` holds, for each prompt, several samples of that prompt. A group whose best and
    worst scores differ by less than ``min_margin`` gives no pair (a tie teaches nothing);
    completions whose outcome is not OK are left out. Scoring is one batched ``score`` call.
    """
    pairs = []
    for group, outcomes in zip(groups, _score_groups(groups, reward)):
        pair = pair_from_outcomes(group, outcomes, min_margin)
        if pair is not None:
            pairs.append(pair)
    return pairs


def labels_from_reward(samples: Sequence[Sample], reward: Reward, threshold: float = 0.5) -> list[Label]:
    """KTO labels: a completion scoring ``>= threshold`` is desirable, below is not.

    Completions whose outcome is not OK (abstained, timed out, errored) get no label.
    """
    [outcomes] = _score_groups([samples], reward)
    return [
        Label(s.prompt, s.completion, o.score >= threshold, o.score, dict(s.info), s.reference)
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
