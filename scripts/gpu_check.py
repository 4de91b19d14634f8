"""One-shot check of rlvr's GPU path: the colocated vLLM engine, its weight sync and sleep mode, and GRPO.

    python scripts/gpu_check.py                     # on a machine with a CUDA GPU and vllm installed
    python scripts/gpu_check.py --allow-cpu --steps 2   # the same checks that exist on CPU (a dry run of this script)

Prints one line per check (``PASS`` / ``FAIL`` / ``SKIP``, the check's name, what it measured)
and exits 1 if any check failed. Checks, in order:

1. the engine builds in-process in bf16; two seeded generate calls give identical ids; its
   log-probs match a ``transformers`` recomputation within bf16 tolerance;
2. building the engine leaves the trainer's RNG state, seed and float32 matmul precision as they were;
3. after a weight sync the log-probs match the NEW weights, not the old;
4. sleep frees GPU memory (``torch.cuda.mem_get_info``); wake + sync + generate still match;
5. ``close()`` gives back at least 90% of what the engine held, and a second engine builds;
6. 20 steps of the default GRPO run (arithmetic, SmolLM2-135M-Instruct) with ``generator=vllm``
   and with ``generator=hf``: median step time, generation tokens/s, and the importance-ratio
   spread (vLLM: the median over steps 2.. of each step's p5 / p95 within 0.95-1.05);
7. with two or more GPUs, ``torchrun --nproc_per_node 2 -m rlvr.train --generator vllm``.

Designed to finish in under 10 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS: list[tuple[str, str, str]] = []


def report(status: str, name: str, detail: str) -> None:
    RESULTS.append((status, name, detail))
    print(f"{status:4}  {name}: {detail}", flush=True)


def check(name: str, ok: bool, detail: str) -> bool:
    report("PASS" if ok else "FAIL", name, detail)
    return ok


def trainer_logprobs(model, gen, device) -> "torch.Tensor":  # noqa: F821 -- torch is imported in main
    import torch

    from rlvr.trainers.modeling import selective_log_softmax

    ids = torch.tensor([gen.prompt_ids + gen.completion_ids], device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(ids).logits[0, len(gen.prompt_ids) - 1 : -1]
    return selective_log_softmax(logits.float(), torch.tensor(gen.completion_ids, device=device)).cpu()


def max_gap(model, gens, device) -> float:
    """Mean |log p_vllm - log p_transformers| over every completion token (bf16 kernels differ token by token)."""
    import torch

    gaps = torch.cat([(torch.tensor(g.logprobs) - trainer_logprobs(model, g, device)).abs() for g in gens])
    return float(gaps.mean())


def engine_checks(model_path: str, on_gpu: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.generation import SamplingConfig, VLLMGenerator

    device = torch.device("cuda" if on_gpu else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = [[{"role": "user", "content": f"What is {a} + {b}? Answer briefly."}] for a, b in ((3, 4), (5, 2), (1, 8))]
    sampling = SamplingConfig(temperature=1.0, max_tokens=32, seed=11)

    # 2. the trainer's process state around the build
    free_before_engine = torch.cuda.mem_get_info()[0] if on_gpu else 0
    torch.manual_seed(1234)
    torch.set_float32_matmul_precision("high")
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state() if on_gpu else None
    start = time.perf_counter()
    gen = VLLMGenerator(model_path, tokenizer, dtype="bfloat16", max_model_len=512, seed=0)
    build_s = time.perf_counter() - start
    same_rng = torch.initial_seed() == 1234 and torch.equal(torch.get_rng_state(), state)
    if on_gpu:
        same_rng = same_rng and torch.equal(torch.cuda.get_rng_state(), cuda_state)
    check("process state", same_rng and torch.get_float32_matmul_precision() == "high",
          f"initial_seed {torch.initial_seed()}, rng {'same' if same_rng else 'CHANGED'}, "
          f"matmul precision {torch.get_float32_matmul_precision()!r} (set 'high')")  # fmt: skip
    torch.set_float32_matmul_precision("highest")

    # 1. build, determinism, log-probs against transformers
    a = gen.generate(prompts, n=4, sampling=sampling)
    b = gen.generate(prompts, n=4, sampling=sampling)
    check("engine build + seeded determinism", [g.completion_ids for g in a] == [g.completion_ids for g in b],
          f"built in {build_s:.1f} s (bf16, in-process); {len(a)} completions, two seeded calls identical")  # fmt: skip
    model_a = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    gap = max_gap(model_a, a, device)
    check("log-probs vs transformers", gap < 0.05, f"mean |vllm - transformers| = {gap:.4f} nats per token (bf16 tolerance 0.05)")

    # 3. weight sync: the engine follows the new weights
    model_b = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    with torch.no_grad():
        for p in model_b.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    start = time.perf_counter()
    gen.load_weights(model_b)
    sync_s = time.perf_counter() - start
    after = gen.generate(prompts, n=4, sampling=sampling)
    new_gap, old_gap = max_gap(model_b, after, device), max_gap(model_a, after, device)
    # the perturbed weights give flatter distributions, where bf16 kernels differ a little more: 0.1
    check("weight sync", new_gap < 0.1 and old_gap > 10 * new_gap,
          f"{sync_s:.2f} s; gap to NEW weights {new_gap:.4f}, to old {old_gap:.4f}")  # fmt: skip

    # 4. sleep and wake
    if on_gpu:
        free_awake = torch.cuda.mem_get_info()[0]
        gen.sleep()
        free_asleep = torch.cuda.mem_get_info()[0]
        gen.load_weights(model_a)  # wakes the weights, syncs, wakes the KV cache
        again = gen.generate(prompts, n=4, sampling=sampling)
        gap = max_gap(model_a, again, device)
        check("sleep / wake", free_asleep > free_awake and gap < 0.05,
              f"sleep freed {(free_asleep - free_awake) / 2**30:.2f} GiB; after wake + sync + generate, gap {gap:.4f}")  # fmt: skip
    else:
        report("SKIP", "sleep / wake", "vLLM has no sleep mode on CPU")

    # 5. close gives the memory back, a second engine builds
    del model_a, model_b
    if on_gpu:
        torch.cuda.empty_cache()
        free_before_close = torch.cuda.mem_get_info()[0]
    gen.close()
    detail = "memory not measured on CPU"
    ok_free = True
    if on_gpu:
        held = free_before_engine - free_before_close  # what the engine holds (the test models are gone)
        given_back = torch.cuda.mem_get_info()[0] - free_before_close
        ok_free = held > 0 and given_back >= 0.9 * held
        detail = f"the engine held {held / 2**30:.2f} GiB, close() gave back {given_back / 2**30:.2f} GiB"
    second = VLLMGenerator(model_path, tokenizer, dtype="bfloat16", max_model_len=512, seed=0)
    ok_second = len(second.generate(prompts[:1], n=1, sampling=sampling)) == 1
    second.close()
    check("close", ok_free and ok_second, f"{detail}; a second engine {'built and generated' if ok_second else 'FAILED'}")


def grpo_run(generator: str, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "rlvr.train", "--generator", generator, "--max_steps", str(steps),
           "--eval_before", "false", "--eval_after", "false", "--save_final_model", "false",
           "--progress_bar", "false", "--output-dir", str(out)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"error": proc.stderr[-1500:]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "wall_s": wall,
        "median_step_s": statistics.median(r["step_time_s"] for r in rows),
        "tokens_per_s": statistics.median(r["generation_tokens_per_s"] for r in rows),
        # the median over the steps after the first (step 1 samples from the untouched checkpoint)
        "is_p5": statistics.median(r.get("is_ratio_p5", 1.0) for r in rows[1:] or rows),
        "is_p95": statistics.median(r.get("is_ratio_p95", 1.0) for r in rows[1:] or rows),
        "reward_first_last": (rows[0]["reward_mean"], rows[-1]["reward_mean"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=20, help="GRPO steps per generator")
    parser.add_argument("--allow-cpu", action="store_true", help="run what exists on CPU (no sleep / memory checks)")
    args = parser.parse_args()
    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.allow_cpu:
        print("no CUDA GPU here: run this on a GPU machine, or pass --allow-cpu for a dry run", file=sys.stderr)
        return 2
    from rlvr.generation import vllm_available
    from rlvr.models import resolve_model

    path = resolve_model(args.model)
    where = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    print(f"rlvr GPU check on {where}; torch {torch.__version__}; model {path}", flush=True)
    if vllm_available():
        import vllm

        print(f"vllm {vllm.__version__}", flush=True)
        try:
            engine_checks(path, on_gpu)
        except Exception as exc:  # noqa: BLE001 -- a crash is a failed check, and the GRPO runs still go
            report("FAIL", "engine checks", f"{type(exc).__name__}: {exc}")
    else:
        report("FAIL" if on_gpu else "SKIP", "engine checks", "vllm is not installed (pip install 'rlvr[vllm]')")

    with tempfile.TemporaryDirectory(prefix="rlvr-gpu-check-") as tmp:
        for generator in (["vllm"] if vllm_available() else []) + ["hf"]:
            r = grpo_run(generator, args.steps, Path(tmp) / generator)
            if "error" in r:
                report("FAIL", f"GRPO {generator}", r["error"].strip().splitlines()[-1] if r["error"].strip() else "failed")
                continue
            spread_ok = generator == "hf" or (0.95 <= r["is_p5"] and r["is_p95"] <= 1.05)
            check(f"GRPO {generator}", spread_ok,
                  f"{args.steps} steps, wall {r['wall_s']:.0f} s, median step {r['median_step_s']:.2f} s, "
                  f"{r['tokens_per_s']:.0f} tokens/s, IS ratio p5/p95 {r['is_p5']:.3f}/{r['is_p95']:.3f}, "
                  f"reward {r['reward_first_last'][0]:.2f} -> {r['reward_first_last'][1]:.2f}")  # fmt: skip
        if on_gpu and torch.cuda.device_count() >= 2 and vllm_available():
            out = Path(tmp) / "ddp"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "rlvr.train",
                   "--generator", "vllm", "--max_steps", "3", "--eval_before", "false", "--eval_after", "false",
                   "--progress_bar", "false", "--output-dir", str(out)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            check("torchrun x2 with vLLM", proc.returncode == 0 and (out / "metrics.jsonl").exists(),
                  "3 steps" if proc.returncode == 0 else proc.stderr[-300:])  # fmt: skip
        else:
            report("SKIP", "torchrun x2 with vLLM", f"{torch.cuda.device_count() if on_gpu else 0} GPU(s) here; needs 2")
    failed = [r for r in RESULTS if r[0] == "FAIL"]
    print(f"{len(RESULTS) - len(failed)} checks passed or skipped, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
