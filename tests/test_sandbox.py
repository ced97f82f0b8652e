"""Tests for repexp.sandbox: verdicts, containment of hostile programs, extract_code.

Every hostile program below is bounded (at most 200 forks, finite loops with sleeps), so
that a broken sandbox cannot take the machine down; each test then checks that the program
failed for the expected reason (the runner's traceback reaches the debug log), and that no
process and no file is left behind.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import socket
import tempfile
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from repexp import sandbox
from repexp.sandbox import SandboxUnavailableError, extract_code, passes

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"
)
REPO = Path(__file__).resolve().parents[1]
HOST_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _procs_named(tag: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    if f.read().strip() == tag:
                        pids.append(int(name))
            except OSError:
                continue
    return pids


class Guard:
    """A unique token for one test, and the checks that nothing of it survived."""

    def __init__(self, scratch_parent: Path) -> None:
        self.token = uuid.uuid4().hex
        self.tag = "rx" + self.token[:13]  # /proc/PID/comm holds at most 15 characters
        self.scratch_parent = scratch_parent
        # Hostile programs start with this, so every process they make carries the tag.
        self.mark = f"open('/proc/self/comm', 'w').write({self.tag!r})\n"

    def assert_clean(self) -> None:
        deadline = time.monotonic() + 3.0
        while (left := _procs_named(self.tag)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:  # keep the host clean even when the assertion below fails
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        assert not left, f"sandboxed processes left behind: {left}"
        assert list(self.scratch_parent.iterdir()) == [], "scratch directory not removed"
        for d in HOST_TMP_DIRS:
            leaked = [p for p in glob.glob(f"{d}/*") if self.token in p]
            assert not leaked, f"files leaked to the host: {leaked}"


@pytest.fixture
def guard(tmp_path, monkeypatch) -> Guard:
    scratch_parent = tmp_path / "host-tmp"
    scratch_parent.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_parent))
    return Guard(scratch_parent)


@pytest.fixture
def sandbox_log(caplog):
    caplog.set_level(logging.DEBUG, logger="repexp.sandbox")
    return caplog


def _src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# ------------------------------------------------------------------------------ verdicts

ADD = "def add(a, b):\n    return a + b\n"
ADD_WRONG = "def add(a, b):\n    return a - b\n"
HUMANEVAL_TESTS = _src(
    """
    METADATA = {}

    def check(candidate):
        assert isinstance(candidate(2, 3), int)
        assert candidate(2, 3) == 5
        assert candidate(-1, 1) == 0

    check(add)
    """
)
MBPP_PLUS_TESTS = _src(
    """
    import numpy as np

    def is_floats(x) -> bool:
        if isinstance(x, float):
            return True
        if isinstance(x, (list, tuple)):
            return all(isinstance(i, float) for i in x)
        if isinstance(x, np.ndarray):
            return x.dtype == np.float64 or x.dtype == np.float32
        return False

    def assertion(out, exp, atol):
        if atol == 0 and is_floats(exp):
            atol = 1e-6
        if out != exp and atol != 0:
            assert np.allclose(out, exp, rtol=1e-07, atol=atol)
        else:
            assert out == exp, f"out: {out}, exp: {exp}"

    inputs = [[2, 3], [-1, 1], [0.5, 0.25]]
    results = [5, 0, 0.75]
    for i, (inp, exp) in enumerate(zip(inputs, results)):
        assertion(add(*inp), exp, 0)
    """
)


@needs_bwrap
def test_correct_program_passes():
    assert passes(ADD, "assert add(2, 3) == 5\n") is True


@needs_bwrap
def test_wrong_answer_fails():
    assert passes(ADD_WRONG, "assert add(2, 3) == 5\n") is False


@needs_bwrap
def test_syntax_errors_fail(sandbox_log):
    assert passes("def add(a, b)\n    return a + b\n", "assert add(2, 3) == 5\n") is False
    assert "SyntaxError" in sandbox_log.text
    assert passes(ADD, "assert add(2, 3) == 5 +\n") is False
    assert passes("x = '\0'\n", "pass\n") is False  # NUL byte: compile() raises ValueError


@needs_bwrap
def test_raising_tests_fail(sandbox_log):
    assert passes(ADD, "raise ValueError('boom')\n") is False
    assert "ValueError: boom" in sandbox_log.text
    assert passes(ADD, "add(1)\n") is False


@needs_bwrap
def test_humaneval_check_harness():
    assert passes(ADD, HUMANEVAL_TESTS) is True
    assert passes(ADD_WRONG, HUMANEVAL_TESTS) is False
    assert passes("def add(a, b):\n    return float(a + b)\n", HUMANEVAL_TESTS) is False


@needs_bwrap
def test_mbpp_plus_harness_with_numpy():
    assert passes(ADD, MBPP_PLUS_TESTS) is True
    assert passes(ADD_WRONG, MBPP_PLUS_TESTS) is False


@needs_bwrap
def test_namespace_module_name_and_environment():
    program = _src(
        """
        import os, sys
        NAME = __name__
        if __name__ == "__main__":
            raise SystemExit(1)
        def add(a, b):
            return a + b
        """
    )
    tests = _src(
        """
        assert NAME == "solution" and sys.modules["solution"].add is add
        assert os.getcwd() == "/sandbox"
        assert set(os.environ) <= {
            "PATH", "HOME", "TMPDIR", "LANG", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
            "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PWD",
        }, sorted(os.environ)
        assert os.environ["HOME"] == "/sandbox" and os.environ["PYTHONHASHSEED"] == "0"
        assert os.getuid() != 0
        with open("scratch.txt", "w") as f:
            f.write("the sandbox's own directory is writable")
        import tempfile
        with tempfile.TemporaryFile() as f:
            f.write(b"so is TMPDIR")
        """
    )
    assert passes(program, tests) is True


# ------------------------------------------------------------------- hostile programs


@needs_bwrap
def test_infinite_loop_times_out(guard):
    program = guard.mark + "while True:\n    pass\n"
    result: list[bool] = []
    start = time.monotonic()
    worker = threading.Thread(target=lambda: result.append(passes(program, "", timeout_s=2)))
    worker.start()
    seen = False  # the tagged process must be visible while it runs: the scan works
    while worker.is_alive() and not seen:
        seen = bool(_procs_named(guard.tag))
        time.sleep(0.02)
    worker.join()
    elapsed = time.monotonic() - start
    assert seen
    assert result == [False]
    assert elapsed < 2 + 5
    guard.assert_clean()


@needs_bwrap
def test_fork_storm_is_contained(guard, sandbox_log):
    program = guard.mark + _src(
        f"""
        import os, time
        children = []
        for _ in range(200):
            pid = os.fork()
            if pid == 0:
                try:
                    open("/proc/self/comm", "w").write({guard.tag!r})
                    time.sleep(30)
                finally:
                    os._exit(0)
            children.append(pid)
        """
    )
    assert passes(program, "assert len(children) == 200\n", timeout_s=10) is False
    assert "BlockingIOError" in sandbox_log.text  # fork() itself was refused
    guard.assert_clean()


@needs_bwrap
def test_memory_hog_fails(guard, sandbox_log):
    program = guard.mark + "data = bytearray(8 << 30)\n"
    assert passes(program, "assert len(data) == 8 << 30\n") is False
    assert "MemoryError" in sandbox_log.text
    guard.assert_clean()


@needs_bwrap
def test_writes_outside_the_sandbox_fail(guard, sandbox_log):
    sentinel = REPO / "tests" / f".sandbox-sentinel-{guard.token}"
    protected = [
        str(REPO / f"escape-{guard.token}"),
        f"/etc/escape-{guard.token}",
        f"/var/tmp/escape-{guard.token}",
        f"{os.path.expanduser('~')}/escape-{guard.token}",
        f"/usr/escape-{guard.token}",
    ]
    private = [f"/tmp/escape-{guard.token}", f"/dev/shm/escape-{guard.token}"]
    program = guard.mark + _src(
        f"""
        import os
        escaped, refused = [], []
        for path in {protected!r}:
            try:
                with open(path, "w") as f:
                    f.write("escaped")
                escaped.append(path)
            except OSError as e:
                refused.append((path, e.errno))
        for path in {private!r}:  # writable inside, but a private tmpfs
            with open(path, "w") as f:
                f.write("private")
        try:
            os.remove({str(sentinel)!r})
            escaped.append("removed sentinel")
        except OSError:
            pass
        """
    )
    sentinel.write_text("keep me")
    try:
        assert passes(program, "assert escaped, refused\n") is False
        assert "AssertionError: [(" in sandbox_log.text  # every write was refused
        assert sentinel.read_text() == "keep me"
    finally:
        sentinel.unlink(missing_ok=True)
    for path in protected + private:
        assert not os.path.exists(path), path
    guard.assert_clean()


@needs_bwrap
def test_host_home_is_hidden(guard):
    home = os.path.realpath(os.path.expanduser("~"))
    entries = set(os.listdir(home))
    # Only the directories holding the interpreter may show (bound back read-only).
    allowed = {
        Path(d).relative_to(home).parts[0]
        for d in sandbox._interpreter_dirs()
        if d.startswith(home + "/")
    }
    if not entries - allowed:
        pytest.skip(f"{home} holds nothing but the interpreter")
    program = guard.mark + _src(
        f"""
        import os
        try:
            seen = set(os.listdir({home!r}))
        except OSError:
            seen = set()
        """
    )
    assert passes(program, f"assert seen - {allowed!r}, seen\n") is False
    guard.assert_clean()


@needs_bwrap
def test_parent_environment_is_not_readable(guard, monkeypatch):
    secret = f"s3cr3t-{guard.token}"
    monkeypatch.setenv(f"REPEXP_TEST_SECRET_{guard.token[:8]}", secret)
    program = guard.mark + _src(
        f"""
        import glob, os
        SECRET = {secret!r}
        found = any(SECRET in v for v in os.environ.values())
        for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
            try:
                with open(path, "rb") as f:
                    found = found or SECRET.encode() in f.read()
            except OSError:
                pass
        """
    )
    tests = "assert found\n"
    namespace: dict = {}  # control: run in this (trusted) process, the program finds it
    exec(compile(program.replace(guard.mark, "") + tests, "control", "exec"), namespace)
    assert namespace["found"] is True
    assert passes(program, tests) is False
    guard.assert_clean()


@needs_bwrap
def test_network_is_unreachable(guard, sandbox_log):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        deadline = time.monotonic() + 30  # bounded: closes itself
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(2)
                    chunks = []
                    try:
                        while chunk := conn.recv(4096):
                            chunks.append(chunk)
                    except OSError:
                        pass
                    received.append(b"".join(chunks))
        finally:
            server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as control:
            control.sendall(b"control")
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert received == [b"control"]  # the server works from outside the sandbox

        program = guard.mark + _src(
            f"""
            import socket
            connected = False
            with socket.create_connection(("127.0.0.1", {port}), timeout=2) as s:
                s.sendall({guard.token!r}.encode())
                connected = True
            """
        )
        assert passes(program, "assert connected\n") is False
        assert "Network is unreachable" in sandbox_log.text or "refused" in sandbox_log.text
        time.sleep(0.2)
        assert received == [b"control"]
    finally:
        stop.set()
        thread.join(timeout=5)
    guard.assert_clean()


EARLY_EXITS = {
    "os._exit before tests": "import os\nos._exit(0)\n",
    "sys.exit before tests": "import sys\nsys.exit(0)\n",
    "SystemExit in tests": "",
    "atexit hook after failing test": "import atexit, os\natexit.register(os._exit, 0)\n",
    "thread exits 0 during tests": _src(
        """
        import os, threading, time
        threading.Thread(target=lambda: (time.sleep(0.3), os._exit(0)), daemon=True).start()
        """
    ),
}


@needs_bwrap
@pytest.mark.parametrize("name", sorted(EARLY_EXITS))
def test_early_exit_is_not_a_pass(name, guard):
    program = guard.mark + EARLY_EXITS[name] + ADD_WRONG
    tests = "import time\ntime.sleep(1)\nassert add(2, 3) == 5\n"
    if name == "SystemExit in tests":
        tests = "raise SystemExit(0)\nassert add(2, 3) == 5\n"
    assert passes(program, tests) is False
    guard.assert_clean()


HARNESS_TAMPERING = _src(
    """
    import builtins, os

    def check(candidate):
        return None

    def assertion(*args, **kwargs):
        return None

    builtins.isinstance = lambda *args: True
    builtins.AssertionError = type("AssertionError", (Exception,), {})
    builtins.exec = lambda *args, **kwargs: None
    builtins.compile = lambda *args, **kwargs: compile("pass", "x", "exec")
    os.write = lambda fd, data: len(data)
    os._exit = lambda status: None
    """
)


@needs_bwrap
def test_redefining_the_harness_does_not_help(guard):
    for tests in (HUMANEVAL_TESTS, MBPP_PLUS_TESTS):
        assert passes(guard.mark + HARNESS_TAMPERING + ADD_WRONG, tests) is False
        # the same tampering with a correct solution still passes: the runner is unaffected
        assert passes(guard.mark + HARNESS_TAMPERING + ADD, tests) is True
    guard.assert_clean()


@needs_bwrap
def test_huge_output_fails_fast(guard, sandbox_log):
    program = guard.mark + "for i in range(10**9):\n    print(i, 'x' * 64)\n"
    start = time.monotonic()
    assert passes(program, "", timeout_s=30) is False
    assert time.monotonic() - start < 10
    assert "File too large" in sandbox_log.text
    guard.assert_clean()


@needs_bwrap
@pytest.mark.parametrize(
    "program, reason",
    [
        ("with open('big', 'wb') as f:\n    f.write(bytes(16 << 20))\n", "File too large"),
        (
            "for i in range(400):\n    with open(f'f{i}', 'wb') as f:\n"
            "        f.write(bytes(512 << 10))\n",
            "No space left on device",
        ),
    ],
    ids=["one big file", "many files"],
)
def test_disk_filling_is_capped(program, reason, guard, sandbox_log):
    assert passes(guard.mark + program, "") is False
    assert reason in sandbox_log.text
    guard.assert_clean()


@needs_bwrap
def test_parallel_calls_are_independent(guard):
    # One call saturates its own process budget and holds it while a second call, started
    # at the same time, needs to fork: budgets are per call, so the second still passes.
    storm = guard.mark + _src(
        f"""
        import os, time
        held = []
        try:
            for _ in range(200):
                pid = os.fork()
                if pid == 0:
                    open("/proc/self/comm", "w").write({guard.tag!r})
                    time.sleep(30)
                    os._exit(0)
                held.append(pid)
        except OSError:
            time.sleep(3)
            raise
        """
    )
    forker = _src(
        """
        import os, time
        time.sleep(0.5)
        def fan_out(n):
            pids = [os.fork() or os._exit(7) for _ in range(n)]
            return sorted(os.waitpid(p, 0)[1] >> 8 for p in pids)
        """
    )
    jobs = [
        (storm, "assert len(held) == 200\n", False),
        (forker, "assert fan_out(8) == [7] * 8\n", True),
        (ADD, HUMANEVAL_TESTS, True),
        (ADD_WRONG, HUMANEVAL_TESTS, False),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(passes, p, t, timeout_s=10) for p, t, _ in jobs]
        results = [f.result() for f in futures]
    assert results == [expected for _, _, expected in jobs]
    guard.assert_clean()


# ----------------------------------------------------------------------- availability


def test_interpreter_under_a_hidden_or_private_dir_is_reachable(monkeypatch):
    """A clone (and its .venv) under /tmp: /tmp is private in the sandbox, so the venv is bound
    back, and the parents bwrap creates for it must be enterable by the unprivileged uid."""
    monkeypatch.setattr(sandbox, "_interpreter_dirs", lambda: ["/tmp/clone/repo/.venv"])
    args = sandbox._bwrap_args("/usr/bin/bwrap", "/usr/bin/setpriv", 1_900_000_123)
    text = " ".join(args)
    assert (
        "--perms 0755 --dir /tmp/clone --perms 0755 --dir /tmp/clone/repo --ro-bind "
        "/tmp/clone/repo/.venv /tmp/clone/repo/.venv" in text
    )
    assert text.index("--tmpfs /tmp") < text.index("--dir /tmp/clone")


def test_missing_bwrap_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(sandbox, "_selftest_ok", False)
    monkeypatch.setattr(sandbox.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap"):
        passes(ADD, "assert add(2, 3) == 5\n")


def test_invalid_limits_are_rejected():
    with pytest.raises(ValueError):
        passes(ADD, "", timeout_s=0)


# ------------------------------------------------------------------------ extract_code


def test_extract_code_python_fence():
    response = "Here is the solution:\n```python\ndef f():\n    return 1\n```\nHope it helps."
    assert extract_code(response) == "def f():\n    return 1\n"


def test_extract_code_plain_fence():
    assert extract_code("Sure.\n```\nx = 2\n```\n") == "x = 2\n"


def test_extract_code_last_block_wins():
    response = (
        "First try:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\n"
        "Final:\n```Python\nx = 3\ny = x\n```\nAnd in C:\n```c\nint x = 4;\n```\n"
    )
    assert extract_code(response) == "x = 3\ny = x\n"


def test_extract_code_without_fence_returns_everything():
    response = "def f(x):\n    return x * 2\n"
    assert extract_code(response) == response


def test_extract_code_unclosed_final_fence():
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1\n"
