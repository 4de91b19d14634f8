"""The veRL and OpenRLHF adapters, called with the argument shapes those frameworks use.

Neither framework is installed; the adapters are plain functions, so each test calls them
exactly as the framework's source does (quoted in each docstring) and checks the keys and
types the framework reads back.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from rlvr.integrations import openrlhf, verl
from rlvr.registry import load_verifier
from rlvr.rewards import FunctionReward, Sample, WeightedSum, isolated

VERL_KEYS = {"score", "rlvr_failed", "rlvr_timeout", "rlvr_error", "rlvr_abstain", "rlvr_status", "rlvr_reason"}


def test_verl_compute_score_per_response():
    """veRL ``NaiveRewardManager.__call__`` (verl/workers/reward_manager/naive.py)::

        score = self.compute_score(data_source=data_source, solution_str=response_str,
                                   ground_truth=ground_truth, extra_info=extra_info)
        if isinstance(score, dict):
            reward = score["score"]
            for key, value in score.items():
                reward_extra_info[key].append(value)

    with ``custom_reward_function.reward_kwargs`` merged in as keyword arguments
    (``_call_with_kwargs`` in verl/trainer/ppo/reward.py).
    """
    extra_info = {"index": 3, "split": "train", "num_turns": None, "rollout_reward_scores": {}}
    right = verl.compute_score(data_source="openai/gsm8k", solution_str="so the answer is #### 72", ground_truth="72", extra_info=extra_info)
    wrong = verl.compute_score(data_source="lighteval/MATH", solution_str="\\boxed{3}", ground_truth="\\frac{1}{2}", extra_info=extra_info)
    chosen = verl.compute_score(data_source="anything", solution_str="\\boxed{0.5}", ground_truth="1/2", extra_info=None, verifier="math")
    for d in (right, wrong, chosen):
        assert set(d) == VERL_KEYS  # the same keys for every response: veRL stacks them into arrays
        assert isinstance(d["score"], float)
        assert all(isinstance(d[k], float) for k in VERL_KEYS - {"rlvr_status", "rlvr_reason"})
    assert (right["score"], wrong["score"], chosen["score"]) == (1.0, 0.0, 1.0)
    assert right["rlvr_failed"] == 0.0 and right["rlvr_status"] == "ok"


def test_verl_failed_check_is_flagged_not_hidden():
    """A failed check has no score veRL can leave out: it gets ``failure_score`` and the flags say why."""
    d = verl.compute_score(data_source="math", solution_str="\\boxed{1}", ground_truth=None, failure_score=-1.0)
    assert d["score"] == -1.0 and d["rlvr_failed"] == 1.0 and d["rlvr_error"] == 1.0 and d["rlvr_status"] == "error"
    assert "reference" in d["rlvr_reason"]


def test_verl_batch_reward_manager_shape():
    """veRL ``BatchRewardManager.verify`` (verl/workers/reward_manager/batch.py)::

        scores = self.compute_score(data_sources=data_sources, solution_strs=responses_str,
                                    ground_truths=ground_truths, extra_infos=extras, **self.reward_kwargs)
    """
    out = verl.compute_score_batch(
        data_sources=["openai/gsm8k", "lighteval/MATH", "openai/gsm8k"],
        solution_strs=["#### 4", "\\boxed{x+1}", "no answer"],
        ground_truths=["4", "1+x", "9"],
        extra_infos=[{"index": 0}, {"index": 1}, {"index": 2}],
        metric_keys=["extracted"],
    )
    assert [d["score"] for d in out] == [1.0, 1.0, 0.0]
    assert all(set(d) == VERL_KEYS | {"rlvr_metric/extracted"} for d in out)
    assert out[2]["rlvr_metric/extracted"] == 0.0


def test_verl_unknown_data_source_fails_with_what_to_do():
    with pytest.raises(ValueError, match="reward_kwargs.verifier"):
        verl.compute_score(data_source="my/new-dataset", solution_str="x", ground_truth="y")
    with pytest.raises(LookupError, match="unknown verifier"):
        verl.compute_score(data_source="x", solution_str="x", ground_truth="y", verifier="no-such-verifier")


def _sleepy(sample: Sample) -> float:
    if "hang" in sample.completion:
        time.sleep(60)
    return 1.0


def test_verl_make_compute_score_any_reward_both_shapes():
    """``make_compute_score`` for a WeightedSum and an isolated reward with a deadline, called
    in veRL's per-response and batched forms."""
    combined = WeightedSum([(load_verifier("math"), 1.0), (load_verifier("boxed_format"), 0.1)])
    fn = verl.make_compute_score(combined, metric_keys=["math", "boxed_format"])
    d = fn(data_source="x", solution_str="\\boxed{2}", ground_truth="2", extra_info={})
    assert d["score"] == pytest.approx(1.1) and d["rlvr_metric/math"] == 1.0
    slow = isolated(FunctionReward(_sleepy, name="sleepy"), timeout_s=0.5, max_workers=2)
    try:
        batch = verl.make_compute_score(slow)(data_sources=["x", "x"], solution_strs=["ok", "hang"], ground_truths=[None, None], extra_infos=[{}, {}])
    finally:
        slow.close()
    assert [d["rlvr_status"] for d in batch] == ["ok", "timeout"]
    assert [d["score"] for d in batch] == [1.0, 0.0]


def test_openrlhf_reward_func_shape():
    """OpenRLHF's reward-function file (README "Custom Reward Function";
    openrlhf/utils/agent.py ``SingleTurnAgentExecutor``)::

        def reward_func(queries, prompts, labels):
            # queries: List[str] - Full text (prompt + response); prompts: List[str]; labels: List[str]
            return {"rewards": Tensor, "scores": Tensor, "extra_logs": Dict}

    called as ``self.reward_func(queries_list[s:e], prompts_list[s:e], labels_list[s:e])``
    with ``query = hf_tokenizer.decode(observation_tokens, skip_special_tokens=False)``.
    """
    prompt = "<|im_start|>user\nWhat is 1/2 as a decimal?<|im_end|>\n<|im_start|>assistant\n"
    queries = [prompt + "It is \\boxed{0.5}<|im_end|>", prompt + "\\boxed{0.6}<|im_end|>", prompt + "\\boxed{1}"]
    out = openrlhf.reward_func(queries, [prompt] * 3, ["\\frac12", "\\frac12", None])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert isinstance(out["rewards"], torch.Tensor) and out["rewards"].dtype == torch.float32
    assert out["rewards"].tolist() == [1.0, 0.0, 0.0] and out["scores"].tolist() == [1.0, 0.0, 0.0]
    logs = out["extra_logs"]
    assert all(isinstance(v, torch.Tensor) and v.shape == (3,) for v in logs.values())
    assert logs["rlvr/error"].tolist() == [0.0, 0.0, 1.0]  # no label: a failed check, flagged
    assert logs["rlvr/failed"].tolist() == [0.0, 0.0, 1.0]


def test_openrlhf_batch_of_one_as_its_agent_calls_it():
    """The agent executor calls with batch size 1 and reads ``extra_logs`` values with
    ``value.flatten()[0].item()`` (openrlhf/trainer/ppo_utils/samples_generator.py)."""
    out = openrlhf.reward_func(["Q: 2+2? A: \\boxed{4}</s>"], ["Q: 2+2? A: "], ["4"])
    assert out["rewards"].flatten()[0].item() == 1.0
    assert all(isinstance(v.flatten()[0].item(), float) for v in out["extra_logs"].values())


def test_openrlhf_make_reward_func_timeout():
    slow = isolated(FunctionReward(_sleepy, name="sleepy"), timeout_s=0.5, max_workers=2)
    try:
        out = openrlhf.make_reward_func(slow, failure_score=-0.5)(["p ok", "p hang"], ["p ", "p "], [None, None])
    finally:
        slow.close()
    assert out["rewards"].tolist() == [1.0, -0.5]
    assert out["extra_logs"]["rlvr/timeout"].tolist() == [0.0, 1.0]
    assert openrlhf.response_of("PROMPT answer<|eot_id|>", "PROMPT ") == "answer"
    assert not math.isnan(out["scores"].sum().item())


class Broken:
    """A reward whose every call raises the same error: the reward is broken, not one row."""

    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def score(self, samples):
        self.calls += 1
        raise RuntimeError("worker failed to start")


def test_a_broken_reward_is_error_outcomes_without_retrying_every_row():
    broken = Broken()
    out = openrlhf.make_reward_func(broken)(["a"] * 50, [""] * 50, ["x"] * 50)
    assert out["extra_logs"]["rlvr/error"].tolist() == [1.0] * 50
    assert broken.calls == 2  # the batch, then one row: the same failure, so not 50 more
    d = verl.make_compute_score(broken)(data_source="x", solution_str="a", ground_truth="a")
    assert d["rlvr_status"] == "error" and "worker failed to start" in d["rlvr_reason"]
