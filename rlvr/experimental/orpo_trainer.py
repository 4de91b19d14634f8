r"""ORPO: Odds Ratio Preference Optimization (experimental), top to bottom.

Why experimental: TRL keeps ORPO in ``trl.experimental`` (its ORPOTrainer is a copy of the
older DPOTrainer code path, not maintained with the stable trainers), and rlvr keeps it
experimental for the same reason: it is a reference-free variant with little use next to
DPO, whose ``beta`` trades SFT against preference in a way that has no tested default on
verifier-built pairs yet. What would promote it: a measured run in ``bench/`` where ORPO on
pairs built by a verifier raises held-out accuracy as DPO does, a stable loss and metric set
(TRL promoting its own ORPO would count too), and users. Until then the API may change;
stable code never imports :mod:`rlvr.experimental`.

One optimizer step (``ORPOTrainer.training_step``):

1. **Pairs**, ``batch_size / world_size`` per process in a seeded order (checkpointed),
   tokenized like DPO (:mod:`rlvr.trainers.offline`).
2. **One forward** per micro-batch over ``[chosen; rejected]``: each completion's summed
   log-probability and token count. No reference model.
3. **Loss** (:func:`orpo_loss`) = ``NLL + beta * OR`` with

   - ``NLL``: the chosen completions' negative log-likelihood, the mean over the step's chosen
     completion tokens (supervised fine-tuning on the chosen);
   - ``OR = -mean(log sigmoid(log_odds))``, ``log_odds = (a_c - a_r) - (log(1 - e^{a_c}) -
     log(1 - e^{a_r}))`` with ``a`` the per-token MEAN log-probability of a completion
     (:func:`odds_ratio_terms`; ``log(1 - e^a)`` computed stably by :func:`log1mexp`).

   This is TRL 1.16's ``ORPOTrainer.odds_ratio_loss`` and its ``loss = nll - losses.mean()``
   (``bench/offline_parity.py``). One difference, deliberate: TRL's NLL term also counts the
   PROMPT tokens of the chosen row (its comment: "computed over the full prompt and
   response"); rlvr's counts the completion tokens only, as the ORPO paper's SFT term and
   every other rlvr trainer do (a prompt is never a training target).
4. **Step**: gradients averaged over the processes, clipped, AdamW.

Metrics (TRL's names): ``loss``, ``nll_loss``, ``log_odds_ratio`` (mean ``log sigmoid(log_odds)``),
``log_odds_chosen`` (mean ``log_odds``), ``rewards/chosen`` / ``rewards/rejected`` (``beta * a``),
``rewards/accuracies``, ``rewards/margins``, ``logps/chosen`` / ``logps/rejected`` (``a``),
``grad_norm``, ``lr``, ``step_time_s``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rlvr.environments.base import Environment, Task
from rlvr.experimental.orpo_config import ORPOConfig
from rlvr.preferences import PreferencePair
from rlvr.rewards import Reward
from rlvr.trainers import modeling, offline, run
from rlvr.trainers.config import ConfigError
from rlvr.trainers.offline import EncodedPair

__all__ = ["ORPOTrainer", "log1mexp", "odds_ratio_terms", "orpo_loss"]


# =======================================================================================
# Pure math
# =======================================================================================


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (branch at ``-ln 2``)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def odds_ratio_terms(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log sigmoid(log_odds), log_odds)`` per pair, from per-token MEAN log-probs ``[B]`` (computed in float32)."""
    a_c, a_r = chosen_mean_logps.float(), rejected_mean_logps.float()
    log_odds = (a_c - a_r) - (log1mexp(a_c) - log1mexp(a_r))
    return F.logsigmoid(log_odds), log_odds


def orpo_loss(
    chosen_nll: torch.Tensor, chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, beta: float
) -> torch.Tensor:
    """``chosen_nll - beta * mean(log sigmoid(log_odds))``: the whole batch's ORPO loss (a scalar)."""
    ratio, _ = odds_ratio_terms(chosen_mean_logps, rejected_mean_logps)
    return chosen_nll - (beta * ratio).mean()


# =======================================================================================
# Trainer
# =======================================================================================


class ORPOTrainer:
    """ORPO on preference pairs (no reference model).

    Args:
        config: The run's :class:`ORPOConfig`.
        model: A causal LM module, or a name/path (``config.model`` when ``None``).
        pairs: The preference pairs.
        tokenizer: Defaults to the model directory's tokenizer.
        peft_config: A ``peft`` config (overrides ``config.lora_r``).
        env / reward / eval_tasks: The held-out evaluation (the env's ``test`` split).
    """

    name = "orpo"

    def __init__(
        self,
        config: ORPOConfig,
        model: torch.nn.Module | str | None = None,
        pairs: Sequence[PreferencePair] | None = None,
        tokenizer: Any = None,
        peft_config: Any = None,
        env: Environment | None = None,
        reward: Reward | None = None,
        eval_tasks: Sequence[Task] | None = None,
    ) -> None:
        cfg = config
        if not pairs:
            raise ConfigError("ORPOConfig.pairs: no usable preference pair; check the file")
        offline.set_up(self, cfg, model, tokenizer, peft_config, env, reward, eval_tasks, reference=False)  # none in ORPO
        mine = [pairs[i] for i in self.processes.shard(len(pairs))]
        self.rows: list[EncodedPair] = offline.encode_pairs(self.tokenizer, mine, cfg.max_length, cfg.max_prompt_length)
        if not self.rows:
            raise ConfigError(f"{len(pairs)} pair(s) cannot feed {self.world_size} processes; use fewer processes or more pairs")
        self.data = run.DataOrder(len(self.rows), cfg.seed + self.rank)
        offline.finish_set_up(self, len(pairs), "ORPO", ("loss", "nll_loss", "rewards/accuracies"))

    @classmethod
    def from_config(cls, config: ORPOConfig) -> ORPOTrainer:
        """What ``python -m rlvr.train --trainer orpo`` builds: the pairs file read before any model loads."""
        pairs = offline.load_preference_pairs(config.pairs, "ORPOConfig.pairs")
        env, reward = offline.make_eval_env(config)
        return cls(config, pairs=pairs, env=env, reward=reward)

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (evaluating before and after when an env is given); returns the eval summary."""
        return offline.train(self)

    def evaluate(self, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
        """Greedy held-out accuracy of the live policy on the env's test tasks."""
        return offline.evaluate(self, tasks)

    def training_step(self) -> dict[str, Any]:
        """One optimizer step on ``batch_size`` pairs."""
        cfg = self.config
        start = time.perf_counter()
        per_process = cfg.batch_size // self.world_size
        indices = self.data.take(per_process)
        chunks = [indices[i : i + cfg.micro_batch_size] for i in range(0, per_process, cfg.micro_batch_size)]
        # the NLL is a mean over the step's chosen tokens: count them first, over every process
        (chosen_tokens,) = self.processes.sum(sum(len(self.rows[i].chosen_ids) for i in indices))
        keys = ("loss", "nll", "ratio", "log_odds", "chosen_mean", "rejected_mean", "correct", "tokens")
        sums = dict.fromkeys(keys, 0.0)
        self.optimizer.zero_grad(set_to_none=True)
        for j, chunk in enumerate(chunks):
            rows = [self.rows[i] for i in chunk]
            batch = offline.pad_sequences(offline.pair_rows(rows), self.tokenizer.pad_token_id)
            n = len(rows)
            sync = self.world_size == 1 or j == len(chunks) - 1
            with modeling.sync_gradients(self.policy.train_model, sync):
                logps, counts = offline.sequence_logps(self.policy.train_model, batch, self.policy.bf16, self.device)
                mean = logps / counts.clamp(min=1)
                nll = -logps[:n].sum() / chosen_tokens
                ratio, log_odds = odds_ratio_terms(mean[:n], mean[n:])
                # this micro-batch's share of the step's loss: its NLL tokens and its pairs
                loss = nll - cfg.beta * ratio.sum() / cfg.batch_size
                (loss * self.world_size).backward()
            sums["loss"] += float(loss.detach())
            sums["nll"] += float(nll.detach())
            sums["ratio"] += float(ratio.detach().sum())
            sums["log_odds"] += float(log_odds.detach().sum())
            sums["chosen_mean"] += float(mean[:n].detach().sum())
            sums["rejected_mean"] += float(mean[n:].detach().sum())
            sums["correct"] += float((mean[:n] > mean[n:]).float().sum())
            sums["tokens"] += float(batch["attention_mask"].sum())
        t = dict(zip(sums, self.processes.sum(*sums.values())))
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = run.clipped_step(params, self.optimizer, cfg.max_grad_norm, t["loss"])  # a NaN / inf: not applied
        metrics: dict[str, Any] = {"lr": self.scheduler.get_last_lr()[0]}
        self.scheduler.step()
        self.step += 1
        n = float(cfg.batch_size)
        metrics.update({
            "step": self.step,
            "loss": t["loss"],
            "grad_norm": float(grad_norm),
            "nll_loss": t["nll"],
            "log_odds_ratio": t["ratio"] / n,
            "log_odds_chosen": t["log_odds"] / n,
            "rewards/chosen": cfg.beta * t["chosen_mean"] / n,
            "rewards/rejected": cfg.beta * t["rejected_mean"] / n,
            "rewards/accuracies": t["correct"] / n,
            "rewards/margins": cfg.beta * (t["chosen_mean"] - t["rejected_mean"]) / n,
            "logps/chosen": t["chosen_mean"] / n,
            "logps/rejected": t["rejected_mean"] / n,
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
