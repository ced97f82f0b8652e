"""Run untrusted, model-written Python programs against their tests in a sandbox.

MBPP+/HumanEval answers are arbitrary code written by a language model. They are never
executed in the scoring process; :func:`passes` runs each one in a short-lived child
process that the operating system confines with `bubblewrap`_ (``bwrap``) and resource
limits. cgroups are deliberately not used (they are v1 and not delegated on our machines).

Threat model
------------
The code is not assumed to be malicious on purpose, but it is written by a model that is
being optimised for passing tests, so it may loop forever, fork, allocate without bound,
print without end, write or delete files, open sockets, read secrets from the environment
or from the home directory, exit early with status 0, or tamper with the test harness.
None of this may affect the host or the score of another program. Kernel exploits are
out of scope.

What the OS contains
--------------------
* **Namespaces** (``bwrap``): new mount, pid, network, ipc, uts and cgroup namespaces.
  The network namespace has only a down loopback device, so no connection can be made,
  not even to ``127.0.0.1`` of the host. The new pid namespace with a fresh ``/proc``
  shows only the sandbox's own processes, and when its first process dies (or when
  ``bwrap`` dies: ``--die-with-parent``) the kernel kills every process in it, so nothing
  is ever left behind. ``--new-session`` keeps it away from our terminal.
* **Filesystem**: every top-level directory of the host is bind-mounted read-only, so the
  interpreter and the installed packages (numpy ...) are available but nothing can be
  changed. ``/proc`` and ``/dev`` are fresh and minimal; ``/root``, ``$HOME``, ``/run`` and
  ``/var/tmp`` are covered by empty read-only tmpfs (hiding keys, tokens, caches and
  sockets); the interpreter's own directories are bound back read-only when they live
  under one of those. The only writable places are three size-capped tmpfs that die
  with the sandbox: ``/sandbox`` (the working directory, ``$HOME`` and ``$TMPDIR``),
  ``/tmp`` and ``/dev/shm``. Nothing a program writes can reach the host disk.
* **Environment**: cleared; only ``PATH``, ``HOME``, ``TMPDIR``, ``LANG``,
  ``PYTHONHASHSEED=0``, ``PYTHONDONTWRITEBYTECODE=1`` and ``*_NUM_THREADS=1`` (so that
  numpy's BLAS does not start one thread per core against the process limit) are set.
  The parent's file descriptors are closed (``close_fds``), stdin is ``/dev/null``.
* **User**: when we are root, the program runs as a fresh unprivileged uid (one random uid
  per call from ``_UID_BASE`` onwards, with all capabilities and ``no_new_privs``):
  ``bwrap`` sets up the mounts as root and ``setpriv`` inside the sandbox drops to that uid
  just before the interpreter starts. This matters because the kernel does not enforce
  ``RLIMIT_NPROC`` for uid 0, and it keeps root-only files (mode 600/700) unreadable. A uid
  per call also gives each concurrent sandbox its own process budget. When we are not root,
  ``bwrap`` runs unprivileged in a new user namespace as our own uid.
* **Resource limits** (``setrlimit`` before ``exec``, inherited by every process of the
  sandbox):

  - ``RLIMIT_CPU`` = ceil(timeout_s) + 1 seconds of CPU per process;
  - ``RLIMIT_AS`` = ``memory_mb`` of address space per process (allocations fail with
    ``MemoryError``);
  - ``RLIMIT_NPROC`` = ``max_procs`` processes/threads for the sandbox's uid (also set by
    the runner inside the sandbox, where it counts only the sandbox's own processes);
    a fork storm gets ``BlockingIOError``;
  - ``RLIMIT_FSIZE`` = ``output_bytes``: stdout/stderr go to files in a private scratch
    directory on the host, so endless printing fails with ``OSError`` (EFBIG) once it
    reaches the cap (also the largest file a program may write in its tmpfs);
  - ``RLIMIT_NOFILE`` = 256 descriptors, ``RLIMIT_CORE`` = 0 (no core dumps).

  Without cgroups the memory cap is per process, so the worst case for one call is
  ``max_procs * memory_mb`` plus the tmpfs sizes.
* **Wall clock**: after ``timeout_s`` the whole process group is killed with SIGKILL; the
  pid namespace then takes every sandboxed process with it (as root we additionally sweep
  for processes of the call's uid). The scratch directory is always deleted.

The verdict
-----------
The exit status alone does not decide the result, because a program can call
``os._exit(0)`` or ``sys.exit(0)`` before the tests run, or exit from an ``atexit`` hook
after a failing test. A small runner (``_RUNNER``) reads a random per-call nonce from a
private file descriptor (never from the environment or the command line, which are
readable through ``/proc``), compiles the program and the tests, executes the program and
then the tests in one module namespace (``__name__ == "solution"``) and, only when both
finished without raising anything (``SystemExit`` included), writes the nonce to a
dedicated pipe. :func:`passes` is True only when the exit status is 0 *and* exactly the
nonce arrived. The runner keeps its own references to ``exec``, ``compile``, ``os.write``
and ``os._exit``, so a program that monkeypatches ``builtins`` or ``os`` cannot skip the
tests, and test code defined after the program (``check``, ``assertion``) overrides any
definition of the program.

Residual risk: program and tests share one interpreter, so a program that *deliberately*
introspects the runner (``sys._getframe``, ``gc``, reading its own memory) could find the
nonce and forge a pass, and one returning objects whose ``__eq__`` always answers True can
fool ``==`` assertions. That is a reward hack to detect in the data, not an escape:
everything else (filesystem, network, processes, environment, memory, time) is contained
by the OS as described above.

.. _bubblewrap: https://github.com/containers/bubblewrap
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

__all__ = ["SandboxUnavailableError", "extract_code", "passes"]

log = logging.getLogger("repexp.sandbox")

# Fresh uids used when we are root: one random uid per call in [_UID_BASE, _UID_BASE + _UID_SPAN).
# Far above the ranges used for real users, systemd DynamicUser and container subuids.
_UID_BASE = 1_900_000_000
_UID_SPAN = 1 << 20
_NOFILE = 256
_TMPFS_BYTES = 64 << 20  # /sandbox and /tmp, each
_SHM_BYTES = 16 << 20  # /dev/shm
_HIDDEN_TMPFS_BYTES = 1 << 20  # empty read-only tmpfs over /root, $HOME, /run, /var/tmp
_LOG_TAIL_BYTES = 2048
_SELFTEST_TIMEOUT_S = 60.0
_SANDBOX_PATH = "/usr/bin:/bin"

# Executed inside the sandbox as `python -c _RUNNER JOB_FD RESULT_FD`. Everything the verdict
# depends on is bound to local names before the program runs.
_RUNNER = r"""
import os, sys
def _repexp_runner():
    def flush():  # keep the program's output for the debug log, also when it fails
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass

    import builtins, json, resource, traceback, types
    job_fd, result_fd = int(sys.argv[1]), int(sys.argv[2])
    with open(job_fd, "rb") as f:
        job = json.loads(f.read())
    os.set_inheritable(result_fd, False)
    nonce = job.pop("nonce").encode()
    nproc = job.pop("max_procs")
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    write, exit_, getpid, me = os.write, os._exit, os.getpid, os.getpid()
    compile_, exec_, print_exc = builtins.compile, builtins.exec, traceback.print_exc
    try:
        program = compile_(job.pop("program"), "program.py", "exec", dont_inherit=True)
        tests = compile_(job.pop("tests"), "tests.py", "exec", dont_inherit=True)
        module = types.ModuleType("solution")
        sys.modules["solution"] = module
        exec_(program, module.__dict__)
        exec_(tests, module.__dict__)
    except BaseException:
        try:
            print_exc()
        except BaseException:
            pass
        flush()
        exit_(1)
    flush()
    if getpid() != me:  # a forked child of the program is not the runner
        exit_(1)
    try:
        write(result_fd, nonce)
    except BaseException:
        exit_(1)
    exit_(0)
_repexp_runner()
"""


class SandboxUnavailableError(RuntimeError):
    """The sandbox itself cannot be set up (tool missing, namespaces disabled, ...)."""


def passes(
    program: str,
    tests: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    max_procs: int = 32,
    output_bytes: int = 1 << 20,
) -> bool:
    """Return True iff ``program`` and then ``tests`` run to completion in the sandbox.

    Both are executed in one module namespace (``__name__ == "solution"``), program first.
    Any exception (``SystemExit`` included), a syntax error, a timeout, a kill, an exceeded
    resource limit or an early exit gives False; bad programs never make this raise. Only a
    broken sandbox raises :class:`SandboxUnavailableError` (with the cause and the fix).
    Safe to call from several threads and processes at once. See the module docstring for
    what is contained and how.

    >>> passes("def add(a, b):\\n    return a + b\\n", "assert add(2, 3) == 5\\n")
    True
    >>> passes("def add(a, b):\\n    return a - b\\n", "assert add(2, 3) == 5\\n")
    False
    """
    if not (timeout_s > 0 and memory_mb > 0 and max_procs > 0 and output_bytes > 0):
        raise ValueError("timeout_s, memory_mb, max_procs and output_bytes must be positive")
    _ensure_available()
    return _run(program, tests, timeout_s, memory_mb, max_procs, output_bytes)


_FENCE = re.compile(r"^\s*```\s*([^\s`]*)")
_PYTHON_TAGS = {"", "python", "py", "python3"}


def extract_code(response: str) -> str:
    """Return the last fenced ```python (or plain ```) block of a model response.

    A response without any such fence is returned whole. A final block whose closing fence
    is missing (a truncated generation) runs to the end of the response.

    >>> extract_code("Here:\\n```python\\nx = 1\\n```\\nDone.")
    'x = 1\\n'
    """
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in response.splitlines():
        if current is None:
            m = _FENCE.match(line)
            if m:
                current = []
                blocks.append((m.group(1).lower(), current))
        elif line.strip().startswith("```") and line.strip().strip("`") == "":
            current = None
        else:
            current.append(line)
    code = [lines for tag, lines in blocks if tag in _PYTHON_TAGS]
    if not code:
        return response
    return "".join(line + "\n" for line in code[-1])


# ----------------------------------------------------------------------------- internals

_selftest_lock = threading.Lock()
_selftest_ok = False


def _tools() -> tuple[str, str | None]:
    bwrap = shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/bin")
    if bwrap is None:
        raise SandboxUnavailableError(
            "bubblewrap (bwrap) is not installed; model-written programs are only run inside "
            "it. Install bubblewrap: apt-get install bubblewrap (or dnf/conda install bubblewrap)"
        )
    if os.geteuid() != 0:
        return bwrap, None
    setpriv = shutil.which("setpriv") or shutil.which("setpriv", path="/usr/bin:/bin")
    if setpriv is None:
        raise SandboxUnavailableError(
            "running as root, the sandbox drops to an unprivileged uid with setpriv, which is "
            "missing: apt-get install util-linux (or run the scoring as a normal user)"
        )
    return bwrap, setpriv


def _ensure_available() -> None:
    """Check once per process that a trivial program passes; raise if the sandbox is broken."""
    global _selftest_ok
    if _selftest_ok:
        return
    with _selftest_lock:
        if _selftest_ok:
            return
        _tools()
        detail: list[str] = []
        if not _run("x = 1\n", "assert x == 1\n", _SELFTEST_TIMEOUT_S, 1024, 16, 1 << 20, detail):
            hint = (
                "unprivileged user namespaces must be allowed (sysctl "
                "kernel.unprivileged_userns_clone=1, "
                "kernel.apparmor_restrict_unprivileged_userns=0, "
                "user.max_user_namespaces>0)"
                if os.geteuid() != 0
                else "bwrap must be able to create namespaces and mounts (in a container: "
                "--privileged or CAP_SYS_ADMIN and no seccomp filter on unshare/mount)"
            )
            raise SandboxUnavailableError(
                f"the sandbox does not work: a trivial program failed ({'; '.join(detail)}). "
                f"Fix: {hint}; check by running `bwrap --ro-bind / / --unshare-all true`."
            )
        _selftest_ok = True


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _interpreter_dirs() -> list[str]:
    """Directories the interpreter needs: prefixes and every hop of the executable's symlinks."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    p = os.path.abspath(sys.executable)
    for _ in range(40):
        dirs.add(os.path.dirname(p))
        if not os.path.islink(p):
            break
        p = os.path.normpath(os.path.join(os.path.dirname(p), os.readlink(p)))
    return sorted({os.path.realpath(d) for d in dirs if d and os.path.isdir(d)})


def _blocked_ancestor(path: str) -> str | None:
    """First directory on the way to ``path`` that other users cannot enter, if any."""
    current = "/"
    for part in Path(path).parts[1:]:
        current = os.path.join(current, part)
        try:
            if not os.stat(current).st_mode & stat.S_IXOTH:
                return current
        except OSError:
            return None
    return None


def _bwrap_args(bwrap: str, setpriv: str | None, uid: int | None) -> list[str]:
    args = [bwrap]
    if setpriv is None:  # unprivileged: the user namespace is what makes bwrap work
        args += ["--unshare-all", "--unshare-user", "--disable-userns"]
    else:  # root: no user namespace, so that the uid we drop to is a real, unprivileged kuid
        args += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
        args += ["--unshare-cgroup-try"]
    args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    args += ["--dev", "/dev", "--proc", "/proc"]

    home = os.path.realpath(os.environ.get("HOME") or os.path.expanduser("~"))
    hidden = ["/root", "/run", "/var/tmp"]
    if home != "/" and os.path.isdir(home):
        hidden.append(home)
    writable = ["/sandbox", "/tmp"]
    needed = _interpreter_dirs()
    if setpriv is not None:  # the unprivileged uid must be able to walk to the interpreter
        for d in needed:
            blocked = _blocked_ancestor(d)
            if blocked is not None:
                if blocked == "/":
                    raise SandboxUnavailableError("/ is not traversable by other users")
                hidden.append(blocked)
    # Below the top level a mount point must already exist (and must not be a symlink,
    # which would redirect the mount, e.g. /var/tmp -> /tmp).
    hidden = sorted(
        {h for h in hidden if h.count("/") == 1 or (os.path.isdir(h) and not os.path.islink(h))}
    )
    hidden = [h for h in hidden if not any(h != o and _under(h, o) for o in hidden)]

    skip = {"/proc", "/dev", *writable} | {h for h in hidden if h.count("/") == 1}
    for entry in sorted(os.listdir("/")):
        path = "/" + entry
        if path in skip:
            continue
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
    for path in writable:
        args += ["--size", str(_TMPFS_BYTES), "--perms", "1777", "--tmpfs", path]
    args += ["--size", str(_SHM_BYTES), "--perms", "1777", "--tmpfs", "/dev/shm"]
    for path in hidden:
        args += ["--size", str(_HIDDEN_TMPFS_BYTES), "--perms", "0755", "--tmpfs", path]
    bound: list[str] = []
    made: set[str] = set()
    for d in needed:
        covering = [h for h in hidden + writable if _under(d, h)]
        if covering and not any(_under(d, b) for b in bound):
            # bwrap would create the missing parents (e.g. /tmp/<clone> for a venv inside a
            # clone under /tmp) with mode 0700, which the unprivileged uid cannot enter.
            parent, top = os.path.dirname(d), max(covering, key=len)
            parents = []
            while parent != top and _under(parent, top):
                parents.append(parent)
                parent = os.path.dirname(parent)
            for p in reversed(parents):
                if p not in made:
                    args += ["--perms", "0755", "--dir", p]
                    made.add(p)
            args += ["--ro-bind", d, d]
            bound.append(d)
    for path in hidden:
        args += ["--remount-ro", path]

    args += ["--chdir", "/sandbox", "--clearenv"]
    env = {
        "PATH": _SANDBOX_PATH,
        "HOME": "/sandbox",
        "TMPDIR": "/sandbox",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for key, value in env.items():
        args += ["--setenv", key, value]
    if setpriv is not None:
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        args += ["--", setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        args += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    # Not -I: it implies -E, which would ignore PYTHONHASHSEED. The environment is cleared
    # anyway; -s (no user site) and -P (no script/cwd on sys.path) give the rest of -I.
    args += ["--", sys.executable, "-s", "-P", "-B", "-c", _RUNNER]
    return args


def _pick_uid() -> int:
    for _ in range(8):
        uid = _UID_BASE + secrets.randbelow(_UID_SPAN)
        if not _pids_of_uid(uid):
            return uid
    return uid


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(name))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _sweep(uid: int) -> None:
    """Kill whatever still runs as the call's private uid (the pid namespace normally has)."""
    deadline = time.monotonic() + 5.0
    while True:
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if time.monotonic() > deadline:
            log.warning("sandbox uid %d still has processes %s", uid, pids)
            return
        time.sleep(0.01)


def _tail(f: BinaryIO) -> str:
    try:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _LOG_TAIL_BYTES))
        return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _run(
    program: str,
    tests: str,
    timeout_s: float,
    memory_mb: int,
    max_procs: int,
    output_bytes: int,
    detail: list[str] | None = None,
) -> bool:
    bwrap, setpriv = _tools()
    uid = _pick_uid() if setpriv is not None else None
    cpu = math.ceil(timeout_s) + 1
    limits = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20)),
        (resource.RLIMIT_FSIZE, (output_bytes, output_bytes)),
        (resource.RLIMIT_NOFILE, (_NOFILE, _NOFILE)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]
    if uid is not None:  # a fresh uid: the limit counts exactly this sandbox's processes
        limits.append((resource.RLIMIT_NPROC, (max_procs, max_procs)))

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        for which, value in limits:
            resource.setrlimit(which, value)

    nonce = secrets.token_hex(16).encode()
    job = {"nonce": nonce.decode(), "max_procs": max_procs, "program": program, "tests": tests}
    # Private to us (mode 700). Every file is unlinked as soon as it is open, so even if this
    # process is SIGKILLed (the sandbox then dies with it) at most an empty directory remains.
    scratch = Path(tempfile.mkdtemp(prefix="repexp-sandbox-"))
    proc: subprocess.Popen | None = None
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        files = {}
        for name in ("job.json", "stdout", "stderr"):
            files[name] = stack.enter_context(open(scratch / name, "w+b"))
            (scratch / name).unlink()
        files["job.json"].write(json.dumps(job).encode())
        files["job.json"].flush()
        job_fd = os.open(f"/proc/self/fd/{files['job.json'].fileno()}", os.O_RDONLY | os.O_CLOEXEC)
        stack.callback(os.close, job_fd)
        result_r, result_w = os.pipe()
        stack.callback(os.close, result_r)
        try:
            args = _bwrap_args(bwrap, setpriv, uid) + [str(job_fd), str(result_w)]
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=files["stdout"],
                stderr=files["stderr"],
                pass_fds=(job_fd, result_w),
                env={"PATH": _SANDBOX_PATH, "LANG": "C.UTF-8"},
                cwd="/",
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            os.close(result_w)  # only the sandbox may hold the write end
        try:
            timed_out = False
            try:
                returncode = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill(proc)
                returncode = proc.wait()
        finally:
            if proc.returncode is None:  # interrupted while waiting (KeyboardInterrupt ...)
                _kill(proc)
                proc.wait()
            if uid is not None:
                _sweep(uid)
        os.set_blocking(result_r, False)
        try:
            reported = os.read(result_r, 256)
        except BlockingIOError:
            reported = b""
        ok = returncode == 0 and not timed_out and reported == nonce
        stderr_tail = _tail(files["stderr"])
        if detail is not None:
            detail.append(f"exit status {returncode}, stderr: {stderr_tail.strip()[-500:]!r}")
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "sandbox: %s in %.2fs (exit %s%s, marker %s)\n--- stdout tail ---\n%s\n"
                "--- stderr tail ---\n%s",
                "pass" if ok else "fail",
                time.monotonic() - start,
                returncode,
                ", timed out" if timed_out else "",
                "ok" if reported == nonce else "missing",
                _tail(files["stdout"]),
                stderr_tail,
            )
        return ok


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a child that has not been reaped yet."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
