"""Cheap, sympy-free half of the math verifier: answer extraction, normalisation, numbers.

Everything here is linear-time string work that runs in the caller's process: finding the
answer in a completion, normalising LaTeX noise away, and reading plain numbers as exact
:class:`fractions.Fraction` values. Anything that needs sympy is left to
:mod:`rlvr.verifiers._math_sympy`, which runs in killable worker processes.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from fractions import Fraction
from math import gcd

__all__ = [
    "FALLBACKS",
    "MAX_ANSWER_CHARS",
    "Number",
    "extract_answer",
    "extract_reference",
    "normalize",
    "parse_number",
    "phrase_match",
    "quantities_match",
    "residue_classes",
    "residues_equal",
    "sign_statement_match",
    "split_top_level",
    "stated_precision",
    "strip_approx",
]

#: Longest extracted answer (characters) that is parsed at all; longer ones are only
#: compared as normalised strings. Real answers are far shorter.
MAX_ANSWER_CHARS = 1000

#: Largest power of ten a number may carry (``1e400`` is fine, ``1e99999999`` is not).
MAX_EXPONENT = 1000

#: The fallback extractors, tried in the order given when no ``\boxed{}`` is found.
FALLBACKS = ("final_answer", "answer_is", "gsm8k", "last_latex", "whole", "last_number")

_FALLBACK_WINDOW = 20_000
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")


def _read_group(text: str, start: int) -> tuple[str, int] | None:
    """Read a ``{...}`` group starting at ``text[start] == '{'``; nested braces handled."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Every top-level ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed 5`` as (start, end, content)."""
    out = []
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if not m:
            return out
        j = m.end()
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            got = _read_group(text, j)
            if got is None:  # unbalanced: take the rest of the text
                out.append((m.start(), len(text), text[j + 1 :]))
                return out
            content, end = got
            out.append((m.start(), end, content))
            pos = end
        else:
            # ``\boxed 5``: the answer runs to the next space or dollar sign
            k = j
            while k < len(text) and text[k] not in " $\n":
                k += 1
            if k > j:
                out.append((m.start(), k, text[j:k]))
            pos = max(k, m.end())


# What may stand between two boxes that together form ONE answer (``\boxed{1}, \boxed{2}``,
# ``\boxed{(2,2)} \quad \text{and} \quad \boxed{(6,2)}``): punctuation, spacing and the words
# "and"/"or". Any other text between them (``\boxed{2}. Wait, it is \boxed{3}``) means the
# later box replaces the earlier one.
_JOINER_RE = re.compile(
    r"^(?:\s|[,;.$]|\\[()\[\]]|\\quad|\\qquad|\\[,;:! ]|\\text\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b|&|\\\\)*$"
)
# Also one answer: boxes whose connecting text ENDS in "and" ("\boxed{1} papers and \boxed{2}
# bins", "\boxed{(3,3)} \text{ for part (a) and } \boxed{(1,1)}") or names the next
# unknown ("\( y_1 = \boxed{..} \) and \( y_2 = \boxed{..} \)").
_AND_JOINER_RE = re.compile(
    r"^[\s,;.$]*(?:\\[()\[\]]\s*)*(?:(?:[A-Za-z()]+\s+){0,4}and|\\text\{[^{}]{0,40}\band\s*\})\s*(?:\\[()\[\]]|\$|\s)*"
    r"(?:[A-Za-z](?:_\{?\w+\}?)?\s*=\s*)?$"
)


def _last_box_answer(text: str) -> str | None:
    boxes = _boxes(text)
    if not boxes:
        return None
    group = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        between = text[prev[1] : group[0][0]]
        if (len(between) < 300 and _JOINER_RE.match(between)) or (len(between) < 80 and _AND_JOINER_RE.match(between)):
            group.insert(0, prev)
        else:
            break
    if len(group) == 1:
        return group[0][2]
    joiners = [text[a[1] : b[0]] for a, b in itertools.pairwise(group)]
    sep = " or " if any(re.search(r"\bor\b", j) for j in joiners) else ", "
    return sep.join(g[2] for g in group)


_FINAL_RE = re.compile(r"final answer(?: is|:)\s*(?:the final answer is)?\s*:?\s*(.+?)(?:\.\s*I hope it is correct|\n|$)", re.IGNORECASE)
_FINAL_RE2 = re.compile(r"[Tt]he final answer is\s*:?\s*(.+?)(?:\.\s*I hope it is correct|\n|$)")
_ANSWER_IS_RE = re.compile(r"(?:the |my )?answer is\s*:?\s*(.+?)(?:\n|$)", re.IGNORECASE)
_GSM8K_RE = re.compile(r"####\s*([^\n]+)")
_LATEX_ENV_RE = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$((?:\\\$|[^$\n])+?)(?<!\\)\$", re.DOTALL)
_NUMBER_TOKEN = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:[.,]\d+)?(?:\s*/\s*\d+)?|-?\.\d+"
_LAST_NUMBER_RE = re.compile(r"(?<![A-Za-z0-9_.])(" + _NUMBER_TOKEN + r")")


def _answer_in_sentence(inner: str) -> str | None:
    """The answer inside "the final answer is <sentence>": the whole sentence if it is
    answer-like, else whichever of its last math environment / last number comes later."""
    if _looks_like_answer(inner):
        stripped = inner.strip()
        env = list(_LATEX_ENV_RE.finditer(stripped))
        if len(env) == 1 and env[0].span() == (0, len(stripped)):
            return next(g for g in env[0].groups() if g is not None)
        return stripped
    env = list(_LATEX_ENV_RE.finditer(inner))
    nums = list(_LAST_NUMBER_RE.finditer(inner))
    env_end = env[-1].end() if env else -1
    num = None
    for m in reversed(nums):
        if m.start() >= env_end:
            num = m
            break
    if num is not None:
        return num.group(1)
    if env:
        return next(g for g in env[-1].groups() if g is not None)
    return None


def _sentence_answer(s: str) -> str:
    s = s.strip()
    s = re.sub(r"\s*I hope it is correct.*$", "", s, flags=re.DOTALL)
    s = s.strip().rstrip(".").strip()
    # a quoted answer: "The final answer is \"$12$ and $13$\""
    m = re.fullmatch(r'(?:\\?"|“)(.+?)(?:\\?"|”)', s, flags=re.DOTALL)
    return m.group(1).strip() if m else s


def _fallback(kind: str, text: str) -> str | None:
    if kind == "final_answer":
        ms = list(_FINAL_RE.finditer(text)) or list(_FINAL_RE2.finditer(text))
        if ms:
            return _answer_in_sentence(_sentence_answer(ms[-1].group(1)))
        return None
    if kind == "answer_is":
        ms = list(_ANSWER_IS_RE.finditer(text))
        if ms:
            return _answer_in_sentence(_sentence_answer(ms[-1].group(1)))
        return None
    if kind == "gsm8k":
        ms = list(_GSM8K_RE.finditer(text))
        return ms[-1].group(1).strip() if ms else None
    if kind == "last_latex":
        ms = list(_LATEX_ENV_RE.finditer(text))
        for m in reversed(ms):
            inner = next(g for g in m.groups() if g is not None).strip()
            if inner and inner not in ".,":
                return inner
        return None
    if kind == "whole":
        s = text.strip()
        if len(s) > 300 or "\n" in s:
            return None
        return s if _looks_like_answer(s) else None
    if kind == "last_number":
        return _last_number(text)
    raise ValueError(f"unknown fallback {kind!r}; choose from {FALLBACKS}")


_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_OK_WORDS_TAIL = (r"|percent|percentage|pct|sqrt|pi|sin|cos|tan|log|ln|exp|infty|frac|cup|in|le|ge|leq|geq|neq|lt|gt|pm|mp|cdot|times|div)$")
_OK_WORDS: list[re.Pattern] = []


def _looks_like_answer(s: str) -> bool:
    """A short text that is an answer, not a sentence: words only as units or in \\text{},
    or a statement of residue classes ("those congruent to 2 or 3 modulo 4")."""
    if ("mod" in s or "equiv" in s) and residue_classes(s) is not None:
        return True
    bare = re.sub(r"\\(?:text|textbf|mbox|mathrm|textnormal|begin|end|operatorname)\s*\{[^{}]*\}", " ", s)
    if re.match(r"^(?:\s*[A-Za-z]+\s*[:=]\s*[-\d.]+\s*,)+\s*[A-Za-z]+\s*[:=]\s*[-\d.]+\s*$", bare):
        bare = re.sub(r"[A-Za-z]+\s*[:=]", " ", bare)  # "Maximum = 2, Minimum = 1", "Paolo: 18, Qing: 14"
    # labelled parts: "Sequence 1: -2, -1, 0 and Sequence 2: 10, 11", "Part (a): 5; Part (b): 7"
    labelled = re.subn(r"(?:^|(?<=[,;])|(?<=\band))\s*[A-Z][a-z]*(?:\s+(?:\d+|\([a-z]\)|[A-Za-z]))?\s*:(?=\s*[-\d(\\$])", " ", bare)
    if labelled[1] >= 2:
        bare = labelled[0]
    words = _WORD_RE.findall(bare)
    if not re.search(r"\d", s):
        return len(bare.split()) <= 10
    if not _OK_WORDS:
        _OK_WORDS.append(re.compile(r"^(?:and|or|" + _UNIT_WORDS + _OK_WORDS_TAIL, re.IGNORECASE))
    return all(_OK_WORDS[0].match(w) for w in words)


def _last_number(text: str) -> str | None:
    last = None
    for m in _LAST_NUMBER_RE.finditer(text):
        last = m.group(1)
    return last


def extract_answer(completion: str, fallbacks: tuple[str, ...] = ()) -> tuple[str | None, str]:
    """Find the final answer in a completion.

    The LAST ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) is the answer; boxes
    joined only by punctuation, spacing, "and" or "or" form one answer together
    (``\\boxed{1}, \\boxed{2}`` is the list ``1, 2``). A box followed by more text and then
    another box is replaced by the later one, so a self-correction counts and a hedge
    ``\\boxed{2} or \\boxed{3}`` is the two-element answer ``2 or 3`` (right only if the
    reference lists both). Without a box, ``fallbacks`` are tried in order.

    Returns ``(answer or None, how it was found)``.
    """
    completion = repair_escapes(completion)
    ans = _last_box_answer(completion)
    if ans is not None:
        if "final_answer" in fallbacks:
            # "... = \boxed{255}. ... Final Answer: The final answer is $10,455$": an explicit
            # final-answer statement AFTER the last box supersedes it (boxed intermediate steps)
            last_box_end = _boxes(completion)[-1][1]
            tail = completion[last_box_end:][-_FALLBACK_WINDOW:]
            got = _fallback("final_answer", tail) if re.search(r"final answer", tail, re.IGNORECASE) else None
            if got is not None and got.strip():
                return got.strip(), "final_answer after the last box"
        return ans, "boxed"
    tail = completion[-_FALLBACK_WINDOW:]  # regex fallbacks only look at the end, where answers are
    for kind in fallbacks:
        if kind == "last_latex" and "last_number" in fallbacks:
            # the LAST stated candidate wins: "... $d = \frac{90}{n}$ ... so there are 12
            # sequences." -- a number in the prose after the last math is the later statement
            envs = [m for m in _LATEX_ENV_RE.finditer(tail) if next(g for g in m.groups() if g is not None).strip() not in ("", ".", ",")]
            if envs and _LAST_NUMBER_RE.search(tail, envs[-1].end()):
                return _last_number(tail[envs[-1].end() :]), "last_number (after the last math)"
        got = _fallback(kind, tail)
        if got is not None and got.strip():
            return got.strip(), kind
    return None, "none"


def extract_reference(reference: str) -> str:
    """The gold answer inside a reference as datasets give it.

    A reference holding ``\\boxed{}`` gives its boxed answer; a bare answer (``$\\frac34$``,
    ``0.75``) is used whole; a long worked solution without a box gives its last math
    environment or last number.
    """
    ref = repair_escapes(str(reference)).strip()
    boxed = _last_box_answer(ref)
    if boxed is not None:
        return boxed
    m = re.search(r"####\s*([^\n]+)\s*$", ref)
    if m:
        return m.group(1).strip()
    if len(ref) <= 300 and "\n" not in ref.strip():
        return ref
    if len(ref) <= MAX_ANSWER_CHARS and re.search(r"\\begin\{(?:cases|[pbvB]?matrix|array)\}", ref) and not re.search(r"[.!?]\s+[A-Z]", ref):
        return " ".join(ref.split())  # a piecewise answer or matrix laid out over lines
    for kind in ("final_answer", "answer_is", "last_latex", "last_number"):
        got = _fallback(kind, ref)
        if got:
            return got
    return ref


# ----------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------

_UNIT_WORDS = (
    "square|sq|cubic|cm|mm|km|meters?|metres?|miles?|feet|foot|ft|inch(?:es)?|yards?|yd|"
    "hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|"
    "dollars?|cents?|yuan|euros?|pounds?|lbs?|kg|grams?|kilograms?|liters?|litres?|ml|mL|"
    "degrees?|deg|units?|people|persons?|students?|points?|ways?|times|km/h|mph|m/s|cm/s|"
    "apples?|eggs?|books?|cars?|pages?|marbles?|cookies?|boxes|items?|pieces?|stamps?|coins?|"
    "tickets?|children|kids|men|women|balls?|bags?|trees?|birds?|cats?|dogs?|rooms?|yuan\\s*\\(\\w\\)"
)
# one-letter units (m, s, h, g, l) and "in" are only units right after a plain number: in
# "\frac{1}{2}m" or "2m" the m is a variable.
_SHORT_UNITS = "m|s|h|g|l|in|mi"
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|mathbf|mathit|operatorname|textsf|texttt|rm|bf)\s*\{([^{}]*)\}")
_POWER = r"(?:\s*\^\s*\{?[23]\}?|[²³])?"
_UNIT_TAIL_RE = re.compile(r"(?<=[\d}).\s])\s*(?:(?:" + _UNIT_WORDS + r")" + _POWER + r"(?:\s+|$))+$", re.IGNORECASE)
_SHORT_UNIT_RE = re.compile(r"^([-+]?[\d.,]+)\s*(?:" + _SHORT_UNITS + r")" + _POWER + r"$")
_ORDINAL_RE = re.compile(r"(?<=\d)(?:\^\{?\s*(?:\\mathrm\{|\\text\{)?(?:th|st|nd|rd)\}?\s*\}?|(?:th|st|nd|rd)\b)")
_PERCENT_RE = re.compile(r"\s*(?:\\%|%|\\text\{\s*%\s*\}|percentage|percent|pct)\s*$")


def strip_approx(s: str) -> str:
    """``x = 1/3 \\approx 0.33`` -> ``x = 1/3``; ``x \\approx 11`` -> ``x = 11``."""
    parts = re.split(r"\\approx|≈", s)
    if len(parts) == 1:
        return s
    head = parts[0].strip()
    if "=" in head and head.split("=")[-1].strip():
        return head
    if head and re.fullmatch(r"[A-Za-z](?:_\{?\w+\}?)?", head):
        return parts[-1].strip()
    return head or parts[-1].strip()


_UNICODE = {
    "×": "\\times ", "·": "\\cdot ", "÷": "\\div ", "−": "-", "–": "-", "√": "\\sqrt ", "π": "\\pi ",
    "∞": "\\infty ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "＞": ">", "＜": "<",
    "⩽": "\\le ", "⩾": "\\ge ", "∪": "\\cup ", "∈": "\\in ", "±": "\\pm ", "∓": "\\mp ", "，": ",", "：": ":", "∀": "\\forall ",
}


def repair_escapes(s: str) -> str:
    """Undo LaTeX that lost its backslash to a string escape: ``\\frac`` stored as a form
    feed + ``rac``, ``\\text`` as a tab + ``ext``, ``\\boxed`` as a backspace + ``oxed``."""
    if not any(c in s for c in "\f\b\v\t\r"):
        return s
    s = s.replace("\f", "\\f").replace("\b", "\\b").replace("\v", "\\v")
    s = re.sub("\t(?=ext|imes|an(?![a-zA-Z])|heta|frac)", r"\\t", s)
    s = re.sub("\r(?=ight)", r"\\r", s)
    return s.replace("\\textcirc", "\\circ")


def _strip_trailing_punct(s: str) -> str:
    s = s.strip()
    while s and s[-1] in ".,;:" and not s.endswith(".."):
        s = s[:-1].rstrip()
    return s


def normalize(s: str) -> tuple[str, bool]:
    """Strip LaTeX noise from an extracted answer. Returns ``(text, is_percent)``.

    Drops ``$``, ``\\left``/``\\right``, spacing commands, ``\\displaystyle``, degree marks,
    ``\\text{}`` wrappers (keeping their words), trailing units and punctuation; turns
    ``\\dfrac``/``\\tfrac``/``\\cfrac`` into ``\\frac`` and LaTeX thousands separators
    (``12,\\!000``, ``14{,}916``) into plain digits. A trailing percent sign
    (``\\%``, ``%``, "percent", "pct") is removed and reported.
    """
    s = repair_escapes(s)
    s = s.strip()
    # a dangling "^" or "_" with nothing after it (a degree mark or exponent lost in storage,
    # "90^") marks nothing: drop it
    s = re.sub(r"(?<=[\w}])\s*[\^_]\s*$", "", s)
    # doubly escaped LaTeX (``\\frac``, ``\\left(``) as some datasets store it
    s = re.sub(r"(?<!\\)\\\\(?=(?:frac|dfrac|tfrac|left|right|le|ge|leq|geq|neq|sqrt|boxed|pi|text|cdot|times|infty|in|cup|pm|circ|begin|end|mathrm|quad|qquad|dots|ldots|cdots|big|bigg|Big|Bigg)(?![a-zA-Z]))", r"\\", s)
    s = s.replace("\\$", "")
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    if re.search("[①-⑩]", s):
        s = ", ".join(str(ord(c) - ord("①") + 1) for c in s if "①" <= c <= "⑩")
    s = re.sub(r"\\(?:d|t|c)frac", r"\\frac", s)
    s = re.sub(r"<sup>(.*?)</sup>", r"^{\1}", s)
    s = re.sub(r"\\geqslant|\\geq(?![a-zA-Z])", r"\\ge", s)
    s = re.sub(r"\\leqslant|\\leq(?![a-zA-Z])", r"\\le", s)
    s = re.sub(r"\\neq(?![a-zA-Z])", r"\\ne", s)
    s = s.replace("\\dbinom", "\\binom").replace("\\tbinom", "\\binom")
    s = s.replace("\\displaystyle", "").replace("\\mathrm{e}", "e")
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])\s*\.?", "", s)
    s = re.sub(r"\{\s*,\s*\}", "", s)
    s = re.sub(r"(\d),\\!\s*(?=\d{3})", r"\1", s)
    s = re.sub(r"(?<!\\)\\(?:!|,|;|:|\s)|~|\\q?quad\b|\\hspace\{[^}]*\}", " ", s)
    s = s.replace("$", "").replace("\\$", "")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\degree", "", s)
    # qualifiers and commentary: "f(x) = 1 \text{ for all } x \in \mathbb{Z}", "R=1 \text{ is both ...}"
    s = re.sub(r"\\text\{\s*(?:for all|for every|for some|for any|where|when|if|is|are)\b(?:[^{} ]* ){3,}[^{}]*\}.*$", " ", s, flags=re.DOTALL)
    s = re.sub(r"\\text\{\s*(?:for all|for every|for some|for any|where|when|if|is|are)\b[^{}]*\}[^,;]*", " ", s)
    # nouns after a number are units: "7 \text{ stuffed goats and } 4 \text{ toy helicopters}"
    s = re.sub(
        r"(?<=[\d}])\s*\\(?:text|textnormal|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z ]*?)\s*\}(?:\^\{?[23]\}?)?",
        lambda m: " and " if m.group(1).split()[-1] in ("and", "or") and len(m.group(1).split()) > 1 else (" " if m.group(1) not in ("and", "or") else m.group(0)),
        s,
    )
    s = re.sub(r"\\text\{\s*(and|or)\s*\}", r" \1 ", s)
    s = s.replace("\\boxed", "").replace("\\fbox", "")
    for _ in range(3):
        s2 = _TEXT_CMD_RE.sub(lambda m: " " + m.group(1) + " " if not m.group(1).strip().isdigit() else m.group(1), s)
        if s2 == s:
            break
        s = s2
    s = strip_approx(s)
    s = _strip_trailing_punct(s)
    percent = False
    m = _PERCENT_RE.search(s)
    if m:
        s = s[: m.start()].strip()
        percent = True
    s = _ORDINAL_RE.sub("", s)
    s = _UNIT_TAIL_RE.sub("", s).strip() if re.search(r"\d|}", s) else s
    s = _SHORT_UNIT_RE.sub(r"\1", s)
    m = _PERCENT_RE.search(s)
    if m and not percent:
        s = s[: m.start()].strip()
        percent = True
    s = _strip_trailing_punct(re.sub(r"\s+", " ", s))
    # a leading "x \in" names the variable of a set answer
    s = re.sub(r"^[A-Za-z]\s*\\in\s+", "", s)
    return s, percent


def compact(s: str) -> str:
    """A whitespace- and brace-insensitive key for plain string comparison."""
    s = re.sub(r"\s+", "", s)
    s = s.replace("{", "").replace("}", "")
    return s


def split_top_level(s: str, seps: tuple[str, ...] = (",", ";")) -> list[str]:
    """Split at separators outside every bracket pair; words "and"/"or" split too."""
    out, depth, cur, i = [], 0, [], 0
    n = len(s)
    while i < n:
        c = s[i]
        if s.startswith("\\{", i):
            depth += 1
            cur.append("\\{")
            i += 2
            continue
        if s.startswith("\\}", i):
            depth -= 1
            cur.append("\\}")
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0:
            if c in seps:
                out.append("".join(cur))
                cur = []
                i += 1
                continue
            m = re.match(r"\s+(?:and|or)\s+|\s*\\(?:text\{\s*(?:and|or)\s*\}|quad)\s*|(?<=[)\]])\s*(?:and|or)\s*(?=[(\[])", s[i:])
            if m is None and cur and cur[-1] in ")]":
                m = re.match(r"\s*(?:and|or)\s*(?=[(\[])", s[i:])
            if m and cur:
                out.append("".join(cur))
                cur = []
                i += m.end()
                continue
        cur.append(c)
        i += 1
    out.append("".join(cur))
    out = [re.sub(r"^\s*(?:and|or)\s+", "", p) for p in out]
    return [p.strip() for p in out if p.strip()]


# ----------------------------------------------------------------------------------------
# Plain numbers, exactly
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """An exact number read from text, with how it was written."""

    value: Fraction
    decimals: int  # digits after the decimal point as written (0 for integers and fractions)
    sig: int = 0  # significant digits as written (``165.50``: 5, ``300``: 1); 0 for fractions


def _sig_digits(int_part: str, frac_part: str) -> int:
    """Significant digits of a written decimal: leading zeros never count, trailing zeros
    of an integer do not (``300`` states one digit), those after a decimal point do."""
    digits = (int_part + frac_part).lstrip("0")
    if not frac_part:
        digits = digits.rstrip("0")
    return len(digits)


def stated_precision(g: Fraction, g_dec: int, g_sig: int, p: Fraction, p_dec: int, p_sig: int) -> str | None:
    """Decimal answers agree at the precision they state, or None.

    The rules apply only when the reference ``g`` is written as a decimal with at least 3
    significant digits (``41.494``, ``165.47``, ``0.458``): such a reference is already a
    rounded value. A short one (``2.5``, ``0.75``) is taken as exact. ``p`` is the
    answer's exact value, or a 50-digit approximation of it; ``p_dec``/``p_sig`` describe
    it as written (both 0 for an exact form such as ``17 + 10\\sqrt{6}``).

    1. An answer at least as precise as the reference (an exact form, an integer, or more
       decimals) is accepted when its value rounds or truncates to the reference at the
       reference's decimals -- datasets do both: ``41.5`` accepts ``41.4949``, ``41.494``
       accepts ``17 + 10\\sqrt{6}`` = 41.49490, ``6.01`` accepts ``6 1/64`` = 6.015625.
    2. A coarser decimal answer with at least 3 significant digits is accepted when it is
       the reference rounded to the answer's own decimals (``165.5`` for ``165.47``,
       ``118`` for ``117.95``); ``1.3`` for ``1.27`` (two digits) and ``300`` for
       ``299.94`` (one) state too little to tell a rounding from a different value.
    """
    if not g_dec or g_sig < 3 or g == 0:
        return None
    unit = Fraction(1, 10**g_dec)
    if p_dec == 0 or p_dec > g_dec:
        if abs(g - p) <= unit / 2:
            return f"rounds to the reference's {g_dec} decimals"
        if 0 <= (p - g) * (1 if g > 0 else -1) < unit:
            return f"truncates to the reference's {g_dec} decimals"
    if p_sig >= 3 and p_dec < g_dec and abs(g - p) <= Fraction(1, 2 * 10**p_dec):
        return f"the reference rounded to the answer's {p_dec} decimals"
    return None


_INT = r"(?:[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{0,2}(?: \d{3})+|\d+)"
_DEC_RE = re.compile(r"^([+-])?\s*(" + _INT + r")?(?:\.(\d+))?(?:\s*(?:e|E|\\times\s*10\s*\^|\*\s*10\s*\*\*|×\s*10\s*\^)\s*\{?\s*\(?([+-]?\d+)\)?\s*\}?)?$")
_COMMA_DEC_RE = re.compile(r"^([+-])?\s*(\d+),(\d+)$")
_FRAC_RE = re.compile(r"^([+-])?\s*(?:\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|\\frac\s*(\d)(\d)|\\frac\s*(\d)\s*\{\s*(\d+)\s*\}|(\d+)\s*/\s*(\d+))$")
_MIXED_RE = re.compile(r"^([+-])?\s*(\d+)[ ]+(?:(\d+)/(\d+)|\\frac\s*\{(\d+)\}\s*\{(\d+)\})$|^([+-])?\s*(\d+)\\frac\s*\{(\d+)\}\s*\{(\d+)\}$")


def parse_number(s: str) -> Number | None:
    """Read ``s`` as one plain number, exactly, or return ``None``.

    Integers, decimals (``.4``, ``1,000.99``, ``1 000``), a comma as decimal mark when it
    cannot be a thousands separator (``1000,99``, ``0,111``), scientific notation
    (``1.5e3``, ``1.5\\times10^{3}``), fractions (``3/4``, ``\\frac{3}{4}``, ``\\frac34``)
    and mixed numbers (``4 4/9``, ``4\\frac{4}{9}``; a mixed number's fraction must be
    proper, so ``11 6/6`` is not a number). Exponents beyond ±1000 are refused.
    """
    s = s.strip()
    if not s or len(s) > 200:
        return None
    m = _DEC_RE.match(s)
    if m and (m.group(2) or m.group(3)):
        sign, ip, fp, ex = m.groups()
        ip = (ip or "0").replace(",", "").replace(" ", "")
        fp = fp or ""
        val = Fraction(int(ip + fp), 10 ** len(fp))
        if ex is not None:
            e = int(ex)
            if abs(e) > MAX_EXPONENT:
                return None
            val *= Fraction(10) ** e
        sig = _sig_digits(ip, fp) if ex is None else len((ip + fp).lstrip("0"))
        return Number(-val if sign == "-" else val, len(fp) if ex is None else max(0, len(fp) - int(ex)), sig)
    m = _COMMA_DEC_RE.match(s)
    if m and (len(m.group(3)) != 3 or m.group(2).startswith("0")):
        sign, ip, fp = m.groups()
        val = Fraction(int(ip + fp), 10 ** len(fp))
        return Number(-val if sign == "-" else val, len(fp), _sig_digits(ip, fp))
    m = _FRAC_RE.match(s)
    if m:
        g = m.groups()
        sign = g[0]
        nums = [x for x in g[1:] if x is not None]
        p, q = int(nums[0]), int(nums[1])
        if q == 0:
            return None
        val = Fraction(p, q)
        return Number(-val if sign == "-" else val, 0)
    m = _MIXED_RE.match(s)
    if m:
        g = m.groups()
        if g[1] is not None:
            sign, whole = g[0], g[1]
            p, q = (g[2], g[3]) if g[2] is not None else (g[4], g[5])
        else:
            sign, whole, p, q = g[6], g[7], g[8], g[9]
        p, q = int(p), int(q)
        if q == 0 or p >= q:
            return None
        val = int(whole) + Fraction(p, q)
        return Number(-val if sign == "-" else val, 0)
    return None


# ----------------------------------------------------------------------------------------
# Text answers: a short phrase inside a one-clause sentence
# ----------------------------------------------------------------------------------------

# Words that make a sentence more than one plain statement: a phrase found in it may be
# negated ("is not odd"), one of several options ("Petya or Vasya") or a comparison's
# other side ("more often than a slow clock"). A sentence holding any of them is never
# matched by phrase.
_BLOCKING_WORDS = frozenset(
    [
        "not", "no", "never", "none", "nothing", "neither", "nor", "cannot", "cant", "can't", "isn't",
        "aren't", "doesn't", "don't", "won't", "wasn't", "weren't", "or", "and", "but", "if", "unless",
        "otherwise", "than", "except", "while", "whereas", "either", "only", "although", "though", "however",
        "instead", "nobody", "false", "incorrect", "impossible",
    ]
)
# Function words: a phrase must hold something else, and a sentence must hold at least one
# (a bare run of names, "Petya Vasya Kolya", is a list, not a sentence).
_FUNCTION_WORDS = frozenset(
    [
        "a", "an", "the", "is", "are", "was", "were", "be", "will", "would", "shall", "should", "can",
        "could", "may", "might", "must", "has", "have", "had", "do", "does", "did", "of", "in", "on", "at",
        "to", "for", "from", "by", "with", "as", "it", "its", "this", "that", "these", "those", "there",
        "their", "his", "her", "he", "she", "they", "we", "each", "any", "all", "every", "some", "more",
        "most", "less",
    ]
)
_MATH_SPAN_RE = re.compile(r"\$[^$]*\$|\\\(.*?\\\)|\\\[.*?\\\]")
_PHRASE_TEXT_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mbox|textnormal)\s*\{([^{}]*)\}")


def _prose_words(s: str, allow_math: bool) -> list[str] | None:
    """Lower-case words of a plain-prose string (math spans become one opaque token when
    ``allow_math``), or None when it is not prose."""
    s = _PHRASE_TEXT_RE.sub(r" \1 ", repair_escapes(s)).strip()
    if allow_math:
        s = _MATH_SPAN_RE.sub(" \x00 ", s)
    if re.search(r"[\\$^_{}=<>\d]", s):
        return None
    if re.search(r"[,;:]", s):  # several clauses or a list
        return None
    words = re.findall(r"[a-z\x00][a-z'\x00-]*", s.lower())
    rest = re.sub(r"[a-zA-Z\x00'\-\s.!?()]", "", s)
    if rest or not words:
        return None
    return words


_DETERMINERS = frozenset(["a", "an", "the", "any", "each", "every", "some", "all"])
_COPULAS = frozenset(["is", "are", "was", "were", "be", "been", "becomes", "become", "remains", "remain"])


def phrase_match(reference: str, answer: str, max_phrase_words: int = 4, max_sentence_words: int = 25) -> bool:
    """Is the answer a short text phrase stated as the subject or predicate of the
    reference, a one-clause sentence? ``"Petya will receive the last token."`` and ``"Petya"``;
    ``"A stopped clock shows the correct time more often."`` and ``\\text{stopped}``;
    ``"The transformed function $f(x+1)-1$ is odd."`` and ``"odd"``.

    Conservative by construction: the answer is 1-4 plain words (no digits, no
    math) holding a content word; the reference is plain prose (math spans allowed, but
    they never match) of at most 25 words with a function word ("is", "the", "will"), no
    commas or semicolons, and none of the words that would make the phrase negated,
    optional or compared (not, no, or, and, but, if, than, only, ...). The phrase must be
    whole contiguous words at the sentence's START (after at most one determiner: "A
    stopped clock ...", "Any odd number ...") or its END right after a copula ("... is
    odd"): the subject or the predicate, never an object ("the last token" does not match
    "Petya will receive the last token"). Only the REFERENCE may be the sentence: an
    answer sentence ("Petya will lose.") could say anything about the phrase.
    """
    pw = _prose_words(answer, allow_math=False)
    if pw is None or not 1 <= len(pw) <= max_phrase_words:
        return False
    if not any(w not in _FUNCTION_WORDS and w not in _BLOCKING_WORDS and len(w) >= 3 for w in pw):
        return False
    if any(w in _BLOCKING_WORDS for w in pw):
        return False
    sw = _prose_words(reference, allow_math=True)
    if sw is None or len(sw) <= len(pw) or len(sw) > max_sentence_words:
        return False
    if any(w in _BLOCKING_WORDS for w in sw) or not any(w in _FUNCTION_WORDS for w in sw):
        return False
    n = len(pw)
    for i in range(len(sw) - n + 1):
        if sw[i : i + n] != pw:
            continue
        subject = i == 0 or (i == 1 and sw[0] in _DETERMINERS)
        predicate = i + n == len(sw) and i > 0 and sw[i - 1] in _COPULAS
        if subject or predicate:
            return True
    return False


# ----------------------------------------------------------------------------------------
# Mathematics stated in words: residue classes, quantities in a sentence, signs
# ----------------------------------------------------------------------------------------

_MOD_WORD = r"(?:\\pmod|\\bmod|\\mod|\\operatorname\s*\{\s*mod\s*\}|\\text\s*\{\s*mod\s*\}|\\mathrm\s*\{\s*mod\s*\}|modulo|mod)"
_INT_LIST = r"(?:[+-]|\\pm\s*)?\d+(?:\s*(?:,\s*(?:or\s+)?|or\s+|\\text\s*\{\s*or\s*\}\s*)(?:[+-]|\\pm\s*)?\d+)*"
# "n \equiv 2 \pmod{4}", "\equiv 1, 3 (mod 8)", "congruent to 2 or 3 modulo 4"
_CONGRUENCE_RE = re.compile(
    r"(?:\\equiv|≡|congruent\s+to)\s*(" + _INT_LIST + r")\s*\(?\s*\\?\(?\s*" + _MOD_WORD + r"\s*\{?\s*(\d+)\s*\}?\s*\)?"
)
# "n = 4k + 2", "4k+3", "6m - 1", "2 + 4k", "4k" (a linear form in an integer parameter)
_LINEAR_FORM_RE = re.compile(
    r"(?<![A-Za-z\d])(?:[a-z]\s*=\s*)?(?:(\d+)\s*(?:\\cdot|\\times|\*)?\s*([a-z])\s*(?:([+-]|\\pm|\\mp)\s*(\d+))?|(\d+)\s*([+-])\s*(\d+)\s*(?:\\cdot|\\times|\*)?\s*([a-z]))(?![A-Za-z\d(])"
)
# what may surround the forms: "those", "all integers", "or", "where k \in \mathbb{N}_0", ...
_RESIDUE_FILLER = frozenset(
    {
        "or", "and", "those", "all", "the", "integers", "integer", "numbers", "number", "natural",
        "whole", "positive", "nonnegative", "non", "negative", "that", "are", "which", "is", "of",
        "form", "in", "for", "where", "with", "some", "any", "k", "m", "t", "j", "l", "n", "x",
        "an", "a",
    }
)


def residue_classes(s: str) -> tuple[int, frozenset[int], bool] | None:
    """Read an answer that is a union of residue classes: ``n \\equiv 2 \\pmod 4``,
    ``those congruent to 2 or 3 modulo 4``, ``n = 4k+2 \\text{ or } n = 4k+3``.

    Returns ``(modulus, residues, stated_as_congruence)`` with every class lifted to the
    least common modulus, or None when ``s`` says anything besides the classes (a word
    outside a small list of fillers such as "those", "or", "where k is an integer").
    """
    if len(s) > 300:
        return None
    text = repair_escapes(s).replace("$", " ")
    text = re.sub(r"\\(?:left|right)\b|\\[,;!: ]|~", " ", text)
    text = re.sub(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}", r" \1 ", text)
    classes: list[tuple[int, list[int]]] = []
    congruence = False

    def take_congruence(m: re.Match) -> str:
        nonlocal congruence
        congruence = True
        found = re.findall(r"(\\pm\s*|[+-])?(\d+)", m.group(1))
        classes.append((int(m.group(2)), [k * int(d) for sign, d in found for k in ((1, -1) if sign.startswith("\\") else (-1 if sign == "-" else 1,))]))
        return " "

    text = _CONGRUENCE_RE.sub(take_congruence, text)
    if not congruence:
        params: set[str] = set()

        def take_form(m: re.Match) -> str:
            if m.group(1) is not None:
                mod, param, sign, off = int(m.group(1)), m.group(2), m.group(3), m.group(4)
                rs = [0] if off is None else [int(off), -int(off)] if sign in ("\\pm", "\\mp") else [int(off) * (-1 if sign == "-" else 1)]
            else:
                off, sign, mod, param = int(m.group(5)), m.group(6), int(m.group(7)), m.group(8)
                if sign == "-":
                    return m.group(0)  # "2 - 4k" is a class too, but rare; leave it unread
                rs = [off]
            params.add(param)
            classes.append((mod, rs))
            return " "

        text = _LINEAR_FORM_RE.sub(take_form, text)
        if len(params) > 1:
            return None
    if not classes or any(mod < 2 or mod > 10_000 for mod, _ in classes):
        return None
    text = re.sub(r"\\mathbb\s*\{\s*[NZ]\s*\}|\\in\b|∈|_\s*\{?\s*0\s*\}?|(?:\\geq?|≥)\s*0|[{}(),.;:]", " ", text)
    if any(w.lower() not in _RESIDUE_FILLER for w in re.findall(r"[A-Za-z]+", text)) or re.search(r"[\d=<>+*/^]", text):
        return None
    lcm = 1
    for mod, _ in classes:
        lcm = lcm * mod // gcd(lcm, mod)
        if lcm > 10_000:
            return None
    residues = frozenset(r % lcm for mod, rs in classes for r0 in rs for r in range(r0 % mod, lcm, mod))
    return lcm, residues, congruence


def residues_equal(reference: str, answer: str) -> bool:
    """The same union of residue classes, one side stated as a congruence (``n = 4k+2``
    alone is an expression, compared as one elsewhere)."""
    if not ("mod" in reference or "mod" in answer or "\\equiv" in reference + answer or "≡" in reference + answer):
        return False
    a, b = residue_classes(reference), residue_classes(answer)
    if a is None or b is None or not (a[2] or b[2]):
        return False
    lcm = a[0] * b[0] // gcd(a[0], b[0])

    def lift(m: int, rs: frozenset[int]) -> frozenset[int]:
        return frozenset(r + k * m for r in rs for k in range(lcm // m))

    return lift(a[0], a[1]) == lift(b[0], b[1])


_CLAUSE_SPLIT_RE = re.compile(r",(?!\d{3}(?!\d))\s*(?:and\s+)?|;\s*|\s+and\s+")
_QUANTITY_RE = re.compile(r"(?<![\w.,])[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w,]|\.\d)|(?<![\w.,])[+-]?\d+(?:\.\d+)?(?![\w,]|\.\d)")


def _clause_quantity(clause: str) -> tuple[Fraction, set[str]] | None:
    """One clause of prose holding exactly one number: (the number, its words)."""
    plain = _PHRASE_TEXT_RE.sub(r" \1 ", clause).replace("$", " ")
    plain = re.sub(r"\\[,;!: ]|~|\\ ", " ", plain)
    if re.search(r"[\\^_{}=<>]", plain):
        return None
    nums = _QUANTITY_RE.findall(plain)
    if len(nums) != 1:
        return None
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", plain)}
    return Fraction(nums[0].replace(",", "")), words


def quantities_match(reference: str, answer: str) -> bool:
    """A sentence that states several quantities, and an answer that lists the same ones:
    ``"The rent for each $A$ room is $240$ yuan, and for each $B$ room is $210$ yuan."``
    and ``240 \\text{ yuan (A)}, 210 \\text{ yuan (B)}``.

    Both split into clauses (at commas, semicolons and "and") of exactly one number each;
    the numbers must be equal in order, and each answer clause's words (labels and units)
    must all occur in the reference clause in the same position, so swapped labels fail.
    The reference must be a sentence (a verb among its words) without negation or
    alternatives; at least two quantities, and the answer may not add words of its own.
    """
    if len(reference) > 400 or len(answer) > 200:
        return False
    ref = [_clause_quantity(c) for c in _CLAUSE_SPLIT_RE.split(repair_escapes(reference).strip().rstrip("."))]
    ans = [_clause_quantity(c) for c in _CLAUSE_SPLIT_RE.split(repair_escapes(answer).strip().rstrip("."))]
    if len(ref) < 2 or len(ref) != len(ans) or any(x is None for x in ref + ans):
        return False
    ref_words = set().union(*(w for _, w in ref))  # type: ignore[misc]
    if ref_words & (_BLOCKING_WORDS - {"and"}) or not ref_words & (_COPULAS | {"has", "have", "costs", "cost", "gets", "get", "needs"}):
        return False
    return all(rv == av and aw <= rw for (rv, rw), (av, aw) in zip(ref, ans))  # type: ignore[misc]


_SIGN_WORDS = {
    "less than zero": "<", "negative": "<", "smaller than zero": "<", "below zero": "<",
    "greater than zero": ">", "positive": ">", "more than zero": ">", "larger than zero": ">", "above zero": ">",
    "non-negative": ">=", "nonnegative": ">=", "at least zero": ">=", "not negative": ">=",
    "non-positive": "<=", "nonpositive": "<=", "at most zero": "<=", "not positive": "<=",
}
_SIGN_SENTENCE_RE = re.compile(
    r"^(?:the|its|this|that)?\s*[a-z][a-z ]{0,40}?\s+(?:is|are|will be|must be|is always|are always)\s+(?:strictly\s+)?("
    + "|".join(sorted(map(re.escape, _SIGN_WORDS), key=len, reverse=True))
    + r")\s*\.?$"
)
_REL_TO_ZERO_RE = re.compile(r"^(?P<lhs>.+?)\s*(?P<op>\\leqslant|\\geqslant|\\leq|\\geq|\\le|\\ge|\\lt|\\gt|<=|>=|≤|≥|<|>)\s*0$")
_REL_NAMES = {"\\leqslant": "<=", "\\geqslant": ">=", "\\leq": "<=", "\\geq": ">=", "\\le": "<=", "\\ge": ">=", "\\lt": "<", "\\gt": ">", "≤": "<=", "≥": ">="}


def sign_statement_match(reference: str, answer: str) -> bool:
    """A reference sentence that states a sign, and an answer that is the inequality:
    ``"The sum is less than zero."`` and ``f(x_1) + f(x_2) + f(x_3) < 0`` (the relation
    must be the same one: ``<`` is not ``\\le``)."""
    if len(reference) > 120 or len(answer) > 200:
        return False
    m = _SIGN_SENTENCE_RE.match(" ".join(reference.lower().split()))
    if not m:
        return False
    r = _REL_TO_ZERO_RE.match(repair_escapes(answer).strip().strip("$").strip())
    if not r or re.search(r"[<>]|\\[lg]e|≤|≥", r.group("lhs")):
        return False
    return _REL_NAMES.get(r.group("op"), r.group("op")) == _SIGN_WORDS[m.group(1)]
