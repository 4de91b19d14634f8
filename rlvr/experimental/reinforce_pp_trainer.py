r"""REINFORCE++ (experimental): PPO's clipped token loss with REINFORCE returns, no critic.

EXPERIMENTAL: may change or be removed without notice. Registered as ``--trainer reinforce_pp``.

One optimizer step (``ReinforcePPTrainer.training_step``):

1. **Prompts, generation, scoring**: as every online trainer
   (:func:`rlvr.trainers.online.collect_groups`).
2. **Baseline** (``baseline = group_mean``, REINFORCE++-baseline): each OK score minus the
   mean OK score of its prompt's group; not-OK outcomes (timeout, error, abstain) are left
   out of the mean and out of the loss.
3. **Per-token rewards** (:func:`token_rewards`): ``-beta * (logp_old - logp_ref)`` on every
   completion token (the KL penalty lives in the reward, per token), plus the sequence's
   (baselined) score on its last token.
4. **Returns** (:func:`discounted_returns`): ``G_t = r_t + gamma * G_{t+1}``; no critic, so
   the advantage is the return itself...
5. **...normalised over the whole global batch** (:func:`global_whiten`): mean and std over
   every counted token of the step, over all processes -- the "++" that replaces a learned
   critic's variance reduction.
6. **Loss**: PPO's clipped objective per token (:func:`token_clipped_loss`), the token mean
   over the step, with truncated importance weights for the generator/trainer mismatch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlvr.environments.base import Environment, Task
from rlvr.experimental.reinforce_pp_config import ReinforcePPConfig
from rlvr.generation import Generator
from rlvr.rewards import Reward, Status
from rlvr.trainers import modeling, online, rollouts
from rlvr.trainers.grpo_trainer import truncated_importance_weights
from rlvr.trainers.rollouts import Rollout

__all__ = ["ReinforcePPTrainer", "discounted_returns", "global_whiten", "group_mean_baseline", "token_clipped_loss", "token_rewards"]


# =======================================================================================
# Pure math
# =======================================================================================


def group_mean_baseline(scores: torch.Tensor, valid: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Each valid score minus the mean valid score of its group (``[G * n]`` flat, group-major); invalid -> 0."""
    r = scores.double().view(-1, num_generations)
    v = valid.view(-1, num_generations).double()
    mean = (r * v).sum(1, keepdim=True) / v.sum(1, keepdim=True).clamp(min=1)
    return ((r - mean) * v).flatten().float()


def token_rewards(
    scores: torch.Tensor, mask: torch.Tensor, beta: float, old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-token rewards ``[B, T]``: ``-beta * (old_logp - ref_logp)`` on each token of ``mask``,
    plus ``scores[b]`` on the last token of sequence b (the last position where ``mask`` is 1;
    a multi-turn episode's mask has gaps where the environment spoke)."""
    mask = mask.float()
    rewards = torch.zeros_like(mask)
    if beta > 0 and old_logp is not None and ref_logp is not None:
        rewards = -beta * (old_logp.float() - ref_logp.float()) * mask
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(mask > 0, positions, -1).max(-1).values
    has = last >= 0
    rows = torch.arange(mask.shape[0])[has]
    rewards[rows, last[has]] += scores.float()[has]
    return rewards


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = r_t + gamma * G_{t'}`` over each row's masked tokens, ``t'`` the next masked token
    (0 outside the mask): the environment's tokens between an episode's turns are skipped, so
    an earlier turn's tokens get the return of the later ones."""
    out = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t] > 0
        running = torch.where(m, rewards[:, t] + gamma * running, running)
        out[:, t] = running * m
    return out


def global_whiten(
    values: torch.Tensor, mask: torch.Tensor, total: tuple[float, float, float] | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` with mean and (unbiased) std over the masked entries; 0 outside the mask.

    ``total = (count, sum, sum of squares)`` of the whole step's masked entries over all
    processes, when ``values`` is one process's share; by default this tensor's own.
    """
    m = mask.double()
    x = values.double()
    count, s, sq = total if total is not None else (float(m.sum()), float((x * m).sum()), float((x * x * m).sum()))
    if count < 2:
        return torch.zeros_like(values)
    mean = s / count
    var = max((sq - count * mean * mean) / (count - 1), 0.0)
    return (((x - mean) / (var**0.5 + eps)) * m).float()


def token_clipped_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``-min(ratio * A, clip(ratio) * A)`` per token with per-token advantages ``[B, T]``;
    returns ``(per_token_loss, clipped_low, clipped_high)``."""
    ratio = torch.exp(logp - old_logp)
    loss = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * advantages)
    return loss, (ratio < 1 - epsilon_low) & (advantages < 0), (ratio > 1 + epsilon_high) & (advantages > 0)


# =======================================================================================
# Trainer
# =======================================================================================

_BATCH_KEYS = (*rollouts.BATCH_METRICS, "return_mean", "kl")


class ReinforcePPTrainer:
    """REINFORCE++ (experimental) on an environment (or tasks + a reward); the arguments are GRPOTrainer's."""

    name = "reinforce_pp"

    def __init__(
        self,
        config: ReinforcePPConfig,
        model: torch.nn.Module | str | None = None,
        env: Environment | None = None,
        reward: Reward | None = None,
        train_tasks: Sequence[Task] | None = None,
        eval_tasks: Sequence[Task] | None = None,
        tokenizer: Any = None,
        peft_config: Any = None,
        generator: Generator | None = None,
    ) -> None:
        online.set_up(self, config, env, reward, train_tasks, eval_tasks, model, tokenizer, peft_config)
        online.finish_set_up(self, generator, desc="REINFORCE++")

    @classmethod
    def from_config(cls, config: ReinforcePPConfig) -> ReinforcePPTrainer:
        """What ``python -m rlvr.train --trainer reinforce_pp`` builds."""
        env, reward = online.environment_and_reward(config)
        return cls(config, env=env, reward=reward)

    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (evaluating before and after when configured); returns the eval summary."""
        return online.train(self)

    def training_step(self) -> dict[str, Any]:
        """One generation batch: prompts, rollouts, returns, ``num_iterations`` optimizer steps."""
        return online.training_step(self, self._train_on)

    def evaluate(self, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
        """Greedy held-out evaluation of the current policy, split over the processes."""
        return online.evaluate_policy(self.generator, self.data, self.config, self.processes, self.step, tasks)

    def _logprobs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return modeling.completion_logprobs(model, batch, self.config.temperature, self.policy.bf16, self.device)

    def _train_on(self, batch: list[Rollout], metrics: dict[str, Any], timing: dict[str, float]) -> None:
        cfg = self.config
        metrics.update(rollouts.reward_metrics(self.processes.gather([rollouts.rollout_row(r) for r in batch]), cfg.correct_threshold))
        mbs = cfg.micro_batch_size
        micro = [batch[i : i + mbs] for i in range(0, len(batch), mbs)]
        tensors = [rollouts.batch_tensors(m, self.tokenizer.pad_token_id) for m in micro]
        valid = torch.tensor([r.outcome.status is Status.OK for r in batch])
        # a not-OK outcome says nothing about the completion: out of the baseline AND of the loss
        masks = [m * valid[i : i + mbs, None].float() for i, m in zip(range(0, len(batch), mbs), online.loss_masks(micro, tensors, cfg.mask_truncated_completions))]
        metrics.update(online.token_metrics(tensors, self.processes))

        scores = torch.tensor([r.outcome.score if r.outcome.status is Status.OK else 0.0 for r in batch], dtype=torch.float32)
        if cfg.baseline == "group_mean":
            scores = group_mean_baseline(scores, valid, cfg.num_generations)
        old_logps: list[torch.Tensor | None] = [None] * len(micro)
        ref_logps: list[torch.Tensor | None] = [None] * len(micro)
        if cfg.beta > 0:
            with torch.no_grad():
                old_logps = [self._logprobs(self.model, t).cpu() for t in tensors]
            ref_logps = [r.cpu() for r in online.reference_logprobs(self.policy, self.ref_model, tensors, cfg.temperature)]
        returns = []
        for j, (i, mask) in enumerate(zip(range(0, len(batch), mbs), masks)):
            r = token_rewards(scores[i : i + mbs], mask, cfg.beta, old_logps[j], ref_logps[j])
            returns.append(discounted_returns(r, mask, cfg.gamma))
        total = self.processes.sum(
            sum(float(m.sum()) for m in masks),
            sum(float((g * m).sum()) for g, m in zip(returns, masks)),
            sum(float((g * g * m).sum()) for g, m in zip(returns, masks)),
        )
        metrics["return_mean"] = total[1] / max(total[0], 1.0)
        if cfg.beta > 0:
            kl_sum, kl_n = self.processes.sum(
                sum(float(((o - r) * m).sum()) for o, r, m in zip(old_logps, ref_logps, masks)), total[0]
            )
            metrics["kl"] = kl_sum / max(kl_n, 1.0)
        advantages = [global_whiten(g, m, tuple(total)) for g, m in zip(returns, masks)]
        num_tokens = max(total[0], 1.0)
        scale = float(self.world_size)

        stats: dict[str, list] = {k: [] for k in ("clip_low", "clip_high", "is_raw", "tokens", "neg_logp")}
        for iteration in range(cfg.num_iterations):
            start = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for j, t in enumerate(tensors):
                sync = self.world_size == 1 or j == len(tensors) - 1
                with modeling.sync_gradients(self.policy.train_model, sync):
                    logp = self._logprobs(self.policy.train_model, t)
                    mask = masks[j].to(logp.device)
                    if old_logps[j] is None:
                        old_logps[j] = logp.detach()
                    old = old_logps[j].to(logp.device)
                    per_token, low, high = token_clipped_loss(logp, old, advantages[j].to(logp.device), cfg.epsilon, cfg.epsilon_high)
                    if cfg.importance_sampling_correction and bool(t["sampler_logp"].any()):
                        weights, raw = truncated_importance_weights(old, t["sampler_logp"].to(logp.device), cfg.importance_sampling_cap)
                        per_token = per_token * weights
                        if iteration == 0:
                            stats["is_raw"].append(raw[mask > 0])
                    loss = (per_token * mask).sum() / num_tokens
                    (loss * scale).backward()
                total_loss += float(loss.detach())
                stats["clip_low"].append(float((low.float() * mask).sum()))
                stats["clip_high"].append(float((high.float() * mask).sum()))
                stats["tokens"].append(float(mask.sum()))
                stats["neg_logp"].append(float((-logp.detach() * mask).sum()))
            (total_loss,) = self.processes.sum(total_loss)
            metrics["grad_norm"], metrics["lr"] = online.optimizer_step(self.model, self.optimizer, self.scheduler, cfg.max_grad_norm, total_loss)
            self.step += 1
            timing["train_time_s"] += time.perf_counter() - start
            metrics["loss"] = total_loss
            if iteration < cfg.num_iterations - 1:
                self._end_of_step(metrics, timing, stats)
                metrics = {k: metrics[k] for k in _BATCH_KEYS if k in metrics}
                timing = rollouts.new_timing()
                stats = {k: [] for k in stats}
        self._end_of_step(metrics, timing, stats)

    def _end_of_step(self, metrics: dict[str, Any], timing: dict[str, float], stats: dict[str, list]) -> None:
        tokens, low, high, neg_logp = self.processes.sum(
            sum(stats["tokens"]), sum(stats["clip_low"]), sum(stats["clip_high"]), sum(stats["neg_logp"])
        )
        metrics["clip_ratio_low"] = low / max(tokens, 1.0)
        metrics["clip_ratio_high"] = high / max(tokens, 1.0)
        metrics["entropy"] = neg_logp / max(tokens, 1.0)  # -log pi of sampled tokens: a sample estimate of the entropy
        metrics.update(online.importance_metrics(stats["is_raw"], self.config.importance_sampling_cap))
        online.end_step(self, metrics, timing)

    def save_model(self, path: str | os.PathLike) -> None:
        """The policy in Hugging Face format (LoRA merged) plus the tokenizer."""
        modeling.save_policy(self.policy, path, self.processes)

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Everything ``resume`` needs: weights, optimizer, scheduler, RNG states, step, data order (and the batches in flight)."""
        return online.checkpoint(self, path)

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint directory, or from the latest checkpoint in a run directory."""
        self.step = online.resume_run(self, path)
