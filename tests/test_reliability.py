"""Long runs survive what goes wrong in long runs: each test provokes the fault for real.

A real SIGTERM to a real ``python -m rlvr.train``; a real tmpfs filled to the brim; a
checkpoint file truncated on disk; a real NaN flowing through autograd (a gradient hook on a
parameter). The runs use a 2-layer Llama saved to disk and the ``hf`` generator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.models import resolve_model
from rlvr.train import EXIT_PREEMPTED, EXIT_WRITE_FAILED, main
from rlvr.trainers import run

pytestmark = pytest.mark.slow

TIMING = {"step_time_s", "generation_time_s", "reward_time_s", "train_time_s", "mfu", "sync_time_s", "weight_sync_time_s"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "model"
    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tiny_causal_lm(tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def args(tiny: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--model", str(tiny), "--generator", "hf", "--num_generations", "4", "--generation_batch_size", "8",
        "--max_completion_length", "6", "--env_kwargs", "{n_train: 40, n_test: 4}", "--progress_bar", "false",
        "--learning_rate", "1e-3", "--eval_before", "false", "--eval_after", "false", "--save_final_model", "false",
        "--max_steps", str(steps), "--output_dir", str(out), *extra,
    ]  # fmt: skip


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def numbers(row: dict) -> dict:
    """A metrics line without its timings."""
    return {k: v for k, v in row.items() if k not in TIMING and not k.endswith(("_s", "_per_s"))}


def test_sigterm_stops_at_a_step_boundary_with_a_checkpoint_and_resume_gives_the_same_numbers(tiny, tmp_path):
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlvr.train", *args(tiny, out, 60)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never finished a step"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-2000:]
    stopped = len(rows(out))
    assert 1 <= stopped < 60
    assert (out / f"checkpoint-{stopped}" / run.CHECKSUMS).exists()
    assert f"--resume {out}" in stderr and "SIGTERM" in stderr
    assert main(["--resume", str(out), "--max_steps", str(stopped + 2), "--progress_bar", "false"]) == 0
    whole = tmp_path / "whole"
    assert main(args(tiny, whole, stopped + 2)) == 0
    assert [numbers(r) for r in rows(out)] == [numbers(r) for r in rows(whole)]


def test_a_second_signal_exits_at_once(tmp_path):
    """The first SIGTERM asks for a stop at the step boundary; the second is the signal's default."""
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        from rlvr.trainers.run import StopSignals
        with StopSignals() as s:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("asked:", s.name, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            print("still running", flush=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "asked: SIGTERM" in proc.stdout and "still running" not in proc.stdout
    assert proc.returncode == -signal.SIGTERM


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of 30 MiB: room for one checkpoint of the tiny model (19 MiB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_and_leaves_no_partial_checkpoint(tiny, small_disk, capsys):
    out = small_disk / "run"
    code = main(args(tiny, out, 4, "--save_steps", "1"))
    err = capsys.readouterr().err
    assert code == EXIT_WRITE_FAILED
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "checkpoint-2" in line and "GiB free" in line and "needs about" in line and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-1"]  # no checkpoint-2(.tmp)
    assert [r["step"] for r in rows(out)] == [1, 2]  # every finished step kept
    assert run.damaged_files(out / "checkpoint-1") == [] and run.latest_valid_checkpoint(out) == out / "checkpoint-1"
    assert os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize > 5 << 20  # the partial write gave its space back


def test_free_space_is_checked_before_the_first_checkpoint(tmp_path):
    warning = run.check_free_space(tmp_path, 1 << 60)
    assert warning and "needs about" in warning and str(tmp_path) in warning
    assert run.check_free_space(tmp_path, 1) is None


def test_a_damaged_checkpoint_is_named_and_latest_valid_resumes_from_the_one_before(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(tiny, out, 2, "--save_steps", "1")) == 0
    damaged = out / "checkpoint-2" / "optimizer.pt"
    with open(damaged, "r+b") as f:  # a disk that lied: the file cut short
        f.truncate(damaged.stat().st_size // 2)
    capsys.readouterr()
    assert main(["--resume", str(out), "--max_steps", "3", "--progress_bar", "false"]) == 2
    err = capsys.readouterr().err
    assert "optimizer.pt" in err and "checkpoint-1" in err and "latest_valid" in err
    flipped = out / "checkpoint-1" / "rng.pt"
    assert main(["--resume", "latest_valid", "--output_dir", str(out), "--max_steps", "3", "--progress_bar", "false"]) == 0
    assert [r["step"] for r in rows(out)] == [1, 2, 3]  # resumed after step 1: steps 2 and 3 again
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the same size, another hash
    flipped.write_bytes(bytes(data))
    assert run.damaged_files(out / "checkpoint-1") == ["rng.pt"]
    (out / "checkpoint-1" / run.CHECKSUMS).write_text('{"rng.pt": 5}')  # hand-edited out of shape: bad, not a crash
    assert run.damaged_files(out / "checkpoint-1") == [run.CHECKSUMS]


class NaNAt:
    """A gradient hook that makes a parameter's gradient NaN during the steps listed."""

    def __init__(self, trainer, steps) -> None:
        self.trainer, self.steps = trainer, set(steps)

    def __call__(self, grad):
        return grad * float("nan") if self.trainer.step + 1 in self.steps else grad


def _length_reward(sample) -> float:
    return 1.0 if len(sample.completion) % 3 == 0 else 0.0  # a signal a random tiny model gets


def _grpo(tiny, out, steps, **overrides):
    from rlvr.environments.base import Task
    from rlvr.rewards import FunctionReward
    from rlvr.trainers.grpo_config import GRPOConfig
    from rlvr.trainers.grpo_trainer import GRPOTrainer

    values = dict(
        generator="hf", num_generations=4, generation_batch_size=8, max_completion_length=8, progress_bar=False,
        learning_rate=1e-2, eval_before=False, eval_after=False, save_final_model=False, max_steps=steps, output_dir=str(out),
        bf16=False, system_prompt=None,
    )  # fmt: skip
    values.update(overrides)
    tok = AutoTokenizer.from_pretrained(tiny)
    tasks = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in ["cats", "rain", "trees", "bread"]]
    return GRPOTrainer(
        GRPOConfig(**values), model=tiny_causal_lm(tok), reward=FunctionReward(_length_reward, name="len3"), train_tasks=tasks, tokenizer=tok
    )


def test_a_nan_gradient_skips_the_step_and_leaves_weights_and_optimizer_untouched(tiny, tmp_path):
    trainer = _grpo(tiny, tmp_path / "run", 3)
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    param.register_hook(NaNAt(trainer, [2]))
    snapshots = []
    original = trainer.training_step

    def step_and_snapshot():
        original()
        state = trainer.optimizer.state.get(param, {})
        snapshots.append((param.detach().clone(), state["exp_avg"].clone() if "exp_avg" in state else None))

    trainer.training_step = step_and_snapshot
    trainer.train()
    metrics = rows(tmp_path / "run")
    assert [r.get("skipped_step") for r in metrics] == [None, "nan", None]
    assert torch.equal(snapshots[0][0], snapshots[1][0]) and torch.equal(snapshots[0][1], snapshots[1][1])  # step 2 changed nothing
    assert not torch.equal(snapshots[1][0], snapshots[2][0])  # step 3 trained
    assert trainer.step == 3


def test_bad_steps_in_a_row_stop_the_run_naming_the_likely_causes(tiny, tmp_path):
    trainer = _grpo(tiny, tmp_path / "run", 6, max_bad_steps=2, save_steps=1)
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    param.register_hook(NaNAt(trainer, [2, 3, 4, 5, 6]))
    with pytest.raises(run.BadStepsError, match="learning rate") as info:
        trainer.train()
    assert "bf16" in str(info.value)
    assert [r.get("skipped_step") for r in rows(tmp_path / "run")] == [None, "nan", "nan"]
    assert run.find_checkpoint(tmp_path / "run").name == "checkpoint-2"  # the last checkpoint, of unchanged weights


def test_the_watchdog_reports_a_stuck_phase_with_every_stack_and_exits(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from rlvr.trainers import run
        run._WATCHDOG = run.Watchdog(1.0, 10.0, Path({str(tmp_path)!r}), rank=0).start()
        with run.phase("step"):
            with run.phase("reward"):
                time.sleep(30)
        print("never here")
        """
    )
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == run.EXIT_STALLED and time.monotonic() - start < 15
    assert "stuck in phase 'reward'" in proc.stderr and "--resume" in proc.stderr and "never here" not in proc.stdout
    report = (tmp_path / "stall-0.txt").read_text()
    assert "stuck in phase 'reward'" in report and "line" in report  # faulthandler's stacks: File "...", line N


def test_a_stalled_reward_server_stops_the_run_resumably(tiny, tmp_path):
    """The reward server is stopped with SIGSTOP after step 1: it accepts the connection and never
    answers. The watchdog names the phase (reward), writes every thread's stack, and the run
    stops with its last checkpoint instead of hanging (prime-rl sat 43 h on a dead server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "rlvr", "serve", "--reward", "math", "--port", str(port)], start_new_session=True)
    try:
        from rlvr.integrations.remote import RemoteReward

        deadline = time.monotonic() + 90
        RemoteReward(f"http://127.0.0.1:{port}").wait_ready(90, process=server)
        out = tmp_path / "run"
        remote_kwargs = json.dumps({"url": f"http://127.0.0.1:{port}"})
        extra = ("--verifier", "remote", "--verifier_kwargs", remote_kwargs, "--stall_timeout_s", "6", "--save_steps", "1")
        proc = subprocess.Popen([sys.executable, "-m", "rlvr.train", *args(tiny, out, 60, *extra)], stderr=subprocess.PIPE, text=True)
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline + 60, "the run never finished a step"
            time.sleep(0.05)
        os.killpg(server.pid, signal.SIGSTOP)
        _, stderr = proc.communicate(timeout=120)
    finally:
        os.killpg(server.pid, signal.SIGCONT)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    assert proc.returncode == run.EXIT_STALLED, stderr[-2000:]
    assert "stuck in phase 'reward'" in stderr and f"--resume {out}" in stderr
    assert "Thread" in (out / "stall-0.txt").read_text()  # faulthandler's stacks of every thread
    assert run.find_checkpoint(out).name == f"checkpoint-{len(rows(out))}"  # resumable from the last finished step
