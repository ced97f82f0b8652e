"""Process pools with a hard per-item timeout (built on :mod:`pebble`).

Why processes and not threads/signals: sympy (used by math-verify) can spin for minutes
inside C code on adversarial inputs such as ``9^{9^{9^{9}}}``. A thread cannot be killed
and ``signal.alarm`` (math-verify's own mechanism) only works in the main thread of the
main interpreter and is not delivered while C code runs. A worker process can always be
killed; pebble does that when a task exceeds its timeout and starts a fresh worker.

Two entry points:

* :func:`map_with_timeout` -- batch scoring: ``fn(*args)`` for every tuple, in a pool of
  ``workers`` processes, results in input order.
* :func:`call_with_timeout` -- one call in a lazily created, module-level, single-worker
  pool that is reused across calls (no process start-up per call) and shut down at exit.

Semantics shared by both:

* the timeout clock of an item starts when a worker picks it up (queueing and
  unpickling of the function are not counted);
* a timed-out item yields ``on_timeout`` and logs a warning on logger ``repexp.parallel``;
* an exception raised by ``fn`` is never turned into ``on_timeout``: ``map_with_timeout``
  raises :class:`ItemError` (with ``.index``) chained to the original exception,
  ``call_with_timeout`` re-raises the original exception (remote traceback attached as
  ``__cause__``);
* a worker that dies (segfault, OOM kill) is reported as an error, not as a timeout;
* ``fn`` must be a picklable top-level function (importable by module path).

Start method (see :func:`mp_context`): ``REPEXP_MP_START=fork|forkserver|spawn`` if set;
else the platform default (pebble's default context; ``fork`` on Linux for the Python
versions we support) -- except that ``fork`` is replaced by ``forkserver`` when CUDA is
initialised in this process. With ``forkserver``/``spawn`` the function must be importable
and a ``__main__`` script must guard its entry point (``if __name__ == "__main__":``),
because the child re-imports ``__main__``. Calling from a non-main thread is fine: the
forked child contains only the forking thread and nothing here uses signals in the
parent (pebble forks replacement workers from its own manager thread anyway).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from typing import Any

from pebble import ProcessExpired, ProcessPool

logger = logging.getLogger("repexp.parallel")

__all__ = [
    "ItemError",
    "call_with_timeout",
    "cap_threads",
    "map_with_timeout",
    "mp_context",
    "shutdown_single_pool",
]

START_METHOD_ENV = "REPEXP_MP_START"

# Thread-count variables of the BLAS and OpenMP runtimes (the ones Snakemake's `shell` sets to a
# job's threads as well); read when a library is loaded, so they cover libraries loaded later.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


# --------------------------------------------------------------------------- threads


def cap_threads(threads: int | None) -> int | None:
    """Cap this process's compute threads at ``threads``, the job's (its rule's ``threads``).

    Every stage CLI calls this once, after its imports. It caps

    * every BLAS and OpenMP runtime already loaded (numpy's and scipy's OpenBLAS, torch's
      OpenMP/MKL) through :func:`threadpoolctl.threadpool_limits`;
    * torch's intra-op pool (``torch.set_num_threads``) when torch is imported;
    * libraries loaded later, and child processes, through the environment variables
      ``THREAD_ENV`` (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ...).

    Why: BLAS libraries start one thread per core by default. A job that shares the machine with
    others (always, in a workflow run) then has threads spinning against other processes: small
    BLAS calls slow down by 10-20x (benchmarks/README.md). ``None`` leaves every default as it is;
    returns ``threads``.
    """
    if threads is None:
        return None
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    threads = int(threads)
    for var in THREAD_ENV:
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # not used as a context: the limits stay for the process
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def start_cli(threads: int | None = None, *, torch: bool = False) -> None:
    """What every stage CLI does once its arguments are parsed: log at INFO with timestamps (the
    job's log file shows progress and timings), then cap its compute threads at the rule's
    (:func:`cap_threads`; ``None`` leaves them). ``torch``: import torch first, so that its
    intra-op pool is capped too."""
    import logging

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    if threads:
        if torch:
            import torch as _torch  # noqa: F401  (loaded before the cap)
        cap_threads(threads)


class ItemError(RuntimeError):
    """``fn`` failed (raised, or its worker died) on item ``index`` of a batch."""

    def __init__(self, index: int, error: BaseException):
        self.index = index
        self.error = error
        super().__init__(f"item {index} failed: {type(error).__name__}: {error}")


# --------------------------------------------------------------------------- context


def _cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # a broken torch install must not break scoring
        return False


def fork_is_safe() -> bool:
    """False when a CUDA context exists in this process (a forked child inherits a CUDA
    state it must never touch). Ordinary threads, Python or native (OpenMP, tokenizers),
    are not a reason to avoid fork here: the child only runs the scheduled function
    (sympy), like torch's DataLoader workers which fork by default on Linux."""
    return not _cuda_initialised()


def mp_context(start_method: str | None = None):
    """The multiprocessing context for a new pool (see the module docstring)."""
    method = start_method or os.environ.get(START_METHOD_ENV) or None
    if method:
        return multiprocessing.get_context(method)
    # allow_none=True: do not fix the global start method as a side effect
    default = (
        multiprocessing.get_start_method(allow_none=True)
        or multiprocessing.get_all_start_methods()[0]
    )
    if default != "fork" or fork_is_safe():
        return multiprocessing.get_context(default)
    logger.debug("CUDA is initialised: using forkserver instead of fork")
    return multiprocessing.get_context("forkserver")


def _worker_init() -> None:
    # pebble installs a Python-level SIGTERM handler in its workers; Python handlers only
    # run between bytecodes, so a worker stuck in C code (sympy big-int arithmetic) would
    # only die after pebble's SIGKILL grace period (3 s). Default action = die at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _new_pool(workers: int, start_method: str | None) -> ProcessPool:
    return ProcessPool(
        max_workers=workers, initializer=_worker_init, context=mp_context(start_method)
    )


def _is_pebble_timeout(err: BaseException) -> bool:
    # pebble's own TimeoutError is created in the parent; exceptions raised by ``fn`` in
    # the worker (including a TimeoutError of its own) carry a ``traceback`` attribute.
    return isinstance(err, TimeoutError) and not hasattr(err, "traceback")


# --------------------------------------------------------------------------- batch


def map_with_timeout(
    fn: Callable[..., Any],
    args_list: Sequence[tuple],
    *,
    timeout_s: float,
    workers: int = 2,
    on_timeout: Any = 0.0,
    desc: str | None = None,
    start_method: str | None = None,
) -> list:
    """``[fn(*args) for args in args_list]`` in ``workers`` processes, each call limited
    to ``timeout_s`` seconds (its worker is killed and the item yields ``on_timeout``).

    Results are in input order. An exception in ``fn`` (or a crashed worker) stops the
    pool and raises :class:`ItemError` naming the item index. ``desc`` enables a tqdm
    progress bar. ``start_method`` overrides :func:`mp_context`'s choice.
    """
    if timeout_s is None or timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    args_list = [tuple(a) for a in args_list]
    n = len(args_list)
    if n == 0:
        return []

    bar = None
    if desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc)

    results: list = [None] * n
    pool = _new_pool(min(workers, n), start_method)
    try:
        index_of = {}
        for i, args in enumerate(args_list):
            index_of[pool.schedule(fn, args=args, timeout=timeout_s)] = i
        n_timeouts = 0
        for fut in as_completed(index_of):
            i = index_of[fut]
            try:
                results[i] = fut.result()
            except TimeoutError as err:
                if not _is_pebble_timeout(err):
                    raise ItemError(i, err) from err
                n_timeouts += 1
                logger.warning(
                    "item %d timed out after %.1f s (worker killed); using %r",
                    i,
                    timeout_s,
                    on_timeout,
                )
                results[i] = on_timeout
            except ProcessExpired as err:
                raise ItemError(i, err) from err
            except Exception as err:
                raise ItemError(i, err) from err
            if bar is not None:
                bar.update(1)
                if n_timeouts:
                    bar.set_postfix(timeouts=n_timeouts, refresh=False)
    except BaseException:
        pool.stop()  # kill running workers; do not wait for the rest of the batch
        raise
    else:
        pool.close()
    finally:
        pool.join()
        if bar is not None:
            bar.close()
    return results


# --------------------------------------------------------------------------- single


_single_pool: ProcessPool | None = None
_single_lock = threading.Lock()
_atexit_registered = False


def _get_single_pool() -> ProcessPool:
    global _single_pool, _atexit_registered
    with _single_lock:
        if _single_pool is None or not _single_pool.active:
            if _single_pool is not None:  # broken pool (e.g. all workers died): replace
                _single_pool.stop()
                _single_pool.join(timeout=5)
            _single_pool = _new_pool(1, None)
            if not _atexit_registered:
                atexit.register(shutdown_single_pool)
                _atexit_registered = True
        return _single_pool


def shutdown_single_pool() -> None:
    """Stop the module-level pool of :func:`call_with_timeout` (registered atexit;
    a later call creates a new one)."""
    global _single_pool
    with _single_lock:
        pool, _single_pool = _single_pool, None
    if pool is not None:
        pool.stop()
        try:
            pool.join(timeout=5)
        except TimeoutError:
            logger.warning("single-call pool did not stop within 5 s")


def call_with_timeout(fn: Callable[..., Any], *args: Any, timeout_s: float, on_timeout: Any = 0.0):
    """``fn(*args)`` in the shared single-worker pool, killed after ``timeout_s`` seconds
    (then ``on_timeout`` is returned and a warning logged). Exceptions of ``fn`` are
    re-raised. Safe to call from any thread; concurrent calls are serialised on the one
    worker (the timeout clock starts when the worker picks the call up)."""
    if timeout_s is None or timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    fut = _get_single_pool().schedule(fn, args=args, timeout=timeout_s)
    try:
        return fut.result()
    except TimeoutError as err:
        if not _is_pebble_timeout(err):
            raise
        logger.warning(
            "%s timed out after %.1f s (worker killed); using %r",
            getattr(fn, "__qualname__", fn),
            timeout_s,
            on_timeout,
        )
        return on_timeout
