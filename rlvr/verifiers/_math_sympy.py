"""The sympy half of the math verifier: a small LaTeX -> sympy parser and equivalence checks.

Why a hand-written parser instead of ``sympy.parsing.latex.parse_latex``: sympy's parser
needs the ANTLR runtime pinned to the version it was generated with (4.11; 4.13 is what
happens to be installed here), it turns much of what models write (``\\dfrac``, ``\\left(``,
``x \\in [0, 1)``, ``1{,}000``, ``\\pm``, ``5 \\text{ cm}``) into errors, and it is slow.
``sympify``/``parse_expr`` evaluate Python source and must never see untrusted text. The
parser here builds sympy objects directly from a token stream -- nothing is ever
``eval``-ed -- and checks sizes while it builds: an integer power whose result would have
more than ``MAX_DIGITS`` digits, a factorial of more than ``MAX_FACTORIAL``, or nesting deeper
than ``MAX_DEPTH`` raise :class:`TooLarge` before sympy is asked to compute them.

Equivalence of two expressions is decided exactly where that is cheap (rationals, equal
trees, a difference that sympy reduces to 0) and otherwise by evaluating both sides to 50
significant digits -- at the expression itself when it has no free symbols, at three fixed
pseudo-random points when it has -- and comparing RELATIVELY (``|a - b| <= 1e-30 *
max(|a|, |b|)``). A tiny value is therefore never "equal to zero": ``1/2^99`` differs from
``1/2^98`` by a relative 0.5.

Sums and products: ``\\sum_{k=1}^{n} body`` and ``\\prod`` become sympy ``Sum``/``Product``;
``a_1 + a_2 + \\cdots + a_n`` (also ``\\ldots``, ``\\dots``, ``...``, and products of factors)
becomes ``Sum(a(i), (i, 1, n))``, the pattern read off the terms around the ellipsis (they
may differ only at index positions: a subscript, an exponent, a number, moving together).
Such expressions are compared by giving the symbols in their bounds small integers (3 to
5) and fixed values to the terms ``a(j)`` of unknown sequences, then expanding.

Everything here may run long on hostile input; the verifier runs it in worker processes
from :func:`rlvr.rewards.isolated` that are killed at a deadline.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import sympy
from sympy import (
    Abs,
    E,
    I,
    Integer,
    Interval,
    Matrix,
    Rational,
    S,
    Symbol,
    Union,
    oo,
    pi,
)
from sympy.core.function import AppliedUndef

from rlvr.verifiers._math_text import (
    MAX_ANSWER_CHARS,
    compact,
    normalize,
    parse_number,
    phrase_match,
    quantities_match,
    residues_equal,
    sign_statement_match,
    split_top_level,
    stated_precision,
)

MAX_DIGITS = 10_000
MAX_FACTORIAL = 1_000
MAX_DEPTH = 60
_REL_EQ = sympy.Float("1e-30", 60)


class TooLarge(ValueError):
    """The expression would be too expensive to evaluate (huge power, factorial, nesting)."""


class ParseError(ValueError):
    """The text is not an expression this parser understands."""


# ----------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------

_UNICODE = {
    "×": "\\times ", "·": "\\cdot ", "÷": "\\div ", "−": "-", "–": "-", "√": "\\sqrt ", "π": "\\pi ",
    "∞": "\\infty ", "²": "^2", "³": "^3", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "＞": ">", "＜": "<",
    "⩽": "\\le ", "⩾": "\\ge ", "∪": "\\cup ", "∈": "\\in ", "±": "\\pm ", "∓": "\\mp ", "，": ",", "…": " \\ldots ",
}
_TOKEN_RE = re.compile(
    r"\s*(?:(\d+\.\d*|\.\d+|\d+)|(\\[a-zA-Z]+|\\.)|(\*\*|<=|>=|!=|[a-zA-Z]|[-+*/^_(){}\[\]|!,=<>'&:;]))"
)
_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "sec": sympy.sec, "csc": sympy.csc, "cot": sympy.cot,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "arccot": sympy.acot,
    "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh, "exp": sympy.exp, "ln": sympy.log,
    "log": sympy.log, "lg": lambda x: sympy.log(x, 10), "sqrt": sympy.sqrt,
}
_MULTI_FUNCS = {"min": sympy.Min, "max": sympy.Max, "gcd": sympy.gcd, "lcm": sympy.lcm}
_PLAIN_WORDS = ("arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "sin", "cos", "tan", "sec", "csc", "cot", "log", "ln", "exp", "sqrt", "pi")
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi", "omega",
    "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega",
}


def tokenize(s: str) -> list[str]:
    """Split LaTeX/plain math into tokens; raises :class:`ParseError` on anything else."""
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = s.replace("...", " \\ldots ")
    toks: list[str] = []
    pos = 0
    n = len(s)
    while pos < n:
        m = _TOKEN_RE.match(s, pos)
        if not m or m.end() == pos:
            if s[pos:].strip() == "":
                break
            raise ParseError(f"unexpected character {s[pos]!r}")
        num, cmd, op = m.groups()
        if num is not None:
            toks.append(num)
        elif cmd is not None:
            toks.append(cmd)
        elif op is not None:
            toks.append(op)
        else:
            break
        pos = m.end()
    # glue plain function words typed without a backslash ("sin x", "sqrt(2)", "pi")
    out: list[str] = []
    i = 0
    while i < len(toks):
        if toks[i].isalpha() and len(toks[i]) == 1:
            j = i
            while j < len(toks) and len(toks[j]) == 1 and toks[j].isalpha():
                j += 1
            word = "".join(toks[i:j])
            k = 0
            while k < len(word):
                for w in _PLAIN_WORDS:
                    if word.startswith(w, k):
                        out.append("\\" + w)
                        k += len(w)
                        break
                else:
                    out.append(word[k])
                    k += 1
            i = j
            continue
        out.append(toks[i])
        i += 1
    return out


# ----------------------------------------------------------------------------------------
# Parser: tokens -> sympy objects, with size guards
# ----------------------------------------------------------------------------------------


def _digits(x: sympy.Basic) -> float:
    """log10 of the size of a rational number (numerator and denominator)."""
    if isinstance(x, Rational):
        p, q = abs(int(x.p)), abs(int(x.q))
        return (len(str(p)) if p < 10**50 else p.bit_length() * 0.302) + (len(str(q)) if q < 10**50 else q.bit_length() * 0.302)
    return 0.0


def guarded_pow(base: sympy.Expr, exp: sympy.Expr) -> sympy.Expr:
    """``base ** exp``, refusing powers whose exact value would be astronomically large."""
    if isinstance(exp, Rational):
        e_abs = abs(Fraction(int(exp.p), int(exp.q)))
        if isinstance(base, Rational):
            b = abs(Fraction(int(base.p), int(base.q)))
            if b not in (0, 1):
                size = max(_digits(base), 1.0) * float(e_abs)
                if size > MAX_DIGITS:
                    raise TooLarge(f"power with about {size:.3g} digits")
        elif e_abs > MAX_DIGITS:
            raise TooLarge(f"exponent {exp} too large")
    elif isinstance(exp, sympy.Number) and abs(float(exp)) > MAX_DIGITS:
        raise TooLarge(f"exponent {exp} too large")
    return sympy.Pow(base, exp)


def guarded_factorial(x: sympy.Expr) -> sympy.Expr:
    """``x!``, refusing factorials of integers above ``MAX_FACTORIAL``."""
    if isinstance(x, sympy.Number) and x > MAX_FACTORIAL:
        raise TooLarge(f"factorial of {x}")
    return sympy.factorial(x)


class _Parser:
    def __init__(self, toks: list[str]) -> None:
        self.t = toks
        self.i = 0
        self.depth = 0
        self.abs_depth = 0

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        self.i += 1
        return tok

    def expect(self, tok: str) -> None:
        got = self.take()
        if got != tok:
            raise ParseError(f"expected {tok!r}, got {got!r}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooLarge(f"nesting deeper than {MAX_DEPTH}")

    # expr := term (('+'|'-') term)*
    def expr(self) -> sympy.Expr:
        self.enter()
        i0 = self.i
        first = self.term()
        spans = [(i0, self.i, first, "+")]  # (first token, end token, value, sign) per term
        ellipsis_at = None
        while self.peek() in ("+", "-"):
            op = self.take()
            if self.peek() in _ELLIPSIS:
                # a_1 + a_2 + \cdots + a_n
                self.take()
                if ellipsis_at is not None or self.peek() not in ("+", "-"):
                    raise ParseError("an ellipsis needs a last term after it (a_1 + \\cdots + a_n)")
                ellipsis_at = len(spans)
                op2 = self.take()
                if op2 != op:
                    raise ParseError("an ellipsis between terms of different signs")
            j0 = self.i
            right = self.term()
            spans.append((j0, self.i, right, op))
        self.depth -= 1
        if ellipsis_at is not None:
            return self.series(spans, ellipsis_at, sympy.Sum)
        left = spans[0][2]
        for _, _, v, op in spans[1:]:
            left = left + v if op == "+" else left - v
        return left

    def series(self, spans: list, ellipsis_at: int, kind: Any) -> sympy.Expr:
        """``a_1 + a_2 + \\cdots + a_n`` as ``Sum(a(i), (i, 1, n))`` (``Product`` for
        factors): the pattern is read off the term just before the ellipsis and the last
        term, which differ only in index positions (a subscript, an exponent, a number);
        earlier terms that follow the same pattern with step 1 join the run."""
        if len(spans) - ellipsis_at != 1:
            raise ParseError("only one term may follow an ellipsis")
        last = spans[-1]
        units_last = _units(self.t[last[0] : last[1]])
        run_start = ellipsis_at - 1
        first = spans[run_start]
        if run_start > 0 and first[3] != last[3]:
            raise ParseError("an ellipsis between terms of different signs")
        units_first = _units(self.t[first[0] : first[1]])
        if len(units_first) != len(units_last):
            raise ParseError("the terms around an ellipsis do not share a pattern")
        slots = [k for k, (a, b) in enumerate(zip(units_first, units_last)) if a != b]
        if not slots or len(slots) > 3:
            raise ParseError("the terms around an ellipsis do not share a pattern")
        lo_vals = [_unit_value(units_first[k]) for k in slots]
        hi_vals = [_unit_value(units_last[k]) for k in slots]
        step0 = sympy.expand(hi_vals[0] - lo_vals[0])
        if any(sympy.expand((h - lo) - step0) != 0 for h, lo in zip(hi_vals, lo_vals)):
            raise ParseError("indices around an ellipsis move by different amounts")
        # extend the run backwards over earlier terms with the same pattern, index step +-1
        direction = 0
        while run_start > 0 and spans[run_start - 1][3] == last[3]:
            units = _units(self.t[spans[run_start - 1][0] : spans[run_start - 1][1]])
            if len(units) != len(units_first) or any(a != b for k, (a, b) in enumerate(zip(units, units_first)) if k not in slots):
                break
            vals = [_unit_value(units[k]) for k in slots]
            steps = {sympy.expand(lo - v) for lo, v in zip(lo_vals, vals)}
            if len(steps) != 1 or next(iter(steps)) not in (1, -1) or (direction and next(iter(steps)) != direction):
                break
            direction = int(next(iter(steps)))
            run_start -= 1
            units_first, lo_vals = units, vals
        idx = Symbol("i_")
        marks = {k: f"\x01{n}" for n, k in enumerate(slots)}
        template_toks: list[str] = []
        for k, u in enumerate(units_first):
            template_toks += [marks[k]] if k in marks else u
        sub = _Parser(template_toks)
        sub.depth = self.depth
        body = sub.expr() if kind is sympy.Sum else sub.term()
        if sub.i != len(sub.t):
            raise ParseError("could not read the pattern of an ellipsis")
        body = body.xreplace({sympy.Symbol(f"\x01{n}"): idx + (lo_vals[n] - lo_vals[0]) for n in range(len(slots))})
        lo, hi = lo_vals[0], hi_vals[0]
        if direction == 0:
            # only two explicit terms: read the direction off the bounds, taking the symbols
            # in them to be large positive sizes (a_n + \cdots + a_1 counts down)
            guess = step0.xreplace({z: Integer(100) for z in step0.free_symbols})
            direction = -1 if guess.is_number and guess < 0 else 1
        if direction == -1:
            lo, hi = hi, lo
        value = kind(body, (idx, lo, hi))
        if run_start > 0 and last[3] in ("-", "/"):
            value = -value if kind is sympy.Sum else 1 / value
        rest = spans[:run_start]
        if kind is sympy.Sum:
            for _, _, v, op in rest:
                value = value + v if op == "+" else value - v
        else:
            for _, _, v, op in rest:
                value = value * v if op == "*" else value / v
        return value

    _MUL = frozenset({"*", "\\cdot", "\\times", "\\ast"})
    _DIV = frozenset({"/", "\\div", ":"})
    _STOP = frozenset({"+", "-", ")", "]", "}", ",", "=", "<", ">", "&", "\\\\", "\\end", "\\right", "|", "\\rfloor", "\\rceil",
             "\\le", "\\ge", "\\leq", "\\geq", "\\ne", "\\neq", "\\lt", "\\gt", "<=", ">=", "!=", "\\cup", "\\in",
             "\\pm", "\\mp", ";", "\\leqslant", "\\geqslant", "\\to", "\\rightarrow"})

    def term(self) -> sympy.Expr:
        i0 = self.i
        left = self.factor()
        spans = [(i0, self.i, left, "*")]
        ellipsis_at = None
        while True:
            tok = self.peek()
            if tok in _ELLIPSIS or (tok in self._MUL and self.peek(1) in _ELLIPSIS):
                # (v - a_1)(v - a_2) \cdots (v - a_n), a_1 \cdot \ldots \cdot a_n
                if tok in self._MUL:
                    self.take()
                self.take()
                if self.peek() in self._MUL:
                    self.take()
                if ellipsis_at is not None or self.peek() is None or self.peek() in self._STOP:
                    raise ParseError("an ellipsis needs a last factor after it")
                ellipsis_at = len(spans)
                j0 = self.i
                v = self.factor()
                spans.append((j0, self.i, v, "*"))
                left = self.series(spans, ellipsis_at, sympy.Product)
                continue
            if tok is None or tok in self._STOP:
                if tok == "|" and self.abs_depth == 0:
                    left = left * self.factor()
                    continue
                return left
            if tok in self._MUL:
                self.take()
                j0 = self.i
                v = self.factor()
                left = left * v
                spans.append((j0, self.i, v, "*"))
            elif tok in self._DIV:
                self.take()
                j0 = self.i
                right = self.factor()
                if right == 0:
                    raise ParseError("division by zero")
                left = left / right
                spans.append((j0, self.i, right, "/"))
            elif tok in ("^", "!", "_", "'"):
                raise ParseError(f"misplaced {tok!r}")
            else:  # implicit multiplication: 2x, 2\sqrt{3}, (a+1)(b+2)
                if re.fullmatch(r"[\d.]+", self.t[self.i - 1]) and re.fullmatch(r"[\d.]+", tok):
                    raise ParseError("two numbers side by side")  # "11 6/6" is no product
                j0 = self.i
                v = self.factor()
                left = left * v
                spans.append((j0, self.i, v, "*"))

    def factor(self) -> sympy.Expr:
        tok = self.peek()
        if tok == "-":
            self.take()
            return -self.factor()
        if tok == "+":
            self.take()
            return self.factor()
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix()
        if self.peek() in ("^", "**"):
            self.take()
            exp = self.exponent()
            base = guarded_pow(base, exp)
            while self.peek() == "!":
                self.take()
                base = guarded_factorial(base)
        return base

    def exponent(self) -> sympy.Expr:
        tok = self.peek()
        if tok == "{":
            return self.group()
        if tok == "-":
            self.take()
            return -self.exponent()
        if tok is not None and re.fullmatch(r"\d+", tok) and len(tok) > 1:
            # ``2^10`` in plain text means 2**10; in LaTeX ``2^10`` is 2**1*0 -- follow the
            # plain-text reading, which is what people mean.
            self.take()
            return Integer(tok)
        return self.postfix()


    def postfix(self) -> sympy.Expr:
        val = self.atom()
        while self.peek() in ("!", "'"):
            if self.take() == "!":
                val = guarded_factorial(val)
        return val

    def group(self) -> sympy.Expr:
        self.expect("{")
        if self.peek() == "}":
            raise ParseError("empty group")
        v = self.expr()
        self.expect("}")
        return v

    def arg(self) -> sympy.Expr:
        """A command argument: ``{...}`` or one token (``\\frac12``, ``\\sqrt3``)."""
        tok = self.peek()
        if tok == "{":
            return self.group()
        tok = self.take()
        if re.fullmatch(r"\d+(\.\d*)?", tok):
            if "." not in tok and len(tok) > 1:
                # \frac12 -> first digit only; push the rest back
                self.t.insert(self.i, tok[1:])
                tok = tok[0]
            return _number(tok)
        if len(tok) == 1 and tok.isalpha():
            return _symbol(tok)
        self.i -= 1
        return self.atom()

    def subscript(self) -> str:
        self.expect("_")
        tok = self.take()
        if tok == "{":
            depth, parts = 1, []
            while True:
                t = self.take()
                if t == "{":
                    depth += 1
                elif t == "}":
                    depth -= 1
                    if depth == 0:
                        break
                parts.append(t)
            return "".join(parts)
        return tok

    def func_arg(self) -> sympy.Expr:
        tok = self.peek()
        if tok in ("(", "[", "{"):
            return self.atom()
        # \sin x, \sin 2x: a run of implicitly multiplied factors
        val = self.factor()
        while self.peek() is not None and self.peek() not in self._STOP and self.peek() not in self._MUL | self._DIV and (not str(self.peek()).startswith("\\") or self.peek() == "\\pi") and self.peek() not in ("^", "!", "_"):
            val = val * self.factor()
        return val

    def atom(self) -> sympy.Expr:
        tok = self.take()
        if re.fullmatch(r"\d+\.\d*|\.\d+|\d+", tok):
            v = _number(tok)
            if self.peek() == "_" and re.fullmatch(r"\d+", tok):  # 204_5: a number in base 5
                base = self.subscript()
                if not base.isdigit() or not 2 <= int(base) <= 36:
                    raise ParseError(f"bad base {base}")
                try:
                    return Integer(int(tok, int(base)))
                except ValueError as exc:
                    raise ParseError(str(exc)) from exc
            return v
        if tok in ("(", "["):
            self.enter()
            v = self.expr()
            self.expect(")" if tok == "(" else "]")
            self.depth -= 1
            return v
        if tok == "{":
            self.i -= 1
            return self.group()
        if tok == "|":
            self.abs_depth += 1
            v = self.expr()
            self.expect("|")
            self.abs_depth -= 1
            return Abs(v)
        if len(tok) == 1 and tok.isalpha():
            if self.peek() == "_":
                sub = self.subscript()
                return self.indexed(tok, sub)
            return _symbol(tok)
        if tok.startswith("\x01"):  # an index position of an ellipsis pattern
            return Symbol(tok)
        if tok.startswith("\\"):
            return self.command(tok[1:])
        raise ParseError(f"unexpected {tok!r}")

    def command(self, name: str) -> sympy.Expr:
        if name == "frac" or name == "over":
            num = self.arg()
            den = self.arg()
            if den == 0:
                raise ParseError("division by zero")
            return num / den
        if name == "binom":
            n = self.arg()
            k = self.arg()
            if isinstance(n, sympy.Number) and n > MAX_FACTORIAL:
                raise TooLarge("binomial too large")
            return sympy.binomial(n, k)
        if name == "sqrt":
            if self.peek() == "[":
                self.take()
                idx = self.expr()
                self.expect("]")
                return guarded_pow(self.arg(), 1 / idx)
            return sympy.sqrt(self.arg())
        if name == "pi":
            return pi
        if name == "infty" or name == "infin":
            return oo
        if name in ("e",):
            return E
        if name in ("lfloor", "lceil"):
            v = self.expr()
            self.expect("\\rfloor" if name == "lfloor" else "\\rceil")
            return sympy.floor(v) if name == "lfloor" else sympy.ceiling(v)
        if name in ("{",):
            raise ParseError("set inside expression")
        if name == "begin":
            return self.matrix()
        if name in ("mathrm", "text", "mathit", "mathbf", "operatorname", "textrm"):
            # \mathrm{e}, \operatorname{sin}: read the word
            self.expect("{")
            word = []
            while self.peek() != "}":
                word.append(self.take())
            self.take()
            w = "".join(word)
            if w == "e":
                return E
            if w in _FUNCS:
                return self.apply_func(w)
            if len(w) == 1 and w.isalpha():
                return _symbol(w)
            raise ParseError(f"text {w!r} in expression")
        if name in _FUNCS:
            return self.apply_func(name)
        if name in _MULTI_FUNCS:
            self.expect("(")
            args = [self.expr()]
            while self.peek() == ",":
                self.take()
                args.append(self.expr())
            self.expect(")")
            return _MULTI_FUNCS[name](*args)
        if name in _GREEK:
            if self.peek() == "_":
                return self.indexed(name, self.subscript())
            return Symbol(name)
        if name in ("sum", "prod"):
            return self.big_operator(name)
        raise ParseError(f"unknown command \\{name}")

    bound: frozenset = frozenset()

    def indexed(self, name: str, sub: str) -> sympy.Expr:
        """``a_1`` is the symbol ``a_1``; inside a sum or an ellipsis pattern, where the
        subscript uses the running index (``F_{n-k-1}`` in ``\\sum_k``), it is the term
        ``F(n - k - 1)`` of a sequence ``F``."""
        if sub.startswith("\x01"):
            return sympy.Function(name)(Symbol(sub))
        if self.bound:
            toks = tokenize(sub)
            if any(t in self.bound for t in toks):
                p = _Parser(toks)
                p.bound = self.bound
                v = p.expr()
                if p.i != len(p.t):
                    raise ParseError("bad subscript")
                return sympy.Function(name)(v)
        return Symbol(f"{name}_{sub}")

    def big_operator(self, name: str) -> sympy.Expr:
        """``\\sum_{k=0}^{n-1} body`` / ``\\prod_{k=1}^{n} body``; the body is the product
        of factors that follows (up to the next ``+``/``-`` at this level)."""
        self.expect("_")
        self.expect("{")
        var = self.take()
        if not (len(var) == 1 and var.isalpha()) or self.take() != "=":
            raise ParseError("\\sum needs a subscript like {k=1}")
        lo = self.expr()
        self.expect("}")
        self.expect("^")
        hi = self.exponent()
        old = self.bound
        self.bound = old | {var}
        try:
            body = self.term()
        finally:
            self.bound = old
        k = Symbol(var)
        if isinstance(lo, sympy.Number) and isinstance(hi, sympy.Number) and abs(hi - lo) > MAX_FACTORIAL:
            raise TooLarge("sum or product with too many terms")
        return (sympy.Sum if name == "sum" else sympy.Product)(body, (k, lo, hi))

    def apply_func(self, name: str) -> sympy.Expr:
        power = None
        base = None
        if name in ("log",) and self.peek() == "_":
            self.take()
            base = self.arg()
        if self.peek() == "^":
            self.take()
            power = self.exponent()
        if name in ("log",) and base is None and self.peek() == "_":
            self.take()
            base = self.arg()
        x = self.func_arg()
        if power is not None and power == -1 and name in ("sin", "cos", "tan"):
            return {"sin": sympy.asin, "cos": sympy.acos, "tan": sympy.atan}[name](x)
        v = sympy.log(x, base) if base is not None else _FUNCS[name](x)
        return guarded_pow(v, power) if power is not None else v

    def matrix(self) -> sympy.Expr:
        self.expect("{")
        env = []
        while self.peek() != "}":
            env.append(self.take())
        self.take()
        if self.peek() == "{" and "".join(env) == "array":  # column spec
            while self.take() != "}":
                pass
        rows: list[list[sympy.Expr]] = [[]]
        while True:
            tok = self.peek()
            if tok is None:
                raise ParseError("unterminated matrix")
            if tok == "\\end":
                self.take()
                self.expect("{")
                while self.take() != "}":
                    pass
                break
            if tok == "\\\\":
                self.take()
                rows.append([])
                continue
            if tok == "&":
                self.take()
                continue
            rows[-1].append(self.expr())
        rows = [r for r in rows if r]
        if not rows or len({len(r) for r in rows}) != 1:
            raise ParseError("ragged matrix")
        return Matrix(rows)


_ELLIPSIS = frozenset({"\\ldots", "\\cdots", "\\dots", "\\dotsb", "\\dotsm", "\\dotsc", "\\cdot\\cdot\\cdot"})


def _units(toks: list[str]) -> list[list[str]]:
    """Tokens grouped so that a sub/superscript group (``_{k-1}``, ``^{2n}``) is one unit:
    the positions where two terms around an ellipsis may differ."""
    out: list[list[str]] = []
    i = 0
    while i < len(toks):
        if toks[i] == "{" and out and out[-1] in (["_"], ["^"]):
            depth, j = 0, i
            while j < len(toks):
                depth += {"{": 1, "}": -1}.get(toks[j], 0)
                if depth == 0:
                    break
                j += 1
            out.append(toks[i : j + 1])
            i = j + 1
            continue
        out.append([toks[i]])
        i += 1
    return out


def _unit_value(unit: list[str]) -> sympy.Expr:
    """The value of an index position (``1``, ``k``, ``{k-1}``)."""
    toks = unit[1:-1] if unit and unit[0] == "{" else unit
    p = _Parser(list(toks))
    v = p.expr()
    if p.i != len(p.t):
        raise ParseError("bad index")
    return v


_SYMBOLS: dict[str, Symbol] = {}


def _symbol(name: str) -> sympy.Expr:
    if name == "e":
        return E
    if name == "i":
        return I
    sym = _SYMBOLS.get(name)
    if sym is None:
        sym = _SYMBOLS[name] = Symbol(name)
    return sym


def _number(tok: str) -> sympy.Expr:
    if "." in tok:
        ip, fp = tok.split(".")
        return Rational(int((ip or "0") + fp), 10 ** len(fp)) if fp else Integer(int(ip))
    return Integer(int(tok))


def latex_to_sympy(s: str) -> sympy.Expr:
    """Parse one LaTeX or plain-text expression into a sympy object (never via ``eval``)."""
    if len(s) > MAX_ANSWER_CHARS:
        raise TooLarge(f"answer longer than {MAX_ANSWER_CHARS} characters")
    toks = tokenize(s)
    if not toks:
        raise ParseError("empty")
    p = _Parser(toks)
    v = p.expr()
    if p.i != len(p.t):
        raise ParseError(f"unexpected {p.t[p.i]!r}")
    return v


# ----------------------------------------------------------------------------------------
# Answers: structure above expressions
# ----------------------------------------------------------------------------------------


@dataclass
class Node:
    """A parsed answer.

    ``kind`` is one of ``expr`` (``value`` a sympy expression), ``text`` (``value`` a
    normalised string), ``seq`` (``items``; ``brackets`` the enclosing pair, ``""`` for a
    bare list, ``"{}"`` for a set), ``set`` (``value`` a sympy set: interval, union,
    inequality solution), ``eq`` (``value`` is ``lhs - rhs`` of a real equation) or
    ``assign`` (``name`` = ``items[0]``; ``x = 5`` is the value 5).
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


def _parse_normalized(s: str, percent: bool, depth: int) -> Node:
    if not s:
        raise ParseError("empty answer")
    if len(s) > MAX_ANSWER_CHARS:
        raise TooLarge(f"answer longer than {MAX_ANSWER_CHARS} characters")
    if percent:
        inner = parse_answer(s, depth + 1)
        inner.percent = True
        return inner
    if ";" in s:
        # "p=5, q=2; p=7, q=2": solutions separated by ";", each a list of assignments -> tuples
        groups = split_top_level(s, (";",))
        parts = [split_top_level(x, (",",)) for x in groups]
        if len(groups) > 1 and all(len(ps) > 1 and all(re.match(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=", x) for x in ps) for ps in parts):
            tuples = [Node("seq", items=[parse_answer(x, depth + 1) for x in ps], brackets="()", text=x) for ps, x in zip(parts, groups)]
            return Node("seq", items=tuples, brackets="", text=s)
    items = split_top_level(s)
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


# ----------------------------------------------------------------------------------------
# Equivalence
# ----------------------------------------------------------------------------------------

_PARAMS = {"k", "n", "m", "t", "C", "c", "l", "j", "K", "N"}
_POINTS = [Rational(7, 5), Rational(23, 13), Rational(-5, 7), Rational(31, 11)]


@dataclass(frozen=True)
class Options:
    """Comparison options shared by the in-process and worker halves."""

    rel_tol: float | None = None
    gold_precision: bool = True
    phrases: bool = True
    params: frozenset = frozenset()


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


def _test_point(syms: list, k: int, *exprs: sympy.Expr) -> dict:
    """The k-th test point for ``syms``: fixed awkward rationals, except that a symbol used
    as the bound of a sum or product (in either expression) gets a small integer, 3 to 5,
    so that ``1 + 2 + \\cdots + n`` and ``n(n+1)/2`` are compared at the same ``n``."""
    bounds = set().union(*(_bound_symbols(e) for e in exprs))
    return {s: Integer(3 + (k + j) % 3) if s in bounds else _POINTS[(k + j) % len(_POINTS)] + j for j, s in enumerate(syms)}


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
        subs = _test_point(sorted(syms, key=lambda z: z.name), k, gv, pv)
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
        if ga and pa and ga != pa and pv.kind == "expr" and gv.kind == "expr":
            # f(z) = z and f(x) = x define the same function
            swap = {_symbol(pa): _symbol(ga), _symbol(ga): _symbol(pa)}
            pv = Node("expr", pv.value.xreplace(swap), decimals=pv.decimals, text="")
        return nodes_equal(gv, pv, opts, depth + 1)
    if g.kind == "assign" and p.kind != "eq":
        return nodes_equal(_unwrap(g), p, opts, depth + 1)
    if p.kind == "assign" and g.kind != "eq":
        return nodes_equal(g, _unwrap(p), opts, depth + 1)
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
        if ordered:
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


def check(gold: str, pred: str, opts: Options) -> tuple[bool, str]:
    """Compare an extracted prediction with an extracted reference, with sympy."""
    declared = declared_params(gold) | declared_params(pred)
    if declared:
        opts = replace(opts, params=opts.params | declared)
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

