"""``CodeVerifier``: run a task's tests against a completion in a sandbox; grade outside it.

Score = fraction of tests that really ran and passed (``metrics``: ``tests_total``,
``tests_passed``). Three reference styles:

- ``{"style": "assert", "tests": ["assert f(1) == 2", ...], "setup": ""}`` (MBPP): each assert
  is one test.
- ``{"style": "humaneval", "test": "<defines check(candidate)>", "entry_point": "f",
  "prompt": "<optional code run before the program>"}``: ``check`` is one test.
- ``{"style": "stdio", "cases": [{"stdin": "...", "stdout": "..."}, ...]}``: each case is one
  test, compared outside the sandbox (trailing whitespace ignored).

How the grade stays unforgeable (assert and humaneval styles). Reward hacks seen in RL runs
(``sys.exit(0)`` before the tests, ``os._exit``, an ``__eq__`` that is always true,
monkeypatching ``assert``/unittest/pytest, reading the test file, killing the grader) all
rely on the tests running in the same interpreter as the candidate. Here they do not:

1. Inside the sandbox a trusted *harness* process starts, forks a *candidate* process at
   once (before it knows anything secret), makes itself non-dumpable (no ptrace, no
   ``/proc/<pid>/mem`` or ``/proc/<pid>/fd`` for same-uid processes) and only then reads the
   tests and a random nonce from its stdin pipe, to the end.
2. The candidate process closes stdin, execs the program, and answers calls: the harness
   runs the tests and every call of a candidate function is sent over a pipe as plain
   data; the return value comes back encoded as plain data (None, bool, int, float, str,
   bytes, complex, list, tuple, dict, set, frozenset) and is rebuilt with those exact built-in
   types. An object with a custom ``__eq__`` cannot cross: anything that is not plain data
   stays in the candidate as an opaque handle, which the tests can pass back to the
   candidate but not compare, test for truth or iterate. ``Counter``/``OrderedDict``/
   namedtuples cross as their plain base type.
3. Asserts and comparisons run in the harness, which no candidate code ever touches. The
   expected values never enter the sandbox's files or the candidate's memory.
4. The harness prints one line per test, prefixed with the nonce, to the grader. The
   candidate has no handle on that pipe; if it found one, it could not write a line the
   grader accepts without the nonce. A test without a result line (early exit, killed
   harness, timeout) counts as failed.

What a candidate can still do: compute the right answers (the point), see the arguments
its functions are called with, and make tests fail (kill the harness, exhaust limits).
Names that a test uses and the ``setup`` code binds (MBPP's trees) are passed to the
candidate's functions by reference: setup runs in the candidate process.

A program that fails, crashes, loops or exhausts memory gets an ``OK`` outcome with a low
score (never TIMEOUT: a policy must not escape a penalty by looping); a test that runs past
``test_timeout_s`` fails alone and the next test gets a fresh candidate process. A broken
sandbox or harness (no result header from the harness) is ``Status.ERROR``, never a 0.

Known limits: a test that checks how the candidate mutated its arguments sees the
harness's copies, not the candidate's; tests run with the standard library only (the
sandbox's ``python -S``).
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import marshal
import os
import re
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlvr.rewards import Outcome, Sample
from rlvr.sandboxes import ExecResult, Limits, Sandbox, get_sandbox

__all__ = ["CodeVerifier", "extract_program", "split_test_names"]

STYLES = ("assert", "humaneval", "stdio")

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
_PY_TAGS = ("", "python", "py", "python3", "py3")


def extract_program(completion: str) -> str:
    """The last fenced python (or untagged) code block of ``completion``, else the whole text."""
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(completion)]
    python_blocks = [body for tag, body in blocks if tag in _PY_TAGS]
    if python_blocks:
        return python_blocks[-1]
    if blocks:
        return blocks[-1][1]
    return completion


def _bound_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
    return names


def split_test_names(tests: Sequence[str], setup: str = "") -> tuple[list[str], list[str], list[str]]:
    """Split the free names of ``tests`` into (candidate functions, setup references, stdlib modules).

    A name a test reads that is not a builtin, not bound inside the test and not a standard
    library module is a candidate function (called across the sandbox boundary) unless
    ``setup`` binds it, in which case it is passed by reference. Raises SyntaxError on a
    test that does not parse.
    """
    setup_bound = _bound_names(ast.parse(setup)) if setup.strip() else set()
    free: set[str] = set()
    for test in tests:
        tree = ast.parse(test)
        local = _bound_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local:
                free.add(node.id)
    stdlib = set(getattr(sys, "stdlib_module_names", ()))
    modules = sorted(n for n in free if n in stdlib and n not in setup_bound)
    refs = sorted(n for n in free if n in setup_bound)
    funcs = sorted(n for n in free if n not in setup_bound and n not in stdlib and not hasattr(builtins, n))
    return funcs, refs, modules


class CodeVerifier:
    """Grade code completions by running the task's tests in a sandbox.

    Args:
        sandbox: ``"bubblewrap"`` (default), ``"docker"``, or a :class:`~rlvr.sandboxes.Sandbox`.
        limits: Limits of one sandbox run (one sample; one case for stdio).
        max_workers: Sandbox runs in parallel inside one ``score`` call.
        test_timeout_s: Seconds one assert (or HumanEval's ``check``) may take.
    """

    name = "code"

    def __init__(
        self,
        sandbox: str | Sandbox = "bubblewrap",
        limits: Limits | None = None,
        max_workers: int | None = None,
        test_timeout_s: float = 4.0,
    ) -> None:
        self.sandbox = get_sandbox(sandbox) if isinstance(sandbox, str) else sandbox
        if not hasattr(self.sandbox, "run"):
            raise TypeError(f"sandbox must be a name or a Sandbox with .run(), got {type(sandbox).__name__}")
        self.limits = limits or Limits(timeout_s=20, memory_mb=512, max_output_bytes=1 << 20, max_processes=32)
        self.max_workers = max_workers or max(1, os.cpu_count() or 1)
        if test_timeout_s <= 0:
            raise ValueError(f"test_timeout_s must be > 0, got {test_timeout_s}")
        self.test_timeout_s = float(test_timeout_s)

    def score(self, samples: Sequence[Sample]) -> list[Outcome]:
        """Score each sample's program against its reference tests, in parallel sandboxes."""
        jobs: list[tuple[int, Any]] = []
        prepared: list[Any] = []
        for i, sample in enumerate(samples):
            try:
                plan = self._plan(sample)
            except (ValueError, TypeError, SyntaxError) as exc:
                plan = Outcome.error(f"bad code reference: {type(exc).__name__}: {exc}")
            prepared.append(plan)
            if not isinstance(plan, Outcome):
                jobs.extend((i, run) for run in plan["runs"])
        start = time.monotonic()
        if len(jobs) <= 1 or self.max_workers == 1:  # no threads to start for one run
            results = [self.sandbox.run(**job[1]["call"]) for job in jobs]
        else:
            with ThreadPoolExecutor(min(self.max_workers, len(jobs))) as pool:
                results = list(pool.map(lambda job: self.sandbox.run(**job[1]["call"]), jobs))
        by_sample: dict[int, list[tuple[dict, ExecResult]]] = {}
        for (i, run), result in zip(jobs, results):
            by_sample.setdefault(i, []).append((run, result))
        outcomes = []
        for i, plan in enumerate(prepared):
            if isinstance(plan, Outcome):
                outcomes.append(plan)
                continue
            runs = by_sample.get(i, [])
            elapsed = sum(r.wall_s for _, r in runs) if runs else time.monotonic() - start
            outcomes.append(self._grade(plan, runs, elapsed))
        return outcomes

    # -- planning: what to run -----------------------------------------------------------------

    def _plan(self, sample: Sample) -> dict | Outcome:
        ref = sample.reference
        if not isinstance(ref, Mapping) or ref.get("style") not in STYLES:
            raise ValueError(f"reference must be a dict with 'style' in {STYLES}, got {ref!r:.120}")
        program = extract_program(sample.completion)
        style = ref["style"]
        if style == "stdio":
            cases = ref.get("cases")
            if not isinstance(cases, list) or not cases:
                raise ValueError("stdio reference needs a non-empty 'cases' list of {'stdin', 'stdout'}")
            runs = [
                {"case": j, "expected": str(c["stdout"]), "call": {"program": program, "stdin": str(c.get("stdin", "")), "limits": self.limits}}
                for j, c in enumerate(cases)
            ]
            return {"style": style, "total": len(cases), "runs": runs}
        nonce = secrets.token_hex(16)
        if style == "assert":
            tests = ref.get("tests")
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
                raise ValueError("assert reference needs a non-empty 'tests' list of assert statements")
            setup = str(ref.get("setup") or "")
            funcs, refs, modules = split_test_names(tests, setup)
            entry = ref.get("entry_point")
            if entry and entry not in funcs and entry not in refs:
                funcs.append(entry)  # even when it shadows a builtin or a module name (MBPP's `sum`)
                modules = [m for m in modules if m != entry]
            job = {"nonce": nonce, "style": style, "tests": tests, "funcs": funcs, "refs": refs, "modules": modules}
            total = len(tests)
        else:
            for key in ("test", "entry_point"):
                if not isinstance(ref.get(key), str) or not ref[key]:
                    raise ValueError(f"humaneval reference needs a non-empty string {key!r}")
            prompt = str(ref.get("prompt") or "")
            job = {"nonce": nonce, "style": style, "test": ref["test"], "prompt": prompt, "entry_point": ref["entry_point"]}
            program = prompt + "\n" + program if prompt else program
            total = 1
        job["test_timeout_s"] = self.test_timeout_s
        job["deadline_s"] = max(0.5, self.limits.timeout_s - 0.5)
        setup_for_candidate = str(ref.get("setup") or "") if style == "assert" else ""  # runs in the candidate process
        call = {
            "program": _LOADER,
            "stdin": _codec["encode"](job),
            "files": {"candidate.py": program, "setup.py": setup_for_candidate, "harness.py": _HARNESS, "harness.bin": _HARNESS_PYC},
            "limits": self.limits,
        }
        return {"style": style, "total": total, "nonce": nonce, "runs": [{"call": call}]}

    # -- grading: outside the sandbox ----------------------------------------------------------

    def _grade(self, plan: dict, runs: list[tuple[dict, ExecResult]], elapsed: float) -> Outcome:
        total = plan["total"]
        broken = [r for _, r in runs if r.status == "sandbox_error"]
        if broken:
            return Outcome.error(f"sandbox failed: {broken[0].stderr.strip()[-500:]}", elapsed_s=elapsed)
        if plan["style"] == "stdio":
            passed = 0
            notes = []
            for run, r in runs:
                if r.status == "ok" and _normalize(r.stdout) == _normalize(run["expected"]):
                    passed += 1
                elif r.status != "ok":
                    notes.append(f"case {run['case']}: {r.status}")
            return self._outcome(passed, total, notes, elapsed)
        (_, r), = runs
        nonce = plan["nonce"]
        header = False
        passed_ids: set[int] = set()
        notes: list[str] = []
        harness_errors: list[str] = []
        for line in r.stdout.splitlines():
            if not line.startswith(nonce + " "):
                continue  # only the harness knows the nonce
            parts = line.split(" ", 4)
            if len(parts) != 5 or not parts[2].lstrip("-").isdigit():
                continue
            _, kind, index, passed, note = parts
            i = int(index)
            if kind == "ready":
                header = True
            elif kind == "harness_error":
                harness_errors.append(note)
            elif kind == "test" and 0 <= i < total:
                if passed == "1":
                    passed_ids.add(i)
                elif note:
                    notes.append(f"test {i}: {note}"[:200])
        if not header:
            if r.status == "timeout":
                return Outcome.error(f"code harness did not start within {self.limits.timeout_s:g} s", elapsed_s=elapsed)
            return Outcome.error(f"code harness failed to start ({r.status}): {r.stderr.strip()[-500:]}", elapsed_s=elapsed)
        if harness_errors:
            return Outcome.error(f"code harness could not run the tests: {harness_errors[0][:300]}", elapsed_s=elapsed)
        if r.status in ("timeout", "memory_limit"):
            notes.append(f"run ended by {r.status}")
        return self._outcome(len(passed_ids), total, notes, elapsed)

    @staticmethod
    def _outcome(passed: int, total: int, notes: list[str], elapsed: float) -> Outcome:
        reason = f"{passed}/{total} tests passed" + (f"; {notes[0]}" if notes else "")
        return Outcome.ok(passed / total, reason, metrics={"tests_total": float(total), "tests_passed": float(passed)}, elapsed_s=elapsed)

    def __repr__(self) -> str:
        return f"CodeVerifier(sandbox={self.sandbox!r}, limits={self.limits})"


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


# Plain-data codec shared by the grader, the harness and the candidate process. It needs no
# imports beyond ``builtins`` (``json`` pulls in ``re`` and costs ~6 ms of interpreter start-up
# per program) and decodes only into exact built-in types.
_CODEC = r'''
import builtins as _builtins_module


def encode(x, handles=None, depth=0):
    """Plain data as text. In the candidate (``handles`` is a list) anything else becomes an
    opaque handle that stays in the candidate process."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    t = type(x)
    if x is None:
        return "N"
    if t is bool:
        return "T" if x else "F"
    if t is int:
        return "i" + hex(x) + ";"
    if t is float:
        return "f" + x.hex() + ";"
    if t is str:
        return "s%d:%s" % (len(x), x)
    if t is list or t is tuple or t is set or t is frozenset:
        tag = "l" if t is list else "t" if t is tuple else "S" if t is set else "G"
        return tag + "%d:" % len(x) + "".join([encode(v, handles, depth + 1) for v in x])
    if t is dict:
        return "d%d:" % len(x) + "".join([encode(k, handles, depth + 1) + encode(v, handles, depth + 1) for k, v in x.items()])
    if t is bytes or t is bytearray:
        return "b%d:%s" % (2 * len(x), bytes(x).hex())
    if t is complex:
        return "c" + x.real.hex() + ";" + x.imag.hex() + ";"
    if t is type and getattr(_builtins_module, x.__name__, None) is x:
        return "y%d:%s" % (len(x.__name__), x.__name__)
    if t is Ref:
        return "r%d:%s" % (len(x.name), x.name)
    if t is Handle:
        return "h%d;" % x.n
    module = getattr(t, "__module__", "")
    if isinstance(x, dict) and module == "collections":
        return encode(dict(x), handles, depth)
    if isinstance(x, tuple) and hasattr(t, "_fields"):
        return encode(tuple(x), handles, depth)
    if handles is not None:
        handles.append(x)
        return "h%d;" % (len(handles) - 1)
    raise TypeError("cannot pass a %s across the sandbox boundary (plain data only)" % t.__name__)


def decode(text, refs=None, handles=None):
    """The inverse of ``encode``: exact built-in types only; ValueError on anything malformed."""
    try:
        value, end = _decode(text, 0, refs, handles, 0)
    except (IndexError, KeyError, TypeError, OverflowError) as e:
        raise ValueError("malformed value: %s" % e)
    if end != len(text):
        raise ValueError("trailing data")
    return value


def _field(text, i, stop):
    j = text.index(stop, i)
    return text[i:j], j + 1


def _decode(text, i, refs, handles, depth):
    if depth > 200:
        raise ValueError("value nested too deeply")
    tag = text[i]
    i += 1
    if tag == "N":
        return None, i
    if tag == "T":
        return True, i
    if tag == "F":
        return False, i
    if tag == "i":
        raw, i = _field(text, i, ";")
        return int(raw, 16), i
    if tag == "f":
        raw, i = _field(text, i, ";")
        return float.fromhex(raw), i
    if tag == "c":
        real, i = _field(text, i, ";")
        imag, i = _field(text, i, ";")
        return complex(float.fromhex(real), float.fromhex(imag)), i
    if tag == "h":
        raw, i = _field(text, i, ";")
        n = int(raw)
        if n < 0:
            raise ValueError("negative handle")
        return (handles[n] if handles is not None else Handle(n)), i
    raw, i = _field(text, i, ":")
    n = int(raw)
    if n < 0:
        raise ValueError("negative length")
    if tag in "sbyr":
        chunk = text[i:i + n]
        if len(chunk) != n:
            raise ValueError("short data")
        i += n
        if tag == "s":
            return chunk, i
        if tag == "b":
            return bytes.fromhex(chunk), i
        if tag == "y":
            t = getattr(_builtins_module, chunk, None)
            if type(t) is not type:
                raise ValueError("not a builtin type")
            return t, i
        if refs is None:
            raise ValueError("unexpected reference")
        return refs[chunk], i
    if tag in "ltSG":
        items = []
        for _ in range(n):
            v, i = _decode(text, i, refs, handles, depth + 1)
            items.append(v)
        return (items if tag == "l" else tuple(items) if tag == "t" else set(items) if tag == "S" else frozenset(items)), i
    if tag == "d":
        out = {}
        for _ in range(n):
            k, i = _decode(text, i, refs, handles, depth + 1)
            v, i = _decode(text, i, refs, handles, depth + 1)
            out[k] = v
        return out, i
    raise ValueError("unknown tag %r" % tag)


class Ref:
    """A name bound by the task's setup code, which runs in the candidate process."""

    def __init__(self, name):
        self.name = name


class Handle:
    """An object that is not plain data; it stays in the candidate process."""

    def __init__(self, n):
        self.n = n

    def _refuse(self, *args):
        raise TypeError("a value that is not plain data cannot be compared or inspected")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = __contains__ = _refuse
    __hash__ = object.__hash__

    def __repr__(self):
        return "<candidate object %d>" % self.n
'''

_codec: dict[str, Any] = {}
exec(compile(_CODEC, "rlvr-codec", "exec"), _codec)  # the grader encodes each job with the harness's own codec


# The harness: runs as the sandbox's main program. It is trusted code, but runs inside the
# sandbox so the tests (also dataset code) are confined too. See the module docstring.
_HARNESS = (
    r'''
import os, sys
WORK = "/sandbox" if os.path.isdir("/sandbox") else os.getcwd()
# Never import from the writable work dir (the candidate could plant modules there).
sys.path[:] = [p for p in sys.path if p and not os.path.realpath(p).startswith(os.path.realpath(WORK))]
import builtins, select, time
'''
    + _CODEC
    + r'''

SIGKILL = 9


def send(fd, text):
    data = text.encode("utf-8", "surrogatepass")
    data = b"%010d" % len(data) + data
    while data:
        n = os.write(fd, data)
        data = data[n:]


_pending = {}  # fd -> bytes read past the last message (a header and its body usually arrive in one read)


def recv_exact(fd, n, deadline):
    buf = _pending.pop(fd, b"")
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(max(n - len(buf), 1 << 16), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    if len(buf) > n:
        _pending[fd] = buf[n:]
        return buf[:n]
    return buf


def recv(fd, deadline=None, limit=1 << 26):
    head = recv_exact(fd, 10, deadline)
    if not head.isdigit() or int(head) > limit:
        raise ValueError("bad message header")
    return recv_exact(fd, int(head), deadline).decode("utf-8", "surrogatepass")


def serve(req, resp):
    """The candidate side: load the program, then answer calls. Untrusted from here on."""
    try:
        recv(req)  # "go": the harness has read its stdin to the end
        g = {"__name__": "solution", "__builtins__": builtins}
        try:
            with open(os.path.join(WORK, "candidate.py")) as f:
                exec(compile(f.read(), "solution.py", "exec"), g)
            with open(os.path.join(WORK, "setup.py")) as f:
                setup = f.read()
            if setup.strip():
                exec(compile(setup, "setup.py", "exec"), g)
            send(resp, encode(("loaded",)))
        except BaseException as e:
            send(resp, encode(("load_error", "%s: %s" % (type(e).__name__, str(e)[:200]))))
        handles = []
        while True:
            name, args, kwargs = decode(recv(req), g, handles)
            try:
                fn = g.get(name)
                if not callable(fn):
                    raise NameError("name %r is not defined by the program" % name)
                reply = encode(("ok", fn(*args, **kwargs)), handles)
            except BaseException as e:
                reply = encode(("error", type(e).__name__, str(e)[:200]))
            send(resp, reply if len(reply) < (1 << 25) else encode(("error", "ValueError", "result too large")))
    finally:
        os._exit(0)


def start_candidate():
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(req_w)
        os.close(resp_r)
        serve(req_r, resp_w)
    os.close(req_r)
    os.close(resp_w)
    return [pid, req_w, resp_r]


CANDIDATE_MAIN = "import sys; exec(compile(open(sys.argv[3]).read(), 'harness', 'exec'), {'__name__': 'cand'})"


def spawn_candidate():
    """A fresh candidate after a timeout: a new interpreter, not a fork (this process now holds secrets)."""
    import subprocess
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-E", "-s", "-S", "-c", CANDIDATE_MAIN, str(req_r), str(resp_w), HARNESS_FILE],
        pass_fds=(req_r, resp_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd=WORK,
    )
    os.close(req_r)
    os.close(resp_w)
    send(req_w, encode(("go",)))
    return [proc.pid, req_w, resp_r]


def make_non_dumpable():
    """PR_SET_DUMPABLE 0: same-uid processes lose ptrace and /proc/<pid>/{mem,fd,environ}."""
    try:
        import _ctypes  # the C module: ~0.1 ms, where `import ctypes` costs ~3 ms
        libc = _ctypes.dlopen(None)
        if _ctypes.call_function(_ctypes.dlsym(libc, "prctl"), (4, 0, 0, 0, 0)) == 0:
            return
    except (ImportError, AttributeError, OSError):
        pass
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")


class CandidateFailed(Exception):
    pass


class HarnessError(Exception):
    pass


def main():
    global HARNESS_FILE
    HARNESS_FILE = os.path.join(WORK, "harness.py")
    cand = start_candidate()  # before anything secret is read: the fork holds nothing of it
    make_non_dumpable()
    job = decode(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"))
    nonce = job["nonce"]
    out = sys.stdout

    def report(kind, i=-1, passed=False, note=""):
        out.write("%s %s %d %d %s\n" % (nonce, kind, i, int(passed), " ".join(str(note).split())[:300]))
        out.flush()

    hard_deadline = time.monotonic() + float(job["deadline_s"])
    per_test = float(job["test_timeout_s"])
    report("ready")
    send(cand[1], encode(("go",)))
    state = {"cand": cand, "loaded": None, "test_deadline": hard_deadline}

    def kill_candidate():
        pid = state["cand"][0]
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, SIGKILL)
            except OSError:
                pass
        for fd in state["cand"][1:]:
            _pending.pop(fd, None)  # the fd number may be reused by the next candidate's pipe
            try:
                os.close(fd)
            except OSError:
                pass
        state["cand"] = None
        state["loaded"] = None

    def ensure_loaded():
        if state["cand"] is None:
            state["cand"] = spawn_candidate()
        if state["loaded"] is None:
            state["loaded"] = decode(recv(state["cand"][2], min(state["test_deadline"], hard_deadline)))
        if type(state["loaded"]) is not tuple or state["loaded"][0] != "loaded":
            raise CandidateFailed("program failed to load: %s" % (state["loaded"][1] if len(state["loaded"]) > 1 else "?",))

    def call(name, args, kwargs):
        try:
            payload = encode((name, args, kwargs))
        except (TypeError, ValueError) as e:
            raise HarnessError("test argument for %s: %s" % (name, e))
        try:
            ensure_loaded()
            send(state["cand"][1], payload)
            reply = decode(recv(state["cand"][2], min(state["test_deadline"], hard_deadline)))
        except TimeoutError:
            kill_candidate()
            raise CandidateFailed("timed out")
        except (EOFError, OSError, ValueError):
            kill_candidate()
            raise CandidateFailed("program exited, crashed or answered garbage")
        if type(reply) is tuple and len(reply) == 2 and reply[0] == "ok":
            return reply[1]
        if type(reply) is tuple and len(reply) == 3 and reply[0] == "error":
            raise CandidateFailed("%s: %s" % (reply[1], reply[2]))
        raise CandidateFailed("malformed reply")

    def proxy(name):
        def fn(*args, **kwargs):
            return call(name, args, kwargs)
        fn.__name__ = name
        return fn

    def run_test(i, code_or_fn, g):
        state["test_deadline"] = min(time.monotonic() + per_test, hard_deadline)
        try:
            if callable(code_or_fn):
                code_or_fn()
            else:
                exec(code_or_fn, g)
        except HarnessError as e:
            report("harness_error", i, False, e)
            return
        except CandidateFailed as e:
            report("test", i, False, e)
            return
        except AssertionError:
            report("test", i, False, "assertion failed")
            return
        except BaseException as e:
            report("test", i, False, "%s: %s" % (type(e).__name__, str(e)[:100]))
            return
        report("test", i, True)

    try:
        g = {"__name__": "tests", "__builtins__": builtins}
        if job["style"] == "assert":
            for m in job["modules"]:
                g[m] = __import__(m)
            for name in job["refs"]:
                g[name] = Ref(name)
            for name in job["funcs"]:
                g[name] = proxy(name)
            codes = [compile(t, "test", "exec") for t in job["tests"]]
            for i, code in enumerate(codes):
                run_test(i, code, g)
        else:
            if job["prompt"]:
                exec(compile(job["prompt"], "prompt", "exec"), g)
            exec(compile(job["test"], "test", "exec"), g)
            entry = proxy(job["entry_point"])
            g[job["entry_point"]] = entry
            check = g["check"]
            run_test(0, lambda: check(entry), g)
    except (SyntaxError, KeyError, ImportError) as e:
        report("harness_error", -1, False, "%s: %s" % (type(e).__name__, e))
    if state["cand"] is not None:
        kill_candidate()
    report("done")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # every result line is out; skip the interpreter's teardown
elif __name__ == "cand":
    serve(int(sys.argv[1]), int(sys.argv[2]))
'''
)

# The sandbox's main program: runs the harness from its bytecode when the sandbox's Python
# has this Python's bytecode format (saves compiling ~400 lines per program), else from source.
_LOADER = """import sys, marshal
_m = sys.modules["_frozen_importlib_external"].MAGIC_NUMBER
with open("harness.bin", "rb") as f:
    _b = f.read()
_code = marshal.loads(_b[16:]) if _b[:4] == _m else compile(open("harness.py").read(), "harness.py", "exec")
del _m, _b, f
exec(_code, {"__name__": "__main__", "__builtins__": __builtins__})
"""
_HARNESS_PYC = importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(compile(_HARNESS, "harness.py", "exec"))
