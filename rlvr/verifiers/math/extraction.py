"""Answer extraction: find the final answer in a completion, or the gold answer in a
reference as datasets give it.

The last ``\\boxed{...}`` (boxes joined only by punctuation, "and" or "or" form one
answer) and, without a box, the regex fallbacks (``final_answer``, ``answer_is``,
``gsm8k``, ``last_latex``, ``whole``, ``last_number``). Linear-time string work that runs
in the caller's process; no sympy.

Imports: the standard library, :mod:`.normalization` and :mod:`.text`.
"""

from __future__ import annotations

import itertools
import re

from rlvr.verifiers.math.normalization import _UNIT_WORDS, MAX_ANSWER_CHARS, repair_escapes
from rlvr.verifiers.math.text import residue_classes

__all__ = ["FALLBACKS", "extract_answer", "extract_reference"]

#: The fallback extractors, tried in the order given when no ``\boxed{}`` is found.
FALLBACKS = ("final_answer", "answer_is", "answer_colon", "gsm8k", "last_latex", "whole", "last_number")

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


# An exact box and then its approximation, joined only by an approximation sign
# ("\boxed{\sqrt{3}} \approx \boxed{1.732}", "\boxed{\frac{22}{7}}, which is approximately
# \boxed{3.14}"): one answer "A \approx B", read like a single box written that way -- the
# exact part A is the answer (normalization.strip_approx).
_APPROX_JOINER_RE = re.compile(
    r"^(?:\s|[,$]|\\[()\[\]])*(?:\\approx|≈|\\simeq|(?:which is\s+|that is\s+)?(?:approximately|approx\.?|about|roughly))(?:\s|[$:]|\\[()\[\]])*$"
)


def _last_box_answer(text: str) -> str | None:
    boxes = _boxes(text)
    if not boxes:
        return None
    if len(boxes) > 1 and len(text) - boxes[-2][1] < 10_000 and _APPROX_JOINER_RE.match(text[boxes[-2][1] : boxes[-1][0]]):
        return f"{boxes[-2][2]} \\approx {boxes[-1][2]}"
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
# a "Final Answer" heading on a line of its own ("**Final Answer**", "## Final Answer:"), the
# answer on the next non-empty line
_FINAL_RE3 = re.compile(r"(?:^|\n)[ \t]*(?:#+[ \t]*)?\*{0,2}[ \t]*final answer[ \t]*:?[ \t]*\*{0,2}[ \t]*:?[ \t]*\n+\s*(\S.*?)(?:\n|$)", re.IGNORECASE)
# "the answer is X" and its lead-ins in other languages (Chinese, Japanese, Korean, German,
# French, Spanish, Portuguese, Italian, Russian): "答案是 7", "Die Antwort ist 7",
# "La réponse est 7", "Ответ: 7"
_ANSWER_IS_RE = re.compile(
    r"(?:(?:the |my )?answer is|答案\s*(?:是|为|為|[:：])|答え\s*(?:は|[:：])|(?:정답|답)\s*(?:은|는|[:：])|(?:die )?antwort (?:ist|lautet)|antwort\s*:"
    r"|(?:la )?réponse (?:est|finale est)|réponse\s*:|(?:la )?respuesta (?:es|final es)|respuesta\s*:|(?:a )?resposta (?:é|final é)|resposta\s*:"
    r"|(?:la )?risposta (?:è|finale è)|risposta\s*:|ответ\s*(?:[:—–-]|равен|будет))\s*:?\s*(.+?)(?:\n|$)",
    re.IGNORECASE,
)
_GSM8K_RE = re.compile(r"####\s*([^\n]+)")
# DAPO's prompt format ("... Answer: $Answer"), as veRL's math_dapo scorer reads it: the last
# "Answer:" line within the last 300 characters.
_ANSWER_COLON_RE = re.compile(r"answer\s*:\s*([^\n]+)", re.IGNORECASE)
_ANSWER_COLON_WINDOW = 300
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
    s = s.strip().rstrip(".。").strip()
    # Markdown emphasis or code around the answer: "**42**", "** 42", "`42`", "__42__"
    s = re.sub(r"^(?:\*\*|__|`)\s*(.*?)\s*(?:\*\*|__|`)?$", r"\1", s, flags=re.DOTALL).strip().rstrip(".。").strip()
    s = re.sub(r"\s*(?:입니다|이다|です|である)$", "", s)
    # a quoted answer: "The final answer is \"$12$ and $13$\""
    m = re.fullmatch(r'(?:\\?"|“)(.+?)(?:\\?"|”)', s, flags=re.DOTALL)
    return m.group(1).strip() if m else s


def _fallback(kind: str, text: str) -> str | None:
    if kind == "final_answer":
        ms = list(_FINAL_RE.finditer(text)) or list(_FINAL_RE2.finditer(text))
        # the latest statement that holds an answer ("**Final Answer:**" leaves only "**"
        # on its line; the heading form then finds the answer on the next line)
        for m in sorted(ms + list(_FINAL_RE3.finditer(text)), key=lambda m: m.end(), reverse=True):
            got = _answer_in_sentence(_sentence_answer(m.group(1)))
            if got is not None and got.strip():
                return got
        return None
    if kind == "answer_is":
        ms = list(_ANSWER_IS_RE.finditer(text))
        if ms:
            return _answer_in_sentence(_sentence_answer(ms[-1].group(1)))
        return None
    if kind == "answer_colon":
        ms = list(_ANSWER_COLON_RE.finditer(text[-_ANSWER_COLON_WINDOW:]))
        return _answer_in_sentence(_sentence_answer(ms[-1].group(1))) if ms else None
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
_OK_WORDS_TAIL = (r"|percent|percentage|pct|sqrt|pi|sin|cos|tan|log|ln|exp|infty|infinity|inf|frac|cup|in|le|ge|leq|geq|neq|lt|gt|pm|mp|cdot|times|div)$")
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
    reference lists both); an exact box joined to the last one by an approximation sign
    (``\\boxed{\\sqrt{3}} \\approx \\boxed{1.732}``) gives the one answer
    ``\\sqrt{3} \\approx 1.732``, whose exact part decides. Without a box, ``fallbacks``
    are tried in order; they strip Markdown emphasis (``**42**``), and ``answer_is``
    knows the lead-in in several languages (``答案是``, ``Die Antwort ist``, ``Ответ:``).

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
