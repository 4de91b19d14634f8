"""``python -m rlvr.eval env NAME --model M --n K``: pass@k and mean reward of a model.

For each task of the environment's split, ``n`` completions are sampled (or one greedy one
with ``--temperature 0``), scored with the environment's reward, and summarised:

- ``mean_reward``: mean score of the OK outcomes;
- ``pass@k`` for each requested k <= n: the unbiased estimator of Chen et al. (2021),
  ``1 - C(n - c, k) / C(n, k)`` per task with c correct completions, averaged over tasks;
- counts of timeout / error / abstain outcomes (a failed check is not a wrong answer: such
  completions are left out of ``c`` and reported).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from math import comb
from pathlib import Path
from typing import Any

from rlvr.rewards import Status, check_outcomes

__all__ = ["pass_at_k", "evaluate_environment", "main"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with ``n`` samples of which ``c`` are correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def evaluate_environment(
    env: Any,
    generator: Any,
    n: int = 1,
    ks: tuple[int, ...] = (1,),
    split: str = "test",
    limit: int | None = None,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    correct_threshold: float = 1.0,
) -> dict[str, Any]:
    """Sample, score and summarise; returns the numbers ``main`` prints."""
    from rlvr.generation import SamplingConfig

    tasks = env.tasks(split)[: limit or None]
    if not tasks:
        raise ValueError(f"environment {env.name!r} has no {split!r} tasks")
    bad_k = [k for k in ks if not 1 <= k <= n]
    if bad_k:
        raise ValueError(f"every k must be between 1 and n={n}; got {bad_k}. Raise --n or lower --k")
    sampling = SamplingConfig(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    start = time.perf_counter()
    generations = generator.generate([t.prompt for t in tasks], n=n, sampling=sampling)
    gen_time = time.perf_counter() - start
    samples = [tasks[i // n].sample(g.text) for i, g in enumerate(generations)]
    reward = env.reward()
    start = time.perf_counter()
    outcomes = check_outcomes(reward.name, samples, reward.score(samples))
    reward_time = time.perf_counter() - start
    if hasattr(reward, "close"):
        reward.close()
    counts = {s.value: sum(o.status is s for o in outcomes) for s in Status}
    ok_scores = [o.score for o in outcomes if o.status is Status.OK]
    per_k = {k: 0.0 for k in ks}
    for t in range(len(tasks)):
        group = outcomes[t * n : (t + 1) * n]
        correct = sum(o.status is Status.OK and o.score >= correct_threshold for o in group)
        for k in ks:
            per_k[k] += pass_at_k(n, correct, k)
    n_tokens = sum(len(g.completion_ids) for g in generations)
    return {
        "environment": env.name,
        "split": split,
        "tasks": len(tasks),
        "n": n,
        "temperature": temperature,
        "mean_reward": sum(ok_scores) / len(ok_scores) if ok_scores else None,
        **{f"pass@{k}": v / len(tasks) for k, v in per_k.items()},
        "outcomes": counts,
        "completion_tokens_mean": n_tokens / len(generations),
        "generation_time_s": gen_time,
        "tokens_per_s": n_tokens / gen_time if gen_time > 0 else None,
        "reward_time_s": reward_time,
    }


def _load_generator(path: str, kind: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.generation import make_generator, vllm_available

    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = None if kind == "vllm" else AutoModelForCausalLM.from_pretrained(path)  # vLLM loads its own copy
    return make_generator(kind, model, tokenizer, model_path=path)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m rlvr.eval env``."""
    p = argparse.ArgumentParser(prog="python -m rlvr.eval env", description="pass@k and mean reward of a model on an environment")
    p.add_argument("env", help="an environment name (see `python -m rlvr list`), jsonl:PATH or dataset:PATH")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or path")
    p.add_argument("--n", type=int, default=1, help="completions per task")
    p.add_argument("--k", default=None, help="comma-separated k values for pass@k (default: 1 and n)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N tasks")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 0 = greedy when n is 1, else 1.0)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generator", default="auto", choices=["auto", "vllm", "hf"], help="generation backend")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``env`` evaluation from the command line."""
    args = build_parser().parse_args(argv)
    if args.n < 1:
        print("error: --n must be >= 1", file=sys.stderr)
        return 2
    try:
        ks = tuple(sorted({int(k) for k in args.k.split(",")})) if args.k else tuple(sorted({1, args.n}))
    except ValueError:
        print(f"error: --k takes comma-separated integers, got {args.k!r}", file=sys.stderr)
        return 2
    temperature = args.temperature if args.temperature is not None else (0.0 if args.n == 1 else 1.0)
    from rlvr.environments import make_environment
    from rlvr.models import resolve_model
    from rlvr.registry import RegistryError

    try:
        env = make_environment(args.env)
        if any(not 1 <= k <= args.n for k in ks):
            raise ValueError(f"every k must be between 1 and --n {args.n}; got {list(ks)}")
        generator = _load_generator(resolve_model(args.model), args.generator)
        result = evaluate_environment(
            env, generator, n=args.n, ks=ks, split=args.split, limit=args.limit, max_new_tokens=args.max_new_tokens,
            temperature=temperature, top_p=args.top_p, seed=args.seed,
        )
    except (RegistryError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["model"] = args.model
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
