"""Preference data from any Reward, and a preference dataset as a Reward."""

from __future__ import annotations

import json
import logging

from rlvr.preferences import Label, PreferenceLookup, PreferencePair, labels_from_reward, load_pairs, pairs_from_reward
from rlvr.rewards import FunctionReward, Outcome, Sample, Status


def _len_reward():
    def fn(s):
        if s.completion == "crash":
            raise RuntimeError("checker broke")
        if s.completion == "?":
            return None
        return float(len(s.completion))

    return FunctionReward(fn, name="length")


def test_pairs_from_reward_best_over_worst_skipping_ties_and_failures():
    groups = [
        [Sample("p1", "aaa"), Sample("p1", "a"), Sample("p1", "crash"), Sample("p1", "aa")],
        [Sample("p2", "bb"), Sample("p2", "cc")],  # tie: no pair
        [Sample("p3", "crash"), Sample("p3", "x")],  # one usable completion: no pair
    ]
    pairs = pairs_from_reward(groups, _len_reward())
    assert pairs == [PreferencePair("p1", "aaa", "a", 3.0, 1.0, {})]


def test_labels_from_reward_threshold_and_skips():
    samples = [Sample("p", "abcd"), Sample("p", "a"), Sample("p", "?"), Sample("p", "crash")]
    labels = labels_from_reward(samples, _len_reward(), threshold=2)
    assert labels == [Label("p", "abcd", True, 4.0, {}), Label("p", "a", False, 1.0, {})]


def test_lookup_is_a_reward():
    chat = [{"role": "user", "content": "2+2?"}]
    pairs = [PreferencePair(chat, "4", "5"), PreferencePair("q", "yes", "no"), PreferencePair("q", "no", "maybe")]
    lookup = PreferenceLookup(pairs)
    out = lookup.score([Sample(chat, "4"), Sample(chat, "5"), Sample(chat, "6"), Sample("q", "no")])
    assert [o.status for o in out] == [Status.OK, Status.OK, Status.ABSTAIN, Status.OK]
    assert [o.score for o in out] == [1.0, 0.0, None, 0.5]


def test_load_pairs_skips_bad_rows(tmp_path, caplog):
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "source": "x"}, {"prompt": "q", "chosen": "a"}, {"prompt": "q", "chosen": 3, "rejected": "b"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(path)
    assert pairs == [PreferencePair("q", "a", "b", info={"source": "x"})]
    assert f"{path}:2: skipped, missing column rejected" in caplog.text and f"{path}:3: skipped" in caplog.text


def test_pairs_round_trip_through_lookup():
    groups = [[Sample("p", "good answer"), Sample("p", "bad")]]
    lookup = PreferenceLookup(pairs_from_reward(groups, _len_reward()))
    out = lookup.score(groups[0])
    assert [o.score for o in out] == [1.0, 0.0]
    assert isinstance(out[0], Outcome)
