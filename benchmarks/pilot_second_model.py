"""Pilot of the second real model (issue 13): Qwen2.5-Coder-0.5B-Instruct on the HumanEval stand-in.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pilot_second_model.py \\
        --model resources/models/qwen2.5-coder-0.5b-instruct --tasks TABLE.parquet --out DIR

``TABLE``: an ``mbppplus`` test table (``python -m repexp.tasks --task mbppplus --qids=...``).
With the project's own pool and scoring code (``repexp.pools.generate_shard``,
``repexp.score.score_pool``, the ``repexp.features`` CLI), on one thread:

1. speed: ``--speed-n`` responses (batch ``--speed-n``) to ``--speed-qid`` in float32 and in
   bfloat16: tokens/s, mean response length, seconds; then the feature cache of one of those
   pools (seconds per response);
2. pilot: ``--n`` responses to each question of the table in the faster dtype, question by
   question until ``--budget-s`` seconds of generation are spent;
3. scoring in the sandbox, then the per-question table: ``c`` of ``n``, mean length, whether
   ``0 < c < n`` (STC informative), and the summary over ``--reference-qids``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from repexp.models import cpu_capability_line, cpu_has_bf16
from repexp.pools import Sampler, generate_shard
from repexp.score import score_pool
from repexp.tasks import get_task

SMOLLM2_QIDS = [
    f"humaneval-{i}" for i in (7, 22, 23, 28, 29, 31, 35, 48, 49, 53)
]  # config/config.yaml's mbppplus qids (the SmolLM2 pilot)
VANILLA = Sampler(1.0, 1.0, 0.0, 0)
SEED_PARTS = ("qwen2.5-coder-0.5b-instruct", "mbppplus", "vanilla")


def pool_stats(pool: pd.DataFrame, seconds: float, cpu_s: float) -> dict:
    """Throughput per wall second and per CPU second of this process (one thread: on a shared
    machine the CPU seconds are what an idle core would take)."""
    tokens = int(pool["n_tokens"].sum())
    return {
        "responses": len(pool),
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "cpu_s": round(cpu_s, 1),
        "tok_s": round(tokens / seconds, 2),
        "tok_per_cpu_s": round(tokens / cpu_s, 2),
        "mean_tokens": round(tokens / len(pool), 1),
        "stop_frac": round(float((pool["finish_reason"] == "stop").mean()), 3),
        "endoftext_rows": int(pool["response_ids"].map(lambda r: 151643 in list(r)).sum()),
    }


def sample(args, questions: pd.DataFrame, n: int, dtype: str) -> pd.DataFrame:
    """``n`` vanilla responses to each of ``questions`` in one batch of ``n`` (the pools' code)."""
    return generate_shard(
        args.model,
        questions,
        n=n,
        sampler=VANILLA,
        max_new_tokens=args.max_new_tokens,
        seed=0,
        seed_parts=SEED_PARTS,
        batch_size=n,
        dtype=dtype,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=224)
    ap.add_argument("--budget-s", type=float, default=1500)
    ap.add_argument("--speed-qid", default="humaneval-7")
    ap.add_argument("--speed-n", type=int, default=16)
    ap.add_argument("--pilot-dtype", default=None, help="default: the faster one of the speed test")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.read_parquet(args.tasks)
    task = get_task("mbppplus", source="offline")
    print(cpu_capability_line(), f"; cpu_has_bf16={cpu_has_bf16()}", flush=True)
    report: dict = {"speed": {}, "features": {}}

    # 1. speed, float32 and bfloat16, batch = speed_n
    if not args.skip_speed:
        q = table[table["qid"] == args.speed_qid]
        for dtype in ("float32", "bfloat16"):
            t0, c0 = time.perf_counter(), time.process_time()
            pool = sample(args, q, args.speed_n, dtype)
            report["speed"][dtype] = pool_stats(
                pool, time.perf_counter() - t0, time.process_time() - c0
            )
            pool.to_parquet(out / f"speed-{dtype}.parquet")
            print("speed", dtype, report["speed"][dtype], flush=True)
        faster = max(report["speed"], key=lambda d: report["speed"][d]["tok_per_cpu_s"])
        # the feature cache of one pool (all three poolings, float32 cache) in the faster dtype
        t0 = time.perf_counter()
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "repexp.features",
                "--model",
                args.model,
                "--model-name",
                SEED_PARTS[0],
                "--pool",
                str(out / f"speed-{faster}.parquet"),
                "--poolings",
                "mean",
                "last",
                "penultimate",
                "--model-dtype",
                faster,
                "--threads",
                "1",
                "--out",
                str(out / "features" / "speed.json"),
            ],
            check=True,
        )
        dt = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
        report["features"] = {
            "dtype": faster,
            "responses": args.speed_n,
            "seconds": round(dt, 1),
            "cpu_s": round(cpu, 1),
            "cpu_s_per_response": round(cpu / args.speed_n, 2),
        }
        print("features", report["features"], flush=True)
    else:
        faster = args.pilot_dtype or "float32"
    dtype = args.pilot_dtype or faster

    # 2. pilot: n responses per question, question by question, within the budget
    parts, spent, cpu = [], 0.0, 0.0
    for i in range(len(table)):
        if spent >= args.budget_s:
            break
        t0, c0 = time.perf_counter(), time.process_time()
        parts.append(sample(args, table.iloc[i : i + 1], args.n, dtype))
        spent += time.perf_counter() - t0
        cpu += time.process_time() - c0
        print(
            f"pilot {i + 1}/{len(table)} {table['qid'].iloc[i]} ({spent:.0f}s, {cpu:.0f} cpu s)",
            flush=True,
        )
    pool = pd.concat(parts, ignore_index=True)
    pool.to_parquet(out / "pilot.parquet")
    report["pilot"] = {"dtype": dtype, "n": args.n, **pool_stats(pool, spent, cpu)}

    # 3. scoring in the sandbox (the programs run in child processes)
    t0 = time.perf_counter()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    scores = score_pool(pool, table, task, workers=1)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    report["pilot"]["score_s_per_response"] = round((time.perf_counter() - t0) / len(pool), 3)
    report["pilot"]["score_child_cpu_s_per_response"] = round(
        ((c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)) / len(pool), 3
    )
    scores.to_parquet(out / "pilot.scores.parquet")
    per_q = (
        scores.merge(pool[["qid", "sample", "n_tokens", "finish_reason"]], on=["qid", "sample"])
        .groupby("qid", sort=False)
        .agg(
            n=("correct", "size"),
            c=("correct", "sum"),
            mean_tokens=("n_tokens", "mean"),
            stop=("finish_reason", lambda s: (s == "stop").mean()),
        )
    )
    per_q["c"] = per_q["c"].astype(int)
    per_q["rate"] = per_q["c"] / per_q["n"]
    per_q["informative"] = (per_q["c"] > 0) & (per_q["c"] < per_q["n"])
    per_q["smollm2_qid"] = per_q.index.isin(SMOLLM2_QIDS)
    per_q.to_csv(out / "pilot_per_question.csv")
    for dtype_, f in ((d, out / f"speed-{d}.parquet") for d in report["speed"]):
        sp = pd.read_parquet(f)
        s = score_pool(sp, table, task, workers=1)
        report["speed"][dtype_]["c"] = int(s["correct"].sum())

    print("\n| qid | n | c | pass rate | mean tokens | stop | 0<c<n | SmolLM2 qid |")
    print("|---|---|---|---|---|---|---|---|")
    for qid, r in per_q.iterrows():
        print(
            f"| {qid} | {r.n} | {r.c} | {r.rate:.2f} | {r.mean_tokens:.0f} | {r.stop:.2f} | "
            f"{'yes' if r.informative else ''} | {'yes' if r.smollm2_qid else ''} |"
        )
    ref = per_q[per_q["smollm2_qid"]]
    summary = {
        "questions": len(per_q),
        "pass@1": round(float(per_q["rate"].mean()), 3),
        "c=0": int((per_q["c"] == 0).sum()),
        "0<c<n": int(per_q["informative"].sum()),
        "c=n": int((per_q["c"] == per_q["n"]).sum()),
        "informative_qids": list(per_q.index[per_q["informative"]]),
        "smollm2_qids": {
            "questions": len(ref),
            "pass@1": round(float(ref["rate"].mean()), 3) if len(ref) else None,
            "0<c<n": int(ref["informative"].sum()),
            "c=0": int((ref["c"] == 0).sum()),
            "c=n": int((ref["c"] == ref["n"]).sum()),
        },
    }
    report["summary"] = summary
    print(json.dumps(report, indent=1))
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
