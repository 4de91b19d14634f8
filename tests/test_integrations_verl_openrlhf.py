"""The veRL and OpenRLHF adapters, called with the argument shapes those frameworks use.

Neither framework is installed; the adapters are plain functions, so each test calls them
exactly as the framework's source does (quoted in each docstring) and checks the keys and
types the framework reads back.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
import pytest
import torch

from rlvr.integrations import openrlhf, verl
from rlvr.registry import load_verifier
from rlvr.rewards import FunctionReward, Outcome, Sample, WeightedSum, isolated

VERL_KEYS = {"score", "acc", "rlvr_failed", "rlvr_timeout", "rlvr_error", "rlvr_abstain", "rlvr_status", "rlvr_reason"}


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
    assert broken.calls == 3  # the batch, then two rows: the same failure, so not 48 more
    d = verl.make_compute_score(broken)(data_source="x", solution_str="a", ground_truth="a")
    assert d["rlvr_status"] == "error" and "worker failed to start" in d["rlvr_reason"]


# -- veRL, called exactly as its own code calls a custom reward function ---------------------


def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
    """verl/trainer/ppo/reward.py (veRL 0.5.0-0.9.1), verbatim: how veRL wraps a custom
    ``compute_score`` with ``custom_reward_function.reward_kwargs``."""
    merged_kwargs = {**kwargs, **extra_kwargs}
    return raw_fn(*args, **merged_kwargs)


async def _reward_loop_naive(compute_score, data_source, response_str, ground_truth, extra_info):
    """verl/experimental/reward_loop/reward_manager/naive.py (veRL 0.9.1) ``run_single``: a
    sync function runs in the loop's default thread pool; the result is read as a dict's
    ``"score"`` with every key kept, or used as is."""
    loop = asyncio.get_running_loop()
    if inspect.iscoroutinefunction(compute_score):
        result = await compute_score(data_source=data_source, solution_str=response_str, ground_truth=ground_truth, extra_info=extra_info)
    else:
        result = await loop.run_in_executor(
            None,
            lambda: compute_score(data_source=data_source, solution_str=response_str, ground_truth=ground_truth, extra_info=extra_info),
        )
    reward_extra_info = {}
    if isinstance(result, dict):
        score = result["score"]
        for key, value in result.items():
            reward_extra_info[key] = value
    else:
        score = result
        reward_extra_info["acc"] = score
    return {"reward_score": score, "reward_extra_info": reward_extra_info}


def _reward_loop(compute_score, rows, **reward_kwargs):
    fn = partial(_call_with_kwargs, compute_score, reward_kwargs)

    async def run():
        return await asyncio.gather(*[_reward_loop_naive(fn, *row) for row in rows])

    return asyncio.run(run())


def test_verl_math_dapo_sources_read_answer_colon_on_the_plus_minus_one_scale():
    """veRL's ``default_compute_score`` (verl/utils/reward_score/__init__.py, 0.6-0.9.1) routes
    ``math_dapo``, ``math``, ``math_dapo_reasoning`` and every ``aime*`` to ``math_dapo``, which
    reads the last ``Answer: X`` line and scores +1 / -1 (a box too, since 0.9.1); the
    ``numina_*`` sources go to ``prime_math`` (0 / 1). rlvr routes and scores them the same."""
    info = {"index": 0, "num_turns": 1, "rollout_reward_scores": {}}
    rows = [
        ("math_dapo", "Let me compute 3 + 4.\nAnswer: 7", "7", info),
        ("math_dapo", "Let me compute 3 + 4.\nAnswer: 8", "7", info),
        ("aime2024", "... so m + n = 33.\nAnswer: $33$", "33", info),
        ("aime25", "The final count is \\boxed{204}.", "204", info),
        ("math_dapo_reasoning", "<think>x</think>\nAnswer: \\frac{1}{2}", "0.5", info),
        ("math", "no answer here", "7", info),
        ("numina_olympiads", "Thus the answer is 12.", "12", info),
        ("numina_cn_k12", "Answer: 13", "12", info),
    ]
    out = _reward_loop(verl.compute_score, rows)
    assert [r["reward_score"] for r in out] == [1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 0.0]
    assert [r["reward_extra_info"]["acc"] for r in out] == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert all(r["reward_extra_info"]["rlvr_status"] == "ok" for r in out)
    assert {frozenset(r["reward_extra_info"]) for r in out} == {frozenset(VERL_KEYS)}  # one key set: veRL stacks them


def test_verl_prime_manager_positional_call_in_a_process_pool():
    """verl/workers/reward_manager/prime.py (veRL 0.5.0-0.9.1): ``compute_score`` runs in a
    ``ProcessPoolExecutor``, called POSITIONALLY as ``(data_source, solution_str,
    ground_truth, extra_info)``; a result that is not a number is read as
    ``float(result[0])``, and any exception makes the whole batch 0.0. rlvr's result reads
    as its score there, so correct answers score 1.0, also for ``make_compute_score``."""

    async def single_compute_score(evaluation_func, completion, reference, task, task_extra_info, executor, timeout=300.0):
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(executor, partial(evaluation_func, task, completion, reference, task_extra_info))
        return await asyncio.wait_for(future, timeout=timeout)

    def run_reward_scoring(evaluation_func, completions, references, tasks, extra_info):
        async def gather():
            with ProcessPoolExecutor(max_workers=2) as executor:
                return await asyncio.gather(
                    *[single_compute_score(evaluation_func, c, r, t, ei, executor) for c, r, t, ei in zip(completions, references, tasks, extra_info)]
                )

        scores = []
        for result in asyncio.run(gather()):
            if isinstance(result, Exception) or result is None:
                scores.append(0.0)
            elif isinstance(result, int | float | bool):
                scores.append(float(result))
            else:
                scores.append(float(result[0]))
        return scores

    completions = ["so \\boxed{7}", "\\boxed{6}", "Answer: 12", "the answer is #### 72"]
    references = ["7", "7", np.array(["11", "12"], dtype=object), ["72"]]
    tasks = ["lighteval/MATH", "lighteval/MATH", "aime2024", "openai/gsm8k"]
    infos = [{"index": i} for i in range(4)]
    verl.compute_score("lighteval/MATH", "\\boxed{1}", "1")  # the parent's verifier has started its workers before the fork
    evaluation_func = partial(_call_with_kwargs, verl.compute_score, {})
    assert run_reward_scoring(evaluation_func, completions, references, tasks, infos) == [1.0, 0.0, 1.0, 1.0]
    combined = verl.make_compute_score(WeightedSum([(load_verifier("math"), 1.0), (load_verifier("boxed_format"), 0.5)]))
    evaluation_func = partial(_call_with_kwargs, combined, {})
    assert run_reward_scoring(evaluation_func, completions[:2], references[:2], tasks[:2], infos[:2]) == [1.5, 0.5]


def test_verl_result_reads_every_way_and_pickles():
    result = verl.compute_score("openai/gsm8k", "#### 72", "72")
    assert result["score"] == result[0] == float(result) == 1.0
    assert isinstance(result, dict) and dict(result)["score"] == 1.0
    copy = pickle.loads(pickle.dumps(result))
    assert copy == result and copy[0] == 1.0 and type(copy) is type(result)
    fn = pickle.loads(pickle.dumps(verl.make_compute_score(load_verifier("math"), signed=True)))
    assert fn("x", "\\boxed{2}", "2", None)["score"] == 1.0 and fn("x", "\\boxed{3}", "2", None)["score"] == -1.0


def test_verl_ground_truths_that_list_several_answers_mean_any_of_them():
    """A parquet list column reaches ``compute_score`` as a list (``datasets``) or an array
    (``pd.read_parquet``); each element is an accepted answer."""
    for truth in (["7"], ("6", "7"), np.array(["6", "7"], dtype=object), np.array([6, 7])):
        d = verl.compute_score("lighteval/MATH", "\\boxed{7}", truth)
        assert (d["score"], d["rlvr_status"]) == (1.0, "ok"), truth
    assert verl.compute_score("lighteval/MATH", "\\boxed{5}", ["6", "7"])["score"] == 0.0
    empty = verl.compute_score("lighteval/MATH", "\\boxed{5}", [])
    assert empty["rlvr_status"] == "error" and empty["rlvr_failed"] == 1.0


def test_verl_routes_data_sources_by_prefix_as_verl_does():
    for source in ("aime", "aime2024", "aime_2025_I", "math_dapo", "math", "math_dapo_reasoning"):
        assert verl.route_for(source, {}).signed, source
    for source in ("openai/gsm8k", "lighteval/MATH", "HuggingFaceH4/MATH-500", "numina_amc_aime"):
        assert not verl.route_for(source, {}).signed, source
    assert verl.route_for(np.str_("aime2024"), {}).verifier == "math"
    assert not verl.route_for("aime2024", {"signed": False}).signed
    with pytest.raises(ValueError, match="aime"):
        verl.route_for("numina_unknown", {})


# -- OpenRLHF, called exactly as its own code calls a reward-function file -------------------

SYSTEM = "<|im_start|>system\nYou are careful. If you are unsure, write \\boxed{1}. " + "Think step by step. " * 12 + "<|im_end|>\n"
PROMPT = SYSTEM + "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"


async def _single_turn_executor(reward_func, query, prompt, label):
    """openrlhf/utils/agent.py ``SingleTurnAgentExecutor`` (OpenRLHF 0.10.1-0.11.2): one
    sample per call, in a thread, positionally; ``scores`` falls back to ``rewards``; each
    value becomes ``torch.tensor([x])`` and each extra log ``value.flatten()[0].item()``
    (trainer/ppo_utils/samples_generator.py ``_process_response_into_experience``)."""
    [rewards_info] = await asyncio.gather(asyncio.to_thread(reward_func, [query], [prompt], [label]))
    score_value = rewards_info.get("scores")
    if score_value is None:
        score_value = rewards_info.get("rewards")
    info = {"reward": torch.tensor([rewards_info.get("rewards")]), "score": torch.tensor([score_value])}
    for key, value in (rewards_info.get("extra_logs") or {}).items():
        if isinstance(value, torch.Tensor):
            value = value.flatten()[0].item()
        info[key] = torch.tensor([value])
    return info


def _left_cut(text: str, n_chars: int) -> str:
    """What OpenRLHF 0.9.1+ decodes after ``prompt_token_ids[-max_prompt_length:]``."""
    return text[n_chars:]


def test_openrlhf_0_11_per_sample_call_never_scores_prompt_text():
    """The prompt was cut from the left, so ``query`` does not start with ``prompt``; the
    system prompt's ``\\boxed{1}`` is prompt text and must not be scored as the answer."""
    rows = [
        (_left_cut(PROMPT, 40) + "I don't know.<|im_end|>", PROMPT, "1"),  # the cut keeps the system \boxed{1}
        (_left_cut(PROMPT, 200) + "3 + 4 = \\boxed{7}<|im_end|>", PROMPT, "7"),
        (PROMPT + "\\boxed{7}<|im_end|>", PROMPT, "7"),
        (PROMPT.replace("step by step. ", "step by step . ", 1) + "\\boxed{7}<|im_end|>", PROMPT, "7"),  # decode is not exact
        ("an unrelated text with \\boxed{1}", PROMPT, "1"),
    ]

    async def run():
        return await asyncio.gather(*[_single_turn_executor(openrlhf.reward_func, *row) for row in rows])

    infos = asyncio.run(run())
    assert [i["reward"].flatten().item() for i in infos] == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert [i["rlvr/error"].item() for i in infos] == [0.0, 0.0, 0.0, 0.0, 1.0]  # the last: no response found, refused
    assert len({frozenset(i) for i in infos}) == 1  # the same keys every call: OpenRLHF batches them by the first's keys


def test_openrlhf_0_8_ray_task_chunks_and_cloudpickle():
    """OpenRLHF 0.8.x / 0.9.0 (openrlhf/utils/remote_rm_utils.py ``RemoteRewardModel``):
    ``ray.remote(reward_module.reward_func)`` -- shipped with cloudpickle -- called on chunks
    of ``micro_rollout_batch_size``; results ``torch.cat`` ed, ``extra_logs`` by the first
    chunk's keys (trainer/ppo_utils/experience_maker.py ``update_samples_with_rewards``)."""
    import cloudpickle

    combined = openrlhf.make_reward_func(WeightedSum([(load_verifier("math"), 1.0), (load_verifier("boxed_format"), 0.5)]), metric_keys=["math"])
    for fn in (openrlhf.reward_func, combined):
        remote_fn = cloudpickle.loads(cloudpickle.dumps(fn))
        queries = [PROMPT + "\\boxed{7}<|im_end|>", _left_cut(PROMPT, 100) + "no idea<|im_end|>", PROMPT + "\\boxed{8}<|endoftext|><|endoftext|>"]
        chunks = [remote_fn(queries[s : s + 2], [PROMPT] * len(queries[s : s + 2]), ["7"] * len(queries[s : s + 2])) for s in (0, 2)]
        rewards = torch.cat([torch.as_tensor(info["rewards"]) for info in chunks], dim=0)
        scores = torch.cat([torch.as_tensor(info["scores"]) for info in chunks], dim=0)
        logs = {key: torch.cat([info["extra_logs"][key] for info in chunks], dim=0) for key in chunks[0]["extra_logs"]}
        if fn is combined:
            assert rewards.tolist() == [1.5, 0.0, 0.5] and logs["rlvr/metric/math"].tolist() == [1.0, 0.0, 0.0]
            assert scores.tolist() == [1.0, 0.0, 0.5]  # scores clamped to 0..1 for dynamic filtering; rewards as they are
        else:
            assert rewards.tolist() == [1.0, 0.0, 0.0] and scores.tolist() == [1.0, 0.0, 0.0]
        assert all(v.shape == (3,) for v in logs.values())


def test_openrlhf_response_of_the_chat_templates_in_use():
    for head, tail in [
        ("<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        ("<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>"),
        ("<|user|>\nq<|end|>\n<|assistant|>\n", "<|end|>"),
        ("[INST] q [/INST]", "</s>"),
    ]:
        # no prompt text to match (a decode that differs from the start): the assistant marker finds it
        assert openrlhf.response_of(head + "\\boxed{7}" + tail, "x" * 40).strip() == "\\boxed{7}", head
    assert openrlhf.response_of("just a response", None) == "just a response"
    with pytest.raises(openrlhf.ResponseNotFound):
        openrlhf.response_of("text without its prompt", PROMPT)


class FailsOnBad:
    name = "fails_on_bad"

    def score(self, samples):
        if any(s.completion == "bad" for s in samples):
            raise ValueError("bad row")
        return [Outcome.ok(1.0) for _ in samples]


def test_a_bad_first_row_fails_alone():
    out = openrlhf.make_reward_func(FailsOnBad())(["bad", "ok", "ok"], ["", "", ""], ["x"] * 3)
    assert out["extra_logs"]["rlvr/error"].tolist() == [1.0, 0.0, 0.0] and out["rewards"].tolist() == [0.0, 1.0, 1.0]


def test_openrlhf_few_shot_prompt_whose_decode_differs_is_not_scored():
    """A few-shot prompt ends each example turn as it ends the last one; the decode dropped a
    space in the last turn. The example's ``\\boxed{5}`` is prompt text, never the answer."""
    prompt = (
        "<|im_start|>user\nWhat is 2+3? <|im_end|>\n<|im_start|>assistant\n\\boxed{5}<|im_end|>\n"
        "<|im_start|>user\nWhat is 1+4? <|im_end|>\n<|im_start|>assistant\n"
    )
    query = prompt.replace("1+4? <|im_end|>", "1+4?<|im_end|>") + "I am not sure.<|im_end|>"
    assert openrlhf.response_of(query, prompt) == "I am not sure."
    assert openrlhf.reward_func([query], [prompt], ["5"])["rewards"].tolist() == [0.0]


def test_verl_make_compute_score_takes_a_name_and_checks_lengths():
    fn = verl.make_compute_score("math")
    assert fn("x", "\\boxed{2}", "2", None)["score"] == 1.0
    with pytest.raises(ValueError, match="2 solution_strs, 1 ground_truths"):
        fn(data_sources=["x", "x"], solution_strs=["a", "b"], ground_truths=["1"])


def test_math_reference_tuple_still_accepts_the_whole_answer():
    math_verifier = load_verifier("math")
    outs = math_verifier.score([Sample("", "\\boxed{(1, 2)}", (1, 2)), Sample("", "\\boxed{[1, 2]}", [[1, 2], [3, 4]])])
    assert [o.score for o in outs] == [1.0, 1.0]
