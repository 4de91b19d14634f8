"""Speed on the CPU a user has: the precision probe, the engine's start, the choice against a forced run.

    python bench/cpu_speed.py [--parts probe,engine,choice] [--steps 4] [--out runs/bench-cpu]

- ``probe``: what ``rlvr.precision.probe`` measures here (GFLOP/s per shape and dtype), how long it
  takes, and the choice.
- ``engine``: the vLLM engine's ready time (``VLLMGenerator(...)`` built, SmolLM2-135M, the default
  run's settings) in a new process with an empty compile cache, then in a second process with the
  cache the first one left; the same greedy tokens both times; decode tokens/s of each.
- ``choice``: ``python -m rlvr.train`` (the default run, ``--steps`` steps, no evaluation) with the
  machine's choice, then with each precision forced the other way (``--bf16`` for the trainer,
  ``--vllm_dtype`` for the engine, one at a time): median step time, training and generation time,
  generated tokens/s and the importance-ratio spread (``is_ratio_p95 - is_ratio_p5``). A forced run
  slower than ``--give-up-s`` per step stops there and is reported as at least that slow.

Prints the CPU and a markdown table per part. Run it alone (it times the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generation_server import cpu  # noqa: E402 -- the bench scripts' one description of the CPU

ENGINE = """
import json, sys, time
if __name__ == "__main__":
    start = time.perf_counter()
    from transformers import AutoTokenizer
    from rlvr.generation import SamplingConfig, VLLMGenerator
    from rlvr.models import resolve_model
    path = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    t0 = time.perf_counter()
    gen = VLLMGenerator(path, tok, dtype=sys.argv[1], log_file=sys.argv[2])
    ready = time.perf_counter() - t0
    greedy = gen.generate([[{"role": "user", "content": "What is 17 + 25?"}]], n=1, sampling=SamplingConfig(temperature=0, max_tokens=32))
    prompts = [[{"role": "user", "content": f"What is {i} + {i * 7}?"}] for i in range(2)]
    rates = []
    for r in range(3):
        t = time.perf_counter()
        outs = gen.generate(prompts, n=8, sampling=SamplingConfig(max_tokens=64, seed=r))
        rates.append(sum(len(o.completion_ids) for o in outs) / (time.perf_counter() - t))
    print("RESULT " + json.dumps({"ready_s": ready, "greedy": greedy[0].completion_ids, "tokens_per_s": sorted(rates)[1]}))
    gen.close()
"""


def part_probe() -> None:
    import torch

    from rlvr.precision import decide, probe

    start = time.perf_counter()
    rates = probe(torch.device("cpu"))
    took = time.perf_counter() - start
    train_bf16, engine, why = decide(rates)
    print(f"\n### probe ({took:.2f} s, torch {torch.__version__}, {torch.get_num_threads()} threads)\n")
    print("| shape | " + " | ".join(sorted({d for r in rates.values() for d in r})) + " |")
    dtypes = sorted({d for r in rates.values() for d in r})
    print("|---|" + "---|" * len(dtypes))
    for shape, r in rates.items():
        print(f"| {shape} | " + " | ".join(f"{r[d]:.1f}" if d in r else "not timed" for d in dtypes) + " |")
    print(f"\nchoice: trainer {'bf16' if train_bf16 else 'fp32'}, engine {engine} ({why})")


def part_engine(out: Path, dtype: str) -> None:
    cache = Path(tempfile.mkdtemp(prefix="rlvr-bench-vllm-cache-"))
    env = {**os.environ, "VLLM_CACHE_ROOT": str(cache)}
    rows = []
    try:
        for run in ("first (empty cache)", "second (cache of the first)"):
            log = out / f"engine-{len(rows)}.log"
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", ENGINE, dtype, str(log)], capture_output=True, text=True, env=env, cwd=REPO)
            whole = time.perf_counter() - start
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"engine run failed:\n{proc.stderr[-3000:]}")
            result = json.loads(line[7:])
            text = log.read_text()
            how = "loaded the saved graph" if "Directly load AOT compilation" in text else "compiled"
            rows.append((run, result, whole, how))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"\n### engine ready (dtype {dtype})\n")
    print("| run | engine ready (s) | process start to exit (s) | graph | decode tokens/s (16 x 64) |")
    print("|---|---|---|---|---|")
    for run, result, whole, how in rows:
        print(f"| {run} | {result['ready_s']:.1f} | {whole:.1f} | {how} | {result['tokens_per_s']:.0f} |")
    same = rows[0][1]["greedy"] == rows[1][1]["greedy"]
    print(f"\nthe same greedy tokens both times: {same}")


def train(out: Path, steps: int, give_up_s: float, *extra: str) -> dict:
    """The default run for ``steps`` steps (no evaluation), stopped early when a step is slower than ``give_up_s``."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "rlvr.train", "--max_steps", str(steps), "--eval_before", "false", "--eval_after", "false",
            "--save_final_model", "false", "--progress_bar", "false", "--output-dir", str(out), *extra]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    stopped, seen = False, 0
    last_step_at = time.perf_counter() + 180  # the engine's start (a compile: about 90 s) is not a step
    while proc.poll() is None:
        time.sleep(1)
        rows = metrics.read_text().splitlines() if metrics.exists() else []
        if len(rows) != seen:
            seen, last_step_at = len(rows), time.perf_counter()
        if time.perf_counter() - last_step_at > give_up_s:
            proc.kill()
            stopped = True
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()] if metrics.exists() else []
    resolved = json.loads((out / "config.json").read_text()).get("resolved", {}) if (out / "config.json").exists() else {}
    if not rows:
        return {"stopped": True, "resolved": resolved}

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows if key in r)

    return {
        "steps": len(rows),
        "stopped": stopped,
        "step_s": med("step_time_s"),
        "train_s": med("train_time_s"),
        "gen_s": med("generation_time_s"),
        "tokens_per_s": med("generation_tokens_per_s"),
        "is_spread": med("is_ratio_p95") - med("is_ratio_p5") if "is_ratio_p95" in rows[0] else float("nan"),
        "mfu": med("mfu") if "mfu" in rows[0] else float("nan"),
        "resolved": resolved,
    }


def part_choice(out: Path, steps: int, give_up_s: float) -> None:
    import torch

    from rlvr.precision import machine_precision

    choice = machine_precision(torch.device("cpu"))
    other_train = "false" if choice.train_bf16 else "true"
    other_engine = "float32" if choice.engine_dtype != "float32" else "bfloat16"
    runs = [
        ("the machine's choice", ()),
        (f"trainer forced {'fp32' if choice.train_bf16 else 'bf16'}", ("--bf16", other_train)),
        (f"engine forced {other_engine}", ("--vllm_dtype", other_engine)),
    ]
    print(f"\n### the choice against forced runs ({steps} steps each; the choice: trainer "
          f"{'bf16' if choice.train_bf16 else 'fp32'}, engine {choice.engine_dtype})\n")  # fmt: skip
    print("| run | trainer | engine | median step (s) | training (s) | generation (s) | gen tokens/s | is_ratio p95-p5 | mfu |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    for name, extra in runs:
        r = train(out / name.replace(" ", "-").replace("'", ""), steps, give_up_s, *extra)
        res = r["resolved"]
        if r.get("steps") is None:
            print(f"| {name} | {res.get('trainer_precision', '?')} | {res.get('engine_dtype', '?')} | > {give_up_s:.0f} (no step in time) | | | | | |")
            continue
        base = base or r["step_s"]
        note = f" (stopped after {r['steps']})" if r["stopped"] else ""
        print(f"| {name} | {res.get('trainer_precision')} | {res.get('engine_dtype')} | {r['step_s']:.2f}{note} ({r['step_s'] / base:.2f}x) "
              f"| {r['train_s']:.2f} | {r['gen_s']:.2f} | {r['tokens_per_s']:.0f} | {r['is_spread']:.2e} | {r['mfu']:.3f} |")  # fmt: skip
        sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="probe,engine,choice")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--give-up-s", type=float, default=240.0, help="a forced run's step slower than this stops it")
    ap.add_argument("--engine-dtype", default="float32", help="the engine dtype the ready-time part builds")
    ap.add_argument("--out", default="runs/bench-cpu")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu()}; load average at the start {os.getloadavg()[0]:.2f}")
    parts = args.parts.split(",")
    if "probe" in parts:
        part_probe()
    if "engine" in parts:
        part_engine(out, args.engine_dtype)
    if "choice" in parts:
        part_choice(out, args.steps, args.give_up_s)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
