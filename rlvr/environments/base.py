"""What an environment is: tasks for a split, and the reward that grades them.

An environment gives :class:`Task` objects (chat-message prompt + reference + info) for its
``"train"`` and ``"test"`` splits, and the :class:`~rlvr.rewards.Reward` that scores
completions of them. Trainers and ``python -m rlvr.eval env`` need nothing else.
A complete environment fits in a screenful::

    class Reverse(Environment):
        name = "reverse"

        def tasks(self, split):
            words = ["apple", "river", "stone"] if split == "train" else ["cloud"]
            return [Task([{"role": "user", "content": f"Reverse '{w}'."}], w[::-1]) for w in words]

        def reward(self):
            return FunctionReward(lambda s: float(s.reference in s.completion), name="reverse")

Register it under the entry-point group ``rlvr.environments`` and ``load_environment``
finds it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlvr.rewards import Reward, Sample

__all__ = ["Task", "Environment", "SPLITS", "in_test_split"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Task:
    """One problem: the prompt a policy sees and what its completion is graded against.

    Attributes:
        prompt: Chat messages, ``[{"role": "user", "content": ...}]`` (a system message may lead).
        reference: The gold answer or test cases, in the form the environment's reward expects.
        info: Task id, difficulty, ... -- passed through to ``Sample.info``.
    """

    prompt: list[dict]
    reference: Any = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def sample(self, completion: str) -> Sample:
        """The :class:`Sample` that scores ``completion`` against this task."""
        return Sample(self.prompt, completion, self.reference, self.info)

    def with_system_prompt(self, system_prompt: str | None) -> Task:
        """This task with ``system_prompt`` as a leading system message, unless it has one already (or none is given).

        Trainers and evaluation apply it once, so the policy and a prompt-aware reward see
        the same prompt.
        """
        if not system_prompt or (self.prompt and self.prompt[0].get("role") == "system"):
            return self
        return Task([{"role": "system", "content": system_prompt}, *self.prompt], self.reference, self.info)


class Environment(ABC):
    """Tasks for each split, and the reward that grades them."""

    name: str = "environment"

    @abstractmethod
    def tasks(self, split: str = "train") -> list[Task]:
        """The tasks of ``split`` (``"train"`` or ``"test"``), in a fixed order."""

    @abstractmethod
    def reward(self) -> Reward:
        """The reward that scores completions of these tasks."""

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"{self.name}: unknown split {split!r}; use one of {SPLITS}")


def in_test_split(key: str, test_fraction: float) -> bool:
    """Whether the item named ``key`` belongs to the test split (a stable hash, not a RNG)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction
