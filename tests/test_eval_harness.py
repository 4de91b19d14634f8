"""`python -m rlvr.eval verifier ...` run for real, as a subprocess, on small labeled files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlvr.eval import load_cases, main

# 4 positives the verifier accepts (one mislabeled false -> a false positive), one wrong
# answer labeled true (a false negative), one wrong answer labeled false.
ROWS = [
    {"reference": r"\frac{3}{4}", "completion": r"so \boxed{0.75}", "expected": True},
    {"reference": "18", "completion": r"\boxed{18}", "expected": True},
    {"gold": "(1, 2)", "pred": r"\boxed{(1,2)}", "expected": True},  # Math-Verify's key names
    {"reference": "2", "completion": r"\boxed{2}", "expected": False},  # -> false positive
    {"reference": "3", "completion": r"\boxed{4}", "expected": True},  # -> false negative
    {"reference": "5", "completion": r"\boxed{6}", "label": "false"},
]


@pytest.fixture()
def cases_file(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlvr.eval", *args], check=False, capture_output=True, text=True, timeout=240)


def test_verifier_subcommand_prints_and_writes_the_numbers(cases_file, tmp_path):
    out_json = tmp_path / "out.json"
    proc = run_eval("verifier", "math", "--cases", str(cases_file), "--json", str(out_json), "--option", "max_workers=1")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out_json.read_text())["math"]
    # TP = 3, FP = 1, FN = 1, TN = 1
    assert data["n"] == 6
    assert data["accuracy"] == pytest.approx(4 / 6)
    assert data["precision"] == pytest.approx(3 / 4)
    assert data["recall"] == pytest.approx(3 / 4)
    assert (data["false_positives"], data["false_negatives"], data["timeouts"], data["errors"]) == (1, 1, 0, 0)
    assert data["pairs_per_s"] > 0 and data["p99_latency_ms"] >= data["p50_latency_ms"]
    assert [r["line"] for r in data["false_positive_rows"]] == [4]
    assert [r["line"] for r in data["false_negative_rows"]] == [5]
    # the same numbers are printed, with the misclassified rows for a person to read
    assert "accuracy" in proc.stdout and "0.667" in proc.stdout
    assert "false positives (1)" in proc.stdout and "line 4" in proc.stdout
    assert "false negatives (1)" in proc.stdout and "line 5" in proc.stdout


def test_compare_with_math_verify_side_by_side(cases_file, tmp_path):
    pytest.importorskip("math_verify")
    out_json = tmp_path / "out.json"
    proc = run_eval("verifier", "math", "--cases", str(cases_file), "--compare", "math-verify", "--json", str(out_json), "--option", "max_workers=1")
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header == ["metric", "math", "math-verify"]
    data = json.loads(out_json.read_text())
    assert data["math-verify"]["n"] == 6 and data["math"]["n"] == 6
    # on these easy rows the anchor agrees with rlvr: the label errors are the same two rows
    assert data["math-verify"]["false_positives"] == 1 and data["math-verify"]["false_negatives"] == 1


def test_row_kwargs_precision_becomes_a_tolerance(tmp_path):
    path = tmp_path / "kw.jsonl"
    rows = [
        {"gold": r"\frac{1}{3}", "pred": r"\boxed{0.3333}", "expected": True, "kwargs": {"precision": 4}},
        {"gold": r"\frac{1}{3}", "pred": r"\boxed{0.3333}", "expected": False},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out_json = tmp_path / "out.json"
    assert main(["verifier", "math", "--cases", str(path), "--row-kwargs", "--json", str(out_json), "--option", "max_workers=1"]) == 0
    assert json.loads(out_json.read_text())["math"]["accuracy"] == 1.0


def test_bad_files_get_errors_that_say_what_to_do(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "pred": "1", "expected": True}) + "\n")
    with pytest.raises(ValueError, match="no reference field; expected one of reference, gold"):
        load_cases(str(path))
    proc = run_eval("verifier", "math", "--cases", str(path))
    assert proc.returncode == 2 and "no reference field" in proc.stderr
