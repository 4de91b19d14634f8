"""``RemoteReward``: a reward served by ``python -m rlvr serve``, as a Reward like any other.

    python -m rlvr serve --reward math --port 8000            # on the scoring machine

    from rlvr.integrations.remote import RemoteReward
    reward = RemoteReward("http://scorer:8000")               # on the training machine
    outcomes = reward.score(samples)                          # full Outcomes: status, reason, metrics

It is registered as the verifier ``remote``, so rlvr's trainers score through a server with
``--verifier remote --verifier_kwargs '{"url": "http://scorer:8000"}'``.

It posts to the server's ``/v1/score`` in chunks of ``max_batch`` samples. A reference goes
as the value it is (:func:`rlvr.integrations.reference_to_json`: Fractions, Decimals, NaN
tagged), so a sample scores the same on either side; one that JSON cannot carry exactly is
an ERROR outcome, not sent. A server that is
down, answers late (``timeout_s``) or answers garbage gives ERROR outcomes with the reason,
never an exception and never a 0: scoring never takes the trainer down. A 4xx answer (a
request the server refuses) is an ERROR outcome carrying the server's reason.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from rlvr.integrations import outcome_from_json, sample_to_json
from rlvr.rewards import Outcome, Sample

__all__ = ["RemoteReward"]


class RemoteReward:
    """A Reward scored by an rlvr reward server.

    Args:
        url: The server's base URL (``http://127.0.0.1:8000``).
        reward: The reward name the server must be serving; a server serving another one
            answers 404 (ERROR outcomes saying so). ``None``: whatever it serves.
        name: This reward's name (default: ``reward``, else ``"remote"``).
        timeout_s: Seconds to wait for one chunk's answer before giving ERROR outcomes.
        max_batch: Samples per request (the server refuses more than its ``--max-batch``).
    """

    def __init__(self, url: str, reward: str | None = None, name: str | None = None, timeout_s: float = 300.0, max_batch: int = 256) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"RemoteReward url must start with http:// or https://, got {url!r}")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises on a port out of range
        except ValueError as exc:
            raise ValueError(f"RemoteReward url {url!r}: {exc}") from None
        if not parts.hostname:
            raise ValueError(f"RemoteReward url {url!r} names no host")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.url = url.rstrip("/")
        self.reward = reward
        self.name = name or reward or "remote"
        self.timeout_s = float(timeout_s)
        self.max_batch = int(max_batch)
        self._local = threading.local()

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            parts = urlsplit(self.url)
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(parts.hostname, parts.port, timeout=self.timeout_s)
        return conn

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One HTTP exchange on this thread's kept-alive connection; one retry on a fresh
        connection when the kept one was closed by the server (scoring is idempotent)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        prefix = urlsplit(self.url).path.rstrip("/")
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt == 1)
            try:
                conn.request(method, prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.CannotSendRequest):
                conn.close()
                self._local.conn = None
                if attempt == 1:
                    raise
            except BaseException:
                conn.close()
                self._local.conn = None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` answer (raises ``ConnectionError`` when it is not up)."""
        try:
            status, data = self._request("GET", "/health")
            if status != 200:
                raise OSError(f"HTTP {status}")
            return json.loads(data)
        except (OSError, http.client.HTTPException, ValueError, RecursionError) as exc:
            raise ConnectionError(f"reward server at {self.url} is not answering ({exc}); start it with `python -m rlvr serve`") from exc

    def wait_ready(self, timeout_s: float = 120.0, process: Any = None) -> dict[str, Any]:
        """``/health`` once the server answers, polling for up to ``timeout_s`` seconds (a server
        just started loads its reward first). Raises ``ConnectionError`` past the deadline, or
        as soon as ``process`` (the server's ``Popen``, when this process started it) has exited."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.health()
            except ConnectionError:
                if process is not None and process.poll() is not None:
                    raise ConnectionError(f"the reward server for {self.url} exited with code {process.returncode}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Score on the server, ``max_batch`` samples per request."""
        samples = list(samples)
        out: list[Outcome] = []
        for start in range(0, len(samples), self.max_batch):
            out.extend(self._score_chunk(samples[start : start + self.max_batch]))
        return out

    def _score_chunk(self, samples: list[Sample]) -> list[Outcome]:
        # a sample the wire cannot carry as itself is an ERROR here; the others are sent
        results: list[Outcome | None] = [None] * len(samples)
        encoded: list[dict[str, Any]] = []
        sent: list[int] = []
        for i, sample in enumerate(samples):
            try:
                one = sample_to_json(sample)
                json.dumps(one, allow_nan=False)  # a prompt JSON cannot carry fails this sample only
            except (TypeError, ValueError, RecursionError) as exc:
                results[i] = Outcome.error(f"not sent to the reward server: {exc}")
                continue
            encoded.append(one)
            sent.append(i)
        if sent:
            for i, outcome in zip(sent, self._post(encoded)):
                results[i] = outcome
        return results  # type: ignore[return-value]

    def _post(self, encoded: list[dict[str, Any]]) -> list[Outcome]:
        body: dict[str, Any] = {"samples": encoded}
        if self.reward is not None:
            body["reward"] = self.reward
        n = len(encoded)
        try:
            data = json.dumps(body, allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            return [Outcome.error(f"samples cannot be sent as JSON: {exc}")] * n
        try:
            status, raw = self._request("POST", "/v1/score", data)
        except TimeoutError:
            return [Outcome.error(f"reward server at {self.url} did not answer within {self.timeout_s:g} s")] * n
        except (OSError, http.client.HTTPException) as exc:
            return [Outcome.error(f"reward server at {self.url} unreachable: {type(exc).__name__}: {exc}")] * n
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):
            answer = None
        if status != 200:
            detail = answer.get("detail", raw[:300]) if isinstance(answer, dict) else raw[:300].decode(errors="replace")
            return [Outcome.error(f"reward server answered {status}: {str(detail)[:300]}")] * n
        outcomes = answer.get("outcomes") if isinstance(answer, dict) else None
        if not isinstance(outcomes, list) or len(outcomes) != n:
            got = len(outcomes) if isinstance(outcomes, list) else "no"
            return [Outcome.error(f"reward server answered {got} outcomes for {n} samples")] * n
        return [outcome_from_json(o) for o in outcomes]

    def close(self) -> None:
        """Close this thread's HTTP connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_local"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RemoteReward({self.url!r}, reward={self.reward!r})"
