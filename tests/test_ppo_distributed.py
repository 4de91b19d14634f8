"""PPO over several processes: two real CPU processes (gloo) started by ``torchrun``.

The same 16 completions (4 prompts x 4, sampled once with one seed) are trained on by one
process, or split 8 + 8 over two: the whitening statistics and the token means are taken over
every process and each trained module (policy, value head, critic) is wrapped in
``DistributedDataParallel``, so the averaged gradient must be the one-process gradient.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import subprocess_env, tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.models import resolve_model

pytestmark = pytest.mark.slow

WORDS = ["cats", "rain", "trees", "bread"]

GRAD_SCRIPT = textwrap.dedent(
    """
    import dataclasses
    import json
    import sys
    import torch
    from rlvr.environments.base import Task
    from rlvr.generation import SamplingConfig
    from rlvr.rewards import FunctionReward
    from rlvr.trainers.ppo_config import PPOConfig
    from rlvr.trainers.ppo_trainer import PPOTrainer
    from rlvr.trainers.rollouts import Rollout, new_timing, score_generations
    from rlvr.trainers.run import finish_processes

    def length_reward(sample):
        return float(len(sample.completion) % 3)

    if __name__ == "__main__":
        model_dir, out, critic = sys.argv[1], sys.argv[2], sys.argv[3]
        tasks = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in WORDS]
        cfg = PPOConfig(
            generator="hf", model=model_dir, max_steps=1, num_generations=4, generation_batch_size=16,
            max_completion_length=8, micro_batch_size=4, output_dir=out, progress_bar=False, system_prompt=None,
            bf16=False, max_grad_norm=0.0, ppo_epochs=1, num_mini_batches=1, beta=0.1,
            critic_model=None if critic == "-" else critic,
        )
        trainer = PPOTrainer(cfg, reward=FunctionReward(length_reward, name="len"), train_tasks=tasks)
        gens = trainer.generator.generate([t.prompt for t in tasks], 4, SamplingConfig(1.0, 1.0, 0, 8, 1234))
        # uneven lengths, so the two processes hold different token counts
        gens = [
            dataclasses.replace(g, completion_ids=g.completion_ids[: 2 + i % 7], logprobs=g.logprobs[: 2 + i % 7], finish_reason="stop")
            for i, g in enumerate(gens)
        ]
        outcomes, _ = score_generations(trainer.reward, tasks, gens)
        rollouts = [Rollout(tasks[g.prompt_index], g, o) for g, o in zip(gens, outcomes)]
        share = len(rollouts) // trainer.world_size
        mine = rollouts[trainer.rank * share : (trainer.rank + 1) * share]  # whole groups: 4 per prompt, in order
        metrics = {}
        trainer._train_on(mine, metrics, new_timing())
        if trainer.rank == 0:
            grads = {
                "policy": torch.cat([p.grad.flatten() for p in trainer.policy_params if p.grad is not None]),
                "value": torch.cat([p.grad.flatten() for p in trainer.value_params if p.grad is not None]),
            }
            torch.save(grads, f"{out}/grad-{trainer.world_size}.pt")
            keys = ("policy_loss", "value_loss", "explained_variance", "advantage_mean", "entropy", "kl", "n_ok")
            with open(f"{out}/metrics-{trainer.world_size}.json", "w") as f:
                json.dump({k: metrics[k] for k in keys}, f)
        finish_processes()  # both processes leave together
    """
).replace("WORDS", repr(WORDS))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    root = tmp_path_factory.mktemp("tiny")
    for name, seed in (("policy", 0), ("critic", 1)):
        tiny_causal_lm(tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"  # two processes on a small machine
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("critic", ["value_head", "critic_model"])
def test_two_process_gradient_is_the_one_process_gradient(tmp_path: Path, model_dirs: Path, critic: str):
    import torch

    script = tmp_path / "grad.py"
    script.write_text(GRAD_SCRIPT)
    critic_arg = "-" if critic == "value_head" else str(model_dirs / "critic")
    python(str(script), str(model_dirs / "policy"), str(tmp_path), critic_arg)
    python(
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(script),
        str(model_dirs / "policy"),
        str(tmp_path),
        critic_arg,
    )
    for part in ("policy", "value"):
        g1, g2 = torch.load(tmp_path / "grad-1.pt")[part], torch.load(tmp_path / "grad-2.pt")[part]
        assert g1.norm() > 0, part
        assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-5 * float(g1.abs().max())), (part, float((g1 - g2).abs().max()))
    m1, m2 = (json.loads((tmp_path / f"metrics-{n}.json").read_text()) for n in (1, 2))
    assert m1["n_ok"] == m2["n_ok"] == 16
    for key in m1:
        assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-6), key


def test_cli_under_torchrun_trains_checkpoints_and_resumes(tmp_path: Path, model_dirs: Path):
    """``python -m rlvr.train --trainer ppo`` with two processes: one run directory, one metrics line per
    iteration, checkpoints holding the value head and both processes' states, ``final/`` with the value
    head; then both processes resume from the checkpoint and go one iteration further."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    args = [
        "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "rlvr.train", "--trainer", "ppo", "--model", str(model_dirs / "policy"), "--generator", "hf",
        "--num_generations", "2", "--generation_batch_size", "8", "--num_mini_batches", "2", "--max_completion_length", "6",
        "--env_kwargs", "{n_train: 20, n_test: 4}", "--eval_max_tasks", "4", "--progress_bar", "false",
        "--save_steps", "1", "--output-dir", str(out),
    ]  # fmt: skip
    proc = python(*args, "--max_steps", "2")
    assert proc.stdout.count("done: 2 steps") == 1  # process 0 reports, once
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    ckpt = out / "checkpoint-2"
    assert {"rng.pt", "rng-1.pt", "data-1.json", "trainable.safetensors"} <= {p.name for p in ckpt.iterdir()}
    assert "value_head.summary.weight" in load_file(str(ckpt / "trainable.safetensors"))
    assert (out / "final" / "value_head.safetensors").exists() and (out / "final" / "model.safetensors").exists()
    proc = python(*args, "--max_steps", "3", "--resume", str(out))
    assert proc.stdout.count("done: 3 steps") == 1
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
