"""``python -m rlvr.eval env NAME --model M --n K``: pass@k and mean reward of a model on an environment.

:func:`evaluate_environment` is the ONE evaluation of a policy on tasks: the trainers' held-out
evaluation (before and after training) and this command line both call it, with the same
prompts the policy trains on (the config's system prompt included, see
:meth:`~rlvr.environments.base.Task.with_system_prompt`) and the same metric names as the
training metrics:

- ``accuracy``: the share of completions whose OK score is >= ``correct_threshold``
  (the mean over tasks of c / n, which is pass@1);
- ``pass@k`` for each requested k <= n: the unbiased estimator of Chen et al. (2021),
  ``1 - C(n - c, k) / C(n, k)`` per task with c correct completions, averaged over tasks;
- ``reward_mean``: mean score of the OK outcomes; ``completion_len_mean``: mean tokens;
- ``n_ok`` / ``n_timeout`` / ``n_error`` / ``n_abstain``: outcome counts (a failed check
  is not a wrong answer: such completions are counted, never scored 0).

On a multi-turn environment (:class:`~rlvr.environments.multiturn.MultiTurnEnvironment`) each
completion is an episode (:func:`~rlvr.episodes.run_episodes`, at most ``max_turns`` model
turns; ``--max-turns 1`` measures the model without the environment's replies), scored on its
last assistant message; the result adds ``turns_mean``, ``tool_calls_mean``, ``tool_errors``,
``tool_time_s`` and ``masked_tokens``, and an environment that failed counts in ``n_error`` /
``n_timeout``.

With several processes (``shard``/``gather``) each process generates and scores its share
of the tasks and every process gets the whole result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from math import comb
from pathlib import Path
from typing import Any

from rlvr.environments.base import Environment, Task
from rlvr.rewards import Reward, Status

__all__ = ["add_parser", "evaluate_environment", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with ``n`` samples of which ``c`` are correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate_environment(
    env: Environment | None,
    generator: Any,
    *,
    tasks: Sequence[Task] | None = None,
    reward: Reward | None = None,
    split: str = "test",
    limit: int | None = None,
    system_prompt: str | None = None,
    n: int = 1,
    ks: Sequence[int] = (1,),
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    correct_threshold: float = 1.0,
    shard: tuple[int, int] = (0, 1),
    gather: Callable[[list[Any]], list[Any]] | None = None,
    num_examples: int = 5,
    max_turns: int | None = None,
    limits: Any = None,
) -> dict[str, Any]:
    """Sample ``n`` completions per task, score them, and summarise.

    Args:
        env: Gives the tasks (``split``, first ``limit``) and the reward, unless ``tasks`` /
            ``reward`` are given.
        generator: A :class:`~rlvr.generation.Generator`.
        system_prompt: Put before every prompt that has no system message (as training does).
        n / ks: Completions per task, and the k of each ``pass@k`` (each 1 <= k <= n).
        temperature: 0 is greedy (``n`` must then be 1 to mean anything).
        shard / gather: ``(rank, world_size)`` and a function concatenating every process's
            list, for evaluation split over processes (the defaults: one process).
        num_examples: Completions shown in ``examples`` (the first tasks').
        max_turns: A multi-turn environment's most model turns (None: the environment's own);
            above 1 on a single-turn environment is an error.
        limits: An :class:`~rlvr.episodes.EpisodeLimits` (a trainer's); overrides ``max_turns``.
    """
    from rlvr.environments.multiturn import MultiTurnEnvironment
    from rlvr.episodes import episode_limits, episode_metrics, episode_stats, run_episodes, sampled_mask, score_episodes
    from rlvr.generation import SamplingConfig

    if limits is None:
        limits = episode_limits(env, max_turns)
    multi = limits is not None and isinstance(env, MultiTurnEnvironment)

    if tasks is None:
        if env is None:
            raise ValueError("evaluate_environment needs an env or tasks")
        tasks = env.tasks(split)[: limit or None]
    tasks = [t.with_system_prompt(system_prompt) for t in tasks]
    if not tasks:
        raise ValueError(f"environment {getattr(env, 'name', '?')!r} has no {split!r} tasks to evaluate")
    own_reward = reward is None
    if reward is None:
        if env is None:
            raise ValueError("evaluate_environment needs an env or a reward")
        reward = env.reward()
    bad_k = [k for k in ks if not 1 <= k <= n]
    if bad_k:
        raise ValueError(f"every k must be between 1 and n={n}; got {sorted(bad_k)}. Raise --n or lower --k")
    rank, world = shard
    mine = list(range(rank, len(tasks), world))
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_new_tokens, seed=seed)
    start = time.perf_counter()
    episode_timing: dict[str, float] = {}
    if not mine:
        generations = []
    elif multi:
        generations = run_episodes(generator, env, [tasks[i] for i in mine], n, sampling, limits, episode_timing)
    else:
        generations = generator.generate([tasks[i].prompt for i in mine], n=n, sampling=sampling)
    gen_time = time.perf_counter() - start
    start = time.perf_counter()
    outcomes = score_episodes(reward, [tasks[i] for i in mine], generations)
    reward_time = time.perf_counter() - start
    if own_reward and hasattr(reward, "close"):
        reward.close()
    sampled = [sum(sampled_mask(g)) for g in generations]
    rows = [
        (mine[g.prompt_index], o.status.value, o.score, k, g.text, o.reason, episode_stats(g), getattr(g, "messages", None))
        for g, o, k in zip(generations, outcomes, sampled)
    ]
    rows = (gather or (lambda x: x))(rows)
    rows.sort(key=lambda r: r[0])  # task order (a stable sort keeps each task's samples in order)
    ok_scores = [r[2] for r in rows if r[1] == Status.OK.value]
    correct = [0] * len(tasks)
    for task_index, status, score, *_ in rows:
        correct[task_index] += status == Status.OK.value and score >= correct_threshold
    n_tokens = sum(r[3] for r in rows)
    result: dict[str, Any] = {
        "environment": getattr(env, "name", None),
        "split": split,
        "tasks": len(tasks),
        "n": n,
        "temperature": temperature,
        "accuracy": sum(correct) / max(len(rows), 1),
        **{f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct) / len(tasks) for k in sorted(set(ks))},
        "reward_mean": sum(ok_scores) / len(ok_scores) if ok_scores else 0.0,
        **{f"n_{s.value}": sum(r[1] == s.value for r in rows) for s in Status},
        "completion_len_mean": n_tokens / max(len(rows), 1),
        "generation_time_s": gen_time,
        "tokens_per_s": sum(sampled) / gen_time if gen_time > 0 else 0.0,
        "reward_time_s": reward_time,
        "examples": [
            {"prompt": _last_message(tasks[i].prompt), "completion": text, "reference": str(tasks[i].reference), "reason": why,
             **({"messages": messages} if messages is not None else {})}
            for i, _, _, _, text, why, _, messages in rows[:num_examples]
        ],
    }  # fmt: skip
    if multi:
        result["max_turns"] = limits.max_turns
        result["env_time_s"] = episode_timing.get("env_time_s", 0.0)
    result.update(episode_metrics([r[6] for r in rows]))
    return result


def _last_message(prompt: Any) -> str:
    return prompt[-1]["content"] if isinstance(prompt, list) and prompt else str(prompt)


# =======================================================================================
# Command line
# =======================================================================================


def add_parser(sub: Any) -> None:
    """The ``env`` subcommand of ``python -m rlvr.eval``."""
    from rlvr.generation import GENERATORS

    p = sub.add_parser("env", help="pass@k and mean reward of a model on an environment")
    p.add_argument("env", help="an environment name (see `python -m rlvr list`), jsonl:PATH or dataset:PATH")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or path (a run's final/ directory, say)")
    p.add_argument("--n", type=int, default=1, help="completions per task")
    p.add_argument("--k", default=None, help="comma-separated k values for pass@k (default: 1 and n)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N tasks")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most new tokens (a trainer's max_completion_length)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 0 = greedy when n is 1, else 1.0)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system-prompt", default=None, help="a system message before every prompt that has none (as the training run had)")
    p.add_argument("--generator", default="auto", choices=[g for g in GENERATORS if g != "vllm_server"], help="generation backend (auto: vLLM if installed)")
    p.add_argument(
        "--max-turns", "--max_turns", dest="max_turns", type=int, default=None,
        help="a multi-turn environment's most model turns (default: the environment's own; 1 = no replies from it)",
    )
    p.add_argument("--turn-timeout-s", "--turn_timeout_s", dest="turn_timeout_s", type=float, default=30.0, help="seconds the environment may take per turn")
    p.add_argument("--env-kwargs", "--env_kwargs", dest="env_kwargs", default=None, help="options for the environment, as JSON or YAML ('{levels: [1]}')")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.set_defaults(func=_env_cmd)


VLLM_MAX_MODEL_LEN = 1024  # the engine this command builds; also an episode's most tokens


def _mapping(text: str | None, flag: str) -> dict[str, Any]:
    """A JSON or YAML mapping given on the command line ({} when not given)."""
    if not text:
        return {}
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{flag} must be a JSON or YAML mapping, got {text!r} ({' '.join(str(exc).split())})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a mapping like '{{levels: [1]}}', got {text!r}")
    return value


def _load_generator(name: str, kind: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.generation import choose_generator, make_generator
    from rlvr.models import check_model_source, resolve_model

    check_model_source(name)
    path = resolve_model(name)
    kind = choose_generator(kind)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = None if kind == "vllm" else AutoModelForCausalLM.from_pretrained(path)  # vLLM loads its own copy
    if kind == "hf":
        return make_generator(kind, model, tokenizer, model_path=path)
    import torch

    from rlvr.generation import engine_dtype

    # the trainers' rule for the engine (bf16 only where bf16 matmuls are fast), so a model is
    # measured here as its training run's held-out evaluation measured it
    dtype = engine_dtype("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return make_generator(kind, model, tokenizer, model_path=path, max_model_len=VLLM_MAX_MODEL_LEN, dtype=dtype)


def _env_cmd(args: argparse.Namespace) -> int:
    from rlvr.environments import make_environment

    if args.n < 1:
        raise ValueError("--n must be >= 1")
    try:
        ks = tuple(sorted({int(k) for k in args.k.split(",")})) if args.k else tuple(sorted({1, args.n}))
    except ValueError:
        raise ValueError(f"--k takes comma-separated integers, got {args.k!r}") from None
    if any(not 1 <= k <= args.n for k in ks):
        raise ValueError(f"every k must be between 1 and --n {args.n}; got {list(ks)}")
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 1.0)
    if args.max_turns is not None and args.max_turns < 1:
        raise ValueError(f"--max-turns must be >= 1, got {args.max_turns}")
    from rlvr.episodes import episode_limits

    env = make_environment(args.env, **_mapping(args.env_kwargs, "--env-kwargs"))
    limits = episode_limits(env, args.max_turns, VLLM_MAX_MODEL_LEN, args.turn_timeout_s)  # before any model loads
    generator = _load_generator(args.model, args.generator)
    result = evaluate_environment(
        env, generator, n=args.n, ks=ks, split=args.split, limit=args.limit, max_new_tokens=args.max_new_tokens,
        temperature=temperature, top_p=args.top_p, seed=args.seed, system_prompt=args.system_prompt, limits=limits,
    )
    result["model"] = args.model
    width = max(len(k) for k in result)
    for key, value in result.items():
        if key == "examples":
            continue
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - ``python -m rlvr.eval env`` is the entry
    from rlvr.eval import main

    sys.exit(main(["env", *sys.argv[1:]]))
