"""Answer forms: the structure above single expressions.

:func:`parse_answer` turns a normalised answer into a :class:`Node`: an expression (with
percent, degrees and decimals as written), a list or tuple, a set (``\\{...\\}``,
set-builder, intervals, unions and differences, inequalities solved to a set), an
ordering chain, an equation, an assignment (``x = 5``, ``Paolo: 18``), a ratio ``a:b``,
a time of day (``2:05 PM``, ``14:05:00``), ``\\pm`` alternatives, or text.

Imports: sympy, :mod:`.normalization`, :mod:`.plain_numbers`, :mod:`.latex` and
:mod:`.numeric`; nothing above it in :mod:`rlvr.verifiers.math`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sympy
from sympy import Interval, Rational, S, Symbol, Union, oo

from rlvr.verifiers.math.latex import ParseError, TooLarge, latex_to_sympy
from rlvr.verifiers.math.normalization import MAX_ANSWER_CHARS, compact, normalize, split_top_level
from rlvr.verifiers.math.numeric import _identity
from rlvr.verifiers.math.plain_numbers import parse_number

# ----------------------------------------------------------------------------------------
# Answers: structure above expressions
# ----------------------------------------------------------------------------------------


@dataclass
class Node:
    """A parsed answer.

    ``kind`` is one of ``expr`` (``value`` a sympy expression), ``text`` (``value`` a
    normalised string), ``seq`` (``items``; ``brackets`` the enclosing pair, ``""`` for a
    bare list, ``"{}"`` for a set), ``set`` (``value`` a sympy set: interval, union,
    inequality solution), ``eq`` (``value`` is ``lhs - rhs`` of a real equation),
    ``assign`` (``name`` = ``items[0]``; ``x = 5`` is the value 5) or ``time`` (``value``
    seconds after midnight, :func:`clock_time`).
    """

    kind: str
    value: Any = None
    items: list = None  # type: ignore[assignment]
    brackets: str = ""
    decimals: int = 0
    percent: bool = False
    name: str = ""
    sig: int = 0  # significant digits of a plain decimal as written (0: not one)
    text: str = ""
    degrees: bool = False


_REL_OPS = [
    ("\\leqslant", "<="), ("\\geqslant", ">="), ("\\leq", "<="), ("\\geq", ">="), ("\\le", "<="), ("\\ge", ">="),
    ("\\neq", "!="), ("\\ne", "!="), ("\\lt", "<"), ("\\gt", ">"), ("<=", "<="), (">=", ">="), ("!=", "!="),
    ("=<", "<="), ("=>", ">="), ("<", "<"), (">", ">"), ("=", "="), ("\\in", "in"),
]


def _split_relations(s: str) -> tuple[list[str], list[str]]:
    """Split ``a < x \\le b`` at top-level relation operators -> (parts, ops)."""
    parts, ops, cur, depth, i = [], [], [], 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if depth == 0:
            for tex, op in _REL_OPS:
                if s.startswith(tex, i) and not (tex[0] == "\\" and i + len(tex) < len(s) and s[i + len(tex)].isalpha()):
                    parts.append("".join(cur))
                    ops.append(op)
                    cur = []
                    i += len(tex)
                    break
            else:
                cur.append(c)
                i += 1
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    return [p.strip() for p in parts], ops


_NAME_RE = re.compile(
    r"^(?:[A-Za-z](?:_\{?[\w\\ ]+\}?)?(?:\^\{?\w+\}?)?|\\[a-zA-Z]+(?:_\{?[\w\\ ]+\}?)?|[A-Za-z]+\s*\([^()]*\)|\|[A-Za-z ]+\||"
    r"[A-Za-z][\w{}\\ ]*\s*:\s*[A-Za-z][\w{}\\ ]*|\((?:\s*\\?[A-Za-z]+(?:_\{?\w+\}?)?(?:\([a-z]\))?\s*,?)+\)|\\text\{[^}]*\}|[A-Z][a-z]+|[A-Za-z]{3,}|[A-Za-z]\([a-z]\))$"
)


def _is_name(s: str) -> bool:
    s = s.strip()
    return bool(s) and bool(_NAME_RE.match(s)) and not re.fullmatch(r"\d+", s)


def _matching_close(s: str, open_idx: int) -> int:
    depth = 0
    i = open_idx
    while i < len(s):
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if s[i + 1] == "{" else -1
            if depth == 0:
                return i
            i += 2
            continue
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _max_decimals(s: str) -> int:
    return max((len(m) for m in re.findall(r"\d\.(\d+)", s)), default=0)


def _expr_node(s: str, percent: bool = False) -> Node:
    num = parse_number(s)
    if num is not None:
        return Node("expr", Rational(num.value.numerator, num.value.denominator), decimals=num.decimals, percent=percent, text=s, sig=num.sig)
    m = re.fullmatch(r"([^:]+):([^:]+)", s)
    if m:  # a ratio a:b is the number a/b
        a, b = latex_to_sympy(m.group(1)), latex_to_sympy(m.group(2))
        if b == 0:
            raise ParseError("ratio with 0")
        return Node("expr", a / b, percent=percent, text=s, decimals=_max_decimals(s))
    return Node("expr", latex_to_sympy(s), percent=percent, text=s, decimals=_max_decimals(s))


def parse_answer(raw: str, depth: int = 0) -> Node:
    """Parse a (normalised) answer string into a :class:`Node`. Raises ParseError/TooLarge."""
    if depth > 8:
        raise TooLarge("answer nested too deeply")
    if re.search(r"\\(?:sin|cos|tan|sec|csc|cot)", raw) and _DEGREE_RE.search(raw):
        # \sin 60^\circ: an angle inside a function is converted, not dropped
        raw = re.sub(r"(\d+(?:\.\d+)?)\s*(?:\^\s*\{?\s*\\circ\s*\}?|°)", r"(\1\\pi/180)", raw)
    degrees = bool(_DEGREE_RE.search(raw))
    s, percent = normalize(raw)
    node = _parse_normalized(s, percent, depth)
    if degrees and node.kind == "expr":
        node.degrees = True
    return node


_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ|°|\\degree")


def _expand_pm(items: list[str]) -> list[str]:
    r"""``1 \pm \sqrt 5`` -> two items; ``(\pm 1, \pm 2)`` -> four tuples."""
    out: list[str] = []
    for it in items:
        todo = [it]
        done = []
        while todo:
            x = todo.pop()
            if len(done) + len(todo) > 64:
                raise TooLarge("too many \\pm combinations")
            if re.search(r"\\pm|\\mp", x):
                todo.append(re.sub(r"\\pm|\\mp", "+", x, count=1))
                todo.append(re.sub(r"\\pm|\\mp", "-", x, count=1))
            else:
                done.append(x)
        out.extend(reversed(done))
    return out


_CLOCK_RE = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s*([ap])\.?\s*m\.?)?$", re.IGNORECASE)


def clock_time(s: str, plain: bool = False) -> int | None:
    """A time of day as seconds after midnight, or None.

    ``14:05``, ``14:05:00``, ``2:05 PM``, ``02:05 p.m.`` (``12:xx AM`` is just after
    midnight, ``12:xx PM`` just after noon). Minutes and seconds take two digits and stay
    below 60; an hour with AM/PM is 1-12, without it 0-23. Unless ``plain``, the text must
    SAY it is a time -- AM/PM or seconds -- since a bare ``14:05`` may as well be a ratio
    (``5:8``); a bare ``H:MM`` is read as a 24-hour time only against an answer that is
    marked as one. ``2:05`` is never ``14:05``: without PM it is the morning."""
    m = _CLOCK_RE.match(s.strip())
    if not m:
        return None
    hour, minute, second, half = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), (m.group(4) or "").lower()
    if not (plain or half or m.group(3)) or minute > 59 or second > 59:
        return None
    if half:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if half == "p" else 0)
    elif hour > 23:
        return None
    return hour * 3600 + minute * 60 + second


_ASSIGNED_NAME_RE = re.compile(r"^([A-Za-z](?:_\{?\w+\}?)?)\s*=(?!=)([^=<>]+)$")


def _solution_groups(items: list[str]) -> list[list[str]] | None:
    """Several solutions written as one flat list of assignments, separated by commas or
    words: ``x = 1, y = 3 \\text{ and } x = 2, y = 5`` -> ``[[x=1, y=3], [x=2, y=5]]``.

    A new solution starts where a variable comes back; every solution must assign the same
    two or more variables, each once (their order may vary: each group is put in the first
    group's order). ``x = 1, x = 2`` (one variable) stays a list of values, and a list
    where a variable is missing from one solution (``x = 1, y = 3, x = 2``) is no grouping.
    The tuples compare in order with ``(1, 3), (2, 5)``: the variables are declared by the
    order the answer writes them in."""
    if len(items) < 4:
        return None
    groups: list[dict[str, str]] = [{}]
    for it in items:
        m = _ASSIGNED_NAME_RE.match(it.strip())
        if not m:
            return None
        name = m.group(1).replace("{", "").replace("}", "")
        if name in groups[-1]:
            groups.append({})
        groups[-1][name] = it.strip()
    names = list(groups[0])
    if len(groups) < 2 or len(names) < 2 or any(set(g) != set(names) for g in groups):
        return None
    return [[g[n] for n in names] for g in groups]


def _parse_normalized(s: str, percent: bool, depth: int) -> Node:
    if not s:
        raise ParseError("empty answer")
    if len(s) > MAX_ANSWER_CHARS:
        raise TooLarge(f"answer longer than {MAX_ANSWER_CHARS} characters")
    if percent:
        inner = parse_answer(s, depth + 1)
        inner.percent = True
        return inner
    seconds = clock_time(s)
    if seconds is not None:
        return Node("time", seconds, text=s)
    if ";" in s:
        # "p=5, q=2; p=7, q=2": solutions separated by ";", each a list of assignments -> tuples
        groups = split_top_level(s, (";",))
        parts = [split_top_level(x, (",",)) for x in groups]
        if len(groups) > 1 and all(len(ps) > 1 and all(re.match(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=", x) for x in ps) for ps in parts):
            tuples = [Node("seq", items=[parse_answer(x, depth + 1) for x in ps], brackets="()", text=x) for ps, x in zip(parts, groups)]
            return Node("seq", items=tuples, brackets="", text=s)
    items = split_top_level(s)
    grouped = _solution_groups(items)
    if grouped is not None:
        tuples = [Node("seq", items=[parse_answer(x, depth + 1) for x in g], brackets="()", text=", ".join(g)) for g in grouped]
        return Node("seq", items=tuples, brackets="", text=s)
    if len(items) > 1 and any("\\pm" in x or "\\mp" in x for x in items):
        items = _expand_pm(items)
    if len(items) > 1:
        if len(items) == 2 and all(re.fullmatch(r"\d{1,3}", x) for x in items) and re.fullmatch(r"\d+,\d{3}", s.replace(" ", "")) and " " not in s:
            pass  # "7,425" -- handled as a number below
        else:
            return Node("seq", items=[parse_answer(x, depth + 1) for x in items], brackets="", text=s)
    num = parse_number(s)
    if num is not None:
        return Node("expr", Rational(num.value.numerator, num.value.denominator), decimals=num.decimals, text=s, sig=num.sig)
    m = re.fullmatch(r"([A-Za-z][A-Za-z ]+?(?:\s+(?:\d+|\([a-z]\)))?)\s*:\s*(.+)", s)
    if m and len(m.group(1).strip()) > 1:  # "Paolo: 18", "Sequence 1: -2" -- a labelled value
        return Node("assign", name=m.group(1), items=[parse_answer(m.group(2), depth + 1)], text=s)
    if "\\cup" in s:
        pieces = [p for p in re.split(r"\\cup(?:dot)?", s)]
        sets = [_to_set(parse_answer(p, depth + 1)) for p in pieces]
        return Node("set", Union(*sets), text=s)
    # \pm expands into two answers
    if re.search(r"\\pm|\\mp", s) and s[0] in "([" and _matching_close(s, 0) == len(s) - 1:
        variants = _expand_pm([s])
        return Node("seq", items=[parse_answer(v, depth + 1) for v in variants], brackets="", text=s)
    if re.search(r"\\pm|\\mp", s) and not re.search(r"^\(|^\\\{", s):
        a = re.sub(r"\\pm|\\mp", "+", s, count=1)
        b = re.sub(r"\\pm|\\mp", "-", s, count=1)
        return Node("seq", items=[parse_answer(a, depth + 1), parse_answer(b, depth + 1)], brackets="", text=s)
    parts, ops = _split_relations(s)
    if ops:
        return _relation(parts, ops, depth, s)
    # set difference: \{x \mid x < 3/2\} - \{-6\}
    m = re.fullmatch(r"(\\\{.*\\\})\s*(?:-|\\setminus|\\backslash)\s*(\\\{.*\\\})", s)
    if m and _matching_close(s, 0) == len(m.group(1)) - 2:
        a, b = _to_set(parse_answer(m.group(1), depth + 1)), _to_set(parse_answer(m.group(2), depth + 1))
        return Node("set", sympy.Complement(a, b), text=s)
    # set-builder and sets
    if s.startswith("\\{") and s.endswith("\\}") and _matching_close(s, 0) == len(s) - 2:
        inner = s[2:-2].strip()
        m = re.match(r"^([A-Za-z])\s*(?:\||:|\\mid)\s*(.+)$", inner)
        if m:
            return parse_answer(m.group(2), depth + 1)
        sub = _expand_pm(split_top_level(inner))
        return Node("seq", items=[parse_answer(x, depth + 1) for x in sub], brackets="{}", text=s)
    if s[0] in "([{" and s[-1] in ")]}" and _matching_close(s, 0) == len(s) - 1:
        inner = s[1:-1].strip()
        sub = split_top_level(inner)
        if s[0] == "{" and len(sub) >= 1 and (len(sub) > 1):
            return Node("seq", items=[parse_answer(x, depth + 1) for x in sub], brackets="{}", text=s)
        if len(sub) > 1:
            return Node("seq", items=[parse_answer(x, depth + 1) for x in sub], brackets=s[0] + s[-1], text=s)
        if s[0] == "{":
            return parse_answer(inner, depth + 1)
    if (s[0] in "([" and s[-1] in ")]") and "," in s:
        # "(0, 1]" style intervals whose brackets do not match as a pair
        inner = s[1:-1]
        sub = split_top_level(inner)
        if len(sub) == 2:
            return Node("seq", items=[parse_answer(x, depth + 1) for x in sub], brackets=s[0] + s[-1], text=s)
    try:
        return _expr_node(s)
    except (ParseError, TooLarge):
        seconds = clock_time(s, plain=True)
        if seconds is not None:  # "12:00" is no ratio (a zero second term): a time of day
            return Node("time", seconds, text=s)
        if re.search(r"[A-Za-z]{2,}", s) and not s.startswith("\\"):
            return Node("text", compact(s).lower(), text=s)
        raise


def _relation(parts: list[str], ops: list[str], depth: int, s: str) -> Node:
    if any(not p for p in parts):
        raise ParseError("empty side of a relation")
    if all(op == "=" for op in ops):
        if len(parts) >= 3:
            # x = 5 + 5 + 1 = 7 = 11: the last side is the answer
            return Node("assign", name=parts[0], items=[parse_answer(parts[-1], depth + 1)], text=s)
        lhs, rhs = parts
        if _is_name(lhs):
            return Node("assign", name=lhs, items=[parse_answer(rhs, depth + 1)], text=s)
        if _is_name(rhs) and not _is_name(lhs) and re.fullmatch(r"[-\d./ ]+", lhs):
            return Node("assign", name=rhs, items=[parse_answer(lhs, depth + 1)], text=s)
        value = parse_answer(rhs, depth + 1)
        if not re.search(r"[\d+\-^]|\\(?:sin|cos|tan|cot|sec|csc|log|ln|exp|sqrt)", re.sub(r"_\{?\w+\}?", "", lhs)) and not re.fullmatch(r"\s*[a-z]+\s*", lhs) and value.kind == "expr" and not value.value.free_symbols:
            # \frac{NO}{BO} = \frac{1}{\sqrt6}: a named quantity given a value
            return Node("assign", name=lhs, items=[value], text=s)
        left, right = latex_to_sympy(lhs), latex_to_sympy(rhs)
        if not left.free_symbols and not right.free_symbols:
            # "\frac12 = \frac{10}{9}" is a computation written out; its last side is the answer
            return Node("assign", name=lhs, items=[value], text=s)
        if left.free_symbols and _identity(left, right):
            # "(a - 1/a) : 1/a = (a+1)(a-1)": both sides the same function, a simplification
            # written out; its last side is the answer
            return Node("assign", name=lhs, items=[value], text=s)
        return Node("eq", left - right, text=s, name=lhs)
    if ops == ["in"]:
        return parse_answer(parts[1], depth + 1)
    if "in" in ops or "=" in ops:
        raise ParseError("mixed relation")
    if len(parts) == 3 and re.fullmatch(r"[A-Za-z]+\s*\([^()]*\)", parts[1].strip()):
        parts = [parts[0], "x", parts[2]]  # 0 < f(x) < 1: the function value is the variable
    exprs = [latex_to_sympy(p) for p in parts]
    rels = []
    for a, op, b in zip(exprs, ops, exprs[1:]):
        rels.append({"<": sympy.Lt, ">": sympy.Gt, "<=": sympy.Le, ">=": sympy.Ge, "!=": sympy.Ne}[op](a, b, evaluate=False))
    syms = set().union(*(e.free_symbols for e in exprs))
    if len(syms) != 1:
        # f(2) < f(1) < f(4): an ordering, compared part by part
        return Node("chain", items=[Node("expr", e, decimals=_max_decimals(p), text=p) for e, p in zip(exprs, parts)], name=" ".join(ops), text=s)
    sym = next(iter(syms))
    real = Symbol(sym.name, real=True)
    sol = S.Reals
    try:
        for r in rels:
            sol = sol.intersect(_solve_rel(r.xreplace({sym: real}), real))
    except (NotImplementedError, TypeError, ValueError):
        # an inequality sympy cannot solve is compared as written
        return Node("chain", items=[Node("expr", e, decimals=_max_decimals(p), text=p) for e, p in zip(exprs, parts)], name=" ".join(ops), text=s)
    return Node("set", sol, text=s)


def _solve_rel(rel: sympy.Basic, x: Symbol) -> sympy.Set:
    lhs, rhs = rel.lhs, rel.rhs
    # fast path: x op c / c op x
    if lhs == x and rhs.is_number:
        c, op = rhs, type(rel)
    elif rhs == x and lhs.is_number:
        c, op = lhs, {sympy.Lt: sympy.Gt, sympy.Gt: sympy.Lt, sympy.Le: sympy.Ge, sympy.Ge: sympy.Le, sympy.Ne: sympy.Ne}[type(rel)]
    else:
        return sympy.solveset(rel, x, S.Reals)
    if op is sympy.Lt:
        return Interval.open(-oo, c)
    if op is sympy.Le:
        return Interval(-oo, c)
    if op is sympy.Gt:
        return Interval.open(c, oo)
    if op is sympy.Ge:
        return Interval(c, oo)
    return sympy.Complement(S.Reals, sympy.FiniteSet(c))


def _to_set(node: Node) -> sympy.Set:
    if node.kind == "set":
        return node.value
    if node.kind == "seq" and len(node.items) == 2 and node.brackets in ("()", "[]", "(]", "[)") and all(i.kind == "expr" for i in node.items):
        a, b = node.items[0].value, node.items[1].value
        return Interval(a, b, left_open=node.brackets[0] == "(", right_open=node.brackets[1] == ")")
    if node.kind == "seq" and node.brackets == "{}" and all(i.kind == "expr" for i in node.items):
        return sympy.FiniteSet(*[i.value for i in node.items])
    if node.kind == "expr" and node.value.is_number:
        return sympy.FiniteSet(node.value)
    raise ParseError("not a set")
