"""Selection at the paper's scale: peak memory and time of ``python -m repexp.inference select``.

    .venv/bin/python benchmarks/bench_scale.py                 # 2 vs 8 questions, full orders
    .venv/bin/python benchmarks/bench_scale.py --threads 2     # 2 worker processes
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/bench_scale.py

Synthetic float32 feature shards at the paper's widths (hidden 3,584 of Qwen2.5-7B, N = 6,400
responses per question, one question per shard, 88 MiB each), written by the real feature-cache
writer (``repexp.features.write_cache``), with random correctness. The real CLI runs in a child
process over 2 and over 8 of them (projection to d = 512, 5 trials, full orders k = N), and its
peak memory (max RSS of the child) and wall time are measured. Then, in this process, the parts of
one question: reading its shard, projecting it, selecting.

Checks: the peak memory of 2 and of 8 questions agree within 10% (the selection holds one shard at a
time, not the pool); the seconds per question give MATH's per-job time at paper scale (5,000
questions) for 1, 8 and 16 worker processes (the job's threads), assuming the workers scale
linearly. Prints a table; not a test. Needs about 1 GB of disk (a temporary folder) and, on the
2-core machine, 5-10 minutes.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from repexp import memory
from repexp.models import cpu_capability_line

HIDDEN, N, PROJ, TRIALS = 3584, 6400, 512, 5
MATH_QUESTIONS = 5000


def write_shards(out: Path, n_questions: int) -> tuple[list[str], list[str]]:
    from repexp.atomic import write_parquet
    from repexp.features import write_cache

    rng = np.random.default_rng(0)
    manifests, scores = [], []
    for q in range(n_questions):
        rows = pd.DataFrame({"qid": f"q{q}", "sample": np.arange(N)})
        m = out / f"shard-{q}.json"
        write_cache(
            m,
            {"mean": rng.standard_normal((N, HIDDEN), dtype=np.float32)},
            rows,
            model="synthetic",
            dtype="float32",
            shard_name=m.stem,
        )
        write_parquet(
            rows.assign(correct=(rng.random(N) < 0.05).astype(float)),
            m.with_suffix(".scores.parquet"),
        )
        manifests.append(str(m))
        scores.append(str(m.with_suffix(".scores.parquet")))
    return manifests, scores


def run_cli(manifests, scores, prefix, threads, k_max) -> tuple[float, float, float]:
    """(peak RSS in MB, wall seconds, CPU seconds) of the select CLI in a child process. The peak is
    the largest of the CLI's processes (with workers: the main process or one worker)."""
    cmd = [
        sys.executable,
        "-m",
        "repexp.inference",
        "select",
        "--features",
        *manifests,
        "--scores",
        *scores,
        "--model",
        "synthetic",
        "--task",
        "t",
        "--sampler",
        "vanilla",
        "--proj-dim",
        str(PROJ),
        "--trials",
        str(TRIALS),
        "--k-max",
        k_max,
        "--threads",
        str(threads),
        "--out-prefix",
        str(prefix),
    ]
    t0 = time.perf_counter()
    got = memory.peak_rss(cmd)
    return got["maxrss"] / 2**20, time.perf_counter() - t0, got["cpu_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="the CLI's --threads (worker processes)")
    ap.add_argument("--small", type=int, default=2)
    ap.add_argument("--large", type=int, default=8)
    ap.add_argument("--k-max", default="all", help="order length (all = N, the paper's)")
    ap.add_argument("--dir", default=None, help="folder for the shards (default: a temporary one)")
    a = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from repexp.features import read_cache
    from repexp.parallel import cap_threads
    from repexp.select import first_picks, project, repexp_orders

    print(f"# {cpu_capability_line()}")
    print(
        f"# load average {os.getloadavg()[0]:.2f}; OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; hidden {HIDDEN}, N = {N} per question "
        f"(one question per shard), d = {PROJ}, {TRIALS} trials, k_max {a.k_max}, "
        f"--threads {a.threads}\n"
    )
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        manifests, scores = write_shards(tmp, a.large)
        print(
            f"wrote {a.large} shards in {time.perf_counter() - t0:.1f}s "
            f"({sum(os.path.getsize(Path(m).with_suffix('.safetensors')) for m in manifests) / 2**20:.0f} MiB)"  # noqa: E501
        )
        runs = {}
        for q in (a.small, a.large):
            runs[q] = run_cli(manifests[:q], scores[:q], tmp / f"sel{q}", a.threads, a.k_max)
        small, large = runs[a.small], runs[a.large]
        per_q_cli = (large[1] - small[1]) / (a.large - a.small)
        per_q_cpu = (large[2] - small[2]) / (a.large - a.small)

        cap_threads(1)  # the parts, one thread (a worker's setting)
        with threadpool_limits(1):
            t, c = time.perf_counter(), time.process_time()
            x, rows = read_cache(manifests[0], "mean")
            t_read, c_read = time.perf_counter() - t, time.process_time() - c
            project(x[:10], PROJ, 0)  # build the projection matrix once (as a worker does)
            t, c = time.perf_counter(), time.process_time()
            phi = project(x, PROJ, 0)
            t_proj, c_proj = time.perf_counter() - t, time.process_time() - c
            k = N if a.k_max == "all" else int(a.k_max)
            t, c = time.perf_counter(), time.process_time()
            repexp_orders(phi, k, first_picks(N, TRIALS, 0))
            t_sel, c_sel = time.perf_counter() - t, time.process_time() - c

    print(f"\n{'what':48s} {'value':>10s}  note")
    table = [
        (f"peak RSS, {a.small} questions (MB)", small[0], "max RSS of the CLI process"),
        (
            f"peak RSS, {a.large} questions (MB)",
            large[0],
            f"{large[0] / small[0]:.3f}x the {a.small}-question peak",
        ),
        (f"wall, {a.small} questions (s)", small[1], "CLI, start-up included"),
        (f"wall, {a.large} questions (s)", large[1], "CLI, start-up included"),
        (
            "CLI seconds per question (wall)",
            per_q_cli,
            f"(wall {a.large} - wall {a.small}) / {a.large - a.small}",
        ),
        (
            "CLI seconds per question (cpu)",
            per_q_cpu,
            "the same with CPU seconds (other jobs do not inflate them)",
        ),
        ("  read one shard (read_cache, checksum) (s wall)", t_read, f"cpu {c_read:.2f} s"),
        ("  project one question to d = 512 (s wall)", t_proj, f"cpu {c_proj:.2f} s"),
        (f"  select one question, {TRIALS} trials (s wall)", t_sel, f"cpu {c_sel:.2f} s"),
    ]
    for name, value, note in table:
        print(f"{name:48s} {value:10.2f}  {note}")
    ok = abs(large[0] - small[0]) <= 0.10 * small[0]
    print(
        f"\npeak memory {a.small} vs {a.large} questions: {small[0]:.0f} vs {large[0]:.0f} MB, "
        f"{100 * (large[0] / small[0] - 1):+.1f}% (target within 10%: {'met' if ok else 'MISSED'})"
    )
    if a.k_max == "all":
        print(
            f"MATH at paper scale ({MATH_QUESTIONS:,} questions x N = {N:,}), "
            "per select_pool job, from "
            f"the CLI's seconds per question (wall {per_q_cli:.1f} s, cpu {per_q_cpu:.1f} s) "
            "divided by "
            "the worker processes (--threads; linear scaling assumed beyond those measured):"
        )
        for w in (1, 8, 16):
            print(
                f"    {w:2d} worker(s): wall "
                f"{MATH_QUESTIONS * per_q_cli * a.threads / w / 3600:5.2f} h, "
                f"cpu-bound {MATH_QUESTIONS * per_q_cpu / w / 3600:5.2f} h"
            )
    print(
        "# peak RSS of this process: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()
