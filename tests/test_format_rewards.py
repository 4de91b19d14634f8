"""Format rewards: BoxedFormat, ThinkFormat, LengthPenalty (and the pure overlong_penalty)."""

from __future__ import annotations

import pytest

from rlvr.registry import load_verifier
from rlvr.rewards import Sample, Status, WeightedSum
from rlvr.verifiers.format import BoxedFormat, LengthPenalty, ThinkFormat, overlong_penalty


def S(text: str) -> Sample:
    return Sample("question", text)


@pytest.mark.parametrize(
    "completion,expected",
    [
        (r"So the answer is $\boxed{42}$.", 1.0),
        (r"\boxed{\frac{1}{2}}", 1.0),
        (r"\fbox{7}", 1.0),
        ("The answer is 42.", 0.0),
        (r"\boxed{}", 0.0),
        (r"\boxed{ }", 0.0),
    ],
)
def test_boxed_format(completion, expected):
    [out] = BoxedFormat().score([S(completion)])
    assert out.status is Status.OK and out.score == expected, out.reason


def test_boxed_format_require_end():
    strict = BoxedFormat(require_end=True, max_trailing_chars=10)
    outs = strict.score([S(r"Thus $\boxed{3}$."), S(r"\boxed{3} and then a long digression that goes on and on")])
    assert [o.score for o in outs] == [1.0, 0.0]


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("<think>2+2 is 4</think> The answer is 4.", 1.0),
        ("  <think>\nreasoning\n</think>\n\\boxed{4}", 1.0),
        ("The answer is 4.", 0.0),
        ("<think>reasoning</think>", 0.0),  # no answer after the block
        ("<think></think> 4", 0.0),  # empty reasoning
        ("<think>a</think> 4 <think>b</think> 5", 0.0),  # two blocks
        ("</think> 4 <think>", 0.0),
        ("Sure! <think>a</think> 4", 0.0),  # text before the block
    ],
)
def test_think_format(completion, expected):
    [out] = ThinkFormat().score([S(completion)])
    assert out.score == expected, out.reason


def test_think_format_with_opening_tag_in_prompt():
    [out] = ThinkFormat(opening_in_prompt=True).score([S("reasoning here</think> 4")])
    assert out.score == 1.0


def test_overlong_penalty_matches_hand_derived_values():
    """DAPO eq. 13 with L_max = 100, L_cache = 20 (soft zone 80..100):
    len 80 -> 0; len 90 -> (80 - 90) / 20 = -0.5; len 100 -> (80 - 100) / 20 = -1; len 101 -> -1;
    len 85 -> -5/20 = -0.25."""
    assert overlong_penalty(50, 100, 20) == 0.0
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(85, 100, 20) == -0.25
    assert overlong_penalty(90, 100, 20) == -0.5
    assert overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(101, 100, 20) == -1.0
    assert overlong_penalty(101, 100, 0) == -1.0 and overlong_penalty(100, 100, 0) == 0.0


def test_length_penalty_chars_and_tokens():
    pen = LengthPenalty(max_chars=100, buffer=20)
    outs = pen.score([S("x" * 50), S("x" * 90), S("x" * 500)])
    assert [o.score for o in outs] == [0.0, -0.5, -1.0]
    assert outs[1].metrics == {"length": 90.0}
    words = LengthPenalty(max_tokens=4, buffer=2, tokenizer=str.split)
    assert [o.score for o in words.score([S("a b"), S("a b c"), S("a b c d e")])] == [0.0, -0.5, -1.0]


def test_length_penalty_with_a_real_tokenizer():
    from transformers import AutoTokenizer

    from rlvr.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    n = len(tok.encode("hello world, this is a test", add_special_tokens=False))
    pen = LengthPenalty(max_tokens=n, buffer=0, tokenizer=tok)
    assert pen.score([S("hello world, this is a test")])[0].score == 0.0
    assert pen.score([S("hello world, this is a test and more")])[0].score == -1.0


def test_length_penalty_rejects_bad_configs():
    with pytest.raises(ValueError, match="exactly one"):
        LengthPenalty()
    with pytest.raises(ValueError, match="exactly one"):
        LengthPenalty(max_tokens=10, max_chars=10)
    with pytest.raises(ValueError, match="tokenizer"):
        LengthPenalty(max_tokens=10)
    with pytest.raises(ValueError, match="buffer"):
        LengthPenalty(max_chars=10, buffer=11)


def test_registered_names_and_weighted_sum():
    assert load_verifier("boxed_format").name == "boxed_format"
    assert load_verifier("think_format").name == "think_format"
    assert load_verifier("length_penalty", max_chars=10).name == "length_penalty"
    total = WeightedSum([(BoxedFormat(), 0.5), (LengthPenalty(max_chars=20, buffer=10), 1.0)])
    [out] = total.score([S(r"long text \boxed{1} " + "x" * 5)])
    # 26 characters: penalty (10 - 26)/10 -> beyond the limit -> -1; boxed 1 * 0.5
    assert out.score == pytest.approx(0.5 * 1.0 - 1.0)
