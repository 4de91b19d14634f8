"""``ORPOConfig``: every knob of :class:`~rlvr.experimental.orpo_trainer.ORPOTrainer`, checked up front.

Experimental (see :mod:`rlvr.experimental.orpo_trainer` for why). The shared fields come
from :class:`~rlvr.trainers.config.TrainConfig` and
:class:`~rlvr.trainers.offline_config.OfflineConfig` (the pairs, batch shape, held-out
evaluation); this file adds ORPO's ``beta``. A bad combination fails in ``__post_init__``,
before any model loads, with a :class:`ConfigError` naming the field and the fix. No torch
import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlvr.trainers.config import ConfigError
from rlvr.trainers.offline_config import OfflineConfig

__all__ = ["ConfigError", "ORPOConfig"]


@dataclass
class ORPOConfig(OfflineConfig):
    """Configuration of an ORPO run. One line per field says what it does."""

    trainer: ClassVar[str] = "rlvr.experimental.orpo_trainer:ORPOTrainer"

    # --- ORPO -------------------------------------------------------------------------
    beta: float = 0.1
    """Weight of the odds-ratio term next to the NLL of the chosen completions (lambda in the ORPO paper)."""

    def check(self) -> None:
        """The shared (and offline) checks, then ORPO's."""
        super().check()
        if self.beta <= 0:
            self.fail("beta", f"must be > 0 (0.1 is typical), got {self.beta}")
        if not self.pairs:
            self.fail("pairs", "no preference data: pass --pairs FILE (build one with python -m rlvr.pairs)")
