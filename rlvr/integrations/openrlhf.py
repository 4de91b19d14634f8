"""rlvr rewards in OpenRLHF: its reward-function file, and the remote reward protocol.

OpenRLHF loads ``reward_func`` from the Python file given as ``--reward.remote_url``
(0.10.2 on; ``--remote_rm_url`` before) and calls it positionally, always with lists::

    reward_func(queries, prompts, labels)   # queries: prompt + response as decoded text
                                            # prompts: the full prompts; labels: --label_key column
    -> {"rewards": Tensor, "scores": Tensor, "extra_logs": {name: Tensor}}

0.8.x and 0.9.0 call it as a Ray task on chunks of ``micro_rollout_batch_size`` queries;
0.9.1 to 0.11.x call it once per sample (``[query], [prompt], [label]``) in a thread of
each vLLM actor. ``rewards`` feed the advantages, ``scores`` its dynamic filtering (a prompt
group is kept when its mean score lies strictly inside ``--algo.dynamic_filtering_range``,
default 0..1), ``extra_logs`` its logger. Use this module's file directly -- the verifier
comes from the environment::

    RLVR_REWARD=math RLVR_REWARD_OPTIONS='{"fallbacks": ["answer_is"]}' \\
      python -m openrlhf.cli.train_ppo_ray ... --data.label_key answer \\
      --reward.remote_url $(python -c "import rlvr.integrations.openrlhf as m; print(m.__file__)")

or write a two-line file with :func:`make_reward_func` for any Reward object. The same
protocol over HTTP (``{"query", "prompts", "labels"}`` in, the same three keys out, as
lists) is what ``python -m rlvr serve`` answers at ``/get_reward``.

The response is found in ``query`` (:func:`response_of`) without trusting that ``query``
starts with ``prompt``: OpenRLHF cuts a long prompt from the left (0.9.1 on), and a
tokenizer's decode may not give the prompt back character for character. A query in which
the response cannot be told apart from the prompt is an ERROR, never scored.

OpenRLHF cannot leave a response out, so a failed check scores ``failure_score`` (0.0)
and says so in ``extra_logs``: ``rlvr/failed``, ``rlvr/timeout``, ``rlvr/error``,
``rlvr/abstain`` (one value per response, 1.0 or 0.0), beside the reward's metrics.
``scores`` are ``rewards`` clamped to 0..1 (a ``WeightedSum`` can exceed 1);
``rewards`` are left as they are.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rlvr.integrations import finite_number, resolve_reward, score_rows
from rlvr.rewards import Outcome, Reward, Sample, Status

__all__ = ["reward_func", "make_reward_func", "response_of", "samples_from_queries", "rewards_payload", "END_MARKERS", "ASSISTANT_MARKERS", "ResponseNotFound"]

# End-of-sequence and padding text a decoded query may end with (OpenRLHF decodes with
# special tokens; 0.8.0-0.8.2 kept the right padding).
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<|end|>", "<end_of_turn>", "<eos>", "<pad>", "<|finetune_right_pad_id|>", "<｜end▁of▁sentence｜>")
# The text a chat template puts before the assistant's turn, for the templates in use
# (ChatML: Qwen, SmolLM; Llama 3; Gemma; Phi-3 / Zephyr; DeepSeek; Mistral).
ASSISTANT_MARKERS = (
    "<|im_start|>assistant",
    "<|start_header_id|>assistant<|end_header_id|>",
    "<start_of_turn>model",
    "<|assistant|>",
    "<｜Assistant｜>",
    "[/INST]",
)
# A prompt tail shorter than this found in the query does not locate the response.
MIN_PROMPT_MATCH = 24
# How many characters longer than the prompt a decode of it may come out.
PROMPT_SLACK = 64
# How much of the prompt's end is aligned with the query when the fast match cannot place it.
ALIGN_WINDOW = 2048
# A tail of the prompt this long, found in the query, places the prompt's end by itself.
TRUSTED_TAIL = 512


class ResponseNotFound(ValueError):
    """The query holds no response that can be told apart from its prompt."""


def _prompt_end(query: str, prompt: str) -> int | None:
    """Where the prompt (or what is left of it after a cut from the left) ends in ``query``."""
    if query.startswith(prompt):
        return len(prompt)
    region = query[: len(prompt) + PROMPT_SLACK]  # a cut only shortens the prompt; a decode may lengthen it a little
    # fast: the longest tail prompt[j:] found in the region (if prompt[j:] occurs, so does every
    # shorter tail, so a binary search finds it), trusted where it cannot be elsewhere: at the
    # start of the query (the prompt was cut there), or long enough that no turn repeats it
    lo, hi = 0, len(prompt)
    while lo < hi:
        mid = (lo + hi) // 2
        if prompt[mid:] in region:
            hi = mid
        else:
            lo = mid + 1
    tail = prompt[lo:]
    if len(tail) >= min(len(prompt), MIN_PROMPT_MATCH):
        at = region.rfind(tail)
        if at <= 1 or len(tail) >= max(TRUSTED_TAIL, len(prompt) // 2):
            return at + len(tail)
    # slow: align the prompt's end with the region (decodes that differ here and there, a
    # few-shot prompt whose turns end alike); the response starts after the matching block
    # that ends where the prompt ends
    import difflib

    end = prompt[-ALIGN_WINDOW:]
    blocks = difflib.SequenceMatcher(None, end, region, autojunk=False).get_matching_blocks()
    last = [b for b in blocks if b.size >= min(len(end), MIN_PROMPT_MATCH) and b.a + b.size == len(end)]
    return last[-1].b + last[-1].size if last else None


def _after_assistant_marker(query: str) -> int | None:
    ends = [query.rfind(m) + len(m) for m in ASSISTANT_MARKERS if m in query]
    if not ends:
        return None
    end = max(ends)
    return end + 1 if query[end : end + 1] == "\n" else end


def response_of(query: str, prompt: Any) -> str:
    """The response inside OpenRLHF's ``query`` (prompt + response), a trailing
    end-of-sequence or padding marker removed.

    The response starts where the prompt ends: the whole prompt at the start of the query,
    else the longest tail of the prompt found in it (OpenRLHF cut the prompt from the left),
    else after the last assistant-turn marker of a known chat template. Raises
    :class:`ResponseNotFound` when none of these locates it, so prompt text is never scored.
    """
    start: int | None = None
    if isinstance(prompt, str) and prompt:
        start = _prompt_end(query, prompt)
    if start is None:
        start = _after_assistant_marker(query)
    if start is None:
        if prompt:  # a prompt was given (text, or content parts) and cannot be told apart
            raise ResponseNotFound(
                "the response cannot be found in the query: it neither contains the prompt (whole or cut from the "
                f"left) nor an assistant-turn marker ({', '.join(ASSISTANT_MARKERS[:3])}, ...)"
            )
        start = 0  # no prompt given: the query is the response
    text = query[start:].rstrip()
    stripped = True
    while stripped:
        stripped = False
        for marker in END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                stripped = True
    return text


def samples_from_queries(queries: Sequence[Any], prompts: Sequence[Any] | None, labels: Sequence[Any] | None) -> list[Sample | Outcome]:
    """One Sample per query (the response cut out of it, the label as reference); a query
    that is not text is an ERROR Outcome in its place. Raises ``ValueError`` on lengths that differ."""
    n = len(queries)
    prompts = list(prompts) if prompts is not None else [""] * n
    labels = list(labels) if labels is not None else [None] * n
    if len(prompts) != n or len(labels) != n:
        raise ValueError(f"reward_func: {n} queries, {len(prompts)} prompts and {len(labels)} labels; they must match")
    rows: list[Sample | Outcome] = []
    for q, p, label in zip(queries, prompts, labels):
        if not isinstance(q, str):
            rows.append(Outcome.error(f"query must be a str, got {type(q).__name__}"))
            continue
        prompt = p if isinstance(p, (str, list)) else ("" if p is None else str(p))
        try:
            rows.append(Sample(prompt, response_of(q, p), label))
        except ResponseNotFound as exc:
            rows.append(Outcome.error(str(exc)))
    return rows


def rewards_payload(outcomes: Sequence[Outcome], failure_score: float = 0.0, metric_keys: Sequence[str] = ()) -> dict[str, Any]:
    """OpenRLHF's answer as plain lists: ``rewards``, ``scores`` (``rewards`` clamped to
    0..1), ``extra_logs`` (one value per response).

    ``extra_logs`` has the same keys on every call -- OpenRLHF stacks each key across calls
    and samples, and a key one call lacks fails its batching: the four status flags, and
    ``rlvr/metric/<key>`` for each of ``metric_keys`` (0.0 where an outcome lacks it).
    """
    rewards = [float(o.score) if o.status is Status.OK else float(failure_score) for o in outcomes]
    logs: dict[str, list[float]] = {
        "rlvr/failed": [float(o.status in (Status.TIMEOUT, Status.ERROR, Status.ABSTAIN)) for o in outcomes],
        "rlvr/timeout": [float(o.status is Status.TIMEOUT) for o in outcomes],
        "rlvr/error": [float(o.status is Status.ERROR) for o in outcomes],
        "rlvr/abstain": [float(o.status is Status.ABSTAIN) for o in outcomes],
    }
    for k in metric_keys:
        values = [o.metrics.get(k) for o in outcomes]
        logs[f"rlvr/metric/{k}"] = [finite_number(v) or 0.0 for v in values]
    scores = [min(1.0, max(0.0, r)) for r in rewards]  # dynamic filtering reads 0..1
    return {"rewards": rewards, "scores": scores, "extra_logs": logs}


def make_reward_func(reward: Reward, failure_score: float = 0.0, metric_keys: Sequence[str] = ()) -> Callable[..., dict[str, Any]]:
    """An OpenRLHF ``reward_func(queries, prompts, labels, **kwargs)`` for any Reward::

        # my_reward.py -- --reward.remote_url my_reward.py
        from rlvr.registry import load_verifier
        from rlvr.integrations.openrlhf import make_reward_func

        reward_func = make_reward_func(load_verifier("math", fallbacks=["answer_is"]))

    ``metric_keys``: outcome metrics to log as ``rlvr/metric/<key>``. A function (not an
    object), as OpenRLHF 0.8's ``ray.remote(reward_func)`` needs; Ray ships it with
    cloudpickle, and the reward starts its own workers on the other side.
    """
    keys = tuple(metric_keys)

    def reward_func(queries: Sequence[str], prompts: Sequence[Any] | None = None, labels: Sequence[Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        import torch

        payload = rewards_payload(score_rows(reward, samples_from_queries(queries, prompts, labels)), failure_score, keys)
        return {
            "rewards": torch.tensor(payload["rewards"], dtype=torch.float32),
            "scores": torch.tensor(payload["scores"], dtype=torch.float32),
            "extra_logs": {k: torch.tensor(v, dtype=torch.float32) for k, v in payload["extra_logs"].items()},
        }

    reward_func.reward = reward  # type: ignore[attr-defined]
    return reward_func


_default: Callable[..., dict[str, Any]] | None = None
_default_lock = threading.Lock()


def _default_reward_func() -> Callable[..., dict[str, Any]]:
    global _default
    with _default_lock:
        if _default is None:
            name = os.environ.get("RLVR_REWARD", "math")
            raw = os.environ.get("RLVR_REWARD_OPTIONS", "{}")
            try:
                options = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"RLVR_REWARD_OPTIONS is not a JSON object ({exc}): {raw!r:.80}") from exc
            if not isinstance(options, dict):
                raise ValueError(f"RLVR_REWARD_OPTIONS must be a JSON object, got {raw!r:.80}")
            failure = float(os.environ.get("RLVR_FAILURE_SCORE", "0"))
            keys = [k for k in os.environ.get("RLVR_METRIC_KEYS", "").split(",") if k.strip()]
            _default = make_reward_func(resolve_reward(name, options), failure, [k.strip() for k in keys])
        return _default


def reward_func(queries: Sequence[str], prompts: Sequence[Any] | None = None, labels: Sequence[Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """OpenRLHF's ``reward_func``: the verifier named by ``$RLVR_REWARD`` (default ``math``,
    options from ``$RLVR_REWARD_OPTIONS`` as JSON, failed checks score
    ``$RLVR_FAILURE_SCORE``, default 0; metrics named in ``$RLVR_METRIC_KEYS``, comma-separated,
    are logged). Returns torch tensors, one value per query."""
    return _default_reward_func()(queries, prompts, labels, **kwargs)
