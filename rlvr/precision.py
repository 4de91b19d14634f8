"""Precision by measurement: which float type is fastest on the machine a run is on.

::

    from rlvr.precision import machine_precision
    choice = machine_precision(torch.device("cpu"))
    choice.train_bf16, choice.engine_dtype     # what ``bf16: null`` and ``vllm_dtype: auto`` become
    choice.peak_gflops                          # the probe's measured peak of the chosen precisions (for ``mfu``)
    print(choice.summary())                     # what was chosen and why (``python -m rlvr doctor``)

Whether bf16 pays off on a CPU is not a property anyone can read off a flag: a Xeon without
``avx512_bf16`` runs a bf16 matmul slower than fp32 (142 vs 233 GFLOP/s, 2 threads, 1024^2),
an AMD EPYC Zen 5 (``avx512_bf16``, no AMX) 4.4x faster (925 vs 208), a Xeon with AMX faster
still. So on a CPU rlvr measures, once per machine: :func:`probe` times, for about a second,

- ``train``: forward + backward of a two-layer MLP (``512 x 768 -> 2048 -> 768``, fp32 master
  weights) plain and under bf16 autocast -- a training step's shape, its casts included;
- ``decode``: the same MLP's forward with its weights stored in each dtype and 32 rows -- the
  matmuls a generation engine runs for every new token;
- ``peak``: a 1024^3 matmul in each dtype -- the ceiling ``mfu`` is measured against.

A 256^3 matmul (``sniff``) goes first: a dtype that runs it over 4x slower than fp32 (bf16 on
a CPU with AVX2 only: about 1 GFLOP/s against 180) is not timed further, so the probe stays short.

fp16 is timed too where the CPU has native fp16 arithmetic (``avx512_fp16`` or ``amx_fp16``);
it is only ever a candidate for the engine (training in fp16 needs loss scaling, bf16 does not).
:func:`decide` then picks, from those numbers alone (a pure function), bf16 for training when
bf16's ``train`` rate beats fp32's by :data:`MARGIN` (10%), and for the engine the ``decode``
winner by the same margin (fp32 otherwise): a choice made on a near tie could lose in a real
run, so near ties stay fp32, the precision with no numerical cost.

The numbers are kept in the user cache (``$RLVR_CACHE/precision/``, default ``~/.cache/rlvr``;
``$RLVR_PRECISION_CACHE`` names another directory),
one file per machine key: the CPU model, its flags, the torch version and the thread count
(:func:`machine_key`); any of them changing, or :data:`PROBE_VERSION`, measures again. A cache
that cannot be written costs a probe per process, nothing else.

CUDA keeps its rule: bf16 where ``torch.cuda.is_bf16_supported()`` (the probe still measures
the card's peak, for ``mfu``). Other devices run fp32.

``RLVR_PRECISION`` overrides the choice for every run on the machine: ``fp32`` or ``bf16``
(both the trainer and the engine), ``auto`` (the default: measure). A run's own ``bf16`` /
``vllm_dtype`` fields override both. Every choice says where it came from (``source``), and a
training run writes it, with the probe's numbers, into ``config.json`` under ``resolved``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "MARGIN",
    "OVERRIDE_ENV",
    "PROBE_VERSION",
    "PrecisionChoice",
    "cpu_identity",
    "decide",
    "machine_key",
    "machine_precision",
    "precision_override",
    "probe",
]

PROBE_VERSION = 1
"""Bumped when what :func:`probe` measures changes: cached numbers of another version are measured again."""
MARGIN = 1.10
"""How much faster (rate ratio) a lower precision must measure to be chosen over fp32."""
OVERRIDE_ENV = "RLVR_PRECISION"
OVERRIDES = ("auto", "fp32", "bf16")
FP16_FLAGS = ("avx512_fp16", "amx_fp16")
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16", "sve", "bf16", "fphp")
# the probe's shapes: a two-layer MLP block, as in a small transformer layer
_TOKENS, _DECODE_ROWS, _HIDDEN, _FFN, _SQUARE, _SNIFF = 512, 32, 768, 2048, 1024, 256
_HOPELESS = 4  # a dtype whose small matmul runs this many times slower than fp32's is not timed further


@dataclass
class PrecisionChoice:
    """What a run on this device uses, where that came from, and the numbers behind it.

    Attributes:
        train_bf16: The trainer's forward/backward under bf16 autocast (``bf16: null``).
        engine_dtype: The generation engine's dtype (``vllm_dtype: auto``).
        source: ``probe`` (measured now), ``cache`` (measured before, read from ``cache_path``),
            ``cuda rule``, ``RLVR_PRECISION=...``, or ``fp32 default`` (a device rlvr does not measure).
        why: One line for a person.
        gflops: The probe's rates, ``{"train": {"float32": ..., "bfloat16": ...}, "decode": ..., "peak": ...}``
            (empty where nothing was measured).
        key: The machine key the numbers belong to (:func:`machine_key`).
        cache_path: The cache file, or None.
        probe_s: Seconds the probe took when it ran.
    """

    train_bf16: bool
    engine_dtype: str
    source: str
    why: str
    gflops: dict[str, dict[str, float]] = field(default_factory=dict)
    key: dict[str, Any] = field(default_factory=dict)
    cache_path: str | None = None
    probe_s: float = 0.0

    @property
    def train_dtype(self) -> str:
        return "bfloat16" if self.train_bf16 else "float32"

    def peak_gflops(self, dtype: str | None = None) -> float | None:
        """The measured peak matmul rate of ``dtype`` (default: the training precision), or None."""
        return self.gflops.get("peak", {}).get(dtype or self.train_dtype)

    def record(self) -> dict[str, Any]:
        """What ``config.json`` keeps under ``resolved.precision``."""
        out = asdict(self)
        out["probe_s"] = round(self.probe_s, 3)
        return out

    def summary(self) -> str:
        """A few lines for a person: the machine, the rates, the choice and why."""
        key = self.key
        lines = [f"device:     {key.get('device', '?')}  {key.get('name', '')}".rstrip()]
        if key.get("flags_shown") is not None:
            lines.append(f"flags:      {' '.join(key['flags_shown']) or '(none of ' + ', '.join(SHOWN_FLAGS) + ')'}")
        if key.get("torch"):
            lines.append(f"torch:      {key['torch']}, {key.get('threads', '?')} threads")
        for shape, rates in self.gflops.items():
            lines.append(f"{shape + ':':<11} " + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in rates.items()))
        lines.append(f"trainer:    {'bf16 autocast' if self.train_bf16 else 'fp32'}")
        lines.append(f"engine:     {self.engine_dtype}")
        lines.append(f"source:     {self.source}" + (f" ({self.cache_path})" if self.cache_path else ""))
        lines.append(f"why:        {self.why}")
        return "\n".join(lines)


def decide(gflops: dict[str, dict[str, float]], margin: float = MARGIN) -> tuple[bool, str, str]:
    """``(train_bf16, engine_dtype, why)`` from the probe's rates alone.

    Training takes bf16 when its ``train`` rate is at least ``margin`` times fp32's; the engine
    takes the fastest ``decode`` dtype when it is at least ``margin`` times fp32's (fp16 also
    has to beat bf16 by ``margin``: bf16 keeps fp32's range). A dtype that was not measured is
    not a candidate.
    """
    train, decode = gflops.get("train", {}), gflops.get("decode", {})

    def ratio(rates: dict[str, float], dtype: str) -> float:
        base = rates.get("float32")
        return rates[dtype] / base if dtype in rates and base else 0.0

    train_ratio = ratio(train, "bfloat16")
    train_bf16 = train_ratio >= margin
    engine = "float32"
    if ratio(decode, "bfloat16") >= margin:
        engine = "bfloat16"
    fp16 = ratio(decode, "float16")
    if fp16 >= margin and fp16 >= margin * max(ratio(decode, "bfloat16"), 1.0):
        engine = "float16"
    if "bfloat16" in train:
        found = f"bf16 trains at {train_ratio:.2f}x fp32's rate and decodes at {ratio(decode, 'bfloat16'):.2f}x"
    elif "bfloat16" in gflops.get("sniff", {}):
        found = f"bf16 runs a small matmul at {ratio(gflops['sniff'], 'bfloat16'):.2f}x fp32's rate (not timed further)"
    else:
        found = "bf16 was not measured"
    if "float16" in decode:
        found += f", fp16 decodes at {fp16:.2f}x"
    why = f"{found}; a lower precision needs >= {margin:.2f}x"
    return train_bf16, engine, why


# ---------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------


def cpu_identity() -> tuple[str, list[str]]:
    """``(model name, flags)`` of this CPU: ``/proc/cpuinfo`` on Linux (``flags`` on x86,
    ``Features`` on ARM), else what ``platform`` knows (no flags)."""
    name, flags = "", []
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if not name and key in ("model name", "cpu model", "hardware"):
            name = value.strip()
        elif not flags and key in ("flags", "features"):
            flags = sorted(set(value.split()))
        if name and flags:
            break
    return name or platform.processor() or platform.machine() or "unknown cpu", flags


def machine_key(device: torch.device) -> dict[str, Any]:
    """What the probe's numbers depend on: the device (CPU model and flags, or the GPU's name),
    the torch version, and the thread count; plus :data:`PROBE_VERSION`."""
    import torch

    key: dict[str, Any] = {"version": PROBE_VERSION, "device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        key["name"] = torch.cuda.get_device_name(index)
        key["capability"] = list(torch.cuda.get_device_capability(index))
    else:
        name, flags = cpu_identity()
        key.update(name=name, flags_hash=hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16])
        key["flags_shown"] = [f for f in SHOWN_FLAGS if f in flags]
        key["threads"] = torch.get_num_threads()
    return key


def _cache_file(key: dict[str, Any]) -> Path | None:
    """Where the numbers for ``key`` are kept: ``$RLVR_PRECISION_CACHE``, else ``$RLVR_CACHE/precision``
    (``~/.cache/rlvr/precision``); None where there is no such place (no home directory)."""
    from rlvr.models import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    try:
        root = Path(os.environ["RLVR_PRECISION_CACHE"]) if os.environ.get("RLVR_PRECISION_CACHE") else cache_dir() / "precision"
    except RuntimeError:  # Path.home() of a user with no home directory
        return None
    return root / f"{key['device']}-{digest}.json"


def _read_cache(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached rates for ``key``, or None (absent, unreadable, cut short, another key or version)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("gflops"), dict):
        return None
    gflops = data["gflops"]
    ok = all(isinstance(r, dict) and all(isinstance(v, (int, float)) and v > 0 for v in r.values()) for r in gflops.values())
    return data if ok and gflops.get("train") else None


def _write_cache(path: Path, data: dict[str, Any]) -> bool:
    """Write atomically (a file cut short by a killed process or a full disk is never read as numbers)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


# ---------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------


def _rate(fn: Any, flops: float, budget_s: float, sync: Any) -> float:
    """GFLOP/s of ``fn`` (``flops`` per call): one warm-up call, then calls until ``budget_s``
    (at least 3); the fastest call counts (the machine's other load only ever slows a call down).
    A warm-up call that alone takes longer than ``budget_s`` is the measurement."""
    start = time.perf_counter()
    fn()
    sync()
    best = time.perf_counter() - start
    if best > budget_s:
        return flops / best / 1e9
    spent, calls = 0.0, 0
    while calls < 3 or spent < budget_s:
        start = time.perf_counter()
        fn()
        sync()
        took = time.perf_counter() - start
        best, spent, calls = min(best, took), spent + took, calls + 1
        if calls >= 50:
            break
    return flops / best / 1e9


def probe(device: torch.device, budget_s: float = 1.0, dtypes: tuple[str, ...] | None = None) -> dict[str, dict[str, float]]:
    """Time fp32 against bf16 (and fp16 where the CPU has fp16 arithmetic) on ``device``, in about
    ``budget_s`` seconds; returns GFLOP/s per shape (``train``, ``decode``, ``peak``) and dtype.

    A dtype the device cannot run (an error from torch) is left out of the result.
    """
    import torch

    if dtypes is None:
        dtypes = ("float32", "bfloat16")
        if device.type == "cpu" and any(f in cpu_identity()[1] for f in FP16_FLAGS):
            dtypes += ("float16",)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.05).to(device)

    x, w1, w2 = randn(_TOKENS, _HIDDEN), randn(_HIDDEN, _FFN), randn(_FFN, _HIDDEN)
    a, b = randn(_SQUARE, _SQUARE), randn(_SQUARE, _SQUARE)
    per_shape = budget_s / (3 * len(dtypes) + 1)
    out: dict[str, dict[str, float]] = {"sniff": {}, "train": {}, "decode": {}, "peak": {}}
    small = a[:_SNIFF, :_SNIFF]
    for name in dtypes:  # a small matmul first: a dtype this device runs far slower is not timed further
        try:
            s = small.to(getattr(torch, name))
            out["sniff"][name] = _rate(lambda s=s: s @ s, 2 * _SNIFF**3, per_shape / len(dtypes), sync)
        except (RuntimeError, TypeError, NotImplementedError):  # this device has no kernels for the dtype
            pass
    base = out["sniff"].get("float32", 0.0)
    for name in dtypes:
        dtype = getattr(torch, name)
        if name not in out["sniff"] or out["sniff"][name] < base / _HOPELESS:
            continue
        try:
            if name != "float16":  # fp16 is only an engine candidate
                p1, p2 = w1.clone().requires_grad_(), w2.clone().requires_grad_()

                def train_step(p1: torch.Tensor = p1, p2: torch.Tensor = p2, dtype: torch.dtype = dtype) -> None:
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                        y = torch.nn.functional.silu(x @ p1) @ p2
                    y.float().square().mean().backward()
                    p1.grad = p2.grad = None

                out["train"][name] = _rate(train_step, 6 * 2 * _TOKENS * _HIDDEN * _FFN, per_shape, sync)
            xd, d1, d2 = x[:_DECODE_ROWS].to(dtype), w1.to(dtype), w2.to(dtype)

            def decode(xd: torch.Tensor = xd, d1: torch.Tensor = d1, d2: torch.Tensor = d2) -> None:
                with torch.no_grad():
                    torch.nn.functional.silu(xd @ d1) @ d2

            out["decode"][name] = _rate(decode, 2 * 2 * _DECODE_ROWS * _HIDDEN * _FFN, per_shape, sync)
            sa, sb = a.to(dtype), b.to(dtype)
            out["peak"][name] = _rate(lambda sa=sa, sb=sb: sa @ sb, 2 * _SQUARE**3, per_shape, sync)
        except (RuntimeError, TypeError, NotImplementedError):  # this device has no kernels for the dtype
            for rates in out.values():
                rates.pop(name, None)
    return {k: {d: round(r, 2) for d, r in v.items()} for k, v in out.items() if v}


# ---------------------------------------------------------------------------------------
# The choice
# ---------------------------------------------------------------------------------------


def precision_override() -> str:
    """``RLVR_PRECISION``: ``auto`` (unset), ``fp32`` or ``bf16``; anything else is a ValueError that says what to set."""
    value = os.environ.get(OVERRIDE_ENV, "auto").strip().lower() or "auto"
    if value not in OVERRIDES:
        raise ValueError(f"{OVERRIDE_ENV}={value!r}: use one of {', '.join(OVERRIDES)} (auto measures which is faster here)")
    return value


def machine_precision(device: torch.device, refresh: bool = False) -> PrecisionChoice:
    """The precision a run on ``device`` uses when its config leaves it open (``bf16: null``,
    ``vllm_dtype: auto``); see the module docstring. Measured once per machine (cached on disk)
    and once per process (kept in memory); ``refresh`` measures again and rewrites the cache."""
    import torch

    device = torch.device(device)
    if refresh:
        _machine_precision.cache_clear()
    return _machine_precision(device.type, precision_override(), refresh)


@functools.lru_cache(maxsize=None)
def _machine_precision(device_type: str, override: str, refresh: bool) -> PrecisionChoice:
    import torch

    device = torch.device(device_type)
    if device_type not in ("cpu", "cuda"):
        return PrecisionChoice(False, "float32", "fp32 default", f"rlvr measures CPUs and CUDA GPUs, not {device_type}")
    key = machine_key(device)
    path = _cache_file(key)
    cached = None if refresh or path is None else _read_cache(path, key)
    if cached is not None:
        gflops, probe_s, source = cached["gflops"], float(cached.get("probe_s", 0.0)), "cache"
    else:
        start = time.perf_counter()
        gflops = probe(device)
        probe_s = time.perf_counter() - start
        data = {"key": key, "gflops": gflops, "probe_s": round(probe_s, 3), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        source = "probe"
        if path is not None and not _write_cache(path, data):
            path = None
    cache_path = str(path) if path is not None else None
    if override != "auto":
        bf16 = override == "bf16"
        return PrecisionChoice(
            bf16, "bfloat16" if bf16 else "float32", f"{OVERRIDE_ENV}={override}",
            f"set by {OVERRIDE_ENV} (unset it to choose by measurement)", gflops, key, cache_path, probe_s,
        )  # fmt: skip
    if device_type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        why = "this GPU supports bf16" if bf16 else "this GPU has no bf16"
        return PrecisionChoice(bf16, "bfloat16" if bf16 else "float32", "cuda rule", why, gflops, key, cache_path, probe_s)
    train_bf16, engine, why = decide(gflops)
    return PrecisionChoice(train_bf16, engine, source, why, gflops, key, cache_path, probe_s)
