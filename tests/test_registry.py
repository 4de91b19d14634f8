"""The entry-point registry, against real pip-installed plugin packages."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import pip_install_target, subprocess_env

from rlvr.registry import RegistryError, list_environments, list_verifiers, load_environment, load_verifier
from rlvr.rewards import Sample, Status


def test_builtins_are_registered_through_rlvrs_own_metadata():
    verifiers, environments = list_verifiers(), list_environments()
    assert {"math", "code"} <= set(verifiers)
    assert {"arithmetic", "gsm8k", "math500", "humaneval", "mbpp"} <= set(environments)
    assert verifiers["math"].distribution == "rlvr"


def test_plugin_verifier_is_listed_and_scores(plugin_site):
    regs = list_verifiers()
    assert regs["exact_match"].distribution == "rlvr-plugin-example"
    assert regs["exact_match"].version == "0.3.0"
    verifier = load_verifier("exact_match", ignore_case=True)
    out = verifier.score([Sample("p", " Paris ", "paris"), Sample("p", "Lyon", "paris")])
    assert [o.status for o in out] == [Status.OK, Status.OK]
    assert [o.score for o in out] == [1.0, 0.0]


def test_plugin_environment_loads(plugin_site):
    env = load_environment("reverse_text")
    tasks = env.tasks("test")
    assert [t.reference for t in tasks] == ["regit", "nomel"]
    outcomes = env.reward().score([tasks[0].sample("REGIT")])
    assert outcomes[0].score == 1.0


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(RegistryError, match=r"unknown verifier 'nope'; known verifiers: .*math"):
        load_verifier("nope")
    with pytest.raises(RegistryError, match=r"unknown environment 'nope'; known environments: .*arithmetic"):
        load_environment("nope")


def test_cli_list_shows_plugin_with_distribution(plugin_site):
    proc = subprocess.run([sys.executable, "-m", "rlvr", "list"], capture_output=True, text=True, env=subprocess_env(plugin_site), timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("exact_match"))
    assert "rlvr-plugin-example 0.3.0" in line
    assert any(ln.strip().startswith("reverse_text") for ln in proc.stdout.splitlines())
    assert any(ln.strip().startswith("math ") for ln in proc.stdout.splitlines())


def test_cli_verify_with_plugin(plugin_site):
    cmd = [sys.executable, "-m", "rlvr", "verify", "exact_match", "--reference", "42", "--completion", " 42 ", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(plugin_site), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"status": "ok"' in proc.stdout and '"score": 1.0' in proc.stdout


def test_duplicate_registration_names_both_distributions(plugin_site, tmp_path):
    clash = pip_install_target("rlvr-plugin-clash", tmp_path / "clash")
    code = "from rlvr.registry import load_verifier; load_verifier('exact_match')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(plugin_site, clash), timeout=60)
    assert proc.returncode != 0
    assert "registered by more than one distribution" in proc.stderr
    assert "rlvr-plugin-example 0.3.0" in proc.stderr and "rlvr-plugin-clash 1.0.0" in proc.stderr
    listing = subprocess.run([sys.executable, "-m", "rlvr", "list"], capture_output=True, text=True, env=subprocess_env(plugin_site, clash), timeout=60)
    assert listing.returncode == 2 and "rlvr-plugin-clash" in listing.stderr


def test_cli_unknown_verifier_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "rlvr", "verify", "nope", "--reference", "1", "--completion", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown verifier 'nope'" in proc.stderr and "math" in proc.stderr
    assert "Traceback" not in proc.stderr
