"""rlvr rewards in TRL (``reward_func``) and TRL reward functions as rlvr rewards (``from_reward_func``).

TRL 1.16's ``GRPOTrainer._calculate_rewards`` calls each reward function as::

    reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids_list,
                **{column: [one value per completion] for each dataset column except prompt},
                trainer_state=self.state, log_extra=self._log_completion_extra, log_metric=self._log_metric)

and turns a ``None`` into NaN (left out of that function's mean). The unit tests below call
the adapter with exactly that shape; the slow test runs the real ``GRPOTrainer``.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from collections import defaultdict

import pytest

from rlvr.integrations.trl import from_reward_func, reward_func
from rlvr.registry import load_verifier
from rlvr.rewards import FunctionReward, Sample, Status, WeightedSum, isolated


def _hang_when_marked(sample: Sample) -> float:
    """1.0, except for a row whose dataset column ``hang`` is true: that one never returns."""
    if sample.info.get("hang"):
        time.sleep(60)
    return 1.0


class Logs:
    """Stands in for TRL's ``log_metric`` / ``log_extra`` (both are plain callables TRL passes)."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[float]] = defaultdict(list)
        self.extra: dict[str, list] = defaultdict(list)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name].append(value)

    def log_extra(self, column: str, values: list) -> None:
        self.extra[column].extend(values)


def test_math_verifier_with_trl_text_shapes():
    """Standard (text) format: ``prompts`` and ``completions`` are lists of str."""
    fn = reward_func("math")
    logs = Logs()
    out = fn(
        prompts=["What is 1/2?", "What is 2+2?", "What is 3*3?"],
        completions=["so \\boxed{0.5}", "\\boxed{5}", "no box here"],
        completion_ids=[[1, 2], [3], [4]],
        answer=["\\frac12", "4", "9"],
        trainer_state=None,
        log_metric=logs.log_metric,
        log_extra=logs.log_extra,
    )
    assert out == [1.0, 0.0, 0.0]
    assert fn.__name__ == "math"
    assert logs.metrics["rlvr/math/ok"] == [3.0]
    assert logs.metrics["rlvr/math/timeout"] == [0.0] and logs.metrics["rlvr/math/error"] == [0.0]
    assert logs.extra["math/status"] == ["ok", "ok", "ok"]
    assert len(logs.extra["math/reason"]) == 3


def test_chat_format_completions_and_reference_column():
    """Conversational format: prompts are message lists, each completion is
    ``[{"role": "assistant", "content": ...}]``; the reference comes from a named column."""
    fn = reward_func("math", reference_column="solution")
    out = fn(
        prompts=[[{"role": "user", "content": "1/2?"}], [{"role": "user", "content": "2+2?"}]],
        completions=[[{"role": "assistant", "content": "\\boxed{1/2}"}], [{"role": "assistant", "content": "\\boxed{4}"}]],
        completion_ids=[[1], [2]],
        solution=["0.5", "4"],
        answer=["wrong", "wrong"],  # another column: ignored as the reference
    )
    assert out == [1.0, 1.0]


def test_a_completion_that_times_out_reaches_trl_as_none():
    fn = reward_func(FunctionReward(_hang_when_marked, name="hangs"), reference_column=None, timeout_s=0.5, max_workers=2)
    logs = Logs()
    try:
        start = time.monotonic()
        out = fn(prompts=["a", "b", "c"], completions=["x", "y", "z"], completion_ids=None, hang=[False, True, False], log_metric=logs.log_metric)
        assert time.monotonic() - start < 10
    finally:
        fn.close()
    assert out == [1.0, None, 1.0]  # None, never 0.0
    assert logs.metrics["rlvr/hangs/timeout"] == [1.0]
    assert logs.metrics["rlvr/hangs/failed_frac"] == [pytest.approx(1 / 3)]


def test_missing_reference_column_fails_early_with_what_to_do():
    fn = reward_func("math")
    with pytest.raises(KeyError, match="no column 'answer'.*reference_column="):
        fn(prompts=["q"], completions=["\\boxed{1}"], completion_ids=None, solution=["1"], trainer_state=None)


def test_unknown_verifier_fails_at_construction():
    with pytest.raises(LookupError, match="unknown verifier 'nope'"):
        reward_func("nope")


def test_a_bad_row_is_an_error_outcome_not_a_crash():
    """One completion that is neither text nor messages: that row is None, the others score."""
    fn = reward_func("math")
    logs = Logs()
    out = fn(prompts=["q", "q"], completions=["\\boxed{1}", 12345], completion_ids=None, answer=["1", "1"], log_metric=logs.log_metric)
    assert out == [1.0, None]
    assert logs.metrics["rlvr/math/error"] == [1.0]


def test_a_crashing_reward_is_none_for_its_rows_only():
    def picky(sample: Sample) -> float:
        if sample.completion == "boom":
            raise RuntimeError("cannot grade this")
        return 0.5

    out = reward_func(FunctionReward(picky), reference_column=None)(prompts=["a", "b"], completions=["ok", "boom"], completion_ids=None)
    assert out == [0.5, None]


# -- from_reward_func: the other direction ---------------------------------------------------


def length_trl_reward(prompts, completions, answer, **kwargs):
    """A TRL-style reward function: 1.0 when the completion contains the answer; None when no answer."""
    out = []
    for c, a in zip(completions, answer):
        text = c[0]["content"] if isinstance(c, list) else c
        out.append(None if a is None else float(str(a) in text))
    return out


def slow_trl_reward(prompts, completions, **kwargs):
    """A TRL-style reward that hangs on the completion "hang" and raises on "boom"."""
    out = []
    for c in completions:
        if c == "hang":
            time.sleep(60)
        if c == "boom":
            raise ValueError("boom")
        out.append(float(len(c)))
    return out


def test_from_reward_func_scores_like_the_function():
    reward = from_reward_func(length_trl_reward)
    assert reward.name == "length_trl_reward"
    outs = reward.score([Sample("q", "it is 4", "4"), Sample("q", "it is 5", "4"), Sample("q", "x", None)])
    assert [o.status for o in outs] == [Status.OK, Status.OK, Status.ABSTAIN]
    assert [o.score for o in outs] == [1.0, 0.0, None]
    # chat prompts give TRL's conversational completions
    [chat] = reward.score([Sample([{"role": "user", "content": "q"}], "so 4", "4")])
    assert chat.score == 1.0


def test_from_reward_func_round_trip_through_reward_func():
    """fn -> rlvr Reward -> TRL reward function: same numbers as calling fn directly."""
    kwargs = {"prompts": ["a", "b", "c"], "completions": ["has 7", "has 8", "none"], "answer": ["7", "7", None]}
    direct = length_trl_reward(**kwargs)
    back = reward_func(from_reward_func(length_trl_reward))(completion_ids=None, **kwargs)
    assert back == direct == [1.0, 0.0, None]


def test_from_reward_func_isolated_and_timed_out():
    reward = isolated(from_reward_func(slow_trl_reward, reference_column=None), timeout_s=1.0, max_workers=2)
    try:
        start = time.monotonic()
        outs = reward.score([Sample("", "abc"), Sample("", "hang"), Sample("", "boom"), Sample("", "de")])
        elapsed = time.monotonic() - start
    finally:
        reward.close()
    assert [o.status for o in outs] == [Status.OK, Status.TIMEOUT, Status.ERROR, Status.OK]
    assert [outs[0].score, outs[3].score] == [3.0, 2.0]
    assert "ValueError: boom" in outs[2].reason
    assert elapsed < 15


def test_from_reward_func_bad_values_are_errors():
    def bad(prompts, completions, **kwargs):
        return ["high", math.nan][: len(completions)]

    outs = from_reward_func(bad).score([Sample("", "a"), Sample("", "b")])
    assert [o.status for o in outs] == [Status.ERROR, Status.ERROR]
    with_wrong_length = from_reward_func(lambda prompts, completions, **kw: [1.0], name="short")
    outs = with_wrong_length.score([Sample("", "a"), Sample("", "b")])
    assert [o.status for o in outs] == [Status.OK, Status.OK]  # retried row by row: one value each


def test_from_reward_func_gets_what_trl_always_passes():
    """TRL 1.16 ``_calculate_rewards`` always passes ``trainer_state``, ``log_extra`` and
    ``log_metric``, and awaits an async reward function; a function that needs them works
    as an rlvr Reward, and what it logs lands in each outcome's metrics."""

    def needs_trl_kwargs(prompts, completions, trainer_state, log_extra, log_metric, **kwargs):
        log_metric("progress", trainer_state.global_step / max(trainer_state.max_steps, 1))
        log_extra("length", [len(c) for c in completions])
        return [1.0 for _ in completions]

    async def judge(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [float("yes" in c) for c in completions]

    reward = from_reward_func(needs_trl_kwargs, reference_column=None)
    reward.trainer_state.global_step, reward.trainer_state.max_steps = 5, 10
    outs = reward.score([Sample("", "ab"), Sample("", "abcd")])
    assert [o.status for o in outs] == [Status.OK, Status.OK]
    assert [o.metrics for o in outs] == [{"progress": 0.5, "length": 2}, {"progress": 0.5, "length": 4}]
    outs = from_reward_func(judge).score([Sample("", "yes"), Sample("", "no")])
    assert [(o.status, o.score) for o in outs] == [(Status.OK, 1.0), (Status.OK, 0.0)]

    async def inside_a_running_loop():  # an async host (TRL's daemon loop) scoring through it
        return from_reward_func(judge).score([Sample("", "yes")])

    [inside] = asyncio.run(inside_a_running_loop())
    assert (inside.status, inside.score) == (Status.OK, 1.0)


def test_from_reward_func_wrong_length_on_one_row_is_an_error_outcome():
    two = from_reward_func(lambda prompts, completions, **kw: [1.0, 1.0], name="two")
    [out] = two.score([Sample("", "a")])
    assert out.status is Status.ERROR and "for 1 completions" in out.reason
    import numpy as np

    odd = from_reward_func(lambda prompts, completions, **kw: [np.array([1.0, 2.0]), 10**400], name="odd")
    assert [o.status for o in odd.score([Sample("", "a"), Sample("", "b")])] == [Status.ERROR, Status.ERROR]


class _Child:
    """What TRL's async GRPO does in its spawned rollout worker
    (trl/experimental/async_grpo/async_rollout_worker.py, ``_score_group``): every reward
    function, unpickled, called as ``asyncio.to_thread(reward_func, **kwargs)``."""

    @staticmethod
    def main(payload: bytes, queue) -> None:
        reward_funcs = pickle.loads(payload)
        kwargs = {"completions": ["\\boxed{7}", "\\boxed{8}"], "prompts": ["q", "q"], "completion_ids": None, "answer": ["7", "7"]}

        async def score():
            return await asyncio.gather(*[asyncio.to_thread(f, **kwargs) for f in reward_funcs])

        queue.put(asyncio.run(score()))


def test_every_adapter_object_pickles_and_scores_in_a_spawned_process():
    """TRL's ``AsyncRolloutWorker.start`` checks ``pickle.dumps(loop_kwargs)`` and spawns a
    child that unpickles ``reward_funcs``; Ray and veRL use cloudpickle. Each adapter object
    pickles both ways -- after it has started worker processes too -- and starts its own
    workers on the other side."""
    import multiprocessing as mp

    import cloudpickle

    from rlvr.integrations.remote import RemoteReward

    timed = reward_func("math", timeout_s=2)
    funcs = [
        timed,
        reward_func(WeightedSum([(load_verifier("math"), 1.0), (load_verifier("boxed_format"), 0.5)])),
        reward_func(from_reward_func(length_trl_reward)),
    ]
    assert timed(prompts=["q"], completions=["\\boxed{7}"], answer=["7"]) == [1.0]  # its workers are running now
    for obj in [*funcs, from_reward_func(length_trl_reward), RemoteReward("http://127.0.0.1:9"), isolated(FunctionReward(_hang_when_marked), timeout_s=1)]:
        for module in (pickle, cloudpickle):
            module.loads(module.dumps(obj))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_Child.main, args=(pickle.dumps(funcs), queue))
    child.start()
    try:
        results = queue.get(timeout=120)
    finally:
        child.join(timeout=30)
        timed.close()
    assert results == [[1.0, 0.0], [1.5, 0.5], [1.0, 0.0]]


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    """A real TRL ``GRPOTrainer`` (not trained): its ``_calculate_rewards`` is called below."""
    from conftest import tiny_causal_lm
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.models import resolve_model

    def build(reward_funcs, weights=None):
        tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
        args = GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("trl")), use_cpu=True, report_to=[], per_device_train_batch_size=4,
            num_generations=4, max_completion_length=8, save_strategy="no", bf16=False, disable_tqdm=True, reward_weights=weights,
        )
        data = Dataset.from_list([{"prompt": "What is 3 + 4?", "answer": "7", "hang": False}] * 4)
        return GRPOTrainer(model=tiny_causal_lm(tokenizer), reward_funcs=reward_funcs, args=args, train_dataset=data, processing_class=tokenizer)

    return build


def test_one_reward_func_over_a_weighted_sum_keeps_a_failed_check_out_of_trl(trl_trainer):
    """TRL 1.16 sums its reward functions with ``nansum`` (grpo_trainer.py,
    ``_generate_and_score_completions``)::

        rewards = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan        # unscorable: every function returned None

    so with two functions, a math check that timed out (None) still gets the format bonus and
    an advantage. One ``reward_func`` over a ``WeightedSum`` makes the whole row None."""
    import torch

    hangs = isolated(FunctionReward(_hang_when_marked, name="hangs"), timeout_s=0.5, max_workers=2)
    fmt = load_verifier("boxed_format")
    inputs = [{"prompt": "What is 3 + 4?", "answer": "7", "hang": h} for h in (False, True, False, False)]
    prompts = [x["prompt"] for x in inputs]
    completions = ["\\boxed{7}", "\\boxed{7}", "7", "\\boxed{5}"]
    ids = [[1]] * 4

    def summed(trainer):
        rewards_per_func = trainer._calculate_rewards(inputs, prompts, completions, ids)
        unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * trainer.reward_weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan
        return rewards.tolist()

    try:
        separate = summed(trl_trainer([reward_func(hangs, reference_column=None), reward_func(fmt, reference_column=None)], [1.0, 0.1]))
        combined = summed(trl_trainer([reward_func(WeightedSum([(hangs, 1.0), (fmt, 0.1)]), reference_column=None)]))
    finally:
        hangs.close()
    assert separate[1] == pytest.approx(0.1)  # the hazard: a failed check scored as a wrong-but-boxed answer
    assert math.isnan(combined[1])  # the promise: a failed check is left out
    assert combined[0] == pytest.approx(1.1) and combined[2] == pytest.approx(1.0) and combined[3] == pytest.approx(1.1)


# -- the real TRL GRPOTrainer --------------------------------------------------------------


class Recorder:
    """Passes TRL's call through to an adapter and keeps what went back to TRL."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.__name__ = fn.__name__
        self.calls: list[tuple[list, list]] = []

    def __call__(self, **kwargs):
        out = self.fn(**kwargs)
        self.calls.append((list(kwargs["hang"]), list(out)))
        return out


@pytest.mark.slow
def test_trl_grpo_trainer_two_steps_with_rlvr_rewards(tmp_path):
    """TRL's own GRPOTrainer, 2 steps on a 2-layer Llama from a config, rewarded by rlvr's
    math verifier; a second rlvr reward hangs on one prompt's completions, which reach TRL
    as None, and training goes on."""
    from conftest import tiny_causal_lm
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlvr.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    model = tiny_causal_lm(tokenizer)
    data = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"What is {a} + {b}? Answer in \\boxed{{}}."}], "answer": str(a + b), "hang": a == 1}
            for a, b in [(1, 2), (2, 3), (3, 4), (4, 5)]
        ]
    )
    math_fn = Recorder(reward_func("math"))
    hang_fn = Recorder(reward_func(FunctionReward(_hang_when_marked, name="hangs"), timeout_s=0.5, max_workers=2))
    args = GRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        max_steps=2,
        per_device_train_batch_size=8,  # 2 prompts x 4 completions a step: 2 steps see all 4 prompts
        num_generations=4,
        max_completion_length=8,
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        learning_rate=1e-3,
        seed=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[math_fn, hang_fn], args=args, train_dataset=data, processing_class=tokenizer)
    try:
        trainer.train()
    finally:
        hang_fn.fn.close()
    assert trainer.state.global_step == 2
    assert math_fn.calls and all(v is not None for _, out in math_fn.calls for v in out)
    seen = [(h, v) for hangs, out in hang_fn.calls for h, v in zip(hangs, out)]
    assert any(h for h, _ in seen), "the hanging prompt was never sampled"
    assert all((v is None) == h for h, v in seen)  # the timed-out ones reach TRL as None, the others score
    logged = [row for row in trainer.state.log_history if "rewards/math/mean" in row]
    assert logged and all("rlvr/math/ok" in row for row in logged)
    assert any(row.get("rlvr/hangs/timeout", 0) > 0 for row in logged)
