"""``PPOConfig``: every knob of :class:`~rlvr.trainers.ppo_trainer.PPOTrainer`, checked up front.

The fields every method shares (model, seed, optimizer, schedule, precision, LoRA, outputs)
come from :class:`~rlvr.trainers.config.TrainConfig`, those every online method shares
(environment, generation, truncation, dynamic sampling, importance correction, evaluation)
from :class:`~rlvr.trainers.online_config.OnlineConfig`; this file adds PPO's own: the critic
(a value head on the policy, or a separate ``critic_model``), GAE, the clipped policy and
value losses, the per-token KL penalty and the epochs / mini-batches of each rollout batch.
A bad combination fails in ``__post_init__`` -- before any model, tokenizer or engine is
loaded (the one exception: with ``critic_model``, the two tokenizers' vocabularies are read
to check they are the same) -- with a message naming the field and the fix.

A PPO **step** (``max_steps``) is one iteration: one rollout batch of
``generation_batch_size`` completions, then ``ppo_epochs`` passes over it in
``num_mini_batches`` mini-batches, each mini-batch one optimizer step. The learning-rate
schedule and ``save_steps`` count these iterations.

The defaults are sized for ``python -m rlvr.train --trainer ppo`` on the default
``arithmetic`` environment on a 2-core CPU (see ``docs/online_methods.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from rlvr.trainers.config import ConfigError, launched_world_size
from rlvr.trainers.online_config import OnlineConfig

__all__ = ["ConfigError", "PPOConfig", "tokenizer_vocab"]


@dataclass
class PPOConfig(OnlineConfig):
    """Configuration of a PPO run. One line per field says what it does."""

    trainer: ClassVar[str] = "rlvr.trainers.ppo_trainer:PPOTrainer"

    # --- defaults of shared fields that PPO sets differently ---------------------------
    max_steps: int = 40
    """PPO iterations: each samples one rollout batch and takes ppo_epochs x num_mini_batches optimizer steps on it."""
    learning_rate: float = 2e-5
    """Peak AdamW learning rate of the policy (LoRA adapters under LoRA)."""
    num_generations: int = 4
    """Completions per prompt. PPO's critic needs no groups (1 works); 4 shares each prompt's forward and generation prefix over 4 samples while keeping several prompts per batch."""
    generation_batch_size: int = 16
    """Completions per PPO iteration (prompts x ``num_generations``), over all processes."""

    # --- the critic ---------------------------------------------------------------------
    critic_model: str | None = None
    """A separate critic: a causal LM (name or directory, e.g. a smaller one) whose last hidden state feeds its own value head; None = a value head on the policy's last hidden state. Its tokenizer must be the policy's."""
    value_learning_rate: float = 2e-4
    """Peak AdamW learning rate of the value head (and of ``critic_model``); a fresh head learns faster than the policy may move."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    cliprange_value: float = 0.2
    """Clip of the value prediction around its rollout-time value, in return units (the clipped value loss)."""

    # --- advantages -------------------------------------------------------------------------
    gamma: float = 1.0
    """Discount over completion tokens (1 = none: the outcome reward counts fully at every token)."""
    lam: float = 1.0
    """GAE lambda: 1 = Monte-Carlo return minus the value (no bias from a young critic), lower trades variance for critic bias."""
    beta: float = 0.0
    """Per-token KL penalty ``-beta * (logp - ref_logp)`` in the rewards, to the initial policy; 0 = no reference model is loaded."""
    whiten_advantages: bool = True
    """Whiten advantages over the rollout batch's valid tokens (all processes together)."""

    # --- the policy loss and the optimization schedule ----------------------------------
    cliprange: float = 0.2
    """Policy ratio clip: ``exp(logp - old_logp)`` is clipped to ``[1 - cliprange, 1 + cliprange]``."""
    ppo_epochs: int = 1
    """Passes over each rollout batch (each pass costs a forward and backward over the whole batch)."""
    num_mini_batches: int = 2
    """Mini-batches per rollout batch (each one optimizer step; split over whole prompt groups, in a seeded order per epoch)."""

    def check(self) -> None:
        """The shared checks (:class:`~rlvr.trainers.online_config.OnlineConfig`), then PPO's."""
        super().check()
        self.check_positive("ppo_epochs", "num_mini_batches")
        world = launched_world_size()
        if self.generation_batch_size % self.num_mini_batches:
            self.fail(
                "num_mini_batches",
                f"{self.num_mini_batches} mini-batches do not divide generation_batch_size={self.generation_batch_size}; "
                f"use a divisor of it ({_divisors(self.generation_batch_size)})",
            )
        per_process = self.generation_batch_size // world
        if world > 1 and per_process % self.num_mini_batches:
            self.fail(
                "num_mini_batches",
                f"{self.num_mini_batches} mini-batches do not divide the {per_process} completions each of the {world} "
                f"processes holds (WORLD_SIZE={world}); use a divisor of {per_process} ({_divisors(per_process)})",
            )
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                self.fail(name, f"must be in [0, 1], got {getattr(self, name)} (1.0 is the usual value for outcome rewards)")
        if self.cliprange <= 0:
            self.fail("cliprange", f"must be > 0 (0.2 is typical), got {self.cliprange}")
        if self.cliprange_value <= 0:
            self.fail("cliprange_value", f"must be > 0 (0.2 is typical), got {self.cliprange_value}")
        if self.vf_coef <= 0:
            self.fail("vf_coef", f"must be > 0 or the critic never learns (0.1 is typical), got {self.vf_coef}")
        if self.value_learning_rate <= 0:
            self.fail("value_learning_rate", f"must be > 0, got {self.value_learning_rate}")
        if self.beta < 0:
            self.fail("beta", f"must be >= 0 (0 disables the KL penalty), got {self.beta}")
        if self.dynamic_sampling and self.num_generations < 2:
            self.fail(
                "dynamic_sampling",
                "drops prompt groups whose rewards all tie, so it needs num_generations >= 2 (with 1, every group ties); "
                "set num_generations to 4 or turn dynamic_sampling off",
            )
        if self.critic_model is not None:
            if not self.critic_model.strip():
                self.fail(
                    "critic_model", "is empty; give a model name or directory, or leave it unset for a value head on the policy"
                )
            self._check_critic_tokenizer()

    def _check_critic_tokenizer(self) -> None:
        """The critic reads the policy's token ids, so both must use one vocabulary (tokenizer files only, no model)."""
        from rlvr.models import check_model_source

        try:
            check_model_source(self.critic_model)
        except FileNotFoundError as exc:
            self.fail("critic_model", str(exc))
        policy_vocab, critic_vocab = _local_vocab(self.model), _local_vocab(self.critic_model)
        if policy_vocab is None or critic_vocab is None:
            return  # not a local directory (a cached Hub id): the trainer compares the loaded tokenizers
        if policy_vocab != critic_vocab:
            self.fail(
                "critic_model",
                f"{self.critic_model!r} has a different tokenizer from the policy {self.model!r} (their vocabularies differ), "
                "and the critic reads the policy's token ids; use a critic of the same model family and tokenizer, or leave "
                "critic_model unset for a value head on the policy",
            )


def tokenizer_vocab(path: str | Path) -> dict[str, int] | None:
    """The token -> id map of the tokenizer in directory ``path``, from ``tokenizer.json`` or ``vocab.json``; None if neither."""
    path = Path(path)
    if (path / "tokenizer.json").is_file():
        data = json.loads((path / "tokenizer.json").read_text())
        raw = data.get("model", {}).get("vocab", {})
        # BPE / WordPiece models map token -> id; unigram models list [token, score] pairs in id order
        vocab = {tok: i for i, (tok, _) in enumerate(raw)} if isinstance(raw, list) else dict(raw)
        vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
        return vocab
    if (path / "vocab.json").is_file():
        return json.loads((path / "vocab.json").read_text())
    return None


def _local_vocab(name: str) -> dict[str, int] | None:
    """The vocabulary of a known model name or a local model directory; None for anything else."""
    from rlvr.models import KNOWN_MODELS, resolve_model

    if name.lower() in KNOWN_MODELS:
        return tokenizer_vocab(resolve_model(name))
    path = Path(name).expanduser()
    return tokenizer_vocab(path) if path.is_dir() else None


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
