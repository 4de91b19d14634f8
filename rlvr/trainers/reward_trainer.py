"""A reward model trained on preference pairs (``--trainer reward``), readable top to bottom.

The model is a ``transformers`` ``AutoModelForSequenceClassification`` with one output (the
usual reward-model head; from a causal LM such as SmolLM2 the ``score`` head is new) that
reads a prompt and a completion and gives a score ``r``. Training pushes ``r(chosen)`` above
``r(rejected)`` with the Bradley-Terry loss, as TRL 1.16's ``RewardTrainer.compute_loss``::

    loss = mean(-logsigmoid(r_c - r_r - margin))                        # margin: the optional column, else 0
         + center_rewards_coefficient * mean((r_c + r_r) ** 2)          # when the coefficient is set

(:func:`bradley_terry_loss`, :func:`center_rewards_loss`, :func:`reward_model_loss`: pure
functions at module level). One step:

1. **Pairs.** ``batch_size / world_size`` pairs of this process's shard, in a seeded order that
   is part of the checkpoint (``run.DataOrder``). A pair is rendered as the text
   :class:`~rlvr.verifiers.reward_model.RewardModelReward` scores -- chat prompts through the
   tokenizer's chat template with the completion as the assistant turn, plain prompts as
   ``prompt + completion`` -- so what the model trains on is what it is later asked. Pairs
   with a side longer than ``max_length`` tokens are left out (and counted), as TRL does.
2. **Forward.** Per micro-batch, its chosen sequences then its rejected ones in one padded
   forward; the score is the head's output at the last real token.
3. **Loss and step.** The per-pair losses summed, over the step's pairs on every process
   (``DistributedDataParallel`` averages gradients, so each process scales by
   ``world_size / batch_size``); clipping, AdamW, the schedule.

Metrics per step (``metrics.jsonl``): ``loss``, ``accuracy`` (share of pairs with
``r_c > r_r``), ``margin_mean`` (mean ``r_c - r_r``), ``reward_mean`` (mean of all scores),
``chosen_reward_mean``, ``rejected_reward_mean``, ``grad_norm``, ``lr``. ``eval.json`` holds the
held-out preference accuracy before and after training
(:func:`rlvr.eval.preferences.evaluate_preferences` with a ``RewardModelReward`` on the live
model). ``final/`` is the model (LoRA merged) and tokenizer: ``RewardModelReward(final_dir)``
loads it, and ``python -m rlvr.eval preferences --reward final_dir`` measures it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rlvr.environments.base import in_test_split
from rlvr.preferences import PreferencePair
from rlvr.trainers import modeling, offline, run
from rlvr.trainers.config import ConfigError
from rlvr.trainers.reward_config import RewardConfig

logger = logging.getLogger(__name__)

__all__ = [
    "RewardTrainer",
    "bradley_terry_loss",
    "center_rewards_loss",
    "render_text",
    "reward_model_loss",
]


# =======================================================================================
# Losses (pure functions)
# =======================================================================================


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pair Bradley-Terry loss ``-logsigmoid(r_c - r_r - margin)`` (``margin`` None = 0).

    The negative log-likelihood that chosen beats rejected when ``P(c > r) = sigmoid(r_c - r_r)``;
    a margin asks chosen to win by at least that much.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def center_rewards_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, coefficient: float) -> torch.Tensor:
    """Per-pair centering term ``coefficient * (r_c + r_r) ** 2`` (Eisenstein et al., 2023; TRL's ``center_rewards_coefficient``).

    The Bradley-Terry loss sees only differences, so rewards may drift together; this keeps
    their sum near zero.
    """
    return coefficient * (chosen_rewards + rejected_rewards) ** 2


def reward_model_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """The batch loss, as TRL 1.16's ``RewardTrainer.compute_loss``: mean Bradley-Terry plus the optional centering."""
    loss = bradley_terry_loss(chosen_rewards, rejected_rewards, margin).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_loss(chosen_rewards, rejected_rewards, center_rewards_coefficient).mean()
    return loss


# =======================================================================================
# Data
# =======================================================================================


def render_text(tokenizer: Any, prompt: str | list[dict], completion: str) -> str:
    """Prompt + completion as one text, exactly as :class:`~rlvr.verifiers.reward_model.RewardModelReward` renders a sample."""
    if isinstance(prompt, list):
        messages = [*prompt, {"role": "assistant", "content": completion}]
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    return prompt + completion


@dataclass(frozen=True)
class EncodedPair:
    """A pair as token ids: chosen and rejected, each the whole rendered text, and its margin."""

    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float


def encode_pairs(
    tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int, use_margin: bool
) -> tuple[list[EncodedPair], int]:
    """Token ids of each pair; pairs with a side longer than ``max_length`` are left out. Returns ``(encoded, dropped)``."""
    out, dropped = [], 0
    for p in pairs:
        chosen = tokenizer(render_text(tokenizer, p.prompt, p.chosen), add_special_tokens=False)["input_ids"]
        rejected = tokenizer(render_text(tokenizer, p.prompt, p.rejected), add_special_tokens=False)["input_ids"]
        if len(chosen) > max_length or len(rejected) > max_length:
            dropped += 1
            continue
        out.append(EncodedPair(chosen, rejected, float(p.margin) if use_margin and p.margin is not None else 0.0))
    return out, dropped


def pad_batch(rows: Sequence[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` of token-id rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def split_held_out(pairs: Sequence[PreferencePair], fraction: float) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """``(train, held_out)``: a stable hash of each prompt decides, so every pair of a prompt lands on one side."""
    import json

    train, held = [], []
    for p in pairs:
        key = p.prompt if isinstance(p.prompt, str) else json.dumps(p.prompt, sort_keys=True)
        (held if fraction > 0 and in_test_split(key, fraction) else train).append(p)
    return train, held


# =======================================================================================
# Trainer
# =======================================================================================


class RewardTrainer:
    """Train a sequence-classification reward model on preference pairs.

    Args:
        config: The run's :class:`RewardConfig`.
        model: A sequence-classification module with one output, or a name/path (``config.model``
            when None) loaded as ``AutoModelForSequenceClassification(num_labels=1)``.
        tokenizer: Defaults to the model directory's tokenizer.
        train_pairs / eval_pairs: Override the pairs the config's files give.
        peft_config: A ``peft`` config (overrides ``config.lora_r``; use ``task_type="SEQ_CLS"``).
    """

    name = "reward"

    def __init__(
        self,
        config: RewardConfig,
        model: torch.nn.Module | str | None = None,
        tokenizer: Any = None,
        train_pairs: Sequence[PreferencePair] | None = None,
        eval_pairs: Sequence[PreferencePair] | None = None,
        peft_config: Any = None,
    ) -> None:
        self.config = cfg = config
        self.processes = run.Processes(config.stall_timeout_s)
        self.rank, self.world_size, self.is_main = self.processes.rank, self.processes.world_size, self.processes.is_main
        run.seed_everything(cfg.seed)

        # data first: a file without usable pairs fails before any model loads
        if train_pairs is None:
            pairs = offline.load_preference_pairs(cfg.pairs, "pairs")
            if cfg.eval_pairs is not None:
                train_pairs, held = pairs, offline.load_preference_pairs(cfg.eval_pairs, "eval_pairs")
            else:
                train_pairs, held = split_held_out(pairs, cfg.eval_fraction)
            eval_pairs = held if eval_pairs is None else eval_pairs
        if not train_pairs:
            raise ConfigError(
                f"RewardConfig.eval_fraction: {cfg.eval_fraction} left no training pairs; lower it or pass eval_pairs"
            )
        self.eval_pairs: list[PreferencePair] = list(eval_pairs or [])

        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(_model_path(model if isinstance(model, str) else None, cfg))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        rows, self.dropped = encode_pairs(tokenizer, train_pairs, cfg.max_length, cfg.use_margin)
        if self.dropped:
            logger.warning(
                "%d of %d training pairs have a side longer than max_length=%d tokens; left out",
                self.dropped,
                len(train_pairs),
                cfg.max_length,
            )
        if not rows:
            raise ConfigError(
                f"RewardConfig.max_length: every training pair is longer than {cfg.max_length} tokens; raise max_length"
            )
        self.num_train_pairs = len(rows)
        self.rows = [rows[i] for i in self.processes.shard(len(rows))]  # this process's share
        self.data = run.DataOrder(len(self.rows), cfg.seed + self.rank)

        if model is None or isinstance(model, str):
            model = _load_reward_model(_model_path(model, cfg), tokenizer)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if peft_config is None and cfg.lora_r > 0:
            from peft import LoraConfig

            peft_config = LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=cfg.lora_target_modules, task_type="SEQ_CLS",  # the new score head trains in full
            )  # fmt: skip
        self.policy = modeling.load_policy(cfg, self.processes, model, tokenizer, peft_config)
        self.model, self.tokenizer, self.device = self.policy.model, self.policy.tokenizer, self.policy.device
        offline.finish_set_up(self, len(rows), "reward", ("loss", "accuracy", "margin_mean"))

    @classmethod
    def from_config(cls, config: RewardConfig) -> RewardTrainer:
        """What ``python -m rlvr.train --trainer reward`` builds: the config's pairs and model."""
        return cls(config)

    # ----------------------------------------------------------------- loop
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (held-out accuracy before and after when there are held-out pairs); returns the eval summary."""
        resolved = {
            **modeling.precision_record(self.policy),
            "max_steps": self.config.max_steps,
            "train_pairs": self.num_train_pairs,
            "train_pairs_too_long": self.dropped,
            "eval_pairs": len(self.eval_pairs),
        }
        return run.run_training(self, resolved, has_eval=bool(self.eval_pairs))

    def training_step(self) -> dict[str, Any]:
        """One optimizer step on ``batch_size`` pairs (over all processes)."""
        cfg = self.config
        start = time.perf_counter()
        batch = [self.rows[i] for i in self.data.take(cfg.batch_size // self.world_size)]
        micro = [batch[i : i + cfg.micro_batch_size] for i in range(0, len(batch), cfg.micro_batch_size)]
        scale = self.world_size / cfg.batch_size  # each process's sum is its share of the step's mean
        pad = self.tokenizer.pad_token_id
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(7, dtype=torch.float64)  # loss, correct, margin, chosen, rejected, pairs, tokens
        for j, m in enumerate(micro):
            ids, mask = pad_batch([p.chosen_ids for p in m] + [p.rejected_ids for p in m], pad)
            margin = torch.tensor([p.margin for p in m], dtype=torch.float32, device=self.device)
            # with several processes, gradients are averaged once, at the last micro-batch
            sync = self.world_size == 1 or j == len(micro) - 1
            with modeling.sync_gradients(self.policy.train_model, sync):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.policy.bf16):
                    logits = self.policy.train_model(
                        input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False
                    ).logits
                chosen, rejected = logits.float().squeeze(-1).chunk(2)
                per_pair = bradley_terry_loss(chosen, rejected, margin if cfg.use_margin else None)
                if cfg.center_rewards_coefficient is not None:
                    per_pair = per_pair + center_rewards_loss(chosen, rejected, cfg.center_rewards_coefficient)
                (per_pair.sum() * scale).backward()
            with torch.no_grad():
                totals += torch.tensor([
                    float(per_pair.sum()), float((chosen > rejected).sum()), float((chosen - rejected).sum()),
                    float(chosen.sum()), float(rejected.sum()), len(m), float(mask.sum()),
                ], dtype=torch.float64)  # fmt: skip
        loss, correct, margin_sum, chosen_sum, rejected_sum, n, tokens = self.processes.sum(*totals.tolist())
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = run.clipped_step(params, self.optimizer, cfg.max_grad_norm, loss)  # a NaN / inf: not applied
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        metrics = {
            "step": self.step,
            "loss": loss / n,
            "accuracy": correct / n,
            "margin_mean": margin_sum / n,
            "reward_mean": (chosen_sum + rejected_sum) / (2 * n),
            "chosen_reward_mean": chosen_sum / n,
            "rejected_reward_mean": rejected_sum / n,
            "grad_norm": float(grad_norm),
            "lr": lr,
            "train_tokens": int(tokens),
            "step_time_s": time.perf_counter() - start,
        }
        run.log_step(self, metrics)
        return metrics

    def evaluate(self, pairs: Sequence[PreferencePair] | None = None) -> dict[str, Any]:
        """Held-out preference accuracy of the current model (:func:`~rlvr.eval.preferences.evaluate_preferences`), split over the processes."""
        from rlvr.eval.preferences import evaluate_preferences
        from rlvr.verifiers.reward_model import RewardModelReward

        pairs = list(self.eval_pairs if pairs is None else pairs)
        mine = [pairs[i] for i in self.processes.shard(len(pairs))]
        reward = RewardModelReward(
            self.model, self.tokenizer, batch_size=self.config.eval_batch_size, max_length=self.config.max_length,
            device=str(self.device), name="reward_model",
        )  # fmt: skip
        try:
            with modeling.whole_model(self.policy):  # each process scores its own share, however many batches that is
                result = evaluate_preferences(reward, mine)
        finally:
            self.model.train()  # RewardModelReward put it in eval mode
        keys = ("wins", "losses", "ties", "non_ok_pairs", "n_ok", "n_timeout", "n_error", "n_abstain")
        both_ok = result["wins"] + result["losses"] + result["ties"]
        sums = self.processes.sum(*(result[k] for k in keys), result["margin_mean"] * both_ok)
        out: dict[str, Any] = {k: int(v) for k, v in zip(keys, sums)}
        decided = out["wins"] + out["losses"]
        out.update({
            "pairs": len(pairs),
            "accuracy": out["wins"] / len(pairs) if pairs else 0.0,
            "accuracy_decided": out["wins"] / decided if decided else 0.0,
            "margin_mean": sums[-1] / max(out["wins"] + out["losses"] + out["ties"], 1),
            "step": self.step,
        })  # fmt: skip
        return out

    # ----------------------------------------------------------------- saving / resuming
    def save_model(self, path: str | os.PathLike) -> None:
        """The reward model in Hugging Face format (LoRA merged) plus the tokenizer: ``RewardModelReward(path)`` loads it."""
        modeling.save_policy(self.policy, path, self.processes)

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Everything ``resume`` needs: weights, optimizer, scheduler, RNG states, step, data order."""
        return run.checkpoint_trainer(self, path, self.data.state())

    def resume(self, path: str | os.PathLike) -> None:
        """Continue from a checkpoint directory, or from the latest checkpoint in a run directory."""
        self.data.load(run.resume_trainer(self, path))


def _model_path(model: str | None, config: RewardConfig) -> str:
    """The directory of ``model`` (or ``config.model``); a model that is not there is a ConfigError."""
    from rlvr.models import check_model_source, resolve_model

    name = model or config.model
    try:
        check_model_source(name)
    except FileNotFoundError as exc:
        raise ConfigError(f"RewardConfig.model: {exc}") from None
    return resolve_model(name)


def _load_reward_model(path: str, tokenizer: Any) -> torch.nn.Module:
    """``AutoModelForSequenceClassification`` with one output; from a causal LM the score head is new (seeded init)."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "score.weight newly initialized" is the point here, not a warning
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"RewardConfig.model: {path} could not be loaded as a sequence classifier: {exc}") from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model
