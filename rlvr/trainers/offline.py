"""What every OFFLINE trainer (DPO, KTO, ORPO) does around its loss: data in, log-probs out.

Plain functions, called explicitly by each trainer (no base class):

- :func:`load_preference_pairs` / :func:`load_preference_labels`: a file through
  :mod:`rlvr.preferences` (bad rows reported as ``file:line`` and skipped); a source with no
  usable row is a :class:`~rlvr.trainers.config.ConfigError` raised before any model loads.
- :func:`encode_example`: a prompt (text, or chat messages through the tokenizer's chat
  template with the generation prompt -- exactly the ids a generator is given,
  :func:`rlvr.generation.encode_prompt`) and a completion (its text, then the
  end-of-sequence token the policy stops on) as token ids, truncated:

  * the prompt to its LAST ``max_prompt_length`` tokens (truncated on the left: the end of
    the prompt, next to the completion, is kept -- what TRL's ``truncation_mode="keep_end"``
    did for prompts);
  * then prompt + completion to ``max_length`` by cutting the END of the completion (its
    start is kept, TRL 1.16's ``keep_start``). A prompt that alone fills ``max_length``
    leaves nothing to learn from: that row is dropped and counted, as TRL does.

- :func:`pad_sequences`: rows of (prompt ids, completion ids) as one right-padded batch.
  A DPO/ORPO micro-batch is its chosen rows followed by its rejected rows
  (:func:`pair_rows`), so both sides go through ONE forward, as in TRL.
- :func:`sequence_logps`: each row's log-probability of its completion, summed over the
  completion tokens, and its completion token count (the mean, where a loss needs it, is
  ``sum / count``). Logits are computed only from the first completion position of the batch
  on (``logits_to_keep``) and reduced with :func:`~rlvr.trainers.modeling.selective_log_softmax`.
- :class:`Reference`: the reference log-probs -- a frozen copy of the initial policy
  (:func:`~rlvr.trainers.modeling.reference_model`), or under LoRA the policy with its
  adapters disabled (no second model loaded) -- live per batch, or precomputed once over the
  training rows (``precompute_ref_log_probs``) in a fixed order and chunking. The reference
  is the initial model, which a checkpoint does not change, so the table is recomputed on
  resume and comes out the same (nothing extra is stored).
- :func:`eval_setup` / :func:`evaluate_policy`: the held-out evaluation on ``--env`` -- greedy
  accuracy with :func:`~rlvr.eval.env.evaluate_environment` and an
  :class:`~rlvr.generation.HFGenerator` on the live policy, split over the processes, like
  ``GRPOTrainer.evaluate``.
- :func:`steps_for_epochs`: ``num_epochs`` as optimizer steps.
- :func:`train` / :func:`evaluate`: a trainer's ``train`` and ``evaluate`` methods.
- :func:`set_up` / :func:`finish_set_up`: a trainer's processes, seeds, held-out evaluation,
  policy and reference, then (once its data is encoded) its optimizer, schedule, run
  directory and log.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlvr.environments.base import Environment, Task
from rlvr.generation import encode_prompt
from rlvr.preferences import Label, LoadReport, PairsError, PreferencePair, load_labels, load_pairs, unpair
from rlvr.rewards import Reward
from rlvr.trainers import modeling, run
from rlvr.trainers.config import ConfigError
from rlvr.trainers.modeling import Policy, selective_log_softmax
from rlvr.trainers.run import Processes

logger = logging.getLogger(__name__)

__all__ = [
    "EncodedPair",
    "EncodedLabel",
    "Reference",
    "encode_example",
    "encode_labels",
    "encode_pairs",
    "eval_setup",
    "evaluate_policy",
    "load_preference_labels",
    "load_preference_pairs",
    "make_eval_env",
    "pad_sequences",
    "pair_rows",
    "sequence_logps",
    "steps_for_epochs",
]


# =======================================================================================
# Data
# =======================================================================================


def load_preference_pairs(source: str, field: str = "pairs") -> list[PreferencePair]:
    """Pairs from ``source`` (:func:`rlvr.preferences.load_pairs`), bad rows reported and skipped.

    A missing source, or one without a usable row, is a :class:`ConfigError` naming ``field``
    (e.g. ``DPOConfig.pairs``); trainers call this in ``from_config``, before any model loads.
    """
    _check_exists(source, field)
    report = LoadReport()
    try:
        pairs = load_pairs(source, report=report)
    except (PairsError, FileNotFoundError) as exc:
        raise ConfigError(f"{field}: {exc}") from None
    _report_skipped(report, field)
    return pairs


def load_preference_labels(labels: str | None, pairs: str | None, config_name: str = "KTOConfig") -> list[Label]:
    """KTO examples: a labels file (``prompt`` / ``completion`` / ``label``), or a pairs file unpaired."""
    field = f"{config_name}.labels" if labels else f"{config_name}.pairs"
    source = labels or pairs
    _check_exists(source, field)
    report = LoadReport()
    try:
        out = load_labels(source, report=report) if labels else unpair(load_pairs(source, report=report))
    except (PairsError, FileNotFoundError) as exc:
        raise ConfigError(f"{field}: {exc}") from None
    _report_skipped(report, field)
    return out


def _check_exists(source: str | None, field: str) -> None:
    if not source or not Path(source).exists():
        raise ConfigError(f"{field}: {source}: no such file or directory; build one with python -m rlvr.pairs, or fix the path")


def _report_skipped(report: LoadReport, field: str) -> None:
    skipped = sum(report.skipped.values())
    if skipped:
        logger.warning(
            "%s: %d of %d rows of %s skipped (%s); training on the %d good ones",
            field, skipped, report.rows, report.source, ", ".join(f"{k}: {v}" for k, v in report.skipped.items()), report.kept,
        )  # fmt: skip


@dataclass(frozen=True)
class EncodedPair:
    """A pair as token ids: the prompt once, each completion ending with the end-of-sequence token."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass(frozen=True)
class EncodedLabel:
    """A KTO example as token ids."""

    prompt_ids: list[int]
    completion_ids: list[int]
    desirable: bool


def encode_example(
    tokenizer: Any,
    prompt: str | Sequence[dict],
    completion: str,
    max_length: int,
    max_prompt_length: int | None,
) -> tuple[list[int], list[int]] | None:
    """``(prompt_ids, completion_ids)`` truncated as the module docstring says; None when nothing of the completion fits."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]  # keep the end of the prompt, next to the completion
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None and (not completion_ids or completion_ids[-1] != tokenizer.eos_token_id):
        completion_ids.append(tokenizer.eos_token_id)
    room = max_length - len(prompt_ids)
    if room < 1:
        return None
    return prompt_ids, completion_ids[:room]  # keep the start of the completion


def encode_pairs(
    tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int, max_prompt_length: int | None
) -> list[EncodedPair]:
    """Every pair through :func:`encode_example`; pairs whose prompt fills ``max_length`` are dropped (and reported)."""
    out, dropped = [], 0
    for p in pairs:
        chosen = encode_example(tokenizer, p.prompt, p.chosen, max_length, max_prompt_length)
        rejected = encode_example(tokenizer, p.prompt, p.rejected, max_length, max_prompt_length)
        if chosen is None or rejected is None:
            dropped += 1
            continue
        out.append(EncodedPair(chosen[0], chosen[1], rejected[1]))
    if dropped:
        logger.warning(
            "%d pair(s) dropped: the prompt alone fills max_length=%d; raise max_length or set max_prompt_length",
            dropped,
            max_length,
        )
    if not out and pairs:
        raise ConfigError(f"max_length: every prompt fills max_length={max_length}; raise it or set max_prompt_length below it")
    return out


def encode_labels(tokenizer: Any, labels: Sequence[Label], max_length: int, max_prompt_length: int | None) -> list[EncodedLabel]:
    """Every KTO example through :func:`encode_example` (dropped ones reported)."""
    out, dropped = [], 0
    for lab in labels:
        enc = encode_example(tokenizer, lab.prompt, lab.completion, max_length, max_prompt_length)
        if enc is None:
            dropped += 1
            continue
        out.append(EncodedLabel(enc[0], enc[1], bool(lab.desirable)))
    if dropped:
        logger.warning("%d example(s) dropped: the prompt alone fills max_length=%d", dropped, max_length)
    if not out and labels:
        raise ConfigError(f"max_length: every prompt fills max_length={max_length}; raise it or set max_prompt_length below it")
    return out


def pad_sequences(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Rows of ``(prompt_ids, completion_ids)`` as right-padded ``input_ids`` / ``attention_mask`` / ``completion_mask``.

    ``max_length`` (optional) cuts every row's end, as the collator of TRL 1.16 does (rows
    built by :func:`encode_example` already fit).
    """
    seqs, comp = [], []
    for prompt_ids, completion_ids in rows:
        ids = (prompt_ids + completion_ids)[:max_length]
        mask = ([0] * len(prompt_ids) + [1] * len(completion_ids))[:max_length]
        seqs.append(ids)
        comp.append(mask)
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    completion = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (ids, mask) in enumerate(zip(seqs, comp)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        completion[i, : len(ids)] = torch.tensor(mask)
    return {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}


def pair_rows(pairs: Sequence[EncodedPair]) -> list[tuple[list[int], list[int]]]:
    """A micro-batch of pairs as rows: every chosen completion, then every rejected one (one forward for both)."""
    return [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]


# =======================================================================================
# Log-probabilities
# =======================================================================================


def sequence_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], bf16: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the completion's log-probability summed over its tokens ``[N]``, and its token count ``[N]``.

    Logits are kept from the batch's first completion position on (the prompt positions
    before it need none), in float32 for the log-softmax.
    """
    ids = batch["input_ids"].to(device)
    attn = batch["attention_mask"].to(device)
    comp = batch["completion_mask"].to(device)
    width = ids.shape[1]
    first = int(comp.float().argmax(dim=1).min())  # earliest completion token of any row (>= 1: prompts are never empty)
    first = max(first, 1)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=width - first + 1, use_cache=False).logits[:, :-1]
    targets = ids[:, first:]
    mask = comp[:, first:].to(torch.float32)
    per_token = selective_log_softmax(logits, targets)
    return (per_token * mask).sum(1), mask.sum(1)


class Reference:
    """The reference log-probs: a frozen copy of the initial policy, or under LoRA the policy with adapters off.

    Args:
        policy: The policy (its ``bf16`` and ``device`` are used).
        ref_model: A frozen copy (:func:`~rlvr.trainers.modeling.reference_model`); None under
            LoRA, where the policy with its adapters disabled IS the initial model.
    """

    def __init__(self, policy: Policy, ref_model: torch.nn.Module | None) -> None:
        self.policy, self.ref_model = policy, ref_model
        self.table: torch.Tensor | None = None

    def logps(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`sequence_logps` of ``batch`` under the reference, without gradient."""
        with torch.no_grad():
            if self.ref_model is not None:
                return sequence_logps(self.ref_model, batch, self.policy.bf16, self.policy.device)
            ctx = self.policy.model.disable_adapter() if self.policy.is_peft else contextlib.nullcontext()
            with ctx:
                return sequence_logps(self.policy.model, batch, self.policy.bf16, self.policy.device)

    def precompute(
        self, items: Sequence[Any], make_batch: Callable[[Sequence[Any]], dict[str, torch.Tensor]], chunk: int, columns: int
    ) -> torch.Tensor:
        """The reference log-probs of every item, ``[len(items), columns]``, in item order.

        ``make_batch`` turns a chunk of items into a batch whose rows are ``columns`` blocks of
        ``len(chunk)`` rows (chosen then rejected for a pair: 2). Chunks are taken in order,
        so the table is the same every time it is computed. Stored as :attr:`table`.
        """
        out = []
        starts = list(range(0, len(items), chunk))
        # a sharded reference gathers at every forward: each process runs as many as the one with most
        # items, repeating its last chunk (and dropping the result) when it has fewer
        rounds = modeling.forward_rounds(self.ref_model if self.ref_model is not None else self.policy.model, len(starts))
        if rounds and not starts:
            raise ValueError("a process with no item cannot join a sharded model's forwards")
        for i in range(rounds):
            start = starts[min(i, len(starts) - 1)]
            part = items[start : start + chunk]
            sums, _ = self.logps(make_batch(part))
            if i < len(starts):
                out.append(sums.float().cpu().view(columns, len(part)).T)
        self.table = torch.cat(out) if out else torch.zeros(0, columns)
        return self.table


# =======================================================================================
# Set-up
# =======================================================================================


def set_up(
    trainer: Any,
    config: Any,
    model: Any,
    tokenizer: Any,
    peft_config: Any,
    env: Environment | None,
    reward: Reward | None,
    eval_tasks: Sequence[Task] | None,
    reference: bool = True,
) -> None:
    """The first half of an offline trainer's set-up, as attributes of ``trainer``.

    ``config``; ``processes`` and ``rank`` / ``world_size`` / ``is_main``; the seeds;
    ``reward`` and ``eval_tasks`` (:func:`eval_setup`); ``policy`` with ``model``,
    ``tokenizer`` and ``device``; with ``reference``, ``reference`` (:class:`Reference`: a
    frozen copy of the initial policy, or the adapter-disabled policy under LoRA). The trainer
    then encodes its data and calls :func:`finish_set_up`.
    """
    trainer.config = config
    trainer.processes = processes = run.Processes(config.stall_timeout_s)
    trainer.rank, trainer.world_size, trainer.is_main = processes.rank, processes.world_size, processes.is_main
    run.seed_everything(config.seed)
    trainer.reward, trainer.eval_tasks = eval_setup(config, env, reward, eval_tasks)
    trainer.policy = policy = modeling.load_policy(config, processes, model, tokenizer, peft_config)
    trainer.model, trainer.tokenizer, trainer.device = policy.model, policy.tokenizer, policy.device
    if reference:
        trainer.reference = Reference(policy, modeling.reference_model(policy, config, processes))


def finish_set_up(trainer: Any, num_items: int, desc: str, postfix: tuple[str, ...]) -> None:
    """The second half: ``max_steps`` from ``num_epochs`` over ``num_items`` (when set),
    ``optimizer`` (AdamW over the trainable parameters), ``scheduler``, ``step`` 0, ``output_dir``
    (one for all processes, nothing created yet) and ``log`` / ``history`` (the progress bar's
    ``desc`` and ``postfix`` metrics)."""
    cfg = trainer.config
    if cfg.num_epochs is not None and num_items:
        cfg.max_steps = steps_for_epochs(cfg.num_epochs, num_items, cfg.batch_size)
    trainer.optimizer = modeling.make_optimizer(cfg, [p for p in trainer.model.parameters() if p.requires_grad], trainer.device)
    trainer.scheduler = modeling.make_scheduler(cfg, trainer.optimizer)
    trainer.step = 0
    trainer.output_dir = run.choose_run_dir(cfg.output_dir, trainer.processes)
    trainer.log = run.RunLog(trainer.output_dir, trainer.processes, cfg, desc=desc, postfix=postfix)
    trainer.history = trainer.log.history


# =======================================================================================
# Schedule and evaluation
# =======================================================================================


def steps_for_epochs(num_epochs: float, num_items: int, batch_size: int) -> int:
    """Optimizer steps that see ``num_items`` ``num_epochs`` times, ``batch_size`` per step (at least 1)."""
    return max(1, math.ceil(num_epochs * num_items / batch_size))


def eval_setup(
    config: Any, env: Environment | None, reward: Reward | None, eval_tasks: Sequence[Task] | None
) -> tuple[Reward | None, list[Task]]:
    """The held-out tasks (``test`` split, first ``eval_max_tasks``, the config's system prompt) and the reward that grades them."""
    tasks = list(eval_tasks) if eval_tasks is not None else (env.tasks("test") if env is not None else [])
    tasks = [t.with_system_prompt(config.system_prompt) for t in tasks][: config.eval_max_tasks]
    if reward is None and env is not None:
        reward = env.reward()
    return reward, tasks


def evaluate_policy(
    policy: Policy,
    processes: Processes,
    tasks: Sequence[Task],
    reward: Reward,
    max_new_tokens: int,
    seed: int,
    correct_threshold: float,
    step: int,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Greedy held-out accuracy of the live policy (:func:`~rlvr.eval.env.evaluate_environment`), split over the processes."""
    from rlvr.eval.env import evaluate_environment

    start = time.perf_counter()
    generator = modeling.live_generator(policy, batch_size=batch_size)
    with modeling.generating(generator):  # every process is here together
        result = evaluate_environment(
            None,
            generator,
            tasks=list(tasks),
            reward=reward,
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            seed=seed,
            correct_threshold=correct_threshold,
            shard=(processes.rank, processes.world_size),
            gather=processes.gather,
        )
    return {**result, "step": step, "time_s": time.perf_counter() - start}


def train(trainer: Any) -> dict[str, Any]:
    """An offline trainer's ``train``: :func:`rlvr.trainers.run.run_training` to ``max_steps``,
    evaluating before and after when there are held-out tasks; returns the eval summary."""
    resolved = {**modeling.precision_record(trainer.policy), "max_steps": trainer.config.max_steps}
    return run.run_training(trainer, resolved, has_eval=bool(trainer.eval_tasks))


def evaluate(trainer: Any, tasks: Sequence[Task] | None = None) -> dict[str, Any]:
    """An offline trainer's ``evaluate``: :func:`evaluate_policy` of its live policy on ``tasks``
    (default: its held-out ``eval_tasks``), graded by its ``reward``."""
    cfg = trainer.config
    return evaluate_policy(
        trainer.policy, trainer.processes, trainer.eval_tasks if tasks is None else tasks, trainer.reward,
        cfg.max_completion_length, cfg.seed, cfg.correct_threshold, trainer.step,
    )  # fmt: skip


def make_eval_env(config: Any) -> tuple[Environment | None, Reward | None]:
    """The config's ``env`` (with ``env_kwargs``) and ``verifier``, or ``(None, None)`` when no env is named."""
    from rlvr.registry import load_verifier

    reward = load_verifier(config.verifier) if config.verifier else None
    if not config.env:
        return None, reward
    from rlvr.environments import make_environment

    try:
        env = make_environment(config.env, **config.env_kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"{type(config).__name__}.env_kwargs: {config.env_kwargs} do not fit environment {config.env!r} ({exc})"
        ) from None
    return env, reward
