"""``evaluate_preferences`` and ``python -m rlvr.eval preferences``: accuracy, ties and non-OK outcomes on hand-made pairs."""

from __future__ import annotations

import json
import subprocess
import sys

from rlvr.eval.preferences import evaluate_preferences
from rlvr.preferences import PreferenceLookup, PreferencePair
from rlvr.rewards import FunctionReward

CHAT = [{"role": "user", "content": "2+2?"}]


def _length(sample):
    """Longer is better; ``?`` abstains, ``crash`` errors."""
    if sample.completion == "crash":
        raise RuntimeError("checker broke")
    if sample.completion == "?":
        return None
    return float(len(sample.completion))


PAIRS = [
    PreferencePair("p1", "long answer", "short"),  # win (margin 6)
    PreferencePair("p2", "aaaa", "bb"),  # win (margin 2)
    PreferencePair("p3", "ab", "cd"),  # tie: not a win
    PreferencePair("p4", "x", "longer"),  # loss (margin -5)
    PreferencePair("p5", "crash", "b"),  # error on chosen: non-OK
    PreferencePair("p6", "?", "crash"),  # abstain + error: non-OK
]


def test_accuracy_ties_and_non_ok_with_a_function_reward():
    result = evaluate_preferences(FunctionReward(_length, name="length"), PAIRS)
    assert result["pairs"] == 6
    assert (result["wins"], result["losses"], result["ties"], result["non_ok_pairs"]) == (2, 1, 1, 2)
    assert result["accuracy"] == 2 / 6  # ties and non-OK pairs count, never as wins
    assert result["accuracy_decided"] == 2 / 3
    assert result["margin_mean"] == (6 + 2 + 0 - 5) / 4
    assert (result["n_ok"], result["n_error"], result["n_abstain"], result["n_timeout"]) == (9, 2, 1, 0)
    assert [e["chosen"] for e in result["examples"]] == ["ab", "x"]


def test_the_reference_reaches_the_reward():
    exact = FunctionReward(lambda s: float(s.completion == s.reference), name="exact")
    pairs = [PreferencePair(CHAT, "4", "5", reference="4"), PreferencePair(CHAT, "5", "4", reference="4")]
    result = evaluate_preferences(exact, pairs)
    assert (result["wins"], result["losses"], result["accuracy"]) == (1, 1, 0.5)


def test_preference_lookup_agrees_with_its_own_pairs_and_abstains_elsewhere():
    data = [PreferencePair(CHAT, "4", "5"), PreferencePair("q", "yes", "no")]
    lookup = PreferenceLookup(data)
    assert evaluate_preferences(lookup, data)["accuracy"] == 1.0
    flipped = [PreferencePair(CHAT, "5", "4"), PreferencePair("q", "yes", "maybe"), PreferencePair("other", "a", "b")]
    result = evaluate_preferences(lookup, flipped)
    assert (result["wins"], result["losses"], result["ties"], result["non_ok_pairs"]) == (0, 1, 0, 2)
    assert (result["n_ok"], result["n_abstain"]) == (3, 3)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rlvr.eval", "preferences", *args], capture_output=True, text=True, timeout=120)


def test_cli_with_math_verifier_and_preferences_lookup(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": CHAT, "chosen": "so \\boxed{4}", "rejected": "so \\boxed{5}", "reference": "4"},
        {"prompt": CHAT, "chosen": "\\boxed{4}", "rejected": "\\boxed{4.0}", "reference": "4"},  # equivalent: a tie
        {"prompt": "bad row"},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "result.json"
    result = _cli("--reward", "math", "--pairs", str(pairs), "--json", str(out))
    assert result.returncode == 0, result.stderr
    numbers = json.loads(out.read_text())
    assert (numbers["pairs"], numbers["wins"], numbers["ties"], numbers["accuracy"], numbers["rows_skipped"]) == (2, 1, 1, 0.5, 1)
    lookup = _cli("--reward", f"preferences:{pairs}", "--pairs", str(pairs), "--json", str(out))
    assert lookup.returncode == 0, lookup.stderr
    assert json.loads(out.read_text())["accuracy"] == 1.0
    for args, message in [
        (["--reward", "no-such", "--pairs", str(pairs)], "is not a registered verifier"),
        (["--reward", "math", "--pairs", str(tmp_path / "missing.jsonl")], "no such file"),
        (["--reward", "math", "--pairs", str(pairs), "--reward-kwargs", "{"], "--reward-kwargs must be a JSON object"),
    ]:
        bad = _cli(*args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") and message in bad.stderr
