"""rlvr rewards in OpenRLHF: its reward-function file, and the remote reward protocol.

OpenRLHF loads ``reward_func`` from the Python file given as ``--reward.remote_url``
(``--remote_rm_url`` in older releases) and calls it as::

    reward_func(queries, prompts, labels)   # queries: prompt + response as decoded text
                                            # prompts: the prompts; labels: --label_key column
    -> {"rewards": Tensor, "scores": Tensor, "extra_logs": {name: Tensor}}

``rewards`` feed the advantages, ``scores`` its dynamic filtering (0..1), ``extra_logs``
its logger. Use this module's file directly -- the verifier comes from the environment::

    RLVR_REWARD=math RLVR_REWARD_OPTIONS='{"fallbacks": ["answer_is"]}' \\
      python -m openrlhf.cli.train_ppo_ray ... --data.label_key answer \\
      --reward.remote_url $(python -c "import rlvr.integrations.openrlhf as m; print(m.__file__)")

or write a two-line file with :func:`make_reward_func` for any Reward object. The same
protocol over HTTP (``{"query", "prompts", "labels"}`` in, the same three keys out, as
lists) is what ``python -m rlvr serve`` answers at ``/get_reward``.

OpenRLHF cannot leave a response out, so a failed check scores ``failure_score`` (0.0)
and says so in ``extra_logs``: ``rlvr/failed``, ``rlvr/timeout``, ``rlvr/error``,
``rlvr/abstain`` (one value per response, 1.0 or 0.0), beside the reward's metrics.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rlvr.integrations import resolve_reward, score_rows
from rlvr.rewards import Outcome, Reward, Sample, Status

__all__ = ["reward_func", "make_reward_func", "response_of", "samples_from_queries", "rewards_payload", "END_MARKERS"]

# End-of-sequence text a decoded query may end with (OpenRLHF decodes with special tokens).
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>", "<|end|>", "<end_of_turn>")


def response_of(query: str, prompt: Any) -> str:
    """The response inside OpenRLHF's ``query`` (prompt + response): the text after the
    prompt, with a trailing end-of-sequence marker removed."""
    text = query
    if isinstance(prompt, str) and prompt:
        if query.startswith(prompt):
            text = query[len(prompt) :]
        else:
            at = query.rfind(prompt)
            if at >= 0:
                text = query[at + len(prompt) :]
    text = text.rstrip()
    for marker in END_MARKERS:
        while text.endswith(marker):
            text = text[: -len(marker)].rstrip()
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
        rows.append(Sample(prompt, response_of(q, p), label))
    return rows


def rewards_payload(outcomes: Sequence[Outcome], failure_score: float = 0.0) -> dict[str, Any]:
    """OpenRLHF's answer as plain lists: ``rewards``, ``scores``, ``extra_logs`` (one value per response)."""
    rewards = [float(o.score) if o.status is Status.OK else float(failure_score) for o in outcomes]
    logs: dict[str, list[float]] = {
        "rlvr/failed": [float(o.status in (Status.TIMEOUT, Status.ERROR, Status.ABSTAIN)) for o in outcomes],
        "rlvr/timeout": [float(o.status is Status.TIMEOUT) for o in outcomes],
        "rlvr/error": [float(o.status is Status.ERROR) for o in outcomes],
        "rlvr/abstain": [float(o.status is Status.ABSTAIN) for o in outcomes],
    }
    keys = dict.fromkeys(k for o in outcomes for k, v in o.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    for k in keys:
        # a response without this metric logs 0.0: OpenRLHF needs one number per response
        logs[f"rlvr/metric/{k}"] = [float(o.metrics.get(k, 0.0)) for o in outcomes]
    return {"rewards": rewards, "scores": list(rewards), "extra_logs": logs}


def make_reward_func(reward: Reward, failure_score: float = 0.0) -> Callable[..., dict[str, Any]]:
    """An OpenRLHF ``reward_func(queries, prompts, labels, **kwargs)`` for any Reward::

        # my_reward.py -- --reward.remote_url my_reward.py
        from rlvr.registry import load_verifier
        from rlvr.integrations.openrlhf import make_reward_func

        reward_func = make_reward_func(load_verifier("math", fallbacks=["answer_is"]))
    """

    def reward_func(queries: Sequence[str], prompts: Sequence[Any] | None = None, labels: Sequence[Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        import torch

        payload = rewards_payload(score_rows(reward, samples_from_queries(queries, prompts, labels)), failure_score)
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
            _default = make_reward_func(resolve_reward(name, options), failure)
        return _default


def reward_func(queries: Sequence[str], prompts: Sequence[Any] | None = None, labels: Sequence[Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """OpenRLHF's ``reward_func``: the verifier named by ``$RLVR_REWARD`` (default ``math``,
    options from ``$RLVR_REWARD_OPTIONS`` as JSON, failed checks score
    ``$RLVR_FAILURE_SCORE``, default 0). Returns torch tensors, one value per query."""
    return _default_reward_func()(queries, prompts, labels, **kwargs)
