"""Environments: tasks for train/test splits and the reward that grades them.

Built-ins (registered by entry point): ``arithmetic``, ``code_arith``, ``gsm8k``, ``math500``,
``humaneval``, ``mbpp``, and the multi-turn ``code_arith_feedback``, ``mbpp_feedback`` and
``math_python`` (:class:`MultiTurnEnvironment`, :class:`ToolEnvironment`). Any JSONL file or
``datasets`` dataset becomes one through :func:`make_environment` (``jsonl:PATH``, ``dataset:PATH``).
"""

from rlvr.environments.base import Environment, Task
from rlvr.environments.files import DatasetEnvironment, JSONLEnvironment, RowsEnvironment, make_environment
from rlvr.environments.multiturn import MultiTurnEnvironment, ToolEnvironment

__all__ = [
    "Environment",
    "Task",
    "MultiTurnEnvironment",
    "ToolEnvironment",
    "RowsEnvironment",
    "JSONLEnvironment",
    "DatasetEnvironment",
    "make_environment",
]
