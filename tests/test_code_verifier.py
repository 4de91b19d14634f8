"""CodeVerifier against real sandboxes: controls that must pass, and every known reward hack scored 0.

Each hack is a real program that, under a naive harness (tests ``exec``-ed after the
candidate in one interpreter, "exit code 0 means pass"), would score full marks.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil

import pytest

from rlvr.registry import load_verifier
from rlvr.rewards import Reward, Sample, Status
from rlvr.sandboxes import Limits, get_sandbox
from rlvr.sandboxes.bubblewrap import BubblewrapSandbox
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
