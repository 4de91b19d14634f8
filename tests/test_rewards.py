"""The reward interface: FunctionReward, WeightedSum, outcome checks, and isolated()."""

from __future__ import annotations

import math
import os
import threading
import time

import pytest

from rlvr.rewards import FunctionReward, Outcome, Sample, Status, WeightedSum, check_outcomes, isolated


def _samples(*completions: str, reference=None) -> list[Sample]:
    return [Sample("prompt", c, reference) for c in completions]


def _length(sample: Sample) -> float:
    return float(len(sample.completion))


def _behave(sample: Sample) -> float | None:
    """A reward whose behaviour is chosen by the completion (module level: picklable by reference)."""
    c = sample.completion
    if c == "sleep":
        time.sleep(100)
    if c == "exit":
        os._exit(1)
    if c == "segfault":
        import ctypes

        ctypes.string_at(0)
    if c == "grow":
        hoard = []
        while True:
            hoard.append(bytearray(50 << 20))
    if c == "abstain":
        return None
    if c == "pid":
        return float(os.getpid())
    if c == "says-memoryerror":
        raise ValueError("this is not a MemoryError, only a message that names one")
    return float(len(c))


# --- Sample -------------------------------------------------------------------------------


def test_sample_rejects_non_string_completion():
    with pytest.raises(TypeError, match="completion must be a str, got int"):
        Sample("p", 42)
    with pytest.raises(TypeError, match="completion must be a str, got list"):
        Sample("p", [1, 2, 3])


def test_sample_accepts_chat_prompt():
    s = Sample([{"role": "user", "content": "hi"}], "hello", reference="x", info={"id": 3})
    assert s.info["id"] == 3


# --- FunctionReward -----------------------------------------------------------------------


def test_function_reward_scores_abstains_and_errors():
    def fn(s):
        if s.completion == "boom":
            raise ValueError("bad input")
        if s.completion == "none":
            return None
        if s.completion == "nan":
            return float("nan")
        if s.completion == "text":
            return "1.0"
        if s.completion == "bool":
            return True
        return 0.25

    out = FunctionReward(fn, name="f").score(_samples("ok", "none", "boom", "nan", "text", "bool"))
    assert [o.status for o in out] == [Status.OK, Status.ABSTAIN, Status.ERROR, Status.ERROR, Status.ERROR, Status.ERROR]
    assert out[0].score == 0.25
    assert all(o.score is None for o in out[1:])
    assert "ValueError: bad input" in out[2].reason
    assert "non-finite nan" in out[3].reason
    assert "str" in out[4].reason and "not a number" in out[4].reason
    assert "bool" in out[5].reason


def test_function_reward_name_defaults_to_function_name():
    assert FunctionReward(_length).name == "_length"


# --- check_outcomes -----------------------------------------------------------------------


def test_check_outcomes_turns_bad_scores_into_errors():
    samples = _samples("a", "b", "c", "d", "e")
    outs = check_outcomes(
        "r",
        samples,
        [
            Outcome(1.0, Status.OK),
            Outcome(float("inf"), Status.OK),
            Outcome("0.5", Status.OK),  # type: ignore[arg-type]
            Outcome(0.0, Status.TIMEOUT),
            "not an outcome",
        ],
    )
    assert [o.status for o in outs] == [Status.OK] + [Status.ERROR] * 4
    assert "non-finite" in outs[1].reason
    assert "non-numeric" in outs[2].reason
    assert "only OK carries a score" in outs[3].reason
    assert "not an Outcome" in outs[4].reason


def test_check_outcomes_wrong_length_is_a_clear_error():
    with pytest.raises(TypeError, match="returned 1 outcomes for 2 samples"):
        check_outcomes("r", _samples("a", "b"), [Outcome.ok(1.0)])


# --- WeightedSum --------------------------------------------------------------------------


def test_weighted_sum_combines_and_records_parts():
    a = FunctionReward(lambda s: 1.0, name="a")
    b = FunctionReward(lambda s: 0.5, name="b")
    [out] = WeightedSum([(a, 2.0), (b, -1.0)]).score(_samples("x"))
    assert out.status is Status.OK
    assert out.score == pytest.approx(2.0 * 1.0 - 1.0 * 0.5)
    assert out.metrics["a"] == 1.0 and out.metrics["b"] == 0.5
    assert out.metrics["a/ok"] == 1.0


def test_weighted_sum_error_or_timeout_part_fails_the_whole():
    ok = FunctionReward(lambda s: 1.0, name="ok")
    bad = FunctionReward(lambda s: 1 / 0, name="bad")

    class Slow:
        name = "slow"

        def score(self, samples):
            return [Outcome.timeout("too slow") for _ in samples]

    [err] = WeightedSum([(ok, 1.0), (bad, 1.0)]).score(_samples("x"))
    assert err.status is Status.ERROR and err.score is None
    assert "bad" in err.reason and "ZeroDivisionError" in err.reason
    [tmo] = WeightedSum([(ok, 1.0), (Slow(), 1.0)]).score(_samples("x"))
    assert tmo.status is Status.TIMEOUT and tmo.score is None
    [both] = WeightedSum([(bad, 1.0), (Slow(), 1.0)]).score(_samples("x"))
    assert both.status is Status.ERROR


def test_weighted_sum_abstain_skip_and_propagate():
    ok = FunctionReward(lambda s: 1.0, name="ok")
    no = FunctionReward(lambda s: None, name="no")
    [skip] = WeightedSum([(ok, 3.0), (no, 1.0)]).score(_samples("x"))
    assert skip.status is Status.OK and skip.score == 3.0
    [prop] = WeightedSum([(ok, 3.0), (no, 1.0)], abstain="propagate").score(_samples("x"))
    assert prop.status is Status.ABSTAIN and prop.score is None
    [every] = WeightedSum([(no, 1.0)]).score(_samples("x"))
    assert every.status is Status.ABSTAIN


def test_weighted_sum_rejects_bad_parts():
    ok = FunctionReward(lambda s: 1.0, name="ok")
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum([])
    with pytest.raises(TypeError, match="finite number"):
        WeightedSum([(ok, float("nan"))])
    with pytest.raises(TypeError, match="not a Reward"):
        WeightedSum([(lambda s: 1.0, 1.0)])
    with pytest.raises(ValueError, match="distinct names"):
        WeightedSum([(ok, 1.0), (ok, 2.0)])


def test_weighted_sum_nan_part_is_an_error_not_zero():
    nan = FunctionReward(lambda s: math.nan, name="nan")
    [out] = WeightedSum([(nan, 1.0)]).score(_samples("x"))
    assert out.status is Status.ERROR


# --- isolated ---------------------------------------------------------------------------


def test_isolated_timeout_keeps_other_samples():
    timeout = 2.0
    with isolated(FunctionReward(_behave), timeout_s=timeout, max_workers=2) as reward:
        start = time.monotonic()
        out = reward.score(_samples("a", "sleep", "bbb", "cc", "dddd"))
        elapsed = time.monotonic() - start
    assert elapsed < timeout + 2.0, f"a sleeping reward held the batch for {elapsed:.1f} s"
    assert [o.status for o in out] == [Status.OK, Status.TIMEOUT, Status.OK, Status.OK, Status.OK]
    assert [o.score for o in out] == [1.0, None, 3.0, 2.0, 4.0]
    assert "deadline" in out[1].reason


def test_isolated_os_exit_is_an_error_and_pool_recovers():
    with isolated(FunctionReward(_behave), timeout_s=10, max_workers=1) as reward:
        out = reward.score(_samples("a", "exit", "bb"))
        assert [o.status for o in out] == [Status.OK, Status.ERROR, Status.OK]
        assert "exited with code 1" in out[1].reason
        again = reward.score(_samples("ccc"))
        assert again[0].score == 3.0


def test_isolated_segfault_is_an_error():
    with isolated(FunctionReward(_behave), timeout_s=10, max_workers=1) as reward:
        out = reward.score(_samples("segfault", "a"))
    assert out[0].status is Status.ERROR and "SIGSEGV" in out[0].reason
    assert out[1].score == 1.0


def test_isolated_memory_bomb_is_an_error():
    with isolated(FunctionReward(_behave), timeout_s=30, max_workers=1, memory_mb=256) as reward:
        out = reward.score(_samples("grow", "ab"))
    assert out[0].status is Status.ERROR and "MemoryError" in out[0].reason
    assert out[1].score == 2.0


def test_isolated_replaces_a_worker_after_memory_error_and_only_then():
    with isolated(FunctionReward(_behave), timeout_s=30, max_workers=1, memory_mb=256) as reward:
        named = reward.score(_samples("pid", "says-memoryerror", "pid"))
        grown = reward.score(_samples("pid", "grow", "pid"))
    # a reason that merely mentions MemoryError keeps the worker ...
    assert named[1].status is Status.ERROR and "MemoryError" in named[1].reason
    assert named[0].score == named[2].score
    # ... a real one replaces it, and the sample after it runs in the fresh worker
    assert grown[1].status is Status.ERROR and grown[1].reason.startswith("MemoryError")
    assert grown[0].score != grown[2].score and grown[2].status is Status.OK


def test_isolated_abstain_and_nan_pass_through_checks():
    with isolated(FunctionReward(lambda s: float("nan") if s.completion == "nan" else None), timeout_s=10, max_workers=1) as reward:
        out = reward.score(_samples("nan", "x"))
    assert out[0].status is Status.ERROR and "non-finite" in out[0].reason
    assert out[1].status is Status.ABSTAIN


def test_isolated_works_off_the_main_thread_and_in_parallel_calls():
    results = {}
    reward = isolated(FunctionReward(_behave), timeout_s=1.0, max_workers=2)

    def run(key, completions):
        results[key] = reward.score(_samples(*completions))

    threads = [threading.Thread(target=run, args=(k, ["sleep", "abc"])) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    reward.close()
    for k in range(2):
        assert [o.status for o in results[k]] == [Status.TIMEOUT, Status.OK]


def test_isolated_unpicklable_reward_is_a_clear_error():
    class Holder:
        name = "holder"

        def __init__(self):
            self.lock = threading.Lock()

        def score(self, samples):
            return [Outcome.ok(1.0) for _ in samples]

    with pytest.raises(TypeError, match="cannot be pickled"):
        isolated(Holder())


def test_a_forked_child_forgets_the_parents_workers_and_never_kills_them():
    """A host framework's process pool forks (veRL's prime manager): the child that closes its
    copy, or scores with it, leaves the parent's workers alone."""
    reward = isolated(FunctionReward(_length, name="length"), timeout_s=10, max_workers=1)
    try:
        assert [o.status for o in reward.score(_samples("ab"))] == [Status.OK]
        worker = reward._workers[0].proc
        pid = os.fork()
        if pid == 0:  # the child: score on its own workers, then close them
            code = 0 if [o.score for o in reward.score(_samples("abc"))] == [3.0] else 1
            reward.close()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert worker.poll() is None  # the parent's worker is alive
        assert [o.score for o in reward.score(_samples("abcd"))] == [4.0]
    finally:
        reward.close()
