"""What every ONLINE trainer (GRPO, RLOO, PPO) does between two optimizer steps:
generate completions for prompts, score them, and turn them into tensors.

- :func:`build_generator` / :func:`sync_generator`: the generator the config asks for
  (vLLM colocated, or ``transformers.generate`` on the live policy) and the in-place weight
  update after an optimizer step (LoRA merged).
- :func:`sampling_seed`: the seed of one step's generation, a function of
  ``(seed, step, round, rank)`` only, so a resumed run samples exactly what an
  uninterrupted one would; within a step every completion has its own stream.
- :func:`generate_and_score`: ``num_generations`` completions per task, scored by the
  reward; with ``chunks > 1`` chunk i is scored in a thread while chunk i+1 is generated
  (same weights, so still on-policy). A reward that raises makes its batch ``ERROR``
  outcomes, never zeros.
- :func:`batch_tensors`: a micro-batch of rollouts as padded tensors (each distinct prompt
  once), the input of :func:`rlvr.trainers.modeling.completion_logprobs`.
- :func:`reward_metrics`: reward mean/std, accuracy, lengths, outcome counts of a batch.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlvr.environments.base import Task
from rlvr.generation import Generation, Generator, HFGenerator, SamplingConfig, VLLMGenerator, choose_generator
from rlvr.rewards import Outcome, Reward, Status, score_or_error
from rlvr.trainers.modeling import Policy, bf16_is_fast, policy_state_dict

__all__ = [
    "Rollout",
    "batch_tensors",
    "build_generator",
    "generate_and_score",
    "new_timing",
    "reward_metrics",
    "rollout_row",
    "sampling_seed",
    "score_generations",
    "sync_generator",
    "timing_metrics",
]


@dataclass
class Rollout:
    """One scored completion: its task, what the generator produced, and the reward's outcome."""

    task: Task
    generation: Generation
    outcome: Outcome


def sampling_seed(seed: int, step: int, round_: int = 0, rank: int = 0) -> int:
    """The seed of one step's generate calls: a hash of ``(seed, step, round, rank)`` only, so resume is exact.

    ``round_`` counts the generation rounds of one step (dynamic sampling) and ``rank`` the
    process. A generator gives the j-th completion of the call's i-th prompt the stream
    ``seed + i * n + j`` (:meth:`~rlvr.generation.VLLMGenerator.generate`), and a
    reward-overlap chunk starting at prompt ``first`` is called with ``seed + first * n``
    (:func:`generate_and_score`): every completion of a step has its own stream, whatever the
    chunking. The value stays below 2**30, leaving room for those offsets.
    """
    digest = hashlib.blake2b(f"{seed}/{step}/{round_}/{rank}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x3FFFFFFF


def new_timing() -> dict[str, float]:
    """The counters one step's timing metrics are built from."""
    return {
        "step_start": time.perf_counter(),
        "generation_time_s": 0.0,
        "generated_tokens": 0.0,
        "reward_time_s": 0.0,
        "reward_compute_s": 0.0,
        "train_time_s": 0.0,
    }


def timing_metrics(timing: dict[str, float]) -> dict[str, float]:
    """A step's timing metrics from its :func:`new_timing` counters (the step ends now)."""
    gen_s = timing["generation_time_s"]
    return {
        "generation_time_s": gen_s,
        "generation_tokens_per_s": timing["generated_tokens"] / gen_s if gen_s else 0.0,
        "reward_time_s": timing["reward_time_s"],
        "reward_compute_s": timing["reward_compute_s"],
        "train_time_s": timing["train_time_s"],
        "step_time_s": time.perf_counter() - timing["step_start"],
    }


# =======================================================================================
# Generator
# =======================================================================================


def build_generator(config: Any, policy: Policy, world_size: int) -> Generator:
    """The generator ``config.generator`` names (``auto`` resolved by :func:`~rlvr.generation.choose_generator`).

    ``hf`` generates with the live policy (no weight sync needed); ``vllm`` loads the policy's
    directory (or a temporary copy of a module passed in) and receives the current weights.
    """
    kind = choose_generator(config.generator)
    if kind == "hf":
        return HFGenerator(policy.model, policy.tokenizer, batch_size=max(config.generation_batch_size, 1))
    path = policy.model_path
    if path is None:  # a module was passed in: vLLM loads from a directory, so write one
        path = tempfile.mkdtemp(prefix="rlvr-vllm-")
        policy.base().save_pretrained(path, state_dict=policy_state_dict(policy), safe_serialization=True)
        policy.tokenizer.save_pretrained(path)
    dtype = config.vllm_dtype
    if dtype == "auto":  # the trainer's rule: bf16 only where bf16 matmuls are fast
        dtype = "bfloat16" if bf16_is_fast(policy.device) else "float32"
    gen = VLLMGenerator(
        path,
        policy.tokenizer,
        dtype=dtype,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        max_model_len=config.vllm_max_model_len,
        seed=config.seed,
        enforce_eager=config.vllm_enforce_eager,
        kv_cache_gib=config.vllm_kv_cache_gib,
        sleep_level=config.vllm_sleep_level,
        world_size=world_size,
    )
    if policy.is_peft or policy.model_path is None:
        gen.load_weights(policy_state_dict(policy))
    return gen


def sync_generator(generator: Generator, policy: Policy) -> float:
    """Give the generator the policy's current weights; returns the seconds it took (0 when it shares them)."""
    start = time.perf_counter()
    if isinstance(generator, HFGenerator) and generator.model is policy.model:
        return 0.0  # HF generation uses the live training model
    generator.load_weights(policy_state_dict(policy))
    return time.perf_counter() - start


# =======================================================================================
# Generate and score
# =======================================================================================


def score_generations(reward: Reward, tasks: Sequence[Task], gens: Sequence[Generation]) -> tuple[list[Outcome], float]:
    """Score each generation against its task; ``(outcomes, seconds)``.

    A reward that raises on the batch makes every sample an ``ERROR`` outcome (never a 0),
    and training goes on (:func:`~rlvr.rewards.score_or_error`).
    """
    start = time.perf_counter()
    outcomes = score_or_error(reward, [tasks[g.prompt_index].sample(g.text) for g in gens])
    return outcomes, time.perf_counter() - start


def generate_and_score(
    generator: Generator,
    reward: Reward,
    tasks: Sequence[Task],
    num_generations: int,
    sampling: SamplingConfig,
    chunks: int,
    timing: dict[str, float],
) -> list[Rollout]:
    """``num_generations`` scored completions per task, task-major.

    The tasks are generated in ``chunks`` calls; chunk i is scored in a thread while chunk
    i+1 is generated. The chunk whose first task is ``tasks[first]`` is sampled with seed
    ``sampling.seed + first * num_generations``, so with a generator that seeds prompt i of a
    call ``seed + i * n`` (vLLM) each task samples the same completions however the tasks are
    chunked. ``timing`` accumulates generation time and tokens, the reward's compute time,
    and how long the caller waited for rewards.
    """
    parts = np.array_split(np.arange(len(tasks)), min(chunks, len(tasks)))
    pending: list[tuple[list[Task], list[Generation], Future]] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for idx in parts:
            chunk_tasks = [tasks[i] for i in idx]
            seed = sampling.seed + int(idx[0]) * num_generations
            chunk_sampling = SamplingConfig(sampling.temperature, sampling.top_p, sampling.top_k, sampling.max_tokens, seed)
            start = time.perf_counter()
            gens = generator.generate([t.prompt for t in chunk_tasks], num_generations, chunk_sampling)
            timing["generation_time_s"] += time.perf_counter() - start
            timing["generated_tokens"] += sum(len(g.completion_ids) for g in gens)
            pending.append((chunk_tasks, gens, pool.submit(score_generations, reward, chunk_tasks, gens)))
        wait_start = time.perf_counter()
        out = []
        for chunk_tasks, gens, fut in pending:
            outcomes, elapsed = fut.result()
            timing["reward_compute_s"] += elapsed
            out.extend(Rollout(chunk_tasks[g.prompt_index], g, o) for g, o in zip(gens, outcomes))
        timing["reward_time_s"] += time.perf_counter() - wait_start  # time the step waited on rewards
    return out


# =======================================================================================
# Tensors and metrics
# =======================================================================================


def batch_tensors(rollouts: Sequence[Rollout], pad_id: int) -> dict[str, torch.Tensor]:
    """Padded tensors of a micro-batch: each distinct prompt once (left-padded), completions right-padded.

    ``sampler_logp`` holds the generator's log-probabilities of each completion token (0
    where the generator gave none).
    """
    prompts: list[list[int]] = []
    prefix_index = []
    for r in rollouts:  # a group's completions share one prompt and sit next to each other
        if not prompts or prompts[-1] != r.generation.prompt_ids:
            prompts.append(r.generation.prompt_ids)
        prefix_index.append(len(prompts) - 1)
    P = max(len(p) for p in prompts)
    C = max(max(len(r.generation.completion_ids) for r in rollouts), 1)
    B = len(rollouts)
    prompt_ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    prompt_attn = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        prompt_ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        prompt_attn[i, P - len(p) :] = 1
    completion_ids = torch.full((B, C), pad_id, dtype=torch.long)
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


def rollout_row(r: Rollout) -> tuple[str, float | None, int, bool, dict[str, float]]:
    """What :func:`reward_metrics` needs from a rollout (small, so processes can gather it):
    status, score, length, truncated, and the outcome's ``sandbox_*`` metrics (code rewards)."""
    sandbox = {k: float(v) for k, v in r.outcome.metrics.items() if k.startswith("sandbox_") and isinstance(v, (int, float))}
    return r.outcome.status.value, r.outcome.score, len(r.generation.completion_ids), r.generation.finish_reason == "length", sandbox


def reward_metrics(rows: Sequence[tuple[str, float | None, int, bool, dict[str, float]]], correct_threshold: float) -> dict[str, float]:
    """A batch's reward metrics from :func:`rollout_row` rows.

    ``reward_mean`` / ``reward_std`` over OK outcomes; ``accuracy``: the share of ALL
    completions with an OK score >= ``correct_threshold``; ``completion_len_mean``,
    ``frac_truncated``; ``n_ok`` / ``n_timeout`` / ``n_error`` / ``n_abstain``; and the step's
    totals of the rewards' ``sandbox_*`` metrics (sandbox runs, pool misses, seconds waited
    for a sandbox, seconds run), when the reward reports them.
    """
    ok = [score for status, score, *_ in rows if status == Status.OK.value]
    metrics: dict[str, float] = {
        "reward_mean": float(np.mean(ok)) if ok else 0.0,
        "reward_std": float(np.std(ok)) if ok else 0.0,
        "accuracy": sum(s >= correct_threshold for s in ok) / max(len(rows), 1),
        "completion_len_mean": float(np.mean([row[2] for row in rows])) if rows else 0.0,
        "frac_truncated": float(np.mean([row[3] for row in rows])) if rows else 0.0,
    }
    for status in Status:
        metrics[f"n_{status.value}"] = sum(row[0] == status.value for row in rows)
    for row in rows:
        for key, value in row[4].items():
            metrics[key] = metrics.get(key, 0.0) + value
    return metrics
