"""``DPOConfig``: every knob of :class:`~rlvr.trainers.dpo_trainer.DPOTrainer`, checked up front.

The fields every method shares (model, seed, optimizer, schedule, precision, LoRA, outputs)
come from :class:`~rlvr.trainers.config.TrainConfig`, those every offline method shares (the
data, batch shape and held-out evaluation) from
:class:`~rlvr.trainers.offline_config.OfflineConfig`; this file adds DPO's losses and
iterative (on-policy) DPO, whose sampling engine (``generator``, ``vllm_*``) comes from
:class:`~rlvr.trainers.online_config.EngineConfig`. A bad combination fails in
``__post_init__`` -- before any model loads -- with a :class:`ConfigError` naming the field
and the fix. ``python -m rlvr.train --trainer
dpo`` builds this dataclass from a YAML file plus ``--key value`` overrides.

No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlvr.trainers.config import ConfigError, launched_world_size
from rlvr.trainers.offline_config import OfflineConfig
from rlvr.trainers.online_config import EngineConfig

__all__ = ["ConfigError", "DPOConfig", "DPO_LOSS_TYPES"]

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "apo_zero", "sppo_hard")


@dataclass
class DPOConfig(EngineConfig, OfflineConfig):
    """Configuration of a DPO run (offline on a pairs file, or iterative on an environment). One line per field."""

    trainer: ClassVar[str] = "rlvr.trainers.dpo_trainer:DPOTrainer"

    # --- DPO --------------------------------------------------------------------------
    loss_type: list[str] | str = "sigmoid"
    """One of sigmoid, ipo, hinge, robust, apo_zero, sppo_hard, or a list of them combined with ``loss_weights``."""
    loss_weights: list[float] | None = None
    """A weight per entry of ``loss_type`` (None = 1.0 each)."""
    beta: float = 0.1
    """Strength of the pull to the reference model (IPO: the regularisation tau)."""
    label_smoothing: float = 0.0
    """Assumed share of flipped labels for ``robust`` (in [0, 0.5))."""
    precompute_ref_log_probs: bool = False
    """Compute the reference log-probs of every pair once before training (same values, one forward less per step)."""

    # --- iterative (on-policy) DPO ----------------------------------------------------------
    pairs_refresh_steps: int = 0
    """Every this many steps, rebuild the pairs by sampling the CURRENT policy on the env's train tasks (0 = off, offline DPO)."""
    pairs_k: int = 8
    """Iterative DPO: completions sampled per prompt; the best and worst by the reward make a pair."""
    pairs_prompts: int = 64
    """Iterative DPO: prompts sampled per refresh, over all processes (tied groups give no pair)."""
    temperature: float = 1.0
    """Iterative DPO: sampling temperature."""
    top_p: float = 1.0
    """Iterative DPO: nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Iterative DPO: top-k sampling (0 = off)."""

    def check(self) -> None:
        """The shared (and offline) checks, then the loss and iterative ones."""
        super().check()
        if isinstance(self.loss_type, str):
            self.loss_type = [t.strip() for t in self.loss_type.split(",") if t.strip()]
        if not self.loss_type:
            self.fail("loss_type", f"is empty; use one or more of {', '.join(DPO_LOSS_TYPES)}")
        for t in self.loss_type:
            if t not in DPO_LOSS_TYPES:
                self.fail("loss_type", f"unknown loss type {t!r}; use one or more of {', '.join(DPO_LOSS_TYPES)}")
        if self.loss_weights is not None:
            if isinstance(self.loss_weights, (int, float)):
                self.loss_weights = [float(self.loss_weights)]
            if len(self.loss_weights) != len(self.loss_type):
                self.fail(
                    "loss_weights",
                    f"{len(self.loss_weights)} weight(s) for {len(self.loss_type)} loss type(s) {self.loss_type}; "
                    "give one weight per loss type, in the same order, or leave loss_weights out (1.0 each)",
                )
            self.loss_weights = [float(w) for w in self.loss_weights]
        if self.beta <= 0:
            self.fail("beta", f"must be > 0 (0.1 is typical), got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            self.fail("label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        self.check_positive("pairs_k", "pairs_prompts")
        self.check_non_negative("pairs_refresh_steps", "top_k")
        world = launched_world_size()
        iterative = self.pairs_refresh_steps > 0
        if not iterative and not self.pairs:
            self.fail("pairs", "no preference data: pass --pairs FILE, or --env NAME --pairs_refresh_steps K for iterative DPO")
        if iterative:
            if not self.env:
                self.fail(
                    "pairs_refresh_steps",
                    "iterative DPO samples the env's train tasks: pass --env NAME (and optionally --verifier NAME)",
                )
            if self.pairs_k < 2:
                self.fail(
                    "pairs_k", f"a pair needs two completions of a prompt; use 2 or more (8 is typical), got {self.pairs_k}"
                )
            if self.pairs_prompts % world:
                self.fail(
                    "pairs_prompts",
                    f"{self.pairs_prompts} prompts do not split over {world} processes; use a multiple of {world}",
                )
            if self.temperature <= 0:
                self.fail("temperature", f"must be > 0 for sampling (greedy samples of a prompt all tie), got {self.temperature}")
            if not 0 < self.top_p <= 1:
                self.fail("top_p", f"must be in (0, 1], got {self.top_p}")
            if self.num_epochs is not None:
                self.fail("num_epochs", "iterative DPO has no fixed data to count epochs of; set max_steps instead")
