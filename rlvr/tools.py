"""Tools a model calls during a multi-turn episode, and how its calls are read from its text.

A :class:`Tool` has a ``name``, a ``description`` and JSON-schema ``parameters`` (what a chat
template that supports tools renders, through :meth:`Tool.schema`), and ``run(**arguments)``
returns a :class:`ToolResult`. :class:`PythonTool` runs the model's code in a FRESH sandbox
per call (bubblewrap by default, Docker on request): the same sandboxes as the code
verifier, so model code never runs on the host.

:func:`parse_tool_calls` reads a model turn:

- ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (the Hermes / Qwen
  convention, which Qwen2.5's and Hermes' chat templates ask for when given ``tools``);
- else, where a ``python`` tool is offered, each fenced ```` ```python ```` block is a call of
  it (what a model without a tool template writes when its system prompt says so).

It never raises: bad JSON, an unknown tool, missing, unknown or mistyped arguments, an
unclosed ``<tool_call>`` each give a :class:`ToolCall` whose ``error`` says what is wrong,
which :class:`~rlvr.environments.multiturn.ToolEnvironment` tells the model as the call's
result. What a result's ``status`` means:

- ``"ok"``: the tool ran and did what it was asked (a program that exited 0);
- ``"error"``: the CALL failed through the model's doing (its code raised, ran out of
  memory, bad arguments) -- the model sees why;
- ``"timeout"``: the call ran past the tool's own deadline and was killed -- the model sees
  ``"timed out after 5 s"``. A looping or flooding program is a result, never an episode
  ``TIMEOUT``: a policy cannot escape a penalty by hanging its tool.

A tool that cannot work at all (its sandbox broke) RAISES: that is a failure of the check,
not of the model, and the episode becomes an ``ERROR`` outcome, left out of training.
"""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlvr.sandboxes import Limits, Sandbox, get_sandbox

__all__ = ["Tool", "ToolCall", "ToolResult", "PythonTool", "parse_tool_calls", "TOOL_STATUSES"]

TOOL_STATUSES = ("ok", "error", "timeout")


@dataclass(frozen=True)
class ToolResult:
    """What one tool call gave back to the model.

    Attributes:
        content: The text the model reads (already truncated by the tool).
        status: ``"ok"``, ``"error"`` (the call failed) or ``"timeout"`` (killed at the tool's deadline).
        elapsed_s: Wall-clock seconds of the call.
    """

    content: str
    status: str = "ok"
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        if self.status not in TOOL_STATUSES:
            raise ValueError(f"ToolResult.status must be one of {TOOL_STATUSES}, got {self.status!r}")


@dataclass(frozen=True)
class ToolCall:
    """One call read from a model turn: the tool's name and arguments, or why it cannot run.

    Attributes:
        name: The tool named (may be empty or unknown when ``error`` is set).
        arguments: The arguments, checked against the tool's ``parameters``.
        error: None for a call that can run; else what is wrong, said to the model.
    """

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


class Tool(ABC):
    """A function the model may call. Subclasses set ``name``, ``description``, ``parameters``
    (a JSON schema of an object) and implement :meth:`run`.

    ``run`` returns a :class:`ToolResult` for anything the model did (an ``"error"`` result
    when its arguments made the call fail) and raises only when the tool itself is broken.
    Untrusted work (the model's code) belongs in a sandbox, as :class:`PythonTool` does.
    """

    name: str = "tool"
    description: str = ""
    parameters: Mapping[str, Any] = {"type": "object", "properties": {}, "required": []}

    @abstractmethod
    def run(self, **arguments: Any) -> ToolResult:
        """Run one call."""

    def schema(self) -> dict[str, Any]:
        """The OpenAI-style function schema chat templates render (``apply_chat_template(tools=...)``)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}}


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... [{len(text) - limit} more characters not shown]"


class PythonTool(Tool):
    """Runs the model's Python code in a fresh sandbox per call; the model reads what it printed.

    Args:
        sandbox: ``"bubblewrap"`` (default), ``"docker"``, or a :class:`~rlvr.sandboxes.Sandbox`.
        limits: Each call's limits (default 5 s, 256 MB, 16 processes, 64 KiB of output kept).
        max_output_chars: Characters of output the model reads; the rest is cut with a note.
    """

    name = "python"
    description = "Run a Python program in a sandbox (no network, no files kept between calls) and see what it printed."
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "A complete Python program; print what you want to see."}},
        "required": ["code"],
    }

    def __init__(self, sandbox: str | Sandbox = "bubblewrap", limits: Limits | None = None, max_output_chars: int = 2000) -> None:
        self.sandbox = get_sandbox(sandbox) if isinstance(sandbox, str) else sandbox
        if not hasattr(self.sandbox, "run"):
            raise TypeError(f"sandbox must be a name or a Sandbox with .run(), got {type(sandbox).__name__}")
        self.limits = limits or Limits(timeout_s=5, memory_mb=256, max_output_bytes=1 << 16, max_processes=16)
        if max_output_chars < 1:
            raise ValueError(f"max_output_chars must be >= 1, got {max_output_chars}")
        self.max_output_chars = int(max_output_chars)

    def run(self, code: str) -> ToolResult:  # type: ignore[override]
        """Run ``code``; its stdout (and, when it failed, the end of its stderr), truncated."""
        start = time.monotonic()
        result = self.sandbox.run(code, limits=self.limits)
        elapsed = time.monotonic() - start
        if result.status == "sandbox_error":  # the check is broken, not the model's code: the episode is ERROR
            raise RuntimeError(f"python tool: the sandbox failed: {result.stderr.strip()[-300:]}")
        out = result.stdout
        status = "ok"
        if result.status == "timeout":
            status, note = "timeout", f"timed out after {self.limits.timeout_s:g} s"
        elif result.status == "memory_limit":
            status, note = "error", f"ran out of memory ({self.limits.memory_mb} MB)"
        elif result.status == "runtime_error":
            status = "error"
            err = result.stderr.strip()
            code_note = f"exit code {result.exit_code}" if (result.exit_code or 0) >= 0 else f"killed by signal {-result.exit_code}"
            note = err[-(self.max_output_chars // 2) :] if err else code_note
        else:
            note = ""
        if result.truncated:
            note = (note + "\n" if note else "") + "(output cut at the sandbox's limit)"
        budget = max(self.max_output_chars - len(note), self.max_output_chars // 2)
        content = _truncate(out, budget)
        if note:
            content = (content.rstrip("\n") + "\n" if content.strip() else "") + note
        return ToolResult(content if content.strip() else "(no output)", status, elapsed)


# =======================================================================================
# Reading calls from a model turn
# =======================================================================================

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_FENCE = re.compile(r"```[ \t]*(python3?|py)[ \t]*\n(.*?)```", re.S | re.I)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _check_arguments(tool: Tool, arguments: Mapping[str, Any]) -> str | None:
    """Why ``arguments`` do not fit ``tool.parameters`` (required, known names, basic JSON types), or None."""
    schema = tool.parameters or {}
    props = schema.get("properties") or {}
    missing = [k for k in schema.get("required") or [] if k not in arguments]
    if missing:
        return f"tool {tool.name!r} needs argument(s) {', '.join(map(repr, missing))}"
    if props and schema.get("additionalProperties") is not True:
        unknown = [k for k in arguments if k not in props]
        if unknown:
            return f"tool {tool.name!r} takes {', '.join(map(repr, props))}, not {', '.join(map(repr, unknown))}"
    for key, value in arguments.items():
        kind = (props.get(key) or {}).get("type")
        kinds = [kind] if isinstance(kind, str) else list(kind or [])
        allowed = tuple(t for k in kinds for t in _JSON_TYPES.get(k, ()))
        if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            return f"argument {key!r} of tool {tool.name!r} must be {' or '.join(kinds)}, got {type(value).__name__}"
    return None


def _read_call(body: str, tools: Mapping[str, Tool]) -> ToolCall:
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        return ToolCall("", {}, f'the tool call is not valid JSON ({exc.msg} at character {exc.pos}); write {{"name": ..., "arguments": {{...}}}}')
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        return ToolCall("", {}, 'a tool call must be a JSON object with a "name" and "arguments": {"name": ..., "arguments": {...}}')
    name = doc["name"]
    arguments = doc.get("arguments", doc.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ToolCall(name, {}, f'the "arguments" of {name!r} must be a JSON object, got a string that is not JSON')
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return ToolCall(name, {}, f'the "arguments" of {name!r} must be a JSON object, got {type(arguments).__name__}')
    if name not in tools:
        known = ", ".join(map(repr, tools)) or "none"
        return ToolCall(name, arguments, f"unknown tool {name!r}; the tools are: {known}")
    return ToolCall(name, arguments, _check_arguments(tools[name], arguments))


def parse_tool_calls(text: str, tools: Sequence[Tool] | Mapping[str, Tool]) -> list[ToolCall]:
    """The tool calls of one model turn, in order (see the module docstring); never raises.

    ``<tool_call>`` blocks win; without any, every fenced python block is a ``python`` call
    when a tool of that name is offered. A ``<tool_call>`` left open at the end of the turn
    (the model was cut off) is a call with an error.
    """
    by_name = dict(tools) if isinstance(tools, Mapping) else {t.name: t for t in tools}
    if not isinstance(text, str):
        return []
    calls = [_read_call(body.strip(), by_name) for body in _TOOL_CALL.findall(text)]
    tail = text[text.rfind("</tool_call>") + len("</tool_call>") :] if calls else text
    if "<tool_call>" in tail:
        calls.append(ToolCall("", {}, "a <tool_call> was opened but never closed with </tool_call>"))
    if calls or "python" not in by_name:
        return calls
    return [ToolCall("python", {"code": body}, _check_arguments(by_name["python"], {"code": body})) for _, body in _FENCE.findall(text)]
