"""The reward interface: ``Sample``, ``Outcome``, ``Status``, the ``Reward`` protocol.

Every reward in rlvr -- a sympy math check, a sandboxed code test, a learned reward model,
a lookup in a preference dataset -- speaks this one interface::

    outcomes = reward.score([Sample(prompt, completion, reference), ...])

Rules every reward keeps:

- A failed check is never a wrong answer. A timeout is ``Status.TIMEOUT`` and a crash is
  ``Status.ERROR``; only ``Status.OK`` carries a score. Trainers leave the others out of
  advantages and log them.
- Scoring never hangs and never takes the caller down. :func:`isolated` runs any reward in
  worker processes that are killed at a wall-clock deadline (no ``signal.alarm``, which only
  works in the main thread).
- One ``score`` call takes a batch; a reward parallelises inside it.

This module also holds the small combinators users reach for first: :class:`FunctionReward`
(a reward in three lines) and :class:`WeightedSum` (several rewards as one).
"""

from __future__ import annotations

import math
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Sample",
    "Status",
    "Outcome",
    "Reward",
    "FunctionReward",
    "WeightedSum",
    "IsolatedReward",
    "isolated",
    "check_outcomes",
    "score_or_error",
]


@dataclass(frozen=True)
class Sample:
    """One completion to score.

    Attributes:
        prompt: Plain text, or chat messages (``[{"role": ..., "content": ...}, ...]``).
        completion: What the model wrote.
        reference: The gold answer, test cases, ... (its form depends on the environment).
        info: Anything else an environment wants a reward to see (task id, difficulty, ...).
    """

    prompt: str | list[dict]
    completion: str
    reference: Any = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.completion, str):
            raise TypeError(
                f"Sample.completion must be a str, got {type(self.completion).__name__}: "
                f"{self.completion!r:.80}. Decode token ids to text before scoring."
            )
        if not isinstance(self.prompt, (str, list)):
            raise TypeError(
                f"Sample.prompt must be a str or a list of chat messages, "
                f"got {type(self.prompt).__name__}."
            )


class Status(str, Enum):
    """How a check ended. Only ``OK`` carries a score."""

    OK = "ok"
    ABSTAIN = "abstain"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True)
class Outcome:
    """The result of scoring one sample.

    Attributes:
        score: The reward; ``None`` unless ``status`` is ``Status.OK``.
        status: ``OK``, ``ABSTAIN`` (the reward has no opinion), ``TIMEOUT`` or ``ERROR``.
        reason: Why, for a person: ``"no \\boxed{} answer"``, ``"3/5 tests passed"``.
        metrics: Sub-scores, logged by trainers and the evaluation harness.
        elapsed_s: Wall-clock seconds spent on this sample.
    """

    score: float | None
    status: Status
    reason: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @classmethod
    def ok(cls, score: float, reason: str = "", **kwargs: Any) -> Outcome:
        """An ``OK`` outcome with ``score``."""
        return cls(float(score), Status.OK, reason, **kwargs)

    @classmethod
    def abstain(cls, reason: str = "", **kwargs: Any) -> Outcome:
        """The reward has no opinion on this sample."""
        return cls(None, Status.ABSTAIN, reason, **kwargs)

    @classmethod
    def error(cls, reason: str, **kwargs: Any) -> Outcome:
        """The check itself failed (never the same as a wrong answer)."""
        return cls(None, Status.ERROR, reason, **kwargs)

    @classmethod
    def timeout(cls, reason: str, **kwargs: Any) -> Outcome:
        """The check ran past its deadline."""
        return cls(None, Status.TIMEOUT, reason, **kwargs)


@runtime_checkable
class Reward(Protocol):
    """Anything with a ``name`` and a batched ``score``."""

    name: str

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Return one :class:`Outcome` per sample, in order."""
        ...


def check_outcomes(name: str, samples: Sequence[Sample], outcomes: Any) -> list[Outcome]:
    """Validate what a reward returned; replace each bad outcome by an ERROR with the reason.

    A reward that returns the wrong number of outcomes is a programming error and raises
    ``TypeError`` (the batch cannot be matched up). A score that is NaN, infinite or not a
    number, or a score on a non-OK outcome, becomes ``Status.ERROR`` for that one sample.
    """
    if not isinstance(outcomes, (list, tuple)):
        raise TypeError(f"reward {name!r}.score() must return a list of Outcome, got {type(outcomes).__name__}")
    if len(outcomes) != len(samples):
        raise TypeError(
            f"reward {name!r}.score() returned {len(outcomes)} outcomes for {len(samples)} samples; "
            "it must return exactly one Outcome per sample, in order"
        )
    return [_check_one(name, o) for o in outcomes]


def score_or_error(reward: Reward, samples: Sequence[Sample]) -> list[Outcome]:
    """``reward.score(samples)``, checked by :func:`check_outcomes`; a reward that raises makes
    every sample of the batch an ``ERROR`` outcome with the reason (never a 0), so the caller
    (a trainer's step, an evaluation) goes on."""
    try:
        raw = reward.score(samples)
    except Exception as exc:  # noqa: BLE001 -- a crashing reward is reported per sample, not fatal
        raw = [Outcome.error(f"reward {reward.name!r} raised {type(exc).__name__}: {exc}") for _ in samples]
    return check_outcomes(reward.name, samples, raw)


def _check_one(name: str, outcome: Any) -> Outcome:
    if not isinstance(outcome, Outcome):
        return Outcome.error(f"reward {name!r} returned {type(outcome).__name__}, not an Outcome: {outcome!r:.80}")
    try:
        status = Status(outcome.status)
    except ValueError:
        return Outcome.error(f"reward {name!r} returned an unknown status {outcome.status!r}")
    if status is Status.OK:
        if isinstance(outcome.score, bool) or not isinstance(outcome.score, (int, float)):
            return Outcome.error(
                f"reward {name!r} returned a non-numeric score {outcome.score!r:.80}",
                elapsed_s=outcome.elapsed_s,
            )
        if not math.isfinite(outcome.score):
            return Outcome.error(f"reward {name!r} returned a non-finite score {outcome.score}", elapsed_s=outcome.elapsed_s)
    elif outcome.score is not None:
        return Outcome.error(
            f"reward {name!r} returned score {outcome.score!r} with status {status.value}; only OK carries a score",
            elapsed_s=outcome.elapsed_s,
        )
    return outcome


class FunctionReward:
    """A plain function as a Reward.

    ``fn(sample)`` returns a number (the score) or ``None`` (abstain). An exception becomes
    an ERROR outcome with the exception in the reason; NaN or a non-number is an ERROR too,
    never a silent 0::

        def exact(sample):
            return float(sample.completion.strip() == sample.reference)

        reward = FunctionReward(exact, name="exact")
    """

    def __init__(self, fn: Callable[[Sample], float | None], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"FunctionReward needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Call the function on each sample."""
        outcomes = []
        for sample in samples:
            start = time.perf_counter()
            try:
                value = self.fn(sample)
            except Exception as exc:  # the reward's own failure is an ERROR outcome, never a 0
                outcomes.append(Outcome.error(f"{type(exc).__name__}: {exc}", elapsed_s=time.perf_counter() - start))
                continue
            elapsed = time.perf_counter() - start
            if value is None:
                outcomes.append(Outcome.abstain(f"{self.name} abstained", elapsed_s=elapsed))
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                outcomes.append(Outcome.error(f"{self.name} returned {type(value).__name__} {value!r:.80}, not a number", elapsed_s=elapsed))
            elif not math.isfinite(value):
                outcomes.append(Outcome.error(f"{self.name} returned non-finite {value}", elapsed_s=elapsed))
            else:
                outcomes.append(Outcome(float(value), Status.OK, elapsed_s=elapsed))
        return outcomes

    def __repr__(self) -> str:
        return f"FunctionReward({self.name!r})"


class WeightedSum:
    """Several rewards combined into one: ``sum(weight * score)``.

    Each part's score goes into ``metrics`` under the part's name (its status too, as
    ``"<name>/ok"`` 1 or 0). If any part TIMED OUT or ERRORED, the whole outcome is that
    status (TIMEOUT wins over ERROR only when no part errored), never a silent 0. Parts that
    abstain are left out; ``abstain="skip"`` (default) sums the others,
    ``abstain="propagate"`` makes the whole outcome ABSTAIN. If every part abstains, the
    whole abstains.
    """

    def __init__(self, parts: Sequence[tuple[Reward, float]], name: str = "weighted_sum", abstain: str = "skip") -> None:
        if not parts:
            raise ValueError("WeightedSum needs at least one (reward, weight) pair")
        if abstain not in ("skip", "propagate"):
            raise ValueError(f"abstain must be 'skip' or 'propagate', got {abstain!r}")
        names = []
        for i, part in enumerate(parts):
            if not (isinstance(part, tuple) and len(part) == 2):
                raise TypeError(f"WeightedSum part {i} must be a (reward, weight) tuple, got {part!r:.80}")
            reward, weight = part
            if not hasattr(reward, "score") or not hasattr(reward, "name"):
                raise TypeError(f"WeightedSum part {i}: {reward!r:.80} is not a Reward (needs .name and .score)")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise TypeError(f"WeightedSum part {i} ({reward.name}): weight must be a finite number, got {weight!r}")
            names.append(reward.name)
        if len(set(names)) != len(names):
            raise ValueError(f"WeightedSum parts need distinct names (their metrics are keyed by name), got {names}")
        self.parts = [(r, float(w)) for r, w in parts]
        self.name = name
        self.abstain = abstain

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Score with every part, then combine per sample."""
        per_part = [check_outcomes(r.name, samples, r.score(samples)) for r, _ in self.parts]
        combined = []
        for i in range(len(samples)):
            outs = [(r, w, p[i]) for (r, w), p in zip(self.parts, per_part)]
            metrics: dict[str, float] = {}
            total, elapsed, failed, abstained = 0.0, 0.0, [], []
            for r, w, o in outs:
                elapsed += o.elapsed_s
                metrics[f"{r.name}/ok"] = float(o.status is Status.OK)
                for k, v in o.metrics.items():
                    metrics[f"{r.name}/{k}"] = v
                if o.status is Status.OK:
                    metrics[r.name] = o.score
                    total += w * o.score
                elif o.status is Status.ABSTAIN:
                    abstained.append(r.name)
                else:
                    failed.append((r.name, o))
            if failed:
                status = Status.ERROR if any(o.status is Status.ERROR for _, o in failed) else Status.TIMEOUT
                reason = "; ".join(f"{n}: {o.status.value}: {o.reason}" for n, o in failed)
                combined.append(Outcome(None, status, reason, metrics, elapsed))
            elif len(abstained) == len(outs) or (abstained and self.abstain == "propagate"):
                combined.append(Outcome(None, Status.ABSTAIN, f"abstained: {', '.join(abstained)}", metrics, elapsed))
            else:
                reason = ", ".join(f"{r.name}={o.score:g}" for r, _, o in outs if o.status is Status.OK)
                combined.append(Outcome(total, Status.OK, reason, metrics, elapsed))
        return combined


# ---------------------------------------------------------------------------------------
# Isolation: scoring in worker processes with a hard wall-clock kill.
# ---------------------------------------------------------------------------------------


def _dumps(obj: Any) -> bytes:
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - cloudpickle is a dependency
        return pickle.dumps(obj)
    return cloudpickle.dumps(obj)


class _Worker:
    """One worker process and the parent's end of its channel."""

    def __init__(self, payload: bytes, memory_mb: int | None, env: Mapping[str, str] | None) -> None:
        parent_sock, child_sock = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlvr._isolation_worker", str(child_sock.fileno()), str(memory_mb or 0)],
            pass_fds=(child_sock.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a kill takes what it spawned too
            env=dict(env) if env is not None else None,
        )
        child_sock.close()
        self.conn = Connection(parent_sock.detach())
        # sys.path goes first, so the reward's own modules import in the worker.
        self.conn.send_bytes(pickle.dumps(list(sys.path)))
        self.conn.send_bytes(payload)
        self.queue: deque[int] = deque()  # indices sent, in the order the worker runs them
        self.started_at = 0.0  # when the head of the queue began running
        self.ready = False

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.conn.close()

    def death_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "worker stopped answering"
        if code < 0:
            try:
                signame = signal.Signals(-code).name
            except ValueError:
                signame = f"signal {-code}"
            return f"worker process killed by {signame}"
        return f"worker process exited with code {code}"


_FORKED: weakref.WeakSet = weakref.WeakSet()


def _forget_in_child() -> None:
    for obj in list(_FORKED):
        obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def forget_after_fork(obj: Any) -> None:
    """Call ``obj._after_fork()`` in a child made by ``fork`` (before any of its threads runs),
    so that worker processes and locks inherited from the parent are forgotten, never reused
    or killed. For objects that own worker processes."""
    _FORKED.add(obj)


class IsolatedReward:
    """A reward scored in worker processes that are killed at a wall-clock deadline.

    See :func:`isolated`.
    """

    def __init__(
        self,
        reward: Reward,
        timeout_s: float = 10.0,
        max_workers: int | None = None,
        memory_mb: int | None = None,
        chunk_size: int = 8,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.reward = reward
        self.name = reward.name
        self.timeout_s = float(timeout_s)
        self.max_workers = max_workers or max(1, min(8, os.cpu_count() or 1))
        self.memory_mb = memory_mb
        self.chunk_size = max(1, chunk_size)
        self.env = env
        try:
            self._payload = _dumps(reward)
        except Exception as exc:
            raise TypeError(
                f"isolated(): reward {reward.name!r} cannot be pickled to send to a worker process "
                f"({type(exc).__name__}: {exc}). Define it at module level, or install cloudpickle."
            ) from exc
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        forget_after_fork(self)

    def _spawn(self) -> _Worker:
        return _Worker(self._payload, self.memory_mb, self.env)

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Score the batch across the workers; each sample gets its own deadline."""
        if self._closed:
            raise RuntimeError(f"isolated reward {self.name!r} was closed")
        samples = list(samples)
        if not samples:
            return []
        with self._lock:
            return self._score_locked(samples)

    def _score_locked(self, samples: list[Sample]) -> list[Outcome]:
        n = len(samples)
        results: list[Outcome | None] = [None] * n
        todo = deque(range(n))
        want = min(self.max_workers, n)
        while len(self._workers) < want:
            self._workers.append(self._spawn())
        workers = self._workers
        # Worker start-up (imports) is not charged to any sample: a sample's clock starts
        # when the worker says it is ready or has finished the previous sample.
        chunk = max(1, min(self.chunk_size, math.ceil(n / len(workers))))

        def feed(w: _Worker) -> None:
            batch = []
            while todo and len(batch) < chunk:
                batch.append(todo.popleft())
            if not batch:
                return
            try:
                w.conn.send_bytes(pickle.dumps([(i, samples[i]) for i in batch]))
            except (BrokenPipeError, ConnectionResetError, OSError):
                todo.extendleft(reversed(batch))
                raise
            if not w.queue and w.ready:
                w.started_at = time.monotonic()
            w.queue.extend(batch)

        def replace(w: _Worker) -> None:
            w.kill()
            workers[workers.index(w)] = self._spawn()

        def fail_head(w: _Worker, outcome: Outcome) -> None:
            i = w.queue.popleft()
            results[i] = outcome
            todo.extendleft(reversed(w.queue))  # the rest of its chunk goes to another worker
            w.queue.clear()
            replace(w)

        while any(r is None for r in results):
            for w in list(workers):
                if w.ready and not w.queue and todo:
                    try:
                        feed(w)
                    except OSError:
                        replace(w)
            now = time.monotonic()
            busy = [w for w in workers if w.queue and w.ready]
            deadline = min((w.started_at + self.timeout_s for w in busy), default=now + 60.0)
            ready_conns = wait([w.conn for w in workers], timeout=max(0.0, deadline - now))
            now = time.monotonic()
            for w in list(workers):
                if w.conn not in ready_conns:
                    continue
                try:
                    msg = pickle.loads(w.conn.recv_bytes())
                except (EOFError, OSError):
                    reason = w.death_reason()
                    if w.queue:
                        fail_head(w, Outcome.error(f"{reason} while scoring", elapsed_s=now - w.started_at))
                    elif not w.ready:
                        # A worker that cannot even start (bad payload, broken import) fails
                        # the batch loudly rather than respawning forever.
                        replace(w)
                        raise RuntimeError(f"isolated reward {self.name!r}: {reason} during start-up") from None
                    else:
                        replace(w)
                    continue
                kind = msg[0]
                if kind == "ready":
                    w.ready = True
                    w.started_at = now
                elif kind == "startup_error":
                    replace(w)
                    raise RuntimeError(f"isolated reward {self.name!r}: worker failed to start: {msg[1]}")
                elif kind == "result":
                    _, i, outcome, tainted = msg
                    if w.queue and w.queue[0] == i:
                        w.queue.popleft()
                        results[i] = outcome
                        w.started_at = now
                    if tainted:
                        # The worker ran out of memory: its interpreter may be in a bad state,
                        # so its queued samples go to a fresh one.
                        todo.extendleft(reversed(w.queue))
                        w.queue.clear()
                        replace(w)
            now = time.monotonic()
            for w in list(workers):
                if w.queue and w.ready and now - w.started_at >= self.timeout_s:
                    fail_head(
                        w,
                        Outcome.timeout(f"{self.name} ran past its {self.timeout_s:g} s deadline; worker killed", elapsed_s=now - w.started_at),
                    )
        return check_outcomes(self.name, samples, results)

    def close(self) -> None:
        """Kill every worker. The reward cannot score afterwards."""
        self._closed = True
        for w in self._workers:
            w.kill()
        self._workers = []

    # -- pickling: the workers and the lock stay behind; a copy starts its own on first use
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_workers"] = []
        state["_lock"] = None
        state["_closed"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        forget_after_fork(self)

    def _after_fork(self) -> None:
        """In a forked child (a host framework's process pool): the workers and the lock it
        inherited are its parent's; it forgets them (never kills them) and starts its own."""
        self._workers, self._lock = [], threading.Lock()

    def __enter__(self) -> IsolatedReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            for w in self._workers:
                w.kill()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"isolated({self.reward!r}, timeout_s={self.timeout_s}, max_workers={self.max_workers}, memory_mb={self.memory_mb})"


def isolated(
    reward: Reward,
    timeout_s: float = 10.0,
    max_workers: int | None = None,
    memory_mb: int | None = None,
    chunk_size: int = 8,
    env: Mapping[str, str] | None = None,
) -> IsolatedReward:
    """Run ``reward`` in worker processes, each sample under a wall-clock deadline.

    A sample still running after ``timeout_s`` seconds gets ``Status.TIMEOUT``: its worker
    (and everything the worker started) is killed with SIGKILL and replaced, and the other
    samples of the batch go on being scored. A worker that crashes (segfault, ``os._exit``,
    MemoryError) gives ``Status.ERROR`` with the reason. ``memory_mb`` caps each worker's
    address space above what it holds once the reward is loaded, so an allocation without
    bound raises MemoryError (an ERROR outcome) in the worker instead of swapping the host.

    The reward is pickled (with cloudpickle: lambdas and functions defined in ``__main__``
    work) and sent to fresh interpreters started with ``python -m rlvr._isolation_worker``;
    nothing of the caller's process is forked, so threads and CUDA in the caller are safe.
    Workers stay warm between ``score`` calls; ``close()`` ends them.
    """
    return IsolatedReward(reward, timeout_s=timeout_s, max_workers=max_workers, memory_mb=memory_mb, chunk_size=chunk_size, env=env)


def _limit_address_space(extra_mb: int) -> None:
    """Cap this process's address space at what it maps now plus ``extra_mb``."""
    with open("/proc/self/statm") as f:
        vm_pages = int(f.read().split()[0])
    limit = vm_pages * resource.getpagesize() + extra_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _worker_main(fd: int, memory_mb: int) -> None:
    conn = Connection(fd)
    try:
        for p in pickle.loads(conn.recv_bytes()):
            if p not in sys.path:
                sys.path.append(p)
        reward = pickle.loads(conn.recv_bytes())
    except BaseException:
        conn.send_bytes(pickle.dumps(("startup_error", traceback.format_exc(limit=5))))
        return
    name = getattr(reward, "name", type(reward).__name__)
    if memory_mb:
        _limit_address_space(memory_mb)
    conn.send_bytes(pickle.dumps(("ready",)))
    while True:
        try:
            batch = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        for i, sample in batch:
            start = time.perf_counter()
            try:
                out = reward.score([sample])
                out = check_outcomes(name, [sample], out)[0]
            except MemoryError:
                out = Outcome.error("MemoryError: the reward ran out of memory in its worker", elapsed_s=time.perf_counter() - start)
            except BaseException as exc:  # the reward's crash is this sample's ERROR, not the worker's death
                out = Outcome.error(f"{type(exc).__name__}: {exc}", elapsed_s=time.perf_counter() - start)
            if not out.elapsed_s:
                out = Outcome(out.score, out.status, out.reason, out.metrics, time.perf_counter() - start)
            # after a MemoryError (ours above, or one a reward caught and reported the usual way,
            # "MemoryError: ...") the parent replaces this worker
            tainted = out.status is Status.ERROR and out.reason.startswith("MemoryError")
            try:
                data = pickle.dumps(("result", i, out, tainted))
            except Exception as exc:
                data = pickle.dumps(("result", i, Outcome.error(f"outcome could not be pickled: {exc}"), tainted))
            conn.send_bytes(data)
