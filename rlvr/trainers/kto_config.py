"""``KTOConfig``: every knob of :class:`~rlvr.trainers.kto_trainer.KTOTrainer`, checked up front.

The shared fields come from :class:`~rlvr.trainers.config.TrainConfig`; this file adds the
unpaired data (a labels file, or a pairs file unpaired), KTO's loss weights, the batch shape
and the held-out evaluation. A bad combination fails in ``__post_init__``, before any model
loads, with a :class:`ConfigError` naming the field and the fix. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlvr.trainers.config import ConfigError, TrainConfig, launched_world_size

__all__ = ["ConfigError", "KTOConfig"]


@dataclass
class KTOConfig(TrainConfig):
    """Configuration of a KTO run. One line per field says what it does."""

    trainer: ClassVar[str] = "rlvr.trainers.kto_trainer:KTOTrainer"

    # --- data -------------------------------------------------------------------------
    labels: str | None = None
    """KTO examples (``prompt`` / ``completion`` / ``label`` true or false): a JSONL, JSON, Parquet or CSV file, or a dataset directory."""
    pairs: str | None = None
    """Or preference pairs, unpaired: each pair's chosen as desirable, its rejected as undesirable."""
    max_length: int = 512
    """Most tokens of prompt + completion; longer rows lose the END of the completion."""
    max_prompt_length: int | None = 256
    """Most prompt tokens; longer prompts lose their START (None = no prompt limit)."""

    # --- KTO --------------------------------------------------------------------------
    beta: float = 0.1
    """Strength of the pull to the reference model."""
    desirable_weight: float = 1.0
    """Weight of the desirable examples' losses."""
    undesirable_weight: float = 1.0
    """Weight of the undesirable examples' losses."""
    precompute_ref_log_probs: bool = False
    """Compute the reference log-probs of every example once before training (the KL term's mismatched pairs stay live)."""

    # --- batches ----------------------------------------------------------------------
    batch_size: int = 16
    """Examples per optimizer step, over all processes; the KL reference point is estimated within each process's share."""
    micro_batch_size: int = 8
    """Examples per forward/backward."""
    num_epochs: float | None = None
    """Passes over the examples; when set, it decides the step count instead of ``max_steps``."""

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
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) <= 0:
                self.fail(name, f"must be > 0 (1.0 is the default), got {getattr(self, name)}")
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
                f"{self.batch_size} examples do not split into micro-batches of {self.micro_batch_size}{where}; "
                f"use batch_size {lower} or {lower + per}, or change micro_batch_size",
            )
        if self.batch_size // world < 2:
            self.fail(
                "batch_size",
                f"{self.batch_size // world} example(s) per process: the KL reference point pairs each prompt with ANOTHER "
                "example's completion of the same batch, so each process needs at least 2",
            )
        if bool(self.labels) == bool(self.pairs):
            self.fail("labels", "give exactly one of --labels FILE (prompt/completion/label rows) or --pairs FILE (unpaired)")
