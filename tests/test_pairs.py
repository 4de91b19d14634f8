"""Preference data: loading pairs and labels (good and bad rows), sampling pairs from a Reward, ``python -m rlvr.pairs``."""

from __future__ import annotations

import json
import logging

import pytest

from rlvr.preferences import Label, LoadReport, PairsError, PreferencePair, load_labels, load_pairs, unpair

CHAT = [{"role": "user", "content": "2+2?"}]


def _write_lines(path, lines: list[bytes | str | dict]) -> None:
    out = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out += (line if isinstance(line, bytes) else line.encode()) + b"\n"
    path.write_bytes(out)


# =======================================================================================
# load_pairs / load_labels
# =======================================================================================


def test_load_pairs_reports_each_bad_row_with_file_and_line_and_keeps_the_rest(tmp_path, caplog):
    path = tmp_path / "pairs.jsonl"
    _write_lines(
        path,
        [
            {"prompt": "q1", "chosen": "a", "rejected": "b", "reference": "4", "chosen_score": 1, "rejected_score": 0, "task_id": 7},
            {"prompt": "q2", "chosen": "a"},  # line 2: missing rejected
            {"prompt": "q3", "chosen": "  ", "rejected": "b"},  # line 3: empty chosen
            {"prompt": "q4", "chosen": "same", "rejected": "same"},  # line 4: identical
            b'{"prompt": "q5", "chosen": "\xff\xfe", "rejected": "b"}',  # line 5: not UTF-8
            "{not json",  # line 6
            "",  # blank: not a row
            "[1, 2]",  # line 8: not an object
            {"prompt": "q9", "chosen": "a", "rejected": "b", "margin": "wide"},  # line 9: bad number
            {"prompt": "q10", "chosen": "c", "rejected": "d", "margin": 0.5},
        ],
    )
    report = LoadReport()
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(path, report=report)
    assert pairs == [
        PreferencePair("q1", "a", "b", 1.0, 0.0, {"task_id": 7}, reference="4"),
        PreferencePair("q10", "c", "d", margin=0.5),
    ]
    for line, why in [(2, "missing column rejected"), (3, "chosen is empty"), (4, "same text"), (5, "not UTF-8"),
                      (6, "not valid JSON"), (8, "JSON object"), (9, "margin must be a number")]:
        assert f"{path}:{line}: skipped, " in caplog.text and why in caplog.text
        assert any(p.startswith(f"{path}:{line}: ") and why in p for p in report.problems), (line, report.problems)
    assert report.rows == 9 and report.kept == 2 and report.n_skipped == 7
    assert report.skipped == {"missing column": 1, "empty completion": 1, "identical": 1, "not utf-8": 1, "not json": 1,
                              "not an object": 1, "bad value": 1}


def test_no_usable_row_is_a_clear_error(tmp_path):
    path = tmp_path / "wrong.jsonl"
    _write_lines(path, [{"question": "q", "good": "a", "bad": "b"}, "oops"])
    with pytest.raises(PairsError, match=r"no usable pairs in 2 rows; expected columns prompt, chosen, rejected, found: question, good, bad"):
        load_pairs(path)
    with pytest.raises(PairsError, match="no such file"):
        load_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(PairsError, match="expected columns prompt, completion, label"):
        load_labels(path)
    assert issubclass(PairsError, ValueError)


def test_conversational_pairs_reduce_to_assistant_text():
    reply = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    rows = [
        {"prompt": CHAT, "chosen": reply("4"), "rejected": reply("5")},  # TRL conversational
        {"prompt": CHAT, "chosen": CHAT + reply("4"), "rejected": CHAT + reply("22")},  # prompt repeated at the head
        {"chosen": CHAT + reply("four"), "rejected": CHAT + reply("five")},  # implicit prompt
        {"prompt": CHAT, "chosen": [{"role": "user", "content": "x"}], "rejected": reply("5")},  # no assistant turn: skipped
    ]
    report = LoadReport()
    pairs = load_pairs(rows, report=report)
    assert pairs == [PreferencePair(CHAT, "4", "5"), PreferencePair(CHAT, "4", "22"), PreferencePair(CHAT, "four", "five")]
    assert report.problems == ["row 3: chosen is a message list that does not end in assistant text after the prompt"]


def test_datasets_save_to_disk_round_trip_and_other_file_kinds(tmp_path):
    import datasets

    rows = [
        {"prompt": "q1", "chosen": "a", "rejected": "b", "reference": "1", "chosen_score": 1.0, "rejected_score": 0.0},
        {"prompt": "q2", "chosen": "c", "rejected": "d", "reference": "2", "chosen_score": 0.5, "rejected_score": 0.25},
    ]
    expected = load_pairs(rows)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    assert load_pairs(tmp_path / "saved") == expected
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    assert load_pairs(tmp_path / "dict") == expected
    with pytest.raises(PairsError, match="no split 'test'"):
        load_pairs(tmp_path / "dict", split="test")
    files = tmp_path / "files"
    files.mkdir()
    datasets.Dataset.from_list(rows[:1]).to_parquet(str(files / "a.parquet"))
    datasets.Dataset.from_list(rows[1:]).to_csv(str(files / "b.csv"), index=False)
    assert load_pairs(files) == expected
    (tmp_path / "array.json").write_text(json.dumps(rows))
    assert load_pairs(tmp_path / "array.json") == expected
    # what load_pairs reads, datasets reads unchanged (and back)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_pairs(datasets.load_dataset("json", data_files=str(tmp_path / "p.jsonl"), split="train")) == expected


def test_load_labels_and_unpair(tmp_path):
    path = tmp_path / "labels.jsonl"
    _write_lines(
        path,
        [
            {"prompt": "q", "completion": "good", "label": True, "reference": "4", "score": 1.0},
            {"prompt": CHAT, "completion": [{"role": "assistant", "content": "bad"}], "label": 0},
            {"prompt": "q", "completion": "x", "label": "maybe"},  # line 3: bad label
            {"prompt": "q", "completion": "", "label": True},  # line 4: empty
            {"prompt": "q", "label": True},  # line 5: missing completion
        ],
    )
    report = LoadReport()
    labels = load_labels(path, report=report)
    assert labels == [Label("q", "good", True, 1.0, {}, "4"), Label(CHAT, "bad", False)]
    assert [p.split(": ")[0] for p in report.problems] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    pair = PreferencePair("q", "a", "b", 1.0, 0.0, {"id": 1}, reference="r")
    assert unpair([pair]) == [Label("q", "a", True, 1.0, {"id": 1}, "r"), Label("q", "b", False, 0.0, {"id": 1}, "r")]


# =======================================================================================
# sample_pairs: a fixed scored set
# =======================================================================================


class _FixedGenerator:
    """Fixed completions per prompt (the prompt's user text picks them), in the Generator's prompt-major order."""

    def __init__(self, completions: dict[str, list[str]]) -> None:
        self.completions = completions
        self.calls: list[int] = []

    def generate(self, prompts, n, sampling):
        from rlvr.generation import Generation

        self.calls.append(len(prompts))
        out = []
        for i, prompt in enumerate(prompts):
            texts = self.completions[prompt[-1]["content"]]
            assert len(texts) == n
            out += [Generation(text=t, prompt_ids=[], completion_ids=[1], prompt_index=i) for t in texts]
        return out

    def close(self) -> None:
        pass


class _TextReward:
    """``s=<score>`` scores; ``timeout`` / ``error`` / ``abstain`` in the text give that status (whatever the score)."""

    name = "text"

    def score(self, samples):
        from rlvr.rewards import Outcome

        out = []
        for s in samples:
            if "timeout" in s.completion:
                out.append(Outcome.timeout("too slow"))
            elif "error" in s.completion:
                out.append(Outcome.error("broke"))
            elif "abstain" in s.completion:
                out.append(Outcome.abstain("no opinion"))
            else:
                out.append(Outcome.ok(float(s.completion.split("s=")[1])))
        return out


def _task(text: str, reference: str = "r", **info):
    from rlvr.environments.base import Task

    return Task([{"role": "user", "content": text}], reference, info)


FIXED = {
    # failures carry the highest "scores": were they counted, they would be chosen
    "a": ["s=0.5", "s=9 timeout", "s=1", "s=-9 error", "s=0", "s=9 abstain"],
    "b": ["s=1", "s=1", "s=1", "s=1", "s=9 timeout", "s=1"],  # all tied
    "c": ["s=1", "s=9 error", "s=9 timeout", "s=9 abstain", "s=-9 error", "s=9 timeout"],  # one OK
    "d": ["s=0.25", "s=0.75", "s=0.75", "s=0.5", "s=0.25", "s=0.5"],
}


def test_sample_pairs_best_over_worst_and_never_a_failed_outcome():
    from rlvr.generation import SamplingConfig
    from rlvr.pairs import prompt_id, sample_pairs

    tasks = [_task("a", "4", task_id=1), _task("b"), _task("c"), _task("d", "7")]
    rows, summary = sample_pairs(_FixedGenerator(FIXED), _TextReward(), tasks, 6, SamplingConfig())
    assert rows == [
        {"prompt": tasks[0].prompt, "chosen": "s=1", "rejected": "s=0", "reference": "4", "chosen_score": 1.0, "rejected_score": 0.0,
         "prompt_id": prompt_id(tasks[0]), "task_id": 1},
        {"prompt": tasks[3].prompt, "chosen": "s=0.75", "rejected": "s=0.25", "reference": "7", "chosen_score": 0.75,
         "rejected_score": 0.25, "prompt_id": prompt_id(tasks[3])},
    ]
    assert summary.to_dict() == {"prompts": 4, "rows": 2, "all_tied": 1, "few_ok": 1, "completions": 24, "n_ok": 15,
                                 "n_timeout": 4, "n_error": 3, "n_abstain": 2, "desirable": 0}
    # the rows load back as pairs unchanged
    pairs = load_pairs(rows)
    assert [(p.chosen, p.rejected, p.reference, p.info["task_id"] if "task_id" in p.info else None) for p in pairs] == [
        ("s=1", "s=0", "4", 1), ("s=0.75", "s=0.25", "7", None)]
    # a larger margin drops the 0.5-wide pair; k < 2 cannot make pairs
    rows, summary = sample_pairs(_FixedGenerator(FIXED), _TextReward(), tasks, 6, SamplingConfig(), min_margin=0.6)
    assert [r["chosen"] for r in rows] == ["s=1"] and summary.all_tied == 2
    with pytest.raises(ValueError, match="k must be >= 2"):
        sample_pairs(_FixedGenerator(FIXED), _TextReward(), tasks, 1, SamplingConfig())


def test_sample_pairs_labels_only_ok_outcomes():
    from rlvr.generation import SamplingConfig
    from rlvr.pairs import sample_pairs

    tasks = [_task("a"), _task("c")]
    rows, summary = sample_pairs(_FixedGenerator(FIXED), _TextReward(), tasks, 6, SamplingConfig(), labels=True, label_threshold=0.5)
    assert [(r["completion"], r["label"], r["score"]) for r in rows] == [
        ("s=0.5", True, 0.5), ("s=1", True, 1.0), ("s=0", False, 0.0), ("s=1", True, 1.0)]
    assert summary.rows == 4 and summary.desirable == 3
    labels = load_labels(rows)
    assert [lb.desirable for lb in labels] == [True, True, False, True]


def test_write_pairs_resumes_and_drops_a_cut_off_batch(tmp_path):
    from rlvr.generation import SamplingConfig
    from rlvr.pairs import progress_path, write_pairs

    tasks = [_task("a"), _task("b"), _task("c"), _task("d")]
    out = tmp_path / "pairs.jsonl"
    gen = _FixedGenerator(FIXED)
    first = write_pairs(gen, _TextReward(), tasks[:2], out, 6, SamplingConfig(), batch_prompts=1, progress_bar=False)
    assert first["prompts"] == 2 and first["rows"] == 1 and first["prompts_resumed"] == 0
    # a batch cut off after its rows were written but before it was recorded: its rows are dropped and redone
    with open(out, "a") as f:
        f.write(json.dumps({"prompt": "x", "chosen": "a", "rejected": "b", "prompt_id": "not-recorded"}) + "\n")
    gen.calls.clear()
    summary = write_pairs(gen, _TextReward(), tasks, out, 6, SamplingConfig(), batch_prompts=1, progress_bar=False)
    assert gen.calls == [1, 1]  # only c and d sampled
    assert summary["prompts_resumed"] == 2 and summary["prompts"] == 4 and summary["rows"] == 2 and summary["all_tied"] == 1
    assert [p.chosen for p in load_pairs(out)] == ["s=1", "s=0.75"]
    assert len(progress_path(out).read_text().splitlines()) == 4


# =======================================================================================
# python -m rlvr.pairs
# =======================================================================================


def _run_cli(*args: str, timeout: float = 240):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "rlvr.pairs", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "no-such-env"], "unknown environment 'no-such-env'"),
        (["--env", "arithmetic", "--verifier", "no-such-verifier"], "unknown verifier"),
        (["--env", "arithmetic", "--k", "1"], "--k must be >= 2"),
        (["--env", "arithmetic", "--model", "/no/such/model"], "--model: no model directory"),
        (["--env", "arithmetic", "--env-kwargs", "[1]"], "--env-kwargs must be a JSON object"),
        (["--env", "arithmetic", "--k", "many"], "invalid int value"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    import time

    out = ["--out", str(tmp_path / "p.jsonl")]
    start = time.perf_counter()
    result = _run_cli(*args, *out)
    assert time.perf_counter() - start < 5
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    missing_dir = _run_cli("--env", "arithmetic", "--out", str(tmp_path / "nope" / "p.jsonl"))
    assert missing_dir.returncode == 2 and "does not exist" in missing_dir.stderr


@pytest.mark.slow
def test_cli_end_to_end_on_a_tiny_model_and_resume(tmp_path):
    from conftest import tiny_causal_lm
    from transformers import AutoTokenizer

    from rlvr.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    tiny_causal_lm(tok, seed=0).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    env_file = tmp_path / "problems.jsonl"
    env_file.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "reference": str(i + 1)}) + "\n" for i in range(5)))
    out = tmp_path / "pairs.jsonl"
    common = ["--env", f"jsonl:{env_file}", "--env-kwargs", '{"test_fraction": 0}', "--model", str(tmp_path / "tiny"),
              "--generator", "hf", "--k", "3", "--max-new-tokens", "6", "--verifier", "length_penalty",
              "--verifier-kwargs", '{"max_chars": 40, "buffer": 40}', "--out", str(out), "--batch-prompts", "2", "--no-progress"]
    first = _run_cli(*common, "--max-prompts", "3")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["prompts"] == 3 and summary["completions"] == 9 and summary["n_ok"] == 9
    assert summary["rows"] + summary["all_tied"] + summary["few_ok"] == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["rows"] >= 1
    assert {"prompt", "chosen", "rejected", "reference", "chosen_score", "rejected_score"} <= set(rows[0])
    assert all(r["chosen_score"] > r["rejected_score"] for r in rows)

    second = _run_cli(*common)  # all 5 prompts: the first 3 are already written
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["prompts_resumed"] == 3 and summary["prompts"] == 5 and summary["completions"] == 15
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["rows"] and len({r["prompt_id"] for r in rows}) == len(rows)
    assert load_pairs(out)  # what the CLI writes, the loader reads

    labels = _run_cli(*common, "--labels", "--out", str(tmp_path / "labels.jsonl"), "--max-prompts", "2")
    assert labels.returncode == 0, labels.stderr
    assert len(load_labels(tmp_path / "labels.jsonl")) == 6


def test_a_repeated_prompt_is_its_own_task_when_resuming(tmp_path):
    from rlvr.generation import SamplingConfig
    from rlvr.pairs import prompt_id, task_keys, write_pairs

    tasks = [_task("a"), _task("d"), _task("a")]
    pid = prompt_id(tasks[0])
    assert task_keys(tasks) == [pid, prompt_id(tasks[1]), f"{pid}#1"]
    out = tmp_path / "pairs.jsonl"
    gen = _FixedGenerator(FIXED)
    write_pairs(gen, _TextReward(), tasks[:2], out, 6, SamplingConfig(), batch_prompts=2, progress_bar=False)
    summary = write_pairs(gen, _TextReward(), tasks, out, 6, SamplingConfig(), batch_prompts=2, progress_bar=False)
    assert gen.calls == [2, 1] and summary["prompts"] == 3 and summary["prompts_resumed"] == 2
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()] == [pid, prompt_id(tasks[1]), f"{pid}#1"]
