"""``ReinforcePPConfig``: the knobs of :class:`~rlvr.experimental.reinforce_pp_trainer.ReinforcePPTrainer`.

EXPERIMENTAL: REINFORCE++ may change or be removed without notice (``rlvr.experimental``
warns on import). It is registered as ``--trainer reinforce_pp``.

Environment, generation and evaluation fields come from
:class:`~rlvr.trainers.online_config.OnlineConfig`; this file adds REINFORCE++'s own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlvr.trainers.online_config import OnlineConfig

__all__ = ["BASELINES", "ReinforcePPConfig"]

BASELINES = ("none", "group_mean")


@dataclass
class ReinforcePPConfig(OnlineConfig):
    """Configuration of a REINFORCE++ run (experimental). One line per field says what it does."""

    trainer: ClassVar[str] = "rlvr.experimental.reinforce_pp_trainer:ReinforcePPTrainer"

    # --- REINFORCE++ ----------------------------------------------------------------------
    beta: float = 0.0
    """Per-token KL penalty in the reward, ``-beta * (logp_old - logp_ref)`` on every completion token; 0 = no reference model."""
    gamma: float = 1.0
    """Discount of the per-token returns (1.0: every token's return is the sequence's reward minus the KL still to come)."""
    baseline: str = "group_mean"
    """``group_mean`` subtracts the mean OK reward of the prompt's group before the returns (REINFORCE++-baseline), ``none`` does not."""
    epsilon: float = 0.2
    """Lower clip of the per-token ratio."""
    epsilon_high: float | None = None
    """Upper clip of the per-token ratio (None = ``epsilon``)."""
    num_iterations: int = 1
    """Optimizer steps on each generation batch."""

    def check(self) -> None:
        """The shared checks, then REINFORCE++'s."""
        super().check()
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        self.check_choice("baseline", BASELINES)
        self.check_positive("num_iterations")
        if self.baseline == "group_mean" and self.num_generations < 2:
            self.fail(
                "num_generations",
                f"got {self.num_generations}; baseline=group_mean subtracts the mean of the prompt's group, which needs at "
                "least 2 completions per prompt; use num_generations >= 2 or baseline=none",
            )
        if not 0 <= self.gamma <= 1:
            self.fail("gamma", f"must be in [0, 1], got {self.gamma}")
        if not 0 <= self.epsilon < 1:
            self.fail("epsilon", f"must be in [0, 1), got {self.epsilon}")
        if self.epsilon_high < 0:
            self.fail("epsilon_high", f"must be >= 0, got {self.epsilon_high}")
        if self.beta < 0:
            self.fail("beta", f"must be >= 0 (0 disables the KL penalty), got {self.beta}")
