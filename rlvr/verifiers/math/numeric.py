"""Numeric evaluation of sympy expressions: 50-digit values, test points, relative closeness.

Equivalence of two expressions is decided exactly where that is cheap (rationals, equal
trees, a difference that sympy reduces to 0) and otherwise by evaluating both sides to 50
significant digits -- at the expression itself when it has no free symbols, at three fixed
pseudo-random points when it has -- and comparing RELATIVELY (``|a - b| <= 1e-30 *
max(|a|, |b|)``). A tiny value is therefore never "equal to zero": ``1/2^99`` differs from
``1/2^98`` by a relative 0.5; and when two constants agree to 50 digits, their difference
is evaluated once more with error-bounded adaptive precision (:func:`_certainly_different`),
so ``3^{1/3^{500}}`` (1 + 3e-239) is not ``1`` either.

Sums and products with symbolic bounds are evaluated by giving the symbols in their bounds
small integers (3 to 5) and fixed values to the terms ``a(j)`` of unknown sequences, then
expanding.

Imports: sympy and :mod:`.latex` (its size limits); nothing above it in :mod:`rlvr.verifiers.math`.
"""

from __future__ import annotations

import zlib

import sympy
from sympy import I, Integer, Rational, oo
from sympy.core.function import AppliedUndef

from rlvr.verifiers.math.latex import MAX_FACTORIAL

_REL_EQ = sympy.Float("1e-30", 60)
_POINTS = [Rational(7, 5), Rational(23, 13), Rational(-5, 7), Rational(31, 11)]


def _bound_symbols(e: sympy.Expr) -> set:
    """Symbols in the bounds of sums and products (``n`` in ``\\sum_{k=1}^{n}``)."""
    out: set = set()
    dummies: set = set()
    if isinstance(e, sympy.Basic) and e.has(sympy.Sum, sympy.Product):
        for node in e.atoms(sympy.Sum, sympy.Product):
            for var, lo, hi in node.limits:
                out |= lo.free_symbols | hi.free_symbols
                dummies.add(var)
    return out - dummies


def _test_point(syms: list, k: int, *exprs: sympy.Expr, positive: bool = False) -> dict:
    """The k-th test point for ``syms``: fixed awkward rationals, one of them negative (so
    ``\\sqrt{x^2}`` is not ``x``), except that a symbol used as the bound of a sum or
    product (in either expression) gets a small integer, 3 to 5, so that
    ``1 + 2 + \\cdots + n`` and ``n(n+1)/2`` are compared at the same ``n``. ``positive``:
    every value is positive (the symbols are declared positive)."""
    bounds = set().union(*(_bound_symbols(e) for e in exprs))
    points = [abs(p) for p in _POINTS] if positive else _POINTS
    return {s: Integer(3 + (k + j) % 3) if s in bounds else points[(k + j) % len(points)] + j for j, s in enumerate(syms)}


def _sequence_value(f: sympy.Expr) -> sympy.Expr:
    """A fixed, arbitrary value for the term ``a(3)`` of an unknown sequence ``a``."""
    key = zlib.crc32(f"{f.func.__name__}({f.args})".encode())
    return Rational(key % 997 + 11, key % 89 + 7)


def _concrete(e: sympy.Expr, subs: dict | None) -> tuple[sympy.Expr, dict | None] | None:
    """Sums and products with symbolic bounds, evaluated the way one checks them by hand:
    the symbols in their bounds become small integers (3 to 5, fixed by the test point),
    the sum is expanded, and each term ``a(j)`` of an unknown sequence gets a fixed value."""
    if not e.has(sympy.Sum, sympy.Product, AppliedUndef):
        return e, subs
    subs = dict(subs or {})
    bound_syms = _bound_symbols(e)
    for sym in sorted(bound_syms, key=lambda z: z.name):
        v = subs.get(sym, Integer(3))
        subs[sym] = v if isinstance(v, Integer) and 0 <= v <= 50 else Integer(3 + int(abs(v) * 7) % 3)
    e = e.xreplace({sym: subs[sym] for sym in bound_syms})
    for node in e.atoms(sympy.Sum, sympy.Product):
        for _, lo, hi in node.limits:
            span = hi - lo
            if not span.is_number or abs(span) > MAX_FACTORIAL:
                return None
    e = e.doit()
    undef = e.atoms(AppliedUndef)
    if undef:
        e = e.xreplace({f: _sequence_value(f) for f in undef if not f.free_symbols})
    return e, subs


def _evalf(e: sympy.Expr, subs: dict | None = None) -> sympy.Expr | None:
    try:
        got = _concrete(e, subs)
        if got is None:
            return None
        e, subs = got
        v = e.evalf(50, subs=subs) if subs else e.evalf(50)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError, RecursionError):
        return None
    if not v.is_number or v.has(sympy.zoo, sympy.nan, oo, -oo):
        return None
    return v


def _num_close(a: sympy.Expr, b: sympy.Expr, tol: sympy.Expr = _REL_EQ) -> bool | None:
    """Relative closeness of two evaluated numbers (possibly complex); None if unknown."""
    try:
        diff = abs(complex(a - b)) if (a.has(I) or b.has(I)) else abs(a - b)
        scale = max(abs(a), abs(b))
    except (TypeError, ValueError):
        return None
    if scale == 0:
        return True
    return bool(diff <= tol * scale)


def _certainly_different(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Do two constant expressions whose 50-digit values agree still differ?

    The difference ``a - b`` is evaluated with sympy's adaptive, error-bounded evalf
    (``strict=True``, working precision up to about 1000 digits): a difference it can
    certify as nonzero is real, however tiny -- ``3^{1/3^{500}}`` is not ``1`` (they differ
    by about 3e-239), just as ``1/2^99`` is not ``1/2^98``. An identity that no precision
    separates (``\\tan^2 1 + 1`` and ``\\sec^2 1``) raises ``PrecisionExhausted`` and stays
    equal; so does anything that cannot be evaluated at all."""
    try:
        d = (a - b).evalf(15, maxn=1000, strict=True)
    except (sympy.core.evalf.PrecisionExhausted, TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError, RecursionError):
        return False
    return bool(d.is_number and d != 0 and not d.has(sympy.nan, sympy.zoo))


def _identity(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Are ``a`` and ``b`` the same function (equal at every test point, and at least two)?"""
    syms = sorted(a.free_symbols | b.free_symbols, key=lambda z: z.name)
    same = 0
    for k in range(3):
        subs = _test_point(syms, k, a, b)
        x, y = _evalf(a, subs), _evalf(b, subs)
        if x is None or y is None:
            continue
        if not _num_close(x, y):
            return False
        same += 1
    return same >= 2
