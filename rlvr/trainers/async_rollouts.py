"""Asynchronous rollouts (``max_staleness: K >= 1``): the next batches are generated while this one trains.

One generation batch trains the optimizer steps ``t .. t + s - 1`` (``s`` = ``num_iterations``,
1 for most methods). With ``max_staleness: K`` the batch that trains from step ``t`` is generated
from the weights of step ``t - K * s`` exactly -- never newer, never older -- so the run does
not depend on which thread was faster: it is as deterministic as the synchronous loop, and
its staleness is K batches on every step (less on the first K). :class:`AsyncRollouts` runs the
generation (and the scoring) in a background thread:

- the trainer :meth:`~AsyncRollouts.publish` es its weights at the end of each batch (a copy, so
  training can go on changing its own);
- the thread, before generating a batch, waits until the weights it needs are published and
  hands them to the generator (a colocated engine reloads them; a server gets them pushed;
  ``hf`` generation uses a copy of the model of its own, since the trained one changes under it);
- the trainer :meth:`~AsyncRollouts.take` s each step's batch, waiting for it if it is not ready.

The thread makes no collective call (the trainers' metric sums over processes run in the
main thread), so it never interleaves with the gradient all-reduce.

Checkpoints: :meth:`~AsyncRollouts.in_flight` waits until the batches that come next (those
already generated from weights older than the checkpoint's) are done and returns them with the
data order after them; they go into the checkpoint, and a resumed run trains on exactly them,
then generates the following ones from the weights it resumed with -- the same batches as the
run that was not stopped. If the thread failed (a generation server that stayed away), the
batches it did not finish are generated again on resume, from the resumed weights.

On a CPU with two cores both sides share the cores, so expect no gain there; the overlap pays
where generation has devices of its own (a generation server, or a GPU).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rlvr.generation import Generator, HFGenerator
from rlvr.trainers import rollouts
from rlvr.trainers.modeling import Policy, policy_state_dict

__all__ = ["AsyncRollouts", "Ready", "staleness_metrics"]


@dataclass
class Ready:
    """One generated, scored batch, waiting for the step that trains it.

    Attributes:
        step: The trainer's step when it starts training this batch.
        collected: What :func:`rlvr.trainers.online.sample_groups` returned.
        timing: Its generation and reward timing (:func:`~rlvr.trainers.rollouts.new_timing` counters).
        order: This process's data order right after the batch took its tasks.
        weight_version: The step whose weights generated it.
        push_s: Seconds spent handing those weights to the generator.
    """

    step: int
    collected: Any
    timing: dict[str, float]
    order: dict[str, int]
    weight_version: int
    push_s: float = 0.0


def staleness_metrics(batch: Any, step: int) -> dict[str, float]:
    """``staleness_mean`` / ``staleness_max``: how many optimizer steps old the weights that sampled each
    rollout of ``batch`` are, at ``step`` (exact: every completion carries its ``weight_version``)."""
    ages = [step - r.generation.weight_version for r in batch]
    if not ages:
        return {}
    return {"staleness_mean": float(sum(ages)) / len(ages), "staleness_max": float(max(ages))}


def _detached_hf(generator: HFGenerator, policy: Policy) -> HFGenerator:
    """An ``hf`` generator on a copy of the policy's plain model (the trained one changes while it generates)."""
    from transformers import AutoModelForCausalLM

    base = policy.base()
    model = AutoModelForCausalLM.from_config(copy.deepcopy(base.config)).to(device=policy.device, dtype=next(base.parameters()).dtype)
    model.load_state_dict(policy_state_dict(policy), strict=True)
    model.eval()
    gen = HFGenerator(model, generator.tokenizer, batch_size=generator.batch_size)
    gen.weight_version = generator.weight_version
    return gen


class AsyncRollouts:
    """The background generation of a run with ``max_staleness >= 1`` (see the module docstring).

    Args:
        trainer: The online trainer (its ``config``, ``data``, ``policy``, ``processes``, ``step``).
        generator: The trainer's generator.
        sample: ``sample(generator, step, timing) -> collected``: one batch's rollouts, no collectives.
        restored: Batches a checkpoint held (:meth:`in_flight`); trained first, in order.
    """

    def __init__(self, trainer: Any, generator: Generator, sample: Any, restored: list[Ready] | None = None) -> None:
        cfg = trainer.config
        self.k = cfg.max_staleness
        self.per_batch = max(int(getattr(cfg, "num_iterations", 1)), 1)
        self.max_steps = cfg.max_steps
        self.data = trainer.data
        self.policy = trainer.policy
        self.sample = sample
        self.base = trainer.step  # the oldest weights this run has: the step it started (or resumed) at
        if isinstance(generator, HFGenerator) and generator.model is trainer.policy.model:
            generator = _detached_hf(generator, trainer.policy)
        self.generator = generator
        self.generator.weight_version = trainer.step
        self._cond = threading.Condition()
        self._published: dict[int, Mapping[str, torch.Tensor] | None] = {trainer.step: None}  # None: the generator holds it
        self._ready: dict[int, Ready] = {r.step: r for r in restored or []}
        self._order_at: dict[int, dict[str, int]] = {}  # the data order before each batch took its tasks
        self._error: BaseException | None = None
        self._stop = False
        self._finished = False
        self._next = max(self._ready, default=trainer.step - self.per_batch) + self.per_batch
        self._thread = threading.Thread(target=self._run, name="rlvr-async-rollouts", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the background thread
    def _needed(self, step: int) -> int:
        return max(self.base, step - self.k * self.per_batch)

    def _run(self) -> None:
        try:
            while True:
                step = self._next
                if step >= self.max_steps:
                    return
                need = self._needed(step)
                with self._cond:
                    self._cond.wait_for(lambda need=need: self._stop or need in self._published)
                    if self._stop:
                        return
                    weights = self._published[need]
                    for v in [v for v in self._published if v < need]:
                        del self._published[v]  # no later batch needs older weights
                push_s = 0.0
                if self.generator.weight_version != need:
                    start = time.perf_counter()
                    self.generator.load_weights(weights, version=need)
                    push_s = time.perf_counter() - start
                timing = rollouts.new_timing()
                with self._cond:
                    self._order_at[step] = dict(self.data.order.state())
                collected = self.sample(self.generator, step, timing)
                ready = Ready(step, collected, timing, dict(self.data.order.state()), need, push_s)
                with self._cond:
                    self._ready[step] = ready
                    self._next = step + self.per_batch
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the trainer's thread at its next take()
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    # ------------------------------------------------------------------ the trainer's side
    def publish(self, step: int) -> float:
        """The trainer's weights after ``step`` (a copy), for the batches that need them; returns the seconds it took."""
        if (step - self.base) % self.per_batch or not any(self._needed(s) == step for s in self._pending_steps()):
            return 0.0
        start = time.perf_counter()
        state = {k: v.detach().clone() for k, v in policy_state_dict(self.policy).items()}
        with self._cond:
            self._published[step] = state
            self._cond.notify_all()
        return time.perf_counter() - start

    def _pending_steps(self) -> range:
        return range(self._next, self.max_steps, self.per_batch)

    def take(self, step: int) -> Ready:
        """The batch that trains from ``step``, once it is ready (a failure of the thread is raised here)."""
        with self._cond:
            self._cond.wait_for(lambda: step in self._ready or self._error is not None or self._finished)
            for s in [s for s in self._order_at if s < step]:
                del self._order_at[s]  # a checkpoint from now on needs only the orders of batches not trained
            if step in self._ready:
                return self._ready.pop(step)
            if self._error is not None:
                raise self._error
            raise RuntimeError(f"no batch was generated for step {step} (the background generation stopped at {self._next})")

    def in_flight(self, step: int) -> tuple[list[Ready], dict[str, int]]:
        """For a checkpoint at ``step``: the batches generated from weights older than ``step``'s (waited
        for), and the data order to save with them (after the last of them, else before the next batch).

        A checkpoint inside a batch's ``num_iterations`` keeps none (a resumed run starts a new batch
        there, as the synchronous loop does) and the order before the batches made ahead.
        """
        offset = (step - self.base) % self.per_batch
        first = step if not offset else step + self.per_batch - offset
        wanted = list(range(step, min(step + self.k * self.per_batch, self.max_steps), self.per_batch)) if not offset else []
        with self._cond:
            self._cond.wait_for(lambda: all(s in self._ready for s in wanted) or self._error is not None or self._finished)
            done = []
            for s in wanted:  # a failed thread leaves a gap: keep what comes before it, regenerate the rest
                if s not in self._ready:
                    break
                done.append(self._ready[s])
            if done:
                return done, done[-1].order
            # nothing kept: the order before the first batch not trained (not started yet: the data's own now)
            return [], self._order_at.get(first, dict(self.data.order.state()))

    def close(self) -> None:
        """Stop the thread (a batch being generated is finished first) and wait for it."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
