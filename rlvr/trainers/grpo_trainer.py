r"""GRPO: Group Relative Policy Optimization, readable top to bottom.

One optimizer step (``GRPOTrainer.train``):

1. **Prompts.** Take ``generation_batch_size / num_generations`` tasks from the training
   split, in a seeded order that is part of the checkpoint (``_DataOrder``).
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
6. **Loss**, for ``num_iterations`` optimizer steps on this batch, in micro-batches:

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
values in ``tests/test_grpo_math.py``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr.environments.base import Environment, Task
from rlvr.generation import Generation, Generator, HFGenerator, SamplingConfig, VLLMGenerator, vllm_available
from rlvr.rewards import Outcome, Reward, Status, check_outcomes
from rlvr.trainers.grpo_config import GRPOConfig

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
    if scale_rewards == "group":
        adv = centered / torch.where(zero_std, 1.0, group_std + eps)[:, None]  # tied groups: centred is 0 already
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
        return summed / mask.sum().clamp(min=1) * (batch / num_sequences)
    raise ValueError(f"loss_type must be grpo, dr_grpo, dapo or bnpo, got {loss_type!r}")


def selective_log_softmax(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., tokens]`` without materialising the full log-softmax."""
    logits = logits.float()
    return logits.gather(-1, tokens[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


def sampling_seed(seed: int, step: int, round_: int = 0) -> int:
    """The generation seed of a step's round: a function of ``(seed, step, round)`` only, so resume is exact."""
    return (seed * 1_000_003 + step * 1009 + round_ * 7919) % (2**31 - 1)


# =======================================================================================
# Batch and data order
# =======================================================================================


@dataclass
class _Rollout:
    """One scored completion and what the loss needs of it."""

    task: Task
    generation: Generation
    outcome: Outcome


class _DataOrder:
    """Seeded epoch-by-epoch permutation of the training tasks; its state is two integers."""

    def __init__(self, num_tasks: int, seed: int) -> None:
        if num_tasks == 0:
            raise ValueError("the environment's train split is empty; nothing to train on")
        self.num_tasks, self.seed = num_tasks, seed
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_tasks).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.cursor == self.num_tasks:
                self.epoch, self.cursor = self.epoch + 1, 0
                self._perm = self._permutation()
            out.append(self._perm[self.cursor])
            self.cursor += 1
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._perm = self._permutation()


# =======================================================================================
# Trainer
# =======================================================================================


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
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlvr.models import resolve_model

        self.config = cfg = config
        # One process, or one of N started by `accelerate launch` / `torchrun` (data parallel:
        # each process generates and scores its own prompts, gradients are averaged).
        # (cpu=True where there is no GPU: that is how accelerate runs several CPU processes, over gloo)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        # (GRPOConfig has already checked the batch and the generator against WORLD_SIZE)
        _seed_everything(cfg.seed)
        if reward is None and env is None:
            raise ValueError("GRPOTrainer needs an env or a reward")
        self.reward = reward if reward is not None else env.reward()
        self.train_tasks = list(train_tasks if train_tasks is not None else env.tasks("train"))
        self.eval_tasks = list(eval_tasks if eval_tasks is not None else (env.tasks("test") if env is not None else []))
        self.eval_tasks = self.eval_tasks[: cfg.eval_max_tasks]
        # each process draws from its own shard of the training tasks, in its own seeded order
        self._shard = list(range(self.rank, len(self.train_tasks), self.world_size))
        if not self._shard:
            raise ValueError(f"{len(self.train_tasks)} training tasks cannot feed {self.world_size} processes")
        self.data = _DataOrder(len(self._shard), cfg.seed + self.rank)

        model = cfg.model if model is None else model
        self.model_path: str | None = None
        if isinstance(model, str):
            self.model_path = resolve_model(model)
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.model_path or model.config._name_or_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if peft_config is None and cfg.lora_r > 0:
            from peft import LoraConfig

            peft_config = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=cfg.lora_target_modules,
                task_type="CAUSAL_LM",
            )
        self.is_peft = peft_config is not None
        if cfg.gradient_checkpointing:
            # non-reentrant checkpointing: the variant DistributedDataParallel works with
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if self.is_peft:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
            if cfg.gradient_checkpointing:
                model.enable_input_require_grads()
        if self.world_size > 1 or (self.accelerator.device.type != "cpu" and next(model.parameters()).device.type == "cpu"):
            model = model.to(self.accelerator.device)
        self.model = model
        self.model.train()
        self.device = next(model.parameters()).device
        # the forward that trains goes through DistributedDataParallel when there are several processes
        self._train_model = self.accelerator.prepare_model(model) if self.world_size > 1 else model
        self.bf16 = cfg.bf16 if cfg.bf16 is not None else _bf16_is_fast(self.device)
        self.ref_model = None
        if cfg.beta > 0 and not self.is_peft:  # with LoRA the reference is the model with adapters off
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)

        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),  # one kernel over all parameters instead of a Python loop
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.step = 0
        run_name = time.strftime("%Y%m%d-%H%M%S")
        if self.world_size > 1:  # every process must write to the same run directory
            run_name = self._broadcast(run_name)
        self.output_dir = Path(cfg.output_dir) if cfg.output_dir else Path("runs") / run_name
        self.generator = generator if generator is not None else self._make_generator()
        self._generator_synced = True
        self._loggers: list[Any] = []
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- processes
    def _broadcast(self, obj: Any) -> Any:
        """Process 0's value of ``obj`` on every process."""
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def _gather(self, items: list[Any]) -> list[Any]:
        """Every process's list, concatenated in process order (the list itself with one process)."""
        if self.world_size == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def _sum(self, *values: float) -> list[float]:
        """Sums over the processes (the values themselves with one process)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def _barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    # ----------------------------------------------------------------- generator set-up
    def _make_generator(self) -> Generator:
        cfg = self.config
        kind = cfg.generator
        if kind == "auto":
            kind = "vllm" if vllm_available() and self.world_size == 1 else "hf"
        if kind == "hf":
            return HFGenerator(self.model, self.tokenizer, batch_size=max(cfg.generation_batch_size, 1))
        path = self.model_path
        if path is None:  # a module was passed in: vLLM loads from a directory, so write one
            path = tempfile.mkdtemp(prefix="rlvr-vllm-")
            self._policy().save_pretrained(path, state_dict=self._policy_state_dict(), safe_serialization=True)
            self.tokenizer.save_pretrained(path)
        gen = VLLMGenerator(
            path,
            self.tokenizer,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=cfg.vllm_max_model_len,
            seed=cfg.seed,
            enforce_eager=cfg.vllm_enforce_eager,
            kv_cache_gib=cfg.vllm_kv_cache_gib,
        )
        if self.is_peft or self.model_path is None:
            gen.load_weights(self._policy_state_dict())
        return gen

    def _policy(self) -> torch.nn.Module:
        return self.model.get_base_model() if self.is_peft else self.model

    def _policy_state_dict(self) -> dict[str, torch.Tensor]:
        """Hugging Face-named weights of the current policy (LoRA merged in)."""
        if not self.is_peft:
            return {k: v.detach() for k, v in self.model.state_dict().items()}
        self.model.merge_adapter()
        try:
            state = {}
            for k, v in self.model.get_base_model().state_dict().items():
                if "lora_" in k or "modules_to_save" in k:
                    continue
                state[k.replace(".base_layer.", ".")] = v.detach().clone()
            return state
        finally:
            self.model.unmerge_adapter()

    def _sync_generator(self) -> float:
        start = time.perf_counter()
        if isinstance(self.generator, HFGenerator) and self.generator.model is self.model:
            return 0.0  # HF generation uses the live training model
        self.generator.load_weights(self._policy_state_dict())
        return time.perf_counter() - start

    # ----------------------------------------------------------------- rollouts
    def _prompt(self, task: Task) -> list[dict]:
        if self.config.system_prompt and not (task.prompt and task.prompt[0].get("role") == "system"):
            return [{"role": "system", "content": self.config.system_prompt}, *task.prompt]
        return list(task.prompt)

    def _score(self, tasks: list[Task], gens: list[Generation]) -> tuple[list[Outcome], float]:
        start = time.perf_counter()
        samples = [tasks[g.prompt_index].sample(g.text) for g in gens]
        try:
            raw = self.reward.score(samples)
        except Exception as exc:  # noqa: BLE001 -- a reward crashing on a batch makes every sample an ERROR (never a 0); training goes on
            raw = [Outcome.error(f"reward {self.reward.name!r} raised {type(exc).__name__}: {exc}") for _ in samples]
        return check_outcomes(self.reward.name, samples, raw), time.perf_counter() - start

    def _rollouts(self, tasks: list[Task], seed: int, timing: dict[str, float]) -> list[_Rollout]:
        """Generate and score ``num_generations`` completions per task; scoring overlaps generation by chunks."""
        cfg = self.config
        sampling = SamplingConfig(cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_completion_length, seed)
        chunks = np.array_split(np.arange(len(tasks)), min(cfg.reward_overlap_chunks, len(tasks)))
        pending: list[tuple[list[Task], list[Generation], Future]] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            for c, idx in enumerate(chunks):
                chunk_tasks = [tasks[i] for i in idx]
                start = time.perf_counter()
                gens = self.generator.generate(
                    [self._prompt(t) for t in chunk_tasks],
                    cfg.num_generations,
                    SamplingConfig(
                        sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_tokens, sampling.seed + 100_003 * c
                    ),
                )
                timing["generation_time_s"] += time.perf_counter() - start
                timing["generated_tokens"] += sum(len(g.completion_ids) for g in gens)
                pending.append((chunk_tasks, gens, pool.submit(self._score, chunk_tasks, gens)))
            wait_start = time.perf_counter()
            out = []
            for chunk_tasks, gens, fut in pending:
                outcomes, elapsed = fut.result()
                timing["reward_compute_s"] += elapsed
                out.extend(_Rollout(chunk_tasks[g.prompt_index], g, o) for g, o in zip(gens, outcomes))
            timing["reward_time_s"] += time.perf_counter() - wait_start  # time the step waited on rewards
        return out

    def _collect(self, metrics: dict[str, Any], timing: dict[str, float]) -> list[_Rollout]:
        """Prompts -> rollouts for one generation batch, with dynamic sampling when on."""
        cfg = self.config
        n = cfg.num_generations
        want = cfg.generation_batch_size // n // self.world_size  # this process's share
        kept: list[list[_Rollout]] = []
        dropped: list[list[_Rollout]] = []
        rounds, seen_groups, tie_groups = 0, 0, 0
        while len(kept) < want and rounds < (cfg.max_dynamic_sampling_rounds if cfg.dynamic_sampling else 1):
            tasks = [self.train_tasks[self._shard[i]] for i in self.data.take(want - len(kept))]
            rollouts = self._rollouts(tasks, sampling_seed(cfg.seed, self.step, rounds) + 1_000_003 * self.rank, timing)
            rounds += 1
            for g in range(len(tasks)):
                group = rollouts[g * n : (g + 1) * n]
                seen_groups += 1
                scores = {o.outcome.score for o in group if o.outcome.status is Status.OK}
                ties = len(scores) <= 1
                tie_groups += ties
                (dropped if cfg.dynamic_sampling and ties else kept).append(group)
        if not kept:  # every group tied: train on them anyway (their advantages are 0 -> only KL acts)
            kept = dropped[:want]
        elif self.world_size > 1 and len(kept) < want:
            # every process must run the same number of backward passes: fill up with tied groups
            kept += dropped[: want - len(kept)]
        rounds_sum, seen_groups, tie_groups, num_groups = self._sum(rounds, seen_groups, tie_groups, len(kept))
        metrics["dynamic_sampling_rounds"] = rounds if self.world_size == 1 else rounds_sum / self.world_size
        metrics["frac_zero_std_groups"] = tie_groups / max(seen_groups, 1)
        metrics["num_groups"] = int(num_groups)
        return [r for group in kept for r in group]

    # ----------------------------------------------------------------- forward
    def _batch_tensors(self, rollouts: list[_Rollout]) -> dict[str, torch.Tensor]:
        """Padded tensors of a micro-batch: each distinct prompt once (left-padded), completions right-padded."""
        pad = self.tokenizer.pad_token_id
        prompts: list[list[int]] = []
        prefix_index = []
        for r in rollouts:  # a group's completions share one prompt and sit next to each other
            if not prompts or prompts[-1] != r.generation.prompt_ids:
                prompts.append(r.generation.prompt_ids)
            prefix_index.append(len(prompts) - 1)
        P = max(len(p) for p in prompts)
        C = max(max(len(r.generation.completion_ids) for r in rollouts), 1)
        B = len(rollouts)
        prompt_ids = torch.full((len(prompts), P), pad, dtype=torch.long)
        prompt_attn = torch.zeros((len(prompts), P), dtype=torch.long)
        for i, p in enumerate(prompts):
            prompt_ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            prompt_attn[i, P - len(p) :] = 1
        completion_ids = torch.full((B, C), pad, dtype=torch.long)
        cmask = torch.zeros((B, C), dtype=torch.float32)
        sampler = torch.zeros((B, C), dtype=torch.float32)
        for i, r in enumerate(rollouts):
            c = r.generation.completion_ids
            completion_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            cmask[i, : len(c)] = 1
            if r.generation.logprobs:
                sampler[i, : len(c)] = torch.tensor(r.generation.logprobs[: len(c)])
        return {
            "prompt_ids": prompt_ids,
            "prompt_attention_mask": prompt_attn,
            "prefix_index": torch.tensor(prefix_index),
            "completion_ids": completion_ids,
            "completion_mask": cmask,
            "sampler_logp": sampler,
        }

    def _logprobs(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log-probabilities ``[B, C]`` of the completion tokens under ``model`` at the sampling temperature.

        Each row is its prompt (left-padded) + completion (right-padded); logits are computed
        only at the completion positions (``logits_to_keep``).
        """
        dev = self.device
        prompt_ids, prompt_attn = batch["prompt_ids"].to(dev), batch["prompt_attention_mask"].to(dev)
        idx, comp = batch["prefix_index"].to(dev), batch["completion_ids"].to(dev)
        C = comp.shape[1]
        ids = torch.cat([prompt_ids[idx], comp], dim=1)
        attn = torch.cat([prompt_attn[idx], batch["completion_mask"].to(dev).long()], dim=1)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = model(
                input_ids=ids,
                attention_mask=attn,
                position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                logits_to_keep=C + 1,
                use_cache=False,
            ).logits[:, :-1]
        return selective_log_softmax(logits.float() / self.config.temperature, comp)

    # ----------------------------------------------------------------- one step
    def _train_on(self, rollouts: list[_Rollout], metrics: dict[str, Any], timing: dict[str, float]) -> None:
        """Advantages, then ``num_iterations`` optimizer steps on this generation batch."""
        cfg = self.config
        outcomes = [r.outcome for r in rollouts]
        valid = torch.tensor([o.status is Status.OK for o in outcomes])
        rewards = torch.tensor([o.score if o.status is Status.OK else 0.0 for o in outcomes], dtype=torch.float32)
        advantages, _ = group_advantages(rewards, valid, cfg.num_generations, cfg.scale_rewards)
        _reward_metrics(metrics, self._gather([_rollout_row(r) for r in rollouts]), cfg.correct_threshold)

        mbs = cfg.micro_batch_size
        micro = [rollouts[i : i + mbs] for i in range(0, len(rollouts), mbs)]
        tensors = [self._batch_tensors(m) for m in micro]
        adv_chunks = [advantages[i : i + mbs] for i in range(0, len(rollouts), mbs)]
        loss_masks = []
        for m, t in zip(micro, tensors):
            mask = t["completion_mask"].clone()
            if cfg.mask_truncated_completions:
                keep = torch.tensor([r.generation.finish_reason != "length" for r in m], dtype=torch.float32)
                mask = mask * keep[:, None]
            loss_masks.append(mask)
        # the whole step's counts, over every process: each process's loss is its share of the
        # step's loss, times world_size because DistributedDataParallel averages gradients
        num_sequences, num_tokens = self._sum(len(rollouts), sum(float(m.sum()) for m in loss_masks))
        num_sequences = int(num_sequences)
        scale = float(self.world_size)

        ref_logps: list[torch.Tensor | None] = [None] * len(micro)
        if cfg.beta > 0:
            with torch.no_grad():
                for j, t in enumerate(tensors):
                    if self.ref_model is not None:
                        ref_logps[j] = self._logprobs(self.ref_model, t)
                    else:
                        with self.model.disable_adapter():
                            ref_logps[j] = self._logprobs(self.model, t)

        old_logps: list[torch.Tensor | None] = [None] * len(micro)
        stats: dict[str, list[torch.Tensor]] = {k: [] for k in ("clip_low", "clip_high", "kl", "is_raw", "mask")}
        for iteration in range(cfg.num_iterations):
            start = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for j, t in enumerate(tensors):
                # with several processes, gradients are averaged once, at the last micro-batch
                sync = self.world_size == 1 or j == len(tensors) - 1
                with contextlib.nullcontext() if sync else self._train_model.no_sync():
                    logp = self._logprobs(self._train_model, t)
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
                    loss = aggregate_loss(per_token, mask, cfg.loss_type, cfg.max_completion_length, num_sequences, num_tokens)
                    (loss * scale).backward()
                total_loss += float(loss.detach())
                stats["clip_low"].append((clip_low.float() * mask).sum())
                stats["clip_high"].append((clip_high.float() * mask).sum())
                stats["mask"].append(mask.sum())
            (total_loss,) = self._sum(total_loss)  # each process's share of the step's loss
            params = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            metrics["lr"] = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            timing["train_time_s"] += time.perf_counter() - start
            metrics["loss"] = total_loss
            metrics["grad_norm"] = float(grad_norm)
            if iteration < cfg.num_iterations - 1:
                self._end_of_step(metrics, timing, stats)  # an inner step: log it and go on
                metrics = {k: metrics[k] for k in _BATCH_KEYS if k in metrics}
                timing = dict.fromkeys(timing, 0.0)
                timing["step_start"] = time.perf_counter()
                stats = {k: [] for k in stats}
        self._end_of_step(metrics, timing, stats)

    def _end_of_step(self, metrics: dict[str, Any], timing: dict[str, float], stats: dict[str, list]) -> None:
        cfg = self.config
        metrics["weight_sync_time_s"] = self._sync_generator()
        tokens, clip_low, clip_high, kl_sum, kl_tokens = self._sum(
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
        if stats["is_raw"]:
            raw = torch.cat(stats["is_raw"]).float()
            if raw.numel():
                metrics["is_ratio_mean"] = float(raw.mean())
                metrics["is_ratio_p5"] = float(torch.quantile(raw, 0.05))
                metrics["is_ratio_p95"] = float(torch.quantile(raw, 0.95))
                metrics["is_frac_capped"] = float((raw > cfg.importance_sampling_cap).float().mean())
        metrics["step"] = self.step
        metrics["generation_time_s"] = timing["generation_time_s"]
        metrics["generation_tokens_per_s"] = (
            timing["generated_tokens"] / timing["generation_time_s"] if timing["generation_time_s"] else 0.0
        )
        metrics["reward_time_s"] = timing["reward_time_s"]
        metrics["reward_compute_s"] = timing["reward_compute_s"]
        metrics["train_time_s"] = timing["train_time_s"]
        metrics["step_time_s"] = time.perf_counter() - timing["step_start"]
        self._log(metrics)
        if cfg.save_steps and (self.step % cfg.save_steps == 0 or self.step == cfg.max_steps):
            self.save_checkpoint()

    def training_step(self) -> dict[str, Any]:
        """One generation batch: prompts, rollouts, rewards, ``num_iterations`` optimizer steps."""
        timing = {
            "step_start": time.perf_counter(),
            "generation_time_s": 0.0,
            "generated_tokens": 0.0,
            "reward_time_s": 0.0,
            "reward_compute_s": 0.0,
            "train_time_s": 0.0,
        }
        metrics: dict[str, Any] = {}
        rollouts = self._collect(metrics, timing)
        self._train_on(rollouts, metrics, timing)
        return self.history[-1] if self.history else metrics

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (evaluating before and after when configured); returns the eval summary."""
        cfg = self.config
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
        self._barrier()
        self._open_loggers()
        summary: dict[str, Any] = _read_json(self.output_dir / "eval.json")
        if cfg.eval_before and "before" not in summary and self.eval_tasks and self.step == 0:
            summary["before"] = self.evaluate()
            if self.is_main:
                _write_json(self.output_dir / "eval.json", summary)
        bar = None
        if cfg.progress_bar and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="GRPO", unit="step", dynamic_ncols=True)
        self._bar = bar
        while self.step < cfg.max_steps:
            self.training_step()
        if bar is not None:
            bar.close()
        if cfg.eval_after and self.eval_tasks:
            summary["after"] = self.evaluate()
        summary["steps"] = self.step
        if self.is_main:
            _write_json(self.output_dir / "eval.json", summary)
        if cfg.save_final_model:
            self.save_model(self.output_dir / "final")
        self._close_loggers()
        return summary

    @torch.no_grad()
    def evaluate(self, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
        """Greedy held-out evaluation: accuracy, mean reward and outcome counts."""
        tasks = list(self.eval_tasks if tasks is None else tasks)
        start = time.perf_counter()
        sampling = SamplingConfig(temperature=0.0, max_tokens=self.config.max_completion_length, seed=self.config.seed)
        mine = list(range(self.rank, len(tasks), self.world_size))  # each process evaluates its share
        gens = self.generator.generate([self._prompt(tasks[i]) for i in mine], 1, sampling) if mine else []
        outcomes, _ = self._score([tasks[i] for i in mine], gens) if mine else ([], 0.0)
        rows = self._gather(
            [
                (i, o.status.value, o.score, len(g.completion_ids), g.text, o.reason)
                for i, g, o in zip(mine, gens, outcomes)
            ]
        )
        rows.sort(key=lambda r: r[0])
        ok = [r[2] for r in rows if r[1] == Status.OK.value]
        result = {
            "n": len(tasks),
            "accuracy": sum(score >= self.config.correct_threshold for score in ok) / max(len(tasks), 1),
            "reward_mean": sum(ok) / max(len(ok), 1),
            "n_timeout": sum(r[1] == Status.TIMEOUT.value for r in rows),
            "n_error": sum(r[1] == Status.ERROR.value for r in rows),
            "n_abstain": sum(r[1] == Status.ABSTAIN.value for r in rows),
            "completion_len_mean": sum(r[3] for r in rows) / max(len(rows), 1),
            "step": self.step,
            "time_s": time.perf_counter() - start,
            "examples": [
                {"prompt": tasks[i].prompt[-1]["content"], "completion": text, "reference": str(tasks[i].reference), "reason": reason}
                for i, _, _, _, text, reason in rows[:5]
            ],
        }
        return result

    # ----------------------------------------------------------------- logging
    def _open_loggers(self) -> None:
        if not self.is_main:
            return
        for name in self.config.report_to:
            self._loggers.append(_make_logger(name, self.output_dir, self.config))

    def _close_loggers(self) -> None:
        for lg in self._loggers:
            lg.close()
        self._loggers = []

    def _log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        if not self.is_main:  # one process writes the run's files
            return
        if self.step % self.config.logging_steps == 0 or self.step == self.config.max_steps:
            with open(self.output_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            for lg in self._loggers:
                lg.log(metrics, self.step)
        bar = getattr(self, "_bar", None)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                reward=f"{metrics['reward_mean']:.3f}", acc=f"{metrics['accuracy']:.2f}", step_s=f"{metrics['step_time_s']:.1f}"
            )

    # ----------------------------------------------------------------- saving / resuming
    def save_model(self, path: str | os.PathLike) -> None:
        """The policy in Hugging Face format (LoRA merged) plus the tokenizer."""
        path = Path(path)
        if self.is_main:
            path.mkdir(parents=True, exist_ok=True)
            if self.is_peft:
                merged = copy.deepcopy(self.model).merge_and_unload()
                merged.save_pretrained(path, safe_serialization=True)
            else:
                self.model.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)
        self._barrier()

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Everything ``resume`` needs: weights, optimizer, scheduler, RNG states, step, data order."""
        from safetensors.torch import save_file

        path = Path(path) if path else self.output_dir / f"checkpoint-{self.step}"  # the same on every process
        tmp = path.with_name(path.name + ".tmp")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        # every process keeps its own random state and data order
        torch.save(
            {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            tmp / _rank_file("rng", self.rank, "pt"),
        )
        if self.rank:
            (tmp / _rank_file("data", self.rank, "json")).write_text(json.dumps(self.data.state()))
        self._barrier()
        if self.is_main:
            trainable = {k: v.detach().contiguous().clone() for k, v in self.model.named_parameters() if v.requires_grad}
            save_file(trainable, str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}, tmp / "optimizer.pt")
            state = {"step": self.step, "data": self.data.state(), "world_size": self.world_size, "config": self.config.to_dict()}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, default=str))
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        self._barrier()
        return path

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint directory, or from the latest checkpoint in a run directory."""
        from safetensors.torch import load_file

        path = find_checkpoint(path)
        state = json.loads((path / "trainer_state.json").read_text())
        saved_world = state.get("world_size", 1)
        if saved_world != self.world_size:
            raise ValueError(
                f"checkpoint {path} was written by {saved_world} process(es) and this run has {self.world_size}; "
                f"each process's data order and random state are in it, so resume with --num_processes {saved_world}"
            )
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, v in load_file(str(path / "trainable.safetensors")).items():
                if k not in params:
                    raise ValueError(
                        f"checkpoint {path} has parameter {k!r} that this model lacks; resume with the same model and LoRA settings"
                    )
                params[k].copy_(v)
        opt = torch.load(path / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        rng = torch.load(path / _rank_file("rng", self.rank, "pt"), weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step = state["step"]
        self.data.load(state["data"] if self.rank == 0 else json.loads((path / _rank_file("data", self.rank, "json")).read_text()))
        if self.is_main:
            _truncate_metrics(self.output_dir / "metrics.jsonl", self.step)
        self._sync_generator()


_BATCH_KEYS = (
    "reward_mean",
    "reward_std",
    "accuracy",
    "completion_len_mean",
    "frac_truncated",
    "frac_zero_std_groups",
    "n_timeout",
    "n_error",
    "n_abstain",
    "n_ok",
    "num_groups",
    "dynamic_sampling_rounds",
)


def _rank_file(stem: str, rank: int, ext: str) -> str:
    """``rng.pt`` for process 0 (what a one-process run writes), ``rng-1.pt`` for process 1, ..."""
    return f"{stem}.{ext}" if rank == 0 else f"{stem}-{rank}.{ext}"


def find_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a checkpoint, else its latest ``checkpoint-N`` subdirectory."""
    path = Path(path)
    if (path / "trainer_state.json").exists():
        return path
    found = sorted(path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    found = [p for p in found if (p / "trainer_state.json").exists()]
    if not found:
        raise FileNotFoundError(
            f"no checkpoint in {path}: pass a checkpoint-N directory or a run directory saved with save_steps > 0"
        )
    return found[-1]


def _rollout_row(r: _Rollout) -> tuple[str, float | None, int, bool]:
    """What the step's reward metrics need from a rollout: (status, score, length, truncated)."""
    return r.outcome.status.value, r.outcome.score, len(r.generation.completion_ids), r.generation.finish_reason == "length"


def _reward_metrics(metrics: dict[str, Any], rows: list[tuple[str, float | None, int, bool]], threshold: float) -> None:
    ok = [score for status, score, _, _ in rows if status == Status.OK.value]
    metrics["reward_mean"] = float(np.mean(ok)) if ok else 0.0
    metrics["reward_std"] = float(np.std(ok)) if ok else 0.0
    metrics["accuracy"] = sum(s >= threshold for s in ok) / max(len(rows), 1)
    metrics["completion_len_mean"] = float(np.mean([n for _, _, n, _ in rows]))
    metrics["frac_truncated"] = float(np.mean([trunc for _, _, _, trunc in rows]))
    for status in Status:
        metrics[f"n_{status.value}"] = sum(st == status.value for st, _, _, _ in rows)


def _lr_lambda(cfg: GRPOConfig) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_scheduler_type == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1)
        if cfg.lr_scheduler_type == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return fn


def _bf16_is_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    is_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and bool(is_amx and is_amx())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` (a resumed run rewrites them)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in lines))


class _TensorBoard:
    def __init__(self, output_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "tensorboard"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, output_dir: Path, config: GRPOConfig) -> None:
        import wandb

        self.run = wandb.init(dir=str(output_dir), config=config.to_dict(), project=os.environ.get("WANDB_PROJECT", "rlvr"))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log({f"train/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, config: GRPOConfig) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run()
        mlflow.log_params({k: str(v)[:250] for k, v in config.to_dict().items()})

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def _make_logger(name: str, output_dir: Path, config: GRPOConfig) -> Any:
    missing = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}[name]
    try:
        if name == "tensorboard":
            return _TensorBoard(output_dir)
        if name == "wandb":
            return _WandB(output_dir, config)
        return _MLflow(config)
    except ImportError as exc:
        raise ImportError(
            f"report_to={name!r} needs {missing}: pip install {missing}, or drop it from report_to ({exc})"
        ) from exc
