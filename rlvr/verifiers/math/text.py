"""Text rules: answers written in words, compared without sympy.

A short phrase stated as a one-clause sentence's subject or predicate
(:func:`phrase_match`), residue classes in any of their forms (:func:`residue_classes`,
:func:`residues_equal`), a sentence's quantities listed clause by clause
(:func:`quantities_match`), a sentence stating a sign (:func:`sign_statement_match`) and a
multiple-choice letter with or without its option's text (:func:`choice_option`).
All conservative by construction; the equivalence check tries them only after the
mathematical comparison said no.

Imports: the standard library and :mod:`.normalization`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from math import gcd

from rlvr.verifiers.math.normalization import repair_escapes

__all__ = ["choice_option", "phrase_match", "quantities_match", "residue_classes", "residues_equal", "sign_statement_match"]

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


# ----------------------------------------------------------------------------------------
# Multiple choice: a letter, or a letter with its option's text
# ----------------------------------------------------------------------------------------

_CHOICE_LETTER_RE = re.compile(r"^(?:(?:option|choice)\s*)?\(?\s*([A-H])\s*\)?$", re.IGNORECASE)
_CHOICE_OPTION_RE = re.compile(r"^(?:\(\s*([A-H])\s*\)|([A-H])\)|([A-H])\.(?=\s))\s*(.+)$")


def choice_option(s: str) -> tuple[str, str | None] | None:
    """A multiple-choice answer as ``(letter, option text or None)``, or None.

    ``C``, ``(C)``, ``C)``, ``option C`` are the letter alone; ``(C) Boston``, ``C) Boston``,
    ``C. Boston`` are the letter with its option's text. Letters are the capitals A-H (a
    lower-case ``c`` is a variable). Not an option: text that names more letters
    (``(A) and (C)``, ``(A) (C)``) or opens with a joining word or punctuation. Takes a
    normalised answer (``\\text{(C)}`` arrives as ``(C)``)."""
    s = s.strip()
    m = _CHOICE_LETTER_RE.match(s)
    if m:
        if not (m.group(1).isupper() and (s[0] in "(" or len(s) <= 2 or s[0].isalpha())):
            return None
        return m.group(1), None
    m = _CHOICE_OPTION_RE.match(s)
    if not m:
        return None
    letter = next(x for x in m.groups()[:3] if x)
    text = m.group(4).strip()
    if not text or re.search(r"\(\s*[A-H]\s*\)|\b[A-H]\)", text) or re.match(r"(?:and|or)\b|[,;&=+*/^_]|-(?!\s*\d)", text):
        return None
    return letter, text
