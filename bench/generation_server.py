"""The default GRPO run three ways: colocated vLLM, through ``rlvr serve-generation`` (with the server
killed mid-run and started again 20 s later), and with asynchronous rollouts (``max_staleness: 1``).

    python bench/generation_server.py [--runs colocated,server,stale,server_stale] [--out runs/bench-gen]

Each run is the whole ``python -m rlvr.train`` command (defaults: arithmetic, SmolLM2-135M-Instruct,
40 steps), timed from start to exit. For the server run the server is started first (its start-up is
reported apart), and once step ``--kill-at`` is logged it is killed with SIGKILL and started again
``--down-s`` seconds later; the script then checks that metrics.jsonl has every step once.
Prints the CPU, one line per run and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{info.get('Model name', '?').strip()} (family {info.get('CPU family', '?').strip()} model {info.get('Model', '?').strip()}), {os.cpu_count()} CPUs, flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}"


def start_server(port: int, log: Path) -> subprocess.Popen:
    out = open(log, "a")
    return subprocess.Popen([sys.executable, "-m", "rlvr", "serve-generation", "--port", str(port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str) -> float:
    from rlvr.generation_server import GenerationServerError, check_link

    start = time.perf_counter()
    while True:
        try:
            check_link(url, timeout_s=600)
            return time.perf_counter() - start
        except GenerationServerError:
            time.sleep(0.5)


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for ln in path.read_text().splitlines():
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:
            pass
    return rows


def train(out: Path, extra: list[str], on_step=None) -> float:
    cmd = [sys.executable, "-m", "rlvr.train", "--output-dir", str(out), *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if on_step is not None:
                on_step(read_lines(out / "metrics.jsonl"))
            time.sleep(0.5)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"training failed ({proc.returncode}); see {out.with_suffix('.log')}")
    return wall


def summary(name: str, out: Path, wall: float, extra: dict | None = None) -> dict:
    rows = read_lines(out / "metrics.jsonl")
    ev = json.loads((out / "eval.json").read_text())
    med = lambda key: statistics.median(r[key] for r in rows if key in r) if any(key in r for r in rows) else None  # noqa: E731
    steps = [r["step"] for r in rows]
    result = {
        "run": name, "wall_s": wall, "steps": steps == list(range(1, len(steps) + 1)) and len(steps),
        "before": ev["before"]["accuracy"], "after": ev["after"]["accuracy"], "median_step_s": med("step_time_s"),
        "median_train_s": med("train_time_s"), "median_generation_s": med("generation_time_s"),
        "median_weight_sync_s": med("weight_sync_time_s"), "median_weight_push_s": med("weight_push_time_s"),
        "staleness_max": max((r.get("staleness_max", 0) for r in rows), default=None),
        "is_p5_median": med("is_ratio_p5"), "is_p95_median": med("is_ratio_p95"),
        **(extra or {}),
    }  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


def push_times(port: int, root: Path, repeats: int = 5) -> dict:
    """Seconds to push the default model's weights to a server, per transport (median of ``repeats``),
    and the colocated engine's in-place reload for comparison."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.generation_server import VLLMServerGenerator
    from rlvr.models import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    size = sum(v.numel() * v.element_size() for k, v in state.items() if k != "lm_head.weight")
    server = start_server(port, root / "push-server.log")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    out = {"run": "push", "bytes": size}
    try:
        for transport in ("shm", "http"):
            client = VLLMServerGenerator(url, tokenizer, transport=transport)
            times = []
            for i in range(repeats):
                with torch.no_grad():
                    start = time.perf_counter()
                    client.load_weights(state, version=i + 1)
                    times.append(time.perf_counter() - start)
            out[transport] = statistics.median(times)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="colocated,server,stale")
    ap.add_argument("--out", default="runs/bench-gen")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--kill-at", type=int, default=10, help="kill the server once this step is logged")
    ap.add_argument("--down-s", type=float, default=20.0, help="seconds the server stays down")
    args = ap.parse_args()
    root = REPO / args.out
    root.mkdir(parents=True, exist_ok=True)
    print("# CPU:", cpu(), flush=True)
    print("# start:", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), flush=True)
    results = []
    url = f"http://127.0.0.1:{args.port}"
    for name in args.runs.split(","):
        out = root / name
        subprocess.run(["rm", "-rf", str(out)])
        if name == "colocated":
            results.append(summary(name, out, train(out, [])))
        elif name == "stale":
            results.append(summary(name, out, train(out, ["--max-staleness", "1"])))
        elif name in ("server", "server_stale"):
            log = root / f"{name}-server.log"
            log.unlink(missing_ok=True)
            server = [start_server(args.port, log)]
            ready_s = wait_ready(url)
            state = {"killed": None, "restarted": None}

            def on_step(rows: list[dict], name=name, state=state, server=server, log=log) -> None:
                if name == "server" and state["killed"] is None and rows and rows[-1]["step"] >= args.kill_at:
                    server[0].send_signal(signal.SIGKILL)
                    server[0].wait()
                    state["killed"] = rows[-1]["step"]
                    state["killed_at"] = time.perf_counter()
                if state["killed"] is not None and state["restarted"] is None and time.perf_counter() - state["killed_at"] >= args.down_s:
                    server[0] = start_server(args.port, log)
                    state["restarted"] = time.perf_counter() - state["killed_at"]

            extra = ["--generator", "vllm_server", "--vllm-server-url", url]
            if name == "server_stale":
                extra += ["--max-staleness", "1"]
            wall = train(out, extra, on_step)
            server[0].send_signal(signal.SIGINT)
            try:
                server[0].wait(30)
            except subprocess.TimeoutExpired:
                server[0].kill()
            info = {"server_start_s": ready_s, "killed_after_step": state["killed"], "restarted_after_s": state["restarted"]}
            rows = read_lines(out / "metrics.jsonl")
            if state["killed"] is not None:
                hit = next(r for r in rows if r["step"] == state["killed"] + 1)
                info["step_with_restart_s"] = hit["step_time_s"]
            results.append(summary(name, out, wall, info))
        elif name == "push":
            results_push = push_times(args.port, root)
            print(json.dumps(results_push), flush=True)
        else:
            raise SystemExit(f"unknown run {name!r}")
    print("# end:", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), flush=True)
    print()
    print("| run | whole command | every step once | held-out before -> after | median step (train / generation) | weight sync or push per step | staleness max |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        sync = r["median_weight_push_s"] if r["median_weight_push_s"] is not None else r["median_weight_sync_s"]
        print(
            f"| {r['run']} | {r['wall_s'] / 60:.1f} min | {r['steps']} steps | {r['before']:.1%} -> {r['after']:.1%} | "
            f"{r['median_step_s']:.2f} s ({r['median_train_s']:.2f} / {r['median_generation_s']:.2f}) | {sync:.3f} s | {r['staleness_max']} |"
        )


if __name__ == "__main__":
    main()
