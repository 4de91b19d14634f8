"""``OfflineConfig``: the fields every OFFLINE policy trainer (DPO, KTO, ORPO) shares.

:class:`~rlvr.trainers.config.TrainConfig` holds what every trainer has (model, seed,
optimizer, schedule, precision, LoRA, outputs); this adds what the methods that tune a
policy on fixed preference data have in common: the data and its token limits, the batch
shape and epochs, and the held-out evaluation on an environment before and after training.
Each method's config (``dpo_config.py``, ``kto_config.py``, ``orpo_config.py``) inherits it
and adds its own loss fields and checks. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlvr.trainers.config import ConfigError, TrainConfig, check_batches

__all__ = ["ConfigError", "OfflineConfig"]


@dataclass
class OfflineConfig(TrainConfig):
    """Data, batches and held-out evaluation of an offline run. One line per field."""

    batch_unit: ClassVar[str] = "pairs"  # what a batch counts, in messages

    # --- data -------------------------------------------------------------------------
    pairs: str | None = None
    """Preference pairs (``prompt`` / ``chosen`` / ``rejected``): a JSONL, JSON, Parquet or CSV file, or a saved dataset directory."""
    max_length: int = 512
    """Most tokens of prompt + completion; longer rows lose the END of the completion."""
    max_prompt_length: int | None = 256
    """Most prompt tokens; longer prompts lose their START (None = no prompt limit)."""

    # --- batches ----------------------------------------------------------------------
    batch_size: int = 16
    """Pairs (KTO: examples) per optimizer step, over all processes."""
    micro_batch_size: int = 8
    """Pairs (KTO: examples) per forward/backward; a pair's forward holds its chosen and rejected rows."""
    num_epochs: float | None = None
    """Passes over the data; when set, it decides the step count instead of ``max_steps``."""

    # --- held-out evaluation --------------------------------------------------------------
    env: str | None = None
    """Environment for the held-out accuracy before/after: a registered name or ``jsonl:PATH`` (None = no evaluation)."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment (e.g. ``{"digits": 2}``)."""
    verifier: str | None = None
    """Grade with this registered verifier instead of the environment's own reward."""
    system_prompt: str | None = None
    """A system message put before every environment prompt that has none."""
    eval_max_tasks: int = 100
    """Held-out tasks (the env's ``test`` split, first N) evaluated greedily before and after training."""
    eval_before: bool = True
    """Evaluate the initial model before training (needs ``env``)."""
    eval_after: bool = True
    """Evaluate the trained model after training (needs ``env``)."""
    max_completion_length: int = 64
    """Most new tokens per completion, in evaluation (and in iterative DPO's sampling)."""
    correct_threshold: float = 1.0
    """A completion counts as correct when its reward is at least this."""

    def check(self) -> None:
        """The shared checks, then the token limits, batch shape and evaluation ones."""
        super().check()
        self.check_positive("max_length", "max_completion_length")
        self.check_non_negative("eval_max_tasks")
        if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
            self.fail("max_prompt_length", f"must be in [1, max_length={self.max_length}), got {self.max_prompt_length}; or None")
        check_batches(self, self.batch_unit)
