"""rlvr.trainers: shared plumbing as plain modules, then one config + trainer file per method.

Plumbing every trainer calls (no base class to inherit):

- :mod:`rlvr.trainers.config` -- ``TrainConfig`` (shared fields, coercion, checks) and ``ConfigError``;
- :mod:`rlvr.trainers.run` -- processes, seeds, run directory, metrics and loggers, checkpoints, data order;
- :mod:`rlvr.trainers.modeling` -- policy loading (LoRA, device, bf16), reference, optimizer, log-probs, saving;
- :mod:`rlvr.trainers.rollouts` -- for online trainers: generator, generate-and-score, rollout tensors.

Methods: ``grpo_config.py`` + ``grpo_trainer.py`` (``GRPOConfig`` / ``GRPOTrainer``). They are
imported lazily, so ``from rlvr.trainers import GRPOConfig`` does not load torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "GRPOConfig", "GRPOTrainer", "TrainConfig"]


def __getattr__(name: str) -> Any:
    if name in ("ConfigError", "TrainConfig"):
        from rlvr.trainers import config

        return getattr(config, name)
    if name == "GRPOConfig":
        from rlvr.trainers.grpo_config import GRPOConfig

        return GRPOConfig
    if name == "GRPOTrainer":
        from rlvr.trainers.grpo_trainer import GRPOTrainer

        return GRPOTrainer
    raise AttributeError(f"module 'rlvr.trainers' has no attribute {name!r}")
