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
5. multi-turn episodes through the engine (a scripted environment that always answers, 3 turns):
   one generate call per turn, each turn's token ids extend the last prompt exactly, and the
   engine's log-probs of the sampled tokens match the packed training forward over the whole
   episodes within bf16 tolerance (the environment's tokens have none);
6. ``close()`` gives back at least 90% of what the engine held, and a second engine builds;
7. 20 steps of the default GRPO run (arithmetic, SmolLM2-135M-Instruct) with ``generator=vllm``
   and with ``generator=hf``: median step time, generation tokens/s, and the importance-ratio
   spread (vLLM: the median over steps 2.. of each step's p5 / p95 within 0.95-1.05);
   and 3 steps of GRPO on ``code_arith_feedback`` (3 turns, bubblewrap feedback) with vLLM;
8. with two or more GPUs, ``torchrun --nproc_per_node 2 -m rlvr.train --generator vllm``;
9. the generation server: ``python -m rlvr serve-generation`` on its own GPU (the second one where there
   are two, else beside the trainer with 0.3 of the card), then the GRPO run through it with
   ``--generator vllm_server`` at ``max_staleness`` 0 and 1: median step, weight push per step,
   staleness, and the speedup of K=1 over K=0 (generation overlapping training); then a few steps with
   ``--weight_transport nccl`` (NCCL from the trainer's GPU to the server's workers);
10. sharded training: ``torchrun --nproc_per_node 2 -m rlvr.train --parallelism fsdp`` (one process per
    GPU, NCCL, bf16 mixed precision where the GPU has bf16) with ``generator=hf`` (and ``vllm`` where
    installed: weights streamed one gathered tensor at a time), against ``--parallelism ddp``: both run,
    the median step of each, and a resume from the sharded checkpoint. Needs two GPUs; with
    ``--allow-cpu`` on a machine without, it runs on two CPU processes (gloo);
11. precision: what ``rlvr.precision.machine_precision`` chooses on the device (CUDA: bf16 where the card
    supports it) and the peak it measures there (the bf16 and fp32 1024^3 matmul rates ``mfu`` divides by),
    and that the GRPO runs of check 7 log ``mfu`` in (0, 1).

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


def report_failed_run(name: str, r: dict) -> None:
    """A run that exited non-zero: FAIL with the last line it printed."""
    report("FAIL", name, r["error"].strip().splitlines()[-1] if r["error"].strip() else "failed")


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

    # 5. multi-turn episodes: token-exact prompts, log-probs of the sampled tokens only
    multi_turn_check(gen, model_a, tokenizer, device)

    # 6. close gives the memory back, a second engine builds
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


def multi_turn_check(gen, model, tokenizer, device) -> None:
    import torch

    from rlvr.environments.base import Task
    from rlvr.environments.multiturn import MultiTurnEnvironment
    from rlvr.episodes import EpisodeLimits, run_episodes
    from rlvr.generation import SamplingConfig
    from rlvr.rewards import FunctionReward, Outcome
    from rlvr.trainers.modeling import completion_logprobs
    from rlvr.trainers.rollouts import Rollout, batch_tensors

    class Again(MultiTurnEnvironment):
        name = "again"

        def tasks(self, split="train"):
            return [Task([{"role": "user", "content": f"Name {k} animals."}], None) for k in (2, 3)]

        def respond(self, task, messages, state):
            return [{"role": "user", "content": "Now name a different one."}]

        def reward(self):
            return FunctionReward(lambda s: 1.0)

    gen.load_weights(model)
    calls = []
    original = gen.generate

    def recording(prompts, n, sampling):
        outs = original(prompts, n, sampling)
        calls.append(([list(p) for p in prompts], outs))
        return outs

    gen.generate = recording
    try:
        env = Again()
        eps = run_episodes(gen, env, env.tasks(), 4, SamplingConfig(temperature=1.0, max_tokens=24, seed=5), EpisodeLimits(3, 512, 30))
    finally:
        gen.generate = original
    exact = len(calls) == 3 and all(e.turns == 3 for e in eps)
    for k, e in enumerate(eps):
        exact = exact and e.prompt_ids + e.completion_ids == calls[2][0][k] + calls[2][1][k].completion_ids
        for t in (1, 2):
            before = calls[0][0][k // 4] if t == 1 else calls[t - 1][0][k]
            sampled = calls[t - 1][1][k].completion_ids
            exact = exact and calls[t][0][k][: len(before) + len(sampled)] == list(before) + sampled
    batch = batch_tensors([Rollout(env.tasks()[e.prompt_index], e, Outcome.ok(1.0)) for e in eps], tokenizer.pad_token_id)
    mask = batch["completion_mask"] > 0
    with torch.no_grad():
        logp = completion_logprobs(model, batch, 1.0, device.type == "cuda", device).cpu()
    gap = float((logp[mask] - batch["sampler_logp"][mask]).abs().mean())
    check("multi-turn episodes", exact and gap < 0.05 and bool((logp[~mask] == 0).all()),
          f"8 episodes x 3 turns in {len(calls)} generate calls, prompts {'extend exactly' if exact else 'DRIFT'}; "
          f"mean |vllm - packed trainer| = {gap:.4f} nats on {int(mask.sum())} sampled tokens, "
          f"{int((~mask & (batch['completion_attention_mask'] > 0)).sum())} environment tokens without a target")  # fmt: skip


def grpo_run(generator: str, steps: int, out: Path, extra: list[str] | None = None) -> dict:
    cmd = [sys.executable, "-m", "rlvr.train", "--generator", generator, "--max_steps", str(steps),
           "--eval_before", "false", "--eval_after", "false", "--save_final_model", "false",
           "--progress_bar", "false", "--output-dir", str(out), *(extra or [])]  # fmt: skip
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
        "turns_mean": statistics.mean(r.get("turns_mean", 1.0) for r in rows),
        "staleness_max": max(r.get("staleness_max", 0) for r in rows),
        "push_s": statistics.median(r.get("weight_push_time_s", r.get("weight_sync_time_s", 0.0)) for r in rows),
        "mfu": statistics.median(r.get("mfu", float("nan")) for r in rows),
    }


def precision_check(on_gpu: bool) -> None:
    import torch

    from rlvr.precision import machine_precision

    device = torch.device("cuda" if on_gpu else "cpu")
    choice = machine_precision(device, refresh=True)
    peak = choice.gflops.get("peak", {})
    expected = torch.cuda.is_bf16_supported() if on_gpu else choice.train_bf16
    check("precision", choice.train_bf16 == expected and peak.get("float32", 0) > 0,
          f"{choice.source}: trainer {'bf16' if choice.train_bf16 else 'fp32'}, engine {choice.engine_dtype}; "
          f"peak {', '.join(f'{d} {r:.0f} GFLOP/s' for d, r in peak.items())}; probe {choice.probe_s:.2f} s")  # fmt: skip


def server_checks(steps: int, tmp: Path, on_gpu: bool) -> None:
    """Section 9: the GRPO run through a generation server, synchronous and with max_staleness 1."""
    import socket

    import torch

    from rlvr.generation_server import GenerationServerError, check_link

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    if on_gpu and torch.cuda.device_count() >= 2:
        env["CUDA_VISIBLE_DEVICES"] = "1"  # the server on its own GPU; the trainer keeps GPU 0
    log = open(tmp / "server.log", "w")
    cmd = [sys.executable, "-m", "rlvr", "serve-generation", "--port", str(port)]
    if on_gpu and torch.cuda.device_count() < 2:
        cmd += ["--gpu-memory-utilization", "0.3"]
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.perf_counter()
        while True:
            try:
                check_link(url, timeout_s=600)
                break
            except GenerationServerError:
                if server.poll() is not None or time.perf_counter() - start > 600:
                    raise
                time.sleep(1)
        report("PASS", "generation server start", f"ready in {time.perf_counter() - start:.0f} s")
        runs = {}
        for k in (0, 1):
            extra = ["--vllm_server_url", url, "--max_staleness", str(k)]
            r = runs[k] = grpo_run("vllm_server", steps, tmp / f"server-k{k}", extra)
            if "error" in r:
                report_failed_run(f"GRPO vllm_server K={k}", r)
                continue
            check(f"GRPO vllm_server K={k}", r["staleness_max"] == k and 0.8 <= r["is_p5"] and r["is_p95"] <= 1.25,
                  f"{steps} steps, median step {r['median_step_s']:.2f} s, weight push {r['push_s']:.3f} s/step, "
                  f"staleness max {r['staleness_max']}, IS ratio p5/p95 {r['is_p5']:.3f}/{r['is_p95']:.3f}, "
                  f"reward {r['reward_first_last'][0]:.2f} -> {r['reward_first_last'][1]:.2f}")  # fmt: skip
        if on_gpu:  # NCCL weight push, device to device (written for GPUs; this is where it first runs)
            r = grpo_run("vllm_server", min(steps, 5), tmp / "server-nccl", ["--vllm_server_url", url, "--weight_transport", "nccl"])
            if "error" in r:
                report_failed_run("GRPO vllm_server nccl", r)
            else:
                check("GRPO vllm_server nccl", 0.8 <= r["is_p5"] and r["is_p95"] <= 1.25,
                      f"{min(steps, 5)} steps, weight push {r['push_s']:.3f} s/step (shm: "
                      f"{runs[0].get('push_s', float('nan')):.3f}), IS ratio p5/p95 {r['is_p5']:.3f}/{r['is_p95']:.3f}")  # fmt: skip
        else:
            report("SKIP", "GRPO vllm_server nccl", "NCCL needs a GPU on both sides")
        if all("error" not in r for r in runs.values()):
            report("INFO", "max_staleness 1 vs 0 through the server",
                   f"median step {runs[0]['median_step_s']:.2f} s -> {runs[1]['median_step_s']:.2f} s "
                   f"({runs[0]['median_step_s'] / runs[1]['median_step_s']:.2f}x)")  # fmt: skip
    except Exception as exc:  # noqa: BLE001 -- a crash is a failed check
        report("FAIL", "generation server", f"{type(exc).__name__}: {exc}; log: {tmp / 'server.log'}")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


def fsdp_checks(tmp: Path, on_gpu: bool) -> None:
    """Section 10: GRPO over two processes, sharded (fsdp) and replicated (ddp), then a resume of the sharded run."""
    import torch

    if on_gpu and torch.cuda.device_count() < 2:
        report("SKIP", "torchrun x2 --parallelism fsdp", "1 GPU here; NCCL puts one process on each GPU, so this needs 2")
        return
    from rlvr.generation import vllm_available

    env = dict(os.environ)
    if not on_gpu:
        env["OMP_NUM_THREADS"] = "1"
    steps = 4
    for generator in ["hf"] + (["vllm"] if on_gpu and vllm_available() else []):
        medians = {}
        for parallelism in ("ddp", "fsdp"):
            out = tmp / f"{parallelism}-{generator}"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "rlvr.train",
                   "--generator", generator, "--parallelism", parallelism, "--max_steps", str(steps), "--save_steps", "2",
                   "--eval_before", "false", "--eval_after", "false", "--progress_bar", "false", "--output-dir", str(out)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            name = f"torchrun x2 --parallelism {parallelism} --generator {generator}"
            if proc.returncode or not (out / "metrics.jsonl").exists():
                report("FAIL", name, (proc.stderr.strip().splitlines() or ["failed"])[-1][-300:])
                continue
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            medians[parallelism] = statistics.median(r["step_time_s"] for r in rows[1:])
            estimate = next((line for line in proc.stdout.splitlines() if line.startswith("memory per process")), "")
            check(name, len(rows) == steps and (out / "final" / "config.json").exists(),
                  f"{steps} steps, median step {medians[parallelism]:.2f} s, reward {rows[0]['reward_mean']:.2f} -> "
                  f"{rows[-1]['reward_mean']:.2f}; {estimate}")  # fmt: skip
            if parallelism == "fsdp":  # resume the sharded checkpoint of step 2 and run to the end again
                proc = subprocess.run([*cmd, "--resume", str(out / "checkpoint-2")], capture_output=True, text=True, check=False, env=env)
                again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                same = proc.returncode == 0 and [r["loss"] for r in again] == [r["loss"] for r in rows]
                check(f"fsdp resume from checkpoint-2 ({generator})", same,
                      "steps 3-4 give the uninterrupted run's losses" if same else (proc.stderr.strip().splitlines() or ["?"])[-1][-300:])
        if len(medians) == 2:
            report("INFO", f"fsdp vs ddp step ({generator})", f"{medians['fsdp']:.2f} s vs {medians['ddp']:.2f} s "
                   f"({medians['fsdp'] / medians['ddp']:.2f}x)")  # fmt: skip


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

    try:
        precision_check(on_gpu)
    except Exception as exc:  # noqa: BLE001 -- a crash is a failed check
        report("FAIL", "precision", f"{type(exc).__name__}: {exc}")
    with tempfile.TemporaryDirectory(prefix="rlvr-gpu-check-") as tmp:
        for generator in (["vllm"] if vllm_available() else []) + ["hf"]:
            r = grpo_run(generator, args.steps, Path(tmp) / generator)
            if "error" in r:
                report_failed_run(f"GRPO {generator}", r)
                continue
            spread_ok = generator == "hf" or (0.95 <= r["is_p5"] and r["is_p95"] <= 1.05)
            check(f"GRPO {generator}", spread_ok and 0 < r["mfu"] < 1,
                  f"{args.steps} steps, wall {r['wall_s']:.0f} s, median step {r['median_step_s']:.2f} s, mfu {r['mfu']:.3f}, "
                  f"{r['tokens_per_s']:.0f} tokens/s, IS ratio p5/p95 {r['is_p5']:.3f}/{r['is_p95']:.3f}, "
                  f"reward {r['reward_first_last'][0]:.2f} -> {r['reward_first_last'][1]:.2f}")  # fmt: skip
        if vllm_available():
            example = Path(__file__).resolve().parents[1] / "examples" / "code_arith_feedback.yaml"
            extra = ["--config", str(example), "--eval_max_tasks", "10"]
            r = grpo_run("vllm", 3, Path(tmp) / "multi-turn", extra)
            if "error" in r:
                report_failed_run("GRPO multi-turn vllm", r)
            else:
                check("GRPO multi-turn vllm", 0.9 <= r["is_p5"] and r["is_p95"] <= 1.1,
                      f"code_arith_feedback, 3 steps, wall {r['wall_s']:.0f} s, median step {r['median_step_s']:.2f} s, "
                      f"{r['turns_mean']:.2f} turns/episode, IS ratio p5/p95 {r['is_p5']:.3f}/{r['is_p95']:.3f}")  # fmt: skip
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
        if vllm_available():
            server_checks(args.steps, Path(tmp), on_gpu)
        else:
            report("FAIL" if on_gpu else "SKIP", "generation server", "vllm is not installed")
        fsdp_checks(Path(tmp), on_gpu)
    failed = [r for r in RESULTS if r[0] == "FAIL"]
    print(f"{len(RESULTS) - len(failed)} checks passed or skipped, {len(failed)} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
