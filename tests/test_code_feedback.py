"""``code_arith_feedback`` and ``mbpp_feedback``: what the model is told after each answer (real
bubblewrap sandbox), and that the reward is decided by tests the model never sees."""

from __future__ import annotations

import pytest

from rlvr.environments.code_arith import CodeArith
from rlvr.environments.code_feedback import CodeArithFeedback, MBPPFeedback, explained_test
from rlvr.rewards import Status
from rlvr.sandboxes import get_sandbox


def _turn(code: str) -> list[dict]:
    return [{"role": "assistant", "content": f"```python\n{code}\n```"}]


@pytest.fixture(scope="module")
def env():
    return CodeArithFeedback(n_test=20)


def test_explained_test_reports_the_value_and_keeps_other_asserts():
    assert explained_test("assert f(3) == 11") == "_got = f(3)\nif not (_got == (11)):\n    raise ValueError('returned ' + repr(_got)[:80])"
    for kept in ("assert f(3) != 11", "assert math.isclose(f(1), 2.0)", "assert f(1) == 2, 'msg'", "x = 1", "assert (", "assert 1 < f(2) == 3"):
        assert explained_test(kept) == kept


def test_hidden_tests_are_code_ariths_own_and_the_visible_ones_are_others(env):
    plain = {t.info["problem"]: t for t in CodeArith(n_test=20).tasks("test")}
    for task in env.tasks("test"):
        base = plain[task.info["problem"]]
        assert task.reference["tests"] == base.reference["tests"]  # graded exactly as code_arith grades
        assert len(task.info["visible_tests"]) == 2 and not set(task.info["visible_tests"]) & set(task.reference["tests"])
        assert task.prompt == base.prompt


def test_feedback_says_what_f_returned_raised_or_did(env):
    task = env.tasks("test")[0]
    assert env.respond(task, _turn(task.info["solution"].strip()), None) is None  # right: the episode ends
    wrong = env.respond(task, _turn("def f(x):\n    return x"), None)
    [msg] = wrong
    assert msg["role"] == "user" and msg["content"].startswith("Your function fails 2 of 2 tests:")
    call, expected = task.info["visible_tests"][0].removeprefix("assert ").split(" == ")
    arg = call[2:-1]
    assert f"`{call}` returned {arg}, expected {expected}" in msg["content"]
    raised = env.respond(task, _turn("def f(x):\n    return 1 / 0"), None)[0]["content"]
    assert "raised ZeroDivisionError: division by zero" in raised
    looping = env.respond(task, _turn("def f(x):\n    while True:\n        pass"), None)[0]["content"]
    assert "did not return within 2 s" in looping
    broken = env.respond(task, [{"role": "assistant", "content": "I cannot write code."}], None)[0]["content"]
    assert broken.count("your code does not run: SyntaxError") == 1  # said once, not once per test


def test_special_casing_the_visible_tests_earns_nothing(env):
    """A program that hard-codes the two visible tests ends the episode, and the hidden tests grade it."""
    task = env.tasks("test")[0]
    cases = [t.removeprefix("assert ").split(" == ") for t in task.info["visible_tests"]]
    branches = "".join(f"    if x == {c[2:-1]}:\n        return {e}\n" for c, e in cases)
    program = f"def f(x):\n{branches}    return 0"
    assert env.respond(task, _turn(program), None) is None
    [outcome] = env.reward().score([task.sample(f"```python\n{program}\n```")])
    assert outcome.status is Status.OK and outcome.score < 1.0


def test_a_broken_feedback_sandbox_raises(fake_dir):
    fake = fake_dir / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = CodeArithFeedback(n_test=2, verifier_kwargs={"sandbox": get_sandbox("bubblewrap", bwrap=str(fake))})
    task = env.tasks("test")[0]
    with pytest.raises(RuntimeError, match="feedback sandbox failed"):
        env.respond(task, _turn("def f(x):\n    return x"), None)


def test_feedback_deadline_is_known_to_the_run(env):
    assert env.respond_deadline_s() == pytest.approx(-(-2 // env.feedback.max_workers) * 10)


def test_mbpp_feedback_runs_the_assert_the_prompt_shows():
    env = MBPPFeedback()
    task = next(t for t in env.tasks("test") if t.info["task_id"] == 11)
    shown = task.reference["tests"][0]
    assert shown in task.prompt[-1]["content"]
    right = "def remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n    return s if i < 0 else s[:i] + s[i + 1:]"
    assert env.respond(task, _turn(right), None) is None
    [msg] = env.respond(task, _turn("def remove_Occ(s, ch):\n    return s"), None)
    assert f"fails the test `{shown}`" in msg["content"] and "returned 'hello', expected 'heo'" in msg["content"]
    [outcome] = env.reward().score([task.sample(f"```python\n{right}\n```")])
    assert outcome.score == 1.0 and outcome.metrics["tests_total"] == len(task.reference["tests"])
