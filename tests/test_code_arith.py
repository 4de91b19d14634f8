"""``code_arith``: seeded tasks, disjoint splits, reference solutions graded by the real sandbox, a GRPO run."""

from __future__ import annotations

import ast
import itertools
import json
import shutil

import pytest

from rlvr.environments.code_arith import FAMILIES, CodeArith
from rlvr.registry import load_environment
from rlvr.rewards import Status
from rlvr.verifiers.code import CodeVerifier

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed: apt-get install -y bubblewrap")


def answer(code: str) -> str:
    """A completion in the reply format the system message shows."""
    return f"```python\n{code}```\nThis function does it."


def parameter(solution: str) -> str:
    """The parameter name of a one-argument ``def f(...)``."""
    return solution.split("(", 1)[1].split(")", 1)[0]


def wrong(solution: str) -> str:
    """``solution`` with every result changed (0 / '' / [] -> 1, anything else doubled)."""
    head, body = solution.split("\n    return ")
    return f"{head}\n    r = {body.strip()}\n    return r * 2 if r else 1\n"


def test_tasks_are_deterministic_per_seed():
    a, b, c = CodeArith(seed=3, n_train=50), CodeArith(seed=3, n_train=50), CodeArith(seed=4, n_train=50)
    for split in ("train", "test"):
        assert a.tasks(split) == b.tasks(split)
        assert a.tasks(split) != c.tasks(split)
    task = a.tasks("test")[0]
    assert task.prompt[0]["role"] == "system" and "```python\ndef f(n):" in task.prompt[0]["content"]
    assert task.reference["style"] == "assert" and len(task.reference["tests"]) == 4
    assert f"`f({parameter(task.info['solution'])})`" in task.info["problem"]
    assert isinstance(load_environment("code_arith", levels=[1]), CodeArith)


def test_splits_are_disjoint_and_cover_every_problem():
    env = CodeArith()
    train, test = set(env.problems("train")), set(env.problems("test"))
    assert train and test and not train & test
    assert len(train | test) == sum(len(list(itertools.product(*grid.values()))) for *_, grid in FAMILIES)
    test_tasks = env.tasks("test")
    assert len({t.info["problem"] for t in test_tasks}) == len(test_tasks) == 100
    assert {t.info["problem"] for t in env.tasks("train")}.isdisjoint(t.info["problem"] for t in test_tasks)
    assert {t.info["level"] for t in CodeArith(levels=[2]).tasks("train")} == {2}
    with pytest.raises(ValueError, match="levels"):
        CodeArith(levels=[4])


@needs_bwrap
def test_reference_solutions_score_1_and_wrong_ones_less_through_the_sandbox():
    """Every problem of both splits once: its reference, a wrong variant, the base model's
    favourite mistake (copying the system message's example) and one answer right on 3 of 4 inputs."""
    env = CodeArith(n_test=1000)
    tasks = env.tasks("test") + CodeArith(n_train=2000, seed=1).tasks("train")
    tasks = list({t.info["problem"]: t for t in tasks}.values())
    assert len(tasks) == len(env.problems("train")) + len(env.problems("test"))
    first = tasks[0]
    first_input = ast.unparse(ast.parse(first.reference["tests"][0]).body[0].test.left.args[0])
    almost = first.info["solution"].replace(
        "\n    return ", f"\n    if {parameter(first.info['solution'])} == {first_input}:\n        return None\n    return ", 1
    )
    samples = (
        [t.sample(answer(t.info["solution"])) for t in tasks]
        + [t.sample(answer(wrong(t.info["solution"]))) for t in tasks]
        + [first.sample(answer("def f(n):\n    return n * 10 - 1\n")), first.sample(answer(almost))]
    )
    outcomes = CodeVerifier().score(samples)
    assert all(o.status is Status.OK for o in outcomes), [o.reason for o in outcomes if o.status is not Status.OK][:3]
    good, bad = outcomes[: len(tasks)], outcomes[len(tasks) : 2 * len(tasks)]
    assert [o.score for o in good] == [1.0] * len(tasks), [
        (t.info["problem"], o.reason) for t, o in zip(tasks, good) if o.score != 1.0
    ][:3]
    assert max(o.score for o in bad) < 1.0
    assert outcomes[-2].score < 1.0 and outcomes[-1].score == 0.75


@pytest.mark.slow
@needs_bwrap
def test_grpo_runs_end_to_end_through_the_sandbox(tmp_path):
    from conftest import tiny_causal_lm
    from transformers import AutoTokenizer

    from rlvr.models import resolve_model
    from rlvr.trainers.grpo_config import GRPOConfig
    from rlvr.trainers.grpo_trainer import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    config = GRPOConfig(
        env="code_arith",
        generator="hf",
        max_steps=2,
        num_generations=4,
        generation_batch_size=8,
        max_completion_length=8,
        micro_batch_size=8,
        eval_max_tasks=2,
        output_dir=str(tmp_path),
        progress_bar=False,
        bf16=False,
    )
    trainer = GRPOTrainer(config, model=tiny_causal_lm(tokenizer), env=CodeArith(n_train=16, n_test=2), tokenizer=tokenizer)
    summary = trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["n_ok"] == 8 and r["n_error"] == 0 and r["reward_time_s"] >= 0 for r in rows)  # every sandbox run graded
    assert summary["before"]["tasks"] == summary["after"]["tasks"] == 2


def test_code_reward_reports_its_sandbox_cost_and_the_trainer_sums_it():
    """CodeVerifier puts the sandbox's cost in each outcome's metrics; a trainer's step sums them."""
    from rlvr.environments.code_arith import CodeArith
    from rlvr.generation import Generation
    from rlvr.trainers.rollouts import Rollout, reward_metrics, rollout_row

    env = CodeArith(n_train=4, n_test=4, seed=0)
    tasks = env.tasks("train")[:3]
    reward = env.reward()
    try:
        outcomes = reward.score([t.sample(f"```python\n{t.info['solution']}\n```") for t in tasks])
    finally:
        if hasattr(reward, "close"):
            reward.close()
    for o in outcomes:
        assert o.metrics["sandbox_runs"] == 1.0 and o.metrics["sandbox_run_s"] > 0
        assert o.metrics["sandbox_pool_misses"] in (0.0, 1.0) and o.metrics["sandbox_wait_s"] >= 0
    rows = [rollout_row(Rollout(t, Generation("x", [1], [2]), o)) for t, o in zip(tasks, outcomes)]
    step = reward_metrics(rows, 1.0)
    assert step["sandbox_runs"] == 3.0
    assert step["sandbox_run_s"] == sum(o.metrics["sandbox_run_s"] for o in outcomes)
    assert step["sandbox_pool_misses"] == sum(o.metrics["sandbox_pool_misses"] for o in outcomes)
