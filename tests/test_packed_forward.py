"""The shared-prefix packed training forward equals the padded one it replaces.

``completion_logprobs`` packs each group's prompt once, followed by its completions, and reads
the rows with a block-causal mask. The reference here is the computation it replaced: one row
per completion (its prompt, left-padded, then the completion, right-padded) through the same
model. Log-probs, a GRPO loss built from them, every parameter's gradient and the hidden states
a value head reads must agree (1e-5 relative in fp32).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import pytest
import torch
from conftest import tiny_causal_lm
from transformers import AutoTokenizer

from rlvr.environments.base import Task
from rlvr.generation import Generation
from rlvr.models import resolve_model
from rlvr.rewards import Outcome, Status
from rlvr.trainers.grpo_trainer import aggregate_loss, clipped_surrogate_loss
from rlvr.trainers.modeling import completion_logprobs, packed_attention_mask, selective_log_softmax
from rlvr.trainers.rollouts import Rollout, batch_tensors, pack_rollouts, token_counts

CPU = torch.device("cpu")
TASK = Task([{"role": "user", "content": "?"}])


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def make_rollouts(groups: list[tuple[int, list[int]]], vocab: int, seed: int = 0) -> list[Rollout]:
    """Rollouts of random tokens: ``groups`` lists ``(prompt_length, [completion lengths])``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for prompt_len, lengths in groups:
        prompt = torch.randint(1, vocab, (prompt_len,), generator=gen).tolist()
        for n in lengths:
            completion = torch.randint(1, vocab, (n,), generator=gen).tolist()
            out.append(Rollout(TASK, Generation("", prompt, completion), Outcome(1.0, Status.OK)))
    return out


# prompts of different lengths (left padding in the reference), completions of 0, 1 and more tokens,
# several groups in one micro-batch
GROUPS = [(7, [5, 1, 9, 0]), (13, [3, 8, 1]), (4, [1, 6])]


def padded_logprobs(model, batch, temperature: float, bf16: bool = False):
    """The reference: one row per completion (prompt left-padded + completion right-padded)."""
    prompt_ids, prompt_attn = batch["prompt_ids"], batch["prompt_attention_mask"]
    idx, comp = batch["prefix_index"], batch["completion_ids"]
    C = comp.shape[1]
    ids = torch.cat([prompt_ids[idx], comp], dim=1)
    attn = torch.cat([prompt_attn[idx], batch["completion_mask"].long()], dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
            output_hidden_states=True,
            use_cache=False,
        )
    mask = batch["completion_mask"]
    logp = selective_log_softmax(out.logits[:, -C - 1 : -1].float() / temperature, comp) * mask
    hidden = out.hidden_states[-1][:, -C - 1 : -1] * mask[..., None]
    return logp, hidden


def grpo_loss(logp: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A GRPO loss with clipping active on some tokens (old log-probs shifted by fixed noise)."""
    gen = torch.Generator().manual_seed(1)
    old = logp.detach() + 0.3 * torch.randn(logp.shape, generator=gen)
    advantages = torch.randn(logp.shape[0], generator=gen)
    per_token, _, _ = clipped_surrogate_loss(logp, old, advantages, 0.2, 0.28)
    return aggregate_loss(per_token, batch["completion_mask"], "grpo", logp.shape[1])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` (norms over the whole tensor)."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def rloo_loss(logp: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """RLOO's loss: the sequence-level clipped ratio times leave-one-out advantages, with the KL in the reward."""
    from rlvr.trainers.rloo_trainer import kl_penalized_rewards, rloo_advantages, sequence_clipped_loss

    gen = torch.Generator().manual_seed(2)
    mask = batch["completion_mask"]
    old = logp.detach() + 0.05 * torch.randn(logp.shape, generator=gen)
    rewards, _ = kl_penalized_rewards(torch.rand(logp.shape[0], generator=gen), old, old - 0.1, mask, beta=0.05)
    n = 2 if logp.shape[0] % 2 == 0 else 1
    adv, _ = rloo_advantages(rewards, torch.ones(logp.shape[0], dtype=torch.bool), n) if n > 1 else (rewards, None)
    per_seq, _, _ = sequence_clipped_loss((logp * mask).sum(-1), (old * mask).sum(-1), adv, 0.2, 0.2)
    return per_seq.mean()


def reinforce_pp_loss(logp: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """REINFORCE++'s loss: per-token KL rewards, returns, global whitening, the clipped per-token objective."""
    from rlvr.experimental.reinforce_pp_trainer import discounted_returns, global_whiten, token_clipped_loss, token_rewards

    gen = torch.Generator().manual_seed(3)
    mask = batch["completion_mask"]
    old = logp.detach() + 0.2 * torch.randn(logp.shape, generator=gen)
    rewards = token_rewards(torch.rand(logp.shape[0], generator=gen), mask, 0.05, old, old - 0.1)
    adv = global_whiten(discounted_returns(rewards, mask, 1.0), mask)
    per_token, _, _ = token_clipped_loss(logp, old, adv, 0.2, 0.2)
    return (per_token * mask).sum() / mask.sum()


def ppo_loss(logp: torch.Tensor, batch: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """PPO's policy loss on GAE advantages plus the clipped value loss of a value head on the hidden states."""
    from rlvr.trainers.ppo_trainer import clipped_value_loss, gae_advantages, masked_whiten, per_token_rewards, ppo_policy_loss

    gen = torch.Generator().manual_seed(4)
    mask = batch["completion_mask"]
    head = torch.randn(hidden.shape[-1], generator=gen) / hidden.shape[-1] ** 0.5
    values = (hidden.float() @ head) * mask
    old = logp.detach() + 0.2 * torch.randn(logp.shape, generator=gen)
    rewards, _ = per_token_rewards(torch.rand(logp.shape[0], generator=gen), old, old - 0.1, mask, 0.05)
    adv, returns = gae_advantages(rewards, values.detach(), mask, 1.0, 0.95)
    adv = masked_whiten(adv, mask)
    policy, _ = ppo_policy_loss(logp, old, adv, 0.2)
    value, _ = clipped_value_loss(values, values.detach() + 0.1, returns, 0.2)
    return ((policy + 0.1 * value) * mask).sum() / mask.sum()


LOSSES = {
    "grpo": lambda logp, batch, hidden: grpo_loss(logp, batch) + 1e-3 * hidden.float().pow(2).sum(),
    "rloo": lambda logp, batch, hidden: rloo_loss(logp, batch),
    "reinforce_pp": lambda logp, batch, hidden: reinforce_pp_loss(logp, batch),
    "ppo": ppo_loss,
}


def run_both(model, batch, temperature=0.7, bf16=False, packed_model=None, method="grpo"):
    """Log-probs, loss, gradients and hidden states from the packed and the padded forward.

    ``method`` picks the loss built on them: each online trainer's own (its pure functions)."""
    results = []
    for which, m in (("packed", packed_model or model), ("padded", model)):
        m.zero_grad(set_to_none=True)
        if which == "packed":
            logp, hidden = completion_logprobs(m, batch, temperature, bf16, CPU, return_hidden=True)
        else:
            logp, hidden = padded_logprobs(m, batch, temperature, bf16)
        loss = LOSSES[method](logp, batch, hidden)  # grpo adds a value-head-like term on the hidden states
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        results.append((logp.detach(), hidden.detach().float(), loss.detach(), grads))
    return results


def assert_same(packed, padded, mask, tol: float, loss_tol: float | None = None) -> None:
    """Log-probs and hidden states within ``tol``; the loss and every gradient within ``loss_tol`` (default ``tol``)."""
    loss_tol = tol if loss_tol is None else loss_tol
    logp, hidden, loss, grads = packed
    ref_logp, ref_hidden, ref_loss, ref_grads = padded
    assert logp.shape == ref_logp.shape and hidden.shape == ref_hidden.shape
    assert torch.all(logp[mask == 0] == 0) and torch.all(hidden[mask == 0] == 0)
    assert rel_err(logp, ref_logp) < tol, rel_err(logp, ref_logp)
    torch.testing.assert_close(logp, ref_logp, rtol=tol, atol=tol * float(ref_logp.abs().max()))
    assert rel_err(hidden, ref_hidden) < tol, rel_err(hidden, ref_hidden)
    assert rel_err(loss, ref_loss) < loss_tol, (float(loss), float(ref_loss))
    assert grads.keys() == ref_grads.keys() and grads
    worst = max(grads, key=lambda n: rel_err(grads[n], ref_grads[n]))
    assert rel_err(grads[worst], ref_grads[worst]) < loss_tol, (worst, rel_err(grads[worst], ref_grads[worst]))


# ------------------------------------------------------------------------------------- layout


def test_pack_layout_positions_targets_and_counts():
    """Hand-checked layout: 2 groups (prompts of 3 and 2 tokens), completions [2, 0] and [1, 3]."""
    prompts = [[11, 12, 13], [11, 12, 13], [21, 22], [21, 22]]
    completions = [[31, 32], [], [41], [42, 43, 44]]
    p = pack_rollouts(prompts, completions, pad_id=0)
    # segments: [11 12 13 31 32] (5) and [21 22 41 42 43 44] (6): width 6, no room to share, 2 rows
    assert p["packed_input_ids"].tolist() == [[11, 12, 13, 31, 32, 0], [21, 22, 41, 42, 43, 44]]
    assert p["packed_position_ids"].tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 2, 3, 4]]
    assert p["packed_prefix_ids"].tolist() == [[0, 0, 0, 0, 0, -1], [0, 0, 0, 0, 0, 0]]
    assert p["packed_sequence_ids"].tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 1, 2, 2, 2]]
    # completion 0: tokens 31, 32 predicted at (0,2), (0,3); completion 2: 41 at (1,1); completion 3 at (1,1), (1,3), (1,4)
    assert p["packed_target_index"].tolist() == [2, 3, 6 + 1, 6 + 1, 6 + 3, 6 + 4]
    mask = packed_attention_mask(p["packed_prefix_ids"], p["packed_sequence_ids"])[1, 0]
    assert mask[5].tolist() == [True, True, False, True, True, True]  # 44 sees its prompt and its own tokens, not 41
    assert mask[2].tolist() == [True, True, True, False, False, False]


def test_groups_share_rows_and_long_groups_split():
    """Short groups fill a row first-fit-decreasing; a group past ``max_row_tokens`` is split, its prompt repeated."""
    prompts = [[1] * 10] * 2 + [[2] * 3] + [[3] * 3]
    completions = [[5] * 6, [6] * 4, [7] * 2, [8] * 3]
    p = pack_rollouts(prompts, completions, pad_id=0)
    assert p["packed_input_ids"].shape == (2, 20)  # [group 1] and [group 2 + group 3]: 20 and 5 + 6 tokens
    assert p["packed_prefix_ids"][1].tolist() == [0] * 5 + [1] * 6 + [-1] * 9
    split = pack_rollouts(prompts, completions, pad_id=0, max_row_tokens=16)
    # group 1 splits into [prompt + 6] (16) and [prompt + 4] (14); group 3 (6) does not fit beside the latter, group 2 (5) does
    assert split["packed_input_ids"].shape == (3, 16)
    assert split["packed_input_ids"][0].tolist() == [1] * 10 + [5] * 6
    assert split["packed_input_ids"][1].tolist() == [1] * 10 + [6] * 4 + [0] * 2
    assert split["packed_input_ids"][2].tolist() == [2] * 3 + [7] * 2 + [3] * 3 + [8] * 3 + [0] * 5
    assert (split["packed_input_ids"] == 1).sum() == 20


def test_token_counts(tokenizer):
    rollouts = make_rollouts(GROUPS, len(tokenizer))
    batch = batch_tensors(rollouts, tokenizer.pad_token_id)
    train, useful = token_counts(batch)
    lengths = [7 + 15, 13 + 12, 4 + 7]
    assert useful == sum(lengths) and train == batch["packed_input_ids"].numel() >= useful
    assert batch["packed_input_ids"].shape[1] == max(lengths) and train < useful + max(lengths)
    assert batch["packed_target_index"].numel() == int(batch["completion_mask"].sum())


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="empty prompt"):
        pack_rollouts([[]], [[1]], pad_id=0)
    with pytest.raises(ValueError, match="max_row_tokens"):
        pack_rollouts([[1]], [[1]], pad_id=0, max_row_tokens=0)
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        packed_attention_mask(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), "flash_attention_2")


# ------------------------------------------------------------------------------------- equality


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("max_row_tokens", [4096, 20])
def test_tiny_model_matches_padded(tokenizer, attn, max_row_tokens):
    """fp32 tiny Llama: packed == padded for log-probs, loss, gradients and hidden states (also with split groups)."""
    model = tiny_causal_lm(tokenizer).train()
    model.set_attn_implementation(attn)
    batch = batch_tensors(make_rollouts(GROUPS, len(tokenizer)), tokenizer.pad_token_id, max_row_tokens=max_row_tokens)
    if max_row_tokens == 20:
        assert batch["packed_input_ids"].shape[0] > len(GROUPS)  # a group was split over rows
    packed, padded = run_both(model, batch)
    assert_same(packed, padded, batch["completion_mask"], 1e-5)


@pytest.mark.slow
def test_broken_mask_is_caught(tokenizer):
    """The comparison can fail: letting a group's completions see each other changes the log-probs."""
    model = tiny_causal_lm(tokenizer).train()
    batch = batch_tensors(make_rollouts(GROUPS, len(tokenizer)), tokenizer.pad_token_id)
    broken = dict(batch, packed_sequence_ids=batch["packed_sequence_ids"].clamp(max=1))
    with torch.no_grad():
        ref, _ = padded_logprobs(model, batch, 1.0)
        good = completion_logprobs(model, batch, 1.0, False, CPU)
        bad = completion_logprobs(model, broken, 1.0, False, CPU)
    assert rel_err(good, ref) < 1e-5
    assert rel_err(bad, ref) > 1e-4  # 100x the tolerance (the tiny random model is close to uniform)


@pytest.mark.slow
def test_gradient_checkpointing_and_bf16(tokenizer):
    """Gradient checkpointing (non-reentrant, as ``load_policy`` sets it) and bf16 autocast (looser tolerance)."""
    model = tiny_causal_lm(tokenizer, hidden=64).train()
    batch = batch_tensors(make_rollouts(GROUPS, len(tokenizer), seed=3), tokenizer.pad_token_id)
    reference = run_both(model, batch)[1]
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    packed, padded = run_both(model, batch)
    assert_same(packed, padded, batch["completion_mask"], 1e-5)
    assert_same(packed, reference, batch["completion_mask"], 1e-5)
    packed, padded = run_both(model, batch, bf16=True)
    assert_same(packed, padded, batch["completion_mask"], 3e-2)


@pytest.mark.slow
def test_lora_model_matches_padded(tokenizer):
    """A ``peft`` LoRA model: the adapters' gradients agree, and so does the model with its adapters off."""
    from peft import LoraConfig, get_peft_model

    model = tiny_causal_lm(tokenizer)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.train()
    batch = batch_tensors(make_rollouts(GROUPS, len(tokenizer), seed=5), tokenizer.pad_token_id)
    packed, padded = run_both(model, batch)
    assert all("lora_" in n for n in packed[3])
    assert_same(packed, padded, batch["completion_mask"], 1e-5)
    with torch.no_grad(), model.disable_adapter():
        off = completion_logprobs(model, batch, 1.0, False, CPU)
        ref, _ = padded_logprobs(model, batch, 1.0)
    assert rel_err(off, ref) < 1e-5 and rel_err(off, packed[0]) > 1e-3


@pytest.mark.slow
def test_distributed_data_parallel_wrapper(tokenizer):
    """Through a ``DistributedDataParallel`` wrapper (one gloo process): same values and gradients."""
    import torch.distributed as dist

    model = tiny_causal_lm(tokenizer).train()
    batch = batch_tensors(make_rollouts(GROUPS, len(tokenizer), seed=7), tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1)
        try:
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            packed, padded = run_both(model, batch, packed_model=ddp)
        finally:
            with contextlib.suppress(Exception):
                del ddp
            dist.destroy_process_group()
    assert_same(packed, padded, batch["completion_mask"], 1e-5)


@pytest.mark.slow
def test_smollm2_matches_padded(tokenizer):
    """The real SmolLM2-135M in fp32: packed == padded within 1e-5 (log-probs, loss, every gradient, hidden states)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), dtype=torch.float32).train()
    batch = batch_tensors(make_rollouts([(9, [6, 1, 0]), (17, [4, 7])], len(tokenizer), seed=11), tokenizer.pad_token_id)
    packed, padded = run_both(model, batch)
    assert_same(packed, padded, batch["completion_mask"], 1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rloo", "reinforce_pp", "ppo"])
def test_every_online_trainers_loss_matches_padded(tokenizer, method):
    """RLOO, REINFORCE++ and PPO (policy + value head) losses built on the packed forward equal the
    padded computation's, gradients included: the tiny model, and SmolLM2-135M in fp32."""
    import warnings

    from transformers import AutoModelForCausalLM

    warnings.simplefilter("ignore", FutureWarning)  # REINFORCE++ is experimental
    tiny = tiny_causal_lm(tokenizer).train()
    batch = batch_tensors(make_rollouts(GROUPS, len(tokenizer)), tokenizer.pad_token_id)
    packed, padded = run_both(tiny, batch, method=method)
    assert_same(packed, padded, batch["completion_mask"], 1e-5)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), dtype=torch.float32).train()
    batch = batch_tensors(make_rollouts([(9, [6, 1, 3, 2]), (17, [4, 7, 5, 1])], len(tokenizer), seed=11), tokenizer.pad_token_id)
    packed, padded = run_both(model, batch, method=method)
    # log-probs and hidden states within 1e-5 as for GRPO; RLOO's loss is a small mean of sequence sums of both
    # signs and PPO's gradient runs through 30 layers twice (policy and value): fp32 round-off reaches ~4e-5 there
    assert_same(packed, padded, batch["completion_mask"], 1e-5, loss_tol=1e-4)
