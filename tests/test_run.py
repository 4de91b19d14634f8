"""The shared trainer plumbing (``rlvr.trainers.run``, ``config``, ``modeling``): fast unit tests, no model."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from rlvr.trainers import run
from rlvr.trainers.config import ConfigError, TrainConfig
from rlvr.trainers.modeling import lr_lambda, make_optimizer, make_scheduler


@pytest.fixture(scope="module")
def processes():
    return run.Processes()


def _tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)  # a frozen parameter is not a trainable one
    config = TrainConfig(learning_rate=1e-2, lr_scheduler_type="cosine", warmup_steps=1, max_steps=5)
    opt = make_optimizer(config, [p for p in model.parameters() if p.requires_grad], torch.device("cpu"))
    return model, opt, make_scheduler(config, opt)


def _train_step(model, opt, sched):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss.detach())


def test_checkpoint_round_trip_restores_weights_optimizer_schedule_rng_and_state(tmp_path, processes):
    """Save after 2 steps, train on, load: the next step from the checkpoint equals the next step
    an uninterrupted run took (weights, Adam moments, LR, and the random draws)."""
    model, opt, sched = _tiny()
    for _ in range(2):
        _train_step(model, opt, sched)
    ckpt = run.save_checkpoint(tmp_path / "checkpoint-2", processes, model, opt, sched, {"step": 2, "trainer": "t"}, {"epoch": 1, "cursor": 3})
    assert ckpt == tmp_path / "checkpoint-2" and not (tmp_path / "checkpoint-2.tmp").exists()
    expected_loss = _train_step(model, opt, sched)  # step 3, uninterrupted
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))

    other, opt2, sched2 = _tiny()
    _train_step(other, opt2, sched2)  # some other state, to be overwritten
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    with pytest.raises(ConfigError, match="written by the 't' trainer; resume it with --trainer t"):
        run.load_checkpoint(tmp_path, processes, other, opt2, sched2, trainer="grpo")
    state, data = run.load_checkpoint(tmp_path, processes, other, opt2, sched2, trainer="t")  # the run directory: finds checkpoint-2
    assert state["step"] == 2 and state["trainer"] == "t" and state["world_size"] == 1 and data == {"epoch": 1, "cursor": 3}
    assert _train_step(other, opt2, sched2) == expected_loss
    for k, v in other.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected_draws
    saved = run.read_trainer_state(tmp_path)
    assert saved["trainer"] == "t" and saved["data"] == {"epoch": 1, "cursor": 3}


def test_checkpoint_of_another_model_is_refused(tmp_path, processes):
    model, opt, sched = _tiny()
    run.save_checkpoint(tmp_path / "checkpoint-1", processes, model, opt, sched, {"step": 1}, {})
    other = torch.nn.Sequential(torch.nn.Linear(4, 2))
    opt2 = torch.optim.AdamW(other.parameters())
    with pytest.raises(ConfigError, match="same model and LoRA settings"):
        run.load_checkpoint(tmp_path, processes, other, opt2, make_scheduler(TrainConfig(), opt2))


def test_find_checkpoint_takes_the_latest_complete_one(tmp_path):
    for n in (2, 10, 9):
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-11.tmp").mkdir()  # an interrupted save
    (tmp_path / "checkpoint-12").mkdir()  # no state: not a checkpoint
    assert run.find_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # 10 > 9, numerically
    assert run.find_checkpoint(tmp_path / "checkpoint-2") == tmp_path / "checkpoint-2"
    with pytest.raises(ConfigError, match="save_steps > 0"):
        run.find_checkpoint(tmp_path / "checkpoint-12")
    with pytest.raises(ConfigError, match="no such directory"):
        run.find_checkpoint(tmp_path / "nope")


def test_truncate_metrics_drops_the_steps_a_resume_redoes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 6)) + "\n")
    run.truncate_metrics(path, 3)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3]
    run.truncate_metrics(tmp_path / "absent.jsonl", 3)  # nothing to truncate is fine
    assert not (tmp_path / "absent.jsonl").exists()


def test_data_order_is_seeded_covers_each_epoch_and_resumes(tmp_path):
    a = run.DataOrder(5, seed=3)
    first = a.take(5)
    assert sorted(first) == list(range(5))  # an epoch is a permutation
    second = a.take(5)
    assert sorted(second) == list(range(5)) and second != first  # a new order each epoch
    b = run.DataOrder(5, seed=3)
    b.take(7)
    state = b.state()
    assert state == {"epoch": 1, "cursor": 2}
    c = run.DataOrder(5, seed=3)
    c.load(state)
    assert c.take(6) == b.take(6)
    assert run.DataOrder(5, seed=4).take(5) != first
    with pytest.raises(ConfigError, match="empty"):
        run.DataOrder(0, seed=0)


def test_run_dir_is_chosen_without_being_created(tmp_path, processes, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run.choose_run_dir(str(tmp_path / "mine"), processes) == tmp_path / "mine"
    auto = run.choose_run_dir(None, processes)
    assert auto.parent.name == "runs" and len(auto.name) == len("20260101-000000")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mine").exists()
    run.open_run_dir(tmp_path / "mine", processes, {"seed": 1}, "grpo")
    assert json.loads((tmp_path / "mine" / "config.json").read_text()) == {"trainer": "grpo", "seed": 1}


def test_run_log_writes_every_logging_steps_and_the_last(tmp_path, processes):
    config = TrainConfig(max_steps=5, logging_steps=2, progress_bar=False)
    log = run.RunLog(tmp_path, processes, config, desc="t")
    log.open(0)
    for step in range(1, 6):
        log.log({"step": step, "reward_mean": 0.1 * step}, step)
    log.close()
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [2, 4, 5]
    assert len(log.history) == 5  # every step is kept in memory


def test_lr_schedules():
    """warmup 2 of 10 steps: 1/2, 2/2, then linear decay (10-2-s)/8 or cosine (1+cos(pi s/8))/2."""
    lin = lr_lambda(TrainConfig(lr_scheduler_type="linear", warmup_steps=2, max_steps=10))
    cos = lr_lambda(TrainConfig(lr_scheduler_type="cosine", warmup_steps=2, max_steps=10))
    const = lr_lambda(TrainConfig(lr_scheduler_type="constant", warmup_steps=2, max_steps=10))
    assert [lin(s) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    assert [cos(s) for s in (2, 6, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert [const(s) for s in (0, 5, 9)] == pytest.approx([0.5, 1.0, 1.0])


@dataclass
class _MethodConfig(TrainConfig):
    group: int = 2
    """A method's own field."""

    def check(self) -> None:
        super().check()
        self.check_positive("group")


def test_config_coerces_text_and_names_the_field():
    """YAML and the command line give text; a field's annotation decides what it becomes."""
    c = _MethodConfig(learning_rate="2e-5", max_steps="7", bf16="true", group="3", report_to="tensorboard, wandb")
    assert (c.learning_rate, c.max_steps, c.bf16, c.group, c.report_to) == (2e-5, 7, True, 3, ["tensorboard", "wandb"])
    assert _MethodConfig(bf16="none").bf16 is None and _MethodConfig(report_to="none").report_to == []
    with pytest.raises(ConfigError, match=r"_MethodConfig.max_steps: expected int, got 'lots'"):
        _MethodConfig(max_steps="lots")
    with pytest.raises(ConfigError, match=r"_MethodConfig.group: must be a positive integer"):
        _MethodConfig(group=0)
    with pytest.raises(ConfigError, match=r"_MethodConfig.lr_scheduler_type: got 'step'; use one of constant, linear, cosine"):
        _MethodConfig(lr_scheduler_type="step")
    with pytest.raises(ConfigError, match="unknown _MethodConfig field 'gruop'; did you mean group"):
        _MethodConfig.from_dict({"gruop": 2})
    assert ("group", 2, "A method's own field.") in _MethodConfig.field_help()
    assert _MethodConfig.from_dict(_MethodConfig(group=5).to_dict()).group == 5
