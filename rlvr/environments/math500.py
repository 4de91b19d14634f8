"""``math500``: the 500 MATH problems of MATH-500 (openai/prm800k), graded by the math verifier.

Split by a stable hash of each problem: ``test_fraction`` (default 0.2) is held out as the
``"test"`` split. ``info`` carries each problem's subject, level and id.
"""

from __future__ import annotations

from importlib.resources import files

from rlvr.environments.arithmetic import INSTRUCTION
from rlvr.environments.files import RowsEnvironment, read_jsonl


class MATH500(RowsEnvironment):
    """MATH-500, answers as the dataset gives them (LaTeX)."""

    def __init__(self, test_fraction: float = 0.2, verifier_kwargs: dict | None = None) -> None:
        rows = [
            {"prompt": r["problem"], "reference": r["answer"], "subject": r["subject"], "level": r["level"], "id": r["unique_id"]}
            for r in read_jsonl(files("rlvr.environments") / "data" / "math500.jsonl")
        ]
        super().__init__(rows, verifier="math", verifier_kwargs=verifier_kwargs, test_fraction=test_fraction, instruction=INSTRUCTION, name="math500")
