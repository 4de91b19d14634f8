"""The code verifier's trusted in-sandbox harness and its plain-data codec.

What runs where (the design and why the grade cannot be forged: :mod:`rlvr.verifiers.code`
and ``docs/code.md``):

- **Outside the sandbox**, the grader (:class:`rlvr.verifiers.code.CodeVerifier`) imports
  this module for the codec only (:func:`encode` each job). Importing it has no side
  effects: the statements that only belong in the sandbox run only when ``__name__`` is
  ``"__main__"`` or ``"cand"``.
- **Inside the sandbox**, this file's source is shipped as ``/sandbox/harness.py``, with its
  bytecode as ``harness.bin``; the sandbox's main program (``code._LOADER``) runs it as
  ``__main__``: the trusted *harness* (:func:`main`). It forks the *candidate* process,
  which runs :func:`serve`: it loads the model's program and answers calls. A fresh
  candidate after a test timed out is a new interpreter that runs this file again with
  ``__name__ == "cand"`` (:func:`spawn_candidate`).

So this module must import only the standard library and never ``rlvr``: the sandbox runs
the system Python with ``-S`` and has no rlvr installed. It must also stay valid for that
Python (no syntax newer than the sandbox's interpreter): when the bytecode's format does
not match, the loader compiles this source there. Keep start-up imports few and cheap: they
are paid by every graded program.
"""

import os
import sys

WORK = "/sandbox" if os.path.isdir("/sandbox") else os.getcwd()
if __name__ in ("__main__", "cand"):  # in the sandbox only: the grader's sys.path stays as it is
    # Never import from the writable work dir (the candidate could plant modules there).
    # This runs before every other import, the standard library's included.
    sys.path[:] = [p for p in sys.path if p and not os.path.realpath(p).startswith(os.path.realpath(WORK))]

import builtins  # noqa: E402 -- imported after the sys.path clean-up above, on purpose
import select  # noqa: E402
import time  # noqa: E402

# --- the plain-data codec ------------------------------------------------------------------
# Shared by the grader, the harness and the candidate process. It needs no imports beyond
# ``builtins`` (``json`` pulls in ``re`` and costs ~6 ms of interpreter start-up per
# program) and decodes only into exact built-in types.


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
    if t is type and getattr(builtins, x.__name__, None) is x:
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
        raise ValueError("malformed value: %s" % e) from e
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
            t = getattr(builtins, chunk, None)
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

# --- the harness (and the candidate's side: serve) ---------------------------------------

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


HARNESS_FILE = os.path.join(WORK, "harness.py")  # this file, as shipped into the sandbox
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
            raise HarnessError("test argument for %s: %s" % (name, e)) from e
        try:
            ensure_loaded()
            send(state["cand"][1], payload)
            reply = decode(recv(state["cand"][2], min(state["test_deadline"], hard_deadline)))
        except TimeoutError:
            kill_candidate()
            raise CandidateFailed("timed out") from None
        except (EOFError, OSError, ValueError):
            kill_candidate()
            raise CandidateFailed("program exited, crashed or answered garbage") from None
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
