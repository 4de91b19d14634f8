"""rlvr rewards inside other trainers, and behind HTTP.

Every rlvr Reward -- a verifier, a reward model, a preference lookup, a plugin's, a
``WeightedSum`` -- works unchanged where people already train:

- :mod:`rlvr.integrations.trl`: ``reward_func(reward)`` for TRL's ``GRPOTrainer`` /
  ``RLOOTrainer``, and ``from_reward_func(fn)``, the other direction.
- :mod:`rlvr.integrations.verl`: ``compute_score`` for veRL's ``custom_reward_function``.
- :mod:`rlvr.integrations.openrlhf`: ``reward_func(queries, prompts, labels)`` for
  OpenRLHF's reward-function file.
- :mod:`rlvr.integrations.server` (``python -m rlvr serve``) and
  :mod:`rlvr.integrations.remote` (``RemoteReward``): any Reward behind HTTP.

What stays true in every one of them: a failed check (TIMEOUT, ERROR) is reported as a
failure -- ``None`` where the host framework can leave a sample out (TRL), otherwise a
configurable ``failure_score`` with flags that say so -- and one bad row never raises into
the host framework; a misconfiguration (unknown verifier, missing reference column) fails
at once with a message that says what to do.

This module holds the small pieces the adapters share. It imports nothing heavy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from rlvr.rewards import Outcome, Reward, Sample, Status, check_outcomes

__all__ = [
    "resolve_reward",
    "completion_text",
    "score_safely",
    "score_rows",
    "batch_stats",
    "outcome_to_json",
    "outcome_from_json",
    "sample_to_json",
    "sample_from_json",
    "reference_to_json",
    "reference_from_json",
    "json_depth_over",
    "finite_number",
]


def resolve_reward(reward: Reward | str, options: Mapping[str, Any] | None = None) -> Reward:
    """A Reward object from a Reward, a registered verifier name, or ``"module:attr"``.

    ``"module:attr"`` imports ``attr`` from ``module``: a Reward instance is used as is, a
    class or factory is called with ``options``. Raises ``RegistryError`` / ``ValueError``
    with what to do when the name is unknown or the object is not a Reward.
    """
    options = dict(options or {})
    if isinstance(reward, str):
        if ":" in reward:
            from importlib import import_module

            module, _, attr = reward.partition(":")
            try:
                obj = getattr(import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ValueError(
                    f"cannot import reward {reward!r} ({type(exc).__name__}: {exc}); give a registered verifier name "
                    "(see `python -m rlvr list`) or 'module:attr' with the module on PYTHONPATH"
                ) from exc
            if isinstance(obj, type) or not hasattr(obj, "score"):
                obj = obj(**options) if callable(obj) else obj
            elif options:
                raise ValueError(f"reward {reward!r} is already an instance; options {sorted(options)} cannot apply to it")
            reward_obj = obj
        else:
            from rlvr.registry import load_verifier

            reward_obj = load_verifier(reward, **options)
    else:
        if options:
            raise ValueError(f"options {sorted(options)} given with a Reward object; build the reward with them instead")
        reward_obj = reward
    if not (hasattr(reward_obj, "score") and hasattr(reward_obj, "name")):
        raise TypeError(f"{reward_obj!r:.80} is not a rlvr Reward (it needs .name and .score(samples))")
    return reward_obj


def completion_text(completion: Any) -> str:
    """The text of a completion: a string as is, or the content of chat messages.

    TRL gives conversational completions as ``[{"role": "assistant", "content": "..."}]``;
    the assistant messages' contents are joined (all messages when none is marked assistant).
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, Mapping)]
        chosen = [m for m in messages if m.get("role") == "assistant"] or messages
        parts = []
        for m in chosen:
            content = m.get("content", "")
            if isinstance(content, list):  # multimodal content: keep the text parts
                content = "".join(c.get("text", "") for c in content if isinstance(c, Mapping))
            parts.append(str(content) if content is not None else "")
        if messages:
            return "\n".join(parts)
    raise TypeError(f"a completion must be a string or chat messages, got {type(completion).__name__}: {completion!r:.80}")


def score_safely(reward: Reward, samples: Sequence[Sample]) -> list[Outcome]:
    """``reward.score(samples)``, validated; never raises for a bad sample.

    When the whole batch raises, each sample is scored alone so one bad row becomes one
    ERROR outcome with the reason, and the others keep their scores.
    """
    samples = list(samples)
    if not samples:
        return []
    try:
        return check_outcomes(reward.name, samples, reward.score(samples))
    except Exception as exc:  # one bad row must not fail the batch: find it below
        batch_reason = f"{type(exc).__name__}: {exc}"
    if len(samples) == 1:
        return [Outcome.error(batch_reason)]
    outcomes = []
    for i, sample in enumerate(samples):
        try:
            outcomes.extend(check_outcomes(reward.name, [sample], reward.score([sample])))
        except Exception as exc:  # this row's own failure, reported, not raised
            reason = f"{type(exc).__name__}: {exc}"
            if i == 1 and outcomes[0].status is Status.ERROR and outcomes[0].reason == reason == batch_reason:
                # the first two rows fail alone as the batch did: the reward itself is broken
                # (a worker that cannot start, say), not one row -- do not retry every row
                return [Outcome.error(reason) for _ in samples]
            outcomes.append(Outcome.error(reason))
    return outcomes


def score_rows(reward: Reward, rows: Sequence[Sample | Outcome]) -> list[Outcome]:
    """Score the Samples among ``rows`` in one :func:`score_safely` call; an Outcome in
    ``rows`` (a row that could not even be made a Sample) stays as it is, in its place."""
    todo = [i for i, r in enumerate(rows) if isinstance(r, Sample)]
    out: list[Outcome] = [r if isinstance(r, Outcome) else Outcome.error("not scored") for r in rows]
    for i, o in zip(todo, score_safely(reward, [rows[i] for i in todo])):
        out[i] = o
    return out


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None (a bool, a non-number, NaN, inf, an int past float's range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def batch_stats(outcomes: Sequence[Outcome]) -> dict[str, float]:
    """Counts by status and each metric's mean over the outcomes that carry it.

    Keys: ``ok``, ``abstain``, ``timeout``, ``error`` (counts), ``failed_frac`` (TIMEOUT or
    ERROR over all), ``elapsed_s_max``, and ``metric/<key>`` for each numeric metric.
    """
    counts = {s.value: 0.0 for s in Status}
    sums: dict[str, float] = {}
    seen: dict[str, int] = {}
    for o in outcomes:
        counts[o.status.value] += 1
        for k, v in o.metrics.items():
            number = finite_number(v)
            if number is not None:
                sums[k] = sums.get(k, 0.0) + number
                seen[k] = seen.get(k, 0) + 1
    out = dict(counts)
    out["failed_frac"] = (counts["timeout"] + counts["error"]) / len(outcomes) if outcomes else 0.0
    out["elapsed_s_max"] = max((o.elapsed_s for o in outcomes), default=0.0)
    for k in sorted(sums):
        out[f"metric/{k}"] = sums[k] / seen[k]
    return out


def _json_value(value: Any) -> Any:
    """``value`` if JSON can carry it, else its ``repr`` (metrics and info stay loggable)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return _json_value(value.item())
        except (TypeError, ValueError):
            pass
    return repr(value)


# A reference must reach the server as the value it is, so that a sample scores the same
# on either side of the wire. Values JSON has no form for travel as a tagged object.
WIRE_TAG = "$rlvr"
MAX_JSON_DEPTH = 64


def reference_to_json(value: Any, _depth: int = 0) -> Any:
    """``value`` in a JSON form that :func:`reference_from_json` turns back into an equal value.

    JSON values go as they are; a tuple, set or array as a list; a ``Fraction``,
    ``Decimal``, non-finite float or ``complex`` as ``{"$rlvr": kind, "value": text}``; a
    dict holding the key ``"$rlvr"`` is wrapped so it is never read as a tag. Raises
    ``TypeError`` for anything else (and past :data:`MAX_JSON_DEPTH` levels): it could not
    be scored the same way remotely, so it is not sent.
    """
    if _depth > MAX_JSON_DEPTH:
        raise TypeError(f"reference nests deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {WIRE_TAG: "float", "value": repr(value)}
    if isinstance(value, Fraction):
        return {WIRE_TAG: "fraction", "value": str(value)}
    if isinstance(value, Decimal):
        return {WIRE_TAG: "decimal", "value": str(value)}
    if isinstance(value, complex):
        return {WIRE_TAG: "complex", "value": repr(value)}
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a reference dict needs string keys to be sent as JSON")
        body = {k: reference_to_json(v, _depth + 1) for k, v in value.items()}
        return {WIRE_TAG: "dict", "value": body} if WIRE_TAG in body else body
    if isinstance(value, (list, tuple)):
        return [reference_to_json(v, _depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return [reference_to_json(v, _depth + 1) for v in sorted(value, key=repr)]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars, tensors
        return reference_to_json(value.tolist(), _depth + 1)
    raise TypeError(
        f"a reference of type {type(value).__name__} cannot be sent to a reward server as itself; "
        "give it as a str, number, Fraction, Decimal, or a list of those"
    )


_FROM_TAG: dict[str, Any] = {"fraction": Fraction, "decimal": Decimal, "float": float, "complex": complex}
# A tagged value's text: short, and a fraction only as integers (``Fraction("1e30000000")``
# would build a 30-million-digit integer: a request must not hold the server for minutes).
_MAX_TAG_TEXT = 400
_FRACTION_TEXT = re.compile(r"[+-]?\d{1,180}(?:/\d{1,180})?")


def reference_from_json(data: Any) -> Any:
    """The value :func:`reference_to_json` sent; raises ``ValueError`` on a malformed tag."""
    if isinstance(data, list):
        return [reference_from_json(v) for v in data]
    if isinstance(data, Mapping):
        if WIRE_TAG not in data:
            return {k: reference_from_json(v) for k, v in data.items()}
        kind, text = data.get(WIRE_TAG), data.get("value")
        if kind == "dict" and isinstance(text, Mapping):
            return {k: reference_from_json(v) for k, v in text.items()}
        if kind in _FROM_TAG and isinstance(text, str) and len(text) <= _MAX_TAG_TEXT and (kind != "fraction" or _FRACTION_TEXT.fullmatch(text)):
            try:
                return _FROM_TAG[kind](text)
            except (ValueError, ArithmeticError):
                pass
        raise ValueError(f"malformed {WIRE_TAG!r} value {dict(data)!r:.80}")
    return data


def json_depth_over(data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``data`` (parsed JSON) nests deeper than ``limit`` (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    """An Outcome as a JSON object: ``score``, ``status``, ``reason``, ``metrics``, ``elapsed_s``."""
    return {
        "score": outcome.score,
        "status": outcome.status.value,
        "reason": outcome.reason,
        "metrics": {str(k): _json_value(v) for k, v in outcome.metrics.items()},
        "elapsed_s": outcome.elapsed_s,
    }


def outcome_from_json(data: Any) -> Outcome:
    """An Outcome from :func:`outcome_to_json`'s form; anything malformed is an ERROR outcome."""
    if not isinstance(data, Mapping):
        return Outcome.error(f"malformed outcome from the server: {data!r:.80}")
    try:
        status = Status(data.get("status"))
    except ValueError:
        return Outcome.error(f"unknown status from the server: {data.get('status')!r:.40}")
    metrics = data.get("metrics") or {}
    metrics = dict(metrics) if isinstance(metrics, Mapping) else {}
    elapsed = data.get("elapsed_s") or 0.0
    elapsed = float(elapsed) if isinstance(elapsed, (int, float)) else 0.0
    score = data.get("score")
    return check_outcomes("remote", [None], [Outcome(score, status, str(data.get("reason", "")), metrics, elapsed)])[0]


def sample_to_json(sample: Sample) -> dict[str, Any]:
    """A Sample as a JSON object: the reference exactly (:func:`reference_to_json`; raises
    ``TypeError`` for one that cannot be), ``info`` values JSON cannot carry as their ``repr``."""
    return {
        "prompt": sample.prompt,
        "completion": sample.completion,
        "reference": reference_to_json(sample.reference),
        "info": _json_value(dict(sample.info)),
    }


def sample_from_json(data: Any, index: int = 0) -> Sample:
    """A Sample from :func:`sample_to_json`'s form; raises ``ValueError`` naming the bad field."""
    if not isinstance(data, Mapping):
        raise ValueError(f"samples[{index}] must be an object with 'completion' (and 'prompt', 'reference', 'info')")
    completion = data.get("completion")
    if not isinstance(completion, str):
        raise ValueError(f"samples[{index}].completion must be a string, got {type(completion).__name__}")
    prompt = data.get("prompt", "")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, (str, list)):
        raise ValueError(f"samples[{index}].prompt must be a string or a list of chat messages")
    info = data.get("info") or {}
    if not isinstance(info, Mapping):
        raise ValueError(f"samples[{index}].info must be an object")
    return Sample(prompt, completion, reference_from_json(data.get("reference")), dict(info))
