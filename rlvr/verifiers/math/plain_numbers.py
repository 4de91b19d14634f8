"""Plain numbers, exactly: integers, decimals, fractions, mixed numbers and scientific
notation read as :class:`fractions.Fraction` values, and the stated-precision rule for
decimal references.

Imports: the standard library only (the bottom layer of :mod:`rlvr.verifiers.math`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["MAX_EXPONENT", "Number", "parse_number", "stated_precision"]

#: Largest power of ten a number may carry (``1e400`` is fine, ``1e99999999`` is not).
MAX_EXPONENT = 1000


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
# a mixed number: ``4 4/9``, ``4\frac{4}{9}``, and the brace-less ``3\frac14``, ``3\frac1{4}``,
# ``3\frac{1}4`` (a one-digit argument needs no braces in LaTeX)
_FRAC_ARGS = r"\\frac\s*(?:\{(\d+)\}|(\d))\s*(?:\{(\d+)\}|(\d))"
_MIXED_RE = re.compile(r"^([+-])?\s*(\d+)[ ]+(?:(\d+)/(\d+)|" + _FRAC_ARGS + r")$|^([+-])?\s*(\d+)\s*" + _FRAC_ARGS + r"$")


def parse_number(s: str) -> Number | None:
    """Read ``s`` as one plain number, exactly, or return ``None``.

    Integers, decimals (``.4``, ``1,000.99``, ``1 000``), a comma as decimal mark when it
    cannot be a thousands separator (``1000,99``, ``0,111``), scientific notation
    (``1.5e3``, ``1.5\\times10^{3}``), fractions (``3/4``, ``\\frac{3}{4}``, ``\\frac34``)
    and mixed numbers (``4 4/9``, ``4\\frac{4}{9}``, ``3\\frac14``; a mixed number's fraction must be
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
            sign, whole, rest = g[0], g[1], g[2:8]
        else:
            sign, whole, rest = g[8], g[9], (None, None) + g[10:14]
        p, q = [int(x) for x in rest if x is not None]
        if q == 0 or p >= q:
            return None
        val = int(whole) + Fraction(p, q)
        return Number(-val if sign == "-" else val, 0)
    return None
