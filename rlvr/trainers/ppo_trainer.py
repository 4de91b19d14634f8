r"""PPO with a learned critic and GAE, readable top to bottom.

One PPO iteration (``PPOTrainer.training_step``; ``max_steps`` counts these):

1. **Rollouts.** ``generation_batch_size / num_generations`` prompts from the training split
   (seeded order, part of the checkpoint), ``num_generations`` completions each, scored by
   the reward -- all by :func:`rlvr.trainers.online.collect_groups`, shared with every online
   method (reward overlap, dynamic sampling, seeded sampling for an exact resume). Outcomes
   that are not ``OK`` (timeout, error, abstain) -- and, with
   ``mask_truncated_completions``, completions cut at ``max_completion_length`` -- are
   left out of both losses and of every statistic below; ``n_masked`` counts them.
2. **Rollout pass** (no gradient), with the weights that sampled the batch: the trainer's
   log-probabilities ``old_logp`` of the completion tokens, the critic's values
   ``old_values`` (a value head on the policy's last hidden state, or a separate
   ``critic_model`` with its own head), the policy's entropy at those positions (from the
   same hidden states: one extra LM-head projection), and with ``beta > 0`` the reference
   log-probabilities (the initial policy; the adapters switched off under LoRA).
3. **Rewards per token** (:func:`per_token_rewards`): ``-beta * (old_logp - ref_logp)`` at
   every token, plus the outcome's score on the last token.
4. **GAE** (:func:`gae_advantages`, ``gamma``, ``lam``) over the completion tokens:
   advantages, and returns = advantages + ``old_values``. The advantages are whitened
   (:func:`masked_whiten`) over the valid tokens of the whole batch, every process together.
5. **Optimization**: ``ppo_epochs`` passes; each pass splits the batch (whole prompt groups,
   in a seeded order per epoch) into ``num_mini_batches`` mini-batches, each one optimizer
   step accumulated over micro-batches of ``micro_batch_size``:

   - the clipped policy loss (:func:`ppo_policy_loss`, ``cliprange``), each token weighted by
     the truncated importance weight ``min(exp(old_logp - sampler_logp), cap)`` for the
     generator/trainer mismatch (:func:`~rlvr.trainers.grpo_trainer.truncated_importance_weights`,
     the same correction GRPO applies);
   - the clipped value loss (:func:`clipped_value_loss`, ``cliprange_value``), weighted by ``vf_coef``;
   - both as token means over the mini-batch (all processes: the gradient of N processes is
     the gradient of one process on the same completions).

   The policy (or its LoRA adapters) learns at ``learning_rate``, the value head (and the
   critic model) at ``value_learning_rate``; each side's gradient is clipped to ``max_grad_norm``.
6. **Sync**: the generator gets the new policy weights.

The pure math (steps 3-5) lives in module-level functions, tested against hand-derived
values in ``tests/test_ppo.py``. Processes, run directory, metrics and checkpoints come from
:mod:`rlvr.trainers.run`; the policy, reference, optimizer and log-probs / hidden states from
:mod:`rlvr.trainers.modeling`; generation, scoring and rollout tensors from
:mod:`rlvr.trainers.rollouts` and :mod:`rlvr.trainers.online`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr.environments.base import Environment, Task
from rlvr.environments.multiturn import MultiTurnEnvironment
from rlvr.generation import Generator
from rlvr.rewards import Reward, Status
from rlvr.trainers import modeling, online, rollouts, run
from rlvr.trainers.config import ConfigError
from rlvr.trainers.grpo_trainer import truncated_importance_weights
from rlvr.trainers.ppo_config import PPOConfig
from rlvr.trainers.rollouts import Rollout, sampling_seed

__all__ = [
    "Critic",
    "PPOTrainer",
    "ValueHead",
    "clipped_value_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae_advantages",
    "load_critic",
    "masked_whiten",
    "moments_from_sums",
    "per_token_rewards",
    "ppo_policy_loss",
]


# =======================================================================================
# Pure math
# =======================================================================================


def per_token_rewards(
    scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor | None, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: a KL penalty at every completion token, the outcome's score on the last one.

    ``scores`` is ``[B]``; ``logp``, ``ref_logp`` and ``mask`` are ``[B, T]``, ``mask`` a
    prefix mask (a completion's tokens first, padding after). The per-token KL estimate is
    ``kl = logp - ref_logp`` (0 when ``ref_logp`` is None), and
    ``r_t = -beta * kl_t`` plus ``scores[b]`` at ``t = len_b - 1``. Padding gets 0; a row
    with no token gets nothing. Returns ``(rewards, kl)``, both ``[B, T]``.
    """
    mask = mask.to(logp.dtype)
    kl = (logp - ref_logp) * mask if ref_logp is not None else torch.zeros_like(logp)
    rewards = -beta * kl
    lengths = mask.sum(1).long()
    rows = torch.nonzero(lengths > 0).flatten()
    rewards[rows, lengths[rows] - 1] += scores[rows].to(rewards.dtype)
    return rewards, kl


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the completion tokens; ``(advantages, returns)``, ``[B, T]``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` 0 after a completion's last token
    (the episode ends there), and ``A_t = delta_t + gamma * lam * A_{t+1}``; returns
    ``R_t = A_t + V_t``. ``mask`` is a prefix mask; padding gets 0 in both outputs. With
    ``gamma = lam = 1``, ``A_t`` is the sum of the rewards from t on, minus ``V_t``.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def moments_from_sums(total: float, total_sq: float, count: float) -> tuple[float, float]:
    """``(mean, unbiased variance)`` from a sum, a sum of squares and a count (sums that processes can add up)."""
    if count < 1:
        return 0.0, 1.0
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return mean, var * count / (count - 1) if count > 1 else var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, moments: tuple[float, float] | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the entries where ``mask`` is 1 (TRL's ``masked_whiten``).

    ``mean`` and the unbiased ``var`` are those of ``x[mask]`` unless ``moments`` gives them
    (e.g. summed over several processes with :func:`moments_from_sums`). With
    ``shift_mean=False`` the mean is added back (only the scale changes). Masked entries are 0.
    """
    mask = mask.to(x.dtype)
    if moments is None:
        moments = moments_from_sums(float((x * mask).sum()), float((x * x * mask).sum()), float(mask.sum()))
    mean, var = moments
    out = (x - mean) * (1.0 / math.sqrt(var + eps))
    if not shift_mean:
        out = out + mean
    return out * mask


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, as a loss: ``max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c))``.

    All inputs are ``[B, T]`` (one advantage per token); ``ratio = exp(logp - old_logp)``.
    Returns ``(per_token_loss, clipped)``, ``clipped`` marking the tokens where the clipped
    term is the larger one (its gradient is 0 there).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return torch.max(unclipped, clipped_loss), clipped_loss > unclipped


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss per token: ``0.5 * max((V - R)^2, (clip(V, V_old -+ c) - R)^2)``.

    ``V`` is the critic's current value, ``V_old`` its value in the rollout pass, ``R`` the
    GAE return, ``c = cliprange_value``. The clip keeps one update from moving a value far
    from ``V_old``: when the clipped prediction is further from ``R`` its square is the loss
    and no gradient flows. Returns ``(per_token_loss, clipped)``, ``clipped`` marking the
    tokens where the clipped term is the larger one.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.max(loss_unclipped, loss_clipped), loss_clipped > loss_unclipped


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``1 - Var(R - V) / Var(R)`` over the masked entries: 1 = the critic predicts the returns, 0 = no better
    than their mean, < 0 = worse; NaN when the returns do not vary."""
    if mask is None:
        mask = torch.ones_like(returns)
    keep = mask > 0
    r, v = returns[keep].double(), values[keep].double()
    if r.numel() < 2:
        return float("nan")
    var_r = r.var()
    if var_r <= 1e-12 * max(float(r.abs().max()) ** 2, 1.0):  # constant returns (up to rounding): undefined
        return float("nan")
    return float(1.0 - (r - v).var() / var_r)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """The entropy ``-sum_v p_v log p_v`` of ``softmax(logits)`` over the last dimension."""
    logits = logits.float()
    logz = torch.logsumexp(logits, dim=-1)
    return logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)


# =======================================================================================
# The critic
# =======================================================================================


class ValueHead(torch.nn.Module):
    """``Linear(hidden, 1)`` on a last hidden state; zero-initialised, so every value starts at 0."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.summary.weight)
        torch.nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[..., H]`` hidden states -> ``[...]`` values (float32)."""
        return self.summary(hidden.float()).squeeze(-1)


@dataclass
class Critic:
    """What predicts the values.

    Attributes:
        head: The value head (trained in full, LoRA or not).
        head_train: What the training forward goes through: ``head``, or its DDP wrapper.
        model: A separate critic LM (``critic_model``), or None: the head reads the policy's hidden states.
        train_model: ``model``, or its DDP wrapper (None without a separate critic).
    """

    head: ValueHead
    head_train: torch.nn.Module
    model: torch.nn.Module | None = None
    train_model: torch.nn.Module | None = None

    def modules(self) -> list[torch.nn.Module]:
        """The trained modules (the head, and the critic LM when there is one)."""
        return [self.head] + ([self.model] if self.model is not None else [])


def load_critic(
    config: PPOConfig, policy: modeling.Policy, processes: run.Processes, critic: torch.nn.Module | str | None = None
) -> Critic:
    """The value head on the policy, or ``critic`` / ``config.critic_model`` (a causal LM) with its own head.

    A separate critic is trained in full (no LoRA) in float32 on the policy's device; its
    tokenizer must be the policy's (ConfigError otherwise). An LM head that is not tied to the
    input embeddings is frozen: the critic reads hidden states only. With several processes
    each trained module is wrapped in ``DistributedDataParallel``, so its gradients are averaged.
    """
    source = critic if critic is not None else config.critic_model
    model: torch.nn.Module | None = None
    if source is None:
        hidden_size = policy.base().get_output_embeddings().weight.shape[1]
    else:
        if isinstance(source, str):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from rlvr.models import resolve_model

            path = resolve_model(source)
            try:
                critic_vocab = AutoTokenizer.from_pretrained(path).get_vocab()
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"PPOConfig.critic_model: {source!r} could not be loaded: {exc}") from exc
            if critic_vocab != policy.tokenizer.get_vocab():
                raise ConfigError(
                    f"PPOConfig.critic_model: {source!r} has a different tokenizer from the policy, and the critic reads "
                    "the policy's token ids; use a critic of the same tokenizer, or leave critic_model unset for a value "
                    "head on the policy"
                )
        else:
            model = source
        if model.get_input_embeddings().num_embeddings < len(policy.tokenizer):
            raise ConfigError(
                f"PPOConfig.critic_model: the critic's embeddings hold {model.get_input_embeddings().num_embeddings} tokens, "
                f"fewer than the policy's tokenizer ({len(policy.tokenizer)}); use a critic with the policy's tokenizer"
            )
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            output.requires_grad_(False)  # unused by the values; frozen so DDP expects no gradient for it
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if config.parallelism == "fsdp":
            modeling.check_shardable(model)
        else:  # sharded: each layer moves to the device as it is sharded
            model = model.to(policy.device)
        model.train()
        hidden_size = model.get_output_embeddings().weight.shape[1]
    head = ValueHead(hidden_size).to(policy.device)
    # the head computes in float32 (it casts its input): sharded, its parameters stay float32 too
    head_train = modeling.prepare_for_processes(head, config, processes, bf16=False, layers=False)
    train_model = modeling.prepare_for_processes(model, config, processes, policy.bf16) if model is not None else None
    return Critic(head, head_train, model, train_model)


class _Checkpointed(torch.nn.Module):
    """Every trained module under one name space, for checkpoints: ``policy.*``, ``value_head.*``, ``critic.*``."""

    def __init__(self, policy: torch.nn.Module, critic: Critic) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = critic.head
        if critic.model is not None:
            self.critic = critic.model


# =======================================================================================
# Trainer
# =======================================================================================


class PPOTrainer:
    """PPO with a learned critic on an :class:`~rlvr.environments.base.Environment` (or tasks + a reward).

    Args:
        config: The run's :class:`~rlvr.trainers.ppo_config.PPOConfig`.
        model: A causal LM module, or a name/path (``config.model`` when ``None``).
        env: The environment (its ``train`` split trains, its ``test`` split evaluates).
        reward: Overrides the environment's reward.
        train_tasks / eval_tasks: Override the environment's splits.
        tokenizer: Defaults to the model directory's tokenizer.
        peft_config: A ``peft`` config (overrides ``config.lora_r``).
        generator: A ready generator (otherwise built from ``config.generator``).
        critic: A separate critic: a causal LM module or a name/path (overrides ``config.critic_model``).
    """

    name = "ppo"

    def __init__(
        self,
        config: PPOConfig,
        model: torch.nn.Module | str | None = None,
        env: Environment | None = None,
        reward: Reward | None = None,
        train_tasks: Sequence[Task] | None = None,
        eval_tasks: Sequence[Task] | None = None,
        tokenizer: Any = None,
        peft_config: Any = None,
        generator: Generator | None = None,
        critic: torch.nn.Module | str | None = None,
    ) -> None:
        cfg = config
        if isinstance(env, MultiTurnEnvironment):
            raise ConfigError(
                f"PPO does not train on multi-turn environments ({env.name!r}): its GAE assumes the actions of an episode are "
                "one contiguous run of tokens, and an episode has the environment's messages between its turns. "
                "Use --trainer grpo, rloo or reinforce_pp"
            )
        online.set_up(self, config, env, reward, train_tasks, eval_tasks, model, tokenizer, peft_config)
        self.critic = load_critic(cfg, self.policy, self.processes, critic)
        self.policy_params = [p for p in self.model.parameters() if p.requires_grad]
        self.value_params = [p for m in self.critic.modules() for p in m.parameters() if p.requires_grad]
        groups = [{"params": self.policy_params}, {"params": self.value_params, "lr": cfg.value_learning_rate}]
        self.trained = _Checkpointed(self.model, self.critic)
        online.finish_set_up(self, generator, desc="PPO", params=groups)  # two parameter groups: policy, value side

    @classmethod
    def from_config(cls, config: PPOConfig) -> PPOTrainer:
        """What ``python -m rlvr.train --trainer ppo`` builds: the config's environment (and verifier) and models."""
        env, reward = online.environment_and_reward(config)
        return cls(config, env=env, reward=reward)

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` PPO iterations (evaluating before and after when configured); returns the eval summary."""
        return online.train(self)

    def training_step(self) -> dict[str, Any]:
        """One PPO iteration: rollouts, the rollout pass, GAE, ``ppo_epochs x num_mini_batches`` optimizer steps."""
        return online.training_step(self, self._train_on)

    def evaluate(self, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
        """Greedy held-out evaluation of the current policy, split over the processes."""
        return online.evaluate_policy(self.generator, self.data, self.config, self.processes, self.step, tasks)

    # ----------------------------------------------------------------- forwards
    def _forward(self, t: dict[str, torch.Tensor], train: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logp, values, policy_hidden)`` of a micro-batch, each ``[B, C(, H)]``; through the DDP wrappers when ``train``."""
        cfg, bf16 = self.config, self.policy.bf16
        policy = self.policy.train_model if train else self.model
        logp, hidden = modeling.completion_logprobs(policy, t, cfg.temperature, bf16, self.device, return_hidden=True)
        critic_hidden = hidden
        if self.critic.model is not None:
            critic = self.critic.train_model if train else self.critic.model
            _, critic_hidden = modeling.completion_logprobs(critic, t, cfg.temperature, bf16, self.device, return_hidden=True)
        head = self.critic.head_train if train else self.critic.head
        values = head(critic_hidden) * t["completion_mask"].to(self.device)
        return logp, values, hidden

    def _ref_logprobs(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        if self.ref_model is not None:
            return modeling.completion_logprobs(self.ref_model, t, cfg.temperature, self.policy.bf16, self.device)
        with self.model.disable_adapter():  # LoRA: the reference is the model with its adapters off
            return modeling.completion_logprobs(self.model, t, cfg.temperature, self.policy.bf16, self.device)

    def _entropy(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The policy's entropy at each completion position, from the hidden states the LM head reads (``[B, C]``)."""
        keep = mask.to(hidden.device) > 0
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.policy.bf16):
            logits = self.policy.base().get_output_embeddings()(hidden[keep])
        out = torch.zeros(mask.shape, device=hidden.device)
        return out.masked_scatter(keep, entropy_from_logits(logits.float() / self.config.temperature))

    # ----------------------------------------------------------------- one iteration
    def _train_on(self, batch: list[Rollout], metrics: dict[str, Any], timing: dict[str, float]) -> None:
        """The rollout pass, GAE and whitening, then ``ppo_epochs x num_mini_batches`` optimizer steps on ``batch``."""
        cfg = self.config
        start = time.perf_counter()
        B = len(batch)
        pad = self.tokenizer.pad_token_id
        ok = [r.outcome.status is Status.OK for r in batch]
        keep = torch.tensor(
            [o and not (cfg.mask_truncated_completions and r.generation.finish_reason == "length") for o, r in zip(ok, batch)],
            dtype=torch.float32,
        )
        scores = torch.tensor([r.outcome.score if o else 0.0 for o, r in zip(ok, batch)], dtype=torch.float32)
        metrics.update(
            rollouts.reward_metrics(self.processes.gather([rollouts.rollout_row(r) for r in batch]), cfg.correct_threshold)
        )

        # ---- the rollout pass: old log-probs, values, entropy, reference; rewards and GAE per micro-batch
        width = max(max(len(r.generation.completion_ids) for r in batch), 1)
        store = {
            k: torch.zeros(B, width) for k in ("old_logp", "old_values", "advantages", "returns", "kl", "entropy", "sampler")
        }
        loss_mask = torch.zeros(B, width)
        train_tokens = useful_tokens = 0
        mbs = cfg.micro_batch_size
        with torch.no_grad():
            for lo in range(0, B, mbs):
                idx = list(range(lo, min(lo + mbs, B)))
                t = rollouts.batch_tensors([batch[i] for i in idx], pad)
                counts = rollouts.token_counts(t)
                train_tokens, useful_tokens = train_tokens + counts[0], useful_tokens + counts[1]
                cmask = t["completion_mask"]
                C = cmask.shape[1]
                logp, values, hidden = self._forward(t, train=False)
                ref = self._ref_logprobs(t).cpu() if cfg.beta > 0 else None
                logp, values = logp.float().cpu(), values.float().cpu()
                rewards, kl = per_token_rewards(scores[idx], logp, ref, cmask, cfg.beta)
                advantages, returns = gae_advantages(rewards, values, cmask, cfg.gamma, cfg.lam)
                for key, value in (("old_logp", logp), ("old_values", values), ("advantages", advantages), ("returns", returns),
                                   ("kl", kl), ("entropy", self._entropy(hidden, cmask).cpu()), ("sampler", t["sampler_logp"])):  # fmt: skip
                    store[key][idx, :C] = value
                loss_mask[idx, :C] = cmask * keep[idx, None]
        # whitening statistics over every process's valid tokens
        adv = store["advantages"]
        tokens_all, adv_sum, adv_sq = self.processes.sum(
            float(loss_mask.sum()), float((adv * loss_mask).sum()), float((adv**2 * loss_mask).sum())
        )
        if cfg.whiten_advantages:
            store["advantages"] = masked_whiten(adv, loss_mask, moments=moments_from_sums(adv_sum, adv_sq, tokens_all))
        self._rollout_metrics(metrics, store, loss_mask, adv_sum, tokens_all, keep)
        metrics["train_tokens"], metrics["useful_tokens"] = (int(x) for x in self.processes.sum(train_tokens, useful_tokens))
        timing["train_time_s"] += time.perf_counter() - start

        # ---- ppo_epochs passes, num_mini_batches optimizer steps each
        start = time.perf_counter()
        n = cfg.num_generations
        groups = [list(range(g, min(g + n, B))) for g in range(0, B, n)]
        sums = dict.fromkeys(("policy", "value", "clip", "vclip", "approx_kl", "tokens", "steps", "grad", "vgrad"), 0.0)
        for epoch in range(cfg.ppo_epochs):
            shuffle = torch.Generator().manual_seed(sampling_seed(cfg.seed, self.step, -1 - epoch, self.rank))
            order = [i for g in torch.randperm(len(groups), generator=shuffle).tolist() for i in groups[g]]
            for mini in np.array_split(np.array(order, dtype=np.int64), cfg.num_mini_batches):
                if len(mini):
                    self._optimizer_step(batch, mini.tolist(), store, loss_mask, sums)
        metrics["lr"], metrics["value_lr"] = self.optimizer.param_groups[0]["lr"], self.optimizer.param_groups[1]["lr"]
        self.scheduler.step()
        self.step += 1
        timing["train_time_s"] += time.perf_counter() - start

        policy_sum, value_sum, clip, vclip, approx_kl, tokens = self.processes.sum(
            sums["policy"], sums["value"], sums["clip"], sums["vclip"], sums["approx_kl"], sums["tokens"]
        )
        denom = max(tokens, 1.0)
        metrics["policy_loss"], metrics["value_loss"] = policy_sum / denom, value_sum / denom
        metrics["loss"] = metrics["policy_loss"] + cfg.vf_coef * metrics["value_loss"]
        metrics["policy_clip_frac"], metrics["value_clip_frac"] = clip / denom, vclip / denom
        metrics["approx_kl"] = approx_kl / denom
        metrics["grad_norm"] = sums["grad"] / max(sums["steps"], 1.0)
        metrics["value_grad_norm"] = sums["vgrad"] / max(sums["steps"], 1.0)
        metrics["optimizer_steps"] = int(sums["steps"])
        online.end_step(self, metrics, timing)

    def _rollout_metrics(
        self,
        metrics: dict[str, Any],
        store: dict[str, torch.Tensor],
        mask: torch.Tensor,
        adv_sum: float,
        tokens: float,
        keep: torch.Tensor,
    ) -> None:
        """Metrics of the rollout pass over the valid tokens of every process: values, returns, KL, entropy, IS ratios."""
        cfg = self.config
        values, returns = store["old_values"], store["returns"]
        value_sum, return_sum, kl_sum, entropy_sum, n_masked = self.processes.sum(
            float((values * mask).sum()),
            float((returns * mask).sum()),
            float((store["kl"] * mask).sum()),
            float((store["entropy"] * mask).sum()),
            float(len(keep) - keep.sum()),
        )
        denom = max(tokens, 1.0)
        metrics["value_mean"], metrics["return_mean"] = value_sum / denom, return_sum / denom
        metrics["advantage_mean"] = adv_sum / denom  # before whitening
        metrics["entropy"] = entropy_sum / denom
        if cfg.beta > 0:
            metrics["kl"] = kl_sum / denom
        metrics["n_masked"] = int(n_masked)
        pairs = self.processes.gather(list(zip(values[mask > 0].tolist(), returns[mask > 0].tolist())))
        ev = explained_variance(torch.tensor([v for v, _ in pairs]), torch.tensor([r for _, r in pairs])) if pairs else math.nan
        metrics["explained_variance"] = ev if math.isfinite(ev) else None
        sampler = store["sampler"]
        if cfg.importance_sampling_correction and bool(sampler.any()):
            _, raw = truncated_importance_weights(store["old_logp"], sampler, cfg.importance_sampling_cap)
            raw = torch.tensor(self.processes.gather(raw[mask > 0].tolist()))
            if raw.numel():
                metrics["is_ratio_mean"] = float(raw.mean())
                metrics["is_ratio_p5"] = float(torch.quantile(raw, 0.05))
                metrics["is_ratio_p95"] = float(torch.quantile(raw, 0.95))
                metrics["is_frac_capped"] = float((raw > cfg.importance_sampling_cap).float().mean())

    def _optimizer_step(
        self,
        batch: list[Rollout],
        mini: list[int],
        store: dict[str, torch.Tensor],
        loss_mask: torch.Tensor,
        sums: dict[str, float],
    ) -> None:
        """One optimizer step on the mini-batch ``mini`` (indices into ``batch``), in micro-batches."""
        cfg = self.config
        (tokens,) = self.processes.sum(float(loss_mask[mini].sum()))  # the whole mini-batch's, over every process
        if tokens == 0:  # nothing valid anywhere (every outcome failed or was masked): no step, not even Adam's momentum
            return
        denom = tokens
        scale = float(self.world_size)  # DistributedDataParallel averages the gradients; the loss is already a global mean
        trained = (self.policy.train_model, self.critic.head_train, self.critic.train_model)
        micro = [mini[i : i + cfg.micro_batch_size] for i in range(0, len(mini), cfg.micro_batch_size)]
        self.optimizer.zero_grad(set_to_none=True)
        for j, idx in enumerate(micro):
            t = rollouts.batch_tensors([batch[i] for i in idx], self.tokenizer.pad_token_id)
            C = t["completion_mask"].shape[1]
            old_logp, old_values, advantages, returns, sampler, mask = (
                x[idx, :C].to(self.device)
                for x in (
                    store["old_logp"],
                    store["old_values"],
                    store["advantages"],
                    store["returns"],
                    store["sampler"],
                    loss_mask,
                )
            )
            with contextlib.ExitStack() as stack:
                for m in trained:  # with several processes, gradients are averaged at the last micro-batch
                    stack.enter_context(modeling.sync_gradients(m, j == len(micro) - 1))
                logp, values, _ = self._forward(t, train=True)
                policy_loss, clipped = ppo_policy_loss(logp, old_logp, advantages, cfg.cliprange)
                if cfg.importance_sampling_correction and bool(sampler.any()):
                    weights, _ = truncated_importance_weights(old_logp, sampler, cfg.importance_sampling_cap)
                    policy_loss = policy_loss * weights
                value_loss, vclipped = clipped_value_loss(values, old_values, returns, cfg.cliprange_value)
                loss = ((policy_loss + cfg.vf_coef * value_loss) * mask).sum() / denom
                (loss * scale).backward()
            with torch.no_grad():
                sums["policy"] += float((policy_loss * mask).sum())
                sums["value"] += float((value_loss * mask).sum())
                sums["clip"] += float((clipped.float() * mask).sum())
                sums["vclip"] += float((vclipped.float() * mask).sum())
                sums["approx_kl"] += float((0.5 * (logp - old_logp) ** 2 * mask).sum())
                sums["tokens"] += float(mask.sum())
        limit = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad = float(torch.nn.utils.clip_grad_norm_(self.policy_params, limit))
        vgrad = float(torch.nn.utils.clip_grad_norm_(self.value_params, limit))
        sums["grad"] += grad
        sums["vgrad"] += vgrad
        sums["steps"] += 1
        if math.isfinite(grad) and math.isfinite(vgrad):
            self.optimizer.step()
        else:  # a NaN / inf gradient is not applied; the step's grad_norm says so (run.note_bad_step)
            self.optimizer.zero_grad(set_to_none=True)

    # ----------------------------------------------------------------- saving / resuming
    def save_model(self, path: str | os.PathLike) -> None:
        """The policy in Hugging Face format (LoRA merged) with its tokenizer, and the critic next to it:
        ``value_head.safetensors`` (a head on the policy) or ``critic/`` (the critic LM, its tokenizer and
        ``critic/value_head.safetensors``)."""
        from safetensors.torch import save_file

        path = Path(path)
        modeling.save_policy(self.policy, path, self.processes)
        head_dir = path
        if self.critic.model is not None:
            head_dir = path / "critic"
            modeling.save_pretrained(self.critic.model, head_dir, self.processes, self.tokenizer)
        state = modeling.full_state_dict(self.critic.head)  # gathered when sharded: every process takes part
        if self.is_main:
            save_file(state, str(head_dir / "value_head.safetensors"))
        self.processes.barrier()

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Everything ``resume`` needs: policy, value head and critic weights, optimizer, scheduler, RNG states, step, data order."""
        return online.checkpoint(self, path, model=self.trained)

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint directory, or from the latest checkpoint in a run directory."""
        self.step = online.resume_run(self, path, model=self.trained)
