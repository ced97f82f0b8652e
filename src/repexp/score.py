"""Scoring: the correctness of every response of a pool shard with the task's verifier.

A score table has one row per response: ``qid, sample, correct`` (the verifier's verdict, 1.0/0.0)
and ``format_ok`` (whether the response gave its answer in the format the prompt asks for,
:func:`repexp.verifiers.formats.format_ok`; recorded, never used in the score). A pool's stats
table has one row per question: ``n`` responses, ``c`` correct, ``format_ok`` responses in the
required format.

CLI (the ``score_pool`` and ``pool_stats`` rules)::

    python -m repexp.score --pool results/pools/.../shard-0.parquet \\
        --tasks resources/tasks/gsm8k/test.parquet --task gsm8k --workers 2 \\
        --verifiers '{"gsm8k_last_number_fallback": false, ...}' \\
        --out results/pools/.../shard-0.scores.parquet
    python -m repexp.score stats --scores results/pools/.../shard-*.scores.parquet \\
        --model M --task T --sampler S --out results/pools/.../stats.parquet
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import pandas as pd

from repexp.atomic import write_parquet
from repexp.parallel import start_cli
from repexp.tasks import SOURCES, TASKS, get_task, score_many
from repexp.verifiers.formats import format_ok
from repexp.verifiers.settings import VerifierSettings

log = logging.getLogger(__name__)


def score_pool(
    pool: pd.DataFrame, questions: pd.DataFrame, task, *, workers: int = 2
) -> pd.DataFrame:
    """``qid, sample, correct, format_ok`` for every row of ``pool``."""
    answers = questions.set_index("qid")["answer"]
    missing = set(pool["qid"]) - set(answers.index)
    if missing:
        raise ValueError(
            f"{len(missing)} pool question(s) are not in the task table, e.g. {sorted(missing)[:3]}"
        )
    correct = score_many(
        task,
        answers.loc[pool["qid"]].tolist(),
        pool["text"].tolist(),
        workers=workers,
        desc=f"scoring {task.name}",
    )
    ok = [format_ok(task.name, t) for t in pool["text"].tolist()]
    return pd.DataFrame(
        {
            "qid": pool["qid"].values,
            "sample": pool["sample"].values,
            "correct": correct,
            "format_ok": ok,
        }
    )


def pool_stats(scores: pd.DataFrame) -> pd.DataFrame:
    """Per question of one pool (all its score shards): ``n`` responses, ``c`` correct and
    ``format_ok`` responses in the required format (question order of the shards)."""
    if scores.duplicated(["qid", "sample"]).any():
        raise ValueError("a response is scored twice: the score shards of a pool overlap")
    return (
        scores.assign(correct=scores["correct"] > 0, format_ok=scores["format_ok"].astype(bool))
        .groupby("qid", sort=False)
        .agg(n=("sample", "size"), c=("correct", "sum"), format_ok=("format_ok", "sum"))
        .reset_index()
        .astype({"n": int, "c": int, "format_ok": int})
    )


def add_verifier_args(ap: argparse.ArgumentParser) -> None:
    """The task and verifier flags: ``--task``, ``--source`` (config ``tasks.<name>.source``) and
    ``--verifiers``, the stage's verifier settings as one JSON value (the ``verifiers`` section,
    :class:`~repexp.verifiers.settings.VerifierSettings`; missing keys take its defaults)."""
    ap.add_argument("--task", required=True, choices=list(TASKS))
    ap.add_argument("--source", default="offline", choices=list(SOURCES))
    ap.add_argument(
        "--verifiers",
        default="{}",
        help="verifier settings as JSON (the verifiers config section as the stage applies it)",
    )


def verifier_settings_of(args) -> VerifierSettings:
    """The :class:`VerifierSettings` of :func:`add_verifier_args`' flags."""
    return VerifierSettings.from_json(args.verifiers)


def task_from_args(args):
    """The task of :func:`add_verifier_args`' flags."""
    return get_task(args.task, source=args.source, verifiers=verifier_settings_of(args))


def _stats_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.score stats",
        description="per-question n, c and format_ok of one pool",
    )
    ap.add_argument("--scores", nargs="+", required=True, help="every score shard of the pool")
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument("--sampler", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    start_cli()
    parts = []
    for f in args.scores:  # shard by shard: a paper pool holds tens of millions of responses
        scores = pd.read_parquet(f)
        if "format_ok" not in scores:
            raise SystemExit(
                f"{f} has no format_ok column: it was scored by an older version; "
                f"delete the pool's *.scores.parquet and rerun score_pool"
            )
        parts.append(pool_stats(scores))
    stats = pd.concat(parts, ignore_index=True)
    if stats["qid"].duplicated().any():
        again = stats.loc[stats["qid"].duplicated(), "qid"].iloc[0]
        raise SystemExit(
            f"question {again} is in several score shards of "
            f"{args.model}/{args.task}/{args.sampler}: the shards overlap"
        )
    keys = {"model": args.model, "task": args.task, "sampler": args.sampler}
    write_parquet(stats.assign(**keys), args.out, **keys)
    n = stats["n"].sum()
    log.info(
        "%s/%s/%s: %d questions, %d responses; pass@1 %.3f; format missed by %.1f%% of the "
        "responses",
        args.model,
        args.task,
        args.sampler,
        len(stats),
        int(n),
        stats["c"].sum() / n,
        100 * (1 - stats["format_ok"].sum() / n),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["stats"]:
        return _stats_main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m repexp.score", description=__doc__.split("\n")[0])
    ap.add_argument("--pool", required=True)
    ap.add_argument("--tasks", required=True, help="the task table with the reference answers")
    ap.add_argument("--workers", type=int, default=2)
    add_verifier_args(ap)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    start_cli()
    task = task_from_args(args)
    t0 = time.perf_counter()
    scores = score_pool(
        pd.read_parquet(args.pool), pd.read_parquet(args.tasks), task, workers=args.workers
    )
    write_parquet(scores, args.out, task=args.task)
    per_q = scores.groupby("qid")["correct"].mean()
    log.info(
        "%s: %d responses scored in %.1fs; pass@1 %.3f; %d/%d questions with 0 < c < n; "
        "answer format missed by %.1f%%",
        args.pool,
        len(scores),
        time.perf_counter() - t0,
        scores["correct"].mean(),
        int(((per_q > 0) & (per_q < 1)).sum()),
        len(per_q),
        100 * (1 - scores["format_ok"].mean()),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
