"""Built-in math environments and environments made from JSONL files / datasets."""

from __future__ import annotations

import json
import logging

import pytest

from rlvr.environments import DatasetEnvironment, JSONLEnvironment, make_environment
from rlvr.environments.arithmetic import Arithmetic
from rlvr.registry import load_environment


def _problems(tasks):
    return {t.info["problem"] for t in tasks}


def test_arithmetic_is_seeded_and_its_test_split_is_held_out():
    env = Arithmetic(n_train=500, seed=3)
    again = Arithmetic(n_train=500, seed=3)
    assert [t.prompt for t in env.tasks("train")] == [t.prompt for t in again.tasks("train")]
    assert [t.prompt for t in env.tasks("train")] != [t.prompt for t in Arithmetic(n_train=500, seed=4).tasks("train")]
    train, test = env.tasks("train"), env.tasks("test")
    assert len(train) == 500 and len(test) == len(_problems(test))
    assert not _problems(train) & _problems(test)
    assert len(_problems(train)) + len(test) == 100  # every one-digit sum is in exactly one split
    for t in test:
        a, op, b = t.info["problem"].split()
        assert t.reference == str(int(a) + int(b))
        assert "\\boxed{}" in t.prompt[-1]["content"]


def test_arithmetic_other_ops_and_digits():
    env = Arithmetic(digits=2, ops="*-", n_train=50, n_test=20)
    for t in env.tasks("train") + env.tasks("test"):
        a, op, b = t.info["problem"].split()
        assert 10 <= int(a) <= 99 and op in "*-"
        assert t.reference == str(int(a) * int(b) if op == "*" else int(a) - int(b))
    big = Arithmetic(digits=5, n_train=20, n_test=20)
    assert not _problems(big.tasks("train")) & _problems(big.tasks("test"))


@pytest.mark.parametrize("kwargs, match", [({"digits": 0}, "digits"), ({"ops": "/"}, "ops"), ({"test_fraction": 1.5}, "test_fraction")])
def test_arithmetic_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Arithmetic(**kwargs)


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        Arithmetic().tasks("validation")


def test_gsm8k_and_math500_ship_their_data():
    gsm = load_environment("gsm8k")
    train, test = gsm.tasks("train"), gsm.tasks("test")
    assert len(train) + len(test) == 1319 and 200 < len(test) < 330
    assert all("," not in t.reference and "####" not in t.reference for t in train)
    janet = next(t for t in train + test if "Janet" in t.prompt[-1]["content"])
    assert janet.reference == "18"
    math500 = load_environment("math500")
    tasks = math500.tasks("train") + math500.tasks("test")
    assert len(tasks) == 500
    assert {"subject", "level", "id"} <= set(tasks[0].info)


def test_jsonl_environment_skips_and_reports_bad_rows(tmp_path, caplog):
    path = tmp_path / "problems.jsonl"
    rows = [
        {"question": "What is 2 + 2?", "answer": "4", "split": "train"},
        {"question": "What is 3 + 3?", "answer": "6", "split": "test"},
        {"question": "", "answer": "1", "split": "train"},  # empty prompt
        {"question": "No answer here", "split": "train"},  # missing reference
        {"question": "Bad split", "answer": "1", "split": "dev"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    with caplog.at_level(logging.WARNING):
        env = JSONLEnvironment(path, prompt_key="question", reference_key="answer", split_key="split", instruction="Box it.")
    assert [t.reference for t in env.tasks("train")] == ["4"]
    assert [t.reference for t in env.tasks("test")] == ["6"]
    assert env.tasks("train")[0].prompt == [{"role": "user", "content": "What is 2 + 2? Box it."}]
    assert env.skipped == 3
    text = caplog.text
    assert "row 2 skipped" in text and "row 3 skipped" in text and "row 4 skipped" in text and "not valid JSON" in text


def test_make_environment_specs(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "reference": str(i)}) + "\n" for i in range(40)))
    env = make_environment(f"jsonl:{path}", test_fraction=0.25)
    assert len(env.tasks("train")) + len(env.tasks("test")) == 40 and env.tasks("test")
    assert make_environment("arithmetic").name == "arithmetic"
    with pytest.raises(FileNotFoundError, match="jsonl:PATH"):
        make_environment(f"jsonl:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(ValueError, match="no usable rows"):
        (tmp_path / "empty.jsonl").write_text(json.dumps({"x": 1}) + "\n")
        make_environment(f"jsonl:{tmp_path / 'empty.jsonl'}")


def test_dataset_environment_from_saved_dataset(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"q{i}"}], "reference": str(i)} for i in range(10)])
    ds.save_to_disk(str(tmp_path / "ds"))
    env = make_environment(f"dataset:{tmp_path / 'ds'}", test_fraction=0.5, verifier="math")
    assert len(env.tasks("train")) + len(env.tasks("test")) == 10
    assert isinstance(env, DatasetEnvironment)
    assert env.tasks("train")[0].prompt[0]["role"] == "user"


def test_arithmetic_system_message_shows_the_format():
    [task] = Arithmetic(ops="*", n_test=1).tasks("test")
    assert task.prompt[0]["role"] == "system" and "a * b = c" in task.prompt[0]["content"] and "\\boxed{6}" in task.prompt[0]["content"]
    assert [m["role"] for m in Arithmetic(show_format=False).tasks("test")[0].prompt] == ["user"]
    assert Arithmetic(system_prompt="Be brief.").tasks("test")[0].prompt[0] == {"role": "system", "content": "Be brief."}
