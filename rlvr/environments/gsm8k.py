"""``gsm8k``: grade-school math word problems (GSM8K), graded by the math verifier.

The package ships GSM8K's 1,319-problem test set (openai/grade-school-math). It is split
here by a stable hash of each question: ``test_fraction`` (default 0.2) is held out as the
``"test"`` split, the rest is ``"train"``. Training on it makes the model's scores on the
official GSM8K test set meaningless; use the held-out split for evaluation.
"""

from __future__ import annotations

from importlib.resources import files

from rlvr.environments.arithmetic import INSTRUCTION
from rlvr.environments.files import RowsEnvironment, read_jsonl


class GSM8K(RowsEnvironment):
    """GSM8K with the gold answer taken from after ``####`` (thousands separators dropped)."""

    def __init__(self, test_fraction: float = 0.2, verifier_kwargs: dict | None = None) -> None:
        rows = []
        for row in read_jsonl(files("rlvr.environments") / "data" / "gsm8k.jsonl"):
            gold = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
            rows.append({"prompt": row["question"], "reference": gold})
        super().__init__(rows, verifier="math", verifier_kwargs=verifier_kwargs, test_fraction=test_fraction, instruction=INSTRUCTION, name="gsm8k")
