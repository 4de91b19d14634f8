"""``KTOConfig``: every knob of :class:`~rlvr.trainers.kto_trainer.KTOTrainer`, checked up front.

The shared fields come from :class:`~rlvr.trainers.config.TrainConfig` and
:class:`~rlvr.trainers.offline_config.OfflineConfig` (data limits, batches, held-out
evaluation); this file adds the unpaired data (a labels file, or a pairs file unpaired) and
KTO's loss weights. A bad combination fails in ``__post_init__``, before any model
loads, with a :class:`ConfigError` naming the field and the fix. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlvr.trainers.config import ConfigError, launched_world_size
from rlvr.trainers.offline_config import OfflineConfig

__all__ = ["ConfigError", "KTOConfig"]


@dataclass
class KTOConfig(OfflineConfig):
    """Configuration of a KTO run. One line per field says what it does."""

    trainer: ClassVar[str] = "rlvr.trainers.kto_trainer:KTOTrainer"
    batch_unit: ClassVar[str] = "examples"

    # --- data -------------------------------------------------------------------------
    labels: str | None = None
    """KTO examples (``prompt`` / ``completion`` / ``label`` true or false): a JSONL, JSON, Parquet or CSV file, or a dataset directory."""
    pairs: str | None = None
    """Or preference pairs, unpaired: each pair's chosen as desirable, its rejected as undesirable."""

    # --- KTO --------------------------------------------------------------------------
    beta: float = 0.1
    """Strength of the pull to the reference model."""
    desirable_weight: float = 1.0
    """Weight of the desirable examples' losses."""
    undesirable_weight: float = 1.0
    """Weight of the undesirable examples' losses."""
    precompute_ref_log_probs: bool = False
    """Compute the reference log-probs of every example once before training (the KL term's mismatched pairs stay live)."""

    def check(self) -> None:
        """The shared (and offline) checks, then the data and loss ones."""
        super().check()
        if self.beta <= 0:
            self.fail("beta", f"must be > 0 (0.1 is typical), got {self.beta}")
        for name in ("desirable_weight", "undesirable_weight"):
            if getattr(self, name) <= 0:
                self.fail(name, f"must be > 0 (1.0 is the default), got {getattr(self, name)}")
        world = launched_world_size()
        if self.batch_size // world < 2:
            self.fail(
                "batch_size",
                f"{self.batch_size // world} example(s) per process: the KL reference point pairs each prompt with ANOTHER "
                "example's completion of the same batch, so each process needs at least 2",
            )
        if bool(self.labels) == bool(self.pairs):
            self.fail("labels", "give exactly one of --labels FILE (prompt/completion/label rows) or --pairs FILE (unpaired)")
