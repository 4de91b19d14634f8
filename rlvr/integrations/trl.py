"""rlvr rewards in TRL, and TRL reward functions as rlvr rewards.

TRL (1.x) calls each entry of ``GRPOTrainer(reward_funcs=[...])`` / ``RLOOTrainer`` as::

    reward_func(prompts=[...], completions=[...], completion_ids=[...],
                trainer_state=..., log_extra=..., log_metric=..., **dataset_columns)

and takes back one ``float | None`` per completion; ``None`` means "this function has no
score for this completion" (TRL leaves it out of that function's mean, and a completion
every function left out gets no advantage). :func:`reward_func` makes an rlvr Reward
speak that::

    from trl import GRPOTrainer
    from rlvr.integrations.trl import reward_func

    trainer = GRPOTrainer(model=..., reward_funcs=[reward_func("math")], train_dataset=ds)  # ds has "prompt", "answer"

Several rewards: give TRL ONE ``reward_func(WeightedSum([...]))``. TRL adds its reward
functions with ``nansum``, so with separate functions a completion whose math check timed
out (``None``) would still get the others' scores -- a failed check scored as a wrong
answer. A ``WeightedSum`` fails as a whole when any part failed, and the row reaches TRL as
``None``.

A TIMEOUT or ERROR outcome (and an ABSTAIN) reaches TRL as ``None``, never 0.0. Counts of
each status and the mean of every outcome metric go to TRL's ``log_metric`` as
``rlvr/<name>/...``; each completion's status and reason go to the completions table
through ``log_extra``.

:func:`from_reward_func` goes the other way: a TRL-style function becomes an rlvr Reward,
so it gains ``isolated(...)`` (deadlines, crash containment), ``python -m rlvr.eval
verifier`` and every rlvr trainer. It is called as TRL calls it (``trainer_state``,
``log_extra``, ``log_metric`` included; an async function is awaited).

Every object here pickles (TRL's async GRPO pickles ``reward_funcs`` into its rollout
worker); worker processes stay behind and the copy starts its own.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any

from rlvr.integrations import batch_stats, completion_text, resolve_reward, score_rows
from rlvr.rewards import Outcome, Reward, Sample, Status, isolated

__all__ = ["RewardFunc", "reward_func", "FromRewardFunc", "from_reward_func", "TrainerStateView"]

# Keyword arguments TRL adds beside the dataset columns; never treated as a column.
TRL_EXTRA_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids")


class RewardFunc:
    """An rlvr Reward as a TRL reward function. Build it with :func:`reward_func`."""

    def __init__(
        self,
        reward: Reward,
        reference_column: str | None = "answer",
        info_columns: Sequence[str] | None = None,
        log: bool = True,
    ) -> None:
        self.reward = reward
        self.reference_column = reference_column
        self.info_columns = None if info_columns is None else tuple(info_columns)
        self.log = log
        # TRL names a callable by its __name__ (rewards/<name>/mean in its logs).
        self.__name__ = reward.name

    def rows(self, prompts: Sequence[Any], completions: Sequence[Any], columns: Mapping[str, Any]) -> list[Sample | Outcome]:
        """One rlvr Sample per completion of a TRL call; a completion that cannot be one
        (neither text nor chat messages) is an ERROR Outcome in its place.

        Raises ``KeyError`` when the reference column is missing and ``ValueError`` when the
        lengths differ: a misconfiguration, reported at the first batch.
        """
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"reward_func({self.reward.name}): {len(prompts)} prompts for {n} completions")
        if self.reference_column is not None and self.reference_column not in columns:
            have = sorted(k for k in columns if k not in TRL_EXTRA_KWARGS)
            raise KeyError(
                f"reward_func({self.reward.name}): the dataset has no column {self.reference_column!r} to read the "
                f"reference from (its columns: {have}). Pass reference_column='<column>' to reward_func, or "
                "reference_column=None for a reward that needs no reference."
            )
        names = [k for k in columns if k not in TRL_EXTRA_KWARGS and k != self.reference_column]
        if self.info_columns is not None:
            names = [k for k in names if k in self.info_columns]
        per_row = {k: v for k, v in columns.items() if k in names and isinstance(v, (list, tuple)) and len(v) == n}
        out: list[Sample | Outcome] = []
        for i in range(n):
            reference = columns[self.reference_column][i] if self.reference_column is not None else None
            prompt = prompts[i] if isinstance(prompts[i], (str, list)) else str(prompts[i])
            try:
                out.append(Sample(prompt, completion_text(completions[i]), reference, {k: v[i] for k, v in per_row.items()}))
            except (TypeError, ValueError) as exc:  # this row only: reported, not raised
                out.append(Outcome.error(f"{type(exc).__name__}: {exc}"))
        return out

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any) -> list[float | None]:
        """Score TRL's batch: one ``float`` per OK outcome, ``None`` for every other outcome."""
        outcomes = score_rows(self.reward, self.rows(prompts, completions, kwargs))
        if self.log:
            self._log(outcomes, kwargs)
        return [o.score if o.status is Status.OK else None for o in outcomes]

    def _log(self, outcomes: list[Outcome], kwargs: Mapping[str, Any]) -> None:
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for key, value in batch_stats(outcomes).items():
                log_metric(f"rlvr/{self.reward.name}/{key}", float(value))
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            log_extra(f"{self.reward.name}/status", [o.status.value for o in outcomes])
            log_extra(f"{self.reward.name}/reason", [o.reason for o in outcomes])

    def close(self) -> None:
        """Close the reward's worker processes, if it has any."""
        if hasattr(self.reward, "close"):
            self.reward.close()

    def __repr__(self) -> str:
        return f"reward_func({self.reward!r}, reference_column={self.reference_column!r})"


def reward_func(
    reward: Reward | str,
    reference_column: str | None = "answer",
    info_columns: Sequence[str] | None = None,
    timeout_s: float | None = None,
    max_workers: int | None = None,
    log: bool = True,
    **options: Any,
) -> RewardFunc:
    """An rlvr Reward as a reward function for TRL's ``GRPOTrainer`` / ``RLOOTrainer``.

    Args:
        reward: A Reward, a registered verifier name (``"math"``, ``"code"``, a plugin's)
            or ``"module:attr"``.
        reference_column: The dataset column holding each row's reference (``"answer"``);
            ``None`` for a reward that needs none. A dataset without it fails at the first
            batch with a message naming the columns it has.
        info_columns: Dataset columns to pass as ``Sample.info`` (default: all the others).
        timeout_s: Score in worker processes (:func:`rlvr.isolated`) with this deadline per
            completion: one that runs past it is TIMEOUT (``None`` to TRL) and its worker is
            killed. ``None``: call the reward in TRL's process (the built-in math and code
            verifiers keep their own deadlines).
        max_workers: Worker processes when ``timeout_s`` is given.
        log: Log status counts and metric means through TRL's ``log_metric``, and each
            completion's status and reason through ``log_extra``.
        **options: Options for the verifier when ``reward`` is a name.

    Returns:
        A callable TRL accepts in ``reward_funcs``; its ``__name__`` is the reward's name.
    """
    reward_obj = resolve_reward(reward, options)
    if timeout_s is not None:
        reward_obj = isolated(reward_obj, timeout_s=timeout_s, max_workers=max_workers)
    return RewardFunc(reward_obj, reference_column=reference_column, info_columns=info_columns, log=log)


@dataclass
class TrainerStateView:
    """What a TRL reward function reads from ``trainer_state`` (transformers' ``TrainerState``):
    the fields rlvr knows when it calls the function itself. Set them on
    ``FromRewardFunc.trainer_state`` to drive a schedule (``global_step`` / ``max_steps``)."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    num_train_epochs: float = 0.0
    log_history: list[dict[str, float]] = field(default_factory=list)
    is_world_process_zero: bool = True


def _run_awaitable(awaitable: Any) -> Any:
    """The result of a coroutine from an async reward function, from sync code: on a fresh
    event loop in this thread, or in a helper thread when this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    result: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(_await(awaitable)))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="rlvr-async-reward", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _takes(fn: Callable[..., Any], keyword: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``keyword``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass what TRL passes
        return True
    return any(p.kind is p.VAR_KEYWORD or (p.name == keyword and p.kind is not p.POSITIONAL_ONLY) for p in params)


class FromRewardFunc:
    """A TRL-style reward function as an rlvr Reward. Build it with :func:`from_reward_func`."""

    def __init__(
        self,
        fn: Callable[..., Sequence[float | None]],
        name: str | None = None,
        reference_column: str | None = "answer",
        conversational: bool | None = None,
        tokenizer: Any = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"from_reward_func needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.reference_column = reference_column
        self.conversational = conversational
        self.tokenizer = tokenizer
        self.trainer_state = TrainerStateView()
        # the keywords TRL adds that the function takes (TRL's own functions take **kwargs; a
        # plain function written for rlvr without them keeps working): read once, not per call
        self._extras = tuple(k for k in ("trainer_state", "log_extra", "log_metric") if _takes(fn, k))

    def _call(self, samples: Sequence[Sample]) -> tuple[list[Any], list[dict[str, Any]]]:
        """Call the function as TRL's ``_calculate_rewards`` does; the values and, per row,
        what the function logged through ``log_metric`` / ``log_extra``."""
        chat = self.conversational if self.conversational is not None else isinstance(samples[0].prompt, list)
        prompts = [s.prompt for s in samples]
        completions: list[Any] = [[{"role": "assistant", "content": s.completion}] if chat else s.completion for s in samples]
        columns: dict[str, Any] = {}
        for key in dict.fromkeys(k for s in samples for k in s.info):
            if key not in TRL_EXTRA_KWARGS and key not in ("prompts", "completions"):
                columns[key] = [s.info.get(key) for s in samples]
        if self.reference_column is not None:
            columns[self.reference_column] = [s.reference for s in samples]
        completion_ids = None
        if self.tokenizer is not None:
            completion_ids = [self.tokenizer(s.completion, add_special_tokens=False)["input_ids"] for s in samples]
        n = len(samples)
        logged: list[dict[str, Any]] = [{} for _ in range(n)]

        def log_metric(key: str, value: float) -> None:  # a batch scalar: every row's outcome carries it
            for row in logged:
                row[str(key)] = value

        def log_extra(column: str, values: Sequence[Any]) -> None:  # one value per row
            if isinstance(values, (list, tuple)) and len(values) == n:
                for row, value in zip(logged, values):
                    row[str(column)] = value

        extras = {"trainer_state": self.trainer_state, "log_extra": log_extra, "log_metric": log_metric}
        columns.update({k: extras[k] for k in self._extras})
        values = self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        if inspect.isawaitable(values):  # TRL awaits an async reward function; so does rlvr
            values = _run_awaitable(values)
        if not isinstance(values, (list, tuple)) and hasattr(values, "tolist"):
            values = values.tolist()
        if not isinstance(values, (list, tuple)) or len(values) != n:
            length = len(values) if isinstance(values, Sized) else "no length"
            raise TypeError(
                f"{self.name} returned {type(values).__name__} ({length}) for {n} completions; "
                "a TRL reward function returns a list with one float or None per completion"
            )
        return list(values), logged

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Call the function on the batch (one row at a time if the batch raises); a row
        whose call fails is an ERROR outcome with the reason, never an exception."""
        samples = list(samples)
        if not samples:
            return []
        if len(samples) == 1:
            return self._score_one(samples[0])
        start = time.perf_counter()
        try:
            values, logged = self._call(samples)
        except Exception:  # find the row that fails: the others keep their scores
            return [o for s in samples for o in self._score_one(s)]
        each = (time.perf_counter() - start) / len(samples)
        return [self._outcome(v, each, extra) for v, extra in zip(values, logged)]

    def _score_one(self, sample: Sample) -> list[Outcome]:
        start = time.perf_counter()
        try:
            [value], [extra] = self._call([sample])
        except Exception as exc:  # the function's own failure is an ERROR outcome, never a 0
            return [Outcome.error(f"{type(exc).__name__}: {exc}", elapsed_s=time.perf_counter() - start)]
        return [self._outcome(value, time.perf_counter() - start, extra)]

    def _outcome(self, value: Any, elapsed: float, logged: Mapping[str, Any]) -> Outcome:
        try:
            return self._judge(value, elapsed, dict(logged))
        except (TypeError, ValueError, OverflowError) as exc:  # an array of several values, an int past float
            return Outcome.error(f"{self.name} returned {type(value).__name__} {value!r:.80}: {exc}", elapsed_s=elapsed)

    def _judge(self, value: Any, elapsed: float, metrics: dict[str, Any]) -> Outcome:
        if value is None:
            return Outcome.abstain(f"{self.name} returned None", metrics=metrics, elapsed_s=elapsed)
        if hasattr(value, "item") and not isinstance(value, (int, float)):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return Outcome.error(f"{self.name} returned {type(value).__name__} {value!r:.80}, not a number", metrics=metrics, elapsed_s=elapsed)
        value = float(value)
        if not math.isfinite(value):
            return Outcome.error(f"{self.name} returned non-finite {value}", metrics=metrics, elapsed_s=elapsed)
        return Outcome.ok(value, metrics=metrics, elapsed_s=elapsed)

    def __repr__(self) -> str:
        return f"from_reward_func({self.name!r})"


def from_reward_func(
    fn: Callable[..., Sequence[float | None]],
    name: str | None = None,
    reference_column: str | None = "answer",
    conversational: bool | None = None,
    tokenizer: Any = None,
) -> FromRewardFunc:
    """A TRL-style reward function as an rlvr Reward.

    ``fn(prompts=[...], completions=[...], completion_ids=..., **columns)`` is called with
    a batch: each ``Sample.reference`` as the column ``reference_column`` (``"answer"``)
    and each key of ``Sample.info`` as a column. Completions are chat messages
    (``[{"role": "assistant", "content": ...}]``) when the prompts are (or when
    ``conversational=True``). ``completion_ids`` is ``None`` unless a ``tokenizer`` is given.

    ``trainer_state`` (a :class:`TrainerStateView`, settable as ``reward.trainer_state``),
    ``log_extra`` and ``log_metric`` are passed as TRL passes them; what the function logs
    lands in the outcomes' ``metrics``. An async function is awaited.

    Each value becomes an Outcome: a number is OK, ``None`` is ABSTAIN, a non-number or NaN
    is ERROR. When the batch call raises (or returns the wrong number of values), each row
    is called alone and only the rows that fail become ERROR; ``score`` never raises.
    Wrap the result in :func:`rlvr.isolated` for deadlines::

        reward = isolated(from_reward_func(my_trl_reward), timeout_s=5)
    """
    return FromRewardFunc(fn, name=name, reference_column=reference_column, conversational=conversational, tokenizer=tokenizer)
