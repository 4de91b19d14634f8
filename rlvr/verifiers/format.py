r"""Small format rewards: a final ``\boxed{}`` answer, ``<think>...</think>`` then an answer,
and a soft penalty for overlong completions.

They are meant to be added to a correctness reward with :class:`rlvr.rewards.WeightedSum`::

    reward = WeightedSum([(MathVerifier(), 1.0), (BoxedFormat(), 0.1), (LengthPenalty(max_chars=4000), 1.0)])

All three are pure string checks: no sandbox, no workers, microseconds per sample.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from rlvr.rewards import Outcome, Sample
from rlvr.verifiers.math.extraction import extract_answer

__all__ = ["BoxedFormat", "LengthPenalty", "ThinkFormat", "overlong_penalty"]


class BoxedFormat:
    r"""1.0 if the completion ends with a final ``\boxed{...}`` answer, else 0.0.

    "Final" means the last box (see :func:`rlvr.verifiers.math.extraction.extract_answer`) is
    non-empty. With ``require_end=True`` (default False) nothing but punctuation, closing
    math delimiters and at most ``max_trailing_chars`` other characters may follow it.
    """

    name = "boxed_format"

    def __init__(self, require_end: bool = False, max_trailing_chars: int = 200) -> None:
        if max_trailing_chars < 0:
            raise ValueError(f"BoxedFormat: max_trailing_chars must be >= 0, got {max_trailing_chars}")
        self.require_end = require_end
        self.max_trailing_chars = max_trailing_chars

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Score each completion for a final boxed answer."""
        out = []
        for s in samples:
            answer, _ = extract_answer(s.completion)
            if answer is None or not answer.strip():
                out.append(Outcome.ok(0.0, "no \\boxed{} answer" if answer is None else "empty \\boxed{}"))
                continue
            if self.require_end:
                tail = s.completion[s.completion.rfind(answer) + len(answer) :]
                tail = re.sub(r"[\s}$.,;:!)\]\\]|\\\)|\\\]", "", tail)
                if len(tail) > self.max_trailing_chars:
                    out.append(Outcome.ok(0.0, f"{len(tail)} characters after the last \\boxed{{}}"))
                    continue
            out.append(Outcome.ok(1.0, "has a \\boxed{} answer"))
        return out


class ThinkFormat:
    """1.0 for ``<think>reasoning</think>`` followed by a non-empty answer, else 0.0.

    Exactly one ``<think>`` block; it must come first (only whitespace before it, unless
    ``allow_prefix=True`` -- some chat templates put ``<think>`` in the prompt, then pass
    ``opening_in_prompt=True`` and the completion starts inside the block). The reasoning
    and the answer after ``</think>`` must both be non-empty.
    """

    name = "think_format"

    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>", opening_in_prompt: bool = False, allow_prefix: bool = False) -> None:
        if not open_tag or not close_tag:
            raise ValueError("ThinkFormat: open_tag and close_tag must be non-empty strings")
        self.open_tag = open_tag
        self.close_tag = close_tag
        self.opening_in_prompt = opening_in_prompt
        self.allow_prefix = allow_prefix

    def _check(self, text: str) -> tuple[float, str]:
        o, c = self.open_tag, self.close_tag
        if self.opening_in_prompt:
            text = o + text
        if text.count(o) != 1 or text.count(c) != 1:
            return 0.0, f"needs exactly one {o}...{c} block (found {text.count(o)} {o}, {text.count(c)} {c})"
        start, end = text.index(o), text.index(c)
        if end < start:
            return 0.0, f"{c} comes before {o}"
        if text[:start].strip() and not self.allow_prefix:
            return 0.0, f"text before {o}"
        if not text[start + len(o) : end].strip():
            return 0.0, f"empty {o} block"
        if not text[end + len(c) :].strip():
            return 0.0, f"no answer after {c}"
        return 1.0, "think block then answer"

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Score each completion for the think-then-answer format."""
        return [Outcome.ok(*self._check(s.completion)) for s in samples]


def overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """DAPO's soft overlong penalty: 0 up to ``max_length - buffer``, then falling linearly
    to -1 at ``max_length``, and -1 beyond.

    Derivation (DAPO, Yu et al. 2025, eq. 13): with ``L_max = max_length`` and
    ``L_cache = buffer``, ``R(y) = 0`` if ``|y| <= L_max - L_cache``,
    ``((L_max - L_cache) - |y|) / L_cache`` if ``L_max - L_cache < |y| <= L_max``, else -1.
    """
    if buffer <= 0:
        return 0.0 if length <= max_length else -1.0
    free = max_length - buffer
    if length <= free:
        return 0.0
    if length <= max_length:
        return (free - length) / buffer
    return -1.0


class LengthPenalty:
    """0 within budget, linearly negative beyond it (DAPO-style soft overlong penalty).

    Give ``max_tokens`` (with a ``tokenizer``: a callable str -> list, or a Hugging Face
    tokenizer) or ``max_chars``. ``buffer`` is the soft zone before the limit where the
    penalty ramps from 0 to -1 (default: a quarter of the limit); past the limit it is -1.
    Multiply by a weight in :class:`~rlvr.rewards.WeightedSum` to scale it.
    """

    name = "length_penalty"

    def __init__(self, max_tokens: int | None = None, max_chars: int | None = None, buffer: int | None = None, tokenizer: Callable | None = None) -> None:
        if (max_tokens is None) == (max_chars is None):
            raise ValueError("LengthPenalty: give exactly one of max_tokens= or max_chars=")
        limit = max_tokens if max_tokens is not None else max_chars
        if limit <= 0:
            raise ValueError(f"LengthPenalty: the limit must be positive, got {limit}")
        if max_tokens is not None and tokenizer is None:
            raise ValueError("LengthPenalty(max_tokens=...) needs tokenizer= (a Hugging Face tokenizer or a callable); or use max_chars=")
        if buffer is None:
            buffer = max(1, limit // 4)
        if not 0 <= buffer <= limit:
            raise ValueError(f"LengthPenalty: buffer must be in [0, {limit}], got {buffer}")
        self.limit = limit
        self.unit = "tokens" if max_tokens is not None else "chars"
        self.buffer = buffer
        self.tokenizer = tokenizer

    def _length(self, text: str) -> int:
        if self.unit == "chars":
            return len(text)
        tok = self.tokenizer
        if hasattr(tok, "encode"):
            return len(tok.encode(text, add_special_tokens=False))
        return len(tok(text))

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Penalise each completion by its length."""
        out = []
        for s in samples:
            n = self._length(s.completion)
            pen = overlong_penalty(n, self.limit, self.buffer)
            out.append(Outcome.ok(pen, f"{n} {self.unit} (limit {self.limit}, soft zone {self.buffer})", metrics={"length": float(n)}))
        return out
