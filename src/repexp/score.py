"""Scoring: the correctness of every response of a pool shard with the task's verifier.

CLI (the ``score_pool`` rule)::

    python -m repexp.score --pool results/pools/.../shard-0.parquet --tasks resources/tasks/gsm8k/test.parquet \\
        --task gsm8k --workers 2 --out results/pools/.../shard-0.scores.parquet
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import pandas as pd

from repexp.atomic import write_parquet
from repexp.tasks import TASK_NAMES, get_task, score_many

log = logging.getLogger(__name__)


def score_pool(pool: pd.DataFrame, questions: pd.DataFrame, task, *, workers: int = 2) -> pd.DataFrame:
    """``qid, sample, correct`` for every row of ``pool``."""
    answers = questions.set_index("qid")["answer"]
    missing = set(pool["qid"]) - set(answers.index)
    if missing:
        raise ValueError(f"{len(missing)} pool question(s) are not in the task table, e.g. {sorted(missing)[:3]}")
    correct = score_many(task, answers.loc[pool["qid"]].tolist(), pool["text"].tolist(), workers=workers,
                         desc=f"scoring {task.name}")
    return pd.DataFrame({"qid": pool["qid"].values, "sample": pool["sample"].values, "correct": correct})


def add_verifier_args(ap: argparse.ArgumentParser) -> None:
    """The task and verifier flags (config ``tasks.<name>.source`` and ``verifiers``)."""
    ap.add_argument("--task", required=True, choices=TASK_NAMES)
    ap.add_argument("--source", default="offline", choices=["offline", "hub"])
    ap.add_argument("--last-number-fallback", action="store_true")
    ap.add_argument("--math-timeout-s", type=float, default=5.0)
    ap.add_argument("--code-timeout-s", type=float, default=10.0)
    ap.add_argument("--code-memory-mb", type=int, default=2048)
    ap.add_argument("--code-max-procs", type=int, default=32)


def task_from_args(args):
    """The task of :func:`add_verifier_args`' flags."""
    return get_task(args.task, source=args.source, last_number_fallback=args.last_number_fallback,
                    math_timeout_s=args.math_timeout_s, code_timeout_s=args.code_timeout_s,
                    code_memory_mb=args.code_memory_mb, code_max_procs=args.code_max_procs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repexp.score", description=__doc__.split("\n")[0])
    ap.add_argument("--pool", required=True)
    ap.add_argument("--tasks", required=True, help="the task table with the reference answers")
    ap.add_argument("--workers", type=int, default=2)
    add_verifier_args(ap)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    task = task_from_args(args)
    t0 = time.perf_counter()
    scores = score_pool(pd.read_parquet(args.pool), pd.read_parquet(args.tasks), task, workers=args.workers)
    write_parquet(scores, args.out, task=args.task)
    per_q = scores.groupby("qid")["correct"].mean()
    log.info("%s: %d responses scored in %.1fs; pass@1 %.3f; %d/%d questions with 0 < c < n", args.pool,
             len(scores), time.perf_counter() - t0, scores["correct"].mean(), int(((per_q > 0) & (per_q < 1)).sum()),
             len(per_q))
    return 0


if __name__ == "__main__":
    sys.exit(main())
