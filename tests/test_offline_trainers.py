"""DPO, KTO and ORPO end to end on a tiny real model (2-layer Llama from a config, SmolLM2's tokenizer)."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.environments.base import Task
from rlvr.models import resolve_model
from rlvr.rewards import FunctionReward, Sample
from rlvr.trainers import offline
from rlvr.trainers.config import ConfigError
from rlvr.trainers.dpo_config import DPOConfig
from rlvr.trainers.dpo_trainer import DPOTrainer
from rlvr.trainers.kto_config import KTOConfig
from rlvr.trainers.kto_trainer import KTOTrainer

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from rlvr.experimental.orpo_config import ORPOConfig
    from rlvr.experimental.orpo_trainer import ORPOTrainer

pytestmark = pytest.mark.slow

WORDS = ["cats", "rain", "trees", "bread", "stone", "wind", "sea", "salt"]
TASKS = [Task([{"role": "user", "content": f"Say something about {w}."}], w) for w in WORDS]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def pair_rows(n: int = 8) -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": f"Say something about {w}."}], "chosen": f"{w} are nice.", "rejected": "no"}
        for w in (WORDS * 2)[:n]
    ]


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows()))
    return path


def mention(sample: Sample) -> float:
    return 1.0 if sample.reference in sample.completion else 0.0


REWARD = FunctionReward(mention, name="mention")
BASE = {"max_steps": 3, "batch_size": 4, "micro_batch_size": 2, "learning_rate": 1e-2, "progress_bar": False, "bf16": False,
        "max_completion_length": 6, "eval_max_tasks": 2}  # fmt: skip


def dpo(tokenizer, tmp_path, pairs_file, model=None, **overrides) -> DPOTrainer:
    cfg = DPOConfig(**{**BASE, "pairs": str(pairs_file), "output_dir": str(tmp_path), **overrides})
    pairs = offline.load_preference_pairs(cfg.pairs) if cfg.pairs else None
    return DPOTrainer(
        cfg, model=model or tiny_causal_lm(tokenizer), pairs=pairs, tokenizer=tokenizer, reward=REWARD,
        train_tasks=TASKS, eval_tasks=TASKS[:2],
    )  # fmt: skip


DPO_METRICS = ["step", "loss", "grad_norm", "lr", "step_time_s", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
               "rewards/margins", "logps/chosen", "logps/rejected"]  # fmt: skip


def rows_of(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_dpo_trains_logs_every_metric_and_evaluates(tokenizer, tmp_path, pairs_file):
    trainer = dpo(tokenizer, tmp_path, pairs_file, loss_type=["sigmoid", "ipo"], loss_weights=[1.0, 0.5])
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    rows = rows_of(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in DPO_METRICS:
        assert all(key in r for r in rows), key
    # step 1: policy == reference, so every log-ratio is 0: loss = log 2 + 0.5 * (1 / (2 beta))^2 = 0.6931 + 12.5
    assert rows[0]["loss"] == pytest.approx(0.693147 + 12.5, abs=1e-4)
    assert rows[0]["rewards/margins"] == 0 and rows[-1]["rewards/margins"] != 0
    assert {"before", "after"} <= set(summary) and summary["after"]["tasks"] == 2
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["trainer"] == "dpo"


def test_dpo_resume_equals_uninterrupted(tokenizer, tmp_path, pairs_file):
    kw = {"max_steps": 4, "eval_before": False, "eval_after": False, "save_final_model": False}
    full = dpo(tokenizer, tmp_path / "full", pairs_file, **kw)
    full.train()
    part = dpo(tokenizer, tmp_path / "part", pairs_file, save_steps=2, **kw)
    part.output_dir.mkdir(parents=True)
    part.training_step()
    part.training_step()
    resumed = dpo(tokenizer, tmp_path / "part", pairs_file, save_steps=2, **kw)
    resumed.resume(tmp_path / "part")
    assert resumed.step == 2
    resumed.train()
    a, b = rows_of(tmp_path / "full"), rows_of(tmp_path / "part")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert (ra["loss"], ra["grad_norm"], ra["logps/chosen"]) == (rb["loss"], rb["grad_norm"], rb["logps/chosen"])
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_precomputed_reference_gives_the_live_reference_loss(tokenizer, tmp_path, pairs_file):
    kw = {"max_steps": 2, "eval_before": False, "eval_after": False, "save_final_model": False, "loss_type": "sigmoid"}
    live = dpo(tokenizer, tmp_path / "live", pairs_file, **kw)
    live.train()
    pre = dpo(tokenizer, tmp_path / "pre", pairs_file, precompute_ref_log_probs=True, **kw)
    pre.train()
    assert pre.reference.table is not None and pre.reference.table.shape == (8, 2)
    for a, b in zip(live.history, pre.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)


def test_lora_reference_is_the_model_with_adapters_disabled(tokenizer, tmp_path, pairs_file):
    base = tiny_causal_lm(tokenizer)
    plain = {k: v.clone() for k, v in base.state_dict().items()}
    trainer = dpo(tokenizer, tmp_path, pairs_file, model=base, lora_r=4, lora_alpha=8, eval_before=False, eval_after=False,
                  save_final_model=False)  # fmt: skip
    assert trainer.reference.ref_model is None  # no second model loaded
    trainer.train()
    batch = trainer._batch(trainer.rows[:2])
    ref, _ = trainer.reference.logps(batch)
    fresh = tiny_causal_lm(tokenizer)
    fresh.load_state_dict(plain)
    expected, _ = offline.sequence_logps(fresh, batch, False, torch.device("cpu"))
    assert torch.allclose(ref, expected, atol=1e-5)
    policy, _ = offline.sequence_logps(trainer.model, batch, False, torch.device("cpu"))
    assert not torch.allclose(policy, expected, atol=1e-3)  # the adapters moved the policy away from it


def test_a_pairs_file_with_bad_rows_trains_on_the_good_ones(tokenizer, tmp_path, caplog):
    good = pair_rows(4)
    lines = [json.dumps(good[0]), "{not json", json.dumps({"prompt": "p", "chosen": "a"}), json.dumps(good[1]),
             json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}), json.dumps(good[2]), json.dumps(good[3])]  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        pairs = offline.load_preference_pairs(str(path))
    assert len(pairs) == 4
    assert "pairs.jsonl:2" in caplog.text
    trainer = dpo(tokenizer, tmp_path / "run", path, max_steps=1, eval_before=False, eval_after=False, save_final_model=False)
    trainer.train()
    assert len(trainer.rows) == 4 and trainer.step == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{not json\n" + json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ConfigError, match="DPOConfig.pairs"):
        DPOTrainer.from_config(DPOConfig(pairs=str(empty), model="/nonexistent/model"))  # fails before the model is looked at
    with pytest.raises(ConfigError, match="DPOConfig.pairs: /nonexistent/pairs.jsonl: no such file"):
        DPOTrainer.from_config(DPOConfig(pairs="/nonexistent/pairs.jsonl", model="/nonexistent/model"))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"loss_type": "sigmoidd"}, "unknown loss type 'sigmoidd'"),
        ({"loss_type": ["sigmoid", "ipo"], "loss_weights": [1.0]}, "1 weight.*2 loss type"),
        ({"batch_size": 6, "micro_batch_size": 4}, "use batch_size 4 or 8"),
        ({"pairs": None}, "pass --pairs FILE"),
        ({"pairs_refresh_steps": 2}, "pass --env NAME"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"max_prompt_length": 600}, "max_prompt_length"),
    ],
)
def test_bad_dpo_config_fails_before_any_model_loads(pairs_file, overrides, match):
    with pytest.raises(ConfigError, match=match):
        DPOConfig(**{"pairs": str(pairs_file), "model": "/nonexistent/model", **overrides})


def test_bad_kto_and_orpo_configs(pairs_file):
    with pytest.raises(ConfigError, match="exactly one of --labels"):
        KTOConfig(labels=str(pairs_file), pairs=str(pairs_file))
    with pytest.raises(ConfigError, match="at least 2"):
        KTOConfig(pairs=str(pairs_file), batch_size=1, micro_batch_size=1)
    with pytest.raises(ConfigError, match="ORPOConfig.pairs: /nonexistent.jsonl: no such file"):
        ORPOTrainer.from_config(ORPOConfig(pairs="/nonexistent.jsonl", model="/nonexistent/model"))
    with pytest.raises(ConfigError, match="KTOConfig.labels: /nonexistent.jsonl: no such file"):
        KTOTrainer.from_config(KTOConfig(labels="/nonexistent.jsonl", model="/nonexistent/model"))
    with pytest.raises(ConfigError, match="use batch_size 8 or 16"):
        ORPOConfig(pairs=str(pairs_file), batch_size=12, micro_batch_size=8)


def test_iterative_dpo_rebuilds_pairs_from_the_policy_at_step_k(tokenizer, tmp_path, pairs_file):
    """Pairs from the file for steps 0-1, sampled from the current policy at step 2 (K = 2); a resume at step 3
    restores the sampled pairs from the checkpoint and continues exactly as the uninterrupted run."""
    reward = FunctionReward(lambda s: float(len(s.completion) % 3), name="len3")
    kw = {"pairs_refresh_steps": 2, "pairs_k": 4, "pairs_prompts": 4, "max_steps": 4, "eval_before": False,
          "eval_after": False, "save_final_model": False, "max_completion_length": 8, "generator": "hf"}  # fmt: skip

    def make(out, **extra):
        cfg = DPOConfig(**{**BASE, **kw, "pairs": str(pairs_file), "env": "arithmetic", "output_dir": str(out), **extra})
        return DPOTrainer(cfg, model=tiny_causal_lm(tokenizer), pairs=offline.load_preference_pairs(cfg.pairs), tokenizer=tokenizer,
                          reward=reward, train_tasks=TASKS)  # fmt: skip

    full = make(tmp_path / "full")
    file_pairs = list(full.pairs)
    full.train()
    rows = rows_of(tmp_path / "full")
    assert "num_pairs" not in rows[0] and "num_pairs" not in rows[1]
    assert rows[2]["num_pairs"] > 0 and {"reward_mean", "accuracy", "pairs_time_s"} <= set(rows[2])
    assert full.pairs_step == 2 and full.pairs != file_pairs
    assert all(p.prompt in [t.prompt for t in TASKS] for p in full.pairs)

    part = make(tmp_path / "part", save_steps=3)
    part.output_dir.mkdir(parents=True)
    for _ in range(3):
        part.training_step()
    assert (tmp_path / "part" / "checkpoint-3" / "pairs.jsonl").exists()
    resumed = make(tmp_path / "part", save_steps=3)
    resumed.resume(tmp_path / "part")
    texts = [(p.prompt, p.chosen, p.rejected) for p in full.pairs]
    assert [(p.prompt, p.chosen, p.rejected) for p in resumed.pairs] == texts and resumed.pairs_step == 2
    resumed.train()
    a, b = rows_of(tmp_path / "full"), rows_of(tmp_path / "part")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_kto_trains_on_unpaired_pairs_and_logs_every_metric(tokenizer, tmp_path, pairs_file, caplog):
    labels = offline.load_preference_labels(None, str(pairs_file))
    assert [lab.desirable for lab in labels[:2]] == [True, False] and len(labels) == 16
    cfg = KTOConfig(**{**BASE, "pairs": str(pairs_file), "output_dir": str(tmp_path), "undesirable_weight": 2.0})
    with caplog.at_level(logging.WARNING):
        trainer = KTOTrainer(cfg, model=tiny_causal_lm(tokenizer), labels=labels, tokenizer=tokenizer, reward=REWARD,
                             eval_tasks=TASKS[:2])  # fmt: skip
    assert "outside the recommended [1, 4/3]" in caplog.text  # (1 x 8) / (2 x 8) = 0.5
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    rows = rows_of(tmp_path)
    for key in ["loss", "kl", "grad_norm", "lr", "step_time_s", "rewards/chosen", "rewards/rejected", "logps/chosen",
                "logps/rejected", "rewards/margins"]:  # fmt: skip
        assert all(key in r for r in rows if r["n_desirable"] and r["n_undesirable"]), key
    assert rows[0]["kl"] == 0.0  # policy == reference at step 1
    assert {"before", "after"} <= set(summary)


def test_kto_labels_file_and_precomputed_reference(tokenizer, tmp_path):
    path = tmp_path / "labels.jsonl"
    rows = [{"prompt": f"Say something about {w}.", "completion": f"{w}!", "label": i % 2 == 0} for i, w in enumerate(WORDS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    labels = offline.load_preference_labels(str(path), None)
    assert len(labels) == 8
    kw = {**BASE, "labels": str(path), "eval_before": False, "eval_after": False, "save_final_model": False, "max_steps": 2}
    live = KTOTrainer(
        KTOConfig(**kw, output_dir=str(tmp_path / "a")), model=tiny_causal_lm(tokenizer), labels=labels, tokenizer=tokenizer
    )
    live.train()
    pre = KTOTrainer(KTOConfig(**kw, output_dir=str(tmp_path / "b"), precompute_ref_log_probs=True), model=tiny_causal_lm(tokenizer),
                     labels=labels, tokenizer=tokenizer)  # fmt: skip
    pre.train()
    for a, b in zip(live.history, pre.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_orpo_trains_and_logs_every_metric(tokenizer, tmp_path, pairs_file):
    cfg = ORPOConfig(**{**BASE, "pairs": str(pairs_file), "output_dir": str(tmp_path)})
    trainer = ORPOTrainer(cfg, model=tiny_causal_lm(tokenizer), pairs=offline.load_preference_pairs(cfg.pairs), tokenizer=tokenizer,
                          reward=REWARD, eval_tasks=TASKS[:2])  # fmt: skip
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    rows = rows_of(tmp_path)
    for key in ["loss", "nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/rejected",
                "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm", "lr", "step_time_s"]:  # fmt: skip
        assert all(key in r for r in rows), key
    r = rows[0]
    assert r["loss"] == pytest.approx(r["nll_loss"] - 0.1 * r["log_odds_ratio"], abs=1e-5)
    assert rows[-1]["nll_loss"] < rows[0]["nll_loss"]


# ----------------------------------------------------------------- the command line, one and two processes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny")
    tiny_causal_lm(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def cli(*args: str, launcher: tuple[str, ...] = (), timeout: float = 300):
    import subprocess
    import sys

    from conftest import subprocess_env

    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, *launcher, "-m", "rlvr.train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def cli_args(model_dir, pairs_file, out) -> list[str]:
    return [
        "--trainer", "dpo", "--model", str(model_dir), "--pairs", str(pairs_file), "--env", "arithmetic",
        "--env_kwargs", "{n_train: 20, n_test: 2}", "--eval_max_tasks", "2", "--max_completion_length", "4",
        "--batch_size", "4", "--micro_batch_size", "2", "--learning_rate", "1e-2", "--progress_bar", "false",
        "--output-dir", str(out),
    ]  # fmt: skip


def test_cli_trains_dpo_and_writes_the_run(tmp_path, model_dir, pairs_file):
    """``python -m rlvr.train --trainer dpo``: metrics, eval.json before/after, curves, a checkpoint, final/ (resume: above)."""
    out = tmp_path / "run"
    proc = cli(*cli_args(model_dir, pairs_file, out), "--max_steps", "2", "--save_steps", "2")
    assert "done: 2 steps" in proc.stdout and "held-out accuracy" in proc.stdout
    for name in ("metrics.jsonl", "eval.json", "curves.png", "final/model.safetensors", "checkpoint-2/trainer_state.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "eval.json").read_text())
    assert summary["before"]["tasks"] == summary["after"]["tasks"] == 2
    assert [r["step"] for r in rows_of(out)] == [1, 2]


def test_two_processes_under_torchrun_train_one_model(tmp_path, model_dir, pairs_file):
    """Each process trains on its own shard of the pairs (2 of the 4 pairs per step); DDP averages the gradients,
    process 0 writes one metrics line per step with the whole step's counts."""
    out = tmp_path / "run"
    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone")
    proc = cli(*cli_args(model_dir, pairs_file, out), "--max_steps", "2", "--save_steps", "2", "--eval_before", "false",
               launcher=launcher)  # fmt: skip
    assert proc.stdout.count("done: 2 steps") == 1
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 <= r["rewards/accuracies"] <= 1 for r in rows)
    assert {"rng.pt", "rng-1.pt", "data-1.json"} <= {p.name for p in (out / "checkpoint-2").iterdir()}
    assert (out / "final" / "model.safetensors").exists()
