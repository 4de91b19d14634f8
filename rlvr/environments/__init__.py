"""Environments: tasks for train/test splits and the reward that grades them.

Built-ins (registered by entry point): ``arithmetic``, ``gsm8k``, ``math500``,
``humaneval``, ``mbpp``. Any JSONL file or ``datasets`` dataset becomes one through
:func:`make_environment` (``jsonl:PATH``, ``dataset:PATH``).
"""

from rlvr.environments.base import Environment, Task
from rlvr.environments.files import DatasetEnvironment, JSONLEnvironment, RowsEnvironment, make_environment

__all__ = ["Environment", "Task", "RowsEnvironment", "JSONLEnvironment", "DatasetEnvironment", "make_environment"]
