"""The equivalence check: is a predicted answer equal to the reference? (sympy side)

:func:`check` is what the verifier's worker processes run for every pair the caller's
process could not settle with strings and plain numbers: parse both sides into answer
forms (:mod:`.forms`), compare them node by node (:func:`nodes_equal`: assignments,
orderings, equations, sets and intervals, tuples, matrices, scalars with the percent,
degree, tolerance and stated-precision rules), piecewise ``\\begin{cases}`` answers case
by case, and finally the text rules (:mod:`.text`). :class:`Options` carries the
comparison options. Expressions that are not settled exactly are evaluated to 50 digits
and compared relatively (:mod:`.numeric`); ``rel_tol`` and the stated precision of a
decimal reference (:func:`.plain_numbers.stated_precision`) loosen that for decimals.

Everything here may run long on hostile input; the verifier runs it in worker processes
from :func:`rlvr.rewards.isolated` that are killed at a deadline.

Imports: sympy and every lower module of :mod:`rlvr.verifiers.math` (:mod:`.normalization`,
:mod:`.plain_numbers`, :mod:`.text`, :mod:`.latex`, :mod:`.numeric`, :mod:`.forms`);
only the package's ``__init__`` (``MathVerifier``) imports it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from fractions import Fraction

import sympy
from sympy import Interval, Rational, Symbol, Union, oo, pi

from rlvr.verifiers.math.forms import (
    Node,
    _relation,
    _split_relations,
    _to_set,
    clock_time,
    parse_answer,
)
from rlvr.verifiers.math.latex import ParseError, TooLarge, _symbol, latex_to_sympy
from rlvr.verifiers.math.normalization import compact, normalize
from rlvr.verifiers.math.numeric import _certainly_different, _evalf, _num_close, _test_point
from rlvr.verifiers.math.plain_numbers import stated_precision
from rlvr.verifiers.math.text import choice_option, phrase_match, quantities_match, residues_equal, sign_statement_match

# ----------------------------------------------------------------------------------------
# Equivalence
# ----------------------------------------------------------------------------------------

_PARAMS = {"k", "n", "m", "t", "C", "c", "l", "j", "K", "N"}


@dataclass(frozen=True)
class Options:
    """Comparison options shared by the in-process and worker halves."""

    rel_tol: float | None = None
    gold_precision: bool = True
    phrases: bool = True
    params: frozenset = frozenset()
    positive: bool = False  # every symbol is a positive real (``MathVerifier(assume_positive=True)``)


def scalar_equal(g: Node, p: Node, opts: Options) -> tuple[bool, str]:
    """Compare two scalar expression nodes. Returns (equal, how)."""
    gv, pv = g.value, p.value
    if isinstance(gv, sympy.MatrixBase) or isinstance(pv, sympy.MatrixBase):
        if not (isinstance(gv, sympy.MatrixBase) and isinstance(pv, sympy.MatrixBase)) or gv.shape != pv.shape:
            return False, "matrix shapes differ"
        for a, b in zip(gv, pv):
            ok, _ = scalar_equal(Node("expr", a, decimals=g.decimals), Node("expr", b, decimals=p.decimals), opts)
            if not ok:
                return False, "matrix entries differ"
        return True, "matrix"
    if g.degrees != p.degrees:
        # 30^\circ and \pi/6 are the same angle
        if g.degrees and pv.has(pi):
            gv = gv * pi / 180
        elif p.degrees and gv.has(pi):
            pv = pv * pi / 180
    # (value, tag, shift of the reference's decimals)
    candidates = [(gv, "", 0)]
    if g.percent and not p.percent:
        candidates.append((gv / 100, " (percent)", 2))
    if p.percent and not g.percent:
        same = [(gv, "", 0)] if g.kind == "expr" and isinstance(gv, Rational) and gv.q in (1,) or (g.decimals and isinstance(gv, Rational)) else []
        candidates = [(gv * 100, " (percent)", -2)] + same
    for target, tag, shift in candidates:
        ok, how = _value_equal(target, pv, g, p, opts, decimals_shift=shift)
        if ok:
            return True, how + tag
    return False, how


def _as_fraction(x: sympy.Expr) -> Fraction | None:
    """An exact rational, or a 50-digit evaluated real, as a Fraction (None if complex)."""
    if isinstance(x, Rational):
        return Fraction(int(x.p), int(x.q))
    if not x.is_real:
        return None
    try:
        return Fraction(str(sympy.Float(x, 50)))
    except (ValueError, TypeError, OverflowError):
        return None


def _value_equal(gv: sympy.Expr, pv: sympy.Expr, g: Node, p: Node, opts: Options, decimals_shift: int = 0) -> tuple[bool, str]:
    if gv == pv:
        return True, "exact"
    if isinstance(gv, Rational) and isinstance(pv, Rational) and not (opts.rel_tol or (opts.gold_precision and g.decimals)):
        return False, "exact rationals differ"
    syms = gv.free_symbols | pv.free_symbols
    if not syms:
        a, b = _evalf(gv), _evalf(pv)
        if a is None or b is None:
            return False, "not comparable numerically"
        if _num_close(a, b):
            if _certainly_different(gv, pv):
                return False, "values differ beyond 50 digits"
            return True, "numeric (50 digits)"
        if opts.rel_tol and (g.decimals or p.decimals) and _num_close(a, b, sympy.Float(opts.rel_tol, 30)):
            return True, f"numeric within rel_tol={opts.rel_tol:g}"
        if opts.gold_precision and g.decimals:
            fa, fb = _as_fraction(gv if isinstance(gv, Rational) else a), _as_fraction(pv if isinstance(pv, Rational) else b)
            how = stated_precision(fa, max(0, g.decimals + decimals_shift), g.sig, fb, p.decimals, p.sig) if fa is not None and fb is not None else None
            if how:
                return True, how
        return False, "values differ"
    gs, ps = gv.free_symbols, pv.free_symbols
    if gs != ps:
        extra_g, extra_p = gs - ps, ps - gs
        if len(extra_g) == 1 and len(extra_p) == 1:
            a, b = next(iter(extra_g)), next(iter(extra_p))
            both_usual = a.name in _PARAMS and b.name in _PARAMS
            if (both_usual or a.name in opts.params or b.name in opts.params) and not isinstance(gv, Symbol):
                # "\pi/6 + k\pi" and "\pi/6 + n\pi": an arbitrary integer or constant, renamed;
                # also any symbol an answer declares as its parameter ("... for some integer t")
                pv = pv.xreplace({b: a})
                syms = gv.free_symbols | pv.free_symbols
    diff = gv - pv
    if diff == 0:
        return True, "symbolic"
    same = 0
    for k in range(3):
        subs = _test_point(sorted(syms, key=lambda z: z.name), k, gv, pv, positive=opts.positive)
        a, b = _evalf(gv, subs), _evalf(pv, subs)
        if a is None and b is None:
            continue
        if a is None or b is None:
            return False, "values differ at a test point"
        if not _num_close(a, b):
            return False, "values differ at a test point"
        same += 1
    if same >= 2:
        return True, "symbolic (equal at test points)"
    try:
        return bool(sympy.simplify(diff) == 0), "simplify"
    except (TypeError, ValueError, RecursionError, AttributeError):
        return False, "could not compare"


def _eq_solves_to(eq: sympy.Expr, p: Node, opts: Options) -> tuple[bool, str]:
    """An equation answered by the value of its one unknown: ``y + 1 = -(2x-1)^2`` and
    ``-4x^2 + 4x - 2``; ``\\rho \\sin\\theta = \\sqrt3`` and ``\\sqrt3 \\csc\\theta``. The
    unknown is a symbol of the equation that the answer does not use, appearing linearly;
    when the equation has a ``y``, only ``y`` (the usual dependent variable)."""
    if isinstance(p.value, sympy.MatrixBase):
        return False, "equation vs matrix"
    unknowns = eq.free_symbols - p.value.free_symbols
    if any(z.name == "y" for z in eq.free_symbols):
        unknowns = {z for z in unknowns if z.name == "y"}  # y = f(x) is the usual reading
    for sym in sorted(unknowns, key=lambda z: z.name):
        try:
            poly = sympy.Poly(eq, sym)
        except (sympy.PolynomialError, sympy.GeneratorsNeeded):
            continue
        if poly.degree() != 1:
            continue
        a, b = poly.all_coeffs()
        if a == 0:
            continue
        solved = Node("expr", -b / a)
        ok, how = scalar_equal(solved, p, opts)
        if ok:
            return True, f"equation solved for {sym} ({how})"
    return False, "equation vs value"


def _eq_equal(g: sympy.Expr, p: sympy.Expr) -> bool:
    """Two equations ``g = 0`` and ``p = 0`` are the same when g/p is a nonzero constant."""
    syms = sorted(g.free_symbols | p.free_symbols, key=lambda z: z.name)
    if not syms:
        return False
    ratios = []
    for k in range(3):
        subs = _test_point(syms, k, g, p)
        a, b = _evalf(g, subs), _evalf(p, subs)
        if a is None or b is None:
            continue
        if b == 0 or a == 0:
            if a == 0 and b == 0:
                continue
            return False
        ratios.append(a / b)
    return len(ratios) >= 2 and all(_num_close(r, ratios[0]) for r in ratios)


def _set_equal(a: sympy.Set, b: sympy.Set, opts: Options) -> bool:
    if a == b:
        return True
    pa, pb = _pieces(a), _pieces(b)
    if pa is None or pb is None or len(pa) != len(pb):
        return False
    for x, y in zip(pa, pb):
        if x[2:] != y[2:]:
            return False
        for u, v in ((x[0], y[0]), (x[1], y[1])):
            if u == v:
                continue
            if u in (oo, -oo) or v in (oo, -oo):
                return False
            ok, _ = _value_equal(u, v, Node("expr", u), Node("expr", v), opts, False)
            if not ok:
                return False
    return True


def _pieces(s: sympy.Set) -> list | None:
    if isinstance(s, Interval):
        return [(s.start, s.end, s.left_open, s.right_open)]
    if isinstance(s, sympy.Union):
        out = []
        for a in s.args:
            got = _pieces(a)
            if got is None:
                return None
            out.extend(got)
        return sorted(out, key=lambda t: float(t[0]))
    if isinstance(s, sympy.FiniteSet):
        return [(v, v, False, False) for v in sorted(s.args, key=lambda z: float(z))]
    return None


def _as_interval(node: Node) -> Node | None:
    try:
        return Node("set", _to_set(node), text=node.text)
    except (ParseError, TypeError, ValueError):
        return None


def _union_of(node: Node) -> Node | None:
    """``4 < m \\le 8 \\text{ or } 10 \\le m < 12``: a bare list of sets is their union."""
    if node.kind != "seq" or node.brackets:
        return None
    parts = []
    for it in node.items:
        it = _unwrap(it) if it.kind == "assign" and it.items[0].kind == "expr" else it
        got = it if it.kind == "set" else _as_interval(it)
        if got is None:
            return None
        parts.append(got.value)
    return Node("set", Union(*parts), text=node.text)


def _func_arg(name: str) -> str | None:
    m = re.fullmatch(r"\s*[A-Za-z]\s*\(\s*([A-Za-z])\s*\)\s*", name or "")
    return m.group(1) if m else None


def _tuple_names(name: str) -> list[str] | None:
    """``(x, y)`` -> ``["x", "y"]``: the variables a tuple answer declares, or None."""
    m = re.fullmatch(r"\s*\(((?:\s*[A-Za-z](?:_\{?\w+\}?)?\s*,)+\s*[A-Za-z](?:_\{?\w+\}?)?\s*)\)\s*", name or "")
    if not m:
        return None
    names = [compact(x) for x in m.group(1).split(",")]
    return names if len(set(names)) == len(names) else None


def _unwrap(node: Node) -> Node:
    while node.kind == "assign":
        node = node.items[0]
    return node


def nodes_equal(g: Node, p: Node, opts: Options, depth: int = 0) -> tuple[bool, str]:
    """Is the predicted answer ``p`` equivalent to the reference ``g``? Returns (equal, how)."""
    if depth > 10:
        return False, "too deep"
    if g.text and p.text and compact(g.text) == compact(p.text):
        return True, "string match"
    # assignments: x = 5 is the value 5
    if g.kind == "assign" and p.kind == "assign":
        gv, pv = _unwrap(g), _unwrap(p)
        ga, pa = _func_arg(g.name), _func_arg(p.name)
        gn, pn = _tuple_names(g.name), _tuple_names(p.name)
        if gn and pn and gn != pn and sorted(gn) == sorted(pn) and pv.kind == "seq" and len(pv.items) == len(pn):
            # (x, y) = (1, 2) and (y, x) = (2, 1) state the same values; (y, x) = (1, 2) does not
            pv = Node("seq", items=[pv.items[pn.index(n)] for n in gn], brackets=pv.brackets, text="")
        if ga and pa and ga != pa and pv.kind == "expr" and gv.kind == "expr":
            # f(z) = z and f(x) = x define the same function
            swap = {_symbol(pa): _symbol(ga), _symbol(ga): _symbol(pa)}
            pv = Node("expr", pv.value.xreplace(swap), decimals=pv.decimals, text="")
        return nodes_equal(gv, pv, opts, depth + 1)
    if g.kind == "assign" and p.kind != "eq":
        return nodes_equal(_unwrap(g), p, opts, depth + 1)
    if p.kind == "assign" and g.kind != "eq":
        return nodes_equal(g, _unwrap(p), opts, depth + 1)
    if g.kind == "time" or p.kind == "time":
        # a time marked as one (AM/PM, seconds) against a time, or a bare 24-hour H:MM
        gt = g.value if g.kind == "time" else clock_time(g.text, plain=True)
        pt = p.value if p.kind == "time" else clock_time(p.text, plain=True)
        return gt is not None and gt == pt, "time of day"
    if g.kind == "chain" and p.kind == "seq" and not p.brackets and len(set(g.name.split())) == 1 and g.name.split()[0] in ("<", ">"):
        # "b < a < d < c" answered as the ordered list "b, a, d, c"
        if len(g.items) != len(p.items):
            return False, "ordering vs list of another length"
        return all(nodes_equal(a, b, opts, depth + 1)[0] for a, b in zip(g.items, p.items)), "ordering as a list"
    if g.kind == "chain" or p.kind == "chain":
        if g.kind != p.kind:
            return False, "ordering vs non-ordering"
        flip = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "!=": "!="}
        pitems, pops = p.items, p.name
        if g.name != p.name and g.name == " ".join(flip[o] for o in reversed(p.name.split())):
            pitems = list(reversed(p.items))
            pops = g.name
        if g.name != pops or len(g.items) != len(pitems):
            return False, "orderings differ"
        return all(nodes_equal(a, b, opts, depth + 1)[0] for a, b in zip(g.items, pitems)), "ordering"
    if g.kind == "eq" and p.kind == "expr":
        return _eq_solves_to(g.value, p, opts)
    if g.kind == "eq" or p.kind == "eq":
        ge, pe = _as_eq(g), _as_eq(p)
        if ge is None or pe is None:
            return False, "equation vs non-equation"
        return _eq_equal(ge, pe), "equation (proportional)"
    if g.kind == "text" or p.kind == "text":
        a = g.value if g.kind == "text" else compact(g.text).lower()
        b = p.value if p.kind == "text" else compact(p.text).lower()
        return _text_equal(a, b), "text"
    if g.kind == "set" or p.kind == "set":
        gs = g if g.kind == "set" else _as_interval(g)
        ps = p if p.kind == "set" else _as_interval(p)
        gs = gs or _union_of(g)
        ps = ps or _union_of(p)
        if gs is None or ps is None:
            return False, "set vs non-set"
        return _set_equal(gs.value, ps.value, opts), "sets/intervals"
    if g.kind == "seq" or p.kind == "seq":
        gi = g.items if g.kind == "seq" else [g]
        pi_ = p.items if p.kind == "seq" else [p]
        vector = _flatten_matrix(gi) is not gi or _flatten_matrix(pi_) is not pi_  # a vector is ordered
        gi = _flatten_matrix(gi)
        pi_ = _flatten_matrix(pi_)
        unordered = not vector and not ((g.kind == "seq" and g.brackets not in ("", "{}")) or (p.kind == "seq" and p.brackets not in ("", "{}")))
        if unordered and len(gi) != len(pi_):
            gi, pi_ = _dedupe(gi, opts, depth), _dedupe(pi_, opts, depth)
        if len(gi) != len(pi_):
            return False, f"{len(pi_)} items vs {len(gi)}"
        iv = ("()", "[]", "(]", "[)")
        if g.kind == "seq" and p.kind == "seq" and len(gi) == 2 and g.brackets in iv and p.brackets in iv and g.brackets != p.brackets:
            return False, f"interval {p.brackets} vs {g.brackets}"
        ordered = (g.kind == "seq" and g.brackets not in ("", "{}")) or (p.kind == "seq" and p.brackets not in ("", "{}"))
        if g.kind == "seq" and p.kind == "seq" and g.brackets in ("", "{}") and p.brackets in ("", "{}"):
            ordered = False
        ordered = ordered or vector
        named = _by_name(gi, pi_)
        if ordered or named is not pi_:
            pi_ = named
            for a, b in zip(gi, pi_):
                if not nodes_equal(a, b, opts, depth + 1)[0]:
                    return False, "tuple entries differ"
            return True, "tuple"
        used = [False] * len(pi_)
        for a in gi:
            for j, b in enumerate(pi_):
                if not used[j] and nodes_equal(a, b, opts, depth + 1)[0]:
                    used[j] = True
                    break
            else:
                return False, "sets differ"
        return True, "set (unordered)"
    return scalar_equal(g, p, opts)


def _by_name(gi: list[Node], pi_: list[Node]) -> list[Node]:
    """Entries that both sides name (``x = 1, y = 3`` and ``y = 3, x = 1``; ``x = 1, y = 2``
    is not ``y = 1, x = 2``) are matched by name, in a tuple or a list alike. Returns ``pi_``
    itself (match as before: by position, or as a set) when either side has an unnamed
    entry or the names differ."""
    if len(gi) < 2 or not all(n.kind == "assign" for n in gi + pi_):
        return pi_
    gn, pn = [compact(n.name) for n in gi], [compact(n.name) for n in pi_]
    if len(set(gn)) != len(gn) or set(gn) != set(pn):
        return pi_
    return [pi_[pn.index(n)] for n in gn]


def _dedupe(items: list[Node], opts: Options, depth: int) -> list[Node]:
    """A set's listed elements without repeats (``(1,2), (1,2)`` is one solution)."""
    out: list[Node] = []
    for it in items:
        if not any(nodes_equal(o, it, opts, depth + 1)[0] for o in out):
            out.append(it)
    return out


def _flatten_matrix(items: list[Node]) -> list[Node]:
    if len(items) == 1 and items[0].kind == "expr" and isinstance(items[0].value, sympy.MatrixBase) and 1 in items[0].value.shape:
        return [Node("expr", v) for v in items[0].value]
    return items


def _as_eq(n: Node) -> sympy.Expr | None:
    if n.kind == "eq":
        return n.value
    if n.kind == "assign" and n.items[0].kind == "expr":
        try:
            lhs = latex_to_sympy(n.name)
        except (ParseError, TooLarge):
            return None
        return lhs - n.items[0].value
    return None


def _text_equal(a: str, b: str) -> bool:
    def canon(x: str) -> str:
        x = re.sub(r"\\text|\\mathrm|\\textbf", "", x)
        x = x.replace("{", "").replace("}", "").replace("\\", "")
        x = re.sub(r"^\(([a-z])\)$", r"\1", x)
        return x.strip(".")

    return canon(a) == canon(b)


# ----------------------------------------------------------------------------------------
# The worker-side check, with a cache of parsed references
# ----------------------------------------------------------------------------------------

_GOLD_CACHE: OrderedDict[str, Node | Exception] = OrderedDict()


def _parse_cached(s: str) -> Node:
    hit = _GOLD_CACHE.get(s)
    if hit is None:
        try:
            hit = parse_answer(s)
        except (ParseError, TooLarge, RecursionError, ValueError, TypeError, AttributeError, ZeroDivisionError) as exc:
            hit = exc
        _GOLD_CACHE[s] = hit
        if len(_GOLD_CACHE) > 4096:
            _GOLD_CACHE.popitem(last=False)
    else:
        _GOLD_CACHE.move_to_end(s)
    if isinstance(hit, Exception):
        raise hit
    return hit


_INFINITELY_MANY_RE = re.compile(r"^(?:there are |there is )?(?:infinitely many|an infinite number|infinite(?:ly)?)(?: (?:of )?[a-z]+)?$")


def _infinitely_many(text: str) -> bool:
    return bool(_INFINITELY_MANY_RE.match(" ".join(normalize(text)[0].lower().replace("\\", " ").split()).strip(". ")))


def _text_rules(gold: str, pred: str, opts: Options) -> tuple[bool, str] | None:
    """Rules for answers written in words, tried after the mathematical comparison failed:
    "infinitely many" is the count ``\\infty``; residue classes in any of their forms
    (:func:`residues_equal`); and (``opts.phrases``) a short phrase stated as the subject or
    predicate of a one-clause sentence (:func:`phrase_match`), a sentence's quantities
    listed clause by clause (:func:`quantities_match`), a sentence stating a sign and the
    inequality (:func:`sign_statement_match`)."""
    if residues_equal(gold, pred):
        return True, "the same residue classes"
    for words, other in ((gold, pred), (pred, gold)):
        if len(words) < 80 and _infinitely_many(words):
            try:
                node = parse_answer(other)
            except (ParseError, TooLarge, RecursionError, ValueError, TypeError, AttributeError, ZeroDivisionError):
                continue
            if node.kind == "expr" and node.value == oo:
                return True, "'infinitely many' is \\infty"
    if opts.phrases:
        if phrase_match(gold, pred):
            return True, "text: the phrase is the sentence's subject or predicate"
        if quantities_match(gold, pred):
            return True, "text: the sentence's quantities, clause by clause"
        if sign_statement_match(gold, pred):
            return True, "text: the sign the sentence states"
    return None


_PARAM_DECL_RE = re.compile(
    r"for\s+(?:some|any|every|each|arbitrary)\s+(?:(?:positive|negative|nonnegative|real|natural|integer|integers|number|numbers|constant|value)\s+){0,3}"
    r"(?:\}\s*)?\$?\s*([A-Za-z])(?![A-Za-z])"
    r"|(?:where|with)\s+(?:\}\s*)?\$?\s*([A-Za-z])\s*\$?\s*(?:\\text\{\s*)?(?:is an? (?:arbitrary |any )?(?:positive |nonnegative )?(?:integer|real|constant)|\\in\s*\\mathbb)"
    r"|([A-Za-z])\s*\\in\s*\\mathbb\s*\{?[ZNRQ]"
)


def declared_params(text: str) -> frozenset:
    """Symbols an answer declares as free parameters: ``... \\text{ for some integer } t``,
    ``k \\in \\mathbb{Z}``, ``where n is an integer``."""
    return frozenset(next(x for x in m if x) for m in _PARAM_DECL_RE.findall(text))


_CASES_RE = re.compile(r"^(?:(?P<name>[^=]*?)=\s*)?\\begin\{cases\}(?P<body>.*?)\\end\{cases\}\s*\.?$", re.DOTALL)
_COND_WORDS_RE = re.compile(r"\\text\{\s*(?:when|if|for|where|otherwise|else|in case)?\s*\}|\b(?:when|if|for|where|in case)\b|\\(?:quad|qquad|,|;)")


def _cases(text: str) -> list[tuple[str, str | None]] | None:
    """``\\begin{cases} v_1, & \\text{when } a < 1 \\\\ v_2, & \\text{otherwise} \\end{cases}``
    -> ``[(v_1, "a < 1"), (v_2, None)]`` (None: the remaining values)."""
    m = _CASES_RE.match(text.strip().strip("$").strip())
    if not m:
        return None
    rows = []
    for row in re.split(r"\\\\", m.group("body")):
        if not row.strip():
            continue
        if "&" not in row:
            return None
        value, cond = row.split("&", 1)
        cond = _COND_WORDS_RE.sub(" ", cond).strip().strip(".,;").strip()
        if re.fullmatch(r"(?:\\text\{)?\s*(?:otherwise|else)?\s*\}?", cond):
            cond = None
        rows.append((value.strip().rstrip(",;").strip(), cond))
    return rows or None


def _sub_param(text: str, param: str, value: sympy.Expr) -> str:
    """``text`` with the one-letter parameter replaced by a value (whole letters only:
    the ``a`` in ``\\max`` or ``\\frac`` stays)."""
    return re.sub(r"(?<![A-Za-z\\])" + re.escape(param) + r"(?![A-Za-z])", "(" + sympy.latex(value).replace("\\", "\\\\") + ")", text)


def _cond_holds(cond: str, param: str, value: sympy.Expr) -> bool:
    parts, ops = _split_relations(_sub_param(cond, param, value))
    if not ops:
        raise ParseError(f"no relation in the condition {cond!r}")
    vals = [latex_to_sympy(normalize(x)[0]) for x in parts]
    fn = {"<": sympy.Lt, ">": sympy.Gt, "<=": sympy.Le, ">=": sympy.Ge, "!=": sympy.Ne, "=": sympy.Eq}
    return all(bool(fn[op](a, b)) for a, op, b in zip(vals, ops, vals[1:]) if op in fn)


def _case_points(cond: str, param: str) -> list[sympy.Expr]:
    """Two values of the parameter inside the condition's region (one for ``a = 1``)."""
    parts, ops = _split_relations(normalize(cond)[0])
    if ops == ["="]:
        other = parts[1] if parts[0].strip() == param else parts[0]
        return [latex_to_sympy(other)]
    region = _to_set(_relation(parts, ops, 0, cond))
    points = []
    for lo, hi, _, _ in _pieces(region) or []:
        if lo == -oo and hi == oo:
            points += [Rational(1, 3), Rational(-7, 2)]
        elif lo == -oo:
            points += [hi - Rational(1, 2), hi - Rational(7, 2)]
        elif hi == oo:
            points += [lo + Rational(1, 2), lo + Rational(7, 2)]
        elif lo == hi:
            points.append(lo)
        else:
            points += [(lo + hi) / 2, (lo + 3 * hi) / 4]
    return points


def _check_cases(gold: str, pred: str, opts: Options) -> tuple[bool, str] | None:
    """A piecewise answer (``\\begin{cases}``) against another answer: both are evaluated
    at values of the parameter inside each case's condition (two per region, the value
    itself for ``a = 1``) and must agree at every one."""
    gc, pc = _cases(gold), _cases(pred)
    if gc is None and pc is None:
        return None
    conds = [c for rows in (gc, pc) if rows for _, c in rows if c]
    letters = {x for c in conds for x in re.findall(r"(?<![A-Za-z\\])([A-Za-z])(?![A-Za-z])", c)}
    if len(letters) != 1:
        return False, "piecewise answer: conditions must name one parameter"
    param = letters.pop()
    points = []
    for c in conds:
        points += _case_points(c, param)
    if not points:
        return False, "piecewise answer: no values to test"

    def at(rows: list | None, text: str, v: sympy.Expr) -> str | None:
        if rows is None:
            return _sub_param(text, param, v)
        default = None
        for value, cond in rows:
            if cond is None:
                default = value
            elif _cond_holds(cond, param, v):
                return _sub_param(value, param, v)
        return None if default is None else _sub_param(default, param, v)

    for v in points:
        a, b = at(gc, gold, v), at(pc, pred, v)
        if a is None or b is None:
            return False, f"piecewise answer: no case for {param} = {v}"
        ok, how = _check_nodes(a, b, opts)
        if not ok:
            return False, f"piecewise answers differ at {param} = {v} ({how})"
    return True, f"piecewise, equal at {len(points)} values of {param}"


def _check_choice(gold: str, pred: str, opts: Options) -> tuple[bool, str] | None:
    """A multiple-choice option with its text (``(C) Boston``) on either side: the letter
    decides against a letter (``C``, ``(C)``, ``\\text{(C)}``; another letter is wrong);
    two options with text must agree on both letter and text; against an answer that is
    no letter, the option's text is compared (``Boston``). None: no option with text."""
    g, p = choice_option(normalize(gold)[0]), choice_option(normalize(pred)[0])
    if not ((g and g[1]) or (p and p[1])):
        return None
    if g and p:
        if g[0] != p[0]:
            return False, f"choice ({p[0]}) vs ({g[0]})"
        if g[1] and p[1] and not _check_nodes(g[1], p[1], opts)[0]:
            return False, f"choice ({g[0]}) with another option text"
        return True, f"choice ({g[0]})"
    ok, how = _check_nodes(g[1], pred, opts) if g else _check_nodes(gold, p[1], opts)  # type: ignore[index]
    return ok, f"the option's text ({how})"


def check(gold: str, pred: str, opts: Options) -> tuple[bool, str]:
    """Compare an extracted prediction with an extracted reference, with sympy."""
    declared = declared_params(gold) | declared_params(pred)
    if declared:
        opts = replace(opts, params=opts.params | declared)
    got = _check_choice(gold, pred, opts)
    if got is not None:
        return got
    if "\\begin{cases}" in gold or "\\begin{cases}" in pred:
        try:
            got = _check_cases(gold, pred, opts)
        except TooLarge as exc:
            return False, f"piecewise answer too large to evaluate ({exc})"
        except (ParseError, RecursionError, ValueError, TypeError, AttributeError, ZeroDivisionError, NotImplementedError) as exc:
            return False, f"piecewise answer not comparable ({type(exc).__name__}: {str(exc)[:80]})"
        if got is not None:
            return got
    ok, how = _check_nodes(gold, pred, opts)
    if ok:
        return ok, how
    return _text_rules(gold, pred, opts) or (ok, how)


def _check_nodes(gold: str, pred: str, opts: Options) -> tuple[bool, str]:
    try:
        g = _parse_cached(gold)
    except TooLarge as exc:
        return compact(normalize(gold)[0]) == compact(normalize(pred)[0]), f"reference too large to evaluate ({exc}); strings compared"
    except (ParseError, RecursionError, ValueError, TypeError, AttributeError, ZeroDivisionError) as exc:
        g = Node("text", compact(normalize(gold)[0]).lower(), text=normalize(gold)[0])
        _ = exc
    try:
        p = parse_answer(pred)
    except TooLarge as exc:
        return False, f"answer too large to evaluate ({exc}); not equal to {gold!r:.60}"
    except (ParseError, RecursionError, ValueError, TypeError, AttributeError, ZeroDivisionError) as exc:
        if g.kind == "text":
            ok = _text_equal(g.value, compact(normalize(pred)[0]).lower())
            return ok, "text"
        return False, f"could not parse the answer ({type(exc).__name__}: {str(exc)[:80]})"
    try:
        return nodes_equal(g, p, opts)
    except (TypeError, ValueError, AttributeError, RecursionError, ZeroDivisionError, NotImplementedError) as exc:
        return False, f"not comparable ({type(exc).__name__}: {str(exc)[:80]})"
