"""Sharded training (``parallelism: fsdp``, FSDP2) over two real CPU processes (gloo) started by ``torchrun``.

The same batches trained by one process, or split over two with the model, its gradients and
AdamW's state sharded: the same losses and gradient norms (1e-4 relative) and the same final
weights (1e-5), read back from the ``final/`` directory each run writes, which ``transformers``
loads. Resuming a sharded checkpoint gives the uninterrupted run's next step; it reshards onto
three processes. A config that cannot run fails in one line before any model loads.
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
from rlvr.trainers.config import ConfigError

WORDS = ["cats", "rain", "trees", "bread"]

# How both equality scripts end: final/ and the step's loss and grad norm, named by process count and parallelism.
FINISH = """
        tag = f"{trainer.world_size}-{trainer.config.parallelism}"
        trainer.save_model(f"{out}/final-{tag}")
        if trainer.rank == 0:
            with open(f"{out}/history-{tag}.json", "w") as f:
                json.dump([{k: h[k] for k in ("loss", "grad_norm")} for h in trainer.history], f)
        finish_processes()
"""

# Online trainers: 16 completions (4 prompts x 4, sampled once, cut to uneven lengths) trained on
# twice, by one process or 8 + 8 by two; then final/ is written.
ONLINE = textwrap.dedent(
    """
    import dataclasses, json, sys, warnings
    from rlvr.environments.base import Task
    from rlvr.generation import SamplingConfig
    from rlvr.registry import load_trainer_class, load_trainer_config
    from rlvr.rewards import FunctionReward
    from rlvr.trainers import modeling
    from rlvr.trainers.rollouts import Rollout, new_timing, score_generations
    from rlvr.trainers.run import finish_processes

    def length_reward(sample):
        return float(len(sample.completion) % 3)

    if __name__ == "__main__":
        model_dir, out, name, overrides = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
        tasks = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in WORDS]
        warnings.simplefilter("ignore", FutureWarning)  # the experimental trainers warn on import
        config_class = load_trainer_config(name)
        cfg = config_class(
            generator="hf", model=model_dir, max_steps=2, num_generations=4, generation_batch_size=16,
            max_completion_length=8, micro_batch_size=4, output_dir=out, progress_bar=False, system_prompt=None,
            bf16=False, temperature=1.0, learning_rate=1e-3, **overrides,
        )
        trainer = load_trainer_class(config_class)(cfg, reward=FunctionReward(length_reward, name="len"), train_tasks=tasks)
        with modeling.generating(trainer.generator):  # a sharded policy generates with its weights gathered
            gens = trainer.generator.generate([t.prompt for t in tasks], 4, SamplingConfig(1.0, 1.0, 0, 8, 1234))
        gens = [
            dataclasses.replace(g, completion_ids=g.completion_ids[: 2 + i % 7], logprobs=g.logprobs[: 2 + i % 7], finish_reason="stop")
            for i, g in enumerate(gens)
        ]
        outcomes, _ = score_generations(trainer.reward, tasks, gens)
        rollouts = [Rollout(tasks[g.prompt_index], g, o) for g, o in zip(gens, outcomes)]
        share = len(rollouts) // trainer.world_size
        mine = rollouts[trainer.rank * share : (trainer.rank + 1) * share]  # whole groups: 4 per prompt, in order
        for _ in range(2):
            trainer._train_on(mine, {}, new_timing())
    """
    + FINISH
).replace("WORDS", repr(WORDS))

# Offline trainers: 4 pairs, a batch of 4 (every pair at every step), evaluated first on 3
# held-out items (2 + 1 over two processes: uneven), 2 steps, then final/.
OFFLINE = textwrap.dedent(
    """
    import json, sys, warnings
    from rlvr.environments.base import Task
    from rlvr.preferences import load_pairs
    from rlvr.registry import load_trainer_class, load_trainer_config
    from rlvr.rewards import FunctionReward
    from rlvr.trainers.run import finish_processes

    if __name__ == "__main__":
        model_dir, out, name, pairs_file, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
        warnings.simplefilter("ignore", FutureWarning)
        tasks = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in WORDS]
        config_class = load_trainer_config(name)
        base = dict(model=model_dir, max_steps=2, batch_size=4, micro_batch_size=1, learning_rate=1e-3, progress_bar=False,
                    bf16=False, output_dir=out)
        cls = load_trainer_class(config_class)
        if name == "reward":
            pairs = load_pairs([json.loads(line) for line in open(pairs_file)])
            trainer = cls(config_class(**base, pairs=pairs_file, **overrides), eval_pairs=pairs[:3])
        else:
            data = {"pairs": pairs_file} if name != "kto" else {"labels": pairs_file.replace("pairs.jsonl", "labels.jsonl")}
            cfg = config_class(**base, max_completion_length=4, **data, **overrides)
            trainer = cls.from_config(cfg)
            trainer.reward, trainer.eval_tasks = FunctionReward(lambda s: 0.0, name="zero"), tasks[:3]
        trainer.evaluate()
        for _ in range(2):
            trainer.training_step()
    """
    + FINISH
).replace("WORDS", repr(WORDS))

# A whole GRPO run (generation, evaluation, checkpoints, final/) that may resume; rank 0 writes
# a digest of the gathered weights before and after training, and the metrics.
RUN = textwrap.dedent(
    """
    import hashlib, json, sys
    from rlvr.environments.base import Task
    from rlvr.rewards import FunctionReward
    from rlvr.trainers import modeling
    from rlvr.trainers.grpo_config import GRPOConfig
    from rlvr.trainers.grpo_trainer import GRPOTrainer
    from rlvr.trainers.run import finish_processes

    def length_reward(sample):
        return 1.0 if len(sample.completion) % 3 == 0 else 0.0

    def digest(trainer):
        state = modeling.policy_state_dict(trainer.policy)  # gathered: every process takes part
        return hashlib.sha256(b"".join(state[k].float().numpy().tobytes() for k in sorted(state))).hexdigest()

    if __name__ == "__main__":
        model_dir, out, max_steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
        tasks = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in WORDS * 2]
        cfg = GRPOConfig(
            generator="hf", model=model_dir, max_steps=max_steps, num_generations=4, generation_batch_size=24,
            max_completion_length=8, micro_batch_size=4, learning_rate=1e-2, output_dir=out, progress_bar=False,
            system_prompt=None, bf16=False, eval_max_tasks=3, save_steps=1, parallelism="fsdp",
        )
        trainer = GRPOTrainer(cfg, reward=FunctionReward(length_reward, name="len3"), train_tasks=tasks, eval_tasks=tasks[:3])
        if resume != "-":
            trainer.resume(resume)
        before = digest(trainer)
        trainer.train()
        after = digest(trainer)
        if trainer.rank == 0:
            with open(f"{out}/digest-{trainer.world_size}-{max_steps}.json", "w") as f:
                json.dump({"before": before, "after": after, "history": trainer.history}, f)
        finish_processes()
    """
).replace("WORDS", repr(WORDS))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    path = tmp_path_factory.mktemp("tiny")
    tiny_causal_lm(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"Say something about {w}."}], "chosen": f"{w} are nice.", "rejected": "no"}
        for w in WORDS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"], "label": bool(i % 2)} for i, r in enumerate(rows)]
    (path.parent / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))  # KTO's: 4 rows
    return path


def run(*args: str, processes: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"  # several processes on a small machine
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone"] if processes > 1 else []
    proc = subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc


def assert_same_training(out: Path, a: str, b: str) -> None:
    """Losses and gradient norms within 1e-4 relative, final weights within 1e-5, ``final/`` loadable by transformers."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    ha, hb = (json.loads((out / f"history-{t}.json").read_text()) for t in (a, b))
    assert len(ha) == len(hb) == 2
    for ra, rb in zip(ha, hb):
        for key in ("loss", "grad_norm"):
            assert abs(ra[key] - rb[key]) <= 1e-4 * max(abs(ra[key]), 1e-8), (key, ra, rb)
    assert ha[0]["grad_norm"] > 0
    wa, wb = (load_file(str(out / f"final-{t}" / "model.safetensors")) for t in (a, b))
    assert sorted(wa) == sorted(wb)
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= 1e-5, worst
    # final/ of the sharded run is a Hugging Face directory: transformers loads it and gets those weights
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kind = AutoConfig.from_pretrained(out / f"final-{b}").architectures[0]
    loader = AutoModelForSequenceClassification if "SequenceClassification" in kind else AutoModelForCausalLM
    model = loader.from_pretrained(out / f"final-{b}")
    state = model.state_dict()
    for k, v in wb.items():
        assert torch.equal(state[k], v), k


pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "trainer, overrides",
    [
        ("grpo", {"beta": 0.05}),  # the reference: a sharded frozen copy
        ("grpo", {"beta": 0.05, "lora_r": 4, "gradient_checkpointing": True}),  # LoRA: adapters off as the reference
    ],
    ids=["grpo-reference", "grpo-lora-checkpointing"],
)
def test_sharded_online_training_equals_one_process(tmp_path, model_dir, trainer, overrides):
    script = tmp_path / "online.py"
    script.write_text(ONLINE)
    run(str(script), str(model_dir), str(tmp_path), trainer, json.dumps(overrides))
    run(str(script), str(model_dir), str(tmp_path), trainer, json.dumps({**overrides, "parallelism": "fsdp"}), processes=2)
    assert_same_training(tmp_path, "1-ddp", "2-fsdp")


@pytest.mark.parametrize(
    "trainer, overrides",
    [("dpo", {}), ("reward", {"lora_r": 4})],
    ids=["dpo-reference", "reward-lora"],
)
def test_sharded_offline_training_equals_one_process(tmp_path, model_dir, pairs_file, trainer, overrides):
    script = tmp_path / "offline.py"
    script.write_text(OFFLINE)
    run(str(script), str(model_dir), str(tmp_path), trainer, str(pairs_file), json.dumps(overrides))
    run(str(script), str(model_dir), str(tmp_path), trainer, str(pairs_file), json.dumps({**overrides, "parallelism": "fsdp"}), processes=2)
    assert_same_training(tmp_path, "1-ddp", "2-fsdp")


def test_sharded_ppo_with_a_critic_equals_ddp(tmp_path, model_dir):
    """PPO shuffles its mini-batches per process, so two processes are compared with two: the
    sharded policy, value head and separate critic train as the replicated ones do."""
    script = tmp_path / "online.py"
    script.write_text(ONLINE)
    overrides = {"beta": 0.1, "critic_model": str(model_dir)}
    run(str(script), str(model_dir), str(tmp_path), "ppo", json.dumps(overrides), processes=2)
    run(str(script), str(model_dir), str(tmp_path), "ppo", json.dumps({**overrides, "parallelism": "fsdp"}), processes=2)
    assert_same_training(tmp_path, "2-ddp", "2-fsdp")
    from safetensors.torch import load_file

    for name in ("critic/model.safetensors", "critic/value_head.safetensors"):
        a, b = (load_file(str(tmp_path / f"final-2-{p}" / name)) for p in ("ddp", "fsdp"))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5, name


def test_resume_from_a_sharded_checkpoint_is_the_uninterrupted_run_and_reshards(tmp_path, model_dir):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(str(script), str(model_dir), str(whole), "2", "-", processes=2)
    ckpt = whole / "checkpoint-1"
    assert (ckpt / "sharded" / ".metadata").exists() and not (ckpt / "trainable.safetensors").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["sharded"] is True
    first = json.loads((whole / "digest-2-2.json").read_text())

    # resume from the checkpoint of step 1 (in a run directory of its own): step 2 is the uninterrupted run's step 2
    run(str(script), str(model_dir), str(cut), "2", str(ckpt), processes=2)
    resumed = json.loads((cut / "digest-2-2.json").read_text())
    assert resumed["before"] != first["before"]  # the checkpoint's weights, not the initial ones
    assert resumed["after"] == first["after"]
    keys = ("loss", "grad_norm", "reward_mean")
    assert [resumed["history"][-1][k] for k in keys] == [first["history"][-1][k] for k in keys]

    # three processes resume the two-process checkpoint: the weights and AdamW's state reshard
    proc = run(str(script), str(model_dir), str(tmp_path / "three"), "2", str(ckpt), processes=3)
    assert "written by 2 processes and this run has 3" in proc.stdout
    three = json.loads((tmp_path / "three" / "digest-3-2.json").read_text())
    assert three["before"] == resumed["before"]  # the checkpoint's weights, gathered from three shards
    assert three["after"] != three["before"]


def test_a_parallelism_that_cannot_run_fails_in_one_line_before_any_model_loads(tmp_path, model_dir, monkeypatch):
    from rlvr.trainers.grpo_config import GRPOConfig

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node N"):
        GRPOConfig(parallelism="fsdp")
    with pytest.raises(ConfigError, match="applies to parallelism fsdp only"):
        GRPOConfig(fsdp_reshard_after_forward=False)
    with pytest.raises(ConfigError, match="use one of ddp, fsdp"):
        GRPOConfig(parallelism="zero3")
    # on the command line: one 'error:' line, exit code 2, under torchrun too (offload asks for a GPU)
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    cmd = ["-m", "rlvr.train", "--model", str(model_dir), "--generator", "hf", "--env", "arithmetic", "--parallelism", "fsdp"]
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: GRPOConfig.parallelism")
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    proc = subprocess.run(
        [sys.executable, *launcher, *cmd, "--fsdp_cpu_offload", "true", "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "error: GRPOConfig.fsdp_cpu_offload: this run trains on the CPU" in proc.stderr
    assert "Loading weights" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_model_without_decoder_layers_or_with_non_linear_lora_is_refused():
    import torch
    from peft import LoraConfig, get_peft_model

    from rlvr.trainers.modeling import check_shardable

    with pytest.raises(ConfigError, match="names none"):
        check_shardable(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    model = get_peft_model(tiny_causal_lm(tokenizer), LoraConfig(r=2, target_modules=["embed_tokens", "q_proj"]))
    with pytest.raises(ConfigError, match="embed_tokens is a Embedding"):
        check_shardable(model)


def test_memory_estimate_shards_the_training_state():
    from rlvr.trainers.modeling import estimate_memory

    args = dict(num_params=7_600_000_000, num_trainable=7_600_000_000, hidden=3584, layers=28, vocab=152_064, tokens=4096)
    ddp = estimate_memory(**args, world_size=8, parallelism="ddp", bf16=True)
    fsdp = estimate_memory(**args, world_size=8, parallelism="fsdp", bf16=True)
    gib = 1 << 30
    assert round((ddp.params + ddp.grads + ddp.optimizer) / gib) == round(16 * 7.6e9 / gib)  # 16 bytes per weight
    assert fsdp.grads == ddp.grads / 8 and fsdp.optimizer == ddp.optimizer / 8
    assert fsdp.activations == ddp.activations and fsdp.ddp == ddp.total
    assert "fsdp over 8 processes" in fsdp.summary() and "ddp:" in fsdp.summary()
    offload = estimate_memory(**args, world_size=8, parallelism="fsdp", bf16=True, cpu_offload=True)
    assert offload.optimizer == 0 and offload.params < fsdp.params
