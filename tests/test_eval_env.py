"""``python -m rlvr.eval env``: the pass@k estimator and a real run on the default model."""

from __future__ import annotations

import json
import subprocess
import sys
from math import comb

import pytest

from rlvr.eval.env import pass_at_k


def test_pass_at_k_hand_values():
    """n=5, c=2: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7;
    pass@4 = 1 - C(3,4)/C(5,4) = 1 (fewer than k wrong samples); c=0 gives 0."""
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))


@pytest.mark.parametrize("n, c, k", [(3, 4, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_bad_k_is_a_clear_error_before_any_model_loads():
    proc = subprocess.run([sys.executable, "-m", "rlvr.eval", "env", "arithmetic", "--n", "2", "--k", "1,5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "k must be between 1 and --n 2" in proc.stderr


@pytest.mark.slow
def test_eval_env_runs_the_default_model(tmp_path):
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "rlvr.eval", "env", "arithmetic", "--generator", "hf", "--n", "2", "--limit", "3", "--max-new-tokens", "24", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["tasks"] == 3 and result["n"] == 2
    assert 0.0 <= result["pass@1"] <= result["pass@2"] <= 1.0
    assert result["accuracy"] == result["pass@1"]  # the share of correct completions is pass@1
    assert sum(result[f"n_{s}"] for s in ("ok", "timeout", "error", "abstain")) == 6
    # the names the trainers log, so training and evaluation numbers compare directly
    assert {"reward_mean", "accuracy", "completion_len_mean"} <= set(result)
    assert "pass@2" in proc.stdout
