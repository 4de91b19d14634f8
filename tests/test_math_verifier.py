r"""MathVerifier against real sympy and real worker processes.

Tables are ``(reference, completion, expected)`` rows in the style of real model outputs
(Math-Verify's tests/test_all.py is the model), one block per equivalence family, both
verdicts in each.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from rlvr.registry import load_verifier
from rlvr.rewards import Sample, Status
from rlvr.verifiers.math import MathVerifier, extract_answer, parse_number


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(max_workers=2)
    yield v
    v.close()


def B(ans: str) -> str:
    """A model-style completion ending in a boxed answer."""
    return f"Let me solve this step by step. After simplifying, we get the result.\n\nTherefore, the answer is $\\boxed{{{ans}}}$."


NUMBERS = [
    (r"\frac{3}{4}", B("0.75"), True),
    (r"0.75", B(r"\dfrac{3}{4}"), True),
    (r"\frac{3}{4}", B("3/4"), True),
    (r"\frac{3}{4}", B(r"\frac{6}{8}"), True),
    (r"\frac{3}{4}", B("0.7"), False),
    ("18", B(r"\$18.00"), True),
    ("7425000", B("7,425,000"), True),
    ("7425000", B("7,425,001"), False),
    ("1500", B(r"1.5 \times 10^{3}"), True),
    ("1500", B("1.5e4"), False),
    (r"\frac{40}{9}", B("4 4/9"), True),
    ("4", B("4 4/9"), False),
    ("11", B("11 6/6"), False),  # not a mixed number (improper fraction part)
    (r"\frac{1}{2^{98}}", B(r"\frac{1}{2^{99}}"), False),  # tiny differences are differences
    (r"\frac{1}{2^{98}}", B("2^{-98}"), True),
    ("0", B(r"\frac{1}{2^{200}}"), False),
    (r"\frac13", B("0.333"), False),  # no tolerance unless asked
    ("-5", B("5"), False),
]

PERCENT_UNITS_TEXT = [
    (r"28\%", B("28"), True),
    (r"28\%", B("0.28"), True),
    (r"28\%", B("29"), False),
    ("0.15", B(r"15\%"), True),
    (r"\frac{40}{9}", B(r"4\frac{4}{9}\%"), False),
    ("125", B(r"125 \text{ miles}"), True),
    ("125", B(r"126\text{ cm}"), False),
    (r"90^\circ", B("90"), True),
    (r"90^\circ", B(r"\frac{\pi}{2}"), True),
    (r"90^\circ", B(r"45^\circ"), False),
    (r"\text{Evelyn}", B("Evelyn"), True),
    (r"\text{Evelyn}", B(r"\text{Briana}"), False),
    (r"\text{(C)}", B("C"), True),
    (r"\text{(C)}", B(r"\textbf{(D)}"), False),
]

EXPRESSIONS = [
    (r"3\sqrt{13}", B(r"\sqrt{117}"), True),
    (r"3\sqrt{13}", B(r"13\sqrt{3}"), False),
    (r"\frac{\pi}{6}", B(r"\pi/6"), True),
    (r"\frac{\pi}{6}", B(r"\frac{\pi}{3}"), False),
    (r"e^{2}", B(r"\exp(2)"), True),
    (r"\log_2 8", B("3"), True),
    (r"\ln 4", B(r"2\ln 2"), True),
    (r"\ln 4", B(r"\ln 2"), False),
    (r"\tan^2 y + 1", B(r"\sec^2 y"), True),
    (r"\frac{x+2}{7}", B(r"\frac{x}{7}+\frac{2}{7}"), True),
    (r"\frac{x+2}{7}", B(r"\frac{x}{7}+2"), False),
    (r"x^2 - 1", B("(x-1)(x+1)"), True),
    (r"x^2 - 1", B("(x-1)^2"), False),
    ("6 - 5i", B("-5i + 6"), True),
    ("6 - 5i", B("6 + 5i"), False),
    (r"\frac{\sqrt{3}}{2}", B(r"\sin 60^\circ"), True),
]

EQUATIONS = [
    ("x=5", B("5"), True),
    ("5", B("x = 5"), True),
    ("x=5", B("x=6"), False),
    ("y=2x+3", B("y = 3 + 2x"), True),
    ("y=2x+3", B("2x - y + 3 = 0"), True),
    ("y=2x+3", B("y = 2x - 3"), False),
    ("2x+4y-3=0", B(r"y=-\frac{1}{2}x+\frac{3}{4}"), True),
    ("a^2 + b = 0", B("0"), False),
    (r"x = 5 + 5 + 1 = 11", B("11"), True),
]

STRUCTURES = [
    (r"\{1, 2, 3\}", B(r"\{3, 2, 1\}"), True),
    (r"\{1, 2, 3\}", B(r"\{1, 2\}"), False),
    ("1, -2", B("-2, 1"), True),
    ("(1, 2)", B("(2, 1)"), False),
    (r"\left( 3, \frac{\pi}{2} \right)", B(r"(3, \pi/2)"), True),
    ("(1, 2), (3, 4)", B("(3, 4), (1, 2)"), True),
    ("(1, 2), (3, 4)", B("(2, 1), (4, 3)"), False),
    (r"(-\infty, 3]", B(r"x \le 3"), True),
    (r"(-\infty, 3]", B("x < 3"), False),
    ("[-2, 7]", B(r"-2 \leq x \leq 7"), True),
    ("[-2, 7]", B("(-2, 7]"), False),
    (r"(-\infty, -3) \cup (3, \infty)", B(r"x < -3 \text{ or } x > 3"), True),
    (r"(-\infty, -3) \cup (3, \infty)", B(r"(-\infty, -3] \cup [3, \infty)"), False),
    (r"1 \pm \sqrt{19}", B(r"1 + \sqrt{19}, 1 - \sqrt{19}"), True),
    (r"1 \pm \sqrt{19}", B(r"1 + \sqrt{19}"), False),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", B(r"\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}"), True),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", B(r"\begin{pmatrix} 1 & 3 \\ 2 & 4 \end{pmatrix}"), False),
    (r"\begin{pmatrix} -7 \\ 16 \\ 5 \end{pmatrix}", B("(-7, 16, 5)"), True),
    ("-2, 1", B(r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}"), False),  # a vector is ordered
]

MORE_FORMS = [
    # an equation answered by the value of its unknown
    ("y + 1 = -(2x - 1)^2", B("-4x^2 + 4x - 2"), True),
    ("y + 1 = -(2x - 1)^2", B("-4x^2 + 4x - 1"), False),
    (r"\rho \sin\theta = \sqrt{3}", B(r"\sqrt{3} \csc \theta"), True),
    ("7 = 11a + c", B("11a + c"), False),
    ("xy = 6", B(r"\dfrac{6}{x}"), True),
    ("xy = 6", B(r"\dfrac{6}{y}"), False),
    (r"\{x \mid x < \frac{3}{2}\} - \{-6\}", B(r"(-\infty, -6) \cup (-6, \frac{3}{2})"), True),
    (r"\{x \mid x < \frac{3}{2}\} - \{-6\}", B(r"(-\infty, \frac{3}{2})"), False),
    # orderings, ratios
    (r"\tan \frac{7\pi}{5} > \sin \frac{2\pi}{5}", B(r"\tan \frac{7}{5} \pi > \sin \frac{2}{5} \pi"), True),
    (r"\tan \frac{7\pi}{5} > \sin \frac{2\pi}{5}", B(r"\sin \frac{2\pi}{5} > \tan \frac{7\pi}{5}"), False),
    ("b < a < d < c", B("b, a, d, c"), True),
    ("b < a < d < c", B("a, b, d, c"), False),
    ("5:8", B(r"\frac{5}{8}"), True),
    ("5:8", B("8:5"), False),
    ("12:00", B("1:00"), False),
    # a function's argument and an arbitrary integer may be renamed
    ("f(z) = z^2", B("f(x) = x^2"), True),
    ("f(z) = z^2", B("f(x) = z^2"), False),
    (r"x = \frac{\pi}{6} + k\pi", B(r"\frac{\pi}{6} + n\pi"), True),
    (r"x = \frac{\pi}{6} + k\pi", B(r"\frac{\pi}{6} + 2n\pi"), False),
    # plus-minus inside sets and tuples
    (r"\{1 \pm \sqrt{5}, -2\}", B(r"\{-2, 1 + \sqrt{5}, 1 - \sqrt{5}\}"), True),
    (r"(\sqrt2, 0, \sqrt2), (\sqrt2, 0, -\sqrt2), (-\sqrt2, 0, \sqrt2), (-\sqrt2, 0, -\sqrt2)", B(r"(\pm \sqrt{2}, 0, \pm \sqrt{2})"), True),
    # qualifiers and named values
    ("f(x) = -1, f(x) = x + 1", B(r"f(x) = -1 \text{ for all } x \in \mathbb{Z}, \text{ and } f(x) = x + 1"), True),
    ("(n, 1)", B(r"(f(n), g(n)) = (n, 1)"), True),
    (r"\frac{NO}{BO} = \frac{1}{\sqrt{6}}", B(r"\frac{\sqrt{6}}{6}"), True),
    ("x = 5 + 5 + 1 = 11", B("x = 7"), False),
    # LaTeX that lost a backslash to a JSON escape ("\frac" stored as form feed + "rac")
    ("\frac{1}{2}", B("0.5"), True),
]

CASES = r"\begin{cases} \{x \mid x < a \text{ or } x > 1\}, & \text{when } a < 1 \\ \{x \mid x \neq 1\}, & \text{when } a = 1 \\ \{x \mid x < 1 \text{ or } x > a\}, & \text{when } a > 1 \end{cases}"
NEW_FAMILIES = [
    # text references: a short answer that is the reference sentence's subject or predicate
    ("Petya will receive the last token.", B(r"\text{Petya}"), True),
    ("Petya will receive the last token.", B(r"\text{Vasya}"), False),
    ("Petya will receive the last token.", B(r"\text{the last token}"), False),
    ("The transformed function $f(x+1)-1$ is odd.", B("odd"), True),
    ("The transformed function $f(x+1)-1$ is not odd.", B("odd"), False),
    ("A stopped clock shows the correct time more often.", B(r"\text{stopped}"), True),
    ("A stopped clock shows the correct time more often than a slow one.", B(r"\text{slow}"), False),
    # "infinitely many" is the count \infty
    (r"\text{infinitely many}", B(r"\infty"), True),
    (r"\infty", B(r"\text{infinitely many}"), True),
    (r"\text{infinitely many}", B("0"), False),
    # a parameter the answer declares ("for some integer t") may carry another name
    (r"(k, \ell) = (-32 + 3x, 64 - 5x)", B(r"(-32 + 3t, 64 - 5t) \text{ for some integer } t"), True),
    (r"(k, \ell) = (-32 + 3x, 64 - 5x)", B(r"(-32 + 3t, 64 + 5t) \text{ for some integer } t"), False),
    (r"(k, \ell) = (-32 + 3x, 64 - 5x)", B(r"(-32 + 3t, 64 - 5t)"), False),
    # a reference that is a simplification written out (an identity): its last side is the answer
    (r"\left(\frac{1}{a} : \frac{1}{a^2} - \frac{1}{a}\right) : \frac{1}{a} = (a+1)(a-1)", B("a^2 - 1"), True),
    (r"\left(\frac{1}{a} : \frac{1}{a^2} - \frac{1}{a}\right) : \frac{1}{a} = (a+1)(a-1)", B("a^2 + 1"), False),
    # labelled parts, and solutions as ";"-separated lists of assignments
    ("10, 11, 12, -2, -1, 0", B(r"\text{Sequence 1: } -2, -1, 0 \text{ and } \text{Sequence 2: } 10, 11, 12"), True),
    ("10, 11, 12, -2, -1, 0", B(r"\text{Sequence 1: } -2, -1, 1 \text{ and } \text{Sequence 2: } 10, 11, 12"), False),
    ("p=5, q=2; p=7, q=2", B("(5, 2), (7, 2)"), True),
    ("p=5, q=2; p=7, q=2", B("(2, 5), (2, 7)"), False),
    # sums and products with an ellipsis, \sum and \prod
    (r"\alpha_p = \frac{n - (a_k + a_{k-1} + \ldots + a_0)}{p-1}", B(r"\frac{n - (a_0 + a_1 + a_2 + \cdots + a_k)}{p - 1}"), True),
    (r"\alpha_p = \frac{n - (a_k + a_{k-1} + \ldots + a_0)}{p-1}", B(r"\frac{n - (a_1 + a_2 + \cdots + a_k)}{p - 1}"), False),
    (r"\frac{(v - a_1)(v - a_2) \cdots (v - a_n)}{v^{n-1}}", B(r"v \left(1 - \frac{a_1}{v}\right) \cdots \left(1 - \frac{a_n}{v}\right)"), True),
    (r"\frac{(v - a_1)(v - a_2) \cdots (v - a_n)}{v^{n-1}}", B(r"\left(1 - \frac{a_1}{v}\right) \cdots \left(1 - \frac{a_n}{v}\right)"), False),
    (r"1 - a_1 - a_2 - \cdots - a_n", B(r"1 - (a_n + \cdots + a_1)"), True),
    (r"1 - a_1 - a_2 - \cdots - a_n", B(r"1 + a_1 + \cdots + a_n"), False),
    (r"\frac{n(n+1)}{2}", B(r"1 + 2 + \cdots + n"), True),
    (r"\frac{n(n+1)}{2}", B(r"1 + 2 + \cdots + (n-1)"), False),
    (r"\frac{n(n+1)}{2}", B(r"\sum_{k=1}^{n} k"), True),
    (r"F_n = \sum_{k=0}^{n-1} F_k F_{n-k-1}", B(r"F_n = \sum_{k=0}^{n-1} F_{n-k-1} F_k"), True),
    (r"F_n = \sum_{k=0}^{n-1} F_k F_{n-k-1}", B(r"F_n = \sum_{k=0}^{n} F_k F_{n-k}"), False),
    # a piecewise reference, compared case by case
    (CASES, B(r"(-\infty, \min(1, a)) \cup (\max(1, a), \infty)"), True),
    (CASES, B(r"(-\infty, a) \cup (1, \infty)"), False),
    # a reference whose degree mark was lost in storage ("90^")
    ("90^", B(r"90^\circ"), True),
    ("90^", B(r"45^\circ"), False),
]

# A reference written as a decimal of 3+ significant digits is itself a rounded value
STATED_PRECISION = [
    ("41.494", B(r"17 + 10\sqrt{6}"), True),  # 41.49490 truncated by the dataset
    ("41.5", B(r"17 + 10\sqrt{6}"), True),  # ... or rounded
    ("41.494", B(r"17 + 10\sqrt{5}"), False),
    ("6.01", B(r"6\frac{1}{64}"), True),  # 6.015625
    ("6.018", B(r"6\frac{1}{64}"), False),  # neither its rounding nor its truncation
    ("165.47", B(r"165.5 \text{ grams}"), True),  # a coarser answer that is the rounding
    ("165.47", B("165.4"), False),
    (r"117.95\%", B(r"118\%"), True),
    ("299.94", B("300"), False),  # "300" states one significant digit
    (r"1.27\%", B(r"1.3\%"), False),  # two digits are too few
    (r"113.4\%", B(r"113.33\%"), False),
    ("2.5", B("2.54"), False),  # a short decimal is exact
    ("2.5", B(r"\frac{5}{2}"), True),
    (r"\frac{600}{7}", B("85.71"), False),  # an exact reference is never rounded
]

RENT = "The rent for each $A$ room is $240$ yuan, and for each $B$ room is $210$ yuan."
NEW_ANSWER_N = r"n = 4k+2 \text{ or } n = 4k+3 \text{ where } k \in \mathbb{N}_0"
WORDS_AS_MATH = [
    # residue classes: congruences, linear forms, words
    (r"n \equiv 2 \pmod{4}", B("n = 4k + 2"), True),
    (r"n \equiv 2 \pmod{4}", B(r"4k + 6, \ k \in \mathbb{Z}"), True),
    (r"n \equiv 2 \pmod{4}", B("n = 4k"), False),
    (r"n \equiv 2 \pmod{4}", B(r"n \equiv 2 \pmod{8}"), False),
    (NEW_ANSWER_N, B(r"\text{those congruent to 2 or 3 modulo 4}"), True),
    (NEW_ANSWER_N, B(r"\text{those congruent to 2 modulo 4}"), False),
    (r"6k \pm 1", B(r"n \equiv 1, 5 \pmod 6"), True),
    (r"6k \pm 1", B(r"n \equiv 1 \pmod 6"), False),
    ("4k + 2", B("4k + 6"), False),  # expressions, not classes: no congruence anywhere
    # a sentence's quantities, clause by clause, labels in place
    (RENT, B(r"240 \text{ yuan (A)},\ 210 \text{ yuan (B)}"), True),
    (RENT, B(r"240 \text{ yuan (A)},\ 220 \text{ yuan (B)}"), False),
    (RENT, B(r"240 \text{ yuan (B)},\ 210 \text{ yuan (A)}"), False),
    (RENT, B("210, 240"), False),
    (RENT.replace("is $240$", "is not $240$"), B("240, 210"), False),
    # a sentence stating a sign, and the inequality
    ("The sum is less than zero.", B("f(x_1) + f(x_2) + f(x_3) < 0"), True),
    ("The sum is less than zero.", B("f(x_1) + f(x_2) + f(x_3) > 0"), False),
    ("The sum is less than zero.", B(r"f(x_1) + f(x_2) + f(x_3) \le 0"), False),
    ("The product is non-negative.", B(r"abc \geq 0"), True),
]

# Answer forms that other graders' test suites use: one block per rule, both verdicts
OTHER_GRADERS_FORMS = [
    # mixed numbers without braces (a one-digit LaTeX argument needs none)
    ("3.25", B(r"3\frac14"), True),
    ("5.375", B(r"5\frac38"), True),
    (r"\frac{13}{4}", B(r"3\frac14"), True),
    (r"3\frac14", B(r"\frac{13}{4}"), True),
    (r"-3\frac14", B("-3.25"), True),
    (r"\frac{17}{4}", B(r"1 + 3\frac14"), True),  # a mixed number as a term
    (r"3\frac14", B(r"\frac34"), False),  # read as a product until now: 3 * 1/4
    ("3.25", B(r"3\frac15"), False),
    (r"\frac{3}{4}", B(r"3\frac14"), False),
    ("9", B(r"3\frac{12}{4}"), True),  # an improper fraction makes no mixed number: 3 * 3
    (r"\frac{2\pi}{3}", B(r"2\frac{1}{3}\pi"), True),  # something multiplied after it: a product
    # clock times
    ("14:05", B("14:05:00"), True),
    ("14:05", B("2:05 PM"), True),
    ("14:05", B(r"02:05 \text{p.m.}"), True),
    ("12:30 AM", B("0:30"), True),
    ("14:05", B("14:06"), False),
    ("14:05", B("2:05 AM"), False),
    ("14:05", B("2:05"), False),  # without PM, 2:05 is the morning
    ("14:05", B("14:05:30"), False),
    ("12:00 PM", B("0:00"), False),
    ("14:00", B("2:00 PM"), True),  # "14:00" cannot be a ratio (x:00): a time
    ("12:00", B("12:00 AM"), False),
    ("5:8", B(r"\frac{5}{8}"), True),  # a bare a:b is still a ratio
    # products written by juxtaposition
    ("3^4 5^2 7", B(r"3^4\cdot5^2\cdot 7"), True),
    ("3^4 5^2 7", B("3^4 * 5^2 * 7"), True),
    ("3^4 5^2 7", B("14175"), True),
    (r"3^4\cdot5^2\cdot 7", B("3^4 5^2 7"), True),
    ("3^4 5^2 7", B("3^4 5^2 11"), False),
    ("3^4 5^2 7", B("3^4 5^3 7"), False),
    ("3^4 5^2 7", B("3^4 + 5^2 + 7"), False),
    ("17", B("11 6/6"), False),  # two plain numbers side by side stay no product
    # infinity spelled out, plain-text intervals
    (r"(-\infty, 2]", B("(-infinity, 2]"), True),
    (r"(-\infty, 2]", B("(-inf, 2]"), True),
    (r"[3, \infty)", B("[3, oo)"), True),
    (r"x \ge 3", B("[3, Infinity)"), True),
    (r"(-\infty, 2]", B("(-inf, 2)"), False),
    (r"(-\infty, 2]", B("(inf, 2]"), False),
    (r"[3, \infty)", B("[3, 100)"), False),
    (r"\inf S", B(r"\infty"), False),  # \inf is an infimum
    # a multiple-choice letter against an option with its text
    ("(C) Boston", B("C"), True),
    ("(C) Boston", B("(C)"), True),
    ("(C) Boston", B(r"\text{(C)}"), True),
    ("(C) Boston", B(r"\text{Boston}"), True),
    ("C", B(r"\text{(C) Boston}"), True),
    (r"(B) \frac{1}{2}", B("0.5"), True),
    ("(C) Boston", B("D"), False),
    ("(C) Boston", B(r"\textbf{(D)}"), False),
    ("(C) Boston", B(r"\text{(C) Chicago}"), False),
    ("(C) Boston", B(r"\text{Chicago}"), False),
    ("C", B(r"\text{(D) Boston}"), False),
    ("(A) and (C)", B("A"), False),  # two letters are not one option
    # several solutions separated by words
    ("x=1,y=3;x=2,y=5", B(r"x = 1, y = 3 \quad \text{and} \quad x = 2, y = 5"), True),
    ("(1,3),(2,5)", B(r"x = 1, y = 3 \quad \text{and} \quad x = 2, y = 5"), True),
    ("(2,5),(1,3)", B(r"x = 1, y = 3 \text{ or } x = 2, y = 5"), True),
    ("x=1,y=3;x=2,y=5", B(r"y = 3, x = 1 \text{ and } y = 5, x = 2"), True),  # matched by name
    ("x=1,y=3;x=2,y=5", B(r"x = 1, y = 5 \quad \text{and} \quad x = 2, y = 3"), False),
    ("(1,3),(2,5)", B(r"x = 3, y = 1 \text{ and } x = 5, y = 2"), False),
    ("(1,3),(2,5)", B(r"x = 1, y = 3 \text{ and } x = 2"), False),  # one solution incomplete
    ("x=1, y=3, x=2, y=5", B("x=1, y=5, x=2, y=3"), False),  # values regrouped: other solutions
    ("(x, y) = (1, 2)", B("(y, x) = (2, 1)"), True),  # declared tuples compare by name
    ("(x, y) = (1, 2)", B("(y, x) = (1, 2)"), False),
    ("x = 1, y = 2", B("y = 1, x = 2"), False),
    # a tiny difference stays a difference, in interval endpoints and tuple entries too
    ("[1, 2]", B(r"[3^{1/3^{500}}, 2]"), False),
    ("(1, 2)", B(r"(3^{1/3^{500}}, 2)"), False),
    ("1", B(r"3^{1/3^{500}}"), False),
    (r"3^{1/3^{500}}", B(r"3^{3^{-500}}"), True),
    (r"[\tan^2 1 + 1, 3]", B(r"[\sec^2 1, 3]"), True),  # an identity no precision separates
    (r"\pi", B(r"\arctan 1 + \arctan 2 + \arctan 3"), True),
    # two boxes, exact then approximate: the exact box is the answer
    (r"\sqrt{3}", r"So $x = \boxed{\sqrt{3}} \approx \boxed{1.732}$.", True),
    ("1.732", r"So $x = \boxed{\sqrt{3}} \approx \boxed{1.732}$.", True),  # the reference is a rounding of it
    (r"\frac{22}{7}", r"$\boxed{\frac{22}{7}}$, which is approximately $\boxed{3.14}$.", True),
    (r"\sqrt{2}", r"So $x = \boxed{\sqrt{3}} \approx \boxed{1.732}$.", False),
    (r"\sqrt{3}", r"So $x = \boxed{2} \approx \boxed{1.732}$.", False),
    (r"\sqrt{3}", r"So $x = \boxed{\sqrt{3}}$. Numerically, it is $\boxed{1.732}$.", False),  # other text: the last box
]

EXTRACTION = [
    # the LAST box is the answer: a self-correction counts ...
    ("3", r"So $\boxed{2}$. Wait, I made an error; redoing it gives $\boxed{3}$.", True),
    ("2", r"So $\boxed{2}$. Wait, I made an error; redoing it gives $\boxed{3}$.", False),
    # ... a hedge is both answers at once: right only if the reference lists both
    ("3", r"The answer is $\boxed{2}$ or $\boxed{3}$.", False),
    ("2, 3", r"The answer is $\boxed{2}$ or $\boxed{3}$.", True),
    ("1, 2, 3", r"\boxed{1}, \boxed{2}, \boxed{3}", True),
    (r"\frac{1}{2}", r"nested braces: \boxed{\frac{1}{2}}", True),
    ("5", r"so x is \boxed 5", True),
    ("5", r"\fbox{5}", True),
    ("42", r"the answer is 42", False),  # no box, no fallbacks -> wrong
]


@pytest.mark.parametrize(
    "reference,completion,expected",
    NUMBERS + PERCENT_UNITS_TEXT + EXPRESSIONS + EQUATIONS + STRUCTURES + MORE_FORMS + NEW_FAMILIES + STATED_PRECISION + WORDS_AS_MATH + OTHER_GRADERS_FORMS + EXTRACTION,
)
def test_equivalence_table(verifier, reference, completion, expected):
    [out] = verifier.score([Sample("", completion, reference=reference)])
    assert out.status is Status.OK, out
    assert out.score == float(expected), out.reason


def test_batch_matches_one_by_one_and_reasons_say_what_was_compared(verifier):
    rows = NUMBERS + STRUCTURES
    batch = verifier.score([Sample("", c, reference=r) for r, c, _ in rows])
    assert [o.score for o in batch] == [float(e) for _, _, e in rows]
    [numeric] = verifier.score([Sample("", B("0.75"), reference=r"\frac{3}{4}")])
    assert numeric.reason == r"0.75 == \frac{3}{4} (numeric)"
    assert numeric.metrics == {"extracted": 1.0}


def test_no_answer_is_a_wrong_answer_not_a_failed_check(verifier):
    [out] = verifier.score([Sample("", "I think it is probably 7 but I am not sure.", reference="7")])
    assert out.status is Status.OK and out.score == 0.0
    assert out.reason == "no \\boxed{} answer"
    assert out.metrics == {"extracted": 0.0}


def test_fallbacks_are_explicit_and_ordered():
    v = MathVerifier(fallbacks=("gsm8k", "answer_is", "last_number"), isolate=False)
    rows = [
        ("18", "She makes 9 * 2 = 18 dollars.\n#### 18", 1.0),
        ("18", "Thus the answer is 18.", 1.0),
        ("18", "First 9 eggs, then 2 dollars each, so 18", 1.0),
        ("18", "So it is 17", 0.0),
    ]
    assert [o.score for o in v.score([Sample("", c, reference=r) for r, c, _ in rows])] == [e for _, _, e in rows]
    with pytest.raises(ValueError, match="unknown fallback"):
        MathVerifier(fallbacks=("lastnumber",))


def test_phrase_match_is_opt_out():
    rows = [Sample("", B(r"\text{Petya}"), reference="Petya will receive the last token.")]
    assert [o.score for o in MathVerifier(isolate=False).score(rows)] == [1.0]
    assert [o.score for o in MathVerifier(phrase_match=False, isolate=False).score(rows)] == [0.0]


def test_later_statements_win_over_earlier_ones_in_fallback_extraction():
    v = MathVerifier(fallbacks=("final_answer", "last_latex", "last_number"), isolate=False)
    boxed_step = r"Interest: $0.05 \cdot 10,200 / 2 = \boxed{255}$, so she has \$10,455. Final Answer: The final answer is $10,455$. I hope it is correct."
    prose_after_math = r"For each divisor $n$ there is one $d = \frac{90}{n}$. Therefore, there are 12 such sequences."
    rows = [("10455", boxed_step, 1.0), ("255", boxed_step, 0.0), ("12", prose_after_math, 1.0), ("90", prose_after_math, 0.0)]
    assert [o.score for o in v.score([Sample("", c, reference=r) for r, c, _ in rows])] == [e for _, _, e in rows]
    # without the final_answer fallback the box stays the answer
    assert extract_answer(boxed_step) == ("255", "boxed")


# Final answers stated without a box, under the explicit fallbacks: which fallback finds which
UNBOXED = [
    # final_answer: "Final Answer: X", also in Markdown bold and with the answer on the next line
    ("final_answer", "42", "Final Answer: **42**", True),
    ("final_answer", "42", "**Final Answer:** 42", True),
    ("final_answer", "42", "**Final Answer**\n\n42", True),
    ("final_answer", "42", "Final Answer: **24**", False),
    ("final_answer", "0.5", "**Final Answer:**\n$\\frac12$", True),
    ("final_answer", "3", "Let me check my final answer\nIt took 3 steps.", False),  # prose, not a heading
    # answer_is: "the answer is X", and the same lead-in in other languages
    ("answer_is", "C", "So the answer is C", True),
    ("answer_is", "C", "So the answer is D", False),
    ("answer_is", r"\text{(C)}", "Hence the answer is **(C)**.", True),
    ("answer_is", "7", "Thus, the answer is $7$", True),
    ("answer_is", "7", "Thus, the answer is $17$", False),
    ("answer_is", "7", "所以答案是 $7$。", True),
    ("answer_is", "7", "所以答案为 8。", False),
    ("answer_is", "7", "Also ist die Antwort: $7$.", True),
    ("answer_is", r"\frac{3}{4}", r"Donc la réponse est $\frac{3}{4}$.", True),
    ("answer_is", "7", "Por lo tanto, la respuesta es 8.", False),
    ("answer_is", "12", "Ответ: 12", True),
    ("answer_is", "5", "따라서 정답은 5입니다", True),
]


@pytest.mark.parametrize("fallback,reference,completion,expected", UNBOXED)
def test_unboxed_final_answers_need_their_fallback(fallback, reference, completion, expected):
    [out] = MathVerifier(fallbacks=(fallback,), isolate=False).score([Sample("", completion, reference=reference)])
    assert out.score == float(expected), out.reason
    [default] = MathVerifier(isolate=False).score([Sample("", completion, reference=reference)])
    assert default.score == 0.0 and default.reason == "no \\boxed{} answer"  # never by default


def test_assume_positive_is_an_explicit_option():
    rows = [
        (r"\frac{2}{\sqrt{m}}", r"\sqrt{4/m}", 0.0, 1.0),  # equal only when m > 0
        ("x", r"\sqrt{x^2}", 0.0, 1.0),
        (r"\frac{2}{\sqrt{m}}", r"2m^{-1/2}", 1.0, 1.0),  # equal for every m
        (r"\frac{2}{\sqrt{m}}", r"\sqrt{2/m}", 0.0, 0.0),  # equal for no m
        ("x", r"-\sqrt{x^2}", 0.0, 0.0),
    ]
    samples = [Sample("", B(p), reference=g) for g, p, _, _ in rows]
    assert [o.score for o in MathVerifier(isolate=False).score(samples)] == [d for _, _, d, _ in rows]
    positive = MathVerifier(assume_positive=True, max_workers=1)  # the option reaches the sympy worker
    try:
        assert [o.score for o in positive.score(samples)] == [p for _, _, _, p in rows]
    finally:
        positive.close()


def test_rel_tol_is_an_explicit_option():
    exact = MathVerifier(isolate=False)
    loose = MathVerifier(rel_tol=1e-2, isolate=False)
    s = [Sample("", B("0.333"), reference=r"\frac{1}{3}"), Sample("", B("1001"), reference="1000")]
    assert [o.score for o in exact.score(s)] == [0.0, 0.0]
    # tolerance only applies where a decimal is written: integers stay exact
    assert [o.score for o in loose.score(s)] == [1.0, 0.0]


def test_reference_rounded_decimal_accepts_exact_answer():
    v = MathVerifier(isolate=False)
    rows = [("0.458", r"\frac{27}{59}", 1.0), ("0.458", r"\frac{27}{58}", 0.0), ("41.4\\%", r"\sqrt{2}-1", 1.0)]
    assert [o.score for o in v.score([Sample("", B(p), reference=g) for g, p, _ in rows])] == [e for _, _, e in rows]


def test_stated_precision_is_opt_out():
    rows = [Sample("", B(r"17 + 10\sqrt{6}"), reference="41.494"), Sample("", B("165.5"), reference="165.47")]
    assert [o.score for o in MathVerifier(isolate=False).score(rows)] == [1.0, 1.0]
    assert [o.score for o in MathVerifier(gold_precision=False, isolate=False).score(rows)] == [0.0, 0.0]


def test_unboxed_residue_classes_are_read_whole_by_the_whole_fallback():
    v = MathVerifier(fallbacks=("whole", "last_number"), isolate=False)
    [out] = v.score([Sample("", "those congruent to 2 or 3 modulo 4", reference=NEW_ANSWER_N)])
    assert out.score == 1.0, out.reason
    assert "residue classes" in out.reason


def test_extraction_of_last_box_handles_nesting_and_huge_text():
    assert extract_answer(r"a \boxed{\frac{1}{\sqrt{2}}} b") == (r"\frac{1}{\sqrt{2}}", "boxed")
    assert extract_answer("no box here") == (None, "none")
    big = "x" * 200_000 + r" \boxed{7}"
    start = time.perf_counter()
    assert extract_answer(big) == ("7", "boxed")
    assert time.perf_counter() - start < 1.0


def test_parse_number_is_exact():
    assert parse_number("1,000.99").value * 100 == 100099
    assert parse_number("0,111").value * 1000 == 111  # a comma that cannot be a thousands separator
    assert parse_number("1e99999999") is None  # exponent refused, not computed
    assert parse_number("4 0/9").value == 4


HOSTILE = [
    ("5", B(r"9^{9^{9^{9}}}")),
    ("120", B("10000000!")),
    ("1", B("(" * 5000 + "1" + ")" * 5000)),
    ("1", B(r"\frac{" * 3000 + "1" + "}{2}" * 3000)),
    ("7", "blah " * 40_000 + r"\boxed{7}"),
    (r"9^{9^{9^{9}}}", B(r"9^{9^{9^{9}}}")),
    ("1", B("(x+1)^{9000} - (x+2)^{9000} < 0")),  # passes the size guards; sympy's solver hangs on it
    ("1", B(r"\sum_{k=1}^{10^{9}} k")),  # refused: too many terms
    ("1", B(r"a_1 + a_2 + \cdots + a_{10^{9}}")),  # never expanded
    (r"\begin{cases} 1 & x < 0 \\ 2 & x > 0 \end{cases}", B(r"\begin{cases} 1 & x < 10^{9^{9^9}} \\ 2 & x \ge 0 \end{cases}")),
]


def test_hostile_inputs_all_answered_within_deadline():
    v = MathVerifier(timeout_s=2.0, max_workers=2)
    try:
        v.warmup()
        start = time.perf_counter()
        outs = v.score([Sample("", c, reference=r) for r, c in HOSTILE])
        wall = time.perf_counter() - start
    finally:
        v.close()
    for (r, _), out in zip(HOSTILE, outs):
        assert out.elapsed_s <= 2.0 + 1.0, (r, out)
    assert wall < 2.0 * len(HOSTILE) / 2 + 4.0
    assert outs[0].status is Status.OK and outs[0].score == 0.0 and "too large" in outs[0].reason
    assert outs[1].status is Status.OK and outs[1].score == 0.0
    assert outs[4].score == 1.0
    assert outs[5].score == 1.0  # identical strings match without evaluating anything
    assert outs[6].status is Status.TIMEOUT and outs[6].score is None
    assert all(o.status is Status.OK and o.score == 0.0 for o in outs[7:]), outs[7:]


def test_works_off_the_main_thread():
    v = MathVerifier(max_workers=1)
    try:
        rows = NUMBERS[:6] + STRUCTURES[:6]
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(v.score, [Sample("", c, reference=r)]) for r, c, _ in rows]
            got = [f.result(timeout=60)[0].score for f in futures]
    finally:
        v.close()
    assert got == [float(e) for _, _, e in rows]


def test_registered_as_math_and_validates_options():
    v = load_verifier("math", fallbacks=("whole",), isolate=False)
    assert isinstance(v, MathVerifier) and v.name == "math"
    [out] = v.score([Sample("", r"\frac{1}{2}", reference="0.5")])
    assert out.score == 1.0
    with pytest.raises(ValueError, match="rel_tol"):
        MathVerifier(rel_tol=2.0)
    [err] = v.score([Sample("", "x", reference=None)])
    assert err.status is Status.ERROR and "reference" in err.reason
