"""GRPO's pure functions against values derived by hand (derivations in each docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.trainers.grpo_trainer import (
    aggregate_loss,
    clipped_surrogate_loss,
    group_advantages,
    k3_kl,
    sampling_seed,
    selective_log_softmax,
    truncated_importance_weights,
)


def test_group_advantages_group_std():
    """Two groups of 3 (eps = 0 to keep the arithmetic exact).

    Group 1: rewards 1, 0, 0 -> mean 1/3; centred 2/3, -1/3, -1/3; unbiased std =
    sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3); advantages 2/3/sqrt(1/3) = 1.1547, -0.5774, -0.5774.
    Group 2: rewards 1, 1, 1 -> all tie: advantages 0, and the group is flagged zero-std.
    """
    r = torch.tensor([1.0, 0, 0, 1, 1, 1])
    adv, zero = group_advantages(r, torch.ones(6, dtype=torch.bool), 3, "group", eps=0.0)
    s = math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([2 / 3 / s, -1 / 3 / s, -1 / 3 / s, 0, 0, 0]), atol=1e-6)
    assert zero.tolist() == [False, True]


def test_group_advantages_invalid_outcomes_are_left_out():
    """Group of 4: rewards 1, 0, X, 1 where X (index 2) timed out (its value 99 must be ignored).

    Valid rewards 1, 0, 1 -> mean 2/3; centred 1/3, -2/3, 1/3; no scaling ("none").
    The timed-out sample gets 0.
    """
    r = torch.tensor([1.0, 0.0, 99.0, 1.0])
    valid = torch.tensor([True, True, False, True])
    adv, zero = group_advantages(r, valid, 4, "none")
    assert torch.allclose(adv, torch.tensor([1 / 3, -2 / 3, 0.0, 1 / 3]), atol=1e-6)
    assert zero.tolist() == [False]


def test_group_advantages_batch_std_and_single_valid():
    """Batch scaling: groups (1, 0) and (X, 1) with X invalid.

    Group 1: mean 1/2 -> centred 1/2, -1/2. Group 2: only one valid reward -> centred 0 and
    zero-std. Batch std over the valid rewards {1, 0, 1}: mean 2/3, unbiased var =
    (1/9 + 4/9 + 1/9) / 2 = 1/3 -> std 0.57735. Advantages 0.5/0.57735 = 0.86603, -0.86603, 0, 0.
    """
    r = torch.tensor([1.0, 0.0, 5.0, 1.0])
    valid = torch.tensor([True, True, False, True])
    adv, zero = group_advantages(r, valid, 2, "batch", eps=0.0)
    assert torch.allclose(adv, torch.tensor([0.866025, -0.866025, 0.0, 0.0]), atol=1e-5)
    assert zero.tolist() == [False, True]


def test_clipped_surrogate_loss():
    """epsilon_low 0.2, epsilon_high 0.28, three tokens of one sequence with A = +1, then A = -1.

    ratios exp(logp - old) = 1.5, 1.0, 0.5.
    A = +1: min(r, clip(r)) = min(1.5, 1.28) = 1.28; min(1, 1) = 1; min(0.5, 0.8) = 0.5 -> loss -1.28, -1, -0.5;
            clip active (high) only on token 0.
    A = -1: min(-1.5, -1.28) = -1.5; -1; min(-0.5, -0.8) = -0.8 -> loss 1.5, 1, 0.8; clip active (low) on token 2.
    """
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5], [1.5, 1.0, 0.5]]))
    loss, low, high = clipped_surrogate_loss(logp, old, torch.tensor([1.0, -1.0]), 0.2, 0.28)
    assert torch.allclose(loss, torch.tensor([[-1.28, -1.0, -0.5], [1.5, 1.0, 0.8]]), atol=1e-6)
    assert high.tolist() == [[True, False, False], [False, False, False]]
    assert low.tolist() == [[False, False, False], [False, False, True]]


def test_clipped_surrogate_gradient_is_zero_where_clipped():
    """At ratio 1.5 with A = +1 the clipped branch (constant 1.28) wins: d loss / d logp = 0.
    At ratio 1.0 the unclipped branch r * A is used: d(-r)/d logp = -r = -1.
    """
    logp = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_(True)
    loss, _, _ = clipped_surrogate_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), 0.2, 0.2)
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -1.0]]), atol=1e-6)


def test_truncated_importance_weights():
    """old - sampler = log 0.5, 0, log 3 -> raw ratios 0.5, 1, 3; with cap 2 the weights are 0.5, 1, 2."""
    old = torch.log(torch.tensor([[0.5, 1.0, 3.0]]))
    w, raw = truncated_importance_weights(old, torch.zeros(1, 3), cap=2.0)
    assert torch.allclose(raw, torch.tensor([[0.5, 1.0, 3.0]]), atol=1e-6)
    assert torch.allclose(w, torch.tensor([[0.5, 1.0, 2.0]]), atol=1e-6)
    assert not w.requires_grad


def test_k3_kl():
    """d = ref - logp. d = 0 -> e^0 - 0 - 1 = 0; d = log 2 -> 2 - 0.693147 - 1 = 0.306853;
    d = -log 2 -> 0.5 + 0.693147 - 1 = 0.193147.
    """
    logp = torch.zeros(3)
    ref = torch.tensor([0.0, math.log(2), -math.log(2)])
    assert torch.allclose(k3_kl(logp, ref), torch.tensor([0.0, 0.306853, 0.193147]), atol=1e-6)


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        # sequence means 2 and 4 -> (2 + 4) / 2 = 3
        ("grpo", 3.0),
        # token sum 10 / (2 sequences x max length 4) = 1.25
        ("dr_grpo", 1.25),
        # token sum 10 / 4 tokens = 2.5
        ("dapo", 2.5),
        # one micro-batch: 10 / 4 tokens x (2 / 2) = 2.5
        ("bnpo", 2.5),
    ],
)
def test_aggregate_loss(loss_type, expected):
    """Per-token losses [[1, 2, 3], [4, -, -]] (4 real tokens), max_completion_length 4."""
    assert aggregate_loss(PER_TOKEN, MASK, loss_type, max_completion_length=4).item() == pytest.approx(expected)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_aggregate_loss_micro_batches_add_up(loss_type):
    """Split the batch into its two rows, pass the step's totals (2 sequences, 4 tokens): the
    micro-batch losses must sum to the whole-batch loss (gradient accumulation is exact)."""
    whole = aggregate_loss(PER_TOKEN, MASK, loss_type, 4)
    parts = sum(
        aggregate_loss(PER_TOKEN[i : i + 1], MASK[i : i + 1], loss_type, 4, num_sequences=2, num_tokens=4.0) for i in range(2)
    )
    assert parts.item() == pytest.approx(whole.item())


def test_aggregate_loss_unknown_type():
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(PER_TOKEN, MASK, "ppo", 4)


def test_selective_log_softmax():
    """logits [0, log 3] -> softmax [1/4, 3/4]; token 1 -> log 0.75, token 0 -> log 0.25."""
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    out = selective_log_softmax(logits, torch.tensor([[1, 0]]))
    assert torch.allclose(out, torch.tensor([[math.log(0.75), math.log(0.25)]]), atol=1e-6)


def test_sampling_seed_is_a_fixed_function_of_its_coordinates():
    """Pinned values: a resumed run recomputes the same seeds, so the function may never drift
    (blake2b of "seed/step/round/rank", 30 bits, leaving room for per-completion offsets)."""
    assert sampling_seed(0, 5) == 135283307
    assert sampling_seed(3, 7, 2) == 688316203
    assert sampling_seed(3, 7, 2, rank=1) == 587395274
    # distinct for every (step, round) of a run and every process, and below 2**30
    coords = [(s, r, k) for s in range(200) for r in range(4) for k in range(4)]
    seeds = [sampling_seed(0, s, r, rank=k) for s, r, k in coords]
    assert len(set(seeds)) == len(coords) and max(seeds) < 2**30
    assert sampling_seed(1, 5) != sampling_seed(0, 5)
