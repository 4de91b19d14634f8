"""What every ONLINE trainer (GRPO, RLOO, PPO) does between two optimizer steps:
generate completions for prompts, score them, and turn them into tensors.

- :func:`build_generator` / :func:`sync_generator`: the generator the config asks for
  (vLLM colocated, or ``transformers.generate`` on the live policy) and the in-place weight
  update after an optimizer step (LoRA merged).
- :func:`sampling_seed`: the seed of one step's generation, a function of
  ``(seed, step, round, rank)`` only, so a resumed run samples exactly what an
  uninterrupted one would; within a step every completion has its own stream.
- :func:`generate_and_score`: ``num_generations`` completions per task -- or, for a
  multi-turn environment, episodes (:func:`rlvr.episodes.run_episodes`) -- scored by the
  reward; with ``chunks > 1`` chunk i is scored in a thread while chunk i+1 is generated
  (same weights, so still on-policy). A reward that raises makes its batch ``ERROR``
  outcomes, never zeros; an episode whose environment failed keeps that failure as its outcome.
- :func:`batch_tensors`: a micro-batch of rollouts as tensors: completions right-padded (for
  the losses; an episode's environment tokens are in ``completion_ids`` but not in
  ``completion_mask``) and, through :func:`pack_rollouts`, packed rows in which each group's prompt is
  computed once and followed by its completions (the input of
  :func:`rlvr.trainers.modeling.completion_logprobs`); :func:`token_counts`: the positions the
  training forward computes vs those that carry information.
- :func:`reward_metrics`: reward mean/std, accuracy, lengths, outcome counts of a batch.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlvr.environments.base import Task
from rlvr.environments.multiturn import MultiTurnEnvironment
from rlvr.episodes import EpisodeLimits, episode_metrics, episode_stats, run_episodes, sampled_mask, score_episodes
from rlvr.generation import Generation, Generator, HFGenerator, SamplingConfig, VLLMGenerator, choose_generator, engine_dtype
from rlvr.rewards import Outcome, Reward, Status
from rlvr.trainers import modeling
from rlvr.trainers.modeling import Policy, policy_state_dict, policy_weights, save_pretrained
from rlvr.trainers.run import phase

__all__ = [
    "BATCH_METRICS",
    "Rollout",
    "batch_tensors",
    "build_generator",
    "engine_log_file",
    "generate_and_score",
    "new_timing",
    "pack_rollouts",
    "reward_metrics",
    "rollout_row",
    "sampling_seed",
    "score_generations",
    "sync_generator",
    "timing_metrics",
    "token_counts",
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
        **({"env_time_s": timing["env_time_s"]} if "env_time_s" in timing else {}),  # multi-turn: waiting on env.respond
    }


# =======================================================================================
# Generator
# =======================================================================================


def build_generator(config: Any, policy: Policy, world_size: int, run: str = "") -> Generator:
    """The generator ``config.generator`` names (``auto`` resolved by :func:`~rlvr.generation.choose_generator`).

    ``hf`` generates with the live policy (no weight sync needed); ``vllm`` loads the policy's
    directory (or a temporary copy of a module passed in) and receives the current weights;
    ``vllm_server`` checks the link to ``config.vllm_server_url`` (HTTP and the weight transport,
    in seconds) and pushes the policy's weights as version 0 -- from process 0 only, the other
    processes wait until the server holds the version they expect. ``run`` (the run directory) tells
    this run's weight versions from another's on the same server.
    """
    kind = choose_generator(config.generator)
    if kind == "vllm_server":
        from rlvr.generation_server import VLLMServerGenerator

        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
        server = VLLMServerGenerator(
            config.vllm_server_url, policy.tokenizer, timeout_s=config.server_timeout_s, transport=config.weight_transport,
            weight_dir=config.weight_dir, push=rank == 0, nccl_host=config.nccl_host, run=run,
        )  # fmt: skip
        server.load_weights(policy_state_dict(policy), version=0)
        return server
    if kind == "hf":
        return modeling.live_generator(policy, batch_size=max(config.generation_batch_size, 1))
    path = policy.model_path
    if path is None:  # a module was passed in: vLLM loads from a directory, so write one
        path = tempfile.mkdtemp(prefix="rlvr-vllm-")
        if policy.sharded:
            save_pretrained(policy.base(), path, None, policy.tokenizer, policy_weights(policy, skip_tied=True))
        else:
            policy.base().save_pretrained(path, state_dict=policy_state_dict(policy), safe_serialization=True)
            policy.tokenizer.save_pretrained(path)
    # auto: the dtype the machine's measurement chose (process 0's, like the trainer's precision)
    dtype = policy.precision.engine_dtype if config.vllm_dtype == "auto" and policy.precision else engine_dtype(config.vllm_dtype, policy.device)
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
        log_file=engine_log_file(run, config) if run else None,
    )
    if policy.is_peft or policy.model_path is None:
        gen.load_weights(policy_state_dict(policy))
    return gen


def engine_log_file(run: str, config: Any) -> Path | None:
    """Where a colocated engine's messages go: ``engine.log`` in the run directory (``engine-R.log``
    for process R), or None with ``log_level: debug`` (the engine prints as vLLM does)."""
    if getattr(config, "log_level", "info") == "debug":
        return None
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    return Path(run) / ("engine.log" if rank == 0 else f"engine-{rank}.log")


def sync_generator(generator: Generator, policy: Policy, version: int | None = None) -> float:
    """Give the generator the policy's current weights (``version``: the trainer's step, carried by every
    completion they sample); returns the seconds it took (0 when it shares them). A colocated vLLM
    engine of a sharded policy receives them one gathered tensor at a time."""
    start = time.perf_counter()
    if isinstance(generator, HFGenerator) and generator.model is policy.model:
        generator.load_weights(policy.model, version=version)  # the live training model: only the version moves
        return 0.0
    if policy.sharded and isinstance(generator, VLLMGenerator):
        generator.load_weights(policy_weights(policy), version=version)
    else:
        generator.load_weights(policy_state_dict(policy), version=version)
    return time.perf_counter() - start


# =======================================================================================
# Generate and score
# =======================================================================================


def score_generations(reward: Reward, tasks: Sequence[Task], gens: Sequence[Generation]) -> tuple[list[Outcome], float]:
    """Score each generation against its task; ``(outcomes, seconds)``.

    A reward that raises on the batch makes every sample an ``ERROR`` outcome (never a 0),
    and training goes on (:func:`~rlvr.rewards.score_or_error`). An episode whose environment
    failed keeps its ``failure`` (``ERROR`` / ``TIMEOUT``) and is not scored; the others are
    scored on :func:`~rlvr.episodes.episode_sample` (the last assistant message, the messages in ``info``).
    """
    start = time.perf_counter()
    outcomes = score_episodes(reward, tasks, gens)
    return outcomes, time.perf_counter() - start


def generate_and_score(
    generator: Generator,
    reward: Reward,
    tasks: Sequence[Task],
    num_generations: int,
    sampling: SamplingConfig,
    chunks: int,
    timing: dict[str, float],
    env: MultiTurnEnvironment | None = None,
    limits: EpisodeLimits | None = None,
) -> list[Rollout]:
    """``num_generations`` scored completions per task, task-major; with a multi-turn ``env`` and
    its ``limits``, ``num_generations`` scored :class:`~rlvr.episodes.Episode` objects per task.

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
            if env is not None and limits is not None:
                with phase("generation (episodes)"):
                    gens: list[Generation] = list(run_episodes(generator, env, chunk_tasks, num_generations, chunk_sampling, limits, timing))
            else:
                start = time.perf_counter()
                with phase("generation"):
                    gens = generator.generate([t.prompt for t in chunk_tasks], num_generations, chunk_sampling)
                timing["generation_time_s"] += time.perf_counter() - start
                timing["generated_tokens"] += sum(len(g.completion_ids) for g in gens)
            pending.append((chunk_tasks, gens, pool.submit(score_generations, reward, chunk_tasks, gens)))
        wait_start = time.perf_counter()
        out = []
        for chunk_tasks, gens, fut in pending:
            with phase("reward"):
                outcomes, elapsed = fut.result()
            timing["reward_compute_s"] += elapsed
            out.extend(Rollout(chunk_tasks[g.prompt_index], g, o) for g, o in zip(gens, outcomes))
        timing["reward_time_s"] += time.perf_counter() - wait_start  # time the step waited on rewards
    return out


# =======================================================================================
# Tensors and metrics
# =======================================================================================


def batch_tensors(rollouts: Sequence[Rollout], pad_id: int, max_row_tokens: int = 1024) -> dict[str, torch.Tensor]:
    """The tensors of a micro-batch: padded completions for the losses, packed rows for the forward.

    For the trainers' masks and losses (rollout order, right-padded to the longest completion):
    ``completion_ids`` ``[B, C]``; ``completion_mask``, 1 on each token the policy SAMPLED (for an
    :class:`~rlvr.episodes.Episode`, its ``model_mask``: environment tokens are context, with no
    log-probability and no loss); ``completion_attention_mask``, 1 on every real completion
    token; and ``sampler_logp`` (the generator's log-probability of each sampled token, 0 where it
    gave none). Each distinct prompt once
    (consecutive rollouts with the same prompt are a group): ``prompt_ids`` /
    ``prompt_attention_mask`` (left-padded) and ``prefix_index`` (each rollout's prompt).

    For :func:`~rlvr.trainers.modeling.completion_logprobs`, the packed layout of
    :func:`pack_rollouts`: ``packed_input_ids``, ``packed_position_ids``, ``packed_prefix_ids``,
    ``packed_sequence_ids`` ``[R, W]`` and ``packed_target_index`` (one entry per real
    completion token, in the row-major order of ``completion_mask``).
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
    attention = torch.zeros((B, C), dtype=torch.float32)
    sampler = torch.zeros((B, C), dtype=torch.float32)
    masks = [sampled_mask(r.generation) for r in rollouts]
    for i, (r, m) in enumerate(zip(rollouts, masks)):
        c = r.generation.completion_ids
        completion_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        cmask[i, : len(c)] = torch.tensor(m, dtype=torch.float32)
        attention[i, : len(c)] = 1
        if r.generation.logprobs:
            sampler[i, : len(c)] = torch.tensor(r.generation.logprobs[: len(c)]) * cmask[i, : len(c)]
    packed = pack_rollouts(
        [r.generation.prompt_ids for r in rollouts], [r.generation.completion_ids for r in rollouts], pad_id, max_row_tokens, masks
    )
    return {
        "prompt_ids": prompt_ids,
        "prompt_attention_mask": prompt_attn,
        "prefix_index": torch.tensor(prefix_index),
        "completion_ids": completion_ids,
        "completion_mask": cmask,
        "completion_attention_mask": attention,
        "sampler_logp": sampler,
        **packed,
    }


def pack_rollouts(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
    max_row_tokens: int = 1024,
    masks: Sequence[Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Shared-prefix packing: each group's prompt once, followed by its completions, in a few rows.

    ``prompts[i]`` / ``completions[i]`` are rollout i's token ids; consecutive rollouts with the
    same prompt are a group. A group becomes one segment ``[prompt, c1, c2, ..., cn]``; the
    segments are packed first-fit-decreasing into rows as wide as the longest segment, so the
    only padding is at the end of rows and rows are of similar length. A group longer than
    ``max_row_tokens`` is split into several segments, each with its own copy of the prompt:
    the packed forward attends densely over a row (its cost grows with the width squared), and
    past about a thousand tokens that costs more than computing the prompt again (measured on
    a 2-core CPU, fp32: 16 episodes of a 150-token prompt and 300 tokens each, forward + backward
    of SmolLM2-135M, 49 s in rows of 1024 vs 56-66 s in rows of 4096 and 76 s in rows of 2048).
    Single-turn groups of a few hundred tokens fit one row either way.

    Returns ``[R, W]`` tensors, to be read with the block-causal mask of
    :func:`~rlvr.trainers.modeling.packed_attention_mask`:

    - ``packed_input_ids``: the tokens (``pad_id`` at the end of rows);
    - ``packed_position_ids``: ``0 .. len(prompt) - 1`` over a prompt, then restarting at
      ``len(prompt)`` for each of its completions (what the padded row prompt + completion has);
    - ``packed_prefix_ids``: the segment a token belongs to, numbered within its row (-1: padding);
    - ``packed_sequence_ids``: 0 on prompt tokens, k >= 1 on the k-th completion of the row;
    - ``packed_target_index`` ``[N]``: for each real completion token (rollout-major, then token
      order: the order of ``completion_mask``'s ones), the flat index ``row * W + column`` of
      the position that predicts it (the prompt's last token for the first, then the token before).
      With ``masks`` (one 0/1 list per completion), only the tokens marked 1 -- what the policy
      sampled -- have an entry: the others (an episode's environment messages) are computed as
      context and predicted by nothing.
    """
    if max_row_tokens < 1:
        raise ValueError(f"max_row_tokens must be >= 1, got {max_row_tokens}: pass a positive row width")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"rollout {i} has an empty prompt: its first completion token has nothing to be predicted from")
    # segments: (first rollout, one past the last rollout) of a run of rollouts sharing a prompt, within max_row_tokens
    segments: list[tuple[int, int]] = []
    seg_len: list[int] = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        same_group = bool(segments) and segments[-1][1] == i and list(prompts[segments[-1][0]]) == list(p)
        if same_group and seg_len[-1] + len(c) <= max_row_tokens:
            segments[-1] = (segments[-1][0], i + 1)
            seg_len[-1] += len(c)
        else:
            segments.append((i, i + 1))
            seg_len.append(len(p) + len(c))
    width = max(seg_len)
    rows: list[list[int]] = []  # segment indices per row
    free: list[int] = []
    for s in sorted(range(len(segments)), key=lambda s: (-seg_len[s], s)):
        row = next((r for r, room in enumerate(free) if room >= seg_len[s]), None)
        if row is None:
            rows.append([])
            free.append(width)
            row = len(rows) - 1
        rows[row].append(s)
        free[row] -= seg_len[s]
    rows.sort(key=min)  # rows, and segments within a row, in rollout order
    R = len(rows)
    ids = np.full((R, width), pad_id, dtype=np.int64)
    positions = np.zeros((R, width), dtype=np.int64)
    prefix_ids = np.full((R, width), -1, dtype=np.int64)
    sequence_ids = np.zeros((R, width), dtype=np.int64)
    target_index: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(prompts)
    for r, row_segments in enumerate(rows):
        col, seq = 0, 0
        for k, s in enumerate(sorted(row_segments)):
            first, end = segments[s]
            p = prompts[first]
            ids[r, col : col + len(p)] = p
            positions[r, col : col + len(p)] = np.arange(len(p))
            prefix_ids[r, col : col + len(p)] = k
            last_prompt = col + len(p) - 1
            col += len(p)
            for i in range(first, end):
                c = completions[i]
                seq += 1
                ids[r, col : col + len(c)] = c
                positions[r, col : col + len(c)] = np.arange(len(p), len(p) + len(c))
                prefix_ids[r, col : col + len(c)] = k
                sequence_ids[r, col : col + len(c)] = seq
                # token t is predicted at the prompt's last position (t = 0), then at the token before it
                cols = np.concatenate([[last_prompt], np.arange(col, col + len(c) - 1)])[: len(c)]
                if masks is not None:
                    cols = cols[np.asarray(masks[i], dtype=bool)]
                target_index[i] = r * width + cols
                col += len(c)
    return {
        "packed_input_ids": torch.from_numpy(ids),
        "packed_position_ids": torch.from_numpy(positions),
        "packed_prefix_ids": torch.from_numpy(prefix_ids),
        "packed_sequence_ids": torch.from_numpy(sequence_ids),
        "packed_target_index": torch.from_numpy(np.concatenate(target_index)).long(),
    }


def token_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """``(train_tokens, useful_tokens)`` of a :func:`batch_tensors` micro-batch.

    ``train_tokens``: the positions the training forward computes (the packed rows' total
    width, padding included); ``useful_tokens``: the positions that carry information (each
    distinct prompt once, plus the real completion tokens, an episode's environment tokens included).
    """
    useful = int(batch["prompt_attention_mask"].sum()) + int(batch["completion_attention_mask"].sum())
    return int(batch["packed_input_ids"].numel()), useful


# Metrics that describe a generation batch: a method that takes several optimizer steps on one
# batch (num_iterations) logs them again on each step.
BATCH_METRICS = (
    "reward_mean", "reward_std", "accuracy", "completion_len_mean", "frac_truncated", "frac_zero_std_groups",
    "n_timeout", "n_error", "n_abstain", "n_ok", "num_groups", "dynamic_sampling_rounds", "train_tokens", "useful_tokens",
    "turns_mean", "tool_calls_mean", "tool_errors", "tool_time_s", "masked_tokens",
)  # fmt: skip

Row = tuple[str, float | None, int, bool, dict[str, float], dict[str, float] | None]
"""What :func:`reward_metrics` reads of one rollout (:func:`rollout_row`)."""


def rollout_row(r: Rollout) -> Row:
    """What :func:`reward_metrics` needs from a rollout (small, so processes can gather it):
    status, score, length (sampled tokens), truncated, the outcome's ``sandbox_*`` metrics (code
    rewards) and, for an episode, :func:`~rlvr.episodes.episode_stats`."""
    sandbox = {k: float(v) for k, v in r.outcome.metrics.items() if k.startswith("sandbox_") and isinstance(v, (int, float))}
    return (
        r.outcome.status.value,
        r.outcome.score,
        sum(sampled_mask(r.generation)),
        r.generation.finish_reason == "length",
        sandbox,
        episode_stats(r.generation),
    )


def reward_metrics(rows: Sequence[Row], correct_threshold: float) -> dict[str, float]:
    """A batch's reward metrics from :func:`rollout_row` rows.

    ``reward_mean`` / ``reward_std`` over OK outcomes; ``accuracy``: the share of ALL
    completions with an OK score >= ``correct_threshold``; ``completion_len_mean`` (sampled
    tokens), ``frac_truncated``; ``n_ok`` / ``n_timeout`` / ``n_error`` / ``n_abstain``; the step's
    totals of the rewards' ``sandbox_*`` metrics (sandbox runs, pool misses, seconds waited
    for a sandbox, seconds run), when the reward reports them; and for multi-turn episodes
    ``turns_mean``, ``tool_calls_mean`` and the step's ``tool_errors``, ``tool_time_s`` and
    ``masked_tokens`` (environment tokens, not trained on).
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
    metrics.update(episode_metrics([row[5] for row in rows]))
    return metrics
