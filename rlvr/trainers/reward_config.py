"""``RewardConfig``: every knob of :class:`~rlvr.trainers.reward_trainer.RewardTrainer`, checked up front.

The fields every method shares (model, seed, optimizer, schedule, precision, LoRA, outputs)
come from :class:`~rlvr.trainers.config.TrainConfig`; this file adds the preference data,
the held-out split, the batch shape and the Bradley-Terry loss's options. A bad value fails
in ``__post_init__`` -- before any model loads -- with a :class:`ConfigError` naming the field
and the fix. ``python -m rlvr.train --trainer reward --pairs pairs.jsonl`` builds it.

No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rlvr.trainers.config import ConfigError, TrainConfig, check_batches

__all__ = ["ConfigError", "RewardConfig"]


@dataclass
class RewardConfig(TrainConfig):
    """Configuration of a reward-model run on preference pairs. One line per field."""

    trainer: ClassVar[str] = "rlvr.trainers.reward_trainer:RewardTrainer"

    # --- data -------------------------------------------------------------------------
    pairs: str | None = None
    """Training pairs (``prompt`` / ``chosen`` / ``rejected``, optional ``margin``): JSONL, JSON, Parquet, CSV or a saved dataset."""
    eval_pairs: str | None = None
    """Held-out pairs for the preference accuracy before/after; None = hold out ``eval_fraction`` of ``pairs``."""
    eval_fraction: float = 0.1
    """Share of ``pairs`` held out (by a hash of the prompt, so a prompt's pairs stay together) when ``eval_pairs`` is None."""
    max_length: int = 512
    """Most tokens of prompt + completion; a pair with a longer side is left out of training (and counted), as TRL does."""

    # --- loss -------------------------------------------------------------------------
    center_rewards_coefficient: float | None = None
    """Adds ``c * mean((r_chosen + r_rejected)^2)``, pulling rewards towards zero mean (TRL's option; 0.01 is typical)."""
    use_margin: bool = True
    """Subtract the pairs' ``margin`` column inside the loss, ``-logsigmoid(r_c - r_r - margin)`` (where a pair has one)."""

    # --- batches and schedule ----------------------------------------------------------
    batch_size: int = 16
    """Pairs per optimizer step, over all processes."""
    micro_batch_size: int = 8
    """Pairs per forward/backward (each forward holds their chosen and rejected sequences: 2x this many)."""
    num_epochs: float | None = None
    """Passes over the training pairs; when set, it decides the step count instead of ``max_steps``."""
    learning_rate: float = 1e-4
    """Peak AdamW learning rate (TRL's reward default; the score head starts from scratch)."""

    # --- held-out evaluation ------------------------------------------------------------
    eval_before: bool = True
    """Measure the held-out preference accuracy of the initial model."""
    eval_after: bool = True
    """Measure the held-out preference accuracy of the trained model."""
    eval_batch_size: int = 16
    """Sequences per forward in the held-out evaluation."""

    def check(self) -> None:
        """The shared checks, then the data, loss and batch ones."""
        super().check()
        if not self.pairs:
            self.fail("pairs", "no preference data: pass --pairs FILE (build one with python -m rlvr.pairs)")
        if not Path(self.pairs).exists():
            self.fail("pairs", f"{self.pairs}: no such file or directory; build one with python -m rlvr.pairs, or fix the path")
        if self.eval_pairs is not None and not Path(self.eval_pairs).exists():
            self.fail("eval_pairs", f"{self.eval_pairs}: no such file or directory; fix the path or leave it out (eval_fraction)")
        if not 0 <= self.eval_fraction < 1:
            self.fail("eval_fraction", f"must be in [0, 1) (0 = no held-out pairs), got {self.eval_fraction}")
        if self.center_rewards_coefficient is not None and self.center_rewards_coefficient < 0:
            self.fail(
                "center_rewards_coefficient", f"must be >= 0 (0.01 is typical) or None, got {self.center_rewards_coefficient}"
            )
        self.check_positive("max_length", "eval_batch_size")
        if self.max_length < 8:
            self.fail("max_length", f"{self.max_length} tokens cannot hold a prompt and a completion; use 512 or so")
        check_batches(self, "pairs")
