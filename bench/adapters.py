r"""Every adapter path, called the way its framework calls it, against the math verifier in-process.

    python bench/adapters.py [--limit N]

rlvr's own labeled math set (``rlvr/verifiers/data/math_cases.jsonl``: 503 completions, each
marked right or wrong) is scored once in-process by ``MathVerifier()`` and once through each
path below, in the calling shape copied from the framework's source (the same shapes the
tests use). For each path the table gives: rows whose verdict differs from in-process, right
answers scored as wrong (the silent zero), wrong answers scored as right, and failed checks
that reach the framework flagged as such.

- TRL 1.16 ``_calculate_rewards``: ``reward_func("math")(prompts=, completions=, completion_ids=,
  trainer_state=, log_extra=, log_metric=, answer=)`` in batches of 8, chat completions;
- veRL 0.9 reward loop (``naive``): ``compute_score(data_source="lighteval/MATH", ...)`` with
  keywords from the loop's thread pool, read as ``result["score"]``;
- veRL ``prime``: positional ``(data_source, solution_str, ground_truth, extra_info)`` in a
  ``ProcessPoolExecutor``, read as ``float(result[0])`` (any exception: the batch is 0.0);
- veRL ``math_dapo`` (``data_source="aime2024"``): the completion's answer restated as DAPO's
  ``Answer: X`` line, a right one must score +1;
- OpenRLHF 0.11 (``SingleTurnAgentExecutor``): one ``reward_func([query], [prompt], [label])``
  per sample in a thread, the prompt (whose system message holds ``\boxed{0}``) cut from the
  left as OpenRLHF cuts a long one;
- ``RemoteReward`` against ``python -m rlvr serve --reward math`` on 127.0.0.1;

and then one count: OpenRLHF's path given the response "I don't know." after a prompt whose
worked example boxes the row's reference (cut from the left): rows that score 1.0 took
prompt text for the answer.

The script runs on any rlvr commit that has these entry points, so a before / after pair is
two runs of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlvr.integrations import openrlhf, verl  # noqa: E402
from rlvr.integrations.remote import RemoteReward  # noqa: E402
from rlvr.integrations.trl import reward_func  # noqa: E402
from rlvr.rewards import Sample, Status  # noqa: E402
from rlvr.verifiers.math import MathVerifier  # noqa: E402
from rlvr.verifiers.math.extraction import extract_answer  # noqa: E402

CASES = ROOT / "rlvr" / "verifiers" / "data" / "math_cases.jsonl"
RAISED = "raised"
SYSTEM = "<|im_start|>system\nIf you are unsure, answer \\boxed{0}. " + "Show your work. " * 20 + "<|im_end|>\n"


def call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
    """veRL's ``_call_with_kwargs`` (verl/trainer/ppo/reward.py)."""
    return raw_fn(*args, **{**kwargs, **extra_kwargs})


def trl_path(rows):
    fn = reward_func("math")
    out = []
    for i in range(0, len(rows), 8):
        chunk = rows[i : i + 8]
        out += fn(
            prompts=[[{"role": "user", "content": "q"}]] * len(chunk),
            completions=[[{"role": "assistant", "content": r["completion"]}] for r in chunk],
            completion_ids=None,
            trainer_state=None,
            log_extra=lambda *a: None,
            log_metric=lambda *a: None,
            answer=[r["reference"] for r in chunk],
        )
    return [None if v is None else v == 1.0 for v in out]


def verl_loop_path(rows, source="lighteval/MATH", key="completion"):
    fn = partial(call_with_kwargs, verl.compute_score, {})

    async def one(row):
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(None, lambda: fn(data_source=source, solution_str=row[key], ground_truth=row["reference"], extra_info={}))
        except Exception:  # noqa: BLE001 -- the reward loop would stop the step here
            return RAISED
        failed = isinstance(result, dict) and result.get("rlvr_failed") == 1.0
        return None if failed else (result["score"] if isinstance(result, dict) else result) == 1.0

    async def run():
        return await asyncio.gather(*[one(r) for r in rows])

    return asyncio.run(run())


def verl_prime_path(rows):
    fn = partial(call_with_kwargs, verl.compute_score, {})
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(partial(fn, "lighteval/MATH", r["completion"], r["reference"], {})) for r in rows]
        out = []
        for f in futures:
            try:
                result = f.result(timeout=300)
                out.append((float(result) if isinstance(result, (int, float, bool)) else float(result[0])) == 1.0)
            except Exception:  # noqa: BLE001 -- veRL's prime: a failed row is 0.0
                out.append(False)
    return out


def openrlhf_path(rows):
    prompt = SYSTEM + "<|im_start|>user\nSolve the problem.<|im_end|>\n<|im_start|>assistant\n"
    cut = prompt[len("<|im_start|>system\n") :]  # OpenRLHF 0.9.1+: prompt_token_ids[-max_prompt_length:]

    def one(row):
        try:
            info = openrlhf.reward_func([cut + row["completion"] + "<|im_end|>"], [prompt], [row["reference"]])
        except Exception:  # noqa: BLE001 -- OpenRLHF logs it and the sample has no reward
            return RAISED
        logs = info.get("extra_logs") or {}
        if "rlvr/failed" in logs and float(logs["rlvr/failed"].flatten()[0]) == 1.0:
            return None
        return float(info["rewards"].flatten()[0]) == 1.0

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, rows))


def prompt_text_scored(rows):
    """OpenRLHF 0.11 with the response "I don't know." and a system prompt whose worked
    example boxes this row's reference, cut from the left: how many rows score the PROMPT's
    box as the answer (the right count is 0)."""
    scored = 0
    for row in rows:
        prompt = (
            f"<|im_start|>system\nShow your work. Example: ... so the answer is \\boxed{{{row['reference']}}}. "
            + "Be careful. " * 20
            + "<|im_end|>\n<|im_start|>user\nSolve the problem.<|im_end|>\n<|im_start|>assistant\n"
        )
        cut = prompt[len("<|im_start|>system\n") :]
        try:
            info = openrlhf.reward_func([cut + "I don't know.<|im_end|>"], [prompt], [row["reference"]])
        except Exception:  # noqa: BLE001
            continue
        scored += float(info["rewards"].flatten()[0]) == 1.0
    return scored


def remote_path(rows):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "rlvr", "serve", "--reward", "math", "--port", str(port)], cwd=ROOT, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        remote = RemoteReward(f"http://127.0.0.1:{port}", reward="math")
        remote.wait_ready(process=server)
        outs = remote.score([Sample("", r["completion"], r["reference"]) for r in rows])
        return [None if o.status is not Status.OK else o.score == 1.0 for o in outs]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    args = parser.parse_args()
    rows = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()][: args.limit]
    for r in rows:  # DAPO's prompt format: the same answer stated as "Answer: X"
        answer, _ = extract_answer(r["completion"])
        r["dapo"] = f"Let me solve it step by step.\nAnswer: {answer}" if answer is not None else r["completion"]
    verifier = MathVerifier()
    base = [None if o.status is not Status.OK else o.score == 1.0 for o in verifier.score([Sample("", r["completion"], r["reference"]) for r in rows])]
    verifier.close()
    paths = {
        "TRL 1.16 _calculate_rewards": trl_path,
        "veRL 0.9 reward loop (naive)": verl_loop_path,
        "veRL prime (positional, process pool)": verl_prime_path,
        "veRL math_dapo (math_dapo, Answer: X)": partial(verl_loop_path, source="math_dapo", key="dapo"),
        "veRL math_dapo (aime2024, Answer: X)": partial(verl_loop_path, source="aime2024", key="dapo"),
        "OpenRLHF 0.11 (per sample, prompt cut from the left)": openrlhf_path,
        "RemoteReward -> rlvr serve": remote_path,
    }
    right = sum(bool(r["expected"]) for r in rows)
    print(f"rows: {len(rows)} ({right} right answers); in-process MathVerifier: {sum(v is True for v in base)} scored right, {sum(v is None for v in base)} failed checks")
    print("| path | s | differ from in-process | right scored wrong | wrong scored right | failed, flagged | raised |")
    print("|---|---|---|---|---|---|---|")
    for name, fn in paths.items():
        start = time.perf_counter()
        got = fn(rows)
        spent = time.perf_counter() - start
        differ = sum(a != b for a, b in zip(got, base))
        silent_zero = sum(1 for g, b in zip(got, base) if b is True and g is False)
        false_pos = sum(1 for g, b in zip(got, base) if b is False and g is True)
        flagged = sum(g is None for g in got)
        raised = sum(g is RAISED for g in got)
        print(f"| {name} | {spent:.1f} | {differ} | {silent_zero} | {false_pos} | {flagged} | {raised} |")
    print(f"OpenRLHF 0.11, response \"I don't know.\", the prompt's example boxing the reference, prompt cut from the left: {prompt_text_scored(rows)} of {len(rows)} rows scored 1.0 (prompt text taken for the answer)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
