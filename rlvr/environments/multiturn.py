"""Multi-turn environments: the model answers, the environment replies, the model goes on.

A :class:`MultiTurnEnvironment` is an :class:`~rlvr.environments.base.Environment` (tasks and
a reward) that also says what happens between the model's turns::

    class Guess(MultiTurnEnvironment):
        name, max_turns = "guess", 4

        def tasks(self, split):
            return [Task([{"role": "user", "content": "Guess my number (1-9)."}], "7")]

        def respond(self, task, messages, state):
            if task.reference in messages[-1]["content"]:
                return None                                   # solved: the episode ends
            return [{"role": "user", "content": "No. Try again."}]

        def reward(self):
            return FunctionReward(lambda s: float(s.reference in s.completion), name="guess")

- ``start(task) -> state``: called once per episode before its first turn (default: None);
  the state is the episode's own, passed to every ``respond``.
- ``respond(task, messages, state) -> list[dict] | None``: called after each model turn but
  the last (the ``max_turns``-th). ``messages`` are the episode's messages after the prompt,
  the model's latest turn last (``{"role": "assistant", "content": ...}``). Return messages
  to append (``user``, ``tool``, ...) and the model answers them; return None to end.
- The reward scores ``Sample(prompt=task.prompt, completion=<the last assistant message>,
  reference, info={**task.info, "messages": ..., "turns": ...})``: any Reward works.

``respond`` runs in a thread under the run's ``turn_timeout_s``
(:func:`rlvr.episodes.run_episodes`): one that raises makes its episode an ``ERROR`` outcome,
one that is late a ``TIMEOUT`` (the thread is abandoned; it never blocks the process from
exiting); the other episodes go on. Work on the model's output that may loop or flood (its
code) belongs in a sandbox with a deadline shorter than ``turn_timeout_s``, whose result is
told to the model -- so the model is penalised for it, never excused.

:class:`ToolEnvironment` is the common case: ``tools`` (see :mod:`rlvr.tools`); after each
turn it runs the turn's calls (:func:`~rlvr.tools.parse_tool_calls`) and answers with one
``tool`` message per call; a turn without a call ends the episode.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from rlvr.environments.base import Environment, Task
from rlvr.tools import Tool, ToolCall, ToolResult, parse_tool_calls

__all__ = ["MultiTurnEnvironment", "ToolEnvironment", "tool_message"]


class MultiTurnEnvironment(Environment):
    """An environment whose episodes have several model turns (see the module docstring)."""

    max_turns: int = 3
    """Most model turns per episode (a run's ``max_turns`` overrides it)."""

    def start(self, task: Task) -> Any:
        """The state of a new episode of ``task`` (default: None)."""
        return None

    @abstractmethod
    def respond(self, task: Task, messages: list[dict], state: Any) -> list[dict] | None:
        """Messages to append after the model's turn ``messages[-1]``, or None to end the episode."""

    def tool_schemas(self) -> list[dict[str, Any]]:
        """JSON schemas of the tools the chat template should show (none here)."""
        return []

    def respond_deadline_s(self) -> float | None:
        """The longest one ``respond`` can take by the deadlines of its own sandboxes or tools
        (None: not known). A run refuses a ``turn_timeout_s`` that is not longer: a model whose
        code loops must get a result that says so, never an episode ``TIMEOUT``."""
        return None


def tool_message(call: ToolCall, result: ToolResult) -> dict[str, Any]:
    """The ``tool`` message that answers ``call``: ``role``, ``name``, ``content`` (what the model
    reads), plus ``status`` and ``elapsed_s`` (counted in the episode's tool metrics; chat templates
    are given only ``role``, ``name``, ``content``)."""
    return {"role": "tool", "name": call.name, "content": result.content, "status": result.status, "elapsed_s": result.elapsed_s}


class ToolEnvironment(MultiTurnEnvironment):
    """A multi-turn environment whose replies are tool results.

    Subclasses set ``tools`` (instances of :class:`~rlvr.tools.Tool`; or build them in
    ``__init__``), ``tasks`` and ``reward``. A call that cannot run (bad JSON, unknown tool,
    bad arguments) is answered with an ``"error: ..."`` message; calls past
    ``max_calls_per_turn`` are answered without being run. A tool that raises (a broken
    sandbox) makes the episode ``ERROR``.
    """

    tools: Sequence[Tool] = ()
    max_calls_per_turn: int = 4
    """Most calls run per turn; later ones are answered with an error."""

    def respond(self, task: Task, messages: list[dict], state: Any) -> list[dict] | None:
        """Run the calls of the model's last turn; None when it made none (the episode ends)."""
        calls = parse_tool_calls(messages[-1]["content"], self.tools)
        if not calls:
            return None
        by_name = {t.name: t for t in self.tools}
        out = []
        for i, call in enumerate(calls):
            if call.error is not None:
                result = ToolResult(f"error: {call.error}", "error")
            elif i >= self.max_calls_per_turn:
                result = ToolResult(f"error: at most {self.max_calls_per_turn} tool calls run per turn; this one did not run", "error")
            else:
                result = by_name[call.name].run(**call.arguments)
            out.append(tool_message(call, result))
        return out

    def tool_schemas(self) -> list[dict[str, Any]]:
        """Each tool's :meth:`~rlvr.tools.Tool.schema`, for chat templates that render tools."""
        return [t.schema() for t in self.tools]

    def respond_deadline_s(self) -> float | None:
        """``max_calls_per_turn`` calls of the slowest tool, each at its sandbox deadline (None when
        a tool has no ``limits``)."""
        deadlines = [getattr(getattr(t, "limits", None), "timeout_s", None) for t in self.tools]
        if not deadlines or any(d is None for d in deadlines):
            return None
        return self.max_calls_per_turn * max(deadlines)
