r"""Reward-server overhead: math verifier pairs/s in-process vs through ``RemoteReward``.

    python bench/reward_server.py [--batch 64] [--repeat 5] [--workers 2] [--server-args '...']

The same labeled pairs (rlvr's own ``rlvr/verifiers/data/math_cases.jsonl``, 503 rows)
are scored in batches of ``--batch``:

1. in-process: ``MathVerifier()`` with its defaults (cheap pairs in the caller, sympy in its
   own worker processes);
2. through HTTP: ``python -m rlvr serve --reward math`` started as a real process on
   127.0.0.1 (a free port), scored with ``RemoteReward`` from this process, one batch at a
   time (the same load shape as the in-process run).

Both get one full warm-up pass outside the clock; each is timed ``--repeat`` times
(``--passes`` passes over the pairs per run), alternating, and the median pairs/s is reported with the ratio remote / in-process. The
verdicts must agree row for row (the script exits non-zero if not).

``--clients N`` sends the remote passes from N threads at once (each its own connection,
each scoring every pair), the load of N trainer processes sharing one server: with the
server's ``--concurrency`` at N or more, their batches are scored side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlvr.integrations.remote import RemoteReward
from rlvr.rewards import Sample
from rlvr.verifiers.math import MathVerifier

CASES = ROOT / "rlvr" / "verifiers" / "data" / "math_cases.jsonl"


def load_samples() -> list[Sample]:
    """Every labeled row of rlvr's own math set as a Sample."""
    rows = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    return [Sample("", r["completion"], r["reference"]) for r in rows]


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_batches(reward, samples: list[Sample], batch: int, passes: int = 1) -> tuple[float, list]:
    """Seconds to score ``samples`` ``passes`` times in batches of ``batch``, and the last pass's outcomes."""
    start = time.perf_counter()
    for _ in range(passes):
        outcomes = []
        for i in range(0, len(samples), batch):
            outcomes.extend(reward.score(samples[i : i + batch]))
    return time.perf_counter() - start, outcomes


def run_clients(reward, samples: list[Sample], batch: int, passes: int, clients: int) -> tuple[float, list]:
    """``run_batches`` from ``clients`` threads at once: the wall time, and one thread's outcomes."""
    if clients == 1:
        return run_batches(reward, samples, batch, passes)
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: run_batches(reward, samples, batch, passes), range(clients)))
    return time.perf_counter() - start, results[0][1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each scorer (the median is reported)")
    parser.add_argument("--passes", type=int, default=4, help="passes over the pairs in one timed run")
    parser.add_argument("--workers", type=int, default=2, help="the server's --workers")
    parser.add_argument("--server-args", default="", help="more `python -m rlvr serve` arguments")
    parser.add_argument("--clients", type=int, default=1, help="threads sending the remote passes at once")
    args = parser.parse_args()

    samples = load_samples()
    local = MathVerifier()
    port = free_port()
    cmd = [sys.executable, "-m", "rlvr", "serve", "--reward", "math", "--port", str(port), "--workers", str(args.workers)]
    cmd += shlex.split(args.server_args)
    server = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    try:
        remote = RemoteReward(f"http://127.0.0.1:{port}", reward="math", max_batch=args.batch)
        try:
            remote.wait_ready(process=server)
        except ConnectionError as exc:
            print(f"the server did not come up: {exc}", file=sys.stderr)
            return 1
        # warm-up, outside the clock: worker start-up, sympy's first-use caches
        local.warmup()
        _, want = run_batches(local, samples, args.batch)
        _, got = run_batches(remote, samples, args.batch)
        times = {"in-process": [], "remote": []}
        for _ in range(args.repeat):
            t, outs_local = run_batches(local, samples, args.batch, args.passes)
            times["in-process"].append(t)
            t, outs_remote = run_clients(remote, samples, args.batch, args.passes, args.clients)
            times["remote"].append(t / args.clients)  # seconds per client's worth of pairs
        mismatch = [
            i for i, (a, b) in enumerate(zip(outs_local, outs_remote)) if (a.status, a.score) != (b.status, b.score)
        ]
        rates = {k: args.passes * len(samples) / statistics.median(v) for k, v in times.items()}
        print(
            f"pairs: {len(samples)} x {args.passes} passes per run, batch {args.batch}, {args.repeat} timed runs each (median), "
            f"remote clients at once: {args.clients}, server: {' '.join(cmd[2:])}"
        )
        print("| scorer | median s per run | pairs/s | min s | max s |")
        print("|---|---|---|---|---|")
        for k, v in times.items():
            print(f"| {k} | {statistics.median(v):.3f} | {rates[k]:.0f} | {min(v):.3f} | {max(v):.3f} |")
        print(f"ratio remote / in-process: {rates['remote'] / rates['in-process']:.2f}x")
        print(f"verdicts that differ: {len(mismatch)} (warm-up pass: {sum((a.status, a.score) != (b.status, b.score) for a, b in zip(want, got))})")
        if hasattr(local, "close"):
            local.close()
        return 1 if mismatch else 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


if __name__ == "__main__":
    raise SystemExit(main())
