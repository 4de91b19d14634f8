"""A learned reward model behind the same Reward interface (tiny real model built from a config)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from rlvr.models import resolve_model
from rlvr.rewards import Sample, Status
from rlvr.verifiers.reward_model import RewardModelReward


@pytest.fixture(scope="module")
def tiny_rm():
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_labels=1)
    return LlamaForSequenceClassification(config), tokenizer


def test_scores_match_a_direct_forward_pass_and_ignore_padding(tiny_rm):
    model, tokenizer = tiny_rm
    reward = RewardModelReward(model, tokenizer, batch_size=4)
    samples = [
        Sample([{"role": "user", "content": "What is 2 + 2?"}], "4"),
        Sample([{"role": "user", "content": "What is 2 + 2?"}], "It is four, because two and two make four."),
        Sample("plain text prompt: ", "an answer"),
    ]
    batched = reward.score(samples)
    assert all(o.status is Status.OK for o in batched)
    # One at a time (no padding) must give the same scores as the padded batch.
    single = [RewardModelReward(model, tokenizer, batch_size=1).score([s])[0].score for s in samples]
    assert [o.score for o in batched] == pytest.approx(single, abs=1e-4)
    assert len({round(o.score, 6) for o in batched}) == 3


def test_too_long_sample_is_an_error_not_a_score(tiny_rm):
    model, tokenizer = tiny_rm
    reward = RewardModelReward(model, tokenizer, max_length=16)
    out = reward.score([Sample("q", "word " * 100), Sample("q", "ok")])
    assert out[0].status is Status.ERROR and "max_length" in out[0].reason
    assert out[1].status is Status.OK
    assert RewardModelReward(model, tokenizer, max_length=16, truncate=True).score([Sample("q", "word " * 100)])[0].status is Status.OK


def test_rejects_a_classifier_with_many_labels(tiny_rm):
    _, tokenizer = tiny_rm
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_labels=5)
    with pytest.raises(ValueError, match="1 output"):
        RewardModelReward(LlamaForSequenceClassification(config), tokenizer)
