"""``GRPOConfig``: every knob of :class:`~rlvr.trainers.grpo_trainer.GRPOTrainer`, checked up front.

The fields every method shares (model, seed, optimizer, schedule, precision, LoRA, outputs)
come from :class:`~rlvr.trainers.config.TrainConfig`, those every online method shares
(environment, generation, evaluation) from :class:`~rlvr.trainers.online_config.OnlineConfig`;
this file adds GRPO's own fields and checks. A bad combination fails in ``__post_init__``
-- before any model, tokenizer or engine is loaded -- with a message naming the field and
the fix. ``python -m rlvr.train`` builds this dataclass from a YAML file plus ``--key value``
overrides, so every field here is also a command-line flag.

The defaults are the embedded default run of ``python -m rlvr.train``: SmolLM2-135M-Instruct
on one-digit sums, on a 2-core CPU in well under 15 minutes (see ``docs/training.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlvr.trainers.config import ConfigError
from rlvr.trainers.online_config import VLLM_DTYPES, OnlineConfig

__all__ = ["ConfigError", "GRPOConfig", "VLLM_DTYPES"]

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class GRPOConfig(OnlineConfig):
    """Configuration of a GRPO run. One line per field says what it does."""

    trainer: ClassVar[str] = "rlvr.trainers.grpo_trainer:GRPOTrainer"

    # --- GRPO -------------------------------------------------------------------------
    loss_type: str = "dapo"
    """``grpo`` (per-sequence mean), ``dr_grpo`` (sum / (B x max_len)), ``dapo`` (token mean over the step), ``bnpo`` (token mean per micro-batch)."""
    scale_rewards: str = "group"
    """Divide advantages by the ``group`` std, the ``batch`` std, or ``none``."""
    epsilon: float = 0.2
    """Lower clip: ratios below ``1 - epsilon`` are clipped."""
    epsilon_high: float | None = None
    """Upper clip: ratios above ``1 + epsilon_high`` are clipped (None = ``epsilon``; DAPO uses 0.28)."""
    beta: float = 0.0
    """KL coefficient to the reference (initial) model; 0 = no reference model is loaded."""
    num_iterations: int = 1
    """Optimizer steps on each generation batch (mu in the GRPO paper)."""
    skip_zero_advantage: bool = True
    """With ``beta`` 0, leave rows of advantage 0 (tied groups) out of the forward/backward: their gradient is exactly 0. False computes them (ratio/IS metrics then cover every row)."""

    def check(self) -> None:
        """The shared checks (:class:`~rlvr.trainers.online_config.OnlineConfig`), then GRPO's."""
        super().check()
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        self.check_choice("loss_type", LOSS_TYPES)
        self.check_choice("scale_rewards", SCALE_REWARDS)
        if self.num_generations < 2:
            self.fail(
                "num_generations",
                f"got {self.num_generations}; GRPO compares completions within a group, so it needs at least 2 (8 is typical)",
            )
        self.check_positive("num_iterations")
        if not 0 <= self.epsilon < 1:
            self.fail("epsilon", f"must be in [0, 1), got {self.epsilon}")
        if self.epsilon_high < 0:
            self.fail("epsilon_high", f"must be >= 0, got {self.epsilon_high}")
        if self.beta < 0:
            self.fail("beta", f"must be >= 0 (0 disables the KL term), got {self.beta}")
