"""Benchmark of the issue-13 selectors (repexp.selectors): seconds per question at the paper's pool.

    .venv/bin/python benchmarks/bench_selectors.py            # N = 6400, d = 512 (2-3 minutes)
    .venv/bin/python benchmarks/bench_selectors.py --quick    # N = 1600
    .venv/bin/python benchmarks/bench_selectors.py --n 16     # the embedded default's pools
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_selectors.py

One full order (k = N) of one synthetic pool per selector, through ``run_selector`` (the context
restricted to the selector's inputs, the order checked), with the BLAS and OpenMP threads capped
(``repexp.parallel.cap_threads``, 1 by default). The pool: Gaussian float64 features (N × d),
texts of 150-400 words drawn from a Zipf vocabulary of 5,000 words, final answers from a geometric
distribution (10% without answer), summed log-probabilities and lengths, 5% correct. Prints a table;
not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from threadpoolctl import threadpool_info

from repexp.models import cpu_capability_line
from repexp.parallel import cap_threads
from repexp.selectors import SELECTORS, PoolContext, run_selector


def synthetic_pool(n: int, d: int, seed: int = 0) -> PoolContext:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    p = 1.0 / np.arange(1, 5001)
    p /= p.sum()
    lengths = rng.integers(150, 401, size=n)
    words = rng.choice(vocab, size=int(lengths.sum()), p=p)
    cuts = np.cumsum(lengths)[:-1]
    texts = [" ".join(w) for w in np.split(words, cuts)]
    answers = [None if rng.random() < 0.1 else str(int(v)) for v in rng.geometric(0.05, size=n)]
    return PoolContext(
        n=n,
        features=rng.standard_normal((n, d)),
        logprob_sum=-rng.gamma(2.0, 50.0, size=n),
        n_tokens=lengths,
        answers=answers,
        texts=texts,
        correct=rng.random(n) < 0.05,
    )


def blas_line() -> str:
    libs = [
        f"{i['internal_api']} {i.get('version') or ''} {i.get('architecture') or ''} "
        f"({i['num_threads']} thread(s))"
        for i in threadpool_info()
    ]
    return "; ".join(libs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 1600")
    ap.add_argument("--n", type=int, default=0, help="pool size N (overrides --quick)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (default 1)")
    ap.add_argument("--only", default="", help="comma-separated selector names (default: all)")
    args = ap.parse_args()

    cap_threads(args.threads)
    n, d = (args.n or (1600 if args.quick else 6400)), 512
    t0 = time.perf_counter()
    ctx = synthetic_pool(n, d)
    t_pool = time.perf_counter() - t0
    print(f"# {cpu_capability_line()}")
    print(
        f"# {platform.machine()}, {os.cpu_count()} CPUs; thread pools: {blas_line()}; "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(f"# one question: N = {n}, d = {d}, full orders; synthetic pool built in {t_pool:.1f} s")
    print("# wall = elapsed seconds, cpu = CPU seconds of this process\n")

    runs = [(name, None) for name in SELECTORS]
    runs.insert(runs.index(("kmeans_rr", None)) + 1, ("kmeans_rr", 10))
    only = {s for s in args.only.split(",") if s}
    print(f"{'selector':28s} {'k':>5s} {'wall s':>8s} {'cpu s':>8s}  inputs")
    for name, k in runs:
        if only and name not in only:
            continue
        rng = np.random.default_rng(0)
        wall, cpu = time.perf_counter(), time.process_time()
        order = run_selector(name, ctx, rng, k)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert order.shape == (n,)
        kk = "-" if k is None else str(k)
        if name == "kmeans_rr" and k is None:
            kk = f"{int(np.ceil(np.sqrt(n)))}*"
        print(
            f"{name:28s} {kk:>5s} {wall:8.3f} {cpu:8.3f}  "
            f"{', '.join(sorted(SELECTORS[name].needs)) or '-'}",
            flush=True,
        )
    print(
        "\n* k = None: ⌈√N⌉ clusters. k is ignored by every other selector (prefixes of its order)."
    )


if __name__ == "__main__":
    main()
