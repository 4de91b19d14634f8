"""Tools: reading calls from a model turn (never raising), and the python tool against the real sandbox.

Each hostile-code test attacks one property of ``PythonTool`` in the real bubblewrap sandbox:
whatever the model's code does, the call comes back as a result the model reads (never a
hang, never an exception), and the host is untouched.
"""

from __future__ import annotations

import os
import time

import pytest

from rlvr.environments.base import Task
from rlvr.environments.multiturn import ToolEnvironment
from rlvr.rewards import FunctionReward
from rlvr.sandboxes import Limits, get_sandbox
from rlvr.tools import PythonTool, Tool, ToolCall, ToolResult, parse_tool_calls


class Add(Tool):
    name = "add"
    description = "Add two integers."
    parameters = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }

    def run(self, a: int, b: int) -> ToolResult:
        return ToolResult(str(a + b))


class Echo(Tool):
    name = "python"
    parameters = {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}

    def run(self, code: str) -> ToolResult:
        return ToolResult(code)


TOOLS = [Add(), Echo()]

# (model turn, expected calls as (name, arguments, error substring or None)) -- shapes real models write
CASES = [
    ('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>', [("add", {"a": 2, "b": 3}, None)]),
    (
        'First <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 1}}\n</tool_call> then '
        '<tool_call>{"name": "add", "arguments": {"a": 5, "b": -2}}</tool_call>',
        [("add", {"a": 1, "b": 1}, None), ("add", {"a": 5, "b": -2}, None)],
    ),
    ('<tool_call>{"name": "add", "arguments": "{\\"a\\": 4, \\"b\\": 4}"}</tool_call>', [("add", {"a": 4, "b": 4}, None)]),
    ('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}</tool_call>', [("", {}, "not valid JSON")]),
    ('<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>', [("search", {"q": "x"}, "unknown tool 'search'")]),
    ('<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>', [("add", {"a": 2}, "needs argument(s) 'b'")]),
    ('<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3, "c": 1}}</tool_call>', [("add", {"a": 2, "b": 3, "c": 1}, "not 'c'")]),
    ('<tool_call>{"name": "add", "arguments": {"a": "2", "b": 3}}</tool_call>', [("add", {"a": "2", "b": 3}, "must be integer")]),
    ('<tool_call>{"name": "add", "arguments": {"a": true, "b": 3}}</tool_call>', [("add", {"a": True, "b": 3}, "must be integer")]),
    ('<tool_call>["add", 2, 3]</tool_call>', [("", {}, 'with a "name"')]),
    ('<tool_call>{"name": "add", "arguments": [2, 3]}</tool_call>', [("add", {}, "must be a JSON object")]),
    ('I will call it: <tool_call>{"name": "add", "arguments": {"a": 2,', [("", {}, "never closed")]),
    ("```python\nprint(6 * 7)\n```", [("python", {"code": "print(6 * 7)\n"}, None)]),
    ("```py\nx = 1\n```\nand\n```python3\nprint(2)\n```", [("python", {"code": "x = 1\n"}, None), ("python", {"code": "print(2)\n"}, None)]),
    ("```bash\nls\n```", []),
    ("The answer is \\boxed{5}.", []),
    ('```python\nprint(1)\n```\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', [("add", {"a": 1, "b": 2}, None)]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_parse_tool_calls(text, expected):
    calls = parse_tool_calls(text, TOOLS)
    assert [(c.name, dict(c.arguments)) for c in calls] == [(n, a) for n, a, _ in expected]
    for call, (_, _, error) in zip(calls, expected):
        if error is None:
            assert call.error is None, call.error
        else:
            assert call.error is not None and error in call.error, call.error


def test_fenced_python_is_a_call_only_when_a_python_tool_is_offered():
    assert parse_tool_calls("```python\nprint(1)\n```", [Add()]) == []
    assert parse_tool_calls(None, TOOLS) == []  # type: ignore[arg-type]


def test_tool_schema_is_what_chat_templates_render():
    assert Add().schema() == {
        "type": "function",
        "function": {"name": "add", "description": "Add two integers.", "parameters": Add.parameters},
    }
    with pytest.raises(ValueError, match="status"):
        ToolResult("x", "crashed")


class Calculator(ToolEnvironment):
    name = "calc"
    max_calls_per_turn = 2

    def __init__(self) -> None:
        self.tools = [Add()]

    def tasks(self, split="train"):
        return [Task([{"role": "user", "content": "2+3?"}], "5")]

    def reward(self):
        return FunctionReward(lambda s: float("5" in s.completion), name="five")


def test_tool_environment_answers_every_call_and_tells_the_model_what_was_wrong():
    env = Calculator()
    turn = (
        '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
        '<tool_call>{"name": "mul", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>'
    )
    reply = env.respond(env.tasks()[0], [{"role": "assistant", "content": turn}], None)
    assert [m["role"] for m in reply] == ["tool"] * 3
    assert reply[0]["content"] == "5" and reply[0]["status"] == "ok"
    assert reply[1]["content"].startswith("error: unknown tool 'mul'") and reply[1]["status"] == "error"
    assert "at most 2 tool calls" in reply[2]["content"] and reply[2]["status"] == "error"
    assert env.respond(env.tasks()[0], [{"role": "assistant", "content": "It is 5."}], None) is None
    assert env.tool_schemas() == [Add().schema()]
    assert env.respond_deadline_s() is None  # Add has no sandbox limits to add up


# =======================================================================================
# PythonTool in the real sandbox: one hostile property per test
# =======================================================================================

FAST = Limits(timeout_s=2, memory_mb=256, max_output_bytes=1 << 14, max_processes=16)


@pytest.fixture(scope="module")
def tool():
    return PythonTool("bubblewrap", FAST, max_output_chars=300)


def test_python_tool_runs_code_and_shows_output(tool):
    result = tool.run(code="print(sum(range(10)))")
    assert (result.content, result.status) == ("45\n", "ok") and result.elapsed_s > 0
    assert tool.run(code="x = 1").content == "(no output)"


def test_python_tool_shows_the_error_of_failing_code(tool):
    result = tool.run(code="print('before')\n1 / 0")
    assert result.status == "error"
    assert result.content.startswith("before\n") and "ZeroDivisionError" in result.content


def test_looping_code_is_a_timed_out_result_not_a_hang(tool):
    start = time.monotonic()
    result = tool.run(code="while True:\n    pass")
    assert result.status == "timeout" and "timed out after 2 s" in result.content
    assert time.monotonic() - start < 10


def test_flooding_code_is_truncated_for_the_model(tool):
    result = tool.run(code="import sys\nwhile True:\n    sys.stdout.write('x' * 10000)")
    assert len(result.content) < 500, len(result.content)
    assert "more characters not shown" in result.content and "cut at the sandbox's limit" in result.content


def test_code_has_no_network(tool):
    code = "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    print('CONNECTED')\nexcept OSError as e:\n    print('blocked', type(e).__name__)"
    result = tool.run(code=code)
    assert "CONNECTED" not in result.content and "blocked" in result.content


def test_code_cannot_read_host_files(tool, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    code = f"for p in ['{secret}', '/etc/shadow', '/root/.bashrc', '/proc/1/environ']:\n    try:\n        print(open(p).read()[:50])\n    except OSError as e:\n        print('no', p)"
    result = tool.run(code=code)
    assert "TOP-SECRET" not in result.content and result.content.count("no ") >= 3


def test_fork_bomb_ends_as_a_result_and_the_host_goes_on(tool):
    result = tool.run(code="import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert result.status in ("timeout", "error")
    assert tool.run(code="print('still here')").content == "still here\n"


def test_kill_minus_one_reaches_only_the_sandbox(tool):
    result = tool.run(code="import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('after')")
    assert result.status in ("ok", "error")
    os.kill(os.getpid(), 0)  # this process is alive
    assert tool.run(code="print(2)").content == "2\n"


def test_nothing_a_call_writes_survives_to_the_next_call(tool):
    tool.run(code="open('state.txt', 'w').write('left behind')")
    result = tool.run(code="import os\nprint(os.path.exists('state.txt'))")
    assert result.content == "False\n"


def test_a_broken_sandbox_raises_instead_of_answering(fake_dir):
    """A sandbox that cannot run is a failure of the check: the tool raises, so the episode is ERROR."""
    fake = fake_dir / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    broken = PythonTool(get_sandbox("bubblewrap", bwrap=str(fake)), FAST)
    with pytest.raises(RuntimeError, match="sandbox failed"):
        broken.run(code="print(1)")


def test_tool_call_arguments_reach_run():
    call = ToolCall("add", {"a": 1, "b": 2})
    assert Add().run(**call.arguments).content == "3"


@pytest.mark.docker
def test_python_tool_in_a_docker_container():
    """The same tool on the Docker backend: output, a loop told as a timeout, no network."""
    from test_sandbox_docker import _docker_sandbox

    box = _docker_sandbox()
    try:
        tool = PythonTool(box, FAST, max_output_chars=300)
        assert tool.run(code="print(6 * 7)").content == "42\n"
        looping = tool.run(code="while True:\n    pass")
        assert looping.status == "timeout" and "timed out after 2 s" in looping.content
        net = tool.run(code="import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    print('CONNECTED')\nexcept OSError:\n    print('blocked')")
        assert net.content == "blocked\n"
    finally:
        box.close()
