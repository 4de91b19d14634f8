"""``math_python``: math problems with a Python tool that runs in the sandbox.

The tasks of ``arithmetic``, ``gsm8k`` or ``math500`` (``source``); the model may run Python
(:class:`~rlvr.tools.PythonTool`: a fresh bubblewrap sandbox per call, 5 s, 256 MB) by writing
a ```` ```python ```` block or a ``<tool_call>`` (for chat templates that render tools), and
reads what it printed; a turn without a call ends the episode, whose last message is graded
by the source's math verifier (the last ``\\boxed{}``).
"""

from __future__ import annotations

from rlvr.environments.base import Task
from rlvr.environments.multiturn import ToolEnvironment
from rlvr.rewards import Reward
from rlvr.sandboxes import Limits
from rlvr.tools import PythonTool

__all__ = ["MathPython", "TOOL_PROMPT", "SOURCES"]

SOURCES = ("arithmetic", "gsm8k", "math500")
TOOL_PROMPT = (
    "You can run Python to compute: write a complete program in one ```python code block and end your reply; "
    "you will be shown what it printed. When you know the answer, reply with it in \\boxed{} and no code."
)


class MathPython(ToolEnvironment):
    """A math environment (``source``) with a sandboxed Python tool.

    Args:
        source: ``arithmetic``, ``gsm8k`` or ``math500``.
        source_kwargs: Options for the source environment (``{"digits": 3, "ops": "*"}``).
        sandbox: The tool's sandbox (``"bubblewrap"`` or ``"docker"``).
        tool_timeout_s: Seconds one tool call may run.
        max_output_chars: Characters of a call's output the model reads.
    """

    name = "math_python"
    max_turns = 3

    def __init__(
        self,
        source: str = "arithmetic",
        source_kwargs: dict | None = None,
        sandbox: str = "bubblewrap",
        tool_timeout_s: float = 5.0,
        max_output_chars: int = 2000,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        from rlvr.registry import load_environment

        self.source = load_environment(source, **dict(source_kwargs or {}))
        limits = Limits(timeout_s=tool_timeout_s, memory_mb=256, max_output_bytes=1 << 16, max_processes=16)
        self.tools = [PythonTool(sandbox, limits, max_output_chars)]

    def tasks(self, split: str = "train") -> list[Task]:
        """The source's tasks, with the tool's instructions leading the system message."""
        out = []
        for t in self.source.tasks(split):
            messages = list(t.prompt)
            if messages and messages[0].get("role") == "system":
                messages[0] = {"role": "system", "content": f"{TOOL_PROMPT} {messages[0]['content']}"}
            else:
                messages.insert(0, {"role": "system", "content": TOOL_PROMPT})
            out.append(Task(messages, t.reference, t.info))
        return out

    def reward(self) -> Reward:
        """The source's reward (the math verifier)."""
        return self.source.reward()

    def __repr__(self) -> str:
        return f"MathPython(source={self.source.name!r}, tools={[t.name for t in self.tools]})"
