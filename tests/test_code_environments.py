"""The code environments (HumanEval, MBPP): real data, real splits, real grading in a sandbox."""

from __future__ import annotations

import shutil

import pytest

from rlvr.environments.humaneval import HumanEval
from rlvr.environments.mbpp import MBPP
from rlvr.registry import load_environment
from rlvr.rewards import Status
from rlvr.verifiers.code import CodeVerifier

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed: apt-get install -y bubblewrap")


def test_mbpp_splits_follow_the_paper():
    env = load_environment("mbpp")
    assert isinstance(env, MBPP)
    train, test = env.tasks("train"), env.tasks("test")
    assert [t.info["task_id"] for t in test] == list(range(11, 511))
    assert [t.info["task_id"] for t in train] == list(range(511, 975))
    task = test[0]
    assert task.prompt[0]["role"] == "user" and "```python" in task.prompt[0]["content"]
    assert task.reference["style"] == "assert" and len(task.reference["tests"]) == 3
    assert task.reference["tests"][0] in task.prompt[0]["content"]
    assert task.reference["tests"][1] not in task.prompt[0]["content"]  # graded on tests it did not see


def test_humaneval_has_164_test_problems_and_no_train_split():
    env = load_environment("humaneval")
    assert isinstance(env, HumanEval)
    tasks = env.tasks("test")
    assert len(tasks) == 164 and tasks[0].info["task_id"] == "HumanEval/0"
    assert tasks[0].reference["entry_point"] in tasks[0].prompt[0]["content"]
    with pytest.raises(ValueError, match="train on 'mbpp'"):
        env.tasks("train")
    with pytest.raises(ValueError, match="unknown split"):
        env.tasks("dev")


@needs_bwrap
def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    env = HumanEval()
    reward = env.reward()
    assert isinstance(reward, CodeVerifier)
    tasks = env.tasks("test")[:20]
    solutions = [p["canonical_solution"] for p in env.problems[:20]]
    good = reward.score([t.sample(s) for t, s in zip(tasks, solutions)])
    assert [o.score for o in good] == [1.0] * 20, [o.reason for o in good if o.score != 1.0]
    bad = reward.score([t.sample("    return None\n") for t in tasks[:5]])
    assert all(o.status is Status.OK and o.score == 0.0 for o in bad)


@needs_bwrap
def test_mbpp_reference_solutions_pass_as_chat_answers():
    env = MBPP()
    codes = {r["task_id"]: r["code"] for r in env.rows}
    tasks = env.tasks("test")[:20]
    outcomes = env.reward().score([t.sample(f"Here is my solution:\n```python\n{codes[t.info['task_id']]}\n```") for t in tasks])
    assert [o.score for o in outcomes] == [1.0] * 20, [(t.info, o.reason) for t, o in zip(tasks, outcomes) if o.score != 1.0]


@needs_bwrap
def test_mbpp_function_named_like_a_builtin_is_still_the_candidate():
    """Task 126 names its function ``sum``: the tests must call the program's, not the builtin."""
    env = MBPP()
    (task,) = [t for t in env.tasks("test") if t.info["task_id"] == 126]
    assert task.reference["entry_point"] == "sum"
    code = next(r["code"] for r in env.rows if r["task_id"] == 126)
    assert env.reward().score([task.sample(code)])[0].score == 1.0
    assert env.reward().score([task.sample("def sum(a, b):\n    return 0")])[0].score == 0.0


def test_verifier_kwargs_reach_the_reward():
    env = MBPP(verifier_kwargs={"max_workers": 3, "test_timeout_s": 1.5})
    reward = env.reward()
    assert (reward.max_workers, reward.test_timeout_s) == (3, 1.5)
