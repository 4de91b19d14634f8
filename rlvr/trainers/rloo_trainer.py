r"""RLOO: REINFORCE Leave-One-Out, readable top to bottom.

One optimizer step (``RLOOTrainer.training_step``):

1. **Prompts, generation, scoring**: as every online trainer
   (:func:`rlvr.trainers.online.collect_groups`): ``num_generations`` completions per
   prompt from the generator (vLLM or ``transformers``), seeded by ``(seed, step, round)``,
   scored by the Reward; dynamic sampling (DAPO) and reward overlap when configured.
2. **Rewards** (:func:`kl_penalized_rewards`): each OK completion's score, clamped to
   ``reward_clip_range`` when set, minus ``beta * sum_t (logp_old - logp_ref)``: the KL to
   the reference model is part of the REWARD (first-order log-ratio summed over the
   sequence, as in the RLOO paper), not a term of the loss.
3. **Leave-one-out advantages** (:func:`rloo_advantages`): a completion's reward minus the
   mean reward of the OTHER OK completions of its prompt. Outcomes that are not ``OK``
   (timeout, error, abstain) get advantage 0 and are left out of their neighbours'
   baselines; a group with fewer than two OK outcomes contributes nothing. Optionally
   normalised over the whole step (:func:`normalize_advantages`).
4. **Loss**, for ``num_iterations`` optimizer steps on this batch, in micro-batches
   (:func:`sequence_clipped_loss`): the SEQUENCE-level ratio
   ``exp(sum_t logp - sum_t logp_old)``, clipped to ``[1 - epsilon, 1 + epsilon_high]``,
   times the advantage; the mean over the step's sequences. The generator/trainer mismatch
   is corrected per sequence (:func:`sequence_importance_weights`,
   ``min(exp(sum_t logp_old - logp_sampler), cap)``). A sequence of advantage 0 (a tied
   group without KL, a group without a baseline, a not-OK outcome) has loss and gradient
   exactly 0 and is left out of the forward/backward passes (``skip_zero_advantage``).
5. **Sync** the generator's weights.

Compared with GRPO (:mod:`rlvr.trainers.grpo_trainer`): the baseline excludes the
completion itself (unbiased), advantages are not divided by the group std, the ratio and
the loss are per sequence instead of per token, and the KL lives in the reward. The pure
math (steps 2-4) lives in module-level functions tested against hand-derived values in
``tests/test_rloo.py``; plumbing is the shared modules' (:mod:`rlvr.trainers.run`,
:mod:`~rlvr.trainers.modeling`, :mod:`~rlvr.trainers.rollouts`, :mod:`~rlvr.trainers.online`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlvr.environments.base import Environment, Task
from rlvr.generation import Generator
from rlvr.rewards import Reward, Status
from rlvr.trainers import modeling, online, rollouts
from rlvr.trainers.rloo_config import RLOOConfig
from rlvr.trainers.rollouts import Rollout

__all__ = [
    "RLOOTrainer",
    "kl_penalized_rewards",
    "normalize_advantages",
    "rloo_advantages",
    "sequence_clipped_loss",
    "sequence_importance_weights",
]


# =======================================================================================
# Pure math
# =======================================================================================


def kl_penalized_rewards(
    scores: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    mask: torch.Tensor,
    beta: float,
    clip_range: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence rewards with the KL to the reference folded in: ``clip(score) - beta * sum_t (old_logp - ref_logp)``.

    ``scores`` is ``[B]``; ``old_logp``, ``ref_logp`` and ``mask`` are ``[B, T]`` (the
    log-probs under the weights that sampled the batch and under the reference). The
    per-token KL estimate is the first-order log-ratio (it can be negative per token),
    summed over the completion's tokens. Returns ``(rewards [B], kl [B])``; with
    ``beta = 0`` the KL is zeros and the log-probs are not needed.
    """
    rewards = scores.double()
    if clip_range is not None:
        rewards = rewards.clamp(min=clip_range[0], max=clip_range[1])
    if beta == 0 or old_logp is None or ref_logp is None:
        return rewards.float(), torch.zeros_like(rewards).float()
    kl = ((old_logp.double() - ref_logp.double()) * mask.double()).sum(-1)
    return (rewards - beta * kl).float(), kl.float()


def rloo_advantages(rewards: torch.Tensor, valid: torch.Tensor, num_generations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out advantages: ``A_i = r_i - mean_{j != i, j valid} r_j`` within each group.

    ``rewards`` and ``valid`` are flat ``[G * num_generations]`` tensors, group-major.
    Invalid entries (not-OK outcomes) are in no baseline and get advantage 0; a group with
    fewer than two valid entries gets advantage 0 everywhere (no baseline exists). With
    ``k`` valid rewards of sum ``S``, ``A_i = r_i - (S - r_i) / (k - 1) = k / (k - 1) * (r_i - S / k)``.

    Returns ``(advantages [N], usable [G])``: ``usable`` marks groups with two or more valid rewards.
    """
    r = rewards.double().view(-1, num_generations)
    v = valid.view(-1, num_generations).double()
    count = v.sum(1, keepdim=True)
    total = (r * v).sum(1, keepdim=True)
    usable = count >= 2
    baseline = (total - r * v) / (count - 1).clamp(min=1)
    adv = torch.where(usable, (r - baseline) * v, torch.zeros_like(r))
    return adv.flatten().float(), usable.flatten()


def normalize_advantages(
    advantages: torch.Tensor, weight: torch.Tensor, total: tuple[float, float, float] | None = None, eps: float = 1e-4
) -> torch.Tensor:
    """``(A - mean) / (std + eps)`` over the entries with ``weight > 0``; the others stay 0.

    ``total = (count, sum, sum of squares)`` of the WHOLE step's weighted entries (all
    processes) when this is one process's share; by default this tensor's own. The std is
    the unbiased one.
    """
    w = (weight > 0).double()
    a = advantages.double()
    count, s, sq = total if total is not None else (float(w.sum()), float((a * w).sum()), float((a * a * w).sum()))
    if count < 2:
        return advantages * 0.0
    mean = s / count
    var = max((sq - count * mean * mean) / (count - 1), 0.0)
    return (((a - mean) / (var**0.5 + eps)) * w).float()


def sequence_clipped_loss(
    seq_logp: torch.Tensor, seq_old_logp: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped objective on the SEQUENCE ratio, as a loss: ``-min(ratio * A, clip(ratio) * A)`` per sequence.

    ``seq_logp`` / ``seq_old_logp`` are ``[B]`` sums of the completion tokens' log-probs;
    ``ratio = exp(seq_logp - seq_old_logp)`` clipped to ``[1 - epsilon_low, 1 + epsilon_high]``.
    Returns ``(per_sequence_loss [B], clipped_low [B], clipped_high [B])``; the masks mark
    sequences where the clip is active (ratio below the band with A < 0, above with A > 0).
    """
    ratio = torch.exp(seq_logp - seq_old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * advantages
    loss = -torch.min(unclipped, clipped)
    return loss, (ratio < 1 - epsilon_low) & (advantages < 0), (ratio > 1 + epsilon_high) & (advantages > 0)


def sequence_importance_weights(
    seq_old_logp: torch.Tensor, seq_sampler_logp: torch.Tensor, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights per sequence for the generator/trainer mismatch.

    The completions were sampled from the generator's ``q``, the objective is written for the
    trainer's ``pi_old``: each sequence's loss is weighted by
    ``min(pi_old(y) / q(y), cap) = min(exp(sum_t old_logp - sum_t sampler_logp), cap)``.
    Returns ``(weights [B], raw_ratio [B])``, without gradient.
    """
    raw = torch.exp(seq_old_logp.detach().double() - seq_sampler_logp.detach().double()).float()
    return torch.clamp(raw, max=cap), raw


# =======================================================================================
# Trainer
# =======================================================================================

# metrics that describe a generation batch, kept on each of its num_iterations steps
_BATCH_KEYS = (*rollouts.BATCH_METRICS, "skipped_rows", "frac_usable_groups", "advantage_mean", "advantage_std", "kl", "kl_penalized_reward_mean")


class RLOOTrainer:
    """RLOO on an :class:`~rlvr.environments.base.Environment` (or tasks + a reward).

    Args:
        config: The run's :class:`RLOOConfig`.
        model: A causal LM module, or a name/path (``config.model`` when ``None``).
        env: The environment (its ``train`` split trains, its ``test`` split evaluates).
        reward: Overrides the environment's reward.
        train_tasks / eval_tasks: Override the environment's splits.
        tokenizer: Defaults to the model directory's tokenizer.
        peft_config: A ``peft`` config (overrides ``config.lora_r``).
        generator: A ready generator (otherwise built from ``config.generator``).
    """

    name = "rloo"

    def __init__(
        self,
        config: RLOOConfig,
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
        online.finish_set_up(self, generator, desc="RLOO")

    @classmethod
    def from_config(cls, config: RLOOConfig) -> RLOOTrainer:
        """What ``python -m rlvr.train --trainer rloo`` builds: the config's environment (and verifier) and model."""
        env, reward = online.environment_and_reward(config)
        return cls(config, env=env, reward=reward)

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (evaluating before and after when configured); returns the eval summary."""
        return online.train(self)

    def training_step(self) -> dict[str, Any]:
        """One generation batch: prompts, rollouts, rewards, ``num_iterations`` optimizer steps."""
        return online.training_step(self, self._train_on)

    def evaluate(self, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
        """Greedy held-out evaluation of the current policy, split over the processes."""
        return online.evaluate_policy(self.generator, self.data, self.config, self.processes, self.step, tasks)

    def _logprobs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return modeling.completion_logprobs(model, batch, self.config.temperature, self.policy.bf16, self.device)

    # ----------------------------------------------------------------- one step
    def _train_on(self, batch: list[Rollout], metrics: dict[str, Any], timing: dict[str, float]) -> None:
        """Rewards and leave-one-out advantages, then ``num_iterations`` optimizer steps on this generation batch."""
        cfg = self.config
        rows = self.processes.gather([rollouts.rollout_row(r) for r in batch])
        metrics.update(rollouts.reward_metrics(rows, cfg.correct_threshold))

        mbs = cfg.micro_batch_size
        tokens = online.loss_token_counts(batch, cfg.mask_truncated_completions)
        valid = torch.tensor([r.outcome.status is Status.OK for r in batch])
        scores = torch.tensor([r.outcome.score if r.outcome.status is Status.OK else 0.0 for r in batch], dtype=torch.float32)
        seq_old_all: torch.Tensor | None = None
        if cfg.beta > 0:
            # the KL penalty needs the sampling weights' and the reference's log-probs of EVERY row, BEFORE any update
            full = [batch[i : i + mbs] for i in range(0, len(batch), mbs)]
            full_tensors = [rollouts.batch_tensors(m, self.tokenizer.pad_token_id) for m in full]
            full_masks = online.loss_masks(full, full_tensors, cfg.mask_truncated_completions)
            with torch.no_grad():
                old_logps = [self._logprobs(self.model, t) for t in full_tensors]
            ref_logps = online.reference_logprobs(self.policy, self.ref_model, full_tensors, cfg.temperature)
            width = self._width(full_tensors)
            full_mask = torch.cat([_pad_to(t["completion_mask"], width) for t in full_tensors])
            old_all = torch.cat([_pad_to(o.cpu(), width) for o in old_logps])
            ref_all = torch.cat([_pad_to(o.cpu(), width) for o in ref_logps])
            rewards, kl = kl_penalized_rewards(scores, old_all, ref_all, full_mask, cfg.beta, cfg.reward_clip_range)
            seq_old_all = torch.cat([(o.cpu() * m).sum(-1) for o, m in zip(old_logps, full_masks)])
        else:
            rewards, kl = kl_penalized_rewards(scores, None, None, valid.float(), 0.0, cfg.reward_clip_range)
        advantages, usable = rloo_advantages(rewards, valid, cfg.num_generations)
        # a sequence counts when its advantage is defined: OK, in a group with a baseline, and not masked out
        in_loss = valid & usable.repeat_interleave(cfg.num_generations) & (tokens > 0)
        if cfg.normalize_advantages:
            w = in_loss.double()
            a = advantages.double()
            total = self.processes.sum(float(w.sum()), float((a * w).sum()), float((a * a * w).sum()))
            advantages = normalize_advantages(advantages, in_loss.float(), tuple(total))
        advantages = advantages * in_loss.float()

        ok_kl = kl[valid]
        n_usable, n_groups, kl_sum, kl_n, pen_sum, adv_sum, adv_sq, adv_n = self.processes.sum(
            float(usable.sum()),
            float(usable.numel()),
            float(ok_kl.sum()),
            float(ok_kl.numel()),
            float(rewards[valid].sum()),
            float(advantages[in_loss].sum()),
            float((advantages[in_loss] ** 2).sum()),
            float(in_loss.sum()),
        )
        metrics["frac_usable_groups"] = n_usable / max(n_groups, 1.0)
        metrics["advantage_mean"] = adv_sum / max(adv_n, 1.0)
        metrics["advantage_std"] = max(adv_sq / max(adv_n, 1.0) - metrics["advantage_mean"] ** 2, 0.0) ** 0.5
        if cfg.beta > 0:
            metrics["kl"] = kl_sum / max(kl_n, 1.0)
            metrics["kl_penalized_reward_mean"] = pen_sum / max(kl_n, 1.0)

        # the step's loss is the mean over ALL its sequences (every process); DDP averages gradients,
        # so each process's loss is scaled by world_size
        (num_sequences,) = self.processes.sum(len(batch))
        scale = float(self.world_size)
        # the loss only counts sequences with an advantage: the others (advantage 0) have loss
        # and gradient exactly 0 and are not computed
        train = advantages != 0 if cfg.skip_zero_advantage else torch.ones(len(batch), dtype=torch.bool)
        chunks = online.rows_to_train(train, mbs, [len(r.generation.completion_ids) for r in batch], self.world_size)
        metrics["skipped_rows"] = int(self.processes.sum(len(batch) - sum(len(c) for c in chunks))[0])
        micro = [[batch[i] for i in c] for c in chunks]
        tensors = [rollouts.batch_tensors(m, self.tokenizer.pad_token_id) for m in micro]
        masks = online.loss_masks(micro, tensors, cfg.mask_truncated_completions)
        metrics.update(online.token_metrics(tensors, self.processes))
        adv_chunks = [advantages[c] for c in chunks]
        # the sampling weights' sequence log-probs: from the KL pass above, else the first iteration's forward
        seq_olds: list[torch.Tensor | None] = [None] * len(chunks) if seq_old_all is None else [seq_old_all[c] for c in chunks]
        stats: dict[str, list] = {k: [] for k in ("clip_low", "clip_high", "is_raw", "seqs", "neg_logp", "tokens", "approx_kl")}
        for iteration in range(cfg.num_iterations):
            start = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for j, t in enumerate(tensors):
                sync = self.world_size == 1 or j == len(tensors) - 1  # gradients averaged once, at the last micro-batch
                with modeling.sync_gradients(self.policy.train_model, sync):
                    logp = self._logprobs(self.policy.train_model, t)
                    mask = masks[j].to(logp.device)
                    seq_logp = (logp * mask).sum(-1)
                    if seq_olds[j] is None:  # first iteration without KL: the current weights sampled this batch
                        seq_olds[j] = seq_logp.detach()
                    seq_old = seq_olds[j].to(logp.device)
                    adv = adv_chunks[j].to(logp.device)
                    per_seq, clip_low, clip_high = sequence_clipped_loss(seq_logp, seq_old, adv, cfg.epsilon, cfg.epsilon_high)
                    counted = (adv != 0).float()
                    if cfg.importance_sampling_correction and bool(t["sampler_logp"].any()):
                        seq_sampler = (t["sampler_logp"].to(logp.device) * mask).sum(-1)
                        weights, raw = sequence_importance_weights(seq_old, seq_sampler, cfg.importance_sampling_cap)
                        per_seq = per_seq * weights
                        if iteration == 0:
                            stats["is_raw"].append(raw[mask.sum(-1) > 0])
                    loss = (per_seq * counted).sum() / max(num_sequences, 1.0)
                    (loss * scale).backward()
                total_loss += float(loss.detach())
                stats["clip_low"].append(float((clip_low.float() * counted).sum()))
                stats["clip_high"].append(float((clip_high.float() * counted).sum()))
                stats["seqs"].append(float(counted.sum()))
                # -log pi of sampled tokens: a sample estimate of the per-token entropy at the sampling temperature
                stats["neg_logp"].append(float((-logp.detach() * mask).sum()))
                stats["tokens"].append(float(mask.sum()))
                stats["approx_kl"].append(float((seq_old - seq_logp.detach()).sum()))
            if not tensors:
                online.zero_missing_grads(self.model)  # AdamW moves on zero gradients, as if they were computed
            (total_loss,) = self.processes.sum(total_loss)
            metrics["grad_norm"], metrics["lr"] = online.optimizer_step(
                self.model, self.optimizer, self.scheduler, cfg.max_grad_norm, total_loss
            )
            self.step += 1
            timing["train_time_s"] += time.perf_counter() - start
            metrics["loss"] = total_loss
            if iteration < cfg.num_iterations - 1:
                self._end_of_step(metrics, timing, stats)  # an inner step: log it and go on
                metrics = {k: metrics[k] for k in _BATCH_KEYS if k in metrics}
                timing = rollouts.new_timing()
                stats = {k: [] for k in stats}
        self._end_of_step(metrics, timing, stats)

    @staticmethod
    def _width(tensors: list[dict[str, torch.Tensor]]) -> int:
        return max(t["completion_mask"].shape[1] for t in tensors)

    def _end_of_step(self, metrics: dict[str, Any], timing: dict[str, float], stats: dict[str, list]) -> None:
        cfg = self.config
        seqs, clip_low, clip_high, neg_logp, tokens, approx_kl = self.processes.sum(
            sum(stats["seqs"]), sum(stats["clip_low"]), sum(stats["clip_high"]),
            sum(stats["neg_logp"]), sum(stats["tokens"]), sum(stats["approx_kl"]),
        )  # fmt: skip
        metrics["clip_ratio_low"] = clip_low / max(seqs, 1.0)
        metrics["clip_ratio_high"] = clip_high / max(seqs, 1.0)
        metrics["entropy"] = neg_logp / max(tokens, 1.0)
        metrics["approx_kl_old"] = approx_kl / max(tokens, 1.0)
        metrics.update(online.importance_metrics(stats["is_raw"], cfg.importance_sampling_cap))
        online.end_step(self, metrics, timing)

    # ----------------------------------------------------------------- saving / resuming
    def save_model(self, path: str | os.PathLike) -> None:
        """The policy in Hugging Face format (LoRA merged) plus the tokenizer."""
        modeling.save_policy(self.policy, path, self.processes)

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Everything ``resume`` needs: weights, optimizer, scheduler, RNG states, step, data order (and the batches in flight)."""
        return online.checkpoint(self, path)

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint directory, or from the latest checkpoint in a run directory."""
        self.step = online.resume_run(self, path)


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad a ``[B, T]`` tensor with zeros to ``[B, width]``."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))
