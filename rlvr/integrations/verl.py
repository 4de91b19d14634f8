"""rlvr rewards in veRL: a ``custom_reward_function``.

veRL's reward managers call ``compute_score(data_source=..., solution_str=...,
ground_truth=..., extra_info=..., **reward_kwargs)`` once per response (``naive``, ``dapo``,
``prime``), or ``compute_score(data_sources=[...], solution_strs=[...], ground_truths=[...],
extra_infos=[...], **reward_kwargs)`` once per batch (``reward_manager=batch``). A float
or a dict with ``"score"`` comes back; veRL logs a dict's other keys
(``reward_extra_info``). Point veRL at this module::

    custom_reward_function.path=pkg://rlvr.integrations.verl
    custom_reward_function.name=compute_score          # or compute_score_batch with reward_manager=batch
    +custom_reward_function.reward_kwargs.verifier=math  # optional: else chosen by data_source

The verifier is ``reward_kwargs["verifier"]`` (with ``reward_kwargs["options"]``), or, when
that is not given, the one ``data_source`` names: ``reward_kwargs["data_sources"]`` maps
data sources to verifier names first, then veRL's usual math/GSM8K data sources map to
``math``, and a registered verifier's own name maps to itself. A data source nothing maps
is a misconfiguration and raises ``ValueError`` saying how to map it.

veRL cannot leave a response out of the advantages, so a failed check (TIMEOUT, ERROR,
ABSTAIN) scores ``failure_score`` (0.0 unless ``reward_kwargs["failure_score"]`` says
otherwise) and says so in the dict: ``rlvr_failed`` is 1.0 and ``rlvr_status`` /
``rlvr_reason`` tell why. Every response returns the same keys (veRL stacks them into one
array per key); a metric appears as ``rlvr_metric/<key>`` only when listed in
``reward_kwargs["metric_keys"]`` (NaN where an outcome lacks it).

For a reward that is not a registered verifier (a ``WeightedSum``, your own), build the
function in your own file with :func:`make_compute_score` and point veRL at that file.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from rlvr.integrations import resolve_reward, score_rows
from rlvr.rewards import Outcome, Reward, Sample, Status

__all__ = ["compute_score", "compute_score_batch", "make_compute_score", "verifier_for", "DATA_SOURCES"]

# veRL's own data-source names (verl/utils/reward_score/__init__.py) that rlvr's math
# verifier grades, with the options each needs.
DATA_SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai/gsm8k": ("math", {"fallbacks": ["gsm8k", "last_number"]}),
    "lighteval/MATH": ("math", {}),
    "DigitalLearningGmbH/MATH-lighteval": ("math", {}),
    "HuggingFaceH4/MATH-500": ("math", {}),
    "math_dapo": ("math", {"fallbacks": ["answer_is"]}),
    "math": ("math", {}),
    "aime": ("math", {}),
}

_cache: dict[str, Reward] = {}
_cache_lock = threading.Lock()


def _reward(name: str, options: Mapping[str, Any]) -> Reward:
    """One verifier object per (name, options) in this process: veRL calls per response."""
    key = json.dumps([name, options], sort_keys=True, default=repr)
    with _cache_lock:
        reward = _cache.get(key)
        if reward is None:
            reward = _cache[key] = resolve_reward(name, options)
        return reward


def verifier_for(data_source: Any, reward_kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The (verifier name, options) for one data source under veRL's ``reward_kwargs``."""
    if reward_kwargs.get("verifier"):
        return str(reward_kwargs["verifier"]), dict(reward_kwargs.get("options") or {})
    source = str(data_source)
    mapping = reward_kwargs.get("data_sources") or {}
    if source in mapping:
        target = mapping[source]
        if isinstance(target, Mapping):
            return str(target["verifier"]), dict(target.get("options") or {})
        return str(target), dict(reward_kwargs.get("options") or {})
    if source in DATA_SOURCES:
        name, options = DATA_SOURCES[source]
        return name, {**options, **dict(reward_kwargs.get("options") or {})}
    from rlvr.registry import list_verifiers

    if source in list_verifiers():
        return source, dict(reward_kwargs.get("options") or {})
    raise ValueError(
        f"rlvr.integrations.verl: no verifier for data_source {source!r}. Set "
        "custom_reward_function.reward_kwargs.verifier=<name> (see `python -m rlvr list`), or map it with "
        f"reward_kwargs.data_sources={{'{source}': '<name>'}}; known data sources: {sorted(DATA_SOURCES)}"
    )


def result_dict(outcome: Outcome, failure_score: float = 0.0, metric_keys: Sequence[str] = ()) -> dict[str, Any]:
    """The dict veRL gets for one outcome: ``score`` and the same ``rlvr_*`` keys every time."""
    ok = outcome.status is Status.OK
    out: dict[str, Any] = {
        "score": float(outcome.score) if ok else float(failure_score),
        "rlvr_failed": 0.0 if ok else 1.0,
        "rlvr_timeout": float(outcome.status is Status.TIMEOUT),
        "rlvr_error": float(outcome.status is Status.ERROR),
        "rlvr_abstain": float(outcome.status is Status.ABSTAIN),
        "rlvr_status": outcome.status.value,
        "rlvr_reason": outcome.reason,
    }
    for key in metric_keys:
        value = outcome.metrics.get(key)
        ok_value = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        out[f"rlvr_metric/{key}"] = float(value) if ok_value else math.nan
    return out


def _sample(solution_str: Any, ground_truth: Any, extra_info: Any) -> Sample | Outcome:
    if not isinstance(solution_str, str):
        return Outcome.error(f"solution_str must be a str, got {type(solution_str).__name__}")
    info = dict(extra_info) if isinstance(extra_info, Mapping) else {}
    prompt = info.get("question") or info.get("prompt") or ""
    return Sample(prompt if isinstance(prompt, (str, list)) else str(prompt), solution_str, ground_truth, info)


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **reward_kwargs: Any,
) -> dict[str, Any]:
    """veRL's ``compute_score``: score one response with the verifier its data source names.

    ``reward_kwargs`` (veRL's ``custom_reward_function.reward_kwargs``): ``verifier``,
    ``options``, ``data_sources``, ``failure_score``, ``metric_keys`` (see the module
    docstring). veRL may add keys of its own (``sandbox_fusion_url``, ...); they are ignored.
    """
    name, options = verifier_for(data_source, reward_kwargs)
    reward = _reward(name, options)
    [outcome] = score_rows(reward, [_sample(solution_str, ground_truth, extra_info)])
    return result_dict(outcome, float(reward_kwargs.get("failure_score", 0.0)), tuple(reward_kwargs.get("metric_keys") or ()))


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **reward_kwargs: Any,
) -> list[dict[str, Any]]:
    """veRL's batched ``compute_score`` (``reward_manager=batch``): one dict per response.

    Responses are grouped by verifier and each group is scored in one ``score`` call, so a
    verifier parallelises across the batch.
    """
    n = len(solution_strs)
    if len(data_sources) != n or len(ground_truths) != n:
        raise ValueError(f"compute_score_batch: {len(data_sources)} data_sources, {n} solution_strs, {len(ground_truths)} ground_truths")
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * n
    groups: dict[str, list[int]] = {}
    specs: dict[str, tuple[str, dict[str, Any]]] = {}
    for i, source in enumerate(data_sources):
        spec = verifier_for(source, reward_kwargs)
        key = json.dumps(spec, sort_keys=True, default=repr)
        specs[key] = spec
        groups.setdefault(key, []).append(i)
    outcomes: list[Outcome | None] = [None] * n
    for key, idx in groups.items():
        reward = _reward(*specs[key])
        scored = score_rows(reward, [_sample(solution_strs[i], ground_truths[i], extra_infos[i]) for i in idx])
        for i, o in zip(idx, scored):
            outcomes[i] = o
    failure = float(reward_kwargs.get("failure_score", 0.0))
    keys = tuple(reward_kwargs.get("metric_keys") or ())
    return [result_dict(o, failure, keys) for o in outcomes]


def make_compute_score(reward: Reward, failure_score: float = 0.0, metric_keys: Sequence[str] = ()) -> Any:
    """A veRL ``compute_score`` for any Reward object (``WeightedSum``, your own)::

        # my_reward.py -- custom_reward_function.path=my_reward.py, name=compute_score
        from rlvr import WeightedSum
        from rlvr.registry import load_verifier
        from rlvr.integrations.verl import make_compute_score

        compute_score = make_compute_score(WeightedSum([(load_verifier("math"), 1.0),
                                                        (load_verifier("boxed_format"), 0.1)]))

    The returned function also accepts veRL's batched form (``data_sources=``, ...).
    """

    def compute_score(
        data_source: Any = None,
        solution_str: Any = None,
        ground_truth: Any = None,
        extra_info: Any = None,
        data_sources: Sequence[Any] | None = None,
        solution_strs: Sequence[str] | None = None,
        ground_truths: Sequence[Any] | None = None,
        extra_infos: Sequence[Any] | None = None,
        **_ignored: Any,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        if solution_strs is not None:
            infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
            truths = list(ground_truths) if ground_truths is not None else [None] * len(solution_strs)
            rows = [_sample(s, g, e) for s, g, e in zip(solution_strs, truths, infos)]
            return [result_dict(o, failure_score, metric_keys) for o in score_rows(reward, rows)]
        [outcome] = score_rows(reward, [_sample(solution_str, ground_truth, extra_info)])
        return result_dict(outcome, failure_score, metric_keys)

    compute_score.__name__ = "compute_score"
    compute_score.reward = reward  # type: ignore[attr-defined]
    return compute_score
