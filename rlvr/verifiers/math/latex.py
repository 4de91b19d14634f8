"""LaTeX -> sympy: a tokenizer and a small parser that builds sympy objects directly.

Why a hand-written parser instead of ``sympy.parsing.latex.parse_latex``: sympy's parser
needs the ANTLR runtime pinned to the version it was generated with (4.11; 4.13 is what
happens to be installed here), it turns much of what models write (``\\dfrac``, ``\\left(``,
``x \\in [0, 1)``, ``1{,}000``, ``\\pm``, ``5 \\text{ cm}``) into errors, and it is slow.
``sympify``/``parse_expr`` evaluate Python source and must never see untrusted text. The
parser here builds sympy objects directly from a token stream -- nothing is ever
``eval``-ed -- and checks sizes while it builds: an integer power whose result would have
more than ``MAX_DIGITS`` digits, a factorial of more than ``MAX_FACTORIAL``, or nesting deeper
than ``MAX_DEPTH`` raise :class:`TooLarge` before sympy is asked to compute them.

Sums and products: ``\\sum_{k=1}^{n} body`` and ``\\prod`` become sympy ``Sum``/``Product``;
``a_1 + a_2 + \\cdots + a_n`` (also ``\\ldots``, ``\\dots``, ``...``, and products of factors)
becomes ``Sum(a(i), (i, 1, n))``, the pattern read off the terms around the ellipsis (they
may differ only at index positions: a subscript, an exponent, a number, moving together).

Everything here may run long on hostile input; the verifier runs it in worker processes
from :func:`rlvr.rewards.isolated` that are killed at a deadline.

Imports: sympy and :mod:`.normalization`; nothing above it in :mod:`rlvr.verifiers.math`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

import sympy
from sympy import Abs, E, I, Integer, Matrix, Rational, Symbol, oo, pi

from rlvr.verifiers.math.normalization import MAX_ANSWER_CHARS

MAX_DIGITS = 10_000
MAX_FACTORIAL = 1_000
MAX_DEPTH = 60


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
        left = self.mixed_number()
        if left is None:
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
                if re.fullmatch(r"[\d.]+", self.t[self.i - 1]) and re.fullmatch(r"[\d.]+", tok) and not self.power_beside():
                    raise ParseError("two numbers side by side")  # "11 6/6" is no product
                j0 = self.i
                v = self.factor()
                left = left * v
                spans.append((j0, self.i, v, "*"))

    def power_beside(self) -> bool:
        """Two numbers side by side are a product only when one of them is a power:
        ``3^4 5^2 7`` (a factorisation written by juxtaposition) is 3^4 * 5^2 * 7, while
        ``11 6/6`` or ``2 3`` stay errors. The tokenizer keeps ``3^45`` as one exponent
        token, so a number token right after a one-token exponent was set apart by a space."""
        return (self.i >= 2 and self.t[self.i - 2] in ("^", "**")) or self.peek(1) in ("^", "**")

    def mixed_number(self) -> sympy.Expr | None:
        """``3\\frac14`` / ``3\\frac{1}{4}`` as a whole term -- an integer, then a proper
        fraction of two integer literals, then the end of the term -- is the mixed number
        3 1/4 (as :func:`.plain_numbers.parse_number` reads a whole answer). Anything
        multiplied after it (``2\\frac{1}{3}\\pi``), an improper fraction (``3\\frac{12}{4}``)
        or a non-literal argument (``2\\frac{\\sqrt3}{2}``) keeps the product reading."""
        whole = self.peek()
        if self.peek(1) != "\\frac" or whole is None or not whole.isdigit():
            return None
        start, saved = self.i, self.t
        self.t = list(self.t)  # arg() may split "14" into "1", "4"
        self.i += 2
        try:
            parts = []
            for _ in range(2):
                if self.peek() == "{" and str(self.peek(1)).isdigit() and self.peek(2) == "}":
                    parts.append(int(self.t[self.i + 1]))
                    self.i += 3
                elif str(self.peek()).isdigit():
                    parts.append(int(self.take()[0]))
                    if len(self.t[self.i - 1]) > 1:
                        self.t.insert(self.i, self.t[self.i - 1][1:])
                        self.t[self.i - 1] = self.t[self.i - 1][0]
                else:
                    raise ParseError("not a mixed number")
            num, den = parts
            if not 0 < num < den or not (self.peek() is None or self.peek() in self._STOP):
                raise ParseError("not a mixed number")
        except ParseError:
            self.i, self.t = start, saved
            return None
        return Integer(int(whole)) + Rational(num, den)

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
