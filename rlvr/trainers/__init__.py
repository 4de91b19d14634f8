"""rlvr.trainers: shared plumbing as plain modules, then one config + trainer file per method.

Plumbing every trainer calls (no base class to inherit):

- :mod:`rlvr.trainers.config` -- ``TrainConfig`` (shared fields, coercion, checks) and ``ConfigError``;
- :mod:`rlvr.trainers.run` -- processes, seeds, run directory, metrics and loggers, checkpoints, data order, the outer loop;
- :mod:`rlvr.trainers.modeling` -- policy loading (LoRA, device, bf16), reference, optimizer, packed log-probs, saving;
- for online methods: :mod:`rlvr.trainers.online_config` (``OnlineConfig``: environment, generation,
  evaluation fields), :mod:`rlvr.trainers.online` (tasks, sampling loop, evaluation, step pieces) and
  :mod:`rlvr.trainers.rollouts` (generator, generate-and-score, rollout tensors);
- for offline methods: :mod:`rlvr.trainers.offline` (preference data, tokenising, sequence log-probs).

Methods, each a ``<name>_config.py`` + ``<name>_trainer.py`` pair: GRPO, RLOO, PPO (online), DPO,
KTO (offline), and the reward-model trainer. REINFORCE++ and ORPO live in :mod:`rlvr.experimental`.
Everything is imported lazily, so ``from rlvr.trainers import GRPOConfig`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ConfigError": "rlvr.trainers.config",
    "TrainConfig": "rlvr.trainers.config",
    "OnlineConfig": "rlvr.trainers.online_config",
    "GRPOConfig": "rlvr.trainers.grpo_config",
    "GRPOTrainer": "rlvr.trainers.grpo_trainer",
    "RLOOConfig": "rlvr.trainers.rloo_config",
    "RLOOTrainer": "rlvr.trainers.rloo_trainer",
    "PPOConfig": "rlvr.trainers.ppo_config",
    "PPOTrainer": "rlvr.trainers.ppo_trainer",
    "DPOConfig": "rlvr.trainers.dpo_config",
    "DPOTrainer": "rlvr.trainers.dpo_trainer",
    "KTOConfig": "rlvr.trainers.kto_config",
    "KTOTrainer": "rlvr.trainers.kto_trainer",
    "RewardConfig": "rlvr.trainers.reward_config",
    "RewardTrainer": "rlvr.trainers.reward_trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlvr.trainers' has no attribute {name!r}")
