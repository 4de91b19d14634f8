"""Multi-turn rollouts: 16 episodes x 3 turns, batched (one generate call per turn for every live
episode, the environment answering them in parallel) vs one episode at a time.

The policy is SmolLM2-135M-Instruct in a colocated vLLM engine (``--generator vllm``, the
default; ``hf`` for ``transformers.generate``), at the trainers' engine dtype rule (bf16 only
where bf16 matmuls are fast). The environment is ``code_arith_feedback`` with one change: it
always answers, so every episode has exactly 3 turns -- after a turn whose visible tests pass it
says so and asks for the function again. Every answer is run in the bubblewrap sandbox, as in
training. Batched: ``run_episodes(2 tasks, n=8)``; one by one: 16 ``run_episodes(1 task, n=1)``
calls, seeded apart. Prints the median of ``--repeats`` runs of each (after one warm-up run
of each), episodes per second, the ratio, the CPU and the load.

    flock /tmp/rlvr-bench.lock python bench/multiturn_rollouts.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time

from rlvr.environments.code_feedback import CodeArithFeedback
from rlvr.episodes import EpisodeLimits, run_episodes
from rlvr.generation import SamplingConfig


class AlwaysFeedback(CodeArithFeedback):
    """``code_arith_feedback`` that never ends an episode early (the same sandbox work each turn)."""

    def reply(self, task, failed):
        if not failed:
            return [{"role": "user", "content": "Both tests pass. Reply with the same function again."}]
        return super().reply(task, failed)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        flags = next(line.split(":", 1)[1].split() for line in out.splitlines() if line.startswith("Flags"))
        wanted = [f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2"))]
        return f"{name} ({' '.join(wanted)})"
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.generation import HFGenerator, VLLMGenerator, engine_dtype
    from rlvr.models import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if args.generator == "vllm":
        dtype = engine_dtype("auto", torch.device("cpu"))
        gen = VLLMGenerator(path, tokenizer, dtype=dtype, max_model_len=1024, seed=0)
    else:
        dtype = "float32"
        gen = HFGenerator(AutoModelForCausalLM.from_pretrained(path), tokenizer)
    env = AlwaysFeedback(n_train=16, seed=0)
    tasks = env.tasks("train")[:2]
    limits = EpisodeLimits(max_turns=3, max_episode_tokens=1024, turn_timeout_s=60)

    def batched(seed: int) -> list:
        return run_episodes(gen, env, tasks, 8, SamplingConfig(max_tokens=args.max_tokens, seed=seed), limits)

    def one_by_one(seed: int) -> list:
        out = []
        for i in range(16):
            sampling = SamplingConfig(max_tokens=args.max_tokens, seed=seed + 1000 * i)
            out += run_episodes(gen, env, [tasks[i // 8]], 1, sampling, limits)
        return out

    times: dict[str, list[float]] = {"batched": [], "one by one": []}
    turns: dict[str, list[float]] = {"batched": [], "one by one": []}
    tokens: dict[str, list[int]] = {"batched": [], "one by one": []}
    for r in range(args.repeats + 1):
        for name, fn in (("batched", batched), ("one by one", one_by_one)):
            start = time.perf_counter()
            eps = fn(100 + r)
            elapsed = time.perf_counter() - start
            if r == 0:
                continue  # warm-up
            times[name].append(elapsed)
            turns[name].append(sum(e.turns for e in eps) / len(eps))
            tokens[name].append(sum(sum(e.model_mask) for e in eps))
    lines = [
        f"Command: `python bench/multiturn_rollouts.py --generator {args.generator} --repeats {args.repeats} --max-tokens {args.max_tokens}`  ",
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch threads {torch.get_num_threads()}; engine dtype {dtype}; "
        f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| rollout | median s (16 episodes) | episodes/s | turns/episode | sampled tokens |",
        "|---|---|---|---|---|",
    ]
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in times:
        lines.append(
            f"| {name} | {med[name]:.2f} (min {min(times[name]):.2f}, max {max(times[name]):.2f}) | {16 / med[name]:.2f} | "
            f"{statistics.mean(turns[name]):.2f} | {statistics.mean(tokens[name]):.0f} |"
        )
    lines += ["", f"batched / one by one: **{med['one by one'] / med['batched']:.2f}x** episodes per second"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if hasattr(gen, "close"):
        gen.close()


if __name__ == "__main__":
    main()
