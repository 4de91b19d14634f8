"""Docker sandbox: a warm pool of locked-down containers, restored after every run.

``DockerSandbox`` talks to a local engine through the Docker SDK (``import docker``). It
keeps ``pool_size`` containers started, each with a Python interpreter already up and
waiting on its stdin for one job. ``run`` attaches to one, sends the program, its files and
its stdin, and streams the output back (~40 ms, against ~0.6 s for ``docker run``). The
interpreter runs the job as PID 1's child and exits, which stops the container; a
background thread starts it again before anyone else gets it, so every process, the tmpfs
work directory, ``/tmp``, ``/dev/shm`` and the IPC namespace are new, and the root
filesystem is read-only: nothing a program did carries over. A container that fails to
start again is removed and replaced.

The default image, ``rlvr-python:3.11``, is built locally without a registry from the
host's Debian Python (``/usr/bin/python3.11``, its standard library and the shared
libraries it links) by ``python -m rlvr.sandboxes.docker build-image``.

Threat model -- what it covers:

- **Network**: ``network_mode="none"``: no interface but loopback.
- **Host files**: only the image's files (the Python runtime) on a read-only root; the work
  directory ``/sandbox`` and ``/tmp`` are size-capped tmpfs mounts. No host path and never
  the Docker socket is mounted.
- **Identity**: uid/gid 65534, ``cap_drop=["ALL"]``, ``no-new-privileges``.
- **Environment**: only ``PATH``, ``HOME``, ``LANG`` (plus Docker's ``HOSTNAME``); nothing of
  the host's environment.
- **Processes and resources**: the container's cgroup caps memory (``memory_mb``, no swap),
  processes (``pids_limit``) and CPU (``cpus``); rlimits cap file size, open files, address
  space; core dumps are off. At the deadline the whole container is killed, so daemons and
  signal-ignoring children die with it. ``kill(-1)`` reaches only the container.
- **Persistence**: between two runs the container is killed and restarted (see above);
  nothing written, and no process started, survives into another run.
- **Output**: stdout/stderr are read incrementally from the exec stream, each capped.

What it does NOT cover:

- Kernel exploits and container escapes through kernel bugs (runc shares the host
  kernel; use a gVisor ``runtime="runsc"`` if that is in scope: pass ``runtime=``).
- Whoever can reach the Docker socket is root on the host: the sandbox never mounts it,
  but the process that drives Docker must itself be trusted.
- CPU contention between containers and the host.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import secrets
import select
import struct
import subprocess
import sys
import tarfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence

from rlvr.sandboxes.base import ExecResult, Limits, check_relative_path
from rlvr.sandboxes.bubblewrap import classify_failure

__all__ = ["DockerSandbox", "build_image", "DEFAULT_IMAGE"]

DEFAULT_IMAGE = "rlvr-python:3.11"
WORK_DIR = "/sandbox"
UID = "65534:65534"
_START_HINT = (
    "start one with `dockerd --storage-driver vfs --iptables=false --bridge=none &` "
    "(or `.ci/start_docker.sh`), or use sandbox='bubblewrap'"
)

# PID 1 of each pool container: waits for one job on stdin (12-byte length + JSON header, then
# the program's stdin), writes the files, sets rlimits, writes a per-run token to stderr (a run
# whose stderr lacks it never reached the program: a sandbox error), runs the program in a
# forked child (no second interpreter start) fed its stdin through a pipe, then sends fetched
# files (O_NOFOLLOW, regular files only) and the cgroup's OOM verdict after a second token and
# exits with the program's status. The container stops with it.
_BOOT = r"""
import os, sys
import ctypes
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: the job (a harness's secrets) stays out of /proc/1/mem
def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            os._exit(125)
        buf += chunk
    return buf
import json, resource
job = json.loads(read_exact(int(read_exact(12))))
work = job["work"]
os.chdir(work)
for name, hexdata in job["files"].items():
    if os.path.dirname(name):
        os.makedirs(os.path.dirname(name), exist_ok=True)
    with open(name, "wb") as f:
        f.write(bytes.fromhex(hexdata))
for res, value in job["rlimits"]:
    resource.setrlimit(getattr(resource, res), (value, value))
os.write(2, job["token"].encode())
# The program's stdin follows the header on our stdin. The program is forked BEFORE any of it
# is read, and gets it through a pipe, so it never sits in the program's memory unread (a
# harness that reads secrets from stdin forks helpers first; this keeps that promise).
stdin_r, stdin_w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(stdin_r, 0)
    os.close(stdin_r)
    os.close(stdin_w)
    path = os.path.join(work, "main.py")
    sys.argv = [path]
    sys.path.insert(0, work)
    g = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    code = compile(open(path, "rb").read(), path, "exec")
    try:
        exec(code, g)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            sys.stderr.write(str(e.code) + "\n")
    except BaseException:
        import traceback
        traceback.print_exc()
        rc = 1
    else:
        rc = 0
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()  # wait for non-daemon threads, as a normal exit does
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(rc & 0xFF)
os.close(stdin_r)
left = job["stdin_len"]
try:
    while left > 0:
        chunk = os.read(0, min(left, 65536))
        if not chunk:
            break
        left -= len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(stdin_w, view):]
        del chunk, view
except OSError:
    pass  # the program closed its stdin or exited
os.close(stdin_w)
status = os.waitpid(pid, 0)[1]
out = {}
for name in job["fetch"]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        continue
    try:
        import stat
        if stat.S_ISREG(os.fstat(fd).st_mode):
            out[name] = os.read(fd, job["fetch_cap"]).hex()
    finally:
        os.close(fd)
oom = False
for path, key in (("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill "), ("/sys/fs/cgroup/memory.events", "oom_kill ")):
    try:
        for line in open(path):
            if line.startswith(key) and int(line.split()[1]) > 0:
                oom = True
    except (OSError, ValueError, IndexError):
        pass
os.write(2, (job["fetch_token"] + json.dumps({"files": out, "oom": oom})).encode())
os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass  # already gone


def _remove_labelled(client, label: str) -> None:
    try:
        for c in client.containers.list(all=True, filters={"label": f"rlvr.sandbox={label}"}):
            _remove(c)
    except Exception:
        pass  # the engine is gone; nothing left to remove


def _client():
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a dependency
        raise RuntimeError("the Docker SDK is missing: pip install docker, or use sandbox='bubblewrap'") from exc
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # the SDK raises many types for "no engine"
        raise RuntimeError(f"no Docker engine reachable ({type(exc).__name__}: {exc}); {_START_HINT}") from exc
    return client


class DockerSandbox:
    """Run untrusted Python in fresh containers from a warm pool (threat model: module docstring).

    Args:
        image: Image with ``python3`` on PATH. Default ``rlvr-python:3.11`` (build it with
            ``python -m rlvr.sandboxes.docker build-image``).
        pool_size: Containers kept started and idle (each ~10 MB of memory while waiting).
        cpus: CPU share of each container.
        work_dir_mb: Size of the ``/sandbox`` and ``/tmp`` tmpfs mounts.
        memory_mb: Container memory cap (cgroup); ``Limits.memory_mb`` also caps each
            process's address space.
        max_processes: The containers' pids cap (a cgroup: it holds for root and does not
            count other containers); a run with another ``Limits.max_processes`` updates it.
        runtime: OCI runtime (``"runsc"`` for gVisor), default the engine's.
        python: Interpreter inside the image.
    """

    name = "docker"

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        pool_size: int = 2,
        cpus: float = 1.0,
        work_dir_mb: int = 64,
        memory_mb: int = 512,
        max_processes: int = 64,
        runtime: str | None = None,
        python: str = "/usr/bin/python3",
    ) -> None:
        self.client = _client()
        import docker.errors

        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise RuntimeError(
                f"Docker image {image!r} not found; build rlvr's default with "
                f"`python -m rlvr.sandboxes.docker build-image --tag {DEFAULT_IMAGE}` (images cannot be pulled here)"
            ) from None
        self.image = image
        self.pool_size = max(1, int(pool_size))
        self.cpus = cpus
        self.work_dir_mb = int(work_dir_mb)
        self.memory_mb = int(memory_mb)
        self.max_processes = int(max_processes)
        self.runtime = runtime
        self.python = python
        self._label = f"rlvr-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        self._ready: queue.Queue = queue.Queue()
        self._dirty: queue.Queue = queue.Queue()
        self._closed = False
        self._workers = [threading.Thread(target=self._restore_loop, name="rlvr-docker-pool", daemon=True) for _ in range(self.pool_size)]
        for _ in range(self.pool_size):
            self._dirty.put(None)  # None: create a new container
        for t in self._workers:
            t.start()
        # At interpreter exit, remove whatever close() was not called for.
        self._finalizer = weakref.finalize(self, _remove_labelled, self.client, self._label)

    # -- the pool ---------------------------------------------------------------------------

    def _create(self):
        from docker.types import Ulimit

        kwargs = dict(
            image=self.image,
            command=[self.python, "-E", "-s", "-S", "-c", _BOOT],
            detach=True,
            stdin_open=True,
            user=UID,
            network_mode="none",
            read_only=True,
            tmpfs={
                WORK_DIR: f"size={self.work_dir_mb}m,uid=65534,gid=65534,exec",
                "/tmp": f"size={self.work_dir_mb}m,uid=65534,gid=65534",
            },
            working_dir=WORK_DIR,
            mem_limit=f"{self.memory_mb}m",
            memswap_limit=f"{self.memory_mb}m",
            pids_limit=self.max_processes,
            nano_cpus=int(self.cpus * 1e9),
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ulimits=[Ulimit(name="core", soft=0, hard=0), Ulimit(name="nofile", soft=256, hard=256)],
            environment={"PATH": "/usr/bin:/bin", "HOME": WORK_DIR, "LANG": "C.UTF-8"},
            labels={"rlvr.sandbox": self._label},
            hostname="sandbox",
            ipc_mode="private",
        )
        if self.runtime:
            kwargs["runtime"] = self.runtime
        return self.client.containers.run(**kwargs)

    def _restore_loop(self) -> None:
        """Turn used containers back into fresh ones: kill (every process, tmpfs, IPC go) and start again."""
        while True:
            container = self._dirty.get()
            if self._closed:
                if container is not None:
                    _remove(container)
                return
            try:
                if container is not None:
                    try:
                        container.kill()
                    except Exception:
                        pass  # it has already exited, as it does after every finished job
                    self.client.api.wait(container.id, timeout=30)
                    container.start()
                    container.reload()
                    if container.status != "running":
                        raise RuntimeError(f"container {container.short_id} did not restart ({container.status})")
                else:
                    container = self._create()
            except Exception as exc:
                if container is not None:
                    _remove(container)
                    self._dirty.put(None)  # replace it with a new one
                else:
                    self._ready.put(exc)
                    time.sleep(1.0)
                    self._dirty.put(None)
                continue
            if self._closed:
                _remove(container)
                return
            self._ready.put(container)

    def wait_until_ready(self, timeout_s: float = 60.0) -> bool:
        """Block until every pool container is started and idle; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._ready.qsize() >= self.pool_size:
                return True
            time.sleep(0.02)
        return False

    def _take(self, wait_s: float):
        item = self._ready.get(timeout=wait_s)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        """Stop the pool and remove every container of this sandbox."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._dirty.put(None)
        for t in self._workers:
            t.join(timeout=60)
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, Exception):
                _remove(item)
        self._finalizer()

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one run ---------------------------------------------------------------------------

    def run(
        self,
        program: str,
        *,
        stdin: str = "",
        files: Mapping[str, str | bytes] = {},
        limits: Limits = Limits(),
        fetch: Sequence[str] = (),
    ) -> ExecResult:
        """Run ``program`` in a warm container from the pool; see :class:`rlvr.sandboxes.Sandbox`."""
        start = time.monotonic()
        payload_files = {"main.py": program.encode().hex()}
        for name, content in files.items():
            payload_files[check_relative_path(name)] = (content.encode() if isinstance(content, str) else bytes(content)).hex()
        stdin_bytes = stdin.encode()
        job = {
            "work": WORK_DIR,
            "files": payload_files,
            "stdin_len": len(stdin_bytes),
            "token": secrets.token_hex(8),
            "fetch": [f"{WORK_DIR}/{check_relative_path(n)}" for n in fetch],
            "fetch_cap": limits.max_output_bytes,
            "fetch_token": secrets.token_hex(8),
            "rlimits": [
                ["RLIMIT_AS", limits.memory_mb << 20],
                ["RLIMIT_CPU", int(limits.timeout_s) + 2],
                ["RLIMIT_FSIZE", self.work_dir_mb << 20],
                ["RLIMIT_CORE", 0],
            ],
        }
        try:
            container = self._take(wait_s=max(30.0, limits.timeout_s))
        except queue.Empty:
            return ExecResult("sandbox_error", None, "", "no warm container became ready in time", False, time.monotonic() - start)
        except Exception as exc:
            return ExecResult("sandbox_error", None, "", f"could not start a container: {exc}", False, time.monotonic() - start)
        try:
            return self._attach_and_run(container, job, stdin_bytes, limits, start)
        finally:
            self._dirty.put(container)  # stopped and started again before it runs anything else

    def _attach_and_run(self, container, job: dict, stdin: bytes, limits: Limits, start: float) -> ExecResult:
        api = self.client.api
        if limits.max_processes != getattr(container, "_rlvr_pids", self.max_processes):
            try:
                url = api._url("/containers/{0}/update", container.id)
                api._raise_for_status(api._post_json(url, data={"PidsLimit": limits.max_processes}))
                container._rlvr_pids = limits.max_processes
            except Exception as exc:
                return ExecResult("sandbox_error", None, "", f"could not set the pids limit: {exc}", False, time.monotonic() - start)
        try:
            sock = api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        except Exception as exc:
            return ExecResult("sandbox_error", None, "", f"docker attach failed: {exc}", False, time.monotonic() - start)
        raw = getattr(sock, "_sock", sock)
        deadline = start + limits.timeout_s
        cap = limits.max_output_bytes
        token = job["token"].encode()
        fetch_token = job["fetch_token"].encode()
        tail_cap = (2 * cap + 4096) * len(job["fetch"]) + len(fetch_token) + 64
        out, err, err_tail = bytearray(), bytearray(), bytearray()
        truncated = False
        timed_out = False
        try:
            header = json.dumps(job).encode()
            raw.sendall(b"%12d" % len(header) + header + stdin)
            buf = bytearray()
            eof = False
            while not eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                if not select.select([raw], [], [], left)[0]:
                    continue
                chunk = raw.recv(65536)
                if not chunk:
                    eof = True
                buf += chunk
                while len(buf) >= 8:
                    kind, size = buf[0], struct.unpack(">I", bytes(buf[4:8]))[0]
                    if len(buf) < 8 + size:
                        break
                    body = bytes(buf[8 : 8 + size])
                    del buf[: 8 + size]
                    if kind == 2:
                        err_tail += body
                        del err_tail[:-tail_cap]
                    target, limit = (out, cap) if kind == 1 else (err, cap + len(token))
                    if kind not in (1, 2):
                        continue
                    room = limit - len(target)
                    if len(body) > room:
                        truncated = True
                        body = body[: max(0, room)]
                    target += body
        except OSError as exc:
            return ExecResult("sandbox_error", None, "", f"docker attach stream failed: {exc}", False, time.monotonic() - start)
        finally:
            try:
                raw.close()
            except OSError:
                pass
        if timed_out:
            try:
                container.kill()
            except Exception:
                pass
        stdout = out.decode("utf-8", "replace")
        started = bytes(err).startswith(token)
        err_bytes = bytes(err[len(token) :]) if started else bytes(err)
        # The trailer after the second token: fetched files and whether the cgroup OOM-killed.
        files: dict[str, bytes] = {}
        oom = False
        idx = err_tail.rfind(fetch_token)
        if idx >= 0:
            files, oom = _parse_trailer(bytes(err_tail[idx + len(fetch_token) :]))
        cut = err_bytes.rfind(fetch_token)
        if cut >= 0:
            err_bytes = err_bytes[:cut]
        stderr = err_bytes.decode("utf-8", "replace")
        if not started:
            reason = "the container did not start the program in time" if timed_out else f"sandbox boot failed: {stderr.strip()[-2000:]}"
            return ExecResult("sandbox_error", None, stdout, reason, truncated, time.monotonic() - start)
        if timed_out:
            return ExecResult("timeout", None, stdout, stderr, truncated, time.monotonic() - start, files)
        try:
            code = api.wait(container.id, timeout=max(5.0, deadline - time.monotonic()))["StatusCode"]
        except Exception as exc:
            try:
                container.kill()
            except Exception:
                pass
            return ExecResult("timeout", None, stdout, stderr, truncated, time.monotonic() - start, files) if time.monotonic() >= deadline else (
                ExecResult("sandbox_error", None, stdout, f"docker wait failed: {exc}", truncated, time.monotonic() - start)
            )
        wall = time.monotonic() - start
        if code > 128 and code - 128 < 65:
            code = -(code - 128)
        if code == 0:
            return ExecResult("ok", 0, stdout, stderr, truncated, wall, files)
        if code == -24:  # SIGXCPU: the CPU-seconds limit
            return ExecResult("timeout", code, stdout, stderr, truncated, wall, files)
        status = "memory_limit" if oom else classify_failure(code, stderr)
        return ExecResult(status, code, stdout, stderr, truncated, wall, files)

    def __repr__(self) -> str:
        return f"DockerSandbox(image={self.image!r}, pool_size={self.pool_size})"


def _parse_trailer(data: bytes) -> tuple[dict[str, bytes], bool]:
    prefix = WORK_DIR + "/"
    try:
        doc = json.loads(data.decode("utf-8", "replace"))
        files = {k[len(prefix) :]: bytes.fromhex(v) for k, v in doc["files"].items() if isinstance(v, str) and k.startswith(prefix)}
        return files, doc.get("oom") is True
    except (ValueError, AttributeError, KeyError, TypeError):
        return {}, False  # the program may scribble on its own stderr; it only spoils its own files


# -- the default image ----------------------------------------------------------------------


def _shared_libs(paths: Sequence[str]) -> set[str]:
    """Every shared library the given executables / extension modules load (via ldd)."""
    libs: set[str] = set()
    for path in paths:
        try:
            out = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in out.splitlines():
            parts = line.split()
            for p in parts:
                if p.startswith("/") and os.path.exists(p):
                    libs.add(p)
    return libs


def build_image(tag: str = DEFAULT_IMAGE, python: str = "/usr/bin/python3.11") -> str:
    """Build a minimal Python image from this host's files with ``docker import`` (no registry).

    The tarball holds ``python`` (a Debian-layout interpreter under /usr), its standard
    library without tests/IDLE/tkinter, the shared libraries it and its extension modules
    link, and the ``/bin``, ``/lib``, ``/lib64`` links. Returns the image id.
    """
    python = os.path.realpath(python)
    if not python.startswith("/usr/bin/"):
        raise RuntimeError(f"build_image needs a system interpreter under /usr/bin (apt-get install -y python3), got {python}")
    version = os.path.basename(python).replace("python", "")
    stdlib = f"/usr/lib/python{version}"
    if not os.path.isdir(stdlib):
        raise RuntimeError(f"standard library {stdlib} not found for {python}")
    skip = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages", "dist-packages", "config-" + version + "-x86_64-linux-gnu"}
    dynload = os.path.join(stdlib, "lib-dynload")
    exts = [os.path.join(dynload, f) for f in os.listdir(dynload) if f.endswith(".so")]
    libs = _shared_libs([python] + exts)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name.lstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)

        def add_link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name.lstrip("/"))
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)

        for d in ("/usr", "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/lib/x86_64-linux-gnu", "/sandbox", "/tmp", "/etc", "/proc", "/dev", "/sys"):
            add_dir(d)
        add_link("/bin", "usr/bin")
        add_link("/lib", "usr/lib")
        add_link("/lib64", "usr/lib64")
        tar.add(python, arcname=python.lstrip("/"))
        add_link("/usr/bin/python3", os.path.basename(python))
        tar.add(
            stdlib,
            arcname=stdlib.lstrip("/"),
            filter=lambda ti: None if os.path.basename(ti.name) in skip else ti,
        )
        added: set[str] = set()
        for lib in sorted(libs):
            # Store each library at the path the loader asked for (through /lib links it is /usr/lib...).
            real = os.path.realpath(lib)
            for target in {real, os.path.realpath(os.path.dirname(lib)) + "/" + os.path.basename(lib)}:
                if target in added:
                    continue
                added.add(target)
                if target == real:
                    tar.add(real, arcname=real.lstrip("/"))
                else:
                    add_link(target, os.path.relpath(real, os.path.dirname(target)))
        passwd = b"root:x:0:0::/:/nonexistent\nnobody:x:65534:65534::/sandbox:/nonexistent\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(passwd))
    client = _client()
    repo, _, tag_name = tag.partition(":")
    result = client.api.import_image_from_data(
        buf.getvalue(), repository=repo, tag=tag_name or "latest", changes=["USER 65534:65534", f"WORKDIR {WORK_DIR}", "ENV LANG=C.UTF-8"]
    )
    image = client.images.get(tag)
    check = client.containers.run(tag, [python, "-S", "-c", "import json, subprocess, resource; print('ok')"], remove=True, network_mode="none")
    if check.strip() != b"ok":
        raise RuntimeError(f"image {tag} was built but its python does not run: {check!r} ({result})")
    return image.id


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rlvr.sandboxes.docker build-image [--tag T] [--python P]``."""
    parser = argparse.ArgumentParser(prog="python -m rlvr.sandboxes.docker")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-image", help="build the default sandbox image from this host's Python (no registry needed)")
    b.add_argument("--tag", default=DEFAULT_IMAGE)
    b.add_argument("--python", default="/usr/bin/python3.11")
    args = parser.parse_args(argv)
    if args.cmd == "build-image":
        image_id = build_image(args.tag, args.python)
        print(f"built {args.tag} ({image_id[:19]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
