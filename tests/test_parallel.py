"""repexp.parallel: per-item process timeouts (pebble)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time

import pytest

from repexp import parallel
from repexp.parallel import ItemError, call_with_timeout, map_with_timeout

# ---- worker functions: top level so that they pickle by reference


def square_after(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def hang_on(x: int, bad: int) -> int:
    if x == bad:
        while True:  # pure-Python busy loop, never returns
            pass
    return x + 100


def hang_in_c(x: int, bad: int) -> int:
    if x == bad:
        # minutes inside OpenSSL with the GIL released: Python signal handlers (pebble's
        # SIGTERM handler) cannot run until it returns
        hashlib.pbkdf2_hmac("sha256", b"x", b"y", 10**9)
    return x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def own_timeout_error(x: int) -> int:
    raise TimeoutError("raised by fn itself, not a pebble timeout")


def pid() -> int:
    return os.getpid()


# ---- map_with_timeout


def test_map_results_in_input_order():
    # later items finish first: completion order != input order
    args = [(i, 0.05 * (5 - i)) for i in range(6)]
    assert map_with_timeout(square_after, args, timeout_s=10) == [0, 1, 4, 9, 16, 25]


def test_map_empty():
    assert map_with_timeout(square_after, [], timeout_s=1) == []


def test_map_timeout_only_hits_the_hanging_item(caplog):
    args = [(i, 2) for i in range(6)]
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="repexp.parallel"):
        out = map_with_timeout(hang_on, args, timeout_s=1.0, workers=2, on_timeout=-1)
    elapsed = time.monotonic() - t0
    assert out == [100, 101, -1, 103, 104, 105]
    assert elapsed < 1.0 + 5
    msgs = [r.getMessage() for r in caplog.records if r.name == "repexp.parallel"]
    assert len(msgs) == 1 and "item 2 " in msgs[0]


def test_map_timeout_kills_worker_stuck_in_c_code():
    t0 = time.monotonic()
    out = map_with_timeout(hang_in_c, [(0, 1), (1, 1), (2, 1)], timeout_s=1.0, on_timeout=None)
    assert out == [0, None, 2]
    # SIGTERM kills at once (worker initializer restores SIG_DFL); with pebble's Python-level
    # handler this took timeout + 3 s (its SIGKILL grace period)
    assert time.monotonic() - t0 < 1.0 + 2.5


def test_map_exception_propagates_with_index():
    with pytest.raises(ItemError) as info:
        map_with_timeout(fail_on, [(i, 3) for i in range(5)], timeout_s=10)
    assert info.value.index == 3
    assert "item 3" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    assert "bad item 3" in str(info.value.__cause__)


def test_map_timeouterror_raised_by_fn_is_an_error_not_a_timeout():
    with pytest.raises(ItemError) as info:
        map_with_timeout(own_timeout_error, [(0,)], timeout_s=10)
    assert info.value.index == 0
    assert isinstance(info.value.__cause__, TimeoutError)


def test_map_progress_bar(capsys):
    out = map_with_timeout(square_after, [(i, 0.0) for i in range(4)], timeout_s=10, desc="sq")
    assert out == [0, 1, 4, 9]
    assert "sq" in capsys.readouterr().err


def test_map_forkserver_start_method():
    out = map_with_timeout(
        hang_on, [(i, 1) for i in range(3)], timeout_s=1.0, start_method="forkserver"
    )
    assert out == [100, 0.0, 102]


def test_map_rejects_bad_arguments():
    with pytest.raises(ValueError):
        map_with_timeout(pid, [()], timeout_s=0)
    with pytest.raises(ValueError):
        map_with_timeout(pid, [()], timeout_s=1, workers=0)


# ---- start method


def test_mp_context_env_override(monkeypatch):
    monkeypatch.setenv(parallel.START_METHOD_ENV, "spawn")
    assert parallel.mp_context().get_start_method() == "spawn"
    assert parallel.mp_context("forkserver").get_start_method() == "forkserver"
    monkeypatch.delenv(parallel.START_METHOD_ENV)
    assert parallel.mp_context().get_start_method() in {"fork", "forkserver", "spawn"}


# ---- call_with_timeout


def test_call_reuses_one_worker_process():
    first = call_with_timeout(pid, timeout_s=10)
    second = call_with_timeout(pid, timeout_s=10)
    assert first == second != os.getpid()


def test_call_timeout_then_pool_recovers(caplog):
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="repexp.parallel"):
        assert call_with_timeout(hang_on, 1, 1, timeout_s=1.0, on_timeout="T") == "T"
    assert time.monotonic() - t0 < 1.0 + 5
    assert any("timed out" in r.getMessage() for r in caplog.records)
    assert call_with_timeout(hang_on, 2, 1, timeout_s=5) == 102  # fresh worker


def test_call_reraises_original_exception():
    with pytest.raises(ValueError, match="bad item 7"):
        call_with_timeout(fail_on, 7, 7, timeout_s=10)


def test_call_from_non_main_thread_with_timeout():
    out: dict = {}

    def run():
        try:
            out["ok"] = call_with_timeout(square_after, 3, 0.0, timeout_s=10)
            out["timeout"] = call_with_timeout(hang_in_c, 1, 1, timeout_s=1.0, on_timeout=0.0)
        except BaseException as e:  # surface into the main thread
            out["error"] = e

    t0 = time.monotonic()
    th = threading.Thread(target=run)
    th.start()
    th.join(timeout=30)
    assert not th.is_alive()
    assert "error" not in out, out.get("error")
    assert out == {"ok": 9, "timeout": 0.0}
    assert time.monotonic() - t0 < 1.0 + 5


def test_call_from_many_threads_concurrently():
    results = [None] * 8

    def run(i):
        results[i] = call_with_timeout(square_after, i, 0.0, timeout_s=10)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert results == [i * i for i in range(8)]


def test_shutdown_single_pool_then_new_pool():
    before = call_with_timeout(pid, timeout_s=10)
    parallel.shutdown_single_pool()
    after = call_with_timeout(pid, timeout_s=10)
    assert after != before


def test_mp_context_avoids_fork_when_cuda_is_initialised(monkeypatch):
    monkeypatch.delenv(parallel.START_METHOD_ENV, raising=False)
    monkeypatch.setattr(parallel, "_cuda_initialised", lambda: True)
    assert parallel.mp_context("fork").get_start_method() == "fork"  # explicit choice wins
    mp = parallel.multiprocessing
    default = mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]
    expected = "forkserver" if default == "fork" else default
    assert parallel.mp_context().get_start_method() == expected


# --------------------------------------------------------------------------- threads

CAP_SCRIPT = """
import json, os, sys
import numpy, scipy.linalg  # BLAS loaded before the cap
if sys.argv[1] == "torch-before":
    import torch
from repexp.parallel import cap_threads
cap_threads(1)
import torch  # loaded after the cap (torch-after): reads OMP_NUM_THREADS
from threadpoolctl import threadpool_info
print(json.dumps({"pools": {f"{i['internal_api']}:{i['filepath']}": i["num_threads"] \
for i in threadpool_info()},
                  "torch": torch.get_num_threads(), "env": os.environ.get("OPENBLAS_NUM_THREADS")}))
"""


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason="one core: every library defaults to 1 thread"
)
@pytest.mark.parametrize("order", ["torch-before", "torch-after"])
def test_cap_threads_caps_blas_openmp_and_torch(order):
    """1 thread on a machine of 2 or more cores (each library's default: one per core): every BLAS
    and OpenMP pool threadpoolctl sees (numpy's and scipy's OpenBLAS, torch's OpenMP), torch's
    intra-op pool, and the environment of later libraries and children. Run in a child process
    with the thread variables unset."""
    import json
    import subprocess
    import sys

    from repexp.parallel import THREAD_ENV

    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    out = subprocess.run(
        [sys.executable, "-c", CAP_SCRIPT, order],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    got = json.loads(out.stdout)
    assert got["torch"] == 1 and got["env"] == "1"
    assert any(k.startswith("openblas") for k in got["pools"]), (
        got
    )  # numpy's / scipy's BLAS was seen
    assert set(got["pools"].values()) == {1}, got
    uncapped = subprocess.run(
        [sys.executable, "-c", CAP_SCRIPT.replace("cap_threads(1)", "pass"), order],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    assert json.loads(uncapped.stdout)["torch"] > 1  # the check can fail: the default is more


def test_cap_threads_arguments():
    from repexp.parallel import cap_threads

    assert cap_threads(None) is None
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            cap_threads(bad)


# CLIs that compute with torch, BLAS or worker processes: their rules pass the job's threads
THREADED_CLIS = {
    ("repexp.pools", ""),
    ("repexp.features", ""),
    ("repexp.inference", "select"),
    ("repexp.inference", "overview"),
    ("repexp.tokenlevel", "run"),
    ("repexp.score", ""),
    ("repexp.rl.evaluate", "questions"),
}


def test_every_compute_rule_passes_its_threads():
    import re
    from pathlib import Path

    rules = Path(__file__).resolve().parents[1] / "workflow" / "rules"
    seen = set()
    for smk in rules.glob("*.smk"):
        for block in re.split(r"^rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":")[0]
            clis = set(re.findall(r"-m (repexp[\w.]*)(?: (\w+))?", block)) & THREADED_CLIS
            if clis or name == "rl_train":  # rl_train: `accelerate launch ... -m repexp.rl.train`
                assert re.search(r"--(threads|workers) \{threads\}", block), (
                    f"{smk.name}: rule {name}"
                )
                seen |= clis | {name}
    assert THREADED_CLIS | {"rl_train"} <= seen


def test_start_cli_logs_and_caps_like_every_stage_cli():
    """`start_cli(threads)`: INFO logging with timestamps, then `cap_threads`; run in a child so
    that the cap and the logging configuration stay there."""
    import subprocess
    import sys

    from repexp.parallel import THREAD_ENV

    code = (
        "import logging, os, sys\n"
        "from repexp.parallel import start_cli\n"
        "start_cli(int(sys.argv[1]) if sys.argv[1] != 'none' else None, torch=True)\n"
        "logging.getLogger('x').info('hello')\n"
        "print(os.environ.get('OMP_NUM_THREADS'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    for arg, want in (("1", "1 True"), ("none", "None False")):
        out = subprocess.run(
            [sys.executable, "-c", code, arg], capture_output=True, text=True, env=env, check=True
        )
        assert out.stdout.strip() == want, out
        assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ x INFO hello$", out.stderr.strip(), re.M), out
