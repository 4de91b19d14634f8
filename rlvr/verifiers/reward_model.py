"""A learned reward model as a Reward: the same interface as the deterministic verifiers.

Any ``transformers`` sequence-classification model works: one output (the usual reward-model
head, as trained by TRL's ``RewardTrainer``) gives the score as that logit; two outputs give
``logit[1] - logit[0]`` (the log-odds of the "good" class). Chat prompts are rendered with the
tokenizer's chat template, the completion as the assistant turn.

A learned reward is not a check: it always has an opinion, so it never abstains. A sample it
cannot read (longer than ``max_length`` when ``truncate=False``) is an ERROR, never a 0.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rlvr.rewards import Outcome, Sample

__all__ = ["RewardModelReward"]


class RewardModelReward:
    """Score completions with a sequence-classification model.

    Args:
        model: A model directory or name (resolved with :func:`rlvr.models.resolve_model`),
            or a loaded ``PreTrainedModel``.
        tokenizer: A tokenizer; loaded from ``model`` when it is a path.
        batch_size: Samples per forward pass.
        max_length: Token budget of prompt + completion.
        truncate: Keep the last ``max_length`` tokens of a longer sample (True) or report it
            as an ERROR (False, the default: a truncated sample is not what was written).
        device: ``"cpu"``, ``"cuda"``, ... (default: cuda when available).
        name: The reward's name in logs and metrics.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        batch_size: int = 8,
        max_length: int = 2048,
        truncate: bool = False,
        device: str | None = None,
        name: str = "reward_model",
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if isinstance(model, str):
            from rlvr.models import resolve_model

            path = resolve_model(model)
            model = AutoModelForSequenceClassification.from_pretrained(path)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        if tokenizer is None:
            raise ValueError("RewardModelReward needs a tokenizer when the model is passed as an object")
        num_labels = model.config.num_labels
        if num_labels not in (1, 2):
            raise ValueError(f"a reward model needs 1 output (a score) or 2 (bad/good), this one has {num_labels}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size, self.max_length, self.truncate = batch_size, max_length, truncate
        self.name = name

    def _render(self, sample: Sample) -> str:
        if isinstance(sample.prompt, list):
            messages = [*sample.prompt, {"role": "assistant", "content": sample.completion}]
            if getattr(self.tokenizer, "chat_template", None):
                return self.tokenizer.apply_chat_template(messages, tokenize=False)
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return sample.prompt + sample.completion

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """One forward pass per ``batch_size`` samples."""
        import torch

        outcomes: list[Outcome | None] = [None] * len(samples)
        texts, index = [], []
        for i, sample in enumerate(samples):
            text = self._render(sample)
            n_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if n_tokens > self.max_length and not self.truncate:
                outcomes[i] = Outcome.error(f"{n_tokens} tokens > max_length {self.max_length}; raise max_length or pass truncate=True")
                continue
            texts.append(text)
            index.append(i)
        self.tokenizer.truncation_side = "left"
        for start in range(0, len(texts), self.batch_size):
            t0 = time.perf_counter()
            chunk = texts[start : start + self.batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length, add_special_tokens=False)
            with torch.no_grad():
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
            scores = logits[:, 0] if logits.shape[-1] == 1 else logits[:, 1] - logits[:, 0]
            per = (time.perf_counter() - t0) / len(chunk)
            for j, value in enumerate(scores.tolist()):
                outcomes[index[start + j]] = Outcome.ok(value, f"reward model score {value:.4g}", elapsed_s=per)
        return outcomes  # type: ignore[return-value]
