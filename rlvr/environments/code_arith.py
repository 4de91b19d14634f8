"""``code_arith``: procedural one-line Python functions, graded by running them in the sandbox.

"Write a Python function `f(x)` that returns `3 * x + 2`." -- or, at higher levels, a
string or list one-liner said in words. A system message shows the reply format (one
```python block defining the function). Every task has several asserts on seeded inputs,
run by the real :class:`~rlvr.verifiers.code.CodeVerifier` in its sandbox (partial credit:
the share of asserts passed). It is ``arithmetic``'s twin for code: SmolLM2-135M-Instruct
solves some of these tasks and not others, so GRPO has a signal to learn from on a CPU.

Each distinct problem is assigned to one split by a hash of its canonical text
(``"f(x) returns `3 * x + 2`"``), so no test problem is ever a training problem; a task's test
inputs are drawn from ``seed`` and its text. With all three levels there are 398 problems, 110
of them in the test split. Each task's reference solution is in ``Task.info["solution"]``, its
tests as ``(call, expected value)`` source pairs in ``Task.info["cases"]``.
"""

from __future__ import annotations

import itertools
import random

from rlvr.environments.base import Environment, Task, in_test_split
from rlvr.verifiers.code import CodeVerifier

SYSTEM_PROMPT = (
    "You write Python functions. Reply with the function in one ```python code block and nothing else. "
    'For example, to "Write a Python function `f(n)` that returns `n * 10 - 1`." reply:\n'
    "```python\ndef f(n):\n    return n * 10 - 1\n```"
)

# (level, argument, what f returns as the prompt says it, the reference expression, parameter grid)
FAMILIES = [
    (1, "x", "`{a} * x + {b}`", "{a} * x + {b}", {"a": range(2, 10), "b": range(1, 10)}),
    (1, "x", "`{a} * x - {b}`", "{a} * x - {b}", {"a": range(2, 10), "b": range(1, 10)}),
    (1, "x", "`x * x + {a}`", "x * x + {a}", {"a": range(1, 10)}),
    (1, "x", "`(x + {a}) * {b}`", "(x + {a}) * {b}", {"a": range(1, 10), "b": range(2, 10)}),
    (2, "x", "x multiplied by {a}, plus {b}", "x * {a} + {b}", {"a": range(2, 10), "b": range(1, 10)}),
    (2, "x", "the square of x, minus {a}", "x * x - {a}", {"a": range(1, 10)}),
    (2, "s", "the string s repeated {k} times", "s * {k}", {"k": range(2, 7)}),
    (2, "s", "the first {k} characters of the string s", "s[:{k}]", {"k": range(1, 6)}),
    (2, "s", "the last {k} characters of the string s", "s[-{k}:]", {"k": range(1, 6)}),
    (2, "s", "the string s followed by '{c}'", "s + '{c}'", {"c": "xyz!?"}),
    (2, "s", "the number of times '{c}' occurs in the string s", "s.count('{c}')", {"c": "abcde"}),
    (2, "xs", "the sum of the list xs plus {k}", "sum(xs) + {k}", {"k": range(1, 10)}),
    (2, "xs", "the list xs with every element multiplied by {k}", "[v * {k} for v in xs]", {"k": range(2, 10)}),
    (2, "xs", "the list xs with every element increased by {k}", "[v + {k} for v in xs]", {"k": range(1, 10)}),
    (3, "xs", "the number of elements of the list xs that are greater than {k}", "len([v for v in xs if v > {k}])", {"k": range(1, 15)}),
    (3, "xs", "the sum of the elements of the list xs that are greater than {k}", "sum(v for v in xs if v > {k})", {"k": range(1, 15)}),
    (3, "xs", "the largest element of the list xs times {k}", "max(xs) * {k}", {"k": range(2, 10)}),
    (3, "s", "the string s reversed, followed by '{c}'", "s[::-1] + '{c}'", {"c": "xyz!?"}),
]  # fmt: skip


def _draw_input(rng: random.Random, arg: str) -> object:
    if arg == "x":
        return rng.randint(-9, 30)
    if arg == "s":
        return "".join(rng.choice("abcde") for _ in range(rng.randint(2, 8)))
    return [rng.randint(0, 20) for _ in range(rng.randint(2, 6))]


def _make_task(level: int, arg: str, says: str, code: str, seed: int, n_tests: int, system: list[dict]) -> Task:
    text = f"Write a Python function `f({arg})` that returns {says}."
    solution = f"def f({arg}):\n    return {code}\n"
    namespace: dict = {}
    exec(solution, namespace)  # our own generated one-liner, to compute the expected values
    rng = random.Random(f"{seed}-{text}")
    inputs = []
    while len(inputs) < n_tests:
        value = _draw_input(rng, arg)
        if value not in inputs:
            inputs.append(value)
    cases = [(f"f({v!r})", repr(namespace["f"](v))) for v in inputs]  # (the call, its expected value), as source
    tests = [f"assert {call} == {expected}" for call, expected in cases]
    reference = {"style": "assert", "tests": tests, "setup": "", "entry_point": "f"}
    info = {"problem": text, "level": level, "solution": solution, "cases": cases}
    return Task([*system, {"role": "user", "content": text}], reference, info)


class CodeArith(Environment):
    """Seeded function-writing tasks (``f(x)`` returns an expression; string and list one-liners).

    Args:
        levels: Difficulty levels to draw from: 1 (an integer expression, written as code),
            2 (an expression or a string / list one-liner said in words), 3 (two steps in words).
        n_train: Number of training tasks drawn (with repetition) from the train problems.
        n_test: Number of test tasks (distinct problems; fewer if fewer exist).
        n_tests: Asserts per task (each is one test; the reward is the share that pass).
        seed: Seeds the draw of tasks and of each task's test inputs.
        test_fraction: Share of distinct problems held out for the test split.
        show_format: Put a system message before each task that shows the reply format.
        verifier_kwargs: Passed to :class:`~rlvr.verifiers.code.CodeVerifier` (``sandbox``, ``limits``...).
    """

    name = "code_arith"

    def __init__(
        self,
        levels: list[int] | tuple[int, ...] | int = (1, 2, 3),
        n_train: int = 2000,
        n_test: int = 100,
        n_tests: int = 4,
        seed: int = 0,
        test_fraction: float = 0.3,
        show_format: bool = True,
        verifier_kwargs: dict | None = None,
    ) -> None:
        levels = (levels,) if isinstance(levels, int) else tuple(levels)
        if not levels or set(levels) - {1, 2, 3}:
            raise ValueError(f"levels must be a non-empty list of 1, 2, 3, got {levels!r}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
        if n_tests < 1:
            raise ValueError(f"n_tests must be >= 1, got {n_tests}")
        self.levels, self.n_train, self.n_test, self.n_tests = levels, n_train, n_test, n_tests
        self.seed, self.test_fraction = seed, test_fraction
        self.system_prompt = SYSTEM_PROMPT if show_format else None
        self.verifier_kwargs = dict(verifier_kwargs or {})

    def problems(self, split: str) -> list[tuple[int, str, str, str]]:
        """Every distinct problem of ``split``: (level, argument, prompt wording, reference expression)."""
        self._check_split(split)
        out = []
        for level, arg, says, code, grid in FAMILIES:
            if level not in self.levels:
                continue
            for values in itertools.product(*grid.values()):
                params = dict(zip(grid, values))
                problem = (level, arg, says.format(**params), code.format(**params))
                if in_test_split(f"f({arg}) returns {problem[2]}", self.test_fraction) == (split == "test"):
                    out.append(problem)
        return out

    def tasks(self, split: str = "train") -> list[Task]:
        """``n_train`` training tasks, or up to ``n_test`` distinct held-out test tasks."""
        pool = self.problems(split)
        rng = random.Random(f"{self.seed}-{split}")
        if split == "test":
            drawn = rng.sample(pool, min(self.n_test, len(pool)))
        else:
            drawn = [rng.choice(pool) for _ in range(self.n_train)]
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [_make_task(*p, seed=self.seed, n_tests=self.n_tests, system=system) for p in drawn]

    def reward(self) -> CodeVerifier:
        """A :class:`CodeVerifier` (bubblewrap sandbox unless ``verifier_kwargs`` says otherwise)."""
        return CodeVerifier(**self.verifier_kwargs)
