r"""DPO: Direct Preference Optimization, offline on pairs or iterative on an environment, top to bottom.

One optimizer step (``DPOTrainer.training_step``):

1. **Pairs.** Take ``batch_size / world_size`` pairs of this process's shard, in a seeded
   order that is part of the checkpoint (``DataOrder``). Each pair is its prompt (chat
   template with the generation prompt, as the policy sees it when it generates) and its
   two completions (each ending with the end-of-sequence token), truncated as
   :mod:`rlvr.trainers.offline` says.
2. **Log-probs**, in micro-batches of ``micro_batch_size`` pairs: the chosen rows and the
   rejected rows go through ONE forward (``[chosen; rejected]``), and each completion's
   log-probability is summed over its tokens (``logps/chosen``, ``logps/rejected``).
3. **Reference** log-probs of the same completions: the initial model (a frozen copy, or
   under LoRA the policy with its adapters off), live in each step or computed once before
   training (``precompute_ref_log_probs``).
4. **Loss** (:func:`dpo_loss`, one or a weighted sum of several ``loss_type``\ s), the mean
   over the step's pairs. With ``h = (logp_c - ref_c) - (logp_r - ref_r)``:

   - ``sigmoid``:   ``-log sigmoid(beta h)`` (the DPO paper);
   - ``hinge``:     ``relu(1 - beta h)`` (SLiC);
   - ``ipo``:       ``(h_tok - 1 / (2 beta))^2``, with each log-ratio divided by its
     completion's token count (IPO; TRL's normalisation);
   - ``robust``:    ``(-(1-e) log sigmoid(beta h) + e log sigmoid(-beta h)) / (1 - 2e)``,
     ``e = label_smoothing`` (robust DPO: unbiased under flipped labels);
   - ``apo_zero``:  ``1 - sigmoid(beta (logp_c - ref_c)) + sigmoid(beta (logp_r - ref_r))`` (APO-zero);
   - ``sppo_hard``: ``(logp_c - ref_c - 1/(2 beta))^2 + (logp_r - ref_r + 1/(2 beta))^2`` (SPPO, hard labels).

   These are TRL 1.16's ``DPOTrainer`` losses, term for term (``bench/offline_parity.py``
   checks them to 1e-6). The implicit rewards ``beta (logp - ref)`` give ``rewards/chosen``,
   ``rewards/rejected``, ``rewards/margins`` and ``rewards/accuracies`` (chosen above rejected).
5. **Step**: gradients averaged over the processes (DistributedDataParallel), clipped, AdamW.

**Iterative DPO** (``pairs_refresh_steps = K > 0``): at step 0 and every K steps the pairs
are rebuilt from the CURRENT policy: ``pairs_prompts`` training tasks of ``--env`` (each
process its own share), ``pairs_k`` completions each sampled by the ``generator``: vLLM
(``auto`` when it is installed; the engine starts at the first refresh and gets the current
weights at each later one) or an :class:`~rlvr.generation.HFGenerator` on the live policy;
scored by the env's reward (or
``--verifier``), best over worst of each group (:func:`rlvr.pairs.sample_pairs`;
tied groups give no pair). Tasks and sampling are seeded by ``(seed, step, rank)``, and the
pairs in use are saved with each checkpoint, so a resumed run trains on exactly the pairs an
uninterrupted one would. The reference stays the initial model: a fixed anchor keeps the
iterated policy within reach of where it started, and a resume needs no second set of
weights (refreshing it would make every checkpoint carry one). The sampled groups' reward and
accuracy are logged at each refresh (``reward_mean``, ``accuracy``, ``num_pairs``).

The pure math (:func:`dpo_loss`, :func:`dpo_rewards`) is at module level and tested against
hand-derived values in ``tests/test_offline_losses.py``; the plumbing is
:mod:`rlvr.trainers.run`, :mod:`rlvr.trainers.modeling` and :mod:`rlvr.trainers.offline`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlvr.environments.base import Environment, Task
from rlvr.generation import Generator, SamplingConfig, choose_generator
from rlvr.pairs import sample_pairs
from rlvr.preferences import PreferencePair, load_pairs
from rlvr.rewards import Outcome, Reward, Sample, Status
from rlvr.trainers import modeling, offline, rollouts, run
from rlvr.trainers.config import ConfigError
from rlvr.trainers.dpo_config import DPOConfig
from rlvr.trainers.offline import EncodedPair
from rlvr.trainers.rollouts import sampling_seed

logger = logging.getLogger(__name__)

__all__ = ["DPOTrainer", "dpo_loss", "dpo_rewards"]


# =======================================================================================
# Pure math
# =======================================================================================


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair DPO loss ``[B]`` (the step's loss is its mean), for one loss type or a weighted sum of several.

    All log-probs are ``[B]`` sums over each completion's tokens. ``chosen_tokens`` /
    ``rejected_tokens`` (completion token counts) are needed by ``ipo`` only. The formulas are
    in the module docstring; ``sum_i w_i * mean(loss_i) == mean(sum_i w_i * loss_i)``, so a
    weighted combination is returned per pair too.
    """
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    weights = [1.0] * len(types) if loss_weights is None else list(loss_weights)
    if len(weights) != len(types):
        raise ValueError(f"{len(weights)} loss weight(s) for {len(types)} loss type(s)")
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio
    total = torch.zeros_like(h)
    for kind, weight in zip(types, weights):
        if kind == "sigmoid":
            loss = -F.logsigmoid(beta * h)
        elif kind == "hinge":
            loss = torch.relu(1 - beta * h)
        elif kind == "ipo":
            if chosen_tokens is None or rejected_tokens is None:
                raise ValueError("loss_type 'ipo' needs chosen_tokens and rejected_tokens (completion token counts)")
            per_token = chosen_ratio / chosen_tokens.clamp(min=1.0) - rejected_ratio / rejected_tokens.clamp(min=1.0)
            loss = (per_token - 1 / (2 * beta)) ** 2
        elif kind == "robust":
            e = label_smoothing
            loss = (-(1 - e) * F.logsigmoid(beta * h) + e * F.logsigmoid(-beta * h)) / (1 - 2 * e)
        elif kind == "apo_zero":
            loss = 1 - torch.sigmoid(beta * chosen_ratio) + torch.sigmoid(beta * rejected_ratio)
        elif kind == "sppo_hard":
            loss = (chosen_ratio - 0.5 / beta) ** 2 + (rejected_ratio + 0.5 / beta) ** 2
        else:
            raise ValueError(f"unknown DPO loss type {kind!r}; use sigmoid, ipo, hinge, robust, apo_zero or sppo_hard")
        total = total + weight * loss
    return total


def dpo_rewards(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit rewards ``beta * (logp - ref_logp)`` of the chosen and rejected completions (no gradient)."""
    return beta * (chosen_logps - ref_chosen_logps).detach(), beta * (rejected_logps - ref_rejected_logps).detach()


# =======================================================================================
# Trainer
# =======================================================================================


class DPOTrainer:
    """DPO on preference pairs, or iterative DPO on an environment.

    Args:
        config: The run's :class:`DPOConfig`.
        model: A causal LM module, or a name/path (``config.model`` when ``None``).
        pairs: The preference pairs (otherwise none: iterative DPO samples them).
        tokenizer: Defaults to the model directory's tokenizer.
        peft_config: A ``peft`` config (overrides ``config.lora_r``).
        env: Held-out evaluation (its ``test`` split) and iterative DPO's tasks (its ``train`` split).
        reward: Overrides the environment's reward (grading and iterative pairs).
        train_tasks / eval_tasks: Override the environment's splits.
    """

    name = "dpo"

    def __init__(
        self,
        config: DPOConfig,
        model: torch.nn.Module | str | None = None,
        pairs: Sequence[PreferencePair] | None = None,
        tokenizer: Any = None,
        peft_config: Any = None,
        env: Environment | None = None,
        reward: Reward | None = None,
        train_tasks: Sequence[Task] | None = None,
        eval_tasks: Sequence[Task] | None = None,
    ) -> None:
        cfg = config
        self.iterative = cfg.pairs_refresh_steps > 0
        if not self.iterative and not pairs:
            raise ConfigError("DPOConfig.pairs: no usable preference pair; check the file (python -m rlvr.eval preferences)")
        tasks = list(train_tasks) if train_tasks is not None else (env.tasks("train") if env is not None else [])
        if self.iterative and (not tasks or (reward is None and env is None)):
            raise ConfigError("DPOConfig.pairs_refresh_steps: iterative DPO needs training tasks and a reward: pass --env NAME")
        offline.set_up(self, cfg, model, tokenizer, peft_config, env, reward, eval_tasks)
        self.train_tasks = [t.with_system_prompt(cfg.system_prompt) for t in tasks]
        self.pairs_step: int | None = None  # the step whose policy sampled the current pairs (iterative DPO)
        self.generator: Generator | None = None  # iterative DPO's sampler, built at the first refresh
        self.rows: list[EncodedPair] = []
        if pairs:
            self._use_pairs([pairs[i] for i in self.processes.shard(len(pairs))], pairs_step=0)  # current from step 0 on
        offline.finish_set_up(self, len(pairs or []), "DPO", ("loss", "rewards/accuracies", "rewards/margins"))

    @classmethod
    def from_config(cls, config: DPOConfig) -> DPOTrainer:
        """What ``python -m rlvr.train --trainer dpo`` builds: the pairs file (read before any model loads), env and verifier."""
        pairs = offline.load_preference_pairs(config.pairs, "DPOConfig.pairs") if config.pairs else None
        env, reward = offline.make_eval_env(config)
        return cls(config, pairs=pairs, env=env, reward=reward)

    # ----------------------------------------------------------------- data
    def _use_pairs(self, pairs: Sequence[PreferencePair], pairs_step: int | None = None) -> None:
        """Tokenize this process's pairs and start a new seeded order over them.

        ``pairs`` are this process's own: its shard of a file's pairs, or the pairs it sampled.
        """
        cfg = self.config
        self.pairs = list(pairs)
        self.rows = offline.encode_pairs(self.tokenizer, self.pairs, cfg.max_length, cfg.max_prompt_length)
        if not self.rows:
            raise ConfigError(f"no pair for process {self.rank} of {self.world_size}; use fewer processes or more pairs")
        self.pairs_step = pairs_step
        self.data = run.DataOrder(len(self.rows), cfg.seed + self.rank + 7919 * (pairs_step or 0))
        self.reference.table = None

    def _batch(self, rows: Sequence[EncodedPair]) -> dict[str, torch.Tensor]:
        return offline.pad_sequences(offline.pair_rows(rows), self.tokenizer.pad_token_id)

    def _sampler(self) -> Generator:
        """Iterative DPO's generator with the current weights: built at the first refresh, and given
        the policy's weights at every refresh (``hf`` shares the live model: nothing to give)."""
        if self.generator is None:
            if choose_generator(self.config.generator) == "hf":
                self.generator = modeling.live_generator(self.policy, batch_size=64)
            else:  # the engine loads the weights on disk: the initial ones, which steps may have moved since
                self.generator = rollouts.build_generator(self.config, self.policy, self.world_size, run=str(self.output_dir.resolve()))
        rollouts.sync_generator(self.generator, self.policy)  # nothing to do for hf (it shares the live model)
        return self.generator

    def refresh_pairs(self) -> dict[str, Any]:
        """Iterative DPO: sample the current policy on training tasks, pair best over worst; returns the sampling metrics."""
        cfg = self.config
        start = time.perf_counter()
        per = cfg.pairs_prompts // self.world_size
        rng = np.random.default_rng([cfg.seed, self.step, self.rank])
        shard = self.processes.shard(len(self.train_tasks))
        tasks = [self.train_tasks[shard[i]] for i in rng.choice(len(shard), size=min(per, len(shard)), replace=False)]
        seed = sampling_seed(cfg.seed, self.step, 0, self.rank)
        sampling = SamplingConfig(cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_completion_length, seed)
        generator = self._sampler()
        recorder = _RecordingReward(self.reward)
        with modeling.generating(generator):  # every process is here together
            rows, counts = sample_pairs(generator, recorder, tasks, cfg.pairs_k, sampling)
        generator.sleep()  # on GPU, vLLM gives its memory to training until the next refresh
        pairs = load_pairs(rows) if rows else []
        scores = [o.score for o in recorder.outcomes if o.status is Status.OK]
        n_ok, correct, score_sum, n_pairs, tied = self.processes.sum(
            len(scores), sum(s >= cfg.correct_threshold for s in scores), sum(scores), len(pairs), counts.all_tied
        )
        if min(self.processes.gather([len(pairs)])) > 0:
            self._use_pairs(pairs, pairs_step=self.step)
        elif self.rows:  # some process sampled only tied groups: every process keeps its pairs for K more steps
            logger.warning(
                "iterative DPO at step %d: a process sampled no pair (all groups tied); keeping the current pairs", self.step
            )
        else:
            raise RuntimeError(
                f"iterative DPO at step {self.step}: a process sampled no pair ({int(n_pairs)} over all; every group tied). "
                "Raise pairs_prompts or pairs_k, or give a --pairs file to start from"
            )
        return {
            "reward_mean": score_sum / max(n_ok, 1),
            "accuracy": correct / max(n_ok, 1),
            "num_pairs": int(n_pairs),
            "frac_tied_prompts": tied / max(cfg.pairs_prompts, 1),
            "n_ok": int(n_ok),
            "pairs_time_s": time.perf_counter() - start,
        }

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (evaluating before and after when an env is given); returns the eval summary."""
        return offline.train(self)

    def evaluate(self, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
        """Greedy held-out accuracy of the live policy on the env's test tasks."""
        return offline.evaluate(self, tasks)

    def training_step(self) -> dict[str, Any]:
        """One optimizer step on ``batch_size`` pairs (rebuilding them first at an iterative refresh step)."""
        cfg = self.config
        start = time.perf_counter()
        metrics: dict[str, Any] = {}
        if self.iterative and (not self.rows or (self.step % cfg.pairs_refresh_steps == 0 and self.pairs_step != self.step)):
            metrics.update(self.refresh_pairs())
        if cfg.precompute_ref_log_probs and self.reference.table is None:
            self.reference.precompute(self.rows, self._batch, cfg.micro_batch_size, columns=2)
        per_process = cfg.batch_size // self.world_size
        indices = self.data.take(per_process)
        chunks = [indices[i : i + cfg.micro_batch_size] for i in range(0, per_process, cfg.micro_batch_size)]
        types, weights = cfg.loss_type, cfg.loss_weights
        sums = dict.fromkeys(
            ("loss", "chosen_rewards", "rejected_rewards", "correct", "chosen_logps", "rejected_logps", "tokens"), 0.0
        )
        self.optimizer.zero_grad(set_to_none=True)
        for j, chunk in enumerate(chunks):
            rows = [self.rows[i] for i in chunk]
            batch = self._batch(rows)
            n = len(rows)
            if self.reference.table is not None:
                ref = self.reference.table[chunk].to(self.device)
                ref_c, ref_r = ref[:, 0], ref[:, 1]
            else:
                ref_sums, _ = self.reference.logps(batch)
                ref_c, ref_r = ref_sums[:n], ref_sums[n:]
            sync = self.world_size == 1 or j == len(chunks) - 1
            with modeling.sync_gradients(self.policy.train_model, sync):
                logps, counts = offline.sequence_logps(self.policy.train_model, batch, self.policy.bf16, self.device)
                chosen, rejected = logps[:n], logps[n:]
                per_pair = dpo_loss(
                    chosen, rejected, ref_c, ref_r, cfg.beta, types, weights, cfg.label_smoothing, counts[:n], counts[n:]
                )
                # each process's share of the step's mean, times world_size: DistributedDataParallel averages gradients
                loss = per_pair.sum() / cfg.batch_size
                (loss * self.world_size).backward()
            r_c, r_r = dpo_rewards(chosen, rejected, ref_c, ref_r, cfg.beta)
            sums["loss"] += float(loss.detach())
            sums["chosen_rewards"] += float(r_c.sum())
            sums["rejected_rewards"] += float(r_r.sum())
            sums["correct"] += float((r_c > r_r).float().sum())
            sums["chosen_logps"] += float(chosen.detach().sum())
            sums["rejected_logps"] += float(rejected.detach().sum())
            sums["tokens"] += float(batch["attention_mask"].sum())
        totals = dict(zip(sums, self.processes.sum(*sums.values())))
        params = [p for p in self.model.parameters() if p.requires_grad]
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        grad_norm = run.clipped_step(params, self.optimizer, cfg.max_grad_norm, totals["loss"])  # a NaN / inf: not applied
        self.scheduler.step()
        self.step += 1
        n = float(cfg.batch_size)
        metrics.update({
            "step": self.step,
            "loss": totals["loss"],
            "grad_norm": float(grad_norm),
            "rewards/chosen": totals["chosen_rewards"] / n,
            "rewards/rejected": totals["rejected_rewards"] / n,
            "rewards/accuracies": totals["correct"] / n,
            "rewards/margins": (totals["chosen_rewards"] - totals["rejected_rewards"]) / n,
            "logps/chosen": totals["chosen_logps"] / n,
            "logps/rejected": totals["rejected_logps"] / n,
            "train_tokens": int(totals["tokens"]),
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
        """Weights, optimizer, scheduler, RNG states, step, data order; iterative DPO adds each process's current pairs."""
        path = run.checkpoint_trainer(self, path, {**self.data.state(), "pairs_step": self.pairs_step})
        if self.iterative:
            with open(path / _pairs_file(self.rank), "w") as f:
                for p in self.pairs:
                    f.write(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")
            self.processes.barrier()
        return path

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint directory, or from the latest checkpoint in a run directory."""
        data = run.resume_trainer(self, path)
        saved = run.find_checkpoint(path) / _pairs_file(self.rank)
        if self.iterative and saved.exists():
            rows = [json.loads(line) for line in saved.read_text().splitlines() if line.strip()]
            self._use_pairs([PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows], data.get("pairs_step"))
        self.data.load(data)


class _RecordingReward:
    """A reward that keeps the outcomes it gave (iterative DPO logs the sampled groups' reward and accuracy)."""

    def __init__(self, reward: Reward) -> None:
        self.reward, self.name = reward, reward.name
        self.outcomes: list[Outcome] = []

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        out = self.reward.score(samples)
        self.outcomes.extend(out)
        return out


def _pairs_file(rank: int) -> str:
    return "pairs.jsonl" if rank == 0 else f"pairs-{rank}.jsonl"
