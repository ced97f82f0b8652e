"""CLI of the ``prepare_task`` rule: write one task split's questions to a Parquet table.

    python -m repexp.tasks --task game24 --split test --source offline --n-questions 64 \\
        --subset-seed 0 --options '{}' --wheel-dir resources/wheels \\
        --out resources/tasks/game24/test.parquet

``--options`` holds the task's data options as JSON (its record's ``data_options`` in
``repexp.tasks.TASKS``: ``{"chain_sum": ...}`` for ``arith``); ``--chain-sum`` is its shorthand.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from repexp.atomic import write_parquet
from repexp.parallel import start_cli
from repexp.tasks import SOURCES, TASKS, build_table, get_task
from repexp.tasks.sources import TaskDataError

log = logging.getLogger("repexp.tasks")


def _count(text: str) -> int | None:
    if text == "all":
        return None
    n = int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"--n-questions must be > 0 or 'all', not {text}")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m repexp.tasks", description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True, choices=list(TASKS))
    ap.add_argument(
        "--split", required=True, choices=sorted({s for t in TASKS.values() for s in t.splits})
    )
    ap.add_argument("--source", default="offline", choices=list(SOURCES))
    ap.add_argument(
        "--n-questions", type=_count, default=None, help="seeded subset size, or 'all' (default)"
    )
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument(
        "--qids", default="", help="comma-separated question ids (instead of the subset)"
    )
    ap.add_argument(
        "--template",
        default="builtin",
        help="prompt template with {question}, or 'builtin' (the task's default)",
    )
    ap.add_argument(
        "--options",
        default="{}",
        help="the task's data options as JSON (config tasks.<task>.<option>), e.g. "
        '\'{"chain_sum": {"terms": 2, "digits": 1, "operators": "+"}}\' for arith',
    )
    ap.add_argument(
        "--chain-sum",
        default="null",
        help="arith only: its difficulty as JSON (the same as --options '{\"chain_sum\": ...}')",
    )
    ap.add_argument("--wheel-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    start_cli()
    t0 = time.perf_counter()
    options = json.loads(args.options)
    chain_sum = json.loads(args.chain_sum)
    if chain_sum is not None:
        options["chain_sum"] = chain_sum
    task = get_task(
        args.task,
        source=args.source,
        template=None if args.template == "builtin" else args.template,
        **options,
    )
    try:
        df = build_table(
            task,
            args.split,
            n_questions=args.n_questions,
            subset_seed=args.subset_seed,
            qids=[q for q in args.qids.split(",") if q] or None,
            wheel_dir=args.wheel_dir,
        )
    except TaskDataError as e:
        log.error("%s", e)
        return 1
    write_parquet(df, args.out, task=args.task, split=args.split, source=args.source)
    log.info(
        "%s/%s (%s): %d questions -> %s in %.1fs",
        args.task,
        args.split,
        args.source,
        len(df),
        args.out,
        time.perf_counter() - t0,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
