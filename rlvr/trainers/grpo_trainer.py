r"""GRPO: Group Relative Policy Optimization, readable top to bottom.

One optimizer step (``GRPOTrainer.train``):

1. **Prompts.** Take ``generation_batch_size / num_generations`` tasks from the training
   split, in a seeded order that is part of the checkpoint (``DataOrder``).
2. **Generate** ``num_generations`` completions per prompt with the generator (vLLM or
   ``transformers``), seeded by ``(seed, step, round)`` so a resumed run samples exactly
   what an uninterrupted one would. Each completion carries its sampling log-probabilities.
3. **Score** every completion with the environment's reward. Outcomes that are not ``OK``
   (timeout, error, abstain) are left out of their group's statistics and get advantage 0;
   their counts are logged. With ``reward_overlap_chunks > 1`` the step's prompts are
   generated in chunks and chunk i is scored in a thread while chunk i+1 is generated --
   with the same weights, so the math is unchanged. Scoring never overlaps an optimizer
   step: the next batch's completions must come from the updated policy (on-policy).
4. **Dynamic sampling** (optional, DAPO): groups whose valid rewards all tie carry no
   signal; drop them and generate more prompts, at most ``max_dynamic_sampling_rounds``
   rounds, then train on what there is.
5. **Advantages** (:func:`group_advantages`): reward minus the group mean, divided by the
   group std, the batch std, or nothing (``scale_rewards``).
6. **Loss**, for ``num_iterations`` optimizer steps on this batch, in micro-batches. With
   ``beta`` 0 a row of advantage 0 (a group whose completions all tie) has loss and gradient
   exactly 0, so it is left out of the forward/backward passes (``skip_zero_advantage``,
   :func:`rlvr.trainers.online.rows_to_train`; ``skipped_rows`` in the metrics); the
   normalisers still count it, so the gradient is the one computing it would give:

   - ``logp``: the trainer's log-probabilities of the completion tokens (``logits / T``).
   - ``old_logp``: the same under the weights that sampled the batch. In the first
     iteration these ARE the current weights, so ``old_logp = logp.detach()`` from the same
     forward pass (no extra pass); later iterations reuse the values recorded then.
   - ratio ``exp(logp - old_logp)``, clipped to ``[1 - epsilon, 1 + epsilon_high]``
     (:func:`clipped_surrogate_loss`).
   - truncated importance sampling (:func:`truncated_importance_weights`): the generator
     (bf16 vLLM kernels) and the trainer (fp32) do not give identical probabilities; each
     token's loss is weighted by ``min(exp(old_logp - sampler_logp), cap)``. Its spread is
     logged (``is_ratio_mean/p5/p95``, ``is_frac_capped``).
   - optional KL to the reference model, ``beta * k3`` (:func:`k3_kl`).
   - aggregated over tokens by ``loss_type`` (:func:`aggregate_loss`).
7. **Sync**: the generator gets the new weights in place (merged LoRA weights when LoRA is on).

The pure math (steps 5-6) lives in module-level functions, tested against hand-derived
values in ``tests/test_grpo_math.py``. What every trainer needs (processes, run directory,
metrics, checkpoints: :mod:`rlvr.trainers.run`; the policy, optimizer and log-probs:
:mod:`rlvr.trainers.modeling`) and what every online trainer needs (generation, scoring,
rollout tensors: :mod:`rlvr.trainers.rollouts`) are shared modules this file calls.
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
from rlvr.trainers.grpo_config import GRPOConfig
from rlvr.trainers.modeling import selective_log_softmax
from rlvr.trainers.rollouts import Rollout, sampling_seed

__all__ = [
    "GRPOTrainer",
    "aggregate_loss",
    "clipped_surrogate_loss",
    "group_advantages",
    "k3_kl",
    "sampling_seed",
    "selective_log_softmax",
    "truncated_importance_weights",
]


# =======================================================================================
# Pure math
# =======================================================================================


def group_advantages(
    rewards: torch.Tensor, valid: torch.Tensor, num_generations: int, scale_rewards: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages of a batch of groups, and which groups have zero reward spread.

    ``rewards`` and ``valid`` are flat ``[G * num_generations]`` tensors, group-major.
    Invalid entries (not-OK outcomes; their reward value is ignored) are left out of every
    statistic and get advantage 0. ``A = r - mean_group(r)``, then divided by
    ``std + eps`` where std is the unbiased std of the group's valid rewards (``"group"``),
    of all valid rewards in the batch (``"batch"``), or not divided (``"none"``).

    Returns ``(advantages [N], zero_std [G])``; ``zero_std`` is True for groups with fewer
    than two valid rewards or whose valid rewards all tie.
    """
    r = rewards.double().view(-1, num_generations)
    v = valid.view(-1, num_generations).double()
    count = v.sum(1)
    mean = (r * v).sum(1) / count.clamp(min=1)
    centered = (r - mean[:, None]) * v
    group_std = ((centered**2).sum(1) / (count - 1).clamp(min=1)).sqrt()
    zero_std = (count < 2) | (group_std < 1e-12)
    centered = torch.where(zero_std[:, None], 0.0, centered)  # a tie is exactly 0, not round-off of r - mean
    if scale_rewards == "group":
        adv = centered / torch.where(zero_std, 1.0, group_std + eps)[:, None]  # tied groups: centred is 0
    elif scale_rewards == "batch":
        flat = r.flatten()[v.flatten() > 0]
        batch_std = flat.std() if flat.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
        adv = centered / (batch_std + eps) if batch_std > 0 else centered
    elif scale_rewards == "none":
        adv = centered
    else:
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    return (adv * v).flatten().float(), zero_std


def clipped_surrogate_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss: ``-min(ratio * A, clip(ratio) * A)``.

    ``logp``/``old_logp`` are ``[B, T]``, ``advantages`` ``[B]``;
    ``ratio = exp(logp - old_logp)``, ``clip`` bounds it to ``[1 - epsilon_low, 1 + epsilon_high]``.
    Returns ``(per_token_loss, clipped_low, clipped_high)``, the masks marking tokens where
    the clip is active (ratio below the band with A < 0, above it with A > 0).
    """
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * a
    per_token = -torch.min(unclipped, clipped)
    clipped_low = (ratio < 1 - epsilon_low) & (a < 0)
    clipped_high = (ratio > 1 + epsilon_high) & (a > 0)
    return per_token, clipped_low, clipped_high


def truncated_importance_weights(
    old_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance sampling (TIS) for the generator/trainer mismatch.

    The batch was sampled from the generator's distribution ``q`` but the objective is
    written for the trainer's ``pi_old``; each token's loss is weighted by
    ``w = min(pi_old / q, cap) = min(exp(old_logp - sampler_logp), cap)``. Returns
    ``(weights, raw_ratio)``, both ``[B, T]`` and without gradient.
    """
    raw = torch.exp(old_logp.detach() - sampler_logp.detach())
    return torch.clamp(raw, max=cap), raw


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate ``exp(ref - logp) - (ref - logp) - 1`` (Schulman's k3; >= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_completion_length: int,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    micro_batch: tuple[int, float] | None = None,
) -> torch.Tensor:
    """Reduce a ``[B, T]`` per-token loss over the completion ``mask``.

    For a micro-batch of a larger step, ``num_sequences`` / ``num_tokens`` are the whole
    step's counts, so the micro-batch losses add up to the step's loss (they default to this
    batch's own counts):

    - ``grpo``: each sequence's token mean, summed, / ``num_sequences``.
    - ``dr_grpo``: token sum / (``num_sequences`` x ``max_completion_length``).
    - ``dapo``: token sum / ``num_tokens`` (every token of the step weighs the same).
    - ``bnpo``: this micro-batch's token mean, weighted by its share of the sequences
      (``B / num_sequences``); equal to ``dapo`` when the step is one micro-batch.
      ``micro_batch`` = ``(sequences, tokens)`` of the whole micro-batch when rows of zero
      loss were left out of this one (default: this batch's own counts).
    """
    mask = mask.to(per_token_loss.dtype)
    batch = per_token_loss.shape[0]
    num_sequences = batch if num_sequences is None else num_sequences
    num_tokens = float(mask.sum()) if num_tokens is None else num_tokens
    summed = (per_token_loss * mask).sum()
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / num_sequences
    if loss_type == "dr_grpo":
        return summed / (num_sequences * max_completion_length)
    if loss_type == "dapo":
        return summed / max(num_tokens, 1.0)
    if loss_type == "bnpo":
        micro_sequences, micro_tokens = micro_batch if micro_batch is not None else (batch, float(mask.sum()))
        return summed / max(micro_tokens, 1.0) * (micro_sequences / num_sequences)
    raise ValueError(f"loss_type must be grpo, dr_grpo, dapo or bnpo, got {loss_type!r}")


# =======================================================================================
# Trainer
# =======================================================================================

# metrics that describe a generation batch, kept on each of its num_iterations steps
_BATCH_KEYS = (*rollouts.BATCH_METRICS, "skipped_rows")


class GRPOTrainer:
    """GRPO on an :class:`~rlvr.environments.base.Environment` (or tasks + a reward).

    Args:
        config: The run's :class:`GRPOConfig`.
        model: A causal LM module, or a name/path (``config.model`` when ``None``).
        env: The environment (its ``train`` split trains, its ``test`` split evaluates).
        reward: Overrides the environment's reward.
        train_tasks / eval_tasks: Override the environment's splits.
        tokenizer: Defaults to the model directory's tokenizer.
        peft_config: A ``peft`` config (overrides ``config.lora_r``).
        generator: A ready generator (otherwise built from ``config.generator``).
    """

    name = "grpo"

    def __init__(
        self,
        config: GRPOConfig,
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
        online.finish_set_up(self, generator, desc="GRPO")

    @classmethod
    def from_config(cls, config: GRPOConfig) -> GRPOTrainer:
        """What ``python -m rlvr.train`` builds: the config's environment (and verifier, when one is named) and model."""
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
        """Advantages, then ``num_iterations`` optimizer steps on this generation batch."""
        cfg = self.config
        outcomes = [r.outcome for r in batch]
        valid = torch.tensor([o.status is Status.OK for o in outcomes])
        rewards = torch.tensor([o.score if o.status is Status.OK else 0.0 for o in outcomes], dtype=torch.float32)
        advantages, _ = group_advantages(rewards, valid, cfg.num_generations, cfg.scale_rewards)
        rows = self.processes.gather([rollouts.rollout_row(r) for r in batch])
        metrics.update(rollouts.reward_metrics(rows, cfg.correct_threshold))

        # the whole step's counts, over every process: each process's loss is its share of the
        # step's loss, times world_size because DistributedDataParallel averages gradients
        mbs = cfg.micro_batch_size
        tokens = online.loss_token_counts(batch, cfg.mask_truncated_completions)
        num_sequences, num_tokens = self.processes.sum(len(batch), float(tokens.sum()))
        num_sequences = int(num_sequences)
        scale = float(self.world_size)
        # a row of advantage 0 with no KL term has loss and gradient exactly 0: not computed
        train = advantages != 0 if cfg.skip_zero_advantage and cfg.beta == 0 else torch.ones(len(batch), dtype=torch.bool)
        lengths = [len(r.generation.completion_ids) for r in batch]
        chunks = online.rows_to_train(train, mbs, lengths, self.world_size)
        micro = [[batch[i] for i in c] for c in chunks]
        tensors = [rollouts.batch_tensors(m, self.tokenizer.pad_token_id) for m in micro]
        adv_chunks = [advantages[c] for c in chunks]
        whole = [tokens[c[0] // mbs * mbs :][:mbs] for c in chunks]  # each micro-batch before rows were left out
        whole = [(len(w), float(w.sum())) for w in whole]  # bnpo normalises by its counts
        loss_masks = online.loss_masks(micro, tensors, cfg.mask_truncated_completions)
        skipped_tokens = float(tokens.sum()) - sum(float(m.sum()) for m in loss_masks)
        metrics.update(online.token_metrics(tensors, self.processes))
        metrics["skipped_rows"] = int(self.processes.sum(len(batch) - sum(len(c) for c in chunks))[0])

        ref_logps = online.reference_logprobs(self.policy, self.ref_model, tensors, cfg.temperature) if cfg.beta > 0 else []

        old_logps: list[torch.Tensor | None] = [None] * len(micro)
        stats: dict[str, list] = {k: [] for k in ("clip_low", "clip_high", "kl", "is_raw", "mask")}
        for iteration in range(cfg.num_iterations):
            start = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for j, t in enumerate(tensors):
                # with several processes, gradients are averaged once, at the last micro-batch
                sync = self.world_size == 1 or j == len(tensors) - 1
                with modeling.sync_gradients(self.policy.train_model, sync):
                    logp = self._logprobs(self.policy.train_model, t)
                    if old_logps[j] is None:  # first iteration: the current weights sampled this batch
                        old_logps[j] = logp.detach()
                    old = old_logps[j]
                    per_token, clip_low, clip_high = clipped_surrogate_loss(
                        logp, old, adv_chunks[j].to(logp.device), cfg.epsilon, cfg.epsilon_high
                    )
                    mask = loss_masks[j].to(logp.device)
                    if cfg.importance_sampling_correction and bool(t["sampler_logp"].any()):
                        weights, raw = truncated_importance_weights(
                            old, t["sampler_logp"].to(logp.device), cfg.importance_sampling_cap
                        )
                        per_token = per_token * weights
                        if iteration == 0:
                            stats["is_raw"].append(raw[mask > 0])
                    if cfg.beta > 0:
                        kl = k3_kl(logp, ref_logps[j].to(logp.device))
                        per_token = per_token + cfg.beta * kl
                        stats["kl"].append(((kl.detach() * mask).sum(), mask.sum()))
                    loss = aggregate_loss(
                        per_token, mask, cfg.loss_type, cfg.max_completion_length, num_sequences, num_tokens, whole[j]
                    )
                    (loss * scale).backward()
                total_loss += float(loss.detach())
                stats["clip_low"].append((clip_low.float() * mask).sum())
                stats["clip_high"].append((clip_high.float() * mask).sum())
                stats["mask"].append(mask.sum())
            stats["mask"].append(skipped_tokens)  # rows left out count in the clip ratios' denominators
            if not tensors:
                online.zero_missing_grads(self.model)  # AdamW moves on zero gradients, as if they were computed
            (total_loss,) = self.processes.sum(total_loss)  # each process's share of the step's loss
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

    def _end_of_step(self, metrics: dict[str, Any], timing: dict[str, float], stats: dict[str, list]) -> None:
        cfg = self.config
        tokens, clip_low, clip_high, kl_sum, kl_tokens = self.processes.sum(
            float(sum(stats["mask"])),
            float(sum(stats["clip_low"])),
            float(sum(stats["clip_high"])),
            float(sum(s for s, _ in stats["kl"])),
            float(sum(m for _, m in stats["kl"])),
        )
        metrics["clip_ratio_low"] = clip_low / max(tokens, 1.0)
        metrics["clip_ratio_high"] = clip_high / max(tokens, 1.0)
        if cfg.beta > 0 and kl_tokens:
            metrics["kl"] = kl_sum / max(kl_tokens, 1.0)
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
