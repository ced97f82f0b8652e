"""The token-level stage's command line (the ``token_level_*`` rules), one command per rule::

    python -m repexp.tokenlevel questions --scores <pool score shards> --settings S --seed 0 --out Q
    python -m repexp.tokenlevel run --model M --model-name m --tasks T --questions Q \\
        --method beta1 --beta 1.0 --shard 0 --part 0 --responses-per-job 114 --settings S \\
        --seed 0 --state-out S0 --out R0
    python -m repexp.tokenlevel summarize --runs R... --questions Q --model-name m --task t \\
        --settings S --out-passk ... --out-difficulty ... --out-runs ...

``--settings`` is config ``token_level`` as JSON (:class:`repexp.tokenlevel.settings.Settings`);
the other options say which job this is (its files, method, shard and part) and pass the master
seed, the model's dtype, the threads and the verifier. ``run`` uses the batched engine
(:mod:`repexp.tokenlevel.batch`, ``slots`` runs in lockstep) and splits long runs into jobs
(``--part``, ``--responses-per-job``: the runs' generators and Σ̃⁻¹ are saved with ``--state-out``
and read by the next part with ``--state-in``; the last part gathers the earlier parts' rows,
``--rows-in``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import pandas as pd

from repexp import provenance
from repexp.atomic import write_parquet
from repexp.models import eos_ids_of
from repexp.parallel import start_cli
from repexp.tokenlevel.batch import BatchedExplorer, Run
from repexp.tokenlevel.decode import Decoder
from repexp.tokenlevel.engine import explore_vanilla_batched
from repexp.tokenlevel.settings import Settings
from repexp.tokenlevel.state import load_states, part_range, restore_run, save_runs
from repexp.tokenlevel.tables import (
    RUN_COLUMNS,
    difficulty_table,
    hardest_from_counts,
    method_name,
    passk_table,
    reference_counts,
    shard_runs,
    solved_at,
)

log = logging.getLogger(__name__)


def _cmd_questions(a) -> int:
    s = Settings.from_dict(json.loads(a.settings))
    # shard by shard (a paper pool holds millions of responses); a question is in one shard
    counts = pd.concat(
        [
            reference_counts(
                pd.read_parquet(f, columns=["qid", "sample", "correct"]),
                s.reference_samples,
                a.seed,
            )
            for f in a.scores
        ],
        ignore_index=True,
    )
    if counts["qid"].duplicated().any():
        raise SystemExit(
            f"question {counts.loc[counts['qid'].duplicated(), 'qid'].iloc[0]} is in "
            f"several score shards: the reference pool's shards overlap"
        )
    q = hardest_from_counts(counts, s.n_questions)
    used = s.reference_samples or "all"
    if len(q) < s.n_questions:
        log.warning(
            "only %d of %d pool questions are solvable (pass@1 > 0 on %s responses each); "
            "the experiment uses %d, not %d",
            len(q),
            len(counts),
            used,
            len(q),
            s.n_questions,
        )
    pool_n = int(q["pool_n"].max()) if len(q) else 0
    write_parquet(
        q,
        a.out,
        n_questions=s.n_questions,
        reference_pool_size=pool_n,
        reference_samples=s.reference_samples,
        seed=a.seed,
    )
    log.info(
        "%d hardest solvable questions, reference pass@1 %.4f..%.4f (%s of each question's %d "
        "responses)",
        len(q),
        q["ref_pass1"].min() if len(q) else float("nan"),
        q["ref_pass1"].max() if len(q) else float("nan"),
        used,
        pool_n,
    )
    return 0


def _cmd_run(a) -> int:
    import torch

    from repexp.models import load_model, load_tokenizer
    from repexp.pools import prompt_ids_of, question_seed
    from repexp.score import task_from_args

    if a.threads:
        from repexp.parallel import cap_threads

        cap_threads(a.threads)  # torch, BLAS and OpenMP threads = the rule's threads
    beta = None if a.beta in (None, "none") else float(a.beta)
    if method_name(beta) != a.method:
        raise SystemExit(
            f"--method {a.method} does not match --beta {a.beta} (expected {method_name(beta)})"
        )
    s = Settings.from_dict(json.loads(a.settings))
    questions = pd.read_parquet(a.questions)
    table = pd.read_parquet(a.tasks).set_index("qid")
    task = task_from_args(a)
    planned = shard_runs(s.n_questions, s.seeds, s.runs_per_shard, a.shard)
    runs = [(rank, i) for rank, i in planned if rank < len(questions)]
    if len(runs) < len(planned):
        log.warning(
            "shard %d: %d run(s) skipped, fewer solvable questions than n_questions",
            a.shard,
            len(planned) - len(runs),
        )
    per_job = a.responses_per_job or s.k_max
    first, last = part_range(a.part, per_job, s.k_max)
    hf_vanilla = beta is None and s.vanilla_batch_size > 1
    if hf_vanilla and (first, last) != (1, s.k_max):
        raise SystemExit(
            "vanilla_batch_size > 1 generates whole runs: use --responses-per-job >= k_max"
        )
    if a.part and not a.state_in:
        raise SystemExit(
            f"part {a.part} continues the runs of part {a.part - 1}: pass its --state-in"
        )
    if a.state_in and not a.part:
        raise SystemExit("part 0 starts every run: no --state-in")
    states = load_states(a.state_in) if a.state_in else {}
    rows, todo = [], {}
    if runs:
        device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        tok = load_tokenizer(a.model)
        model = load_model(a.model, dtype=a.dtype, device=device)
        decoder = Decoder(model, eos_ids_of(model, tok), s)
        t_all = time.perf_counter()
        for rank, seed_index in runs:
            qid = str(questions["qid"].iloc[rank])
            q = table.loc[qid]

            def check(text, answer=q["answer"]):
                return task.score(answer, text) == 1.0

            seed = question_seed(
                a.seed, a.model_name, task.name, "token_level", qid, str(seed_index)
            )
            run = Run(
                prompt_ids_of(tok, json.loads(q["prompt"])),
                check,
                seed=seed,
                beta=beta,
                key=(qid, rank, seed_index),
            )
            key = f"{rank}/{seed_index}"
            if a.part:
                if key not in states:
                    raise SystemExit(
                        f"{a.state_in} has no run {key} (rank/seed): it is not the "
                        f"previous part of shard {a.shard}"
                    )
                restore_run(
                    run,
                    states[key],
                    device=decoder.device,
                    hidden=model.config.hidden_size,
                    lam=s.lam,
                )
                if not run.finished and run.next_response != first:
                    raise SystemExit(
                        f"{a.state_in}: run {key} continues at response "
                        f"{run.next_response}, part {a.part} starts at {first} "
                        f"(another --responses-per-job?)"
                    )
            todo[key] = run
        if hf_vanilla:
            for run in todo.values():
                run.rows = explore_vanilla_batched(
                    model,
                    tok,
                    run.prompt_ids,
                    run.check,
                    k_max=s.k_max,
                    settings=s,
                    seed=run.seed,
                    batch_size=s.vanilla_batch_size,
                )
                run.finished = True
        else:
            slots = min(s.slots, sum(not r.finished for r in todo.values())) or 1
            engine = BatchedExplorer(decoder, tok, slots)
            engine.explore(list(todo.values()), k_max=s.k_max, until=last)
            secs = time.perf_counter() - t_all
            log.info(
                "shard %d part %d (responses %d-%d): %d runs on %d slots, %d tokens in %d steps, "
                "%.1fs (%.1f tok/s)",
                a.shard,
                a.part,
                first,
                last,
                len(todo),
                slots,
                engine.tokens,
                engine.steps,
                secs,
                engine.tokens / max(secs, 1e-9),
            )
        for run in todo.values():
            qid, rank, seed_index = run.key
            solved = next((r["response"] for r in run.rows if r["correct"]), None)
            status = (
                f"solved at {solved}" if solved else ("unsolved" if run.finished else "continues")
            )
            log.info(
                "question %s (rank %d) seed %d: %s, %d generations in this part, %d tokens",
                qid,
                rank,
                seed_index,
                status,
                len(run.rows),
                sum(r["n_tokens"] for r in run.rows),
            )
            for r in run.rows:
                r.pop("response_ids")
                rows.append(
                    {
                        "qid": qid,
                        "rank": rank,
                        "seed_index": seed_index,
                        "method": a.method,
                        "beta": np.nan if beta is None else beta,
                        **r,
                    }
                )
    if a.state_out:  # what the next part continues from
        save_runs(todo, a.state_out)
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    if a.rows_in:  # the last part: the shard's earlier parts too
        df = pd.concat([*(pd.read_parquet(f) for f in a.rows_in), df], ignore_index=True)
        df = df.sort_values(["seed_index", "rank", "response"], kind="stable").reset_index(
            drop=True
        )
    write_parquet(
        df,
        a.out,
        method=a.method,
        settings=s.to_dict(),
        k_max=s.k_max,
        shard=a.shard,
        part=a.part,
        responses_per_job=per_job,
        slots=s.slots,
        model=a.model_name,
        task=task.name,
        seed=a.seed,
    )
    return 0


def _cmd_summarize(a) -> int:
    from repexp.atomic import atomic_path

    s = Settings.from_dict(json.loads(a.settings))
    runs = pd.concat([pd.read_parquet(f) for f in a.runs], ignore_index=True)
    questions = pd.read_parquet(a.questions)
    per_run = (
        solved_at(runs)
        if len(runs)
        else pd.DataFrame(
            columns=["qid", "rank", "seed_index", "method", "beta", "solved_at", "generations"]
        )
    )
    per_run = per_run.merge(questions[["qid", "ref_pass1"]], on="qid", how="left")
    passk = passk_table(per_run, s.k_max)
    difficulty = difficulty_table(per_run, questions, k=s.k_max, bins=s.difficulty_bins)
    prov = provenance.from_cli(a.provenance)
    for df, out in ((passk, a.out_passk), (difficulty, a.out_difficulty), (per_run, a.out_runs)):
        df.insert(0, "task", a.task)
        df.insert(0, "model", a.model_name)
        with atomic_path(out) as tmp:
            provenance.stamp(df, prov).to_csv(tmp, index=False)
    last = passk[passk["k"] == s.k_max]
    for _, r in last.iterrows():
        log.info(
            "%s: pass@%d = %.3f (SE %.3f) over %d questions, %d runs",
            r["method"],
            s.k_max,
            r["pass_at_k"],
            r["se"],
            r["questions"],
            r["runs"],
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from repexp.score import add_verifier_args

    ap = argparse.ArgumentParser(
        prog="python -m repexp.tokenlevel", description=__doc__.split("\n")[0]
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    settings = argparse.ArgumentParser(add_help=False)
    settings.add_argument(
        "--settings",
        default="{}",
        help="config token_level as JSON (repexp.tokenlevel.Settings; a missing key: the "
        "schema's default)",
    )
    q = sub.add_parser(
        "questions",
        parents=[settings],
        help="the hardest solvable questions from a reference model's pools",
    )
    q.add_argument("--scores", nargs="+", required=True, help="the reference pool's score shards")
    q.add_argument("--seed", type=int, default=0, help="the master seed (seeds the subsample)")
    q.add_argument("--out", required=True)
    r = sub.add_parser("run", parents=[settings], help="one shard of runs of one method")
    r.add_argument("--model", required=True)
    r.add_argument("--model-name", required=True)
    r.add_argument("--tasks", required=True, help="the task table (test split)")
    r.add_argument("--questions", required=True)
    r.add_argument("--method", required=True)
    r.add_argument("--beta", default=None, help="the bonus weight; 'none' for vanilla")
    r.add_argument("--shard", type=int, required=True)
    r.add_argument(
        "--part", type=int, default=0, help="which job of the shard's runs (0 = the first)"
    )
    r.add_argument(
        "--responses-per-job",
        type=int,
        default=None,
        help="responses of each run per part (default: all k_max in one part)",
    )
    r.add_argument("--state-in", default=None, help="the previous part's run states (part > 0)")
    r.add_argument(
        "--state-out", default=None, help="where to save the runs' states for the next part"
    )
    r.add_argument(
        "--rows-in", nargs="*", default=[], help="the earlier parts' responses (the last part)"
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--dtype", default="bfloat16")
    r.add_argument("--device", default=None)
    r.add_argument("--threads", type=int, default=None)
    add_verifier_args(r)
    r.add_argument("--out", required=True)
    s = sub.add_parser(
        "summarize", parents=[settings], help="pass@k and difficulty tables from every shard"
    )
    s.add_argument("--runs", nargs="+", required=True)
    s.add_argument("--questions", required=True)
    s.add_argument("--model-name", required=True)
    s.add_argument("--task", required=True)
    s.add_argument("--out-passk", required=True)
    s.add_argument("--out-difficulty", required=True)
    s.add_argument("--out-runs", required=True)
    provenance.add_argument(s)
    a = ap.parse_args(argv)
    start_cli()
    return {"questions": _cmd_questions, "run": _cmd_run, "summarize": _cmd_summarize}[a.cmd](a)
