"""Code with execution feedback: the model writes a function, sees which visible tests fail and
what its function returned, and tries again.

- ``code_arith_feedback`` (:class:`CodeArithFeedback`): ``code_arith``'s tasks. After each
  answer the environment runs ``visible_tests`` (2) tests in the sandbox and says which
  failed and what ``f`` returned (or raised); the episode ends when they pass or after
  ``max_turns`` (3). The reward is :class:`~rlvr.verifiers.code.CodeVerifier` on the
  ``hidden_tests`` (4) tests of the FINAL program -- ``code_arith``'s own four -- which the
  model never sees: passing the visible tests by special-casing them earns nothing.
- ``mbpp_feedback`` (:class:`MBPPFeedback`): MBPP, whose prompt shows the first assert; the
  feedback runs that assert; the reward runs all of them, as ``mbpp`` does.

Every run of the model's code is a real sandbox run through the code verifier's harness (the
program in one process, the test in another; see :mod:`rlvr.verifiers.code`), with a per-test
deadline: a program that loops is told "did not return within 2 s". A sandbox that fails
raises, so the episode is an ``ERROR`` outcome, never a wrong answer.
"""

from __future__ import annotations

import ast
from typing import Any

from rlvr.environments.base import Task
from rlvr.environments.code_arith import CodeArith
from rlvr.environments.mbpp import MBPP
from rlvr.environments.multiturn import MultiTurnEnvironment
from rlvr.rewards import Sample, Status
from rlvr.sandboxes import Limits
from rlvr.verifiers.code import CodeVerifier

__all__ = ["CodeArithFeedback", "MBPPFeedback", "explained_test", "run_visible_tests"]

RETRY = "Reply with the whole corrected code in one ```python code block."
_RETURNED = "returned "


def explained_test(test: str) -> str:
    """``test`` rewritten so that a failing ``assert CALL == EXPECTED`` says what ``CALL`` returned.

    The comparison still runs in the code verifier's trusted harness (the candidate's value
    crosses as plain data); other asserts are kept as they are.
    """
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return test
    node = tree.body[0] if len(tree.body) == 1 else None
    if not (isinstance(node, ast.Assert) and node.msg is None and isinstance(node.test, ast.Compare)):
        return test
    cmp = node.test
    if len(cmp.ops) != 1 or not isinstance(cmp.ops[0], ast.Eq):
        return test
    left, right = ast.unparse(cmp.left), ast.unparse(cmp.comparators[0])
    return f"_got = {left}\nif not (_got == ({right})):\n    raise ValueError({_RETURNED!r} + repr(_got)[:80])"


def _describe(test: str, note: str, test_timeout_s: float) -> str:
    """One feedback line for a failed test, from the harness's note."""
    try:
        node = ast.parse(test).body[0]
        call = ast.unparse(node.test.left) if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) else None
        expected = ast.unparse(node.test.comparators[0]) if call else None
    except (SyntaxError, IndexError, AttributeError):
        call = expected = None
    if note.startswith("ValueError: " + _RETURNED) and call:
        return f"`{call}` returned {note[len('ValueError: ' + _RETURNED):]}, expected {expected}"
    if note == "timed out":
        return f"`{call or test}` did not return within {test_timeout_s:g} s"
    if note.startswith("program failed to load"):
        return f"your code does not run: {note[len('program failed to load: '):]}"
    if call and note and note != "assertion failed":
        return f"`{call}` raised {note}"
    return f"`{test}` failed"


def run_visible_tests(
    verifier: CodeVerifier, completion: str, tests: list[str], setup: str = "", entry_point: str | None = None
) -> list[str]:
    """Run each visible test against ``completion`` (one sandbox run each, in parallel) and return
    a line per FAILED test saying what happened (empty: all passed). Raises RuntimeError when the
    sandbox itself failed (the episode is then ``ERROR``)."""
    samples = [
        Sample("", completion, {"style": "assert", "tests": [explained_test(t)], "setup": setup, "entry_point": entry_point})
        for t in tests
    ]
    lines = []
    for test, outcome in zip(tests, verifier.score(samples)):
        if outcome.status is not Status.OK:
            raise RuntimeError(f"the feedback sandbox failed: {outcome.reason}")
        if outcome.score == 1.0:
            continue
        note = outcome.reason.split("; test 0: ", 1)[1] if "; test 0: " in outcome.reason else ""
        line = _describe(test, note, verifier.test_timeout_s)
        if line not in lines:  # a program that does not load fails every test the same way: say it once
            lines.append(line)
    return lines


def _feedback_verifier(verifier_kwargs: dict, test_timeout_s: float) -> CodeVerifier:
    kwargs = {"limits": Limits(timeout_s=10, memory_mb=512, max_processes=32), **verifier_kwargs, "test_timeout_s": test_timeout_s}
    return CodeVerifier(**kwargs)


def _deadline(verifier: CodeVerifier, runs: int) -> float:
    """The longest ``runs`` sandbox runs of ``verifier`` take, ``max_workers`` at a time."""
    return -(-runs // verifier.max_workers) * verifier.limits.timeout_s


class CodeArithFeedback(MultiTurnEnvironment):
    """``code_arith`` with execution feedback (see the module docstring).

    Args:
        visible_tests: Tests run after each answer and shown to the model when they fail.
        hidden_tests: Tests of the final program that make the reward (``code_arith``'s own).
        test_timeout_s: Seconds one visible test may take.
        verifier_kwargs: Passed to both code verifiers (``sandbox``, ``limits``...).
        **kwargs: ``code_arith``'s options (``levels``, ``n_train``, ``n_test``, ``seed``, ...).
    """

    name = "code_arith_feedback"
    max_turns = 3

    def __init__(
        self,
        visible_tests: int = 2,
        hidden_tests: int = 4,
        test_timeout_s: float = 2.0,
        verifier_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> None:
        if visible_tests < 1 or hidden_tests < 1:
            raise ValueError(f"visible_tests and hidden_tests must be >= 1, got {visible_tests} and {hidden_tests}")
        self.base = CodeArith(n_tests=hidden_tests + visible_tests, verifier_kwargs=verifier_kwargs, **kwargs)
        self.visible, self.hidden = visible_tests, hidden_tests
        self.verifier_kwargs = dict(verifier_kwargs or {})
        self.feedback = _feedback_verifier(self.verifier_kwargs, test_timeout_s)

    def tasks(self, split: str = "train") -> list[Task]:
        """``code_arith``'s tasks; the reference holds the hidden tests, ``info["visible_tests"]`` the others."""
        out = []
        for t in self.base.tasks(split):
            tests = t.reference["tests"]
            reference = {**t.reference, "tests": tests[: self.hidden]}
            out.append(Task(t.prompt, reference, {**t.info, "cases": t.info["cases"][: self.hidden], "visible_tests": tests[self.hidden :]}))
        return out

    def respond(self, task: Task, messages: list[dict], state: Any) -> list[dict] | None:
        """None when the visible tests pass; else which failed and what ``f`` did."""
        return self.reply(task, run_visible_tests(self.feedback, messages[-1]["content"], list(task.info["visible_tests"])))

    def reply(self, task: Task, failed: list[str]) -> list[dict] | None:
        """The message after an answer whose visible tests ``failed`` (one line each); None when none did."""
        if not failed:
            return None
        total = len(task.info["visible_tests"])
        lines = "\n".join(f"- {line}" for line in failed)
        return [{"role": "user", "content": f"Your function fails {len(failed)} of {total} tests:\n{lines}\n{RETRY}"}]

    def respond_deadline_s(self) -> float:
        """The visible tests' sandbox runs, at their deadline."""
        return _deadline(self.feedback, self.visible)

    def reward(self) -> CodeVerifier:
        """A :class:`CodeVerifier` on the hidden tests (bubblewrap unless ``verifier_kwargs`` says otherwise)."""
        return CodeVerifier(**self.verifier_kwargs)


class MBPPFeedback(MultiTurnEnvironment):
    """MBPP with execution feedback on the assert its prompt shows; the reward runs every assert.

    Args:
        test_timeout_s: Seconds the visible test may take.
        verifier_kwargs: Passed to both code verifiers (``sandbox``, ``limits``...).
    """

    name = "mbpp_feedback"
    max_turns = 3

    def __init__(self, test_timeout_s: float = 4.0, verifier_kwargs: dict | None = None) -> None:
        self.base = MBPP(verifier_kwargs=verifier_kwargs)
        self.verifier_kwargs = dict(verifier_kwargs or {})
        self.feedback = _feedback_verifier(self.verifier_kwargs, test_timeout_s)

    def tasks(self, split: str = "train") -> list[Task]:
        """MBPP's tasks (the prompt shows ``tests[0]``, the visible test)."""
        return self.base.tasks(split)

    def respond(self, task: Task, messages: list[dict], state: Any) -> list[dict] | None:
        """None when the shown assert passes; else what went wrong."""
        ref = task.reference
        failed = run_visible_tests(
            self.feedback, messages[-1]["content"], [ref["tests"][0]], str(ref.get("setup") or ""), ref.get("entry_point")
        )
        if not failed:
            return None
        return [{"role": "user", "content": f"Your code fails the test `{ref['tests'][0]}`: {failed[0]}.\n{RETRY}"}]

    def respond_deadline_s(self) -> float:
        """The visible test's sandbox run, at its deadline."""
        return _deadline(self.feedback, 1)

    def reward(self) -> CodeVerifier:
        """A :class:`CodeVerifier` on every assert of the task."""
        return self.base.reward()
