"""CodeVerifier against real sandboxes: controls that must pass, and every known reward hack scored 0.

Each hack is a real program that, under a naive harness (tests ``exec``-ed after the
candidate in one interpreter, "exit code 0 means pass"), would score full marks.
"""

from __future__ import annotations

import ast
import collections
import importlib.util
import marshal
import math
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr.registry import load_verifier
from rlvr.rewards import Reward, Sample, Status
from rlvr.sandboxes import Limits, get_sandbox
from rlvr.sandboxes.bubblewrap import BubblewrapSandbox
from rlvr.verifiers import code, code_harness
from rlvr.verifiers.code import CodeVerifier, extract_program, split_test_names

LIMITS = Limits(timeout_s=15, memory_mb=256, max_output_bytes=1 << 16, max_processes=16)

ADD = {"style": "assert", "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add('a', 'b') == 'ab'"]}
HUMANEVAL = {
    "style": "humaneval",
    "entry_point": "total",
    "prompt": 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n',
    "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n    assert candidate(list(range(100))) == 4950\n",
}
STDIO = {"style": "stdio", "cases": [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "5 5\n", "stdout": "10"}]}


@pytest.fixture(scope="module", params=["bubblewrap", "docker"])
def verifier(request):
    if request.param == "bubblewrap":
        if shutil.which("bwrap") is None:
            pytest.skip("bubblewrap not installed: apt-get install -y bubblewrap")
        yield CodeVerifier(sandbox="bubblewrap", limits=LIMITS, test_timeout_s=2.0)
        return
    try:
        box = get_sandbox("docker", pool_size=2)
    except RuntimeError as exc:
        pytest.skip(f"no usable Docker engine: {exc}")
    yield CodeVerifier(sandbox=box, limits=LIMITS, test_timeout_s=2.0)
    box.close()


def score(verifier, completion, reference=ADD):
    (outcome,) = verifier.score([Sample("write add", completion, reference)])
    return outcome


# --- controls ----------------------------------------------------------------------------

CONTROLS = [
    # (completion, reference, expected score)
    ("```python\ndef add(a, b):\n    return a + b\n```", ADD, 1.0),
    ("Here you go:\n```py\ndef add(a, b):\n    return a + b\n```\nDone.", ADD, 1.0),
    ("def add(a, b):\n    return a + b", ADD, 1.0),
    ("```python\ndef add(a, b):\n    return 3\n```", ADD, 1 / 3),
    ("```python\ndef add(a, b) return\n```", ADD, 0.0),
    ("I cannot solve this.", ADD, 0.0),
    ("```python\ndef total(xs):\n    return sum(xs)\n```", HUMANEVAL, 1.0),
    ("    return sum(xs)\n", HUMANEVAL, 1.0),  # HumanEval-style body completion of the prompt
    ("```python\ndef total(xs: List[int]) -> int:\n    return len(xs)\n```", HUMANEVAL, 0.0),
    ("```python\na, b = map(int, input().split())\nprint(a + b)\n```", STDIO, 1.0),
    ("```python\nprint(3)\n```", STDIO, 0.5),
]


@pytest.mark.parametrize("completion, reference, expected", CONTROLS)
def test_controls(verifier, completion, reference, expected):
    outcome = score(verifier, completion, reference)
    assert outcome.status is Status.OK, outcome
    assert outcome.score == pytest.approx(expected), outcome
    assert outcome.metrics["tests_total"] == {"assert": 3, "humaneval": 1, "stdio": 2}[reference["style"]]


def test_partial_credit_counts_each_assert(verifier):
    outcome = score(verifier, "def add(a, b):\n    if a == 1: return 3\n    return 0")
    assert (outcome.score, outcome.metrics["tests_passed"]) == (pytest.approx(2 / 3), 2)
    assert outcome.reason.startswith("2/3 tests passed")


def test_stdlib_containers_and_setup_references(verifier):
    """Counter/namedtuple results cross as plain data; setup objects are passed by reference."""
    ref = {
        "style": "assert",
        "setup": "root = Node(1)\nroot.left = Node(2)",
        "tests": ["assert depth(root) == 2", "assert freq('aab') == {'a': 2, 'b': 1}", "assert math.isclose(half(1), 0.5)", "assert kind(int) == 'int'"],
    }
    program = (
        "import collections\n"
        "class Node:\n    def __init__(self, v): self.v, self.left, self.right = v, None, None\n"
        "def depth(n): return 0 if n is None else 1 + max(depth(n.left), depth(n.right))\n"
        "def freq(s): return collections.Counter(s)\n"
        "def half(x): return x / 2\n"
        "def kind(t): return t.__name__\n"
    )
    outcome = score(verifier, program, ref)
    assert outcome.score == 1.0, outcome


def test_one_infinite_loop_fails_only_its_test(verifier):
    program = "def add(a, b):\n    while a == -1:\n        pass\n    return a + b\n"
    outcome = score(verifier, program)
    assert outcome.status is Status.OK  # a looping program is the policy's failure, never TIMEOUT
    assert outcome.score == pytest.approx(2 / 3), outcome


# --- reward hacks: every one must score 0 ----------------------------------------------------

HACKS = {
    "sys_exit_before_tests": "import sys\nsys.exit(0)\ndef add(a, b): pass",
    "sys_exit_in_function": "import sys\ndef add(a, b):\n    sys.exit(0)",
    "os_exit": "import os\ndef add(a, b):\n    os._exit(0)",
    "os_exit_at_import": "import os\nos._exit(0)",
    "always_equal": "class Yes:\n    def __eq__(self, other): return True\n    def __ne__(self, other): return False\n    __hash__ = object.__hash__\ndef add(a, b): return Yes()",
    "always_equal_int_subclass": "class Yes(int):\n    def __eq__(self, other): return True\ndef add(a, b): return Yes(0)",
    "always_equal_str_subclass": "class Yes(str):\n    def __eq__(self, other): return True\ndef add(a, b): return Yes('')",
    "truthy_object": "class T:\n    def __bool__(self): return True\ndef add(a, b): return T()",
    "patch_assertion_error": "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\ndef add(a, b): return None",
    "patch_unittest": (
        "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\n"
        "unittest.TestCase.run = lambda self, result=None: result\ndef add(a, b): return None"
    ),
    "patch_pytest_report": (
        "import sys, types\nm = types.ModuleType('_pytest')\nm.reports = types.SimpleNamespace(TestReport=None)\n"
        "sys.modules['_pytest'] = m\nsys.modules['pytest'] = m\ndef add(a, b): return None"
    ),
    "excepthook_and_atexit": (
        "import sys, atexit, os\nsys.excepthook = lambda *a: None\natexit.register(lambda: os._exit(0))\n"
        "def add(a, b): raise AssertionError('x')"
    ),
    "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\ndef add(a, b): return 0",
    "kill_parent": "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n    os.kill(1, signal.SIGKILL)",
    "print_fake_results": (
        "import json, sys\n"
        "def add(a, b):\n"
        "    for i in range(3):\n"
        "        line = json.dumps({'kind': 'test', 'i': i, 'passed': True})\n"
        "        print(line); print('0' * 32, line); print('PASSED', i)\n"
        "        for fd in ('/proc/1/fd/1', '/proc/%d/fd/1' % os.getppid()):\n"
        "            try:\n"
        "                open(fd, 'w').write('ok ' + line + '\\n')\n"
        "            except OSError:\n"
        "                pass\n"
        "    os._exit(0)\n"
        "import os\n"
    ),
    "trace_the_caller": (
        "import sys\ndef add(a, b):\n"
        "    f = sys._getframe(1)\n"
        "    while f is not None:\n"
        "        f.f_globals['__builtins__'] = None\n"
        "        f = f.f_back\n"
        "    return None"
    ),
}


@pytest.mark.parametrize("name", sorted(HACKS))
def test_reward_hack_scores_zero(verifier, name):
    outcome = score(verifier, "```python\n" + HACKS[name] + "\n```")
    assert outcome.status is Status.OK, outcome  # graded, not excused as an error
    assert outcome.score == 0.0, f"{name}: {outcome}"


def test_reward_hack_humaneval_always_equal(verifier):
    program = "class Yes(list):\n    def __eq__(self, other): return True\ndef total(xs):\n    return Yes()"
    assert score(verifier, program, HUMANEVAL).score == 0.0


def test_tests_and_expected_values_are_unreadable(verifier):
    """The candidate hunts for the expected value (a fresh random number) everywhere it could be."""
    secret = random.Random(os.urandom(8)).randrange(10**14, 10**15)
    ref = {"style": "assert", "tests": [f"assert answer() == {secret}"], "setup": ""}
    program = r'''
import os, re, glob
def answer():
    found = []
    def scan(data):
        found.extend(int(m) for m in re.findall(rb"answer\(\) == (\d{15})(?!\d)", data))
    paths = glob.glob("/proc/[0-9]*/cmdline") + glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/fd/*")
    for root in ("/sandbox", "/tmp", "/dev/shm"):
        for dirpath, _, names in os.walk(root):
            paths += [os.path.join(dirpath, n) for n in names]
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
            scan(os.read(fd, 1 << 20)); os.close(fd)
        except OSError:
            pass
    import sys
    for module in list(sys.modules.values()):  # whatever the process that started us left in memory
        scan(repr(getattr(module, "__dict__", "")).encode())
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:  # our own memory included
        try:
            maps = open(f"/proc/{pid}/maps").read().splitlines()
            mem = open(f"/proc/{pid}/mem", "rb")
        except OSError:
            continue
        for line in maps:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            try:
                mem.seek(lo); scan(mem.read(min(hi - lo, 1 << 24)))
            except (OSError, ValueError, OverflowError):
                pass
    return found[0] if found else 0
'''
    outcome = score(verifier, program, ref)
    assert outcome.status is Status.OK, outcome
    assert outcome.score == 0.0, f"the candidate found the expected value: {outcome}"
    control = score(verifier, f"def answer():\n    return {secret}\n", ref)
    assert control.score == 1.0, control  # the hunt really is the only difference


# --- failures of the check itself are errors, never a 0 -------------------------------------


def test_broken_sandbox_is_error_not_zero(fake_dir):
    fake = fake_dir / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    verifier = CodeVerifier(sandbox=BubblewrapSandbox(bwrap=str(fake)))
    (outcome,) = verifier.score([Sample("p", "def add(a, b): return a + b", ADD)])
    assert outcome.status is Status.ERROR and outcome.score is None
    assert "namespace" in outcome.reason


@pytest.mark.parametrize(
    "reference, match",
    [(None, "style"), ({"style": "unit"}, "style"), ({"style": "assert", "tests": []}, "tests"), ({"style": "humaneval", "test": "x"}, "entry_point")],
)
def test_bad_reference_is_error(reference, match):
    (outcome,) = CodeVerifier().score([Sample("p", "x = 1", reference)])
    assert outcome.status is Status.ERROR and match in outcome.reason


def test_batch_order_and_registry():
    verifier = load_verifier("code", limits=LIMITS)
    assert isinstance(verifier, Reward) and verifier.name == "code"
    good, bad = "def add(a, b): return a + b", "def add(a, b): return 0"
    outcomes = verifier.score([Sample("p", c, ADD) for c in (good, bad, good, bad)])
    assert [o.score for o in outcomes] == [1.0, pytest.approx(1 / 3), 1.0, pytest.approx(1 / 3)]


# --- pure helpers ----------------------------------------------------------------------------

EXTRACT = [
    ("```python\nx = 1\n```", "x = 1\n"),
    ("```python\nx = 1\n```\ntext\n```python\nx = 2\n```", "x = 2\n"),
    ("```\nx = 3\n```", "x = 3\n"),
    ("```python\nx = 1\n```\n```bash\nls\n```", "x = 1\n"),
    ("x = 4", "x = 4"),
]


@pytest.mark.parametrize("completion, program", EXTRACT)
def test_extract_program(completion, program):
    assert extract_program(completion) == program


def test_test_names_splits_functions_refs_and_modules():
    funcs, refs, modules = split_test_names(
        ["assert math.isclose(area(2), 3.14)", "assert sorted(f(x) for x in xs) == [1]", "assert g(root, lambda y: y)"], setup="root = 1\nxs = [1]"
    )
    assert funcs == ["area", "f", "g"]
    assert refs == ["root", "xs"]
    assert modules == ["math"]


def test_bubblewrap_verifier_pickles_for_worker_processes():
    """``isolated(CodeVerifier())`` sends the verifier to a worker process; its warm pool stays behind."""
    verifier = CodeVerifier(limits=LIMITS)
    verifier.score([Sample("p", "def add(a, b): return a + b", ADD)])  # the warm pool now exists
    clone = pickle.loads(pickle.dumps(verifier))
    assert clone.score([Sample("p", "def add(a, b): return a + b", ADD)])[0].score == 1.0


# --- the harness module (standard library only: it runs inside the sandbox) -------------------

PLAIN = [
    None, True, False, 0, -1, 2**100, -(2**70), 1.5, -0.0, float("inf"), 1e-310, "", "héllo ✓\n:;", "\ud800",
    b"", b"\x00\xff:;", 1 + 2j, complex(-0.0, float("-inf")), [], (), (1,), set(), frozenset({"a", 1}), {},
    [1, [2, (3, "x")], {"k": (None,)}], {1: "a", "b": [b"c"], (1, 2): {3: frozenset({4})}}, {1, 2.5, "s", (1,)},
    int, str, bytes, frozenset, [[[[[]]]]],
]


def same(a, b):
    """Equal with exactly the same built-in types all the way down (True is not 1, 1.0 is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_harness_codec_round_trips_plain_data(value):
    text = code_harness.encode(value)
    assert type(text) is str
    assert same(code_harness.decode(text), value)


def test_harness_codec_plain_bases_handles_and_refuses_the_rest():
    h = code_harness
    assert math.isnan(h.decode(h.encode(float("nan"))))
    Point = collections.namedtuple("Point", "x y")
    for fancy, plain in [
        (bytearray(b"ab"), b"ab"),
        (collections.Counter("aab"), {"a": 2, "b": 1}),
        (collections.OrderedDict(a=1), {"a": 1}),
        (Point(1, 2), (1, 2)),
    ]:
        assert same(h.decode(h.encode(fancy)), plain)

    class Sneaky(int):  # an int subclass with an always-true __eq__ must not cross as data
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    with pytest.raises(TypeError, match="plain data"):
        h.encode(Sneaky(1))
    with pytest.raises(TypeError, match="plain data"):
        h.encode([object()])
    # In the candidate (a handles list), anything else stays behind as an opaque handle ...
    handles, obj = [], Sneaky(3)
    text = h.encode(["x", obj], handles)
    assert handles == [obj] and text.endswith("h0;")
    handle = h.decode(text)[1]
    assert type(handle) is h.Handle
    for probe in (lambda: handle == 3, lambda: bool(handle), lambda: list(handle), lambda: 3 in handle):
        with pytest.raises(TypeError):
            probe()
    assert h.decode(h.encode(handle), handles=handles) is obj  # ... that comes back to the candidate as itself
    tree = object()
    assert h.decode(h.encode(h.Ref("tree")), refs={"tree": tree}) is tree
    for bad in ("", "x", "i1;junk", "s5:abc", "l2:N", "yobject", "y5:print", "y4:Ref1", "h-1;", "r4:tree", "d1:N"):
        with pytest.raises(ValueError):
            h.decode(bad)
    deep = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(ValueError, match="deeply"):
        h.encode(deep)
    with pytest.raises(ValueError, match="deeply"):
        h.decode("l1:" * 300 + "N")


def test_grader_uses_the_harness_codec_and_ships_the_harness_module():
    assert code.encode is code_harness.encode
    source, pyc = code._harness_files()
    assert source == Path(code_harness.__file__).read_text(encoding="utf-8")
    assert pyc[:4] == importlib.util.MAGIC_NUMBER and len(pyc) > 16
    assert marshal.loads(pyc[16:]).co_filename == "harness.py"
    assert code._harness_files() is code._harness_files()  # read and compiled once


def test_harness_module_imports_only_the_standard_library():
    tree = ast.parse(Path(code_harness.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the harness runs alone in the sandbox"
            imported.add(node.module.split(".")[0])
    assert {"os", "sys", "select"} <= imported
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_importing_the_harness_module_has_no_side_effects():
    """Outside the sandbox (the grader) importing it must not clean sys.path or run anything."""
    check = "import sys; before = list(sys.path); import rlvr.verifiers.code_harness; assert sys.path == before, sys.path"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
