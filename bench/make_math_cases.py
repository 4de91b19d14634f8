r"""Build rlvr's own labeled set for the math verifier: ``rlvr/verifiers/data/math_cases.jsonl``.

    python bench/make_math_cases.py [--data ../shared/data] [--out rlvr/verifiers/data/math_cases.jsonl] [--seed 0]

Every row is ``{"reference", "completion", "expected", "kind", "source"}``. References are
real golds from MATH-500 and GSM8K; completions are model-style text ending in
``\boxed{...}``. Labels hold BY CONSTRUCTION, never by asking a verifier:

- equivalent rewrites (expected true) are computed exactly from the gold: the same
  rational written as a decimal, ``\dfrac``, ``a/b``, an unreduced fraction, a mixed
  number, with ``$``/units/``\text{}``; a list reordered; ``x = v`` for ``v``; an angle
  in degrees as radians; an interval as an inequality; a set in another order; a residue
  class in another form; a decimal reference's exact value or a 3+-digit rounding of it;
- near misses (expected false) change the value: off by one, the wrong sign, the
  reciprocal, a truncated decimal (0.333 for 1/3), 1/2^99 for 1/2^98, a tuple in the
  wrong order, an interval with the wrong bracket, one list element missing, a hedge
  ``\boxed{a} or \boxed{b}``;
- hand-labeled rows (``STRUCTURED``, then ``OTHER_GRADERS``: the answer forms other graders'
  test suites use -- mixed numbers without braces, clock times, products by juxtaposition,
  infinity in words, an option with its text, solutions separated by words, tiny
  differences, an exact box then its approximation), both verdicts for each; new rows are
  appended at the end so that the earlier rows stay byte for byte;
- completion styles: a plain boxed answer, a self-correction (the LAST box counts), a
  ``<think>`` block. Every completion has a box: the set measures equivalence, not the
  extraction protocol (unboxed answers are covered by the unit tests).

Same seed, same file.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TEMPLATES = [
    "Let me work through this step by step.\n\n{work}\n\nTherefore, the answer is $\\boxed{{{ans}}}$.",
    "{work} So the final answer is \\boxed{{{ans}}}.",
    "<think>\n{work}\n</think>\n\nThe answer is $\\boxed{{{ans}}}$",
    "We have {work}\n\n**Final Answer**\n\\[\n\\boxed{{{ans}}}\n\\]",
]
WORK = [
    "First I set up the equation from the problem statement and simplify both sides.",
    "Using the given conditions, we compute the required quantity carefully.",
    "Substituting the values and simplifying gives the result.",
    "We check small cases and find the pattern, then apply it.",
]


def completion(rng: random.Random, ans: str) -> str:
    return rng.choice(TEMPLATES).format(work=rng.choice(WORK), ans=ans)


def self_correction(rng: random.Random, wrong: str, right: str) -> str:
    return f"{rng.choice(WORK)} This gives $\\boxed{{{wrong}}}$.\n\nWait, let me double-check that step. I made an arithmetic slip; redoing it, the answer is $\\boxed{{{right}}}$."


def hedge(a: str, b: str) -> str:
    return f"The answer could be $\\boxed{{{a}}}$ or $\\boxed{{{b}}}$."


def frac_tex(q: Fraction, style: str = "frac") -> str:
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    p, d = abs(q.numerator), q.denominator
    if style == "slash":
        return f"{sign}{p}/{d}"
    return f"{sign}\\{style}{{{p}}}{{{d}}}"


def terminating_decimal(q: Fraction) -> str | None:
    d = q.denominator
    for f in (2, 5):
        while d % f == 0:
            d //= f
    if d != 1:
        return None
    s = f"{abs(q.numerator) / q.denominator:.12f}".rstrip("0").rstrip(".")
    exact = Fraction(s)
    if exact != abs(q):
        return None
    return ("-" if q < 0 else "") + s


def parse_simple_number(gold: str) -> Fraction | None:
    g = gold.strip().replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if re.fullmatch(r"-?\d+", g):
        return Fraction(int(g))
    if re.fullmatch(r"-?\d+\.\d+", g):
        return Fraction(g)
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", g)
    if m:
        return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    return None


def rows_for_number(rng: random.Random, gold: str, q: Fraction, source: str) -> list[dict]:
    rows = []

    def add(pred: str, expected: bool, kind: str, text: str | None = None) -> None:
        rows.append({"reference": gold, "completion": text if text is not None else completion(rng, pred), "expected": expected, "kind": kind, "source": source})

    add(gold, True, "identical")
    if q.denominator == 1:
        n = q.numerator
        rewrites = [(f"{n:,}", "thousands separator")] if abs(n) >= 1000 else []
        rewrites += [(f"{n}.0", "decimal point"), (f"\\${n}" if n >= 0 else f"{n}", "dollar sign"), (f"{n} \\text{{ units}}", "text units")]
        pred, kind = rng.choice(rewrites)
        add(pred, True, kind)
        wrong = rng.choice([w for w in (n + 1, n - 1, -n, n * 10) if w != n])
        add(str(wrong), False, "near miss: wrong value")
        add(str(n), True, "self-correction", self_correction(rng, str(n + 1), str(n)))
        add(str(n + 2), False, "self-correction to a wrong value", self_correction(rng, str(n), str(n + 2)))
    else:
        dec = terminating_decimal(q)
        options = [(frac_tex(q, "dfrac"), "dfrac"), (frac_tex(q, "slash"), "a/b"), (frac_tex(Fraction(q.numerator * 3, q.denominator * 3) if False else q, "tfrac"), "tfrac")]
        unreduced = f"\\frac{{{q.numerator * 2}}}{{{q.denominator * 2}}}"
        options.append((unreduced, "unreduced fraction"))
        if dec is not None:
            options.append((dec, "decimal"))
        if q > 1:
            whole = q.numerator // q.denominator
            rest = q - whole
            options.append((f"{whole}\\frac{{{rest.numerator}}}{{{rest.denominator}}}", "mixed number"))
        for pred, kind in rng.sample(options, min(2, len(options))):
            add(pred, True, kind)
        add(frac_tex(1 / q if q != 0 else q + 1), False, "near miss: reciprocal")
        trunc = f"{float(q):.3f}"
        if Fraction(trunc) != q:
            add(trunc, False, "near miss: rounded decimal (no tolerance)")
        add(frac_tex(-q), False, "near miss: wrong sign")
        add(frac_tex(q), False, "hedge", hedge(frac_tex(q), frac_tex(q + 1)))
    return rows


# Structured MATH-500 golds: (reference, [(pred, expected, kind)]) written out by hand for
# the families a number rewrite cannot cover. Each label was checked by a person.
STRUCTURED = [
    ("\\left( 3, \\frac{\\pi}{2} \\right)", [("(3, \\pi/2)", True, "tuple rewrite"), ("\\left(\\frac{\\pi}{2}, 3\\right)", False, "tuple order"), ("(3, 90^\\circ)", False, "degrees inside a polar pair are not radians here")]),
    ("p - q", [("-q + p", True, "term order"), ("q - p", False, "wrong sign")]),
    ("\\text{Evelyn}", [("Evelyn", True, "text"), ("\\text{Briana}", False, "other name")]),
    ("90^\\circ", [("90", True, "degree mark dropped"), ("\\frac{\\pi}{2}", True, "radians"), ("89^\\circ", False, "off by one")]),
    ("3\\sqrt{13}", [("\\sqrt{117}", True, "radical"), ("3 \\cdot \\sqrt{13}", True, "cdot"), ("13\\sqrt{3}", False, "swapped"), ("\\sqrt{39}", False, "wrong radical")]),
    ("6 - 5i", [("-5i + 6", True, "complex term order"), ("6 + 5i", False, "conjugate")]),
    ("\\pi", [("\\pi", True, "identical"), ("3.14", False, "approximation without tolerance"), ("\\frac{22}{7}", False, "approximation")]),
    ("x=5", [("5", True, "equation vs value"), ("x = 5", True, "spacing"), ("x=6", False, "wrong value")]),
    ("1,-2", [("-2, 1", True, "list reordered"), ("1", False, "missing element"), ("1, 2", False, "wrong sign")]),
    ("3, 5, 7", [("7, 5, 3", True, "list reordered"), ("\\{3, 5, 7\\}", True, "as a set"), ("3, 5", False, "missing element")]),
    ("-2 + 7i", [("7i - 2", True, "complex term order"), ("-2 - 7i", False, "conjugate")]),
    ("52_8", [("52_8", True, "identical"), ("53_8", False, "base-8 off by one")]),
    ("11\\sqrt2", [("11\\sqrt{2}", True, "braces"), ("\\sqrt{242}", True, "radical"), ("11\\sqrt3", False, "wrong radical")]),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", [("-1 + x - x^2 + x^3 - x^4 + x^5", True, "polynomial term order"), ("(x-1)(x^4+x^2+1)", True, "factored"), ("x^5 + x^4 + x^3 + x^2 + x + 1", False, "wrong signs")]),
    ("-\\frac{\\pi}{6}", [("-\\pi/6", True, "slash"), ("\\frac{-\\pi}{6}", True, "sign in numerator"), ("\\frac{\\pi}{6}", False, "wrong sign"), ("-30^\\circ", True, "degrees")]),
    ("[-2, 7]", [("-2 \\le x \\le 7", True, "interval as inequality"), ("x \\in [-2,7]", True, "x in interval"), ("(-2, 7]", False, "wrong bracket"), ("[-2, 7)", False, "wrong bracket")]),
    ("(-\\infty, 3]", [("x \\le 3", True, "inequality"), ("(-\\infty, 3)", False, "open end"), ("x < 3", False, "strict inequality")]),
    ("\\frac{1}{2^{98}}", [("2^{-98}", True, "negative exponent"), ("\\frac{1}{2^{99}}", False, "1/2^99 vs 1/2^98"), ("0", False, "tiny is not zero")]),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", [("\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}", True, "matrix brackets"), ("\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}", False, "transposed")]),
    ("\\begin{pmatrix} -1 \\\\ 2 \\end{pmatrix}", [("\\begin{pmatrix} -1 \\\\ 2 \\end{pmatrix}", True, "identical vector"), ("\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", False, "negated vector")]),
    ("y = 2x + 3", [("y = 3 + 2x", True, "equation rewrite"), ("2x - y + 3 = 0", True, "implicit form"), ("y = 2x - 3", False, "wrong intercept")]),
    ("\\text{(C)}", [("C", True, "choice letter"), ("\\text{C}", True, "choice letter"), ("(D)", False, "other choice")]),
    ("\\frac{\\sqrt{3}}{2}", [("\\frac{1}{2}\\sqrt{3}", True, "radical rewrite"), ("\\sin 60^\\circ", True, "trig value"), ("\\frac{\\sqrt{2}}{2}", False, "wrong radical")]),
    ("\\log_2 5", [("\\frac{\\ln 5}{\\ln 2}", True, "change of base"), ("\\log_5 2", False, "swapped base")]),
    ("e^{2}", [("\\exp(2)", True, "exp"), ("2e", False, "e^2 vs 2e")]),
    ("10\\%", [("10", True, "percent sign dropped"), ("0.1", True, "percent as fraction"), ("1\\%", False, "wrong percent")]),
    ("\\{1, 2, 3\\}", [("\\{3, 2, 1\\}", True, "set order"), ("\\{1, 2\\}", False, "missing element")]),
    ("(1, 2), (3, 4)", [("(3, 4), (1, 2)", True, "solution pairs reordered"), ("(2, 1), (4, 3)", False, "pairs swapped inside")]),
    ("1 \\pm \\sqrt{5}", [("1 + \\sqrt{5}, 1 - \\sqrt{5}", True, "plus-minus expanded"), ("1 + \\sqrt{5}", False, "one root only")]),
    ("4.5", [("\\frac{9}{2}", True, "decimal as fraction"), ("4\\frac{1}{2}", True, "mixed number"), ("4.6", False, "off by 0.1")]),
    ("1.5 \\times 10^{3}", [("1500", True, "scientific notation"), ("1.5e3", True, "e-notation"), ("150", False, "wrong power")]),
    # a decimal reference of 3+ significant digits is itself a rounded value
    ("41.494", [("17 + 10\\sqrt{6}", True, "exact form of a truncated decimal reference"), ("41.49", True, "coarser rounding, 4 digits"), ("41.4", False, "wrongly rounded"), ("17 + 10\\sqrt{5}", False, "wrong radical")]),
    ("165.47", [("165.5 \\text{ grams}", True, "coarser rounding with a unit"), ("165.4", False, "wrongly rounded"), ("170", False, "two significant digits")]),
    ("2.5", [("2.54", False, "a short decimal reference is exact"), ("\\frac{5}{2}", True, "decimal as fraction")]),
    # residue classes
    ("n \\equiv 2 \\pmod{4}", [("n = 4k + 2", True, "residue class as a linear form"), ("\\text{all } n \\text{ congruent to 2 modulo 4}", True, "residue class in words"), ("n = 4k", False, "other residue"), ("n \\equiv 2 \\pmod{8}", False, "other modulus")]),
    ("6k \\pm 1", [("n \\equiv 1, 5 \\pmod 6", True, "classes as a congruence"), ("n \\equiv 1 \\pmod 6", False, "one class missing")]),
    # sentences with quantities, and sign statements
    ("Each adult ticket costs $12$ dollars, and each child ticket costs $7$ dollars.", [("12 \\text{ dollars (adult)}, 7 \\text{ dollars (child)}", True, "quantities clause by clause"), ("7 \\text{ dollars (adult)}, 12 \\text{ dollars (child)}", False, "quantities swapped"), ("12, 8", False, "one quantity wrong")]),
    ("The sum is less than zero.", [("a_1 + a_2 + a_3 < 0", True, "sign sentence as an inequality"), ("a_1 + a_2 + a_3 > 0", False, "opposite sign"), ("a_1 + a_2 + a_3 \\le 0", False, "non-strict")]),
]

# The answer forms other graders' test suites use (mixed numbers without braces, clock
# times, products by juxtaposition, infinity in words, an option with its text, solutions
# separated by words, tiny differences, an exact box then its approximation), hand-labeled
# like STRUCTURED. A pred holding "\\boxed" is the whole completion, as written.
OTHER_GRADERS = [
    ("3.25", [("3\\frac14", True, "mixed number without braces"), ("3\\frac15", False, "mixed number, other fraction"), ("\\frac{13}{4}", True, "improper fraction")]),
    ("\\frac{43}{8}", [("5\\frac38", True, "mixed number without braces"), ("5\\frac{3}{8}", True, "mixed number with braces"), ("\\frac{15}{8}", False, "mixed number read as a product (5 * 3/8)")]),
    ("3\\frac14", [("3.25", True, "mixed number reference, decimal answer"), ("\\frac34", False, "the product reading")]),
    ("7\\frac{1}{2}", [("7\\frac12", True, "braced and brace-less mixed number"), ("\\frac{7}{2}", False, "the product reading")]),
    ("14:05", [("14:05:00", True, "clock time with seconds"), ("2:05 PM", True, "12-hour clock"), ("02:05 \\text{p.m.}", True, "12-hour clock, p.m. in text"), ("14:06", False, "one minute off"), ("2:05 AM", False, "morning, not afternoon"), ("2:05", False, "unmarked 2:05 is the morning")]),
    ("12:30 AM", [("0:30", True, "just after midnight"), ("12:30", False, "12:30 is just after noon")]),
    ("3^4 5^2 7", [("3^4\\cdot5^2\\cdot 7", True, "product with cdot"), ("3^4 * 5^2 * 7", True, "product with *"), ("14175", True, "product evaluated"), ("3^4 5^2 11", False, "other factor"), ("3^4 + 5^2 + 7", False, "sum, not product")]),
    ("2^3 3^2", [("72", True, "product by juxtaposition evaluated"), ("2^3 \\times 3^3", False, "other exponent")]),
    ("(-\\infty, 2]", [("(-infinity, 2]", True, "infinity spelled out"), ("(-inf, 2]", True, "inf"), ("(-inf, 2)", False, "wrong bracket with inf"), ("(-infinity, 3]", False, "other endpoint with infinity")]),
    ("12:00 PM", [("12:00", True, "noon on a 24-hour clock"), ("0:00", False, "midnight is not noon")]),
    ("(-\\infty, -1) \\cup (1, \\infty)", [("(-oo, -1) \\cup (1, oo)", True, "union with oo"), ("(-oo, -1] \\cup [1, oo)", False, "union with oo, closed ends")]),
    ("[3, \\infty)", [("[3, oo)", True, "oo for infinity"), ("x \\ge 3", True, "inequality"), ("(3, oo)", False, "open end with oo")]),
    ("(C) Boston", [("C", True, "choice letter for an option with text"), ("(C)", True, "choice letter in parentheses"), ("\\text{(C)}", True, "choice letter in text"), ("\\text{Boston}", True, "the option's text"), ("D", False, "other letter"), ("\\text{(C) Chicago}", False, "same letter, other text")]),
    ("\\textbf{(B)} $\\frac{1}{2}$", [("B", True, "choice letter for an option with a value"), ("0.5", True, "the option's value"), ("\\text{(A)}", False, "other letter")]),
    ("x=1,y=3;x=2,y=5", [("x = 1, y = 3 \\quad \\text{and} \\quad x = 2, y = 5", True, "solutions separated by words"), ("x = 1, y = 5 \\quad \\text{and} \\quad x = 2, y = 3", False, "solutions regrouped"), ("y = 3, x = 1 \\text{ or } y = 5, x = 2", True, "solutions, variables in another order")]),
    ("(1,3),(2,5)", [("x = 1, y = 3 \\text{ and } x = 2, y = 5", True, "named solutions vs tuples"), ("x = 3, y = 1 \\text{ and } x = 5, y = 2", False, "named solutions, tuple order swapped"), ("x = 1, y = 3 \\text{ and } x = 2", False, "one solution incomplete")]),
    ("x = 1, y = 2", [("y = 2, x = 1", True, "assignments reordered"), ("y = 1, x = 2", False, "values swapped between names")]),
    ("[1, 2]", [("[3^{1/3^{500}}, 2]", False, "endpoint differs by 3e-239"), ("[1, 2]", True, "identical interval")]),
    ("(1, 2)", [("(3^{1/3^{500}}, 2)", False, "tuple entry differs by 3e-239"), ("(3^{0}, 2)", True, "tuple entry equal exactly")]),
    ("\\pi", [("\\arctan 1 + \\arctan 2 + \\arctan 3", True, "identity beyond 50 digits"), ("\\pi + 10^{-60}", False, "differs by 1e-60")]),
    ("\\sqrt{3}", [
        ("So $x = \\boxed{\\sqrt{3}} \\approx \\boxed{1.732}$.", True, "exact box then its approximation"),
        ("So $x = \\boxed{2} \\approx \\boxed{1.732}$.", False, "wrong exact box then an approximation"),
        ("So $x = \\boxed{\\sqrt{3}}$. Numerically, it is $\\boxed{1.7}$.", False, "other text between boxes: the last box decides"),
    ]),
    ("2\\sqrt{2}", [("$\\boxed{\\sqrt{8}} \\approx \\boxed{2.83}$", True, "exact box, then its approximation"), ("$\\boxed{\\sqrt{6}} \\approx \\boxed{2.45}$", False, "other exact box")]),
    ("\\frac{2}{\\sqrt{m}}", [("2m^{-1/2}", True, "equal for every m"), ("\\sqrt{2/m}", False, "equal for no m")]),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "rlvr" / "verifiers" / "data" / "math_cases.jsonl"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    data = Path(args.data)
    rows: list[dict] = []

    math500 = [json.loads(line) for line in (data / "math500" / "test.jsonl").open()]
    numeric = [(r["answer"], q, r["unique_id"]) for r in math500 if (q := parse_simple_number(r["answer"])) is not None]
    for gold, q, uid in rng.sample(numeric, 40):
        rows += rows_for_number(rng, gold, q, f"MATH-500 {uid}")

    gsm8k = [json.loads(line) for line in (data / "gsm8k" / "test.jsonl").open()]
    for i, r in sorted(rng.sample(list(enumerate(gsm8k)), 25)):
        gold = r["answer"].split("####")[-1].strip().replace(",", "")
        rows += rows_for_number(rng, gold, Fraction(int(gold)), f"GSM8K test line {i + 1}")

    for gold, preds in STRUCTURED:
        for pred, expected, kind in preds:
            rows.append({"reference": gold, "completion": completion(rng, pred), "expected": expected, "kind": kind, "source": "MATH-500-style, hand-labeled"})
    for gold, preds in OTHER_GRADERS:
        for pred, expected, kind in preds:
            text = pred if "\\boxed" in pred else completion(rng, pred)
            rows.append({"reference": gold, "completion": text, "expected": expected, "kind": kind, "source": "other graders' answer forms, hand-labeled"})

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    pos = sum(r["expected"] for r in rows)
    print(f"wrote {len(rows)} rows ({pos} expected true, {len(rows) - pos} false) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
