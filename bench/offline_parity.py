"""rlvr's offline losses vs TRL 1.16's own code, on the same seeded batch of random log-probs.

Every DPO loss type (and weighted combinations), KTO, ORPO and the Bradley-Terry reward-model
loss (with a margin and the centering term) must equal TRL's value to 1e-6. TRL's values come
from TRL's own methods, called without building a trainer:

- DPO: ``trl.DPOTrainer._compute_loss`` (1.16 has no separate ``dpo_loss``; the losses are
  inside it) as an unbound method on a minimal object carrying the attributes it reads
  (``beta``, ``loss_types``, ``loss_weights``, ``label_smoothing``, ``f_divergence_type``,
  ``ld_alpha``, ``use_weighting``, ``precompute_ref_logps=True`` so the reference log-probs
  come from the inputs, a pass-through ``accelerator``, the metric stores). The "model" it
  calls returns the seeded per-token log-probs (and zero entropy / logits for its metrics)
  where TRL's fused LM head would return the model's: the loss code after that is TRL's.
- KTO: ``trl.KTOTrainer._compute_loss`` the same way, with its ``_compute_kl_logps`` bound to
  the object; the batch carries the mismatched KL rows and the precomputed reference
  log-probs (``ref_logps``, ``ref_KL_logps``).
- ORPO: ``trl.experimental.orpo.ORPOTrainer.odds_ratio_loss`` (unbound, ``beta`` and an
  ``accelerator`` on the object), and TRL's ``loss = nll - losses.mean()``.
- Reward model: ``trl.RewardTrainer.compute_loss`` (unbound; the "model" returns the seeded
  rewards as logits; ``args.center_rewards_coefficient`` set), against
  ``rlvr.trainers.reward_trainer.reward_model_loss``.

The reference log-probs are the policy's plus N(0, 1) noise (log-ratios of the size training
sees; the policy starts as the reference). Both sides compute in float32; a weighted combination
is ``sum_i w_i * mean(loss_i)`` in TRL and ``mean(sum_i w_i * loss_i)`` in rlvr (the per-pair form
micro-batching needs), equal up to float32 rounding.

    python bench/offline_parity.py            # prints a table; exit status 1 if any difference exceeds 1e-6
"""

from __future__ import annotations

import sys
import types
import warnings
from collections import defaultdict
from types import SimpleNamespace

import torch

TOL = 1e-6


class PassThroughAccelerator:
    """What TRL's loss code asks of ``accelerate`` with one process."""

    device = torch.device("cpu")

    def gather_for_metrics(self, x):
        return x

    def gather(self, x):
        return x

    def unwrap_model(self, m):
        return m


class LogProbModel:
    """Stands in for a model with TRL's fused LM head: returns the given per-token log-probs for the given rows."""

    training = True

    def __init__(self, by_ids: dict[int, torch.Tensor]) -> None:
        self.by_ids = by_ids

    def __call__(self, input_ids, **kwargs):
        logps = self.by_ids[input_ids.data_ptr()]
        zeros = torch.zeros_like(logps)
        return SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def random_batch(seed: int, batch: int = 8, width: int = 12):
    """Rows of random per-token log-probs with a prompt part and a completion part of random lengths."""
    g = torch.Generator().manual_seed(seed)
    prompt_len = torch.randint(2, 5, (batch,), generator=g)
    comp_len = torch.randint(1, width - 5, (batch,), generator=g)
    completion_mask = torch.zeros(batch, width, dtype=torch.long)
    attention_mask = torch.zeros(batch, width, dtype=torch.long)
    for i in range(batch):
        attention_mask[i, : prompt_len[i] + comp_len[i]] = 1
        completion_mask[i, prompt_len[i] : prompt_len[i] + comp_len[i]] = 1
    input_ids = torch.randint(0, 100, (batch, width), generator=g)
    # per-token log-probs of token t+1 (TRL's shifted layout), 0 where the label is not a completion token
    shifted = -torch.rand(batch, width - 1, generator=g, dtype=torch.float64).float() * 3
    shifted = shifted * completion_mask[:, 1:]
    return input_ids, attention_mask, completion_mask, shifted


def dpo_parity() -> list[tuple[str, float, float]]:
    from trl import DPOTrainer as TRLDPOTrainer

    from rlvr.trainers.dpo_trainer import dpo_loss

    input_ids, attention_mask, completion_mask, shifted = random_batch(0, batch=16)
    B = 8
    g = torch.Generator().manual_seed(1)
    # the reference near the policy, as in training (the policy starts AS the reference): log-ratios ~ N(0, 1)
    ref = shifted.sum(1) + torch.randn(2 * B, generator=g)
    rows = []
    cases = [([t], None) for t in ("sigmoid", "hinge", "ipo", "robust", "apo_zero", "sppo_hard")]
    cases.append((["sigmoid", "ipo"], [1.0, 0.5]))
    cases.append((["robust", "sppo_hard", "apo_zero"], [0.3, 0.2, 1.5]))
    for loss_types, weights in cases:
        fake = SimpleNamespace(
            model=SimpleNamespace(training=True), accelerator=PassThroughAccelerator(), aux_loss_enabled=False, ld_alpha=None,
            precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=loss_types,
            loss_weights=weights or [1.0] * len(loss_types), beta=0.3, label_smoothing=0.15, use_weighting=False,
            _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
            args=SimpleNamespace(discopop_tau=0.05),
        )  # fmt: skip
        model = LogProbModel({input_ids.data_ptr(): shifted})
        inputs = {
            "input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
            "ref_chosen_logps": ref[:B], "ref_rejected_logps": ref[B:],
        }  # fmt: skip
        trl_value = TRLDPOTrainer._compute_loss(fake, model, inputs, return_outputs=False).item()
        sums = shifted.sum(1)
        counts = completion_mask.sum(1).float()
        ours = dpo_loss(
            sums[:B], sums[B:], ref[:B], ref[B:], 0.3, loss_types, weights, 0.15, counts[:B], counts[B:]
        ).mean().item()  # fmt: skip
        name = "+".join(f"{w}*{t}" for t, w in zip(loss_types, weights)) if weights else loss_types[0]
        rows.append((f"DPO {name}", trl_value, ours))
    return rows


def kto_parity() -> list[tuple[str, float, float]]:
    from trl import KTOTrainer as TRLKTOTrainer

    from rlvr.trainers.kto_trainer import kto_kl, kto_loss

    input_ids, attention_mask, completion_mask, shifted = random_batch(2)
    kl_ids, kl_attn, kl_comp, kl_shifted = random_batch(3)
    g = torch.Generator().manual_seed(4)
    label = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    ref = shifted.sum(1) + torch.randn(8, generator=g)
    rows = []
    for shift, name in ((-0.5, "z0 > 0"), (0.5, "z0 clamped to 0")):
        ref_kl = kl_shifted.sum(1) + shift + 0.1 * torch.randn(8, generator=g)
        fake = SimpleNamespace(
            model=SimpleNamespace(training=True), accelerator=PassThroughAccelerator(), aux_loss_enabled=False,
            calculate_KL=True, precompute_ref_logps=True, loss_type="kto", beta=0.2, desirable_weight=1.0,
            undesirable_weight=1.33, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
            _total_train_tokens=0, _tp_size=1,
        )  # fmt: skip
        fake._compute_kl_logps = types.MethodType(TRLKTOTrainer._compute_kl_logps, fake)
        model = LogProbModel({input_ids.data_ptr(): shifted, kl_ids.data_ptr(): kl_shifted})
        inputs = {
            "input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
            "KL_input_ids": kl_ids, "KL_attention_mask": kl_attn, "KL_completion_mask": kl_comp, "label": label,
            "ref_logps": ref, "ref_KL_logps": ref_kl,
        }  # fmt: skip
        trl_value = TRLKTOTrainer._compute_loss(fake, model, inputs, return_outputs=False).item()
        z0 = kto_kl(kl_shifted.sum(1), ref_kl)
        ours = kto_loss(shifted.sum(1), ref, label.bool(), z0, 0.2, 1.0, 1.33).mean().item()
        rows.append((f"KTO ({name}: {float(z0):.3g})", trl_value, ours))
    return rows


def orpo_parity() -> list[tuple[str, float, float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOTrainer as TRLORPOTrainer

        from rlvr.experimental.orpo_trainer import orpo_loss

    g = torch.Generator().manual_seed(5)
    chosen = -torch.rand(8, generator=g) * 3 - 1e-3  # per-token MEAN log-probs (< 0)
    rejected = -torch.rand(8, generator=g) * 3 - 1e-3
    nll = torch.tensor(1.7)
    fake = SimpleNamespace(beta=0.25, accelerator=PassThroughAccelerator())
    losses, *_ = TRLORPOTrainer.odds_ratio_loss(fake, chosen, rejected)
    trl_value = (nll - losses.mean()).item()
    return [("ORPO (nll - mean(beta log sigmoid(log odds)))", trl_value, orpo_loss(nll, chosen, rejected, 0.25).item())]


def reward_parity() -> list[tuple[str, float, float]]:
    from trl import RewardTrainer as TRLRewardTrainer

    from rlvr.trainers.reward_trainer import reward_model_loss

    g = torch.Generator().manual_seed(6)
    rewards = torch.randn(16, 1, generator=g) * 2
    margin = torch.rand(8, generator=g)
    rows = []
    for center in (None, 0.01):
        for use_margin in (False, True):
            fake = SimpleNamespace(
                model=SimpleNamespace(training=True), accelerator=PassThroughAccelerator(),
                args=SimpleNamespace(center_rewards_coefficient=center), _metrics={"train": defaultdict(list)},
                _total_train_tokens=0, _tp_size=1,
            )  # fmt: skip
            inputs = {"input_ids": torch.zeros(16, 4, dtype=torch.long), "attention_mask": torch.ones(16, 4, dtype=torch.long)}
            if use_margin:
                inputs["margin"] = margin
            model = lambda **kw: SimpleNamespace(logits=rewards)  # noqa: E731 -- the "model" returns the seeded rewards
            trl_value = TRLRewardTrainer.compute_loss(fake, model, inputs).item()
            ours = reward_model_loss(rewards[:8, 0], rewards[8:, 0], margin if use_margin else None, center).item()
            rows.append((f"reward model (margin {use_margin}, center {center})", trl_value, ours))
    return rows


def main() -> int:
    import trl

    rows = dpo_parity() + kto_parity() + orpo_parity() + reward_parity()
    print(f"TRL {trl.__version__}, torch {torch.__version__}; tolerance {TOL}\n")
    print("| loss | TRL | rlvr | abs diff | ok |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name, theirs, ours in rows:
        diff = abs(theirs - ours)
        worst = max(worst, diff)
        print(f"| {name} | {theirs:.9f} | {ours:.9f} | {diff:.2e} | {'yes' if diff <= TOL else 'NO'} |")
    print(f"\n{len(rows)} cases, largest difference {worst:.2e}")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
