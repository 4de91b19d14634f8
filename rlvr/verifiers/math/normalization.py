"""Normalising extracted answers: LaTeX noise, units, escapes, string keys.

Linear-time string work, no sympy: :func:`normalize` strips ``$``, ``\\left``/``\\right``,
spacing, ``\\text{}`` wrappers, units and a trailing percent sign; :func:`repair_escapes`
undoes LaTeX whose backslash was eaten by a string escape; :func:`compact` is the key
for plain string comparison; :func:`split_top_level` splits a list answer outside brackets.

Imports: the standard library only (the bottom layer of :mod:`rlvr.verifiers.math`).
"""

from __future__ import annotations

import re

__all__ = ["MAX_ANSWER_CHARS", "compact", "normalize", "repair_escapes", "split_top_level", "strip_approx"]

#: Longest extracted answer (characters) that is parsed at all; longer ones are only
#: compared as normalised strings. Real answers are far shorter.
MAX_ANSWER_CHARS = 1000


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


# Infinity spelled out in plain text: ``(-infinity, 2]``, ``(-inf, 2]``, ``[3, oo)`` (sympy's
# spelling), ``x \to Infinity``. Only as a whole token between brackets, commas, signs or
# spaces: ``\inf`` (an infimum), ``info``, ``book`` or ``Oo`` are not infinity.
_INFINITY_WORD_RE = re.compile(r"(?<![^\s(\[,+\-=])(?:[Ii]nfinity|[Ii]nf|infty|oo)(?![^\s)\],])")


def normalize(s: str) -> tuple[str, bool]:
    """Strip LaTeX noise from an extracted answer. Returns ``(text, is_percent)``.

    Drops ``$``, ``\\left``/``\\right``, spacing commands, ``\\displaystyle``, degree marks,
    ``\\text{}`` wrappers (keeping their words), trailing units and punctuation; turns
    ``\\dfrac``/``\\tfrac``/``\\cfrac`` into ``\\frac`` and LaTeX thousands separators
    (``12,\\!000``, ``14{,}916``) into plain digits, and infinity spelled out in plain
    text (``(-inf, 2]``, ``[3, oo)``) into ``\\infty``. A trailing percent sign
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
    if "nf" in s or "oo" in s:
        s = _INFINITY_WORD_RE.sub(r"\\infty ", s)
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
