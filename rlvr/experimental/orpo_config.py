"""``ORPOConfig``: every knob of :class:`~rlvr.experimental.orpo_trainer.ORPOTrainer`, checked up front.

Experimental (see :mod:`rlvr.experimental.orpo_trainer` for why). The shared fields come from
:class:`~rlvr.trainers.config.TrainConfig`; this file adds the pairs, ORPO's ``beta``, the
batch shape and the held-out evaluation. A bad combination fails in ``__post_init__``, before
any model loads, with a :class:`ConfigError` naming the field and the fix. No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlvr.trainers.config import ConfigError, TrainConfig, launched_world_size

__all__ = ["ConfigError", "ORPOConfig"]


@dataclass
class ORPOConfig(TrainConfig):
    """Configuration of an ORPO run. One line per field says what it does."""

    trainer: ClassVar[str] = "rlvr.experimental.orpo_trainer:ORPOTrainer"

    # --- data -------------------------------------------------------------------------
    pairs: str | None = None
    """Preference pairs (``prompt`` / ``chosen`` / ``rejected``): a JSONL, JSON, Parquet or CSV file, or a dataset directory."""
    max_length: int = 512
    """Most tokens of prompt + completion; longer rows lose the END of the completion."""
    max_prompt_length: int | None = 256
    """Most prompt tokens; longer prompts lose their START (None = no prompt limit)."""

    # --- ORPO -------------------------------------------------------------------------
    beta: float = 0.1
    """Weight of the odds-ratio term next to the NLL of the chosen completions (lambda in the ORPO paper)."""

    # --- batches ----------------------------------------------------------------------
    batch_size: int = 16
    """Pairs per optimizer step, over all processes."""
    micro_batch_size: int = 8
    """Pairs per forward/backward (each forward holds their chosen and rejected rows)."""
    num_epochs: float | None = None
    """Passes over the pairs; when set, it decides the step count instead of ``max_steps``."""

    # --- held-out evaluation --------------------------------------------------------------
    env: str | None = None
    """Environment for the held-out accuracy before/after: a registered name or ``jsonl:PATH`` (None = no evaluation)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment (e.g. ``{"digits": 2}``)."""
    verifier: str | None = None
    """Grade with this registered verifier instead of the environment's own reward."""
    system_prompt: str | None = None
    """A system message put before every evaluation prompt that has none."""
    eval_max_tasks: int = 100
    """Held-out tasks (the env's ``test`` split, first N) evaluated greedily before and after training."""
    eval_before: bool = True
    """Evaluate the initial model before training (needs ``env``)."""
    eval_after: bool = True
    """Evaluate the trained model after training (needs ``env``)."""
    max_completion_length: int = 64
    """Most new tokens per completion in evaluation."""
    correct_threshold: float = 1.0
    """A completion counts as correct when its reward is at least this."""

    def check(self) -> None:
        """The shared checks, then the data, loss and batch ones."""
        super().check()
        if self.beta <= 0:
            self.fail("beta", f"must be > 0 (0.1 is typical), got {self.beta}")
        self.check_positive("max_length", "batch_size", "max_completion_length")
        self.check_non_negative("eval_max_tasks")
        if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
            self.fail("max_prompt_length", f"must be in [1, max_length={self.max_length}), got {self.max_prompt_length}; or None")
        if self.num_epochs is not None and self.num_epochs <= 0:
            self.fail("num_epochs", f"must be > 0, got {self.num_epochs}; or leave it out and set max_steps")
        world = launched_world_size()
        if self.batch_size % (self.micro_batch_size * world):
            per = self.micro_batch_size * world
            lower = max(per, self.batch_size // per * per)
            where = f" x {world} processes" if world > 1 else ""
            self.fail(
                "batch_size",
                f"{self.batch_size} pairs do not split into micro-batches of {self.micro_batch_size}{where}; "
                f"use batch_size {lower} or {lower + per}, or change micro_batch_size",
            )
        if not self.pairs:
            self.fail("pairs", "no preference data: pass --pairs FILE (build one with python -m rlvr.pairs)")
