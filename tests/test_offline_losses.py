"""The offline losses (DPO's six types and their weighted sum, KTO, ORPO) against values derived by hand.

The DPO cases share one pair: ``logp_c = -1``, ``logp_r = -2``, ``ref_c = ref_r = -1.5``,
``beta = 0.5``. So the log-ratios are ``r_c = 0.5``, ``r_r = -0.5`` and ``h = r_c - r_r = 1``:

- sigmoid:   ``-log sigmoid(0.5) = log(1 + e^-0.5) = 0.4740770``
- hinge:     ``relu(1 - 0.5 * 1) = 0.5``
- ipo (chosen 2 tokens, rejected 4): ``h_tok = 0.5/2 + 0.5/4 = 0.375``, ``(0.375 - 1/(2*0.5))^2 = 0.390625``
- robust (e = 0.1): ``(0.9 * 0.4740770 - 0.1 * log(1 + e^0.5)) / 0.8 = (0.4266693 - 0.0974077) / 0.8 = 0.4115770``
- apo_zero:  ``1 - sigmoid(0.25) + sigmoid(-0.25) = 1 - 0.5621765 + 0.4378235 = 0.8756471``
- sppo_hard: ``(0.5 - 1)^2 + (-0.5 + 1)^2 = 0.5``
- [sigmoid, ipo] with weights [1, 0.5]: ``0.4740770 + 0.5 * 0.390625 = 0.6693895``
"""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.trainers.dpo_trainer import dpo_loss, dpo_rewards
from rlvr.trainers.kto_trainer import desirable_balance, kto_kl, kto_loss

C, R, REF = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5])
TOK_C, TOK_R = torch.tensor([2.0]), torch.tensor([4.0])


@pytest.mark.parametrize(
    "loss_type, expected",
    [
        ("sigmoid", 0.4740770),
        ("hinge", 0.5),
        ("ipo", 0.390625),
        ("robust", 0.4115770),
        ("apo_zero", 0.8756471),
        ("sppo_hard", 0.5),
    ],
)
def test_each_dpo_loss_type(loss_type, expected):
    loss = dpo_loss(C, R, REF, REF, 0.5, loss_type, label_smoothing=0.1, chosen_tokens=TOK_C, rejected_tokens=TOK_R)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_weighted_combination_of_loss_types():
    loss = dpo_loss(C, R, REF, REF, 0.5, ["sigmoid", "ipo"], [1.0, 0.5], chosen_tokens=TOK_C, rejected_tokens=TOK_R)
    assert loss.item() == pytest.approx(0.6693895, abs=1e-6)


def test_robust_without_smoothing_is_sigmoid_and_the_rewards_are_beta_log_ratios():
    """``e = 0``: ``(-log sigmoid(beta h)) / 1``. Rewards: ``0.5 * 0.5 = 0.25`` and ``0.5 * -0.5 = -0.25``."""
    assert dpo_loss(C, R, REF, REF, 0.5, "robust").item() == pytest.approx(dpo_loss(C, R, REF, REF, 0.5, "sigmoid").item())
    rc, rr = dpo_rewards(C, R, REF, REF, 0.5)
    assert (rc.item(), rr.item()) == (0.25, -0.25)


def test_dpo_loss_is_per_pair_and_rejects_bad_arguments():
    """Two pairs, the second with the roles swapped (h = -1): ``-log sigmoid(-0.5) = log(1 + e^0.5) = 0.9740770``."""
    loss = dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), REF.repeat(2), REF.repeat(2), 0.5)
    assert loss.tolist() == pytest.approx([0.4740770, 0.9740770], abs=1e-6)
    with pytest.raises(ValueError, match="unknown DPO loss type"):
        dpo_loss(C, R, REF, REF, 0.5, "nope")
    with pytest.raises(ValueError, match="ipo"):
        dpo_loss(C, R, REF, REF, 0.5, "ipo")
    with pytest.raises(ValueError, match="weight"):
        dpo_loss(C, R, REF, REF, 0.5, ["sigmoid", "ipo"], [1.0])


def test_kto_loss():
    """logps [-1, -2], ref [-1.5, -1.5] -> r = [0.5, -0.5]; z0 = 0.2, beta = 0.5, w_d = 1, w_u = 2.

    desirable:   ``1 * (1 - sigmoid(0.5 * (0.5 - 0.2))) = 1 - sigmoid(0.15) = 0.4625702``
    undesirable: ``2 * (1 - sigmoid(0.5 * (0.2 + 0.5))) = 2 * (1 - sigmoid(0.35)) = 0.8267644``
    """
    losses = kto_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.5]), torch.tensor([True, False]), 0.2, 0.5, 1.0, 2.0)
    assert losses.tolist() == pytest.approx([0.4625702, 0.8267644], abs=1e-6)


def test_kto_kl_reference_point_is_a_clamped_mean():
    """diffs [-3 - -2, -1 - -4] = [-1, 3] -> mean 1; [-3 - -1] = [-2] -> clamped to 0."""
    assert kto_kl(torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -4.0])).item() == 1.0
    assert kto_kl(torch.tensor([-3.0]), torch.tensor([-1.0])).item() == 0.0


def test_kto_desirable_balance():
    """(1 * 30) / (1 * 20) = 1.5 (outside [1, 4/3]); (1 * 30) / (1.25 * 20) = 1.2 (inside)."""
    assert desirable_balance(30, 20, 1.0, 1.0) == 1.5
    assert desirable_balance(30, 20, 1.0, 1.25) == pytest.approx(1.2)
    assert desirable_balance(3, 0, 1.0, 1.0) == math.inf


def test_orpo_loss():
    """Mean log-probs ``a_c = log 0.5``, ``a_r = log 0.25``: odds ``0.5/0.5 = 1`` and ``0.25/0.75 = 1/3``,
    log-odds ratio ``log 3``; ``log sigmoid(log 3) = log(3/4) = -0.2876821``.
    With NLL 1.2 and beta 0.1: ``1.2 + 0.1 * 0.2876821 = 1.2287682``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from rlvr.experimental.orpo_trainer import log1mexp, odds_ratio_terms, orpo_loss

    a_c, a_r = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    ratio, log_odds = odds_ratio_terms(a_c, a_r)
    assert log_odds.item() == pytest.approx(math.log(3), abs=1e-6)
    assert ratio.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert orpo_loss(torch.tensor(1.2), a_c, a_r, 0.1).item() == pytest.approx(1.2287682, abs=1e-6)
    # log(1 - e^x) on both sides of the branch at -ln 2, and far out where the naive form underflows
    x = torch.tensor([-0.1, -2.0, -50.0], dtype=torch.float64)
    assert log1mexp(x).tolist() == pytest.approx([math.log(1 - math.exp(-0.1)), math.log(1 - math.exp(-2.0)), -math.exp(-50.0)])
