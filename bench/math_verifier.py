r"""Side-by-side benchmark: rlvr's MathVerifier vs Hugging Face Math-Verify.

    python bench/math_verifier.py [--data ../shared/data] [--out bench/results_math.md]

For each labeled file (Math-Verify's own test cases, TinyV HardVerify-Math, rlvr's own
MATH-500/GSM8K set) both scorers run on the same rows in the same process run, one process
each: rlvr with ``max_workers=1`` (the caller's process plus ONE sympy worker process),
Math-Verify as ``verify(parse(gold), parse(pred))`` in this process. Both get the same
warm-up pairs before the clock starts. Then the hostile rows: every one must be answered
within the deadline + 1 s (``timeout_s=2``), or the script exits non-zero.

Extraction options: the two shared files hold mostly unboxed answers (``"f(x)=2x"``,
``"Final Answer: The final answer is $7$"``), so rlvr runs there with
``fallbacks=("final_answer", "answer_is", "last_latex", "whole", "last_number")``; on
Math-Verify's file each row's ``precision`` becomes ``rel_tol = 10**-precision`` (only for
decimals). rlvr's own set uses the defaults (last ``\boxed{}`` only).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlvr.eval import evaluate_math_verify, evaluate_reward, load_cases
from rlvr.rewards import Sample, Status
from rlvr.verifiers.math import MathVerifier

FALLBACKS = ("final_answer", "answer_is", "last_latex", "whole", "last_number")

HOSTILE = [
    ("power tower", "5", r"\boxed{9^{9^{9^{9}}}}"),
    ("huge factorial", "120", r"\boxed{10000000!}"),
    ("5000 nested parentheses", "1", r"\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}"),
    ("3000 nested fractions", "1", r"\boxed{" + r"\frac{" * 3000 + "1" + "}{2}" * 3000 + "}"),
    ("200 kB completion", "7", "blah " * 40_000 + r"\boxed{7}"),
    ("huge exponent literal", "1", r"\boxed{1e999999999}"),
    ("huge integer power", "1", r"\boxed{2^{10^{12}}}"),
    ("solver hang", "1", r"\boxed{(x+1)^{9000} - (x+2)^{9000} < 0}"),
    ("big binomial", "1", r"\boxed{\binom{10^{9}}{5 \cdot 10^{8}}}"),
    ("deep power of symbol", "x", r"\boxed{x^{x^{x^{x^{x^{x}}}}}}"),
    ("sum of 10^9 terms", "1", r"\boxed{\sum_{k=1}^{10^{9}} k}"),
    ("ellipsis to 10^9", "5", r"\boxed{a_1 + a_2 + \cdots + a_{10^{9}}}"),
    ("piecewise, huge bound", r"\begin{cases} 1 & x < 0 \\ 2 & x > 0 \end{cases}", r"\boxed{\begin{cases} 1 & x < 10^{9^{9^9}} \\ 2 & x \ge 0 \end{cases}}"),
]


def run_file(name: str, path: Path, options: dict, row_kwargs: bool, repeat: int) -> list[str]:
    """Both scorers, alternating, ``repeat`` times; the fastest run of each is reported
    (verdicts are identical across runs; the best-of-N tames a noisy shared machine)."""
    cases = load_cases(str(path))
    ours = anchor = None
    for _ in range(repeat):
        o = evaluate_reward("math", cases, {**options, "max_workers": 1}, row_kwargs=row_kwargs)
        m = evaluate_math_verify(cases)
        if ours is None or o.wall_s < ours.wall_s:
            ours = o
        if anchor is None or m.wall_s < anchor.wall_s:
            anchor = m
    a, b = ours.summary(), anchor.summary()
    lines = [f"### {name} ({a['n']} rows)", "", "| metric | rlvr math | math-verify |", "|---|---|---|"]
    for k in ("accuracy", "precision", "recall", "false_positives", "false_negatives", "timeouts", "errors", "p50_latency_ms", "p99_latency_ms", "pairs_per_s"):
        fa = f"{a[k]:.3f}" if isinstance(a[k], float) else str(a[k])
        fb = f"{b[k]:.3f}" if isinstance(b[k], float) else str(b[k])
        lines.append(f"| {k} | {fa} | {fb} |")
    speed = a["pairs_per_s"] / b["pairs_per_s"] if b["pairs_per_s"] else float("inf")
    lines += ["", f"Throughput ratio rlvr / math-verify: **{speed:.1f}x** (fastest of {repeat} alternating runs each).", ""]
    rows = ours.false_positives + ours.false_negatives
    if rows:
        lines.append("<details><summary>rlvr's misclassified rows</summary>\n")
        for r in ours.false_positives:
            lines.append(f"- FP line {r['line']}: `{r['reference'][:80]}` vs `{r['completion'][-80:]}` -- {r['reason'][:100]}".replace("\n", " "))
        for r in ours.false_negatives:
            lines.append(f"- FN line {r['line']}: `{r['reference'][:80]}` vs `{r['completion'][-80:]}` -- {r['reason'][:100]}".replace("\n", " "))
        lines.append("\n</details>\n")
    print("\n".join(lines), flush=True)
    return lines


VARIANTS = [
    ("defaults (stated-precision decimals, phrase_match on)", {}),
    ("phrase_match=False", {"phrase_match": False}),
    ("gold_precision=False (every number exact)", {"gold_precision": False}),
    ("rel_tol=1e-3 (explicit tolerance)", {"rel_tol": 1e-3}),
]


def run_variants(path: Path, options: dict, row_kwargs: bool) -> list[str]:
    """rlvr alone under each option variant: what the text-phrase rule and an explicit
    tolerance do to accuracy and, above all, to false positives (verdicts only, no timing)."""
    cases = load_cases(str(path))
    lines = ["| rlvr options | accuracy | false positives | false negatives |", "|---|---|---|---|"]
    for label, extra in VARIANTS:
        a = evaluate_reward("math", cases, {**options, **extra, "max_workers": 1}, row_kwargs=row_kwargs).summary()
        lines.append(f"| {label} | {a['accuracy']:.3f} | {a['false_positives']} | {a['false_negatives']} |")
    lines.append("")
    print("\n".join(lines), flush=True)
    return lines


def run_pool_only(path: Path, repeat: int) -> list[str]:
    """The same own-set rows with every pair sent to the worker (no in-process shortcut)."""
    cases = load_cases(str(path))
    runs_fast, runs_pooled = [], []
    for _ in range(repeat):
        runs_fast.append(evaluate_reward("math", cases, {"max_workers": 1}).summary())
        runs_pooled.append(evaluate_reward("math", cases, {"max_workers": 1, "cheap_in_process": False}).summary())
    fast = max(runs_fast, key=lambda r: r["pairs_per_s"])
    pooled = max(runs_pooled, key=lambda r: r["pairs_per_s"])
    lines = [
        "### Routing: cheap checks in-process vs everything through the worker pool (own set)",
        "",
        "| routing | accuracy | pairs/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
        f"| strings/numbers in-process, sympy in worker (default) | {fast['accuracy']:.3f} | {fast['pairs_per_s']:.0f} | {fast['p50_latency_ms']:.3f} | {fast['p99_latency_ms']:.3f} |",
        f"| every pair through the worker | {pooled['accuracy']:.3f} | {pooled['pairs_per_s']:.0f} | {pooled['p50_latency_ms']:.3f} | {pooled['p99_latency_ms']:.3f} |",
        "",
    ]
    print("\n".join(lines), flush=True)
    return lines


def run_hostile(timeout_s: float = 2.0) -> tuple[list[str], bool]:
    v = MathVerifier(timeout_s=timeout_s, max_workers=2)
    v.warmup()
    start = time.perf_counter()
    outs = v.score([Sample("", c, reference=r) for _, r, c in HOSTILE])
    wall = time.perf_counter() - start
    v.close()
    ok = True
    lines = [f"### Hostile inputs (deadline {timeout_s:g} s, max_workers=2; limit deadline + 1 s)", "", "| row | status | score | seconds | reason |", "|---|---|---|---|---|"]
    for (name, _, _), out in zip(HOSTILE, outs):
        within = out.elapsed_s <= timeout_s + 1.0
        ok &= within
        score = "-" if out.score is None else f"{out.score:g}"
        lines.append(f"| {name} | {out.status.value} | {score} | {out.elapsed_s:.3f}{'' if within else ' **LATE**'} | {out.reason[:90]} |")
    lines += ["", f"All {len(HOSTILE)} rows answered within deadline + 1 s: **{'yes' if ok else 'NO'}** (batch wall time {wall:.2f} s).", ""]
    assert all(o.status in (Status.OK, Status.TIMEOUT) for o in outs)
    print("\n".join(lines), flush=True)
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="rlvr MathVerifier vs Math-Verify")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=None, help="also write the Markdown here")
    ap.add_argument("--repeat", type=int, default=3, help="alternating timed runs per scorer; the fastest is reported")
    args = ap.parse_args(argv)
    data = Path(args.data)
    from importlib.metadata import version

    import math_verify  # noqa: F401  (fail early with the import error if missing)

    lines = [
        "## Math verifier: rlvr vs Math-Verify",
        "",
        (
            f"Command: `python bench/math_verifier.py --out bench/results_math.md`; python {platform.python_version()}, sympy {version('sympy')}, "
            f"math-verify {version('math-verify')}; {platform.machine()}, shared 2-core machine (timings are noisy)."
        ),
        "",
    ]
    shared = data / "verifier_cases"
    own = ROOT / "rlvr" / "verifiers" / "data" / "math_cases.jsonl"
    files = [
        ("Math-Verify's own test cases (mathverify_tests.jsonl)", shared / "mathverify_tests.jsonl", {"fallbacks": FALLBACKS}, True),
        ("TinyV HardVerify-Math (hardverify_math.jsonl)", shared / "hardverify_math.jsonl", {"fallbacks": FALLBACKS}, False),
        ("rlvr's own MATH-500/GSM8K set (math_cases.jsonl)", own, {}, False),
    ]
    for name, path, options, row_kwargs in files:
        lines += run_file(name, path, options, row_kwargs=row_kwargs, repeat=args.repeat)
    lines += ["### Option variants (rlvr only, same rows)", ""]
    for name, path, options, row_kwargs in files:
        lines += [f"**{name}**", ""]
        lines += run_variants(path, options, row_kwargs)
    lines += run_pool_only(own, args.repeat)
    hostile, ok = run_hostile()
    lines += hostile
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
