"""The set-up, sampling loop and evaluation every ONLINE trainer (GRPO, RLOO, PPO,
REINFORCE++) shares, as plain functions a trainer file calls.

- :func:`environment_and_reward`: what ``from_config`` builds from an
  :class:`~rlvr.trainers.online_config.OnlineConfig` (the environment, and the verifier
  when one is named).
- :func:`set_up` / :func:`finish_set_up`: a trainer's processes, tasks, policy, reference,
  run directory, generator and log, before and after its optimizer.
- :func:`prepare_tasks` -> :class:`TaskData`: the reward, the training and held-out tasks
  (the system prompt applied once, so a prompt-aware reward sees what the policy
  answered), this process's shard of the training tasks and its seeded order, and for a
  multi-turn environment its :class:`~rlvr.episodes.EpisodeLimits` (:func:`episode_limits`).
- :func:`collect_groups`: one step's scored groups of ``num_generations`` completions,
  with dynamic sampling (DAPO) when the config asks for it (:func:`sample_groups`, which makes no
  collective call, then :func:`group_metrics`); with ``max_staleness >= 1`` the batches are made
  ahead in a thread (:mod:`rlvr.trainers.async_rollouts`).
- :func:`evaluate_policy`: greedy held-out evaluation split over the processes.
- Pieces of a training step that every method runs the same way: :func:`loss_masks`,
  :func:`loss_token_counts`, :func:`rows_to_train` (rows whose gradient is exactly 0 cost
  nothing), :func:`zero_missing_grads`, :func:`token_metrics`, :func:`reference_logprobs` (frozen copy or adapters off),
  :func:`optimizer_step`, :func:`importance_metrics`, :func:`end_step` (sync, log, checkpoint).
- :func:`train` / :func:`training_step`: a trainer's ``train`` and the frame of its
  ``training_step`` (collect, write ``log_transcripts`` episodes to ``transcripts.jsonl``,
  then the method's own ``_train_on``).
- :func:`checkpoint` / :func:`resume_run`: a trainer's checkpoint (with the batches in flight)
  and its way back, the generator synced.
- :func:`stop_for_server`: a generation server that stayed away past ``server_timeout_s`` stops
  the run with a resumable checkpoint and a message saying how to go on.
- :func:`resolved_settings`: what ``config.json`` records about the precision and engine
  actually chosen.

What the methods do with the rollouts (advantages, losses, critics) stays in each method's
trainer file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlvr.environments.base import Environment, Task
from rlvr.episodes import ChatTurns, Episode, EpisodeLimits, sampled_mask
from rlvr.episodes import episode_limits as limits_for_env
from rlvr.eval.env import evaluate_environment
from rlvr.generation import Generator, SamplingConfig
from rlvr.generation_server import GenerationServerUnavailable
from rlvr.rewards import Reward, Status
from rlvr.trainers import modeling, rollouts, run
from rlvr.trainers.async_rollouts import AsyncRollouts, staleness_metrics
from rlvr.trainers.config import ConfigError
from rlvr.trainers.modeling import Policy
from rlvr.trainers.online_config import OnlineConfig
from rlvr.trainers.rollouts import Rollout, sampling_seed

__all__ = [
    "IN_FLIGHT",
    "Collected",
    "TaskData",
    "checkpoint",
    "group_metrics",
    "sample_groups",
    "stop_async",
    "stop_for_server",
    "finish_set_up",
    "set_up",
    "collect_groups",
    "end_step",
    "environment_and_reward",
    "episode_limits",
    "evaluate_policy",
    "importance_metrics",
    "loss_masks",
    "loss_token_counts",
    "optimizer_step",
    "prepare_tasks",
    "reference_logprobs",
    "resolved_settings",
    "resume_run",
    "rows_to_train",
    "train",
    "training_step",
    "token_metrics",
    "transcript_rows",
    "zero_missing_grads",
]


IN_FLIGHT = "in_flight"
"""A checkpoint's batches generated ahead (``max_staleness >= 1``), per process: ``in_flight.pt``."""


@dataclass
class TaskData:
    """What an online trainer samples from and evaluates on.

    Attributes:
        reward: Scores every completion.
        train_tasks: The training tasks (system prompt applied).
        eval_tasks: The held-out tasks (system prompt applied, at most ``eval_max_tasks``).
        shard: Indices of ``train_tasks`` this process draws from.
        order: This process's seeded order over its shard (part of every checkpoint).
        env: The multi-turn environment whose episodes are played; None for single-turn sampling.
        limits: Its episode limits (None with ``env``).
    """

    reward: Reward
    train_tasks: list[Task]
    eval_tasks: list[Task]
    shard: list[int]
    order: run.DataOrder
    env: Environment | None = None
    limits: EpisodeLimits | None = None

    def take(self, k: int) -> list[Task]:
        """The next ``k`` training tasks of this process, in its seeded order."""
        return [self.train_tasks[self.shard[i]] for i in self.order.take(k)]


def environment_and_reward(config: OnlineConfig) -> tuple[Environment, Reward | None]:
    """The config's environment, and its named verifier (None: the environment's own reward scores)."""
    from rlvr.environments import make_environment
    from rlvr.registry import load_verifier

    try:
        env = make_environment(config.env, **config.env_kwargs)
    except TypeError as exc:  # an option the environment does not take
        raise ConfigError(
            f"{type(config).__name__}.env_kwargs: {config.env_kwargs} do not fit environment {config.env!r} ({exc})"
        ) from None
    if config.verifier_kwargs and not config.verifier:
        raise ConfigError(f"{type(config).__name__}.verifier_kwargs: given without a verifier; name one with --verifier")
    try:
        reward = load_verifier(config.verifier, **config.verifier_kwargs) if config.verifier else None
    except (TypeError, ValueError) as exc:  # an option the verifier does not take, or a value it refuses
        raise ConfigError(
            f"{type(config).__name__}.verifier_kwargs: {config.verifier_kwargs} do not fit verifier {config.verifier!r} ({exc})"
        ) from None
    return env, reward


def episode_limits(config: OnlineConfig, env: Environment | None) -> EpisodeLimits | None:
    """The episode limits of a run on ``env`` (:func:`rlvr.episodes.episode_limits` with the
    config's ``max_turns``, ``max_episode_tokens`` -- else ``vllm_max_model_len`` -- and
    ``turn_timeout_s``): None for a single-turn environment; its refusals as :class:`ConfigError`."""
    tokens = config.max_episode_tokens if config.max_episode_tokens is not None else config.vllm_max_model_len
    try:
        return limits_for_env(env, config.max_turns, tokens, config.turn_timeout_s)
    except ValueError as exc:
        raise ConfigError(f"{type(config).__name__}: {exc}") from None


def prepare_tasks(
    config: OnlineConfig,
    processes: run.Processes,
    env: Environment | None,
    reward: Reward | None,
    train_tasks: Sequence[Task] | None,
    eval_tasks: Sequence[Task] | None,
    who: str,
) -> TaskData:
    """The reward and tasks of a run (``env``'s, or the ones given), this process's shard and order.

    ``who`` names the trainer in the errors (a missing reward or tasks, too few tasks for
    the processes).
    """
    if reward is None and env is None:
        raise ConfigError(f"{who} needs an env or a reward: pass env=... (its reward scores), or reward=... with train_tasks=...")
    limits = episode_limits(config, env)
    if train_tasks is None and env is None:
        raise ConfigError(f"{who} needs training tasks: pass env=... or train_tasks=...")
    reward = reward if reward is not None else env.reward()
    # the system prompt is applied once: the policy and a prompt-aware reward see the same prompt
    train = [t.with_system_prompt(config.system_prompt) for t in (train_tasks if train_tasks is not None else env.tasks("train"))]
    held_out = eval_tasks if eval_tasks is not None else (env.tasks("test") if env is not None else [])
    held_out = [t.with_system_prompt(config.system_prompt) for t in held_out][: config.eval_max_tasks]
    # each process draws from its own shard of the training tasks, in its own seeded order
    shard = processes.shard(len(train))
    if not shard:
        raise ConfigError(
            f"{len(train)} training task(s) cannot feed {processes.world_size} processes; use fewer processes or more training tasks"
        )
    order = run.DataOrder(len(shard), config.seed + processes.rank)
    return TaskData(reward, train, held_out, shard, order, env if limits is not None else None, limits)


def set_up(
    trainer: Any,
    config: OnlineConfig,
    env: Environment | None,
    reward: Reward | None,
    train_tasks: Sequence[Task] | None,
    eval_tasks: Sequence[Task] | None,
    model: Any,
    tokenizer: Any,
    peft_config: Any,
) -> None:
    """The first half of an online trainer's set-up, as attributes of ``trainer``.

    ``config``; ``processes`` and ``rank`` / ``world_size`` / ``is_main`` (one process, or one of
    N started by ``torchrun`` / ``accelerate launch``: data parallel, gradients averaged); the
    seeds; ``data`` (:class:`TaskData`) with ``reward``, ``train_tasks`` and ``eval_tasks``;
    ``policy`` with ``model``, ``tokenizer`` and ``device``; ``ref_model`` (a frozen copy of the
    initial policy when ``config.beta > 0``, None under LoRA or without a KL term). The trainer
    then calls :func:`finish_set_up` (with its own parameter groups when it trains more than
    the policy: a value head).
    """
    trainer.config = config
    trainer.processes = processes = run.Processes(config.stall_timeout_s)
    trainer.rank, trainer.world_size, trainer.is_main = processes.rank, processes.world_size, processes.is_main
    run.seed_everything(config.seed)
    trainer.data = prepare_tasks(config, processes, env, reward, train_tasks, eval_tasks, type(trainer).__name__)
    trainer.reward, trainer.train_tasks, trainer.eval_tasks = trainer.data.reward, trainer.data.train_tasks, trainer.data.eval_tasks
    trainer.policy = policy = modeling.load_policy(config, processes, model, tokenizer, peft_config)
    trainer.model, trainer.tokenizer, trainer.device = policy.model, policy.tokenizer, policy.device
    if trainer.data.limits is not None:  # a chat template that cannot join turns token by token fails here, not at step 1
        try:
            ChatTurns(policy.tokenizer, trainer.data.env.tool_schemas())
        except ValueError as exc:
            raise ConfigError(f"environment {trainer.data.env.name!r} is multi-turn, but {exc}") from None
    trainer.ref_model = modeling.reference_model(policy, config, processes) if getattr(config, "beta", 0) > 0 else None


def finish_set_up(trainer: Any, generator: Generator | None, desc: str, params: list[Any] | None = None) -> None:
    """The second half: ``optimizer`` (AdamW over ``params`` -- parameters or parameter groups --
    by default the policy's trainable parameters) and ``scheduler``, ``step`` 0, ``output_dir`` (one
    for all processes, nothing created yet), ``generator`` (the one given, or built from the
    config) and ``log`` / ``history``."""
    if params is None:
        params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.optimizer = modeling.make_optimizer(trainer.config, params, trainer.device)
    trainer.scheduler = modeling.make_scheduler(trainer.config, trainer.optimizer)
    trainer.step = 0
    trainer.output_dir = run.choose_run_dir(trainer.config.output_dir, trainer.processes)
    trainer.generator = generator if generator is not None else rollouts.build_generator(
        trainer.config, trainer.policy, trainer.world_size, run=str(Path(trainer.output_dir).resolve())
    )
    trainer.log = run.RunLog(trainer.output_dir, trainer.processes, trainer.config, desc=desc)
    trainer.history = trainer.log.history


@dataclass
class Collected:
    """One step's scored groups on this process (:func:`sample_groups`) and the counts its metrics need."""

    rollouts: list[Rollout]
    rounds: int
    seen_groups: int
    tie_groups: int
    num_groups: int


def collect_groups(
    generator: Generator,
    data: TaskData,
    config: OnlineConfig,
    step: int,
    processes: run.Processes,
    metrics: dict[str, Any],
    timing: dict[str, float],
) -> list[Rollout]:
    """One step's scored rollouts, ``num_generations`` per prompt, group-major.

    This process samples ``generation_batch_size / num_generations / world_size`` prompts.
    With ``dynamic_sampling``, groups whose OK rewards all tie carry no signal: they are
    dropped and more prompts are sampled, at most ``max_dynamic_sampling_rounds`` rounds;
    the step trains on what it has then (with several processes, filled up with tied groups
    so every process runs the same number of backward passes). Logs
    ``dynamic_sampling_rounds``, ``frac_zero_std_groups`` and ``num_groups`` into ``metrics``
    (:func:`sample_groups`, then :func:`group_metrics`).
    """
    with modeling.generating(generator):  # every process is here together, however many times each generates inside
        collected = sample_groups(generator, data, config, step, processes.rank, processes.world_size, timing)
    metrics.update(group_metrics(collected, processes))
    return collected.rollouts


def group_metrics(collected: Collected, processes: run.Processes) -> dict[str, Any]:
    """``dynamic_sampling_rounds``, ``frac_zero_std_groups`` and ``num_groups`` of a step, over every process."""
    c = collected
    rounds_sum, seen_groups, tie_groups, num_groups = processes.sum(c.rounds, c.seen_groups, c.tie_groups, c.num_groups)
    return {
        "dynamic_sampling_rounds": c.rounds if processes.world_size == 1 else rounds_sum / processes.world_size,
        "frac_zero_std_groups": tie_groups / max(seen_groups, 1),
        "num_groups": int(num_groups),
    }


def sample_groups(
    generator: Generator, data: TaskData, config: OnlineConfig, step: int, rank: int, world_size: int, timing: dict[str, float]
) -> Collected:
    """This process's part of :func:`collect_groups`, with no collective call (asynchronous rollouts
    run it in a thread of their own)."""
    n = config.num_generations
    want = config.generation_batch_size // n // world_size  # this process's share
    kept: list[list[Rollout]] = []
    dropped: list[list[Rollout]] = []
    rounds, seen_groups, tie_groups = 0, 0, 0
    while len(kept) < want and rounds < (config.max_dynamic_sampling_rounds if config.dynamic_sampling else 1):
        tasks = data.take(want - len(kept))
        seed = sampling_seed(config.seed, step, rounds, rank)
        sampling = SamplingConfig(config.temperature, config.top_p, config.top_k, config.max_completion_length, seed)
        batch = rollouts.generate_and_score(
            generator, data.reward, tasks, n, sampling, config.reward_overlap_chunks, timing,
            env=data.env, limits=data.limits,
        )  # fmt: skip
        rounds += 1
        for g in range(len(tasks)):
            group = batch[g * n : (g + 1) * n]
            seen_groups += 1
            ties = len({r.outcome.score for r in group if r.outcome.status is Status.OK}) <= 1
            tie_groups += ties
            (dropped if config.dynamic_sampling and ties else kept).append(group)
    if not kept:  # every group tied: train on them anyway (their advantages are 0)
        kept = dropped[:want]
    elif world_size > 1 and len(kept) < want:
        # every process must run the same number of backward passes: fill up with tied groups
        kept += dropped[: want - len(kept)]
    return Collected([r for group in kept for r in group], rounds, seen_groups, tie_groups, len(kept))


def evaluate_policy(
    generator: Generator,
    data: TaskData,
    config: OnlineConfig,
    processes: run.Processes,
    step: int,
    tasks: Sequence[Task] | None = None,
) -> dict[str, Any]:
    """Greedy held-out evaluation (:func:`~rlvr.eval.env.evaluate_environment`) of the generator's current weights,
    split over the processes; ``tasks`` defaults to the held-out tasks."""
    start = time.perf_counter()
    with modeling.generating(generator):  # every process is here together
        result = evaluate_environment(
            data.env,
            generator,
            tasks=list(data.eval_tasks if tasks is None else tasks),
            reward=data.reward,
            max_new_tokens=config.max_completion_length,
            temperature=0.0,
            seed=config.seed,
            correct_threshold=config.correct_threshold,
            shard=(processes.rank, processes.world_size),
            gather=processes.gather,
            limits=data.limits,
        )
    return {**result, "step": step, "time_s": time.perf_counter() - start}


def train(trainer: Any) -> dict[str, Any]:
    """An online trainer's ``train``: :func:`rlvr.trainers.run.run_training` to ``max_steps``
    (evaluating before and after when configured), ``config.json`` recording the precision and
    engine chosen; returns the eval summary. Asynchronous rollouts are stopped when it returns or fails."""
    try:
        return run.run_training(trainer, resolved_settings(trainer.policy, trainer.generator), has_eval=bool(trainer.eval_tasks))
    finally:
        stop_async(trainer)


def training_step(trainer: Any, train_on: Any) -> dict[str, Any]:
    """An online trainer's ``training_step``: one step's scored groups (:func:`collect_groups`; with
    ``max_staleness >= 1``, the batch generated in the background, :class:`~rlvr.trainers.async_rollouts.AsyncRollouts`),
    the generator put to sleep (on GPU vLLM gives its memory to the backward pass until it
    generates again), then the method's own ``train_on(batch, metrics, timing)``, which logs the
    step; returns the last logged metrics. A generation server that stays away past
    ``server_timeout_s`` stops the run with a resumable checkpoint (:func:`stop_for_server`)."""
    timing = rollouts.new_timing()
    metrics: dict[str, Any] = {}
    try:
        if trainer.config.max_staleness:
            batch = _take_async(trainer, metrics, timing)
        else:
            batch = collect_groups(trainer.generator, trainer.data, trainer.config, trainer.step, trainer.processes, metrics, timing)
            metrics.update(staleness_metrics(batch, trainer.step))
    except GenerationServerUnavailable as exc:
        stop_for_server(trainer, exc, save=True)
    if trainer.config.log_transcripts and trainer.processes.is_main:
        run.append_jsonl(trainer.output_dir / run.TRANSCRIPTS, transcript_rows(batch, trainer.config.log_transcripts, trainer.step + 1))
    if not trainer.config.max_staleness:
        trainer.generator.sleep()
    train_on(batch, metrics, timing)
    return trainer.history[-1] if trainer.history else metrics


def _take_async(trainer: Any, metrics: dict[str, Any], timing: dict[str, float]) -> list[Rollout]:
    """The batch the background generation made for this step (starting it at the first step)."""
    cfg, processes = trainer.config, trainer.processes
    async_rollouts = getattr(trainer, "async_rollouts", None)
    if async_rollouts is None:

        def sample(generator: Generator, step: int, t: dict[str, float]) -> Collected:
            return sample_groups(generator, trainer.data, cfg, step, processes.rank, processes.world_size, t)

        restored = getattr(trainer, "restored_in_flight", None) or []
        trainer.async_rollouts = async_rollouts = AsyncRollouts(trainer, trainer.generator, sample, restored)
        trainer.restored_in_flight = None
    wait = time.perf_counter()
    ready = async_rollouts.take(trainer.step)
    metrics.update(group_metrics(ready.collected, processes))
    batch = ready.collected.rollouts
    metrics.update(staleness_metrics(batch, trainer.step))
    metrics["rollout_wait_s"] = time.perf_counter() - wait  # what the overlap did not hide
    metrics["weight_push_time_s"] = ready.push_s
    for key in ("generation_time_s", "generated_tokens", "reward_time_s", "reward_compute_s"):
        timing[key] += ready.timing[key]
    if "env_time_s" in ready.timing:
        timing["env_time_s"] = timing.get("env_time_s", 0.0) + ready.timing["env_time_s"]
    return batch


def stop_async(trainer: Any) -> None:
    """Stop a run's background generation, if it has one."""
    async_rollouts = getattr(trainer, "async_rollouts", None)
    if async_rollouts is not None:
        async_rollouts.close()
        trainer.async_rollouts = None


def stop_for_server(trainer: Any, exc: GenerationServerUnavailable, save: bool) -> None:
    """Stop a run whose generation server stayed away: a checkpoint of the step reached (one process;
    with several, the last ``save_steps`` checkpoint is where to resume), then the error, saying how to go on."""
    if trainer.processes.world_size == 1:  # the batches finished in the background go into it
        path = trainer.save_checkpoint() if save else trainer.output_dir / f"checkpoint-{trainer.step}"
        where = f" Checkpoint of step {trainer.step}: {path}; once the server is back, resume with --resume {trainer.output_dir}."
    else:
        where = f" Resume from the run's last checkpoint (save_steps) with --resume {trainer.output_dir} once the server is back."
    stop_async(trainer)
    raise GenerationServerUnavailable(f"{exc}.{where}") from None


def transcript_rows(batch: Sequence[Rollout], k: int, step: int) -> list[dict[str, Any]]:
    """The first ``k`` rollouts of a step as ``transcripts.jsonl`` rows: ``step``, ``messages`` (the
    prompt, then every turn and environment message), ``score``, ``status``, ``reason``,
    ``turns`` and ``finish_reason``."""
    rows = []
    for r in batch[:k]:
        g = r.generation
        after = g.messages if isinstance(g, Episode) else [{"role": "assistant", "content": g.text}]
        prompt = r.task.prompt if isinstance(r.task.prompt, list) else [{"role": "user", "content": str(r.task.prompt)}]
        rows.append(
            {
                "step": step,
                "messages": [*prompt, *after],
                "score": r.outcome.score,
                "status": r.outcome.status.value,
                "reason": r.outcome.reason,
                "turns": g.turns if isinstance(g, Episode) else 1,
                "finish_reason": g.finish_reason,
            }
        )
    return rows


def checkpoint(trainer: Any, path: str | os.PathLike | None = None, model: torch.nn.Module | None = None) -> Path:
    """An online trainer's ``save_checkpoint``: :func:`rlvr.trainers.run.checkpoint_trainer` with the
    data order and, with asynchronous rollouts, the batches in flight (generated from weights
    older than this step's; :meth:`~rlvr.trainers.async_rollouts.AsyncRollouts.in_flight`) and
    the data order after them."""
    async_rollouts = getattr(trainer, "async_rollouts", None)
    order, objects = trainer.data.order.state(), None
    if async_rollouts is not None:
        done, order = async_rollouts.in_flight(trainer.step)
        objects = {IN_FLIGHT: done}
    return run.checkpoint_trainer(trainer, path, order, model=model, objects=objects)


def resume_run(trainer: Any, path: str | os.PathLike, model: torch.nn.Module | None = None) -> int:
    """Load a checkpoint into an online trainer and return its step.

    ``trainer`` provides ``processes``, ``model`` (or ``model`` is given: PPO's policy with its
    value head), ``optimizer``, ``scheduler``, ``name``, ``data`` (:class:`TaskData`),
    ``output_dir``, ``generator`` and ``policy``: the weights, optimizer, schedule, RNG states
    and data order are restored (:func:`rlvr.trainers.run.resume_trainer`), the generator
    given the restored weights, and the batches that were in flight (``max_staleness >= 1``)
    kept for the first steps.
    """
    saved_world = run.read_trainer_state(path).get("world_size", 1)
    if saved_world != trainer.processes.world_size and run.load_checkpoint_object(path, IN_FLIGHT):
        raise ConfigError(
            f"checkpoint {path} holds batches generated ahead by each of its {saved_world} processes; resume it on "
            f"{saved_world} processes so they are trained on, not lost"
        )
    trainer.data.order.load(run.resume_trainer(trainer, path, model))
    rollouts.sync_generator(trainer.generator, trainer.policy, version=trainer.step)
    in_flight = run.load_checkpoint_object(path, IN_FLIGHT, trainer.processes.rank)
    trainer.restored_in_flight = in_flight if trainer.config.max_staleness else None
    if in_flight and not trainer.config.max_staleness:
        raise ConfigError(
            f"checkpoint {path} holds {len(in_flight)} batch(es) generated ahead (max_staleness >= 1); "
            "resume it with the same max_staleness so they are trained on, not lost"
        )
    return trainer.step


def resolved_settings(policy: Policy, generator: Generator) -> dict[str, Any]:
    """The precision and engine actually chosen (``auto`` resolved), for ``config.json``."""
    settings = {
        **modeling.precision_record(policy),
        "generator": generator.name,
        "engine_dtype": getattr(generator, "dtype", "the trainer's model"),
    }
    if getattr(generator, "transport", None):  # a generation server
        settings["weight_transport"] = generator.transport
    return settings


# =======================================================================================
# Pieces of a training step every online method runs the same way
# =======================================================================================


def loss_token_counts(batch: Sequence[Rollout], mask_truncated: bool) -> torch.Tensor:
    """Each rollout's number of loss tokens -- what its row of :func:`loss_masks` sums to: the
    tokens the policy sampled (an episode's environment tokens are not), or 0 for a truncated
    completion when ``mask_truncated`` -- without building any tensor of the batch."""
    return torch.tensor(
        [
            0.0 if mask_truncated and r.generation.finish_reason == "length" else float(sum(sampled_mask(r.generation)))
            for r in batch
        ]
    )


def rows_to_train(
    train: torch.Tensor, micro_batch_size: int, lengths: Sequence[int], world_size: int
) -> list[list[int]]:
    """The micro-batches (lists of row indices) a step's forward/backward passes compute.

    Rows are chunked by ``micro_batch_size`` as always; rows where ``train`` is False are left
    out of their chunk, and chunks left empty are dropped. The caller marks False only rows
    whose loss and gradient are exactly 0 -- an advantage of 0 and no other loss term -- so
    the gradient is the same, bit for bit in exact arithmetic, as computing them: a GRPO group
    whose completions all score the same (every one right, or every one wrong) costs no
    forward or backward pass. Normalisers that count rows or tokens must still count every
    row (the caller does, from :func:`loss_token_counts`).

    With several processes every process runs as many forward/backward passes as the one with
    most (a sharded model gathers its layers from every process at each one, and each must
    take part in the gradient all-reduce): a process with fewer keeps, from each micro-batch
    it left out until the counts match, one row -- its shortest (``lengths``) -- whose gradient
    is exactly 0.
    """
    n = len(train)
    whole = [list(range(start, min(start + micro_batch_size, n))) for start in range(0, n, micro_batch_size)]
    chunks = [[i for i in c if bool(train[i])] for c in whole]
    left_out = [c for c, kept in zip(whole, chunks) if not kept]
    chunks = [c for c in chunks if c]
    if world_size > 1:
        need = max(modeling.most_over_processes(len(chunks)), 1 if n else 0)
        while len(chunks) < need and left_out:
            c = left_out.pop(0)
            chunks.append([min(c, key=lambda i: lengths[i])])
        if len(chunks) < need:
            raise RuntimeError(
                f"this process has {n} rows, too few for the {need} micro-batches another process runs; "
                "every process must hold the same number of rollouts"
            )
        chunks.sort()
    return chunks


def zero_missing_grads(model: torch.nn.Module) -> None:
    """Give every trainable parameter without a gradient a zero one: a step whose every row
    was left out (:func:`rows_to_train`) then moves AdamW's moments and step count exactly as
    a step of zero gradients computed the long way does."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def loss_masks(
    micro: Sequence[Sequence[Rollout]], tensors: Sequence[dict[str, torch.Tensor]], mask_truncated: bool
) -> list[torch.Tensor]:
    """Each micro-batch's ``[B, C]`` loss mask: its completion tokens, without the truncated
    completions (those that hit ``max_completion_length``) when ``mask_truncated``."""
    masks = []
    for m, t in zip(micro, tensors):
        mask = t["completion_mask"].clone()
        if mask_truncated:
            keep = torch.tensor([r.generation.finish_reason != "length" for r in m], dtype=torch.float32)
            mask = mask * keep[:, None]
        masks.append(mask)
    return masks


def token_metrics(tensors: Sequence[dict[str, torch.Tensor]], processes: run.Processes) -> dict[str, int]:
    """``train_tokens`` (positions the training forwards compute) and ``useful_tokens`` (each
    distinct prompt once + the real completion tokens) of the step, over every process."""
    counts = [rollouts.token_counts(t) for t in tensors]
    train, useful = processes.sum(sum(c[0] for c in counts), sum(c[1] for c in counts))
    return {"train_tokens": int(train), "useful_tokens": int(useful)}


def reference_logprobs(
    policy: Policy, ref_model: torch.nn.Module | None, tensors: Sequence[dict[str, torch.Tensor]], temperature: float
) -> list[torch.Tensor]:
    """The reference model's completion log-probs of each micro-batch, without gradient: the
    frozen copy ``ref_model``, or under LoRA (``ref_model`` None) the policy with its adapters off."""
    out = []
    with torch.no_grad():
        for t in tensors:
            if ref_model is not None:
                out.append(modeling.completion_logprobs(ref_model, t, temperature, policy.bf16, policy.device))
            else:
                with policy.model.disable_adapter():
                    out.append(modeling.completion_logprobs(policy.model, t, temperature, policy.bf16, policy.device))
    return out


def optimizer_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float, loss: float | None = None
) -> tuple[float, float]:
    """Clip the gradients of ``model``'s trainable parameters (``max_grad_norm`` 0 = no clip),
    step the optimizer (not when the norm or ``loss`` is NaN / inf: :func:`run.clipped_step`)
    and the schedule; returns ``(grad_norm, lr used)``."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = scheduler.get_last_lr()[0]
    grad_norm = run.clipped_step(params, optimizer, max_grad_norm, loss)  # a NaN / inf: not applied
    scheduler.step()
    return grad_norm, lr


def importance_metrics(raw: Sequence[torch.Tensor], cap: float) -> dict[str, float]:
    """Spread of the generator/trainer importance ratios of a step: mean, 5th and 95th
    percentiles, and the share above the ``cap``; empty when no ratio was recorded."""
    if not raw:
        return {}
    values = torch.cat([r.flatten() for r in raw]).float()
    if not values.numel():
        return {}
    return {
        "is_ratio_mean": float(values.mean()),
        "is_ratio_p5": float(torch.quantile(values, 0.05)),
        "is_ratio_p95": float(torch.quantile(values, 0.95)),
        "is_frac_capped": float((values > cap).float().mean()),
    }


def end_step(trainer: Any, metrics: dict[str, Any], timing: dict[str, float]) -> None:
    """Close an optimizer step: give the generator the new weights (versioned by the step; with
    asynchronous rollouts, publish a copy for the batches that need them, and at the last step stop
    them and sync the generator for the evaluation), add the step's timing, log the metrics line,
    and write a checkpoint when ``save_steps`` says so (and at the last step). A generation server
    that stays away past ``server_timeout_s`` stops the run after the line and a checkpoint.

    ``trainer`` provides ``generator``, ``policy``, ``step``, ``log``, ``config`` and ``save_checkpoint()``.
    """
    failure = None
    async_rollouts = getattr(trainer, "async_rollouts", None)
    try:
        with run.phase("weight sync"):
            if async_rollouts is not None and trainer.step < trainer.config.max_steps:
                metrics["weight_sync_time_s"] = async_rollouts.publish(trainer.step)
            else:
                stop_async(trainer)
                metrics["weight_sync_time_s"] = rollouts.sync_generator(trainer.generator, trainer.policy, version=trainer.step)
    except GenerationServerUnavailable as exc:
        failure = exc
    metrics["step"] = trainer.step
    metrics.update(rollouts.timing_metrics(timing))
    run.log_step(trainer, metrics)
    if failure is not None:  # log_step wrote the checkpoint already when one was due
        stop_for_server(trainer, failure, save=not run.checkpoint_due(trainer.config, trainer.step))
