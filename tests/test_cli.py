"""``python -m rlvr`` and the ``rlvr`` console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlvr", *args], capture_output=True, text=True, timeout=120)


def test_verify_math_from_the_command_line():
    proc = _run("verify", "math", "--reference", "\\frac12", "--completion", "so \\boxed{0.5}")
    assert proc.returncode == 0, proc.stderr
    assert "status:  ok" in proc.stdout and "score:   1" in proc.stdout
    wrong = _run("verify", "math", "--reference", "\\frac12", "--completion", "so \\boxed{0.6}", "--json")
    out = json.loads(wrong.stdout)
    assert out["status"] == "ok" and out["score"] == 0.0 and out["reason"]


def test_verify_reads_json_reference_and_rejects_bad_json():
    bad = _run("verify", "math", "--reference-json", "{not json", "--completion", "x")
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_console_script_matches_module():
    exe = shutil.which("rlvr")
    if exe is None:
        pytest.skip("the rlvr console script is not on PATH (package not pip-installed)")
    proc = subprocess.run([exe, "list"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == _run("list").stdout
