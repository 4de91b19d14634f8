"""``mbpp``: Mostly Basic Python Problems (974 tasks), graded by the code verifier.

Data: google-research ``mbpp/mbpp.jsonl`` shipped in ``rlvr/environments/data/mbpp.jsonl``.
Splits follow the paper: task ids 11-510 are ``"test"``, 511-974 ``"train"`` (1-10 are the
paper's few-shot examples and belong to neither). The prompt shows the task and its first
assert (which names the function and its signature); the grade is every assert, each one
test, run by :class:`~rlvr.verifiers.code.CodeVerifier`.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files

from rlvr.environments.base import Environment, Task
from rlvr.verifiers.code import CodeVerifier

INSTRUCTION = "{text}\nYour code should pass tests like this one:\n{example}\nReply with the complete Python code in one ```python code block."
SPLIT_IDS = {"test": range(11, 511), "train": range(511, 975)}


def _entry_point(row: dict) -> str | None:
    """The function the tests call: the first ``def`` of the reference code the first test uses."""
    for name in re.findall(r"^def\s+(\w+)", row["code"], re.M):
        if re.search(rf"\b{name}\s*\(", row["test_list"][0]):
            return name
    return None


class MBPP(Environment):
    """MBPP as an environment: chat prompts, a ``CodeVerifier`` reward.

    Args:
        verifier_kwargs: Passed to :class:`~rlvr.verifiers.code.CodeVerifier` (``sandbox``, ``limits``...).
    """

    name = "mbpp"

    def __init__(self, verifier_kwargs: dict | None = None) -> None:
        self.verifier_kwargs = dict(verifier_kwargs or {})
        text = (files("rlvr.environments") / "data" / "mbpp.jsonl").read_text()
        self.rows = [json.loads(line) for line in text.splitlines() if line.strip()]

    def tasks(self, split: str = "train") -> list[Task]:
        """Tasks 511-974 for ``"train"``, 11-510 for ``"test"``, in task-id order."""
        self._check_split(split)
        out = []
        for row in sorted(self.rows, key=lambda r: r["task_id"]):
            if row["task_id"] not in SPLIT_IDS[split]:
                continue
            reference = {"style": "assert", "tests": row["test_list"], "setup": row["test_setup_code"], "entry_point": _entry_point(row)}
            content = INSTRUCTION.format(text=row["text"], example=row["test_list"][0])
            out.append(Task([{"role": "user", "content": content}], reference, {"task_id": row["task_id"]}))
        return out

    def reward(self) -> CodeVerifier:
        """A :class:`CodeVerifier` (bubblewrap sandbox unless ``verifier_kwargs`` says otherwise)."""
        return CodeVerifier(**self.verifier_kwargs)
