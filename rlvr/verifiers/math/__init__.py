r"""``MathVerifier``: is the model's final answer mathematically equal to the reference?

::

    from rlvr.rewards import Sample
    from rlvr.verifiers.math import MathVerifier

    verifier = MathVerifier()
    [out] = verifier.score([Sample("", r"... so the answer is $\boxed{0.75}$.", reference=r"\frac{3}{4}")])
    out.score, out.reason        # 1.0, '0.75 == \\frac{3}{4} (numeric)'

How a pair is decided, cheapest first:

1. **Extraction** (in the caller's process). The LAST ``\boxed{...}`` / ``\fbox{...}``
   (nested braces handled, ``\boxed 5`` too) is the answer. Boxes joined only by
   punctuation, spacing, "and" or "or" form one answer (``\boxed{1}, \boxed{2}`` is the
   list ``1, 2``); a box, then other text, then another box means the later box replaces
   the earlier one. So a self-correction ("\boxed{2}. Wait, no: \boxed{3}") counts, and a
   hedge ("\boxed{2} or \boxed{3}") is the answer "2 or 3" -- right only when the
   reference lists both values, wrong for a reference of 3. An exact box followed by its
   approximation (``\boxed{\sqrt{3}} \approx \boxed{1.732}``) is one answer whose exact
   part decides, as in a single box written that way. Without a box, the
   ``fallbacks`` given are tried in order (``"final_answer"``, ``"answer_is"``,
   ``"gsm8k"`` for ``#### n``, ``"last_latex"``, ``"whole"``, ``"last_number"``); none
   by default. No answer -> ``OK`` with score 0.0 and reason ``"no \boxed{} answer"``.
2. **Strings and plain numbers** (in the caller's process). Normalised strings that match
   are equal; plain numbers (integers, decimals, fractions, mixed numbers, scientific
   notation, thousands separators, ``$``, ``%``) are compared EXACTLY as rationals.
3. **sympy** (in worker processes killed at ``timeout_s``): expressions, radicals,
   ``\pi``, ``e``, logs, trig, equations, sets, tuples, intervals and inequalities,
   times of day, multiple-choice options with their text, several solutions, matrices, ``\sum``/``\prod`` and sums or products written with an ellipsis, piecewise
   ``\begin{cases}`` answers (compared case by case); see :mod:`rlvr.verifiers.math.latex`
   for the parser and why it is hand-written.
4. **Words** (after the mathematical comparison said no): "infinitely many" is
   ``\infty``; residue classes in any form (``n \equiv 2 \pmod 4``, ``n = 4k+2``, "those
   congruent to 2 modulo 4"). With ``phrase_match=True`` (default) a text reference that
   is a one-clause sentence accepts a 1-4-word answer that is its subject or predicate
   ("Petya" for "Petya will receive the last token."), a sentence stating quantities
   clause by clause accepts the same numbers listed with their labels, and a sentence
   stating a sign accepts the inequality -- the conservative rules of
   :func:`rlvr.verifiers.math.text.phrase_match`, ``quantities_match`` and
   ``sign_statement_match``.

Number rules: ``0.333`` is not ``1/3`` (pass ``rel_tol=1e-3`` to accept approximations);
a reference written as a decimal (``41.494``, ``165.47``) is itself a rounded value, so
with ``gold_precision=True`` (the default) it accepts an answer whose value rounds or
truncates to it, and a coarser decimal answer of at least 3 significant digits that it
rounds to (``165.5``); see :func:`rlvr.verifiers.math.plain_numbers.stated_precision`.
``28\%`` as reference accepts ``28`` and ``0.28``; ``5\%`` as an answer means ``0.05``,
and also matches a plain integer or decimal reference ``5`` (GSM8K writes 5 for 5%), but
not a fraction (``4 4/9\%`` is not ``40/9``).

Every pair gets an outcome within ``timeout_s`` (+ process overhead), hostile input
included: length caps and size guards refuse ``9^{9^{9^{9}}}`` or ``10000000!`` before
sympy computes them (a wrong answer, with the reason), and anything that still runs too
long is killed with its worker (``Status.TIMEOUT``, never a 0). No signals are used, so the
verifier works from any thread.

The package, lowest layer first (a module imports only modules listed above it):

- :mod:`~rlvr.verifiers.math.normalization` -- ``normalize``, ``compact``, ``repair_escapes``,
  ``split_top_level``: LaTeX noise, units and escapes stripped from an answer;
- :mod:`~rlvr.verifiers.math.plain_numbers` -- ``parse_number``, ``Number``,
  ``stated_precision``: plain numbers read exactly, decimal-precision rules;
- :mod:`~rlvr.verifiers.math.text` -- ``phrase_match``, ``quantities_match``,
  ``residues_equal``, ``sign_statement_match``, ``choice_option``: answers written in words;
- :mod:`~rlvr.verifiers.math.extraction` -- ``extract_answer``, ``extract_reference``,
  ``FALLBACKS``: the answer in a completion, the gold answer in a reference;
- :mod:`~rlvr.verifiers.math.latex` -- ``latex_to_sympy``, ``tokenize``, ``TooLarge``,
  ``ParseError``: the LaTeX -> sympy parser with its size guards (sympy from here on);
- :mod:`~rlvr.verifiers.math.numeric` -- 50-digit evaluation at test points, relative closeness;
- :mod:`~rlvr.verifiers.math.forms` -- ``parse_answer``, ``Node``, ``clock_time``: answer
  forms (lists, tuples, sets, intervals, inequalities, equations, assignments, matrices,
  times of day, text);
- :mod:`~rlvr.verifiers.math.equivalence` -- ``check``, ``Options``, ``nodes_equal``: the
  equivalence check run in the worker processes;
- this ``__init__`` -- :class:`MathVerifier`. It imports the string half eagerly and the
  sympy half only inside the workers; the public names of every module can be imported
  from ``rlvr.verifiers.math`` (the sympy ones load sympy on first access).
"""

from __future__ import annotations

import importlib
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from typing import Any

from rlvr.rewards import Outcome, Sample, Status, forget_after_fork, isolated
from rlvr.verifiers.math.extraction import FALLBACKS, extract_answer, extract_reference
from rlvr.verifiers.math.normalization import MAX_ANSWER_CHARS, compact, normalize
from rlvr.verifiers.math.plain_numbers import Number, parse_number, stated_precision

__all__ = ["MathVerifier", "accepted_answers"]

# Public names of the submodules that MathVerifier does not use itself, importable from the
# package all the same. They load on first access, so that importing MathVerifier does not
# import sympy in the caller's process (only the worker processes need it).
_LAZY = {
    **dict.fromkeys(["repair_escapes", "split_top_level", "strip_approx"], "normalization"),
    **dict.fromkeys(["MAX_EXPONENT"], "plain_numbers"),
    **dict.fromkeys(["choice_option", "phrase_match", "quantities_match", "residue_classes", "residues_equal", "sign_statement_match"], "text"),
    **dict.fromkeys(
        ["MAX_DEPTH", "MAX_DIGITS", "MAX_FACTORIAL", "ParseError", "TooLarge", "guarded_factorial", "guarded_pow", "latex_to_sympy", "tokenize"],
        "latex",
    ),
    **dict.fromkeys(["Node", "clock_time", "parse_answer"], "forms"),
    **dict.fromkeys(["Options", "check", "declared_params", "nodes_equal", "scalar_equal"], "equivalence"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

_MAX_COMPLETION_CHARS = 1_000_000


def _short(s: str, n: int = 60) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _numbers_equal(g: Number, g_pct: bool, p: Number, p_pct: bool, rel_tol: float | None, gold_precision: bool) -> tuple[bool, str]:
    """Exact rational comparison with the percent and stated-precision rules."""
    # (value, shift of the reference's decimals, percent-scaled?)
    targets = [(g.value, 0, False)]
    if g_pct and not p_pct:
        targets.append((g.value / 100, 2, True))
    if p_pct and not g_pct:
        # "20%" for a reference of 0.2, and for a plain 20 (GSM8K writes 20 for 20%);
        # not for a reference written as a fraction (4 4/9% is not 40/9)
        targets = [(g.value * 100, -2, True)] + ([(g.value, 0, False)] if g.value.denominator == 1 or g.decimals else [])
    for target, shift, scaled in targets:
        if target == p.value:
            return True, "numeric" + (" (percent)" if scaled else "")
        if rel_tol and (g.decimals or p.decimals):
            scale = max(abs(target), abs(p.value))
            if abs(target - p.value) <= Fraction(repr(rel_tol)) * scale:
                return True, f"numeric within rel_tol={rel_tol:g}"
        if gold_precision and g.decimals:
            how = stated_precision(target, max(0, g.decimals + shift), g.sig, p.value, p.decimals, p.sig)
            if how:
                return True, how
    return False, "numeric"


# One pair per kind of check: expressions, intervals, inequalities, equations, matrices, sets.
_WARMUP_PAIRS = [
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("[0, 1)", "0 \\le x < 1"),
    ("-x > -1", "x < 1"),
    ("x \\ne 3", "x \\neq 3"),
    ("2x + 4y - 3 = 0", "y = -\\frac{1}{2}x + \\frac34"),
    ("\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}", "\\begin{bmatrix}1 & 2\\\\ 3 & 4\\end{bmatrix}"),
    ("\\{1, 2\\}", "\\{2, 1\\}"),
    ("\\tan^2 y + 1", "\\sec^2 y"),
    ("(-\\infty, 2] \\cup (3, \\infty)", "x \\le 2 \\text{ or } x > 3"),
]


# How many accepted answers a reference may list.
MAX_REFERENCES = 256


def _plain(value: Any) -> Any:
    """numpy arrays and scalars, tensors: as Python lists / numbers."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (str, bytes)) else value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def accepted_answers(reference: Any) -> list[Any] | str:
    """The answers a reference accepts, or a message saying why it has none.

    A plain value accepts itself. A list, tuple, set or array lists several accepted answers:
    each element (an element that is itself a list is one answer, written as it is), and the
    whole reference as written (``(1, 2)`` still accepts ``\\boxed{(1, 2)}``). ``None``, NaN and
    an empty list have none.
    """
    reference = _plain(reference)
    if not isinstance(reference, (list, tuple, set, frozenset)):
        if _missing(reference):
            return "no reference answer: Sample.reference is None or NaN; give the gold answer as reference"
        return [reference]
    items = sorted(reference, key=str) if isinstance(reference, (set, frozenset)) else list(reference)
    out: list[Any] = []
    for item in map(_plain, items):
        if not _missing(item):
            out.append(item if isinstance(item, (str, int, float)) else str(item))
    if not out:
        return "no reference answer: the list of accepted answers is empty"
    if len(out) > MAX_REFERENCES:
        return f"reference lists {len(out)} accepted answers; at most {MAX_REFERENCES}"
    if len(out) > 1:
        out.append(str(reference if not isinstance(reference, (set, frozenset)) else tuple(items)))
    return out


def _any_of(outcomes: Sequence[Outcome]) -> Outcome:
    """One outcome for a completion checked against several accepted answers."""
    if len(outcomes) == 1:
        return outcomes[0]
    elapsed = sum(o.elapsed_s for o in outcomes)
    metrics = dict(outcomes[0].metrics)
    for k, o in enumerate(outcomes):
        if o.status is Status.OK and o.score == 1.0:
            return Outcome.ok(1.0, f"accepted answer {k + 1} of {len(outcomes)}: {o.reason}", metrics=dict(o.metrics), elapsed_s=elapsed)
    failed = [o for o in outcomes if o.status in (Status.ERROR, Status.TIMEOUT)]
    if failed:  # it may have matched the answer whose check failed
        status = Status.ERROR if any(o.status is Status.ERROR for o in failed) else Status.TIMEOUT
        return Outcome(None, status, f"no accepted answer matched and {len(failed)} check(s) failed: {failed[0].reason}", metrics, elapsed)
    return Outcome.ok(0.0, f"none of {len(outcomes)} accepted answers: {outcomes[0].reason}", metrics=metrics, elapsed_s=elapsed)


class _SympyCheck:
    """The sympy stage, run inside isolated worker processes (one sample = one pair)."""

    name = "math"

    def __init__(self, rel_tol: float | None, gold_precision: bool, phrase_match: bool = True, assume_positive: bool = False) -> None:
        self.rel_tol = rel_tol
        self.gold_precision = gold_precision
        self.phrase_match = phrase_match
        self.assume_positive = assume_positive

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        from rlvr.verifiers.math.equivalence import Options, check

        opts = Options(rel_tol=self.rel_tol, gold_precision=self.gold_precision, phrases=self.phrase_match, positive=self.assume_positive)
        out = []
        for s in samples:
            ok, how = check(s.reference, s.completion, opts)
            out.append(Outcome.ok(1.0 if ok else 0.0, how))
        return out


class MathVerifier:
    """A Reward: 1.0 when the completion's final answer equals the reference, else 0.0.

    Args:
        fallbacks: Extractors tried in order when the completion has no ``\\boxed{}``;
            any of ``"final_answer"``, ``"answer_is"``, ``"gsm8k"`` (``#### n``),
            ``"last_latex"``, ``"whole"`` (the whole completion, if short), ``"last_number"``.
            Empty (the default) means a completion without a box scores 0.
        rel_tol: Accept decimals within this relative tolerance of the reference
            (``0.333`` for ``1/3`` needs ``rel_tol >= 1e-3``). ``None``: exact. Integers and
            exact forms are always compared exactly.
        gold_precision: A reference written as a decimal (``41.494``) is a rounded value:
            it accepts answers that round or truncate to it at its number of decimals, and
            a coarser decimal answer (3+ significant digits) that it rounds to. ``False``:
            decimals are exact too.
        timeout_s: Wall-clock deadline per pair for the sympy stage; past it the pair is
            ``Status.TIMEOUT`` and its worker is killed.
        max_workers: Worker processes for the sympy stage (default: CPU count, at most 4).
        memory_mb: Address-space headroom per worker.
        phrase_match: Text references: accept a short text answer that is the reference
            sentence's subject or predicate ("Petya" for "Petya will receive the last
            token."; conservative rules in :func:`rlvr.verifiers.math.text.phrase_match`).
            ``False``: text must match as a whole.
        assume_positive: Take every symbol to be a positive real, as in a problem whose
            variable is a positive integer: ``\\sqrt{4/m}`` equals ``\\frac{2}{\\sqrt{m}}``
            and ``\\sqrt{x^2}`` equals ``x``. ``False`` (the default): an identity must also
            hold at negative values, so both pairs differ.
        cheap_in_process: Decide string/number pairs in the caller's process (fast); set
            False to send every pair to the workers.
        isolate: Run the sympy stage in worker processes (the default). ``False`` runs it
            in-process with NO deadline -- only for debugging trusted input.
    """

    name = "math"

    def __init__(
        self,
        fallbacks: Sequence[str] = (),
        rel_tol: float | None = None,
        gold_precision: bool = True,
        phrase_match: bool = True,
        assume_positive: bool = False,
        timeout_s: float = 2.0,
        max_workers: int | None = None,
        memory_mb: int | None = 1024,
        cheap_in_process: bool = True,
        isolate: bool = True,
    ) -> None:
        if isinstance(fallbacks, str):
            fallbacks = (fallbacks,)
        bad = [f for f in fallbacks if f not in FALLBACKS]
        if bad:
            raise ValueError(f"MathVerifier: unknown fallback(s) {bad}; choose from {list(FALLBACKS)}")
        if rel_tol is not None and not (0 <= rel_tol < 1):
            raise ValueError(f"MathVerifier: rel_tol must be in [0, 1), got {rel_tol}; use None for exact comparison")
        if timeout_s <= 0:
            raise ValueError(f"MathVerifier: timeout_s must be positive, got {timeout_s}")
        self.fallbacks = tuple(fallbacks)
        self.rel_tol = rel_tol
        self.gold_precision = gold_precision
        self.phrase_match = phrase_match
        self.assume_positive = assume_positive
        self.timeout_s = float(timeout_s)
        self.max_workers = max_workers or max(1, min(4, os.cpu_count() or 1))
        self.memory_mb = memory_mb
        self.cheap_in_process = cheap_in_process
        self.isolate = isolate
        self._pool = None
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        forget_after_fork(self)
        self._gold_cache: OrderedDict[str, tuple[str, str, bool, Number | None]] = OrderedDict()

    # -- pickling: the worker pool stays behind -------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_lock"] = None
        state["_cache_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        forget_after_fork(self)

    def _after_fork(self) -> None:
        """In a forked child: the sympy pool and the locks it inherited are its parent's."""
        self._pool, self._lock, self._cache_lock = None, threading.Lock(), threading.Lock()

    def _get_pool(self):
        with self._lock:
            if self._pool is None:
                self._pool = isolated(
                    _SympyCheck(self.rel_tol, self.gold_precision, self.phrase_match, self.assume_positive),
                    timeout_s=self.timeout_s,
                    max_workers=self.max_workers,
                    memory_mb=self.memory_mb,
                    chunk_size=16,
                )
            return self._pool

    def warmup(self) -> None:
        """Start the sympy workers and run each kind of check once, so the first real batch
        does not pay for imports and sympy's first-use caches (about a second per worker)."""
        self.score([Sample("", f"\\boxed{{{p}}}", reference=g) for g, p in _WARMUP_PAIRS] * self.max_workers)

    def _gold(self, reference: Any) -> tuple[str, str, bool, Number | None]:
        key = str(reference)
        hit = self._gold_cache.get(key)
        if hit is None:
            gold = extract_reference(key)
            norm, pct = normalize(gold) if len(gold) <= MAX_ANSWER_CHARS else (gold, False)
            hit = (gold, norm, pct, parse_number(norm))
            with self._cache_lock:
                self._gold_cache[key] = hit
                if len(self._gold_cache) > 8192:
                    self._gold_cache.popitem(last=False)
        return hit

    def _cheap(self, gold: tuple[str, str, bool, Number | None], pred: str) -> tuple[bool, str] | None:
        """Decide a pair without sympy when strings or plain numbers settle it."""
        _, g_norm, g_pct, g_num = gold
        if len(pred) > MAX_ANSWER_CHARS:
            return None
        p_norm, p_pct = normalize(pred)
        if compact(p_norm) == compact(g_norm) and p_pct == g_pct and p_norm:
            return True, f"{_short(p_norm)} == {_short(g_norm)} (string)"
        p_num = parse_number(p_norm)
        if g_num is not None and p_num is not None:
            ok, how = _numbers_equal(g_num, g_pct, p_num, p_pct, self.rel_tol, self.gold_precision)
            return ok, f"{_short(p_norm)} {'==' if ok else '!='} {_short(g_norm)} ({how})"
        return None

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Score a batch: cheap pairs here, the rest in the sympy workers.

        A reference that is a list, tuple, set or array holds several accepted answers: the
        completion is right when it equals ANY of them (each is checked; one whose check
        failed while none matched makes the outcome that failure, never a 0).
        """
        flat: list[Sample] = []
        spans: list[tuple[int, int] | Outcome] = []
        for sample in samples:
            golds = accepted_answers(sample.reference)
            if isinstance(golds, str):  # why this reference cannot be used
                spans.append(Outcome.error(golds))
                continue
            spans.append((len(flat), len(flat) + len(golds)))
            flat.extend(sample if len(golds) == 1 and golds[0] is sample.reference else replace(sample, reference=g) for g in golds)
        scored = self._score_flat(flat)
        return [span if isinstance(span, Outcome) else _any_of(scored[span[0] : span[1]]) for span in spans]

    def _score_flat(self, samples: Sequence[Sample]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(samples)
        pending: list[tuple[int, float, str, str, str]] = []
        for i, sample in enumerate(samples):
            start = time.perf_counter()
            completion = sample.completion[-_MAX_COMPLETION_CHARS:]  # the answer is at the end
            pred, how = extract_answer(completion, self.fallbacks)
            if pred is None:
                reason = "no \\boxed{} answer" if not self.fallbacks else "no answer found (no \\boxed{}, fallbacks " + ", ".join(self.fallbacks) + ")"
                results[i] = Outcome.ok(0.0, reason, metrics={"extracted": 0.0}, elapsed_s=time.perf_counter() - start)
                continue
            gold = self._gold(sample.reference)
            verdict = self._cheap(gold, pred) if self.cheap_in_process else None
            if verdict is not None:
                ok, reason = verdict
                results[i] = Outcome.ok(float(ok), reason, metrics={"extracted": 1.0}, elapsed_s=time.perf_counter() - start)
                continue
            pending.append((i, time.perf_counter() - start, gold[0], pred, how))
        if pending:
            work = [Sample("", pred, reference=gold) for _, _, gold, pred, _ in pending]
            if self.isolate:
                outs = self._get_pool().score(work)
            else:
                outs = _SympyCheck(self.rel_tol, self.gold_precision, self.phrase_match, self.assume_positive).score(work)
            for (i, spent, gold, pred, _how), out in zip(pending, outs):
                elapsed = spent + out.elapsed_s
                if out.status is Status.OK:
                    ok = out.score == 1.0
                    reason = f"{_short(pred)} {'==' if ok else '!='} {_short(gold)} ({out.reason})"
                    results[i] = Outcome.ok(out.score, reason, metrics={"extracted": 1.0}, elapsed_s=elapsed)
                else:
                    results[i] = Outcome(None, out.status, f"{_short(pred)} vs {_short(gold)}: {out.reason}", {"extracted": 1.0}, elapsed)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the sympy worker processes (they restart on the next ``score``)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __del__(self) -> None:
        try:
            if self._pool is not None:
                self._pool.close()
        except Exception:  # noqa: BLE001, S110 -- at interpreter shutdown there is nothing left to report to
            pass

    def __repr__(self) -> str:
        return f"MathVerifier(fallbacks={self.fallbacks}, rel_tol={self.rel_tol}, timeout_s={self.timeout_s}, max_workers={self.max_workers})"
