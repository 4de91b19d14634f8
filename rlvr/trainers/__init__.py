"""rlvr.trainers: one method = a config file + a trainer file.

``GRPOConfig`` / ``GRPOTrainer`` (group-relative policy optimisation) are imported lazily,
so ``from rlvr.trainers import GRPOConfig`` does not load torch until the trainer is needed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GRPOConfig", "GRPOTrainer"]


def __getattr__(name: str) -> Any:
    if name == "GRPOConfig":
        from rlvr.trainers.grpo_config import GRPOConfig

        return GRPOConfig
    if name == "GRPOTrainer":
        from rlvr.trainers.grpo_trainer import GRPOTrainer

        return GRPOTrainer
    raise AttributeError(f"module 'rlvr.trainers' has no attribute {name!r}")
