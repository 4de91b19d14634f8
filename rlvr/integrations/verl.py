"""rlvr rewards in veRL: a ``custom_reward_function``.

veRL calls ``compute_score`` once per response, in one of three shapes, all of which this
module's functions accept:

- keywords: ``compute_score(data_source=..., solution_str=..., ground_truth=...,
  extra_info=..., **reward_kwargs)`` -- the reward-loop managers of veRL 0.7-0.9
  (``naive``, ``dapo``, ``gdpo``, ``rate_limited``, ``remote``; sync functions run in a
  thread pool) and the older ``naive`` / ``dapo`` managers of 0.5-0.6;
- positional: ``compute_score(data_source, solution_str, ground_truth, extra_info)`` -- the
  ``prime`` manager (0.5-0.6), in a process pool (so the function pickles), which reads a
  result as ``float(result)`` for a number and ``float(result[0])`` otherwise;
- batched: ``compute_score(data_sources=[...], solution_strs=[...], ground_truths=[...],
  extra_infos=[...], **reward_kwargs)`` -- the ``batch`` manager (0.5-0.6).

veRL merges ``custom_reward_function.reward_kwargs`` into every call (its
``_call_with_kwargs``). Point veRL at this module::

    reward.custom_reward_function.path=pkg://rlvr.integrations.verl   # custom_reward_function.* before 0.7
    reward.custom_reward_function.name=compute_score                  # compute_score_batch with reward_manager=batch
    +reward.custom_reward_function.reward_kwargs.verifier=math         # optional: else chosen by data_source

What comes back is a :class:`VerlResult`: a dict with ``score``, ``acc`` and the same
``rlvr_*`` keys for every response (veRL stacks each key into one array), which also reads
as ``result[0]`` and ``float(result)`` (the score) for the ``prime`` manager.

The verifier is ``reward_kwargs["verifier"]`` (with ``reward_kwargs["options"]``), or, when
that is not given, the one ``data_source`` names, routed as veRL's ``default_compute_score``
routes it (:data:`DATA_SOURCES`, :data:`PREFIXES`): GSM8K and MATH to the math verifier
(0 / 1), ``math_dapo``, ``math``, ``math_dapo_reasoning`` and every ``aime*`` to the math
verifier reading DAPO's ``Answer: X`` (and a box), scored +1 / -1 as veRL's ``math_dapo``
scores, the ``numina_*`` sources as ``prime_math`` (0 / 1). ``reward_kwargs["data_sources"]``
maps data sources of your own first; a registered verifier's name maps to itself. A data
source nothing maps is a misconfiguration and raises ``ValueError`` saying how to map it.

veRL cannot leave a response out of the advantages, so a failed check (TIMEOUT, ERROR,
ABSTAIN) scores ``failure_score`` (0.0 unless ``reward_kwargs["failure_score"]`` says
otherwise: a wrong answer's score on the 0 / 1 scale, halfway on the +1 / -1 one) and says
so -- veRL's advantages cannot tell it from a wrong answer, the logs can: ``rlvr_failed``
is 1.0 and ``rlvr_status`` / ``rlvr_reason`` tell why. A metric appears as
``rlvr_metric/<key>`` only when listed in ``reward_kwargs["metric_keys"]`` (NaN where an
outcome lacks it). A ground truth that is a list or array means any of its answers.

For a reward that is not a registered verifier (a ``WeightedSum``, your own), build the
function in your own file with :func:`make_compute_score` and point veRL at that file.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rlvr.integrations import finite_number, resolve_reward, score_rows
from rlvr.rewards import Outcome, Reward, Sample, Status

__all__ = [
    "compute_score",
    "compute_score_batch",
    "make_compute_score",
    "ComputeScore",
    "VerlResult",
    "Route",
    "route_for",
    "verifier_for",
    "DATA_SOURCES",
    "PREFIXES",
]


class Route(NamedTuple):
    """How one veRL data source is scored: the verifier, its options, and whether the score
    is on veRL's +1 / -1 scale (``math_dapo``) instead of 0 / 1."""

    verifier: str
    options: dict[str, Any]
    signed: bool = False


_GSM8K = Route("math", {"fallbacks": ["gsm8k", "last_number"]})
_MATH = Route("math", {})
_DAPO = Route("math", {"fallbacks": ["answer_colon"]}, signed=True)
_PRIME_MATH = Route("math", {"fallbacks": ["answer_colon", "answer_is"]})

# veRL's data-source names (verl/utils/reward_score/__init__.py, default_compute_score,
# veRL 0.6-0.9) that rlvr's math verifier grades, routed as veRL routes them.
DATA_SOURCES: dict[str, Route] = {
    "openai/gsm8k": _GSM8K,
    "lighteval/MATH": _MATH,
    "DigitalLearningGmbH/MATH-lighteval": _MATH,
    "HuggingFaceH4/MATH-500": _MATH,
    "math_dapo": _DAPO,
    "math": _DAPO,
    "math_dapo_reasoning": _DAPO,
    **dict.fromkeys(
        ["numina_aops_forum", "numina_synthetic_math", "numina_amc_aime", "numina_synthetic_amc", "numina_cn_k12", "numina_olympiads"],
        _PRIME_MATH,
    ),
}
# veRL's prefix rules: ``data_source.startswith("aime")`` goes to math_dapo.
PREFIXES: tuple[tuple[str, Route], ...] = (("aime", _DAPO),)

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


def route_for(data_source: Any, reward_kwargs: Mapping[str, Any]) -> Route:
    """The :class:`Route` for one data source under veRL's ``reward_kwargs``.

    ``reward_kwargs["signed"]`` (true / false), when given, sets the +1 / -1 scale for every
    data source.
    """
    signed = reward_kwargs.get("signed")
    route = _route(data_source, reward_kwargs)
    return route if signed is None else route._replace(signed=bool(signed))


def _route(data_source: Any, reward_kwargs: Mapping[str, Any]) -> Route:
    user_options = dict(reward_kwargs.get("options") or {})
    if reward_kwargs.get("verifier"):
        return Route(str(reward_kwargs["verifier"]), user_options)
    source = str(data_source)
    mapping = reward_kwargs.get("data_sources") or {}
    if source in mapping:
        target = mapping[source]
        if isinstance(target, Mapping):
            return Route(str(target["verifier"]), dict(target.get("options") or {}), bool(target.get("signed", False)))
        return Route(str(target), user_options)
    route = DATA_SOURCES.get(source) or next((r for prefix, r in PREFIXES if source.startswith(prefix)), None)
    if route is not None:
        return route._replace(options={**route.options, **user_options})
    from rlvr.registry import list_verifiers

    if source in list_verifiers():
        return Route(source, user_options)
    raise ValueError(
        f"rlvr.integrations.verl: no verifier for data_source {source!r}. Set "
        "custom_reward_function.reward_kwargs.verifier=<name> (see `python -m rlvr list`), or map it with "
        f"reward_kwargs.data_sources={{'{source}': '<name>'}}; known data sources: {sorted(DATA_SOURCES)} "
        f"and every name starting with {[p for p, _ in PREFIXES]}"
    )


def verifier_for(data_source: Any, reward_kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The (verifier name, options) for one data source under veRL's ``reward_kwargs``."""
    route = route_for(data_source, reward_kwargs)
    return route.verifier, route.options


class VerlResult(dict):
    """veRL's result for one response: a dict (``score``, ``acc``, ``rlvr_*``) for the
    managers that read ``result["score"]`` and log the other keys, that also reads as
    ``result[0]`` and ``float(result)`` -- the score -- for the ``prime`` manager, which
    takes ``float(result[0])`` of anything that is not a number."""

    def __getitem__(self, key: Any) -> Any:
        if key == 0 and not isinstance(key, bool) and 0 not in self.keys():
            return dict.__getitem__(self, "score")
        return dict.__getitem__(self, key)

    def __float__(self) -> float:
        return float(dict.__getitem__(self, "score"))

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Ray, process pools) as itself
        return (VerlResult, (dict(self),))


def result_dict(outcome: Outcome, failure_score: float = 0.0, metric_keys: Sequence[str] = (), signed: bool = False) -> VerlResult:
    """The result veRL gets for one outcome: ``score`` (on the +1 / -1 scale when
    ``signed``), ``acc`` (the 0 / 1 score; 0.0 for a failed check) and the same ``rlvr_*``
    keys every time."""
    ok = outcome.status is Status.OK
    raw = float(outcome.score) if ok else 0.0
    out = VerlResult(
        score=(2.0 * raw - 1.0 if signed else raw) if ok else float(failure_score),
        acc=raw,
        rlvr_failed=0.0 if ok else 1.0,
        rlvr_timeout=float(outcome.status is Status.TIMEOUT),
        rlvr_error=float(outcome.status is Status.ERROR),
        rlvr_abstain=float(outcome.status is Status.ABSTAIN),
        rlvr_status=outcome.status.value,
        rlvr_reason=outcome.reason,
    )
    for key in metric_keys:
        value = finite_number(outcome.metrics.get(key))
        out[f"rlvr_metric/{key}"] = value if value is not None else math.nan
    return out


def _sample(solution_str: Any, ground_truth: Any, extra_info: Any) -> Sample | Outcome:
    if not isinstance(solution_str, str):
        return Outcome.error(f"solution_str must be a str, got {type(solution_str).__name__}")
    info = dict(extra_info) if isinstance(extra_info, Mapping) else {}
    prompt = info.get("question") or info.get("prompt") or ""
    return Sample(prompt if isinstance(prompt, (str, list)) else str(prompt), solution_str, ground_truth, info)


def _options(reward_kwargs: Mapping[str, Any]) -> tuple[float, tuple[str, ...]]:
    return float(reward_kwargs.get("failure_score", 0.0)), tuple(reward_kwargs.get("metric_keys") or ())


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **reward_kwargs: Any,
) -> VerlResult:
    """veRL's ``compute_score``: score one response with the verifier its data source names.

    Called with keywords or positionally (the ``prime`` manager). ``reward_kwargs``
    (veRL's ``custom_reward_function.reward_kwargs``): ``verifier``, ``options``,
    ``data_sources``, ``signed``, ``failure_score``, ``metric_keys`` (see the module
    docstring). Keys veRL adds of its own (``reward_router_address``, ...) are ignored.
    """
    route = route_for(data_source, reward_kwargs)
    [outcome] = score_rows(_reward(route.verifier, route.options), [_sample(solution_str, ground_truth, extra_info)])
    return result_dict(outcome, *_options(reward_kwargs), signed=route.signed)


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    **reward_kwargs: Any,
) -> list[VerlResult]:
    """veRL's batched ``compute_score`` (``reward_manager=batch``): one result per response.

    Responses are grouped by verifier and each group is scored in one ``score`` call, so a
    verifier parallelises across the batch.
    """
    n = len(solution_strs)
    if len(data_sources) != n or len(ground_truths) != n:
        raise ValueError(f"compute_score_batch: {len(data_sources)} data_sources, {n} solution_strs, {len(ground_truths)} ground_truths")
    extra_infos = list(extra_infos) if extra_infos is not None else [None] * n
    groups: dict[str, list[int]] = {}
    routes: dict[str, Route] = {}
    for i, source in enumerate(data_sources):
        route = route_for(source, reward_kwargs)
        key = json.dumps(route, sort_keys=True, default=repr)
        routes[key] = route
        groups.setdefault(key, []).append(i)
    results: list[VerlResult | None] = [None] * n
    failure, keys = _options(reward_kwargs)
    for key, idx in groups.items():
        route = routes[key]
        scored = score_rows(_reward(route.verifier, route.options), [_sample(solution_strs[i], ground_truths[i], extra_infos[i]) for i in idx])
        for i, o in zip(idx, scored):
            results[i] = result_dict(o, failure, keys, signed=route.signed)
    return results  # type: ignore[return-value]


class ComputeScore:
    """A veRL ``compute_score`` for one Reward object; build it with :func:`make_compute_score`.

    An object, not a closure, so it pickles for veRL's process pools and Ray workers (its
    reward is pickled with it and starts its own workers on the other side).
    """

    __name__ = "compute_score"

    def __init__(self, reward: Reward | str, failure_score: float = 0.0, metric_keys: Sequence[str] = (), signed: bool = False) -> None:
        self.reward = resolve_reward(reward)
        self.failure_score = float(failure_score)
        self.metric_keys = tuple(metric_keys)
        self.signed = bool(signed)

    def __call__(
        self,
        data_source: Any = None,
        solution_str: Any = None,
        ground_truth: Any = None,
        extra_info: Any = None,
        data_sources: Sequence[Any] | None = None,
        solution_strs: Sequence[str] | None = None,
        ground_truths: Sequence[Any] | None = None,
        extra_infos: Sequence[Any] | None = None,
        **_ignored: Any,
    ) -> VerlResult | list[VerlResult]:
        if solution_strs is not None:
            n = len(solution_strs)
            infos = list(extra_infos) if extra_infos is not None else [None] * n
            truths = list(ground_truths) if ground_truths is not None else [None] * n
            if len(infos) != n or len(truths) != n:
                raise ValueError(f"compute_score: {n} solution_strs, {len(truths)} ground_truths, {len(infos)} extra_infos")
            rows = [_sample(s, g, e) for s, g, e in zip(solution_strs, truths, infos)]
            return [result_dict(o, self.failure_score, self.metric_keys, self.signed) for o in score_rows(self.reward, rows)]
        [outcome] = score_rows(self.reward, [_sample(solution_str, ground_truth, extra_info)])
        return result_dict(outcome, self.failure_score, self.metric_keys, self.signed)

    def __repr__(self) -> str:
        return f"make_compute_score({self.reward!r})"


def make_compute_score(reward: Reward | str, failure_score: float = 0.0, metric_keys: Sequence[str] = (), signed: bool = False) -> ComputeScore:
    """A veRL ``compute_score`` for any Reward object (``WeightedSum``, your own)::

        # my_reward.py -- custom_reward_function.path=my_reward.py, name=compute_score
        from rlvr import WeightedSum
        from rlvr.registry import load_verifier
        from rlvr.integrations.verl import make_compute_score

        compute_score = make_compute_score(WeightedSum([(load_verifier("math"), 1.0),
                                                        (load_verifier("boxed_format"), 0.1)]))

    It accepts every shape veRL calls with (keywords, positional, batched), pickles, and
    returns :class:`VerlResult` s; ``signed=True`` maps a 0..1 score to veRL's +1 / -1.
    """
    return ComputeScore(reward, failure_score=failure_score, metric_keys=metric_keys, signed=signed)
