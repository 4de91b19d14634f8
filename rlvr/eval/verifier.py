r"""``python -m rlvr.eval verifier``: is a reward right? Measure it on labeled cases.

Reward correctness::

    python -m rlvr.eval verifier math --cases cases.jsonl [--compare math-verify] [--json out.json]

Each line of ``cases.jsonl`` is one labeled pair: the reference (``reference``, or
``gold``/``answer``/``solution``), the completion (``completion``, or ``pred``/
``prediction``/``response``) and the label (``expected``, or ``label``/``correct``: true
when the completion is right). The harness prints accuracy, precision and recall (a
"positive" is a pair the reward accepts), every false positive and false negative with its
row, timeouts, errors, p50/p99 latency and pairs per second. ``--compare math-verify``
scores the same rows with Hugging Face's Math-Verify (``verify(parse(gold), parse(pred))``)
in the same run and prints both side by side.

Options for the verifier are passed with ``--option key=value`` (repeatable; values are
read as JSON when they parse, else as strings; ``--option fallbacks=whole,last_number``
gives a tuple). ``--row-kwargs`` applies the ``kwargs`` some case files carry per row
(Math-Verify's own test options): ``precision: p`` becomes ``rel_tol=10**-p``, which only
ever applies when one side is written as a decimal. Other Math-Verify options
(``strict``, ``allow_set_relation_comp``, ``match_types``) have no equivalent and are ignored.

``python -m rlvr.eval env ...`` (a model's pass@k on an environment) lives in :mod:`rlvr.eval.env`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LabeledCase", "Report", "add_parser", "evaluate_math_verify", "evaluate_reward", "load_cases"]

_REF_KEYS = ("reference", "gold", "answer", "solution")
_COMP_KEYS = ("completion", "pred", "prediction", "response")
_LABEL_KEYS = ("expected", "label", "correct")


@dataclass(frozen=True)
class LabeledCase:
    """One labeled pair: is ``completion`` a right answer for ``reference``?"""

    reference: str
    completion: str
    expected: bool
    line: int
    kwargs: dict = field(default_factory=dict)


def _pick(row: dict, keys: Sequence[str], what: str, path: str, line: int) -> Any:
    for k in keys:
        if k in row:
            return row[k]
    raise ValueError(f"{path}:{line}: no {what} field; expected one of {', '.join(keys)} (got keys {sorted(row)})")


def load_cases(path: str) -> list[LabeledCase]:
    """Read a JSONL file of labeled pairs (see the module docstring for the field names)."""
    cases = []
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from exc
            ref = _pick(row, _REF_KEYS, "reference", path, n)
            comp = _pick(row, _COMP_KEYS, "completion", path, n)
            label = _pick(row, _LABEL_KEYS, "label", path, n)
            if isinstance(label, str):
                if label.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"{path}:{n}: label {label!r} is not true/false")
                label = label.lower() in ("true", "1")
            cases.append(LabeledCase(str(ref), str(comp), bool(label), n, dict(row.get("kwargs") or {})))
    if not cases:
        raise ValueError(f"{path}: no cases found")
    return cases


@dataclass
class Report:
    """The numbers for one scorer on one set of cases."""

    name: str
    n: int = 0
    correct: int = 0
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    timeouts: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    false_positives: list[dict] = field(default_factory=list)
    false_negatives: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def add(self, case: LabeledCase, accepted: bool | None, reason: str, elapsed: float, status: str = "ok") -> None:
        """Record one scored case (``accepted`` None for a timeout or error)."""
        self.n += 1
        self.latencies.append(elapsed)
        row = {"line": case.line, "reference": case.reference[:300], "completion": case.completion[-300:], "expected": case.expected, "reason": reason}
        if accepted is None:
            if status == "timeout":
                self.timeouts += 1
            else:
                self.errors += 1
            self.failures.append({**row, "status": status})
            if case.expected:
                self.fn += 1
            else:
                self.tn += 1
                self.correct += 1
            return
        if accepted == case.expected:
            self.correct += 1
        if accepted and case.expected:
            self.tp += 1
        elif accepted and not case.expected:
            self.fp += 1
            self.false_positives.append(row)
        elif not accepted and case.expected:
            self.fn += 1
            self.false_negatives.append(row)
        else:
            self.tn += 1

    def summary(self) -> dict[str, Any]:
        """The headline numbers as a dict (what ``--json`` writes)."""
        lat = sorted(self.latencies) or [0.0]
        return {
            "name": self.name,
            "n": self.n,
            "accuracy": self.correct / self.n if self.n else 0.0,
            "precision": self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0,
            "recall": self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0,
            "false_positives": self.fp,
            "false_negatives": self.fn,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "p50_latency_ms": 1000 * statistics.median(lat),
            "p99_latency_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "max_latency_ms": 1000 * lat[-1],
            "pairs_per_s": self.n / self.wall_s if self.wall_s else 0.0,
            "wall_s": self.wall_s,
        }


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"--option {text!r}: write key=value, e.g. --option rel_tol=1e-3")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = tuple(v for v in value.split(",") if v) if key == "fallbacks" else value
    if key == "fallbacks" and isinstance(parsed, str):
        parsed = (parsed,)
    return key, parsed


def _row_options(case: LabeledCase) -> dict[str, Any]:
    p = case.kwargs.get("precision")
    return {"rel_tol": 10.0 ** -int(p)} if p is not None else {}


def evaluate_reward(name: str, cases: list[LabeledCase], options: dict[str, Any], row_kwargs: bool = False) -> Report:
    """Score every case with the registered verifier ``name``; the wall time covers scoring only."""
    from rlvr.registry import load_verifier
    from rlvr.rewards import Sample, Status

    report = Report(name)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        key = json.dumps(_row_options(c) if row_kwargs else {}, sort_keys=True)
        groups.setdefault(key, []).append(i)
    outcomes: list[Any] = [None] * len(cases)
    verifiers = {key: load_verifier(name, **{**options, **json.loads(key)}) for key in groups}
    # Warm-up outside the clock: start worker processes and import sympy in them.
    for v in verifiers.values():
        if hasattr(v, "warmup"):
            v.warmup()
        else:
            v.score([Sample("", "\\boxed{\\sqrt{2}}", reference="\\sqrt{2}")])
    start = time.perf_counter()
    for key, idx in groups.items():
        samples = [Sample("", cases[i].completion, reference=cases[i].reference) for i in idx]
        for i, out in zip(idx, verifiers[key].score(samples)):
            outcomes[i] = out
    report.wall_s = time.perf_counter() - start
    for v in verifiers.values():
        if hasattr(v, "close"):
            v.close()
    for case, out in zip(cases, outcomes):
        if out.status is Status.OK:
            report.add(case, out.score >= 0.5, out.reason, out.elapsed_s)
        elif out.status is Status.ABSTAIN:
            report.add(case, False, "abstained: " + out.reason, out.elapsed_s)
        else:
            report.add(case, None, out.reason, out.elapsed_s, status=out.status.value)
    return report


def _as_latex(text: str) -> str:
    """Math-Verify only reads LaTeX inside math delimiters: a bare answer (``f(x)=2x``,
    ``(1, 2), (3, 4)``) is wrapped in ``$...$`` so it is read at all (this raises its
    HardVerify accuracy from 0.57 to 0.80 and leaves its own test cases at 0.88)."""
    if any(m in text for m in ("$", "\\(", "\\[", "\\boxed")):
        return text
    return f"${text}$"


def evaluate_math_verify(cases: list[LabeledCase]) -> Report:
    """Score every case with Math-Verify: ``verify(parse(gold), parse(pred))`` with its
    defaults, bare answers wrapped in ``$...$`` (see :func:`_as_latex`)."""
    try:
        from math_verify import parse, verify
    except ImportError as exc:
        raise SystemExit("--compare math-verify needs the math-verify package: pip install 'rlvr[bench]' (or math-verify)") from exc
    report = Report("math-verify")
    from rlvr.verifiers.math import _WARMUP_PAIRS

    for g, p in _WARMUP_PAIRS:  # the same warm-up the rlvr verifier gets
        verify(parse(f"${g}$"), parse(f"$\\boxed{{{p}}}$"))
    results = []
    start = time.perf_counter()
    for case in cases:
        t0 = time.perf_counter()
        try:
            ok = bool(verify(parse(_as_latex(case.reference)), parse(_as_latex(case.completion))))
            results.append((case, ok, "", time.perf_counter() - t0, "ok"))
        except Exception as exc:  # noqa: BLE001 -- the anchor's own failures are counted as errors, not verdicts
            results.append((case, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0, "error"))
    report.wall_s = time.perf_counter() - start
    for case, ok, reason, elapsed, status in results:
        report.add(case, ok, reason, elapsed, status)
    return report


def _print_report(reports: list[Report], show_rows: int, out=sys.stdout) -> None:
    sums = [r.summary() for r in reports]
    keys = ["n", "accuracy", "precision", "recall", "false_positives", "false_negatives", "timeouts", "errors",
            "p50_latency_ms", "p99_latency_ms", "max_latency_ms", "pairs_per_s"]
    width = max(16, *(len(s["name"]) + 2 for s in sums))
    print(f"{'metric':<18}" + "".join(f"{s['name']:>{width}}" for s in sums), file=out)
    for k in keys:
        cells = []
        for s in sums:
            v = s[k]
            cells.append(f"{v:>{width}.3f}" if isinstance(v, float) else f"{v:>{width}}")
        print(f"{k:<18}" + "".join(cells), file=out)
    for r in reports:
        for title, rows in (("false positives", r.false_positives), ("false negatives", r.false_negatives), ("timeouts/errors", r.failures)):
            if not rows:
                continue
            print(f"\n{r.name}: {title} ({len(rows)})", file=out)
            for row in rows[:show_rows]:
                print(f"  line {row['line']}: reference={row['reference'][:80]!r} completion={row['completion'][-80:]!r} -> {row['reason'][:100]}", file=out)
            if len(rows) > show_rows:
                print(f"  ... {len(rows) - show_rows} more (see --json)", file=out)


def _verifier_cmd(args: argparse.Namespace) -> int:
    cases = load_cases(args.cases)
    options = dict(_parse_option(o) for o in args.option)
    reports = [evaluate_reward(args.name, cases, options, row_kwargs=args.row_kwargs)]
    for other in args.compare:
        if other != "math-verify":
            raise SystemExit(f"--compare {other!r}: only 'math-verify' is supported")
        reports.append(evaluate_math_verify(cases))
    _print_report(reports, args.show)
    if args.json:
        data = {r.name: {**r.summary(), "false_positive_rows": r.false_positives, "false_negative_rows": r.false_negatives,
                         "failure_rows": r.failures} for r in reports}
        data["cases"] = args.cases
        data["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
    return 0


def add_parser(sub: Any) -> None:
    """The ``verifier`` subcommand of ``python -m rlvr.eval``."""
    v = sub.add_parser("verifier", help="reward correctness on labeled (reference, completion, expected) rows")
    v.add_argument("name", help="registered verifier name, e.g. math")
    v.add_argument("--cases", required=True, help="JSONL of labeled rows")
    v.add_argument("--compare", action="append", default=[], help="also score with this anchor: math-verify")
    v.add_argument("--option", action="append", default=[], help="verifier constructor option key=value (repeatable)")
    v.add_argument("--row-kwargs", action="store_true", help="apply per-row 'kwargs' (precision -> rel_tol)")
    v.add_argument("--json", help="write the numbers and misclassified rows to this file")
    v.add_argument("--show", type=int, default=20, help="misclassified rows to print per kind (default 20)")
    v.set_defaults(func=_verifier_cmd)
