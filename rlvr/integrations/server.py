"""``python -m rlvr serve``: any Reward behind HTTP (FastAPI on uvicorn).

    python -m rlvr serve --reward math --port 8000 --workers 2

Endpoints:

- ``GET /health`` -> ``{"status": "ok", "reward": ..., ...}`` once the workers are up.
- ``POST /v1/score`` (rlvr's own): ``{"samples": [{"prompt", "completion", "reference",
  "info"}, ...], "reward": NAME?}`` -> ``{"reward": NAME, "outcomes": [{"score", "status",
  "reason", "metrics", "elapsed_s"}, ...]}``: full Outcomes. :class:`RemoteReward` speaks it.
- ``POST /get_reward`` (OpenRLHF's remote reward model, ``--reward.remote_url`` /
  ``--remote_rm_url http://host:port/get_reward``): ``{"query": [...], "prompts": [...],
  "labels": [...]}`` -> ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``, the
  same answer as :func:`rlvr.integrations.openrlhf.reward_func`.

Scoring runs in worker processes (:func:`rlvr.isolated`) under a per-sample deadline
(``--timeout``, default 10 s): a reward that hangs gives a TIMEOUT outcome (its worker is
killed and replaced), a worker that dies gives an ERROR outcome, and the server keeps
serving. The built-in math and code verifiers (and any ``isolated(...)`` reward) already
work that way, so ``--isolate auto`` (the default) serves them without a second layer of
workers, under their own deadline (``--timeout`` is refused for them: set theirs with
``--option``); ``--isolate always`` adds the layer anyway. ``--concurrency`` batches are
scored at once, each on its own lane: its own ``--workers`` processes, or its own copy of a
reward that keeps its own deadline. ``/health`` reports the deadline and concurrency in
force. A request body over ``--max-body-mb`` is refused with 413, a batch over
``--max-batch`` samples with 413, malformed JSON or JSON nested deeper than 64 levels with
400, a request of the wrong shape with 422, a reward name the server does not serve with
404; each answer says why in ``detail``. The server listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
# (``request: Request``) at run time.


import json
import queue
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rlvr.integrations import (
    MAX_JSON_DEPTH,
    json_depth_over,
    outcome_to_json,
    resolve_reward,
    sample_from_json,
    score_rows,
    score_safely,
)
from rlvr.integrations.openrlhf import rewards_payload, samples_from_queries
from rlvr.rewards import IsolatedReward, Outcome, Reward, Sample, isolated

__all__ = ["ScoringLanes", "create_app", "serve"]


def _require_stack() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"`python -m rlvr serve` needs FastAPI and uvicorn ({exc}): pip install 'rlvr[serve]'") from exc


# Rewards that already score untrusted or slow work in killable worker processes under a
# deadline: a second layer of workers would only add latency. Named explicitly.
OWN_DEADLINES = ("rlvr.verifiers.math:MathVerifier", "rlvr.verifiers.code:CodeVerifier")


def keeps_own_deadlines(reward: Reward) -> bool:
    """True for an ``isolated(...)`` reward and for the built-in verifiers in ``OWN_DEADLINES``
    (the math verifier only with its default ``isolate=True``)."""
    if isinstance(reward, IsolatedReward):
        return True
    cls = f"{type(reward).__module__}:{type(reward).__qualname__}"
    return cls in OWN_DEADLINES and getattr(reward, "isolate", True) is True


def own_deadline_s(reward: Reward) -> float | None:
    """The per-sample deadline a reward keeps by itself: an ``isolated(...)`` reward's
    ``timeout_s``, the code verifier's sandbox limit, the math verifier's ``timeout_s``."""
    if isinstance(reward, IsolatedReward):
        return reward.timeout_s
    limits = getattr(reward, "limits", None)
    for value in (getattr(limits, "timeout_s", None), getattr(reward, "timeout_s", None)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _copies(reward: Reward, n: int) -> list[Reward]:
    """``reward`` and ``n - 1`` independent copies of it (each starts its own workers), or
    just ``reward`` when it cannot be copied."""
    import pickle

    out = [reward]
    for _ in range(n - 1):
        try:
            out.append(pickle.loads(pickle.dumps(reward)))
        except Exception:  # noqa: BLE001 -- a reward that cannot be copied is served by one lane, and /health says so
            return [reward]
    return out


class ScoringLanes:
    """``concurrency`` independent scorers of one reward; each batch borrows one.

    ``isolate="always"``: each lane is ``isolated(reward, timeout_s, max_workers=workers)``.
    ``"never"``: each lane is a copy of the reward scoring in the server process (only for
    rewards that keep their own deadlines; a reward that cannot be copied gets one lane).
    ``"auto"`` (the default): ``"never"`` for a reward that keeps its own deadlines
    (:func:`keeps_own_deadlines`), else ``"always"``. ``timeout_s`` (default 10 s) is the
    isolated lanes' deadline; it cannot be set for a reward that is not isolated (its own
    deadline applies: give it as the reward's option).
    """

    def __init__(self, reward: Reward, concurrency: int = 2, workers: int = 2, timeout_s: float | None = None, memory_mb: int | None = None, isolate: str = "auto") -> None:
        if concurrency < 1 or workers < 1:
            raise ValueError(f"--concurrency and --workers must be >= 1, got {concurrency} and {workers}")
        if isolate not in ("auto", "always", "never"):
            raise ValueError(f"isolate must be 'auto', 'always' or 'never', got {isolate!r}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"--timeout must be > 0, got {timeout_s}")
        self.reward = reward
        self.name = reward.name
        self.isolate = isolate == "always" or (isolate == "auto" and not keeps_own_deadlines(reward))
        if not self.isolate and timeout_s is not None:
            raise ValueError(
                f"--timeout {timeout_s:g} would not apply: reward {reward.name!r} scores under its own deadline "
                f"({own_deadline_s(reward)} s) and the server does not isolate it. Set that deadline with the reward's "
                "option (math: --option timeout_s=5; code: --option test_timeout_s=5 per test, within its sandbox's limit for the "
                "whole sample, which /health reports), or add --isolate always."
            )
        self.workers = workers
        self.timeout_s = (10.0 if timeout_s is None else float(timeout_s)) if self.isolate else own_deadline_s(reward)
        # last in, first out: one client at a time keeps reusing the same warm lane
        self._free: queue.LifoQueue[Reward] = queue.LifoQueue()
        if self.isolate:
            self._lanes: list[Reward] = [isolated(reward, timeout_s=self.timeout_s, max_workers=workers, memory_mb=memory_mb) for _ in range(concurrency)]
        else:
            self._lanes = _copies(reward, concurrency)
        for lane in self._lanes:
            self._free.put(lane)

    @property
    def concurrency(self) -> int:
        """Batches scored at the same time."""
        return len(self._lanes)

    def score(self, samples: list[Sample]) -> list[Outcome]:
        """Score on the first free lane (waits for one); never raises for a bad sample."""
        lane = self._free.get()
        try:
            return score_safely(lane, samples)
        finally:
            self._free.put(lane)

    def warmup(self) -> None:
        """Start every lane's workers: the first request does not pay for their start-up."""
        probe = [Sample("", "\\boxed{1}", "1")] * (self.workers if self.isolate else 1)
        for lane in self._lanes:
            if not self.isolate and hasattr(lane, "warmup"):
                lane.warmup()
            else:
                score_safely(lane, probe)

    def settings(self) -> dict[str, Any]:
        """What is in force, as ``/health`` reports it."""
        return {
            "concurrency": self.concurrency,
            "timeout_s": self.timeout_s,
            "deadline": "server workers" if self.isolate else ("the reward's own" if self.timeout_s is not None else "none"),
            "isolated_workers": self.isolate,
            "workers": self.workers if self.isolate else getattr(self.reward, "max_workers", None),
        }

    def close(self) -> None:
        """Kill every lane's workers."""
        for lane in self._lanes:
            if hasattr(lane, "close"):
                lane.close()


def create_app(
    lanes: ScoringLanes,
    max_batch: int = 1024,
    max_body_bytes: int = 16 << 20,
    failure_score: float = 0.0,
    settings: Mapping[str, Any] | None = None,
    metric_keys: Sequence[str] = (),
) -> Any:
    """The FastAPI application serving ``lanes`` (see the module docstring for its endpoints)."""
    _require_stack()
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="rlvr reward server", docs_url=None, redoc_url=None, openapi_url=None)
    name = lanes.name

    def reply(data: Any) -> Response:
        return Response(json.dumps(data, allow_nan=False, separators=(",", ":")), media_type="application/json")

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        too_big = f"this server takes request bodies of at most {max_body_bytes} bytes (--max-body-mb); send fewer samples per request"
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise HTTPException(400, f"bad Content-Length header {length!r}") from None
            if declared > max_body_bytes:
                async for _ in request.stream():  # drain (not kept) so the client reads the answer
                    pass
                raise HTTPException(413, f"request body is {declared} bytes; {too_big}")
        body = bytearray()
        over = False
        async for chunk in request.stream():
            if not over:
                body += chunk
                over = len(body) > max_body_bytes
        if over:
            raise HTTPException(413, f"request body is over {max_body_bytes} bytes; {too_big}")
        try:
            data = json.loads(bytes(body))
        except ValueError as exc:  # malformed JSON, bad UTF-8, an integer past Python's 4300 digits
            raise HTTPException(400, f"request body is not valid JSON: {exc}") from None
        except RecursionError:  # nested past the parser's limit: the same refusal as below
            too_deep = True
        else:
            too_deep = json_depth_over(data)
        if too_deep:
            raise HTTPException(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels; send flat samples")
        return data

    def check_reward_name(data: Mapping[str, Any]) -> None:
        asked = data.get("reward")
        if asked is not None and asked != name:
            raise HTTPException(404, f"this server serves reward {name!r}, not {asked!r}; start one with `python -m rlvr serve --reward {asked}`")

    def check_batch(n: int) -> None:
        if n > max_batch:
            raise HTTPException(413, f"batch of {n} samples; this server takes at most {max_batch} per request (--max-batch)")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/health")
    async def health() -> Response:
        return reply({"status": "ok", "reward": name, **dict(settings or {})})

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        data = await read_json(request)
        if not isinstance(data, dict):
            raise HTTPException(422, "the body must be a JSON object: {\"samples\": [{\"completion\": ..., \"reference\": ...}, ...]}")
        check_reward_name(data)
        raw = data.get("samples")
        if not isinstance(raw, list):
            raise HTTPException(422, "'samples' must be a list of {\"prompt\", \"completion\", \"reference\", \"info\"} objects")
        check_batch(len(raw))
        try:
            samples = [sample_from_json(s, i) for i, s in enumerate(raw)]
        except (ValueError, TypeError) as exc:
            raise HTTPException(422, str(exc)) from None
        outcomes = await run_in_threadpool(lanes.score, samples) if samples else []
        return reply({"reward": name, "outcomes": [outcome_to_json(o) for o in outcomes]})

    @app.post("/get_reward")
    async def get_reward(request: Request) -> Response:
        data = await read_json(request)
        if not isinstance(data, dict) or not isinstance(data.get("query"), list):
            raise HTTPException(422, "OpenRLHF's protocol: the body must be {\"query\": [...], \"prompts\": [...], \"labels\": [...]}")
        check_reward_name(data)
        queries = data["query"]
        check_batch(len(queries))
        for key in ("prompts", "labels"):
            if data.get(key) is not None and (not isinstance(data[key], list) or len(data[key]) != len(queries)):
                raise HTTPException(422, f"'{key}' must be a list as long as 'query' ({len(queries)})")
        try:
            rows = samples_from_queries(queries, data.get("prompts"), data.get("labels"))
        except (ValueError, TypeError) as exc:
            raise HTTPException(422, str(exc)) from None
        outcomes = await run_in_threadpool(score_rows, lanes, rows)
        payload = rewards_payload(outcomes, failure_score, metric_keys)
        if request.query_params.get("extra_logs", "1").lower() in ("0", "false", "no"):
            del payload["extra_logs"]  # OpenRLHF 0.8.x torch.cat's extra_logs and cannot take JSON lists
        return reply(payload)

    return app


def serve(
    reward: str,
    options: Mapping[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 2,
    concurrency: int = 2,
    timeout_s: float | None = None,
    memory_mb: int | None = None,
    max_batch: int = 1024,
    max_body_mb: float = 16.0,
    failure_score: float = 0.0,
    isolate: str = "auto",
    metric_keys: Sequence[str] = (),
) -> int:
    """Load ``reward``, start its workers, and serve it until interrupted."""
    _require_stack()
    import uvicorn

    if max_batch < 1 or max_body_mb <= 0:
        raise ValueError(f"--max-batch must be >= 1 and --max-body-mb > 0, got {max_batch} and {max_body_mb}")
    reward_obj = resolve_reward(reward, options)
    lanes = ScoringLanes(reward_obj, concurrency=concurrency, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb, isolate=isolate)
    try:
        lanes.warmup()
        settings = {**lanes.settings(), "max_batch": max_batch, "max_body_bytes": int(max_body_mb * (1 << 20))}
        app = create_app(lanes, max_batch=max_batch, max_body_bytes=settings["max_body_bytes"], failure_score=failure_score, settings=settings, metric_keys=metric_keys)
        print(
            f"rlvr serve: reward {reward_obj.name!r} on http://{host}:{port} "
            f"(rlvr: POST /v1/score, OpenRLHF: POST /get_reward, GET /health)",
            file=sys.stderr,
            flush=True,
        )
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        lanes.close()
    return 0
