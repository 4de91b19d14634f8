"""Training forward + backward: padded rows vs the shared-prefix packed forward.

A micro-batch shaped like the default GRPO run (2 prompts of 85 tokens x 8 completions of
15-45 tokens) through SmolLM2-135M-Instruct, forward and backward of a loss on the completion
log-probabilities:

- padded: one row per completion, its prompt (left-padded) + the completion (right-padded),
  logits at the completion positions only (the computation ``completion_logprobs`` did before);
- packed: ``rlvr.trainers.modeling.completion_logprobs`` (each prompt once, its completions
  after it under a block-causal mask, padding only at the end of rows).

Prints the median of ``--repeats`` timed runs after ``--warmup`` untimed ones (the two layouts
taking turns), the ratio, the token positions each layout computes vs those carrying
information, the CPU and the load.

    flock /tmp/rlvr-bench.lock python bench/packed_forward.py
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM

from rlvr.environments.base import Task
from rlvr.generation import Generation
from rlvr.models import resolve_model
from rlvr.rewards import Outcome, Status
from rlvr.trainers.modeling import completion_logprobs, selective_log_softmax
from rlvr.trainers.rollouts import Rollout, batch_tensors, token_counts


def padded_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor], temperature: float, bf16: bool) -> torch.Tensor:
    """One row per completion: prompt (left-padded) + completion (right-padded), logits at the completion only."""
    prompt_ids, prompt_attn = batch["prompt_ids"], batch["prompt_attention_mask"]
    idx, comp = batch["prefix_index"], batch["completion_ids"]
    C = comp.shape[1]
    ids = torch.cat([prompt_ids[idx], comp], dim=1)
    attn = torch.cat([prompt_attn[idx], batch["completion_mask"].long()], dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=C + 1,
            use_cache=False,
        ).logits[:, :-1]
    return selective_log_softmax(logits.float() / temperature, comp)


def make_batch(prompts: int, completions: int, prompt_len: int, low: int, high: int, vocab: int, seed: int) -> list[Rollout]:
    """Rollouts of random tokens: ``prompts`` groups of ``completions``, lengths drawn in ``[low, high]``."""
    gen = torch.Generator().manual_seed(seed)
    task = Task([{"role": "user", "content": "?"}])
    out = []
    for _ in range(prompts):
        prompt = torch.randint(1, vocab, (prompt_len,), generator=gen).tolist()
        for _ in range(completions):
            n = int(torch.randint(low, high + 1, (1,), generator=gen))
            completion = torch.randint(1, vocab, (n,), generator=gen).tolist()
            out.append(Rollout(task, Generation("", prompt, completion), Outcome(1.0, Status.OK)))
    return out


def time_steps(fns: dict[str, Callable], model: torch.nn.Module, batch: dict[str, torch.Tensor], warmup: int, repeats: int):
    """Seconds of forward + backward of ``-(logp * mask).sum() / mask.sum()`` per function, ``repeats`` times after
    ``warmup``; the functions take turns, so a change in the machine's load falls on both alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    mask = batch["completion_mask"]
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss = -(fn(model, batch) * mask).sum() / mask.sum()
            loss.backward()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def cpu_name() -> str:
    """The CPU's model name and whether it has AMX bf16 tiles (lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "unknown CPU")
    return f"{name}, amx_bf16: {'yes' if 'amx_bf16' in text else 'no'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=85)
    parser.add_argument("--min-len", type=int, default=15)
    parser.add_argument("--max-len", type=int, default=45)
    parser.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32).train()
    rollouts = make_batch(
        args.prompts, args.completions, args.prompt_len, args.min_len, args.max_len, model.config.vocab_size, args.seed
    )
    batch = batch_tensors(rollouts, pad_id=0)
    lengths = [len(r.generation.completion_ids) for r in rollouts]
    padded_tokens = batch["completion_ids"].numel() + len(batch["prefix_index"]) * batch["prompt_ids"].shape[1]
    train_tokens, useful_tokens = token_counts(batch)
    load = os.getloadavg()
    print(f"model: {args.model}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(f"CPU: {cpu_name()}; load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"micro-batch: {args.prompts} prompts x {args.completions} completions, prompt {args.prompt_len} tokens, "
        f"completions {min(lengths)}-{max(lengths)} tokens (sum {sum(lengths)})"
    )
    print(f"useful tokens (each prompt once + completions): {useful_tokens}")
    print(f"padded rows: {tuple(batch['completion_ids'].shape[:1]) + (batch['prompt_ids'].shape[1] + batch['completion_ids'].shape[1],)}"
          f" = {padded_tokens} positions ({padded_tokens / useful_tokens:.2f}x useful)")
    print(f"packed rows: {tuple(batch['packed_input_ids'].shape)} = {train_tokens} positions ({train_tokens / useful_tokens:.2f}x useful)")
    device = torch.device("cpu")
    for precision in args.precision.split(","):
        bf16 = precision == "bf16"
        fns = {
            "padded": functools.partial(padded_logprobs, temperature=1.0, bf16=bf16),
            "packed": functools.partial(completion_logprobs, temperature=1.0, bf16=bf16, device=device),
        }
        times = time_steps(fns, model, batch, args.warmup, args.repeats)
        padded, packed = times["padded"], times["packed"]
        p50, k50 = statistics.median(padded), statistics.median(packed)
        print(
            f"{precision:>4}: padded median {p50:.3f} s (min {min(padded):.3f}, max {max(padded):.3f}) | "
            f"packed median {k50:.3f} s (min {min(packed):.3f}, max {max(packed):.3f}) | packed / padded = {k50 / p50:.2f}x",
            flush=True,
        )
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
