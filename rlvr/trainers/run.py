"""What every training run needs around its algorithm: processes, seeds, the run directory,
metrics and loggers, checkpoints, data order, the curves plot.

Plain functions and small classes that a trainer calls explicitly (no base class):

- :class:`Processes` -- rank, world size and the collectives (sum, gather, broadcast,
  barrier) through ``accelerate``, for one process or N started by ``torchrun`` /
  ``accelerate launch``. With one process every collective is the identity.
- :func:`seed_everything`, :class:`DataOrder` (a seeded epoch-by-epoch order whose state is
  two integers, so a resumed run sees the same data).
- :func:`choose_run_dir` (one directory for all processes, chosen by process 0),
  :func:`open_run_dir` (created once, ``config.json`` written), :class:`RunLog`
  (``metrics.jsonl``, TensorBoard / W&B / MLflow, the progress bar), :func:`append_jsonl`
  (``transcripts.jsonl``), and :func:`run_training`, the outer loop (evaluate before, train,
  evaluate after, save).
- :func:`save_checkpoint` / :func:`find_checkpoint` / :func:`load_checkpoint`: trainable
  weights, optimizer, scheduler, every process's RNG state and its own data order (a sharded
  model's weights and optimizer state: each process's shards, ``torch.distributed.checkpoint``).
- :func:`plot_curves`: reward and accuracy over steps, with the held-out before/after.

Only process 0 writes the run's files; the others wait at barriers where it matters.
Reading a checkpoint's ``trainer_state.json`` (:func:`read_trainer_state`) imports no torch.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rlvr.trainers.config import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used, so reading a checkpoint's state needs none
    import torch

__all__ = [
    "TRANSCRIPTS",
    "DataOrder",
    "append_jsonl",
    "Processes",
    "RunLog",
    "checkpoint_due",
    "checkpoint_trainer",
    "load_checkpoint_object",
    "choose_run_dir",
    "find_checkpoint",
    "is_sharded",
    "log_step",
    "model_flops_utilization",
    "finish_processes",
    "load_checkpoint",
    "open_run_dir",
    "plot_curves",
    "read_json",
    "read_trainer_state",
    "resume_trainer",
    "run_training",
    "save_checkpoint",
    "seed_everything",
    "truncate_metrics",
    "write_json",
]

TRANSCRIPTS = "transcripts.jsonl"
"""A run directory's episode log (``log_transcripts`` episodes per step), truncated on resume like ``metrics.jsonl``."""


# =======================================================================================
# Processes
# =======================================================================================


class Processes:
    """This process's place in the run (one process, or one of N) and the collectives.

    Built on ``accelerate.Accelerator``, which reads the process group that ``torchrun`` or
    ``accelerate launch`` set up (``cpu=True`` where there is no GPU: that is how accelerate
    runs several CPU processes, over gloo).
    """

    def __init__(self, timeout_s: float | None = None) -> None:
        import torch
        from accelerate import Accelerator

        handlers = []
        if timeout_s:  # a collective that waits longer than this fails (naming the rank) instead of hanging forever
            from datetime import timedelta

            from accelerate.utils import InitProcessGroupKwargs

            handlers.append(InitProcessGroupKwargs(timeout=timedelta(seconds=float(timeout_s))))
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=handlers)
        self.rank: int = self.accelerator.process_index
        self.world_size: int = self.accelerator.num_processes
        self.is_main: bool = self.accelerator.is_main_process
        self.device: torch.device = self.accelerator.device

    def broadcast(self, obj: Any) -> Any:
        """Process 0's value of ``obj`` on every process."""
        if self.world_size == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        with phase("collective: broadcast"):
            return broadcast_object_list([obj], from_process=0)[0]

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's list, concatenated in process order (the list itself with one process)."""
        if self.world_size == 1:
            return items
        from accelerate.utils import gather_object

        with phase("collective: gather"):
            return gather_object(items)

    def sum(self, *values: float) -> list[float]:
        """Sums over the processes (the values themselves with one process)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        import torch

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        with phase("collective: sum"):
            return self.accelerator.reduce(t, reduction="sum").tolist()

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            with phase("collective: barrier"):
                self.accelerator.wait_for_everyone()

    def shard(self, n: int) -> list[int]:
        """This process's indices of ``range(n)``: ``rank, rank + world_size, ...``."""
        return list(range(self.rank, n, self.world_size))


def finish_processes() -> None:
    """End a run of several processes together: a barrier, then the process group is destroyed.

    A process that leaves while others still talk to it (process 0 writing the last files)
    can abort at exit on the process group's threads ("terminate called without an active
    exception"); entry points call this last. With one process it does nothing.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class DataOrder:
    """Seeded epoch-by-epoch permutation of ``num_items`` indices; its state is two integers."""

    def __init__(self, num_items: int, seed: int) -> None:
        if num_items == 0:
            raise ConfigError(
                "the training data is empty; nothing to train on. Check the environment's train split or the data file"
            )
        self.num_items, self.seed = num_items, seed
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items).tolist()

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices (a new permutation at each epoch boundary)."""
        out = []
        while len(out) < k:
            if self.cursor == self.num_items:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation()
            out.append(self._perm[self.cursor])
            self.cursor += 1
        return out

    def state(self) -> dict[str, int]:
        """What a checkpoint keeps."""
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load(self, state: dict[str, int]) -> None:
        """Continue from a :meth:`state` (a position past the end of a smaller share: the next epoch's start)."""
        self.epoch, self.cursor = state["epoch"], min(state["cursor"], self.num_items)
        self._perm = self._permutation()


# =======================================================================================
# Run directory and metrics
# =======================================================================================


def choose_run_dir(output_dir: str | os.PathLike | None, processes: Processes) -> Path:
    """``output_dir``, or ``runs/<timestamp>`` picked by process 0 and shared with every process.

    Nothing is created here: a run whose set-up fails leaves nothing behind.
    """
    if output_dir:
        return Path(output_dir)
    return Path("runs") / processes.broadcast(time.strftime("%Y%m%d-%H%M%S"))


def open_run_dir(
    path: Path, processes: Processes, config: dict[str, Any], trainer: str, resolved: dict[str, Any] | None = None
) -> None:
    """Create the run directory once (process 0) and write ``config.json``; every process waits for it.

    ``config.json`` holds the trainer's name, the config, and under ``resolved`` what the run
    chose where the config said ``auto`` (precision, generator): the record of what ran.
    """
    if processes.is_main:
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "config.json", {"trainer": trainer, **config, **({"resolved": resolved} if resolved else {})})
    processes.barrier()


def run_training(trainer: Any, resolved: dict[str, Any] | None = None, has_eval: bool = True) -> dict[str, Any]:
    """The outer loop every trainer runs: open the run directory, evaluate before, train to
    ``max_steps``, evaluate after, save ``final/``; returns the ``eval.json`` summary.

    ``trainer`` provides ``config`` (with ``max_steps``, ``eval_before``, ``eval_after``,
    ``save_final_model``, ``to_dict()``), ``name``, ``step``, ``output_dir``, ``processes``,
    ``log`` (a :class:`RunLog`), ``training_step()``, ``evaluate()`` and ``save_model(path)``.
    ``has_eval`` is False when there is nothing held out to evaluate on. A resumed run keeps
    the ``before`` evaluation it already has.
    """
    cfg = trainer.config
    processes = trainer.processes
    open_run_dir(trainer.output_dir, processes, cfg.to_dict(), trainer.name, resolved)
    summary: dict[str, Any] = read_json(trainer.output_dir / "eval.json")
    if has_eval and cfg.eval_before and "before" not in summary and trainer.step == 0:
        summary["before"] = trainer.evaluate()
        if processes.is_main:
            write_json(trainer.output_dir / "eval.json", summary)
    if processes.is_main and getattr(cfg, "save_steps", 0) and getattr(trainer, "model", None) is not None:
        warning = check_free_space(trainer.output_dir, checkpoint_bytes(trainer.model, getattr(trainer, "optimizer", None)))
        if warning:
            print(warning, file=sys.stderr, flush=True)
    trainer.log.open(trainer.step)
    global _WATCHDOG
    timeout = getattr(cfg, "stall_timeout_s", 0)
    _WATCHDOG = Watchdog(timeout, getattr(cfg, "stall_factor", 0), trainer.output_dir, processes.rank).start() if timeout else None
    try:
        with StopSignals() as signals:
            while trainer.step < cfg.max_steps:
                with phase("step"):
                    trainer.training_step()
                if signals.agreed(processes) and trainer.step < cfg.max_steps:
                    stop_at_boundary(trainer, signals.name)
    finally:
        if _WATCHDOG is not None:
            _WATCHDOG.stop()
        _WATCHDOG = None
        trainer.log.close()
    if has_eval and cfg.eval_after:
        summary["after"] = trainer.evaluate()
    summary["steps"] = trainer.step
    if processes.is_main:
        write_json(trainer.output_dir / "eval.json", summary)
    if cfg.save_final_model:
        trainer.save_model(trainer.output_dir / "final")
    return summary


EXIT_STALLED = 6
"""The exit code of a run the watchdog stopped (a phase past its limit)."""


class Watchdog:
    """Watches the phases a step goes through (the step, generation, reward, weight sync, each
    collective); one that runs past ``timeout_s``, or -- generation, reward and weight sync,
    whose length is steady -- past ``factor`` x its running median (after 5 of them, and at
    least ``min_s``), gets a stall report -- which phase, which
    process, how long, and every thread's Python stack (``faulthandler``) -- on stderr and in
    ``RUN_DIR/stall-RANK.txt``; then the process exits with :data:`EXIT_STALLED` instead of
    hanging forever. The run resumes from its last checkpoint (``--resume``).

    One per process, active while :func:`run_training` runs; code anywhere marks a phase with
    :func:`phase`.
    """

    def __init__(self, timeout_s: float, factor: float, run_dir: Path, rank: int, min_s: float = 60.0) -> None:
        import threading

        self.timeout_s = float(timeout_s)
        self.factor = float(factor)
        self.min_s = float(min_s)
        self.run_dir = run_dir
        self.rank = rank
        self._stacks: dict[int, list[tuple[str, float]]] = {}  # per thread: async rollouts enter phases in their own
        self._history: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rlvr-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    # Phases whose length is steady enough for the median rule. A step may hold a checkpoint
    # write, and a collective waits on what the other processes do (a checkpoint, an
    # evaluation): those get the absolute limit only.
    MEDIAN_PHASES = ("generation", "generation (episodes)", "reward", "weight sync")

    def limit(self, name: str) -> float:
        """The seconds phase ``name`` may take now."""
        history = self._history.get(name, [])
        if len(history) < 5 or self.factor <= 0 or name not in self.MEDIAN_PHASES:
            return self.timeout_s
        recent = sorted(history[-50:])
        return min(self.timeout_s, max(self.min_s, self.factor * recent[len(recent) // 2]))

    def enter(self, name: str) -> None:
        import threading

        with self._lock:
            self._stacks.setdefault(threading.get_ident(), []).append((name, time.monotonic()))

    def leave(self) -> None:
        import threading

        with self._lock:
            name, start = self._stacks[threading.get_ident()].pop()
            self._history.setdefault(name, []).append(time.monotonic() - start)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                now = time.monotonic()
                for stack in self._stacks.values():
                    limits = [(n, now - t, self.limit(n)) for n, t in stack]
                    late = [entry for entry in limits if entry[1] > entry[2]]
                    if late:
                        self._report(late[0], [(n, elapsed) for n, elapsed, _ in limits])

    def _report(self, late: tuple[str, float, float], open_phases: list[tuple[str, float]]) -> None:
        import faulthandler

        name, elapsed, limit = late
        stuck, stuck_for = open_phases[-1]  # the innermost phase open: where it waits
        where = " > ".join(f"{n} ({t:.0f} s)" for n, t in open_phases)
        head = (
            f"stall: process {self.rank} is stuck in phase {stuck!r} ({stuck_for:.0f} s); phase {name!r} ran past its limit "
            f"of {limit:.0f} s (stall_timeout_s {self.timeout_s:g}, or stall_factor {self.factor:g} x its median): {where}. "
            f"Stopping the run; resume it from its last checkpoint with: python -m rlvr.train --resume {self.run_dir}"
        )
        report = self.run_dir / f"stall-{self.rank}.txt"
        try:
            with open(report, "w") as f:
                f.write(head + "\n\nPython stacks of every thread:\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
        except OSError:
            report = None
        print(head + (f" Stacks: {report}" if report else ""), file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STALLED)


_WATCHDOG: Watchdog | None = None


class phase:  # noqa: N801 -- used as a context manager, like a function
    """``with phase("generation"): ...``: the active :class:`Watchdog` watches this phase (a no-op when none is)."""

    __slots__ = ("name", "watchdog")

    def __init__(self, name: str) -> None:
        self.name = name
        self.watchdog = _WATCHDOG

    def __enter__(self) -> None:
        if self.watchdog is not None:
            self.watchdog.enter(self.name)

    def __exit__(self, *exc: object) -> None:
        if self.watchdog is not None:
            self.watchdog.leave()


class Preempted(RuntimeError):
    """The run stopped at a step boundary on SIGTERM / SIGINT, with a checkpoint there."""

    def __init__(self, message: str, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class StopSignals:
    """SIGTERM and SIGINT (Slurm, Kubernetes, a spot instance, Ctrl-C) ask the run to stop at
    the end of the step in progress; a second one exits at once with the signal's default.

    Installed only where signal handlers can be (the main thread); the previous handlers come
    back on exit. :meth:`agreed` is every process's answer to "did any of us get one?", so
    all of them stop at the same step.
    """

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.name is not None:  # the second signal: stop now, as it would have without us
            previous = self._previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, previous)
            if callable(previous):  # Python's own SIGINT handler: KeyboardInterrupt
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signum)
            return
        self.name = signal.Signals(signum).name
        print(f"{self.name} received: stopping after this step, with a checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def agreed(self, processes: Processes) -> bool:
        """Whether any process got a stop signal (a collective with several processes)."""
        mine = float(self.name is not None)
        if processes.world_size == 1:
            return bool(mine)
        got = processes.sum(mine)[0] > 0
        if got and self.name is None:
            self.name = "a stop signal on another process"
        return got

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def stop_at_boundary(trainer: Any, why: str | None) -> None:
    """Write a checkpoint at this step boundary (unless this step's was just written) and raise
    :class:`Preempted` with the command that resumes."""
    checkpoint = trainer.output_dir / f"checkpoint-{trainer.step}"
    if not (checkpoint / "trainer_state.json").exists():
        trainer.save_checkpoint()
    raise Preempted(
        f"stopped by {why} after step {trainer.step}; checkpoint {checkpoint}. Resume with: python -m rlvr.train --resume {trainer.output_dir}",
        trainer.step,
        checkpoint,
    )


def log_step(trainer: Any, metrics: dict[str, Any]) -> None:
    """Write the step's metrics line, then a checkpoint when ``save_steps`` says so (every
    ``save_steps`` steps, and at ``max_steps``). ``trainer`` provides ``config``, ``step``, ``log``
    and ``save_checkpoint()``; with its ``policy`` and the step's ``train_tokens``, the line gets ``mfu``
    (:func:`model_flops_utilization`)."""
    world = getattr(getattr(trainer, "processes", None), "world_size", 1)
    mfu = model_flops_utilization(getattr(trainer, "policy", None), metrics, world)
    if mfu is not None:
        metrics["mfu"] = mfu
    note_bad_step(trainer, metrics)
    trainer.log.log(metrics, trainer.step)
    if checkpoint_due(trainer.config, trainer.step):
        trainer.save_checkpoint()


class BadStepsError(RuntimeError):
    """``max_bad_steps`` steps in a row had a NaN or inf loss or gradient norm."""


def clipped_step(
    params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float, loss: float | None = None
) -> float:
    """Clip ``params``' gradients (``max_grad_norm`` 0 = no clip) and step ``optimizer`` -- only
    when the norm (and the step's ``loss``, when given) is finite: a NaN or inf leaves the
    weights and the optimizer's state as they were (the gradients are dropped). Returns the
    norm (:func:`log_step` sees a NaN / inf loss or norm, marks the step skipped and counts)."""
    import torch

    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf")))
    if math.isfinite(norm) and (loss is None or math.isfinite(loss)):
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return norm


def note_bad_step(trainer: Any, metrics: dict[str, Any]) -> None:
    """Mark a step whose loss or gradient norm is NaN / inf (``skipped_step``: ``"nan"`` or
    ``"inf"``; :func:`clipped_step` did not apply it) and count the bad steps in a row; at the
    config's ``max_bad_steps`` raise :class:`BadStepsError` naming the likely causes."""
    values = [metrics.get(k) for k in ("loss", "grad_norm")]
    bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        trainer.bad_steps = 0
        return
    metrics["skipped_step"] = "nan" if any(math.isnan(v) for v in bad) else "inf"
    trainer.bad_steps = getattr(trainer, "bad_steps", 0) + 1
    limit = getattr(trainer.config, "max_bad_steps", 0)
    if limit and trainer.bad_steps >= limit:
        trainer.log.log(metrics, trainer.step)
        raise BadStepsError(
            f"{trainer.bad_steps} steps in a row (up to step {trainer.step}) had a {metrics['skipped_step']} loss or gradient "
            "norm and were skipped; the weights are those of the last good step and the last checkpoint is kept. Likely "
            "causes: a learning rate too high (lower --learning_rate), low precision overflowing (--bf16 false), or a "
            "reward or data row out of range. Fix it and resume from the last checkpoint with --resume"
        )


def model_flops_utilization(policy: Any, metrics: dict[str, Any], world_size: int) -> float | None:
    """The share of the machine's measured peak the step's training used: ``train_tokens`` x the
    policy's ``train_flops_per_token``, over the seconds of its forward and backward passes
    (``train_time_s``, else the whole ``step_time_s``) x ``world_size`` x the peak FLOP/s that
    :mod:`rlvr.precision`'s probe measured for the training precision. None where any is missing."""
    seconds = metrics.get("train_time_s") or metrics.get("step_time_s")
    peak = getattr(policy, "peak_flops", None)
    per_token = getattr(policy, "train_flops_per_token", 0.0)
    tokens = metrics.get("train_tokens")
    if not (seconds and peak and per_token) or tokens is None:
        return None
    return float(tokens) * per_token / (float(seconds) * world_size * peak)


def checkpoint_due(config: Any, step: int) -> bool:
    """Whether ``step`` gets a checkpoint: every ``save_steps`` steps (0 = never), and at ``max_steps``."""
    return bool(config.save_steps) and (step % config.save_steps == 0 or step == config.max_steps)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at ``path``, or ``{}`` when there is none."""
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, default=str))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines of a JSONL log (``metrics.jsonl``, ``transcripts.jsonl``) after ``step`` (a
    resumed run writes them again); a line cut short by a killed process is dropped too."""
    if not path.exists():
        return
    lines = []
    for ln in path.read_text().splitlines():
        try:
            keep = ln.strip() and json.loads(ln).get("step", 0) <= step
        except (json.JSONDecodeError, AttributeError):
            keep = False
        if keep:
            lines.append(ln)
    path.write_text("".join(ln + "\n" for ln in lines))


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to a JSONL log, one JSON object per line."""
    if rows:
        with open(path, "a") as f:
            f.write("".join(json.dumps(row, default=str) + "\n" for row in rows))


class RunLog:
    """``metrics.jsonl`` plus the configured loggers and the progress bar; process 0 writes, the others keep history.

    Args:
        output_dir: The run directory.
        processes: Who writes.
        config: The run's config (``report_to``, ``logging_steps``, ``max_steps``, ``progress_bar``).
        desc: The progress bar's label.
        postfix: Metric names shown beside the bar (format ``name=value``).
    """

    def __init__(
        self,
        output_dir: Path,
        processes: Processes,
        config: Any,
        desc: str,
        postfix: tuple[str, ...] = ("reward_mean", "accuracy", "step_time_s"),
    ) -> None:
        self.output_dir, self.processes, self.config = output_dir, processes, config
        self.desc, self.postfix = desc, postfix
        self.history: list[dict[str, Any]] = []
        self._loggers: list[Any] = []
        self._bar: Any = None

    def open(self, initial_step: int) -> None:
        """Start the loggers and the progress bar (process 0)."""
        if not self.processes.is_main:
            return
        self._loggers = [make_logger(name, self.output_dir, self.config.to_dict()) for name in self.config.report_to]
        if self.config.progress_bar and getattr(self.config, "log_level", "info") != "warning":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.config.max_steps, initial=initial_step, desc=self.desc, unit="step", dynamic_ncols=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record one step's metrics (``metrics.jsonl`` every ``logging_steps`` and at the last step)."""
        self.history.append(metrics)
        if not self.processes.is_main:
            return
        if step % self.config.logging_steps == 0 or step == self.config.max_steps:
            with open(self.output_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            for lg in self._loggers:
                lg.log(metrics, step)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{metrics[k]:.3g}" for k in self.postfix if isinstance(metrics.get(k), (int, float))})

    def close(self) -> None:
        """Close the bar and the loggers."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for lg in self._loggers:
            lg.close()
        self._loggers = []


class _TensorBoard:
    def __init__(self, output_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, output_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(dir=str(output_dir), config=config, project=os.environ.get("WANDB_PROJECT", "rlvr"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log({f"train/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, config: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run()
        mlflow.log_params({k: str(v)[:250] for k, v in config.items()})

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def make_logger(name: str, output_dir: Path, config: dict[str, Any]) -> Any:
    """A ``tensorboard``, ``wandb`` or ``mlflow`` logger with ``log(metrics, step)`` and ``close()``."""
    try:
        if name == "tensorboard":
            return _TensorBoard(output_dir)
        if name == "wandb":
            return _WandB(output_dir, config)
        if name == "mlflow":
            return _MLflow(config)
    except ImportError as exc:
        raise ConfigError(f"report_to={name!r} needs {name}: pip install {name}, or drop it from report_to ({exc})") from exc
    raise ConfigError(f"report_to: unknown logger {name!r}; use tensorboard, wandb or mlflow")


# =======================================================================================
# Checkpoints
# =======================================================================================


def _rank_file(stem: str, rank: int, ext: str) -> str:
    """``rng.pt`` for process 0 (what a one-process run writes), ``rng-1.pt`` for process 1, ..."""
    return f"{stem}.{ext}" if rank == 0 else f"{stem}-{rank}.{ext}"


CHECKSUMS = "checksums.json"
"""Each checkpoint file's size and SHA-256, written last: a checkpoint without it never finished."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint or ``final/`` that could not be written (disk full, quota, I/O error); its
    temporary directory is gone and the message is one line that says what to do."""


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """About how many bytes a checkpoint of ``model`` (its trainable parameters) and AdamW's
    two moments takes on disk: this process's share for a sharded model."""
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    moments = 2 * sum(p.numel() * 4 for p in model.parameters() if p.requires_grad) if optimizer is not None else 0
    return int(params + moments)


def _free_space(path: Path) -> tuple[Path, int | None]:
    """The nearest existing directory at or above ``path``, and its filesystem's free bytes (None if unknown)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return probe, shutil.disk_usage(probe).free
    except OSError:
        return probe, None


def check_free_space(directory: Path, needed: int, what: str = "a checkpoint") -> str | None:
    """A warning when ``directory``'s filesystem has less than ``needed`` bytes free (None when it has enough)."""
    probe, free = _free_space(directory)
    if free is None or free >= needed:
        return None
    return f"warning: {what} needs about {_gib(needed)} and {probe} has {_gib(free)} free; the write will fail unless space is freed"


def write_error(path: Path, exc: BaseException, needed: int) -> CheckpointWriteError:
    """The one-line :class:`CheckpointWriteError` for a failed write of ``path``: why, the bytes
    it needed, the free space found after the partial write was removed, and what to do."""
    import errno

    probe, free_bytes = _free_space(path.parent)
    if isinstance(exc, OSError) and exc.errno:
        why = f"{errno.errorcode.get(exc.errno, 'error')}: {exc.strerror or exc}"
    else:  # torch.save and safetensors report a full disk in their own words
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
    free = _gib(free_bytes) if free_bytes is not None else "an unknown amount"
    return CheckpointWriteError(
        f"could not write {path} ({why}); it needs about {_gib(needed)} and {probe} has {free} free after the partial "
        "write was removed. Free space (or set output_dir on a bigger disk) and resume from the last complete checkpoint "
        "with --resume"
    )


def _sha256(file: Path, sync: bool = False) -> str:
    """``file``'s SHA-256, read in 4 MiB blocks; with ``sync``, the file is synced to disk too."""
    import hashlib

    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
        if sync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """Record every file's size and SHA-256 in ``directory/checksums.json`` (each file synced to disk first)."""
    sums: dict[str, list[Any]] = {}
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        sums[str(file.relative_to(directory))] = [file.stat().st_size, _sha256(file, sync=True)]
    target = directory / CHECKSUMS
    with open(target, "w") as f:
        json.dump(sums, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def damaged_files(directory: Path) -> list[str]:
    """The files of a checkpoint that do not match its ``checksums.json`` (missing, another
    size, another hash): ``[]`` for a sound checkpoint, and for one written before checksums were."""
    index = directory / CHECKSUMS
    if not index.exists():
        return []
    try:
        sums = {str(name): (int(size), str(want)) for name, (size, want) in json.loads(index.read_text()).items()}
    except (OSError, ValueError, TypeError, AttributeError):  # cut short or hand-edited out of shape
        return [CHECKSUMS]
    bad = []
    for name, (size, want) in sums.items():
        file = directory / name
        if not file.is_file() or file.stat().st_size != size or _sha256(file) != want:
            bad.append(name)
    return bad


def save_checkpoint(
    path: Path,
    processes: Processes,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    data: dict[str, Any],
    objects: dict[str, Any] | None = None,
) -> Path:
    """Write a resumable checkpoint atomically (``path.tmp``, checksummed, then renamed).

    ``model``'s trainable parameters, the optimizer and scheduler, and ``state`` (step,
    config, trainer name: ``trainer_state.json``) come from process 0 -- or, for a sharded
    (FSDP) model, the weights and optimizer state from every process, each writing its own
    shards under ``sharded/`` with ``torch.distributed.checkpoint`` (no process gathers the model); every process adds its
    own RNG states, ``data`` (its data order) and ``objects`` (name -> anything picklable, e.g.
    the rollouts in flight: :func:`load_checkpoint_object` reads them back). Every process calls this.

    ``checksums.json`` (each file's size and SHA-256) is written last, after every file is
    synced to disk. A write that fails on any process (a full disk, a quota, an I/O error)
    removes the temporary directory -- nothing half-written stays under a final name -- and
    raises :class:`CheckpointWriteError` on every process.
    """
    tmp = path.with_name(path.name + ".tmp")
    needed = checkpoint_bytes(model, optimizer)
    error: Exception | None = None
    try:
        _write_checkpoint_files(tmp, processes, model, optimizer, scheduler, state, data, objects)
    except Exception as exc:  # noqa: BLE001 -- torch.save reports a full disk as a RuntimeError; each becomes one line below
        error = exc
    failed = processes.sum(float(error is not None))[0]
    if not failed and processes.is_main:
        try:
            write_checksums(tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        except OSError as exc:
            error = exc
    failed = processes.sum(float(error is not None))[0]
    if failed:
        if processes.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        processes.barrier()
        raise write_error(path, error or OSError(0, "another process could not write its part"), needed)
    return path


def _write_checkpoint_files(
    tmp: Path,
    processes: Processes,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    data: dict[str, Any],
    objects: dict[str, Any] | None,
) -> None:
    import torch
    from safetensors.torch import save_file

    if processes.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    processes.barrier()
    torch.save(
        {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        tmp / _rank_file("rng", processes.rank, "pt"),
    )
    if processes.rank:
        (tmp / _rank_file("data", processes.rank, "json")).write_text(json.dumps(data))
    for name, obj in (objects or {}).items():
        torch.save(obj, tmp / _rank_file(name, processes.rank, "pt"))
    sharded = is_sharded(model)
    if sharded:  # each process writes its own shards of the weights and of AdamW's state; nothing is gathered
        import torch.distributed.checkpoint as dcp

        dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(tmp / SHARDED))
    processes.barrier()
    if processes.is_main:
        if sharded:
            torch.save({"scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        else:
            trainable = {k: v.detach().contiguous().clone() for k, v in model.named_parameters() if v.requires_grad}
            save_file(trainable, str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        full = {**state, "data": data, "world_size": processes.world_size, "sharded": sharded}
        (tmp / "trainer_state.json").write_text(json.dumps(full, indent=2, default=str))


def checkpoint_trainer(
    trainer: Any,
    path: str | os.PathLike | None,
    data: dict[str, Any],
    model: torch.nn.Module | None = None,
    objects: dict[str, Any] | None = None,
) -> Path:
    """A trainer's ``save_checkpoint``: :func:`save_checkpoint` of its ``model`` (or the module
    given: a policy with its value head), ``optimizer`` and ``scheduler``, with its ``step``,
    ``name`` and ``config`` as the state and ``data`` (its data order) -- into ``path`` or
    ``output_dir/checkpoint-STEP``, the same on every process."""
    path = Path(path) if path else trainer.output_dir / f"checkpoint-{trainer.step}"
    state = {"step": trainer.step, "trainer": trainer.name, "config": trainer.config.to_dict()}
    return save_checkpoint(
        path, trainer.processes, model if model is not None else trainer.model, trainer.optimizer, trainer.scheduler, state, data,
        objects,
    )  # fmt: skip


def load_checkpoint_object(path: str | os.PathLike, name: str, rank: int = 0) -> Any:
    """The object ``name`` process ``rank`` saved in the checkpoint :func:`find_checkpoint` picks (None if there is none)."""
    import torch

    file = find_checkpoint(path) / _rank_file(name, rank, "pt")
    return torch.load(file, weights_only=False) if file.exists() else None


def resume_trainer(trainer: Any, path: str | os.PathLike, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """A trainer's ``resume``: :func:`load_checkpoint` into its ``model`` (or the module given),
    ``optimizer`` and ``scheduler``, refusing another trainer's checkpoint; sets ``step``, drops
    the metric lines after it (they are written again) and returns this process's data state."""
    state, data = load_checkpoint(
        path, trainer.processes, model if model is not None else trainer.model, trainer.optimizer, trainer.scheduler, trainer.name
    )
    trainer.step = int(state["step"])
    if trainer.processes.is_main:
        truncate_metrics(trainer.output_dir / "metrics.jsonl", trainer.step)
        truncate_metrics(trainer.output_dir / TRANSCRIPTS, trainer.step)
    return data


def _number(p: Path) -> int:
    tail = p.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def checkpoints_in(run_dir: str | os.PathLike) -> list[Path]:
    """The run's complete ``checkpoint-N`` directories, oldest first."""
    return [p for p in sorted(Path(run_dir).glob("checkpoint-*"), key=_number) if p.is_dir() and (p / "trainer_state.json").exists()]


def find_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a checkpoint, else its latest ``checkpoint-N`` subdirectory."""
    path = Path(path)
    if (path / "trainer_state.json").exists():
        return path
    if not path.is_dir():
        raise ConfigError(f"--resume {path}: no such directory; pass a run directory or one of its checkpoint-N directories")
    found = checkpoints_in(path)
    if not found:
        raise ConfigError(f"no checkpoint in {path}: pass a checkpoint-N directory or a run directory saved with save_steps > 0")
    return found[-1]


def latest_valid_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest checkpoint of ``run_dir`` whose files match their checksums (``--resume latest_valid``)."""
    found = checkpoints_in(run_dir)
    if not found:
        raise ConfigError(f"no checkpoint in {run_dir}: pass the run directory of a run saved with save_steps > 0")
    for checkpoint in reversed(found):
        if not damaged_files(checkpoint):
            return checkpoint
    raise ConfigError(f"no checkpoint in {run_dir} matches its checksums: there is nothing sound to resume from")


def check_checkpoint(path: Path) -> None:
    """Raise ``ConfigError`` when a checkpoint's files do not match its checksums, naming the
    bad files and the previous sound checkpoint to resume from instead."""
    bad = damaged_files(path)
    if not bad:
        return
    older = [p for p in checkpoints_in(path.parent) if _number(p) < _number(path) and not damaged_files(p)]
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    offer = (
        f"the previous sound checkpoint is {older[-1]}: resume from it with --resume {older[-1]} "
        f"(or --resume latest_valid --output_dir {path.parent})"
        if older
        else "no earlier checkpoint of this run is sound: start the run again"
    )
    raise ConfigError(f"checkpoint {path} is damaged: {shown} do(es) not match its {CHECKSUMS} (truncated or corrupted); nothing was loaded. {offer}")


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """``trainer_state.json`` of the checkpoint :func:`find_checkpoint` picks."""
    return json.loads((find_checkpoint(path) / "trainer_state.json").read_text())


def load_checkpoint(
    path: str | os.PathLike,
    processes: Processes,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load what :func:`save_checkpoint` wrote into ``model``/``optimizer``/``scheduler`` and the RNGs.

    ``trainer``: the name of the trainer resuming; a checkpoint another trainer wrote is
    refused before anything is loaded. Returns ``(trainer_state, data)``: the saved state
    and this process's data order.

    A sharded checkpoint (FSDP) is read with ``torch.distributed.checkpoint`` into each process's
    shards, and may be resumed on another process count: the weights and AdamW's state reshard;
    each process then continues from process 0's data position in its own share of the data,
    with seeds from (seed, step, rank). A one-file checkpoint (one process, DDP) needs the count it was written with.
    """
    import torch

    path = find_checkpoint(path)
    check_checkpoint(path)
    state = json.loads((path / "trainer_state.json").read_text())
    saved_trainer = state.get("trainer", trainer)
    if trainer is not None and saved_trainer != trainer:
        raise ConfigError(
            f"checkpoint {path} was written by the {saved_trainer!r} trainer; resume it with --trainer {saved_trainer}"
        )
    saved_world = state.get("world_size", 1)
    sharded = is_sharded(model)
    if bool(state.get("sharded")) != sharded:
        saved, now = ("fsdp", "ddp") if state.get("sharded") else ("ddp", "fsdp")
        raise ConfigError(
            f"checkpoint {path} was written by a {saved} run and this run is {now}: resume it with --parallelism {saved}"
        )
    if saved_world != processes.world_size and not sharded:
        raise ConfigError(
            f"checkpoint {path} was written by {saved_world} process(es) and this run has {processes.world_size}; "
            f"each process's data order and random state are in it, so resume with the same count: torchrun "
            f"--nproc_per_node {saved_world} (or accelerate launch --num_processes {saved_world})"
        )
    if sharded:
        _load_sharded(path, model, optimizer)
        scheduler.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False)["scheduler"])
    else:
        _load_whole(path, model, optimizer, scheduler)
    if saved_world != processes.world_size:
        # a sharded checkpoint reshards (DCP); each process's data order and random state do not:
        # every process takes process 0's position in its own share of the data, and fresh seeds
        if processes.is_main:
            print(
                f"checkpoint {path} was written by {saved_world} processes and this run has {processes.world_size}: "
                "the weights and optimizer state are resharded; each process continues the data order from "
                "process 0's position and reseeds, so the run goes on but is not the uninterrupted run",
                flush=True,
            )
        seed = int(state.get("config", {}).get("seed", 0))
        seed_everything(int(np.random.SeedSequence([seed, int(state["step"]), processes.rank]).generate_state(1)[0]))
        return state, state["data"]
    rng = torch.load(path / _rank_file("rng", processes.rank, "pt"), weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    data = state["data"] if processes.rank == 0 else json.loads((path / _rank_file("data", processes.rank, "json")).read_text())
    return state, data


SHARDED = "sharded"
"""A sharded checkpoint's directory of ``torch.distributed.checkpoint`` files (each process's shards)."""


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters (or some of them: a module that holds sharded ones) are sharded over the processes (FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``{"model": ..., "optimizer": ...}``: the trainable weights' and AdamW's shards, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    return {"model": model_state, "optimizer": optim_state}


def _load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a sharded checkpoint into a sharded model and its optimizer, resharding where the process count changed."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _sharded_state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path / SHARDED))
    except (RuntimeError, ValueError, KeyError) as exc:  # DCP's CheckpointException is a RuntimeError
        raise ConfigError(
            f"checkpoint {path} does not fit this model ({str(exc).splitlines()[0][:300]}); resume with the same model and LoRA settings"
        ) from exc
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
        options=StateDictOptions(ignore_frozen_params=True),
    )  # fmt: skip


def _load_whole(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Read a one-file checkpoint (``trainable.safetensors``, ``optimizer.pt``), every parameter checked before any is changed."""
    import torch
    from safetensors.torch import load_file

    params = dict(model.named_parameters())
    saved = load_file(str(path / "trainable.safetensors"))
    for k, v in saved.items():  # check everything before changing anything
        if k not in params or params[k].shape != v.shape:
            what = "lacks" if k not in params else f"holds with shape {tuple(params[k].shape)}, not {tuple(v.shape)}"
            raise ConfigError(
                f"checkpoint {path} has parameter {k!r} that this model {what}; resume with the same model and LoRA settings"
            )
    with torch.no_grad():
        for k, v in saved.items():
            params[k].copy_(v)
    opt = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])


# =======================================================================================
# Curves
# =======================================================================================


# what each panel of curves.png shows: the first key the run logs (online methods log reward and
# accuracy; DPO / KTO / ORPO the loss and the implicit-reward accuracy; the reward model loss and accuracy)
_LEFT_KEYS = (("reward_mean", "reward"), ("loss", "loss"))
_RIGHT_KEYS = (("accuracy", "accuracy"), ("rewards/accuracies", "preference accuracy (chosen > rejected)"))


def plot_curves(metrics_path: str | Path, out_path: str | Path, eval_summary: dict[str, Any] | None = None) -> None:
    """Two panels over steps -- the reward (or, for methods without one, the loss) and the accuracy (or the
    preference accuracy) of the training batches -- with the held-out accuracy before/after when given, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    last_step = 0
    for panel, keys in zip(ax, (_LEFT_KEYS, _RIGHT_KEYS)):
        key, title = next(((k, t) for k, t in keys if any(isinstance(r.get(k), (int, float)) for r in rows)), keys[0])
        points = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
        steps, values = [p[0] for p in points], [p[1] for p in points]
        last_step = max([last_step, *steps])
        panel.plot(steps, values, label=f"{title} (train batch)", alpha=0.5)
        panel.plot(steps, _smooth(values), label=f"{title}, smoothed")
        panel.set_xlabel("step")
        panel.set_title(title)
    before, after = (eval_summary or {}).get("before", {}), (eval_summary or {}).get("after", {})
    if "accuracy" in before and "accuracy" in after and last_step:
        ax[1].plot([0, last_step], [before["accuracy"], after["accuracy"]], "o--", label="held-out accuracy (greedy)")
    ax[1].set_ylim(-0.02, 1.02)
    for panel in ax:
        panel.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def _smooth(values: list[float], k: int = 5) -> list[float]:
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k + 1) : i + 1]
        out.append(sum(window) / len(window))
    return out
