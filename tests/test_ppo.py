"""PPO: its math against hand-derived values and a plain loop, then the trainer end to end on a tiny real
model (2-layer Llama from a config, SmolLM2's tokenizer, ``transformers`` generation)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.environments.base import Task
from rlvr.models import resolve_model
from rlvr.rewards import FunctionReward, Outcome, Sample, Status
from rlvr.trainers.config import ConfigError
from rlvr.trainers.ppo_config import PPOConfig
from rlvr.trainers.ppo_trainer import (
    PPOTrainer,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae_advantages,
    masked_whiten,
    moments_from_sums,
    per_token_rewards,
    ppo_policy_loss,
)

# =======================================================================================
# Pure math
# =======================================================================================


def gae_loop(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list[float], list[float]]:
    """The textbook recursion over one completion of len(rewards) tokens (V = 0 after the last one)."""
    n = len(rewards)
    adv = [0.0] * n
    running = 0.0
    for t in reversed(range(n)):
        next_value = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, [a + v for a, v in zip(adv, values)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.9, 0.5), (0.99, 0.0)])
def test_gae_matches_a_plain_loop_for_every_length(gamma, lam):
    torch.manual_seed(0)
    lengths = [5, 1, 3, 0, 4]
    T = max(lengths)
    rewards, values = torch.randn(len(lengths), T), torch.randn(len(lengths), T)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    rewards = rewards * mask  # padding carries no reward; its value is ignored
    adv, ret = gae_advantages(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        want_adv, want_ret = gae_loop(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
        assert adv[b, :n].tolist() == pytest.approx(want_adv, abs=1e-5)
        assert ret[b, :n].tolist() == pytest.approx(want_ret, abs=1e-5)
        assert not adv[b, n:].any() and not ret[b, n:].any()


def test_gae_with_gamma_and_lambda_one_is_the_return_minus_the_value():
    """One completion of 3 tokens, the score 1 on the last: A_t = 1 - V_t, R_t = 1."""
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.5, 0.9]])
    adv, ret = gae_advantages(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert adv.tolist()[0] == pytest.approx([0.8, 0.5, 0.1])
    assert ret.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])


def test_masked_whiten():
    """x = [1, 2, 3 | 100 (masked)]: mean 2, unbiased var 1, so the valid entries become [-1, 0, 1]."""
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = masked_whiten(x, mask)
    assert out.tolist() == [pytest.approx([-1.0, 0.0], abs=1e-6), pytest.approx([1.0, 0.0], abs=1e-6)]
    # shift_mean=False keeps the mean: [1, 2, 3] -> [1, 2, 3] (scale 1) here
    assert masked_whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx([1.0, 2.0], abs=1e-6)
    # given moments (e.g. summed over processes) replace the local ones
    assert masked_whiten(x, mask, moments=(0.0, 4.0))[0].tolist() == pytest.approx([0.5, 1.0], abs=1e-6)
    assert moments_from_sums(6.0, 14.0, 3) == pytest.approx((2.0, 1.0))
    # random data: zero mean, unit variance over the mask
    torch.manual_seed(1)
    x, mask = torch.randn(4, 7) * 3 + 5, (torch.rand(4, 7) > 0.3).float()
    w = masked_whiten(x, mask)[mask > 0]
    assert float(w.mean()) == pytest.approx(0.0, abs=1e-5) and float(w.var()) == pytest.approx(1.0, abs=1e-4)


def test_clipped_value_loss_hand_derived():
    """V_old = 0.5, R = 1, cliprange_value = 0.2, loss = 0.5 * max((V - R)^2, (clip(V, 0.3, 0.7) - R)^2):

    - V = 0.9 moved past the clip toward R: (0.9-1)^2 = 0.01, clipped (0.7-1)^2 = 0.09 -> 0.045, clipped;
    - V = 0.6 inside the band: both (0.6-1)^2 = 0.16 -> 0.08, not clipped;
    - V = 0.1 moved away from R: (0.1-1)^2 = 0.81 > (0.3-1)^2 = 0.49 -> 0.405, not clipped.
    """
    values = torch.tensor([0.9, 0.6, 0.1], requires_grad=True)
    old, ret = torch.full((3,), 0.5), torch.ones(3)
    loss, clipped = clipped_value_loss(values, old, ret, 0.2)
    assert loss.tolist() == pytest.approx([0.045, 0.08, 0.405])
    assert clipped.tolist() == [True, False, False]
    loss.sum().backward()
    # the clipped token has no gradient; the others 0.5 * 2 * (V - R)
    assert values.grad.tolist() == pytest.approx([0.0, -0.4, -0.9])


def test_per_token_kl_in_the_rewards_hand_derived():
    """beta = 0.1. Row 0: logp [-1, -2, -0.5], ref [-1.5, -1, -0.5], score 1: kl = [0.5, -1, 0],
    r = [-0.05, 0.1, 0 + 1]. Row 1 (2 tokens): logp [-1, -1], ref [-2, -1], score 0.5: kl = [1, 0],
    r = [-0.1, 0.5], padding 0. Row 2 has no token: nothing."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -7.0], [-3.0, -3.0, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    rewards, kl = per_token_rewards(torch.tensor([1.0, 0.5, 1.0]), logp, ref, mask, beta=0.1)
    assert kl.tolist() == [pytest.approx([0.5, -1.0, 0.0]), pytest.approx([1.0, 0.0, 0.0]), [0.0, 0.0, 0.0]]
    assert rewards.tolist() == [pytest.approx([-0.05, 0.1, 1.0]), pytest.approx([-0.1, 0.5, 0.0]), [0.0, 0.0, 0.0]]
    # without a reference (beta = 0): the score alone, on the last token
    rewards, kl = per_token_rewards(torch.tensor([1.0, 0.5, 1.0]), logp, None, mask, beta=0.0)
    assert rewards.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]] and not kl.any()


def test_ppo_policy_loss_hand_derived():
    """cliprange 0.2. ratio 1.5, A = 1: max(-1.5, -1.2) = -1.2 (clipped, no gradient);
    ratio 1.5, A = -1: max(1.5, 1.2) = 1.5 (not clipped); ratio 1, A = 2: -2."""
    logp = torch.log(torch.tensor([[1.5, 1.5, 1.0]])).requires_grad_()
    loss, clipped = ppo_policy_loss(logp, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, 2.0]]), 0.2)
    assert loss.tolist()[0] == pytest.approx([-1.2, 1.5, -2.0])
    assert clipped.tolist()[0] == [True, False, False]
    loss.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, 1.5, -2.0])  # d(-A * ratio)/dlogp = -A * ratio


def test_explained_variance_and_entropy():
    """Masked to the first two entries: R = [0, 2], V = [0, 1]; Var(R) = 2, Var(R - V) = Var([0, 1]) = 0.5 -> 1 - 0.25."""
    r = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert explained_variance(r, r) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 1.5), r) == pytest.approx(0.0)
    assert math.isnan(explained_variance(torch.zeros(4), torch.ones(4)))  # constant returns: undefined
    assert math.isnan(explained_variance(torch.rand(3), torch.tensor([1e-9, -1e-9, 0.0])))  # constant up to rounding
    assert explained_variance(r, r * 2, mask=torch.tensor([1.0, 1.0, 0.0, 0.0])) == pytest.approx(0.75)
    assert float(entropy_from_logits(torch.zeros(4))) == pytest.approx(math.log(4))
    assert float(entropy_from_logits(torch.tensor([0.0, -1e4]))) == pytest.approx(0.0, abs=1e-6)


# =======================================================================================
# Bad configs
# =======================================================================================


@pytest.mark.parametrize(
    "values,field",
    [
        ({"ppo_epochs": 0}, "ppo_epochs"),
        ({"num_mini_batches": 3}, "num_mini_batches"),
        ({"gamma": 1.5}, "gamma"),
        ({"lam": -0.1}, "lam"),
        ({"cliprange": 0.0}, "cliprange"),
        ({"cliprange_value": -1.0}, "cliprange_value"),
        ({"vf_coef": 0.0}, "vf_coef"),
        ({"beta": -0.1}, "beta"),
        ({"dynamic_sampling": True, "num_generations": 1}, "dynamic_sampling"),
        ({"critic_model": "/no/such/critic"}, "critic_model"),
    ],
)
def test_bad_configs_fail_naming_the_field(values, field):
    with pytest.raises(ConfigError, match=rf"PPOConfig\.{field}:"):
        PPOConfig(**values)


def test_mini_batches_must_divide_each_process_share(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="the 8 completions each of the 2 processes"):
        PPOConfig(generation_batch_size=16, num_generations=4, num_mini_batches=16)
    PPOConfig(generation_batch_size=16, num_generations=4, num_mini_batches=4)


def test_num_generations_one_is_allowed():
    assert PPOConfig(num_generations=1, generation_batch_size=8).num_generations == 1


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    """A tiny policy directory, a tiny critic with the same tokenizer, and one whose tokenizer has an extra token."""
    root = tmp_path_factory.mktemp("models")
    for name, seed in (("policy", 0), ("critic", 1)):
        tiny_causal_lm(tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    other = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    other.add_tokens(["<an-extra-token>"])
    tiny_causal_lm(other, seed=2).save_pretrained(root / "other")
    other.save_pretrained(root / "other")
    return root


def test_a_critic_with_another_tokenizer_is_refused_before_any_model_loads(model_dirs):
    with pytest.raises(ConfigError, match="PPOConfig.critic_model: .* different tokenizer"):
        PPOConfig(model=str(model_dirs / "policy"), critic_model=str(model_dirs / "other"))
    with pytest.raises(ConfigError, match="different tokenizer"):
        PPOConfig(critic_model=str(model_dirs / "other"))  # the default policy's tokenizer, read from its directory
    assert PPOConfig(model=str(model_dirs / "policy"), critic_model=str(model_dirs / "critic")).critic_model


# =======================================================================================
# The trainer on a tiny model
# =======================================================================================

TASKS = [
    Task([{"role": "user", "content": f"Say something about {w}."}], w)
    for w in ["cats", "rain", "trees", "bread", "stone", "wind"]
]


def length_reward(sample: Sample) -> float:
    """Rewards completions whose length is a multiple of 3: a signal a random tiny model can climb."""
    return 1.0 if len(sample.completion) % 3 == 0 else 0.0


def make_trainer(tokenizer, tmp_path, reward=None, critic=None, **overrides) -> PPOTrainer:
    values = {
        "generator": "hf",
        "max_steps": 2,
        "num_generations": 4,
        "generation_batch_size": 8,
        "max_completion_length": 6,
        "micro_batch_size": 4,
        "learning_rate": 1e-2,
        "value_learning_rate": 1e-2,
        "ppo_epochs": 2,
        "num_mini_batches": 2,
        "eval_max_tasks": 2,
        "eval_before": False,
        "eval_after": False,
        "save_final_model": False,
        "output_dir": str(tmp_path),
        "progress_bar": False,
        "system_prompt": None,
        "bf16": False,
    }
    values.update(overrides)
    return PPOTrainer(
        PPOConfig(**values),
        model=tiny_causal_lm(tokenizer),
        reward=reward or FunctionReward(length_reward, name="len3"),
        train_tasks=TASKS,
        eval_tasks=TASKS[:2],
        tokenizer=tokenizer,
        critic=critic,
    )


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


REQUIRED = [
    "step", "reward_mean", "reward_std", "accuracy", "completion_len_mean", "n_ok", "n_timeout", "n_error", "n_abstain",
    "n_masked", "policy_loss", "value_loss", "loss", "explained_variance", "value_clip_frac", "policy_clip_frac",
    "approx_kl", "kl", "entropy", "value_mean", "return_mean", "advantage_mean", "grad_norm", "value_grad_norm", "lr",
    "value_lr", "is_ratio_mean", "train_tokens", "useful_tokens", "step_time_s", "generation_time_s", "reward_time_s",
    "train_time_s", "weight_sync_time_s",
]  # fmt: skip


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    return [k for k, v in module.named_parameters() if not torch.equal(before[k], v)]


slow = pytest.mark.slow  # these load a model and train


@slow
def test_training_changes_the_policy_and_the_value_head_and_logs_every_metric(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, beta=0.05, eval_after=True, save_final_model=True)
    policy, head = snapshot(trainer.model), snapshot(trainer.critic.head)
    trainer.train()
    assert changed(policy, trainer.model) and len(changed(head, trainer.critic.head)) == 2
    rows = rows_of(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    for key in REQUIRED:
        assert all(key in r for r in rows), f"metric {key} missing"
    assert rows[0]["value_mean"] == 0.0 and rows[1]["value_mean"] != 0.0  # a zero-initialised head, then learning
    assert all(r["optimizer_steps"] == 4 and r["entropy"] > 0 and r["approx_kl"] >= 0 for r in rows)
    assert abs(rows[0]["is_ratio_mean"] - 1) < 1e-3  # HF generation and the trainer run one fp32 model
    assert json.loads((tmp_path / "config.json").read_text())["trainer"] == "ppo"
    assert (tmp_path / "final" / "model.safetensors").exists() and (tmp_path / "final" / "value_head.safetensors").exists()
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "final" / "value_head.safetensors"))
    assert torch.equal(saved["summary.weight"], trainer.critic.head.summary.weight.detach())


@slow
def test_a_separate_critic_trains_and_is_saved(tokenizer, tmp_path, model_dirs):
    trainer = make_trainer(tokenizer, tmp_path, critic_model=str(model_dirs / "critic"), max_steps=1, save_final_model=True)
    assert trainer.critic.model is not None and trainer.critic.model is not trainer.model
    policy, critic, head = snapshot(trainer.model), snapshot(trainer.critic.model), snapshot(trainer.critic.head)
    trainer.train()
    assert changed(policy, trainer.model) and changed(critic, trainer.critic.model) and changed(head, trainer.critic.head)
    assert rows_of(tmp_path)[0]["value_grad_norm"] > 0
    final = tmp_path / "final"
    assert (final / "model.safetensors").exists()
    assert {"model.safetensors", "config.json", "tokenizer.json", "value_head.safetensors"} <= {
        p.name for p in (final / "critic").iterdir()
    }


@slow
def test_lora_trains_the_adapters_and_the_value_head_not_the_base(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, lora_r=4, max_steps=1, beta=0.05)
    base = {k: v.clone() for k, v in trainer.model.get_base_model().state_dict().items() if "lora_" not in k}
    lora, head = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}, snapshot(trainer.critic.head)
    trainer.train()
    for k, v in trainer.model.get_base_model().state_dict().items():
        if k in base:
            assert torch.equal(v, base[k]), k
    params = dict(trainer.model.named_parameters())
    assert any(not torch.equal(v, params[k]) for k, v in lora.items())
    assert len(changed(head, trainer.critic.head)) == 2
    assert "kl" in rows_of(tmp_path)[0]  # the reference is the model with its adapters off


@slow
def test_resume_equals_uninterrupted(tokenizer, tmp_path):
    """Run 2 iterations straight; run 1 (checkpoint at 1), then a fresh trainer resumes to 2.
    Same rollouts, losses, gradient norms and final policy and value-head weights, bit for bit."""
    kw = {"max_steps": 2}
    full = make_trainer(tokenizer, tmp_path / "full", **kw)
    full.train()
    first = make_trainer(tokenizer, tmp_path / "part", save_steps=1, **kw)
    first.output_dir.mkdir(parents=True)
    first.training_step()  # interrupted after iteration 1 (its checkpoint is written)
    assert (tmp_path / "part" / "checkpoint-1" / "trainer_state.json").exists()
    resumed = make_trainer(tokenizer, tmp_path / "part", save_steps=1, **kw)
    resumed.resume(tmp_path / "part")
    assert resumed.step == 1
    resumed.train()
    a, b = rows_of(tmp_path / "full"), rows_of(tmp_path / "part")
    assert [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for key in (
            "reward_mean",
            "completion_len_mean",
            "policy_loss",
            "value_loss",
            "grad_norm",
            "value_grad_norm",
            "value_mean",
        ):
            assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])
    for k, v in full.trained.state_dict().items():
        assert torch.equal(v, resumed.trained.state_dict()[k]), k


class FlakyReward:
    """Completions of an odd character count time out, those of 2 (mod 4) fail; the rest score 1 or 0."""

    name = "flaky"

    def score(self, samples):
        out = []
        for s in samples:
            n = len(s.completion)
            if n % 2:
                out.append(Outcome(None, Status.TIMEOUT, "took too long"))
            elif n % 4 == 2:
                out.append(Outcome(None, Status.ERROR, "the check crashed"))
            else:
                out.append(Outcome(float(n % 3 == 0), Status.OK))
        return out


class FailingReward:
    """Every check errors."""

    name = "failing"

    def score(self, samples):
        return [Outcome(None, Status.ERROR, "the check crashed") for _ in samples]


@slow
def test_timeouts_and_errors_do_not_stop_training_and_are_left_out_of_the_losses(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path / "flaky", reward=FlakyReward(), max_steps=1, ppo_epochs=1)
    trainer.train()
    rows = rows_of(tmp_path / "flaky")
    assert len(rows) == 1 and sum(r["n_timeout"] + r["n_error"] for r in rows) > 0
    for r in rows:
        assert r["n_ok"] + r["n_timeout"] + r["n_error"] + r["n_abstain"] == 8
        assert r["n_masked"] == r["n_timeout"] + r["n_error"] + r["n_abstain"]
    # nothing scored: both losses are empty, so no weight moves (and nothing fails)
    trainer = make_trainer(tokenizer, tmp_path / "failing", reward=FailingReward(), max_steps=1, ppo_epochs=1)
    policy, head = snapshot(trainer.model), snapshot(trainer.critic.head)
    trainer.train()
    row = rows_of(tmp_path / "failing")[0]
    assert row["n_error"] == row["n_masked"] == 8
    assert row["policy_loss"] == row["value_loss"] == 0.0 and row["grad_norm"] == 0.0 and row["optimizer_steps"] == 0
    assert not changed(policy, trainer.model) and not changed(head, trainer.critic.head)


@slow
def test_masked_truncated_completions_give_no_gradient(tokenizer, tmp_path):
    """A random tiny model never stops within 6 tokens: with mask_truncated_completions every completion is out."""
    trainer = make_trainer(tokenizer, tmp_path, mask_truncated_completions=True, max_steps=1)
    trainer.train()
    row = rows_of(tmp_path)[0]
    if row["frac_truncated"] < 1.0:
        pytest.skip("a completion stopped; the test proves nothing")
    assert row["n_masked"] == 8 and row["policy_loss"] == 0.0 and row["optimizer_steps"] == 0
