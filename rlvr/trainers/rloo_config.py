"""``RLOOConfig``: every knob of :class:`~rlvr.trainers.rloo_trainer.RLOOTrainer`, checked up front.

The fields every method shares come from :class:`~rlvr.trainers.config.TrainConfig`, those
every online method shares (environment, generation, evaluation) from
:class:`~rlvr.trainers.online_config.OnlineConfig`; this file adds RLOO's own fields and
checks. A bad combination fails in ``__post_init__`` -- before any model loads -- with a
message naming the field and the fix.

The defaults train SmolLM2-135M-Instruct on one-digit sums (``arithmetic``) on a 2-core CPU
in well under 15 minutes, like GRPO's (see ``docs/online_methods.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlvr.trainers.config import ConfigError
from rlvr.trainers.online_config import OnlineConfig

__all__ = ["ConfigError", "RLOOConfig"]


@dataclass
class RLOOConfig(OnlineConfig):
    """Configuration of an RLOO run. One line per field says what it does."""

    trainer: ClassVar[str] = "rlvr.trainers.rloo_trainer:RLOOTrainer"

    # --- RLOO -------------------------------------------------------------------------
    beta: float = 0.0
    """KL coefficient: ``beta * sum_t (logp_old - logp_ref)`` is subtracted from each completion's reward; 0 = no reference model is loaded."""
    epsilon: float = 0.2
    """Lower clip of the sequence-level ratio ``exp(sum logp - sum logp_old)``: below ``1 - epsilon`` it is clipped."""
    epsilon_high: float | None = None
    """Upper clip of the sequence-level ratio: above ``1 + epsilon_high`` it is clipped (None = ``epsilon``)."""
    num_iterations: int = 1
    """Optimizer steps on each generation batch (the ratio moves away from 1 after the first)."""
    skip_zero_advantage: bool = True
    """Leave sequences of advantage 0 (no baseline, tied group, not OK) out of the forward/backward: their gradient is exactly 0. False computes them (entropy/IS metrics then cover every row)."""
    normalize_advantages: bool = False
    """Divide the leave-one-out advantages by their standard deviation over the whole step (after removing its mean)."""
    reward_clip_range: list[float] | None = None
    """Clamp every reward into ``[low, high]`` before the KL penalty and the baselines (None = no clamp)."""

    def check(self) -> None:
        """The shared checks (:class:`~rlvr.trainers.online_config.OnlineConfig`), then RLOO's."""
        super().check()
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        if self.num_generations < 2:
            self.fail(
                "num_generations",
                f"got {self.num_generations}; RLOO's baseline is the mean reward of the OTHER completions of the prompt, "
                "so it needs at least 2 per prompt (4-8 is typical)",
            )
        self.check_positive("num_iterations")
        if not 0 <= self.epsilon < 1:
            self.fail("epsilon", f"must be in [0, 1), got {self.epsilon}")
        if self.epsilon_high < 0:
            self.fail("epsilon_high", f"must be >= 0, got {self.epsilon_high}")
        if self.beta < 0:
            self.fail("beta", f"must be >= 0 (0 disables the KL penalty), got {self.beta}")
        if self.reward_clip_range is not None:
            if isinstance(self.reward_clip_range, str):
                parts = [p for p in self.reward_clip_range.replace("[", "").replace("]", "").split(",") if p.strip()]
                try:
                    self.reward_clip_range = [float(p) for p in parts]
                except ValueError:
                    self.fail("reward_clip_range", f"expected two numbers 'low,high', got {self.reward_clip_range!r}")
            if len(self.reward_clip_range) != 2 or not self.reward_clip_range[0] < self.reward_clip_range[1]:
                self.fail("reward_clip_range", f"must be two numbers [low, high] with low < high, got {self.reward_clip_range!r}")
            self.reward_clip_range = [float(x) for x in self.reward_clip_range]
