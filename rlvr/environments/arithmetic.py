"""``arithmetic``: procedural arithmetic problems, the default task of ``python -m rlvr.train``.

"What is 7 + 5?" with the answer asked for in ``\\boxed{}`` and graded by the math verifier.
A short system message shows the expected reply format (``"2 + 3 = 5, so the answer is
\\boxed{5}."``): without it SmolLM2-135M-Instruct almost never writes ``\\boxed{}``, scores 0
and gives GRPO no signal; with it the base model gets about a third of the held-out sums right.
Problems are generated from a seed, so a run is reproducible. Every distinct problem is
assigned to one split by a hash of its text, so the test split is held out: no test problem
is ever a training problem. With one-digit ``+`` there are 100 distinct problems; 32 of them form the test split.
"""

from __future__ import annotations

import itertools
import random

from rlvr.environments.base import Environment, Task, in_test_split
from rlvr.rewards import Reward

INSTRUCTION = "Put your final answer in \\boxed{}."
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def format_prompt(op: str) -> str:
    """The system message that shows the reply format, for operation ``op``."""
    example = f"2 {op} 3 = {_OPS[op](2, 3)}"
    return (
        f'You are a calculator. Reply in exactly this format: "a {op} b = c, so the answer is \\boxed{{c}}." '
        f'For example: "{example}, so the answer is \\boxed{{{_OPS[op](2, 3)}}}."'
    )


class Arithmetic(Environment):
    """Seeded arithmetic problems ``a <op> b`` with operands of ``digits`` digits.

    Args:
        digits: Digits per operand (1 means 0-9, 2 means 10-99, ...).
        ops: Operations to draw from, any of ``"+-*"``.
        n_train: Number of training tasks drawn (with repetition) from the train problems.
        n_test: Number of test tasks (distinct problems; fewer if fewer exist).
        seed: Seeds the draw of training and test tasks.
        test_fraction: Share of distinct problems held out for the test split.
        show_format: Put a system message before each question that shows the reply format
            (with the first of ``ops``).
        system_prompt: A system message of your own instead (``show_format`` is then ignored).
    """

    name = "arithmetic"

    def __init__(
        self,
        digits: int = 1,
        ops: str = "+",
        n_train: int = 2000,
        n_test: int = 100,
        seed: int = 0,
        test_fraction: float = 0.3,
        show_format: bool = True,
        system_prompt: str | None = None,
    ) -> None:
        if not isinstance(digits, int) or not 1 <= digits <= 9:
            raise ValueError(f"digits must be an integer from 1 to 9, got {digits!r}")
        bad = set(ops) - set(_OPS)
        if not ops or bad:
            raise ValueError(f"ops must be a non-empty string of {''.join(_OPS)!r}, got {ops!r}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        self.digits, self.ops, self.seed, self.test_fraction = digits, ops, seed, test_fraction
        self.n_train, self.n_test = n_train, n_test
        self.system_prompt = system_prompt or (format_prompt(ops[0]) if show_format else None)

    def _operands(self) -> range:
        return range(0 if self.digits == 1 else 10 ** (self.digits - 1), 10**self.digits)

    def _draw(self, rng: random.Random, test: bool, count: int, distinct: bool) -> list[tuple[int, str, int]]:
        nums = self._operands()
        if len(nums) ** 2 * len(self.ops) <= 100_000:  # small spaces: enumerate, then draw
            pool = [(a, op, b) for op in self.ops for a, b in itertools.product(nums, nums)]
            pool = [p for p in pool if in_test_split(f"{p[0]}{p[1]}{p[2]}", self.test_fraction) == test]
            if distinct:
                return rng.sample(pool, min(count, len(pool)))
            return [rng.choice(pool) for _ in range(count)]
        out, seen = [], set()
        while len(out) < count:
            p = (rng.choice(nums), rng.choice(self.ops), rng.choice(nums))
            if in_test_split(f"{p[0]}{p[1]}{p[2]}", self.test_fraction) != test or (distinct and p in seen):
                continue
            seen.add(p)
            out.append(p)
        return out

    def tasks(self, split: str = "train") -> list[Task]:
        """``n_train`` training tasks, or up to ``n_test`` distinct held-out test tasks."""
        self._check_split(split)
        test = split == "test"
        rng = random.Random(f"{self.seed}-{split}")
        drawn = self._draw(rng, test, self.n_test if test else self.n_train, distinct=test)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [
            Task(
                [*system, {"role": "user", "content": f"What is {a} {op} {b}? {INSTRUCTION}"}],
                str(_OPS[op](a, b)),
                {"problem": f"{a} {op} {b}"},
            )
            for a, op, b in drawn
        ]

    def reward(self) -> Reward:
        """The math verifier (last ``\\boxed{}`` answer)."""
        from rlvr.verifiers.math import MathVerifier

        return MathVerifier()
