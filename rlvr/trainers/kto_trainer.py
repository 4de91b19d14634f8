r"""KTO: Kahneman-Tversky Optimization on unpaired desirable / undesirable examples, top to bottom.

One optimizer step (``KTOTrainer.training_step``):

1. **Examples.** Take ``batch_size / world_size`` examples of this process's shard in a seeded
   order that is part of the checkpoint. An example is a prompt, a completion and a label
   (desirable or not): from a labels file, or a pairs file unpaired (each pair gives its
   chosen as desirable and its rejected as undesirable).
2. **KL reference point** ``z0`` (no gradient): each prompt of the batch is paired with the
   completion of the example before it in the batch (completions shifted by one, as TRL
   does: ``(x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1})``), and
   ``z0 = max(0, mean(logp(y'|x) - ref_logp(y'|x)))`` over those mismatched pairs of every
   process (:func:`kto_kl`).
3. **Log-probs** of each example's completion, summed over its tokens, under the policy
   (in micro-batches, with gradient) and the reference (the initial model: a frozen copy, or
   under LoRA the policy with adapters off; live or precomputed once).
4. **Loss** (:func:`kto_loss`), with ``r = logp - ref_logp``:
   desirable ``w_d * (1 - sigmoid(beta (r - z0)))``, undesirable
   ``w_u * (1 - sigmoid(beta (z0 - r)))``; the step's loss is their mean over all its
   examples -- TRL 1.16's ``KTOTrainer`` loss (``bench/offline_parity.py``).
5. **Step**: gradients averaged over the processes, clipped, AdamW.

``desirable_weight`` / ``undesirable_weight`` balance the two kinds: the KTO paper recommends
``(w_d * n_desirable) / (w_u * n_undesirable)`` in ``[1, 4/3]``; outside it the trainer warns
with the weights that would bring it back.

Metrics: ``loss``, ``kl``, ``rewards/chosen`` / ``rewards/rejected`` (mean ``beta r`` of the
desirable / undesirable examples), ``rewards/margins``, ``logps/chosen`` / ``logps/rejected``,
``grad_norm``, ``lr``, ``step_time_s``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlvr.environments.base import Environment, Task
from rlvr.preferences import Label
from rlvr.rewards import Reward
from rlvr.trainers import modeling, offline, run
from rlvr.trainers.config import ConfigError
from rlvr.trainers.kto_config import KTOConfig
from rlvr.trainers.offline import EncodedLabel

logger = logging.getLogger(__name__)

__all__ = ["KTOTrainer", "desirable_balance", "kto_kl", "kto_loss"]

# Eq. (8) of the KTO paper: (w_d * n_d) / (w_u * n_u) should lie in this range
BALANCE_RANGE = (1.0, 4.0 / 3.0)


# =======================================================================================
# Pure math
# =======================================================================================


def kto_kl(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """The KL reference point ``z0 = max(0, mean(kl_logps - ref_kl_logps))``, without gradient.

    ``kl_logps`` / ``ref_kl_logps`` are ``[N]`` summed log-probs of mismatched
    (prompt, completion) pairs under the policy and the reference.
    """
    return (kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-example weighted KTO loss ``[N]`` (the step's loss is its mean).

    ``r = logps - ref_logps``; a desirable example (``desirable`` True) costs
    ``desirable_weight * (1 - sigmoid(beta * (r - kl)))``, an undesirable one
    ``undesirable_weight * (1 - sigmoid(beta * (kl - r)))``.
    """
    r = logps - ref_logps
    chosen = desirable_weight * (1 - torch.sigmoid(beta * (r - kl)))
    rejected = undesirable_weight * (1 - torch.sigmoid(beta * (kl - r)))
    return torch.where(desirable.bool(), chosen, rejected)


def desirable_balance(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float) -> float:
    """``(desirable_weight * n_desirable) / (undesirable_weight * n_undesirable)`` (inf without undesirable examples)."""
    if n_undesirable == 0:
        return float("inf")
    return (desirable_weight * n_desirable) / (undesirable_weight * n_undesirable)


# =======================================================================================
# Trainer
# =======================================================================================


class KTOTrainer:
    """KTO on labelled completions.

    Args:
        config: The run's :class:`KTOConfig`.
        model: A causal LM module, or a name/path (``config.model`` when ``None``).
        labels: The examples (desirable or not).
        tokenizer: Defaults to the model directory's tokenizer.
        peft_config: A ``peft`` config (overrides ``config.lora_r``).
        env / reward / eval_tasks: The held-out evaluation (the env's ``test`` split).
    """

    name = "kto"

    def __init__(
        self,
        config: KTOConfig,
        model: torch.nn.Module | str | None = None,
        labels: Sequence[Label] | None = None,
        tokenizer: Any = None,
        peft_config: Any = None,
        env: Environment | None = None,
        reward: Reward | None = None,
        eval_tasks: Sequence[Task] | None = None,
    ) -> None:
        cfg = config
        if not labels:
            raise ConfigError("KTOConfig.labels: no usable example; check the file")
        n_d = sum(bool(lab.desirable) for lab in labels)
        balance = desirable_balance(n_d, len(labels) - n_d, cfg.desirable_weight, cfg.undesirable_weight)
        if not BALANCE_RANGE[0] <= balance <= BALANCE_RANGE[1]:
            n_u = len(labels) - n_d
            hint = (
                f"e.g. desirable_weight in [{cfg.undesirable_weight * n_u / max(n_d, 1):.3g}, "
                f"{cfg.undesirable_weight * n_u / max(n_d, 1) * 4 / 3:.3g}]"
                if n_d and n_u
                else "the data has only one kind of example"
            )
            logger.warning(
                "KTO: (desirable_weight x %d desirable) / (undesirable_weight x %d undesirable) = %.3g is outside the "
                "recommended [1, 4/3]; %s",
                n_d, n_u, balance, hint,
            )  # fmt: skip
        offline.set_up(self, cfg, model, tokenizer, peft_config, env, reward, eval_tasks)
        mine = [labels[i] for i in self.processes.shard(len(labels))]
        self.rows: list[EncodedLabel] = offline.encode_labels(self.tokenizer, mine, cfg.max_length, cfg.max_prompt_length)
        if not self.rows:
            raise ConfigError(
                f"{len(labels)} example(s) cannot feed {self.world_size} processes; use fewer processes or more data"
            )
        self.data = run.DataOrder(len(self.rows), cfg.seed + self.rank)
        offline.finish_set_up(self, len(labels), "KTO", ("loss", "kl", "rewards/margins"))

    @classmethod
    def from_config(cls, config: KTOConfig) -> KTOTrainer:
        """What ``python -m rlvr.train --trainer kto`` builds: the labels (or pairs) file read before any model loads."""
        labels = offline.load_preference_labels(config.labels, config.pairs)
        env, reward = offline.make_eval_env(config)
        return cls(config, labels=labels, env=env, reward=reward)

    def _batch(self, rows: Sequence[EncodedLabel]) -> dict[str, torch.Tensor]:
        return offline.pad_sequences([(r.prompt_ids, r.completion_ids) for r in rows], self.tokenizer.pad_token_id)

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (evaluating before and after when an env is given); returns the eval summary."""
        return offline.train(self)

    def evaluate(self, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
        """Greedy held-out accuracy of the live policy on the env's test tasks."""
        return offline.evaluate(self, tasks)

    def training_step(self) -> dict[str, Any]:
        """One optimizer step on ``batch_size`` examples."""
        cfg = self.config
        start = time.perf_counter()
        if cfg.precompute_ref_log_probs and self.reference.table is None:
            self.reference.precompute(self.rows, self._batch, cfg.micro_batch_size, columns=1)
        per_process = cfg.batch_size // self.world_size
        indices = self.data.take(per_process)
        rows = [self.rows[i] for i in indices]
        mbs = cfg.micro_batch_size
        chunks = [list(range(i, min(i + mbs, per_process))) for i in range(0, per_process, mbs)]

        # KL reference point: prompt i with the completion of example i - 1 (shifted by one within the batch)
        shifted = [EncodedLabel(r.prompt_ids, rows[i - 1].completion_ids, r.desirable) for i, r in enumerate(rows)]
        kl_sum = 0.0
        with torch.no_grad():
            for chunk in chunks:
                kl_rows = [shifted[i] for i in chunk]
                batch = self._batch(kl_rows)
                policy_logps, _ = offline.sequence_logps(self.policy.model, batch, self.policy.bf16, self.device)
                ref_logps, _ = self.reference.logps(batch)
                kl_sum += float((policy_logps - ref_logps).sum())
        kl_total, kl_count = self.processes.sum(kl_sum, len(rows))
        kl = kto_kl(torch.tensor([kl_total / kl_count]), torch.zeros(1)).to(self.device)

        sums = dict.fromkeys(("loss", "n_d", "n_u", "rewards_d", "rewards_u", "logps_d", "logps_u", "tokens"), 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        for j, chunk in enumerate(chunks):
            part = [rows[i] for i in chunk]
            batch = self._batch(part)
            desirable = torch.tensor([r.desirable for r in part], device=self.device)
            if self.reference.table is not None:
                ref = self.reference.table[[indices[i] for i in chunk], 0].to(self.device)
            else:
                ref, _ = self.reference.logps(batch)
            sync = self.world_size == 1 or j == len(chunks) - 1
            with modeling.sync_gradients(self.policy.train_model, sync):
                logps, _ = offline.sequence_logps(self.policy.train_model, batch, self.policy.bf16, self.device)
                losses = kto_loss(logps, ref, desirable, kl, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
                loss = losses.sum() / cfg.batch_size
                (loss * self.world_size).backward()
            rewards = cfg.beta * (logps.detach() - ref)
            d = desirable.float()
            sums["loss"] += float(loss.detach())
            sums["n_d"] += float(d.sum())
            sums["n_u"] += float((1 - d).sum())
            sums["rewards_d"] += float((rewards * d).sum())
            sums["rewards_u"] += float((rewards * (1 - d)).sum())
            sums["logps_d"] += float((logps.detach() * d).sum())
            sums["logps_u"] += float((logps.detach() * (1 - d)).sum())
            sums["tokens"] += float(batch["attention_mask"].sum())
        t = dict(zip(sums, self.processes.sum(*sums.values())))
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = run.clipped_step(params, self.optimizer, cfg.max_grad_norm, t["loss"])  # a NaN / inf: not applied
        metrics: dict[str, Any] = {"lr": self.scheduler.get_last_lr()[0]}
        self.scheduler.step()
        self.step += 1
        metrics.update({"step": self.step, "loss": t["loss"], "grad_norm": float(grad_norm), "kl": float(kl)})
        if t["n_d"]:
            metrics["rewards/chosen"] = t["rewards_d"] / t["n_d"]
            metrics["logps/chosen"] = t["logps_d"] / t["n_d"]
        if t["n_u"]:
            metrics["rewards/rejected"] = t["rewards_u"] / t["n_u"]
            metrics["logps/rejected"] = t["logps_u"] / t["n_u"]
        if t["n_d"] and t["n_u"]:
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        metrics.update({
            "n_desirable": int(t["n_d"]),
            "n_undesirable": int(t["n_u"]),
            "train_tokens": int(t["tokens"]),
            "epoch": self.data.epoch + self.data.cursor / self.data.num_items,
            "step_time_s": time.perf_counter() - start,
        })  # fmt: skip
        run.log_step(self, metrics)
        return metrics

    # ----------------------------------------------------------------- saving / resuming
    def save_model(self, path: str | os.PathLike) -> None:
        """The policy in Hugging Face format (LoRA merged) plus the tokenizer."""
        modeling.save_policy(self.policy, path, self.processes)

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Everything ``resume`` needs: weights, optimizer, scheduler, RNG states, step, data order."""
        return run.checkpoint_trainer(self, path, self.data.state())

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint directory, or from the latest checkpoint in a run directory."""
        self.data.load(run.resume_trainer(self, path))
