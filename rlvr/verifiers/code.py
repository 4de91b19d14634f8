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

The harness is :mod:`rlvr.verifiers.code_harness` (standard library only, with the plain-data
codec the grader also uses); its source and bytecode are shipped into each sandbox as
``harness.py`` and ``harness.bin`` and run there by ``_LOADER``.

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
import dataclasses
import functools
import importlib.util
import marshal
import os
import re
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

from rlvr.rewards import Outcome, Sample
from rlvr.sandboxes import ExecResult, Limits, Sandbox, get_sandbox
from rlvr.verifiers.code_harness import encode

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
            outcome = self._grade(plan, runs, elapsed)
            sandbox = {  # what the sandbox cost this sample, for a trainer's per-step totals
                "sandbox_runs": float(len(runs)),
                "sandbox_pool_misses": float(sum(r.pool_miss for _, r in runs)),
                "sandbox_wait_s": sum(r.wait_s for _, r in runs),
                "sandbox_run_s": sum(r.wall_s for _, r in runs),
            }
            outcomes.append(dataclasses.replace(outcome, metrics={**outcome.metrics, **sandbox}))
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
        harness_source, harness_pyc = _harness_files()
        call = {
            "program": _LOADER,
            "stdin": encode(job),  # the harness's own codec
            "files": {"candidate.py": program, "setup.py": setup_for_candidate, "harness.py": harness_source, "harness.bin": harness_pyc},
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


@functools.lru_cache(maxsize=None)
def _harness_files() -> tuple[str, bytes]:
    """The harness as shipped into every sandbox, read and compiled once per process:
    ``harness.py``, the source of :mod:`rlvr.verifiers.code_harness`, and ``harness.bin``, its
    bytecode (pyc layout: magic number, 12 unused bytes, marshalled code) for ``_LOADER``."""
    source = resources.files("rlvr.verifiers").joinpath("code_harness.py").read_text(encoding="utf-8")
    code = compile(source, "harness.py", "exec", dont_inherit=True)
    return source, importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code)
