"""Shared fixtures: a real pip-installed plugin package, environment for subprocesses."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load is local or built from a config.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests compare numbers across runs and against other libraries: they train in fp32 on any CPU
# (tests/test_precision.py unsets this to test the measured choice). A machine where bf16 would
# be chosen otherwise gives the same results as one where it would not.
os.environ.setdefault("RLVR_PRECISION", "fp32")
# ... and their probes (timed while tests run) stay out of the user's cache, where real runs read them
os.environ.setdefault("RLVR_PRECISION_CACHE", tempfile.mkdtemp(prefix="rlvr-test-precision-"))

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def pip_install_target(package: str, target: Path) -> Path:
    """pip-install the fixture ``package`` (a real distribution) into ``target``."""
    src = target.parent / f"src-{package}"
    shutil.copytree(FIXTURES / package, src)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(src)],
        check=True,
        capture_output=True,
    )
    return target


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The example plugin, pip-installed into a site directory put on sys.path."""
    site = pip_install_target("rlvr-plugin-example", tmp_path_factory.mktemp("plugin") / "site")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield site
    sys.path.remove(str(site))
    importlib.invalidate_caches()


@pytest.fixture
def fake_dir():
    """A directory the unprivileged sandbox user can reach (bwrap runs as uid 65534 under root)."""
    path = Path(tempfile.mkdtemp(prefix="rlvr-fake-bwrap-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def subprocess_env(*extra_paths: Path) -> dict[str, str]:
    """The environment for a ``python -m rlvr ...`` subprocess, with ``extra_paths`` importable."""
    env = dict(os.environ)
    paths = [str(p) for p in extra_paths] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def tiny_causal_lm(tokenizer, seed: int = 0, hidden: int = 32, heads: int = 4):
    """A 2-layer Llama built from a config (random weights, seeded) with ``tokenizer``'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=max(heads // 2, 1),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)
