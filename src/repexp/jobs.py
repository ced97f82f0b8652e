"""The jobs of a configuration, from Snakemake's own DAG, and the job table of README.md.

:func:`snakemake_jobs` builds the workflow's DAG with Snakemake's API (every job, as ``snakemake
-n -F`` lists them, with the Slurm profile's threads and GPUs) and returns each job's rule,
wildcards, threads and resources (``mem_mb``, ``runtime``, ``gpu``). Nothing here mirrors a rule:
:func:`jobs_of` asks the runtime model (:mod:`repexp.runtime`) for each GPU job's hours from its
rule and wildcards, and the memory and disk model (:mod:`repexp.memory`) for its memory and disk.

The paper grid (``config/paper.yaml``) samples pools of 6,400 (AIME: 8,192) responses per question
from models of 0.5B to 32B parameters. A fixed number of questions per shard makes a 32B shard run
over ten times longer than a 0.5B one, so with ``inference.pool.questions_per_shard: null`` every
(model, task) gets its own shard size: the largest number of questions whose *estimated* runtime
stays under ``cluster.max_job_hours`` (:func:`repexp.dag.pool_shard_size`). An explicit
``questions_per_shard`` (the CPU default and the test configuration) takes precedence and keeps
one size for every pool. Token-level runs are split into jobs of ``token_level.responses_per_job``
responses (their state carried from job to job), sized the same way
(:func:`repexp.dag.token_level_parts`).

``python -m repexp.jobs --configfile config/paper.yaml`` prints the markdown job table of README.md:
per stage (the rule's ``.smk`` file) and rule the number of jobs, GPUs per job, estimated hours per
job and GPU-hours, with per-stage totals; from the memory and disk model the peak GPU memory, peak
host memory and Slurm ``mem_mb`` of a rule's jobs, and the disk its outputs take, with a total
line. Building the paper DAG (13,000 jobs) takes Snakemake about 10 s, the whole table about 15 s.

Module map: :mod:`repexp.dag` (what the DAG is made of; ``workflow/rules/common.smk`` reads it),
:mod:`repexp.runtime` (the runtime model), :mod:`repexp.memory` (the memory and disk model),
:mod:`repexp.config` (loading a config as Snakemake does). Their names used by the tests and
benchmarks are re-exported here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from repexp import memory
from repexp.config import load_config, merge  # noqa: F401 (re-exported)
from repexp.dag import (  # noqa: F401 (re-exported)
    gpus_per_job,
    inference_pools,
    pool_n_shards,
    pool_poolings,
    pool_questions,
    pool_setting,
    pool_shard_size,
    reference_pools,
    rl_on,
    rl_split_questions,
    rl_splits,
    rl_test_n_shards,
    rl_test_shard_size,
    shard_sizes,
    stats_pools,
    token_level_methods,
    token_level_on,
    token_level_part_files,
    token_level_parts,
    token_level_responses_per_job,
    token_level_shard_sizes,
    used_models,
)
from repexp.memory import output_bytes  # noqa: F401 (re-exported)
from repexp.runtime import (  # noqa: F401 (re-exported)
    GPU_RULES,
    JobModelError,
    RuntimeModel,
    exceeds_bound,
    pool_question_hours,
    questions_per_shard,
    rl_response_len,
    rl_train_hours,
    rl_train_job_hours,
    scaled_tok_s,
    token_level_job_hours,
    token_level_step_s,
)

REPO = Path(__file__).resolve().parents[2]
SLURM_PROFILE = REPO / "profiles" / "slurm" / "profile.yaml"
# Rules whose jobs are shards sized by the runtime bound (the others cannot be split further).
SHARDED_RULES = ("generate_pool", "cache_features", "rl_test_pool")
# Rules whose output size the table shows: those with a formula in the memory and disk model.
DISK_RULES = tuple(memory.ESTIMATORS)
# The job table's stage of a rule: the file that defines it (unlisted files: their name).
STAGE_OF_FILE = {
    "models.smk": "setup",
    "tasks.smk": "setup",
    "inference.smk": "inference",
    "tokenlevel.smk": "token level",
    "rl.smk": "RL",
    "figures.smk": "figures",
    "Snakefile": "figures",
}
# A job's `what` (its pool or run, for the table's warnings and the memory model): the
# wildcards' values joined by "/", or one of these formats.
WHAT = {
    "rl_train": "{model}/{task}/{method}/seed{seed}",
    "rl_test_pool": "{model}/{task}/{run}/test",
    "rl_test_score": "{model}/{task}/{run}/test",
    "token_level_run": "{model}/{task}/{tl_method}",
}
NOT_WHAT = ("shard", "pooling")  # wildcards that name a job of a pool, not the pool
README_BEGIN = "<!-- job table: python -m repexp.jobs --configfile config/paper.yaml -->"
README_END = "<!-- end of job table -->"


# ------------------------------------------------------------------------------------------------
# the DAG, from Snakemake
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DagJob:
    """One job of Snakemake's DAG."""

    rule: str
    wildcards: Mapping[str, str]
    threads: int
    resources: Mapping  # mem_mb, runtime, gpu (when the rule or the profile sets them), ...


@dataclass
class Dag:
    jobs: list[DagJob]
    rules: dict[str, str]  # every rule of the workflow, in definition order: its file's name


def profile_overrides(path: str | Path | None) -> tuple[dict, dict]:
    """(``set-threads``, ``set-resources``) of a profile as Snakemake applies them to a first
    attempt: expressions in ``attempt`` evaluated, the executor's own keys (``slurm_*``) left
    out."""
    from repexp.runtime import profile_resources, resource_value

    if path is None:
        return {}, {}
    threads = memory.profile_threads(path)
    resources = {
        rule: {k: resource_value(v) for k, v in res.items() if not k.startswith("slurm_")}
        for rule, res in profile_resources(str(path)).items()
    }
    return threads, {rule: res for rule, res in resources.items() if res}


def snakemake_dag(config: dict, *, profile: str | Path | None = SLURM_PROFILE) -> Dag:
    """Every job of the default target, ``snakemake -n -F`` for ``config`` (a complete config, as
    :func:`repexp.config.load_config` returns it): Snakemake builds the DAG from the Snakefile,
    with ``profile``'s ``set-threads`` and ``set-resources`` (default: the Slurm profile; None:
    the rules' own), and evaluates each job's threads and resources. Memoised for the last
    (config, profile) pairs."""
    key = json.dumps([config, str(profile)], sort_keys=True, default=str)
    if key not in _DAGS:
        if len(_DAGS) >= 4:  # the paper's holds 13,000 jobs
            _DAGS.pop(next(iter(_DAGS)))
        _DAGS[key] = _build_dag(config, profile)
    return _DAGS[key]


_DAGS: dict[str, Dag] = {}


def _build_dag(config: dict, profile: str | Path | None) -> Dag:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        Quietness,
        ResourceSettings,
    )

    threads, resources = profile_overrides(profile)
    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(dryrun=True, quiet={Quietness.ALL})) as api:
            wf = api.workflow(
                resource_settings=ResourceSettings(
                    cores=1024, overwrite_threads=threads, overwrite_resources=resources
                ),
                config_settings=ConfigSettings(config=config),
                snakefile=REPO / "Snakefile",
                workdir=REPO,
            )
            wf.dag(DAGSettings(forceall=True))
            workflow = wf._workflow
            workflow._prepare_dag(
                forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True
            )
            workflow._build_dag()
            jobs = [
                DagJob(
                    job.rule.name,
                    dict(job.wildcards_dict),
                    int(job.threads),
                    {k: v for k, v in job.resources.items() if not k.startswith("_")},
                )
                for job in workflow.dag.jobs
            ]
            rules = {r.name: Path(r.snakefile).name for r in workflow.rules}
    finally:
        os.chdir(cwd)
    return Dag(sorted(jobs, key=_job_order), rules)


def _job_order(job: DagJob) -> tuple:
    """Jobs sorted by rule, then wildcards (shard numbers as numbers)."""
    return (
        job.rule,
        tuple(
            (k, tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", v)))
            for k, v in sorted(job.wildcards.items())
        ),
    )


def snakemake_jobs(config: dict, *, profile: str | Path | None = SLURM_PROFILE) -> list[DagJob]:
    """The jobs of :func:`snakemake_dag`."""
    return snakemake_dag(config, profile=profile).jobs


# ------------------------------------------------------------------------------------------------
# the jobs with their estimates
# ------------------------------------------------------------------------------------------------
@dataclass
class Job:
    rule: str
    what: str = ""  # the pool (model/task/sampler) or run of the job, for warnings
    hours: float | None = None  # estimated hours (GPU rules only)
    uncapped: float | None = None  # rl_train: the hours without the time budget (rl.max_hours)
    disk: float | None = None  # bytes written (rules with a formula in output_bytes only)
    questions: int | None = None  # the questions of a pool or test-pool shard
    host: int | None = None  # predicted peak host memory, bytes (repexp.memory.annotate)
    gpu: int | None = None  # predicted peak GPU memory per GPU, bytes (GPU rules)
    wildcards: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 0  # GPUs the job requests (the DAG's `gpu` resource)


def job_what(rule: str, wildcards: Mapping[str, str]) -> str:
    """
    >>> job_what("generate_pool", {"model": "m", "task": "t", "sampler": "s", "shard": "0"})
    'm/t/s'
    >>> job_what("rl_train", {"model": "m", "task": "t", "method": "grpo", "seed": "41"})
    'm/t/grpo/seed41'
    """
    if rule in WHAT:
        return WHAT[rule].format(**wildcards)
    return "/".join(v for k, v in wildcards.items() if k not in NOT_WHAT)


def job_questions(config: dict, rule: str, wildcards: Mapping[str, str]) -> int | None:
    """The questions of a pool or test-pool shard job (None for other jobs)."""
    from repexp import dag

    if "shard" not in wildcards:
        return None
    if "run" in wildcards:
        return dag.rl_test_shard_questions(config, wildcards["task"], int(wildcards["shard"]))
    return dag.pool_shard_questions(
        config, wildcards["model"], wildcards["task"], int(wildcards["shard"])
    )


def jobs_of(
    config: dict,
    *,
    estimate: bool = True,
    dag_jobs: list[DagJob] | None = None,
) -> list[Job]:
    """Every job of the DAG (:func:`snakemake_jobs`, or ``dag_jobs``), with the runtime model's
    estimate of the GPU jobs (``None`` when the model lacks a number for it and ``estimate`` is
    False) and the size of the feature cache a ``cache_features`` job writes."""
    from repexp import runtime

    dag_jobs = snakemake_jobs(config) if dag_jobs is None else dag_jobs
    cache: dict = {}

    def cached(key, fn):
        if key not in cache:
            try:
                cache[key] = fn()
            except JobModelError as e:
                cache[key] = e
        if isinstance(cache[key], JobModelError) and estimate:
            raise cache[key]
        return None if isinstance(cache[key], JobModelError) else cache[key]

    jobs = []
    for dj in dag_jobs:
        wc = dj.wildcards
        key = (dj.rule, tuple(sorted(wc.items())))
        q = cached(("questions", *key), lambda r=dj.rule, w=wc: job_questions(config, r, w))
        job = Job(
            dj.rule, job_what(dj.rule, wc), questions=q, wildcards=wc, gpus=_gpus(dj.resources)
        )
        if dj.rule in runtime.ESTIMATES:
            hours = cached(("hours", *key), lambda r=dj.rule, w=wc: runtime.job_hours(config, r, w))
            job.hours, job.uncapped = (None, None) if hours is None else hours
            if dj.rule != "rl_train":
                job.uncapped = None
        if dj.rule == "cache_features":
            # a size the model lacks (cluster.hidden_size) is shown as "?", never an error
            try:
                job.disk = output_bytes(
                    config, dj.rule, wc["model"], wc["task"], wc["sampler"], job.questions
                )
            except JobModelError:
                job.disk = None
        jobs.append(job)
    return jobs


def _gpus(resources: Mapping) -> int:
    try:
        return int(resources.get("gpu") or 0)
    except (TypeError, ValueError):
        return 0


def job_counts(config: dict, *, dag_jobs: list[DagJob] | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in snakemake_jobs(config) if dag_jobs is None else dag_jobs:
        counts[j.rule] = counts.get(j.rule, 0) + 1
    return counts


def parse_job_stats(text: str) -> dict[str, int]:
    """The "Job stats" table of ``snakemake -n`` output as {rule: count} (without the total)."""
    stats = text[text.index("Job stats") :]
    counts = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.MULTILINE)
    }
    counts.pop("total", None)
    return counts


# ------------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------------
def _h(x: float | None) -> str:
    if x is None:
        return "?"
    return f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def _gpu_h(x: float | None) -> str:
    return "?" if x is None else f"{x:,.0f}"


def _bytes(x: float | None) -> str:
    """
    >>> _bytes(2.81e12), _bytes(9.3e11), _bytes(None)
    ('2.81 TB', '930 GB', '?')
    """
    if x is None:
        return "?"
    if x < 1e9:
        return f"{x / 1e6:,.0f} MB"
    return f"{x / 1e12:,.2f} TB" if x >= 1e12 else f"{x / 1e9:,.0f} GB"


def _sum_known(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(sum(values))


def stages(rules: Mapping[str, str]) -> dict[str, list[str]]:
    """{stage: its rules}, both in definition order, from {rule: the file that defines it}."""
    out: dict[str, list[str]] = {}
    for rule, snakefile in rules.items():
        out.setdefault(STAGE_OF_FILE.get(snakefile, Path(snakefile).stem), []).append(rule)
    return out


def job_table(config: dict, *, estimate: bool = True) -> str:
    """The markdown job table: per stage and rule the jobs, GPUs per job, estimated hours per job
    (max and mean over the rule's jobs) and GPU-hours; then per-stage totals and the notes."""
    rm = RuntimeModel.from_config(config)
    dag = snakemake_dag(config)
    jobs = jobs_of(config, estimate=estimate, dag_jobs=dag.jobs)
    memory.annotate(config, jobs)  # host and GPU memory, and the disk of the rules modelled there
    by_rule: dict[str, list[Job]] = {}
    for j in jobs:
        by_rule.setdefault(j.rule, []).append(j)
    lines = [
        "| stage | rule | jobs | GPUs/job | h/job (max) | h/job (mean) | GPU-h | GPU mem/job "
        "| host mem/job | `mem_mb` | disk |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    totals, disks = [], []
    for stage, rules in stages(dag.rules).items():
        n_stage, gpu_h_stage, disk_stage = 0, 0.0, []
        for rule in rules:
            js = by_rule.get(rule, [])
            if not js:
                continue
            n_stage += len(js)
            disk = "–"
            if rule in DISK_RULES:
                disk_stage.append(_sum_known([j.disk for j in js]))
                disk = _bytes(disk_stage[-1])
            gpus = max(j.gpus for j in js)
            if gpus:
                hours = [j.hours for j in js]
                known = None if any(h is None for h in hours) else hours
                total = None if known is None else sum(known)
                gpu_h = None if total is None else total * gpus
                if gpu_h is not None and gpu_h_stage is not None:
                    gpu_h_stage += gpu_h
                else:
                    gpu_h_stage = None
                lines.append(
                    f"| {stage} | `{rule}` | {len(js):,} | {gpus} | "
                    f"{_h(None if known is None else max(known))} | "
                    f"{_h(None if known is None else total / len(known))} | {_gpu_h(gpu_h)} | "
                    f"{memory.cells(js)} | {disk} |"
                )
            else:
                lines.append(
                    f"| {stage} | `{rule}` | {len(js):,} | 0 | – | – | – | {memory.cells(js)} "
                    f"| {disk} |"
                )
        if n_stage:
            totals.append((stage, n_stage, gpu_h_stage))
            disks += disk_stage
            disk = f"**{_bytes(_sum_known(disk_stage))}**" if disk_stage else ""
            lines.append(
                f"| **{stage}** | **total** | **{n_stage:,}** | | | | **{_gpu_h(gpu_h_stage)}** | "
                f"| | | {disk} |"
            )
    n_all = sum(n for _, n, _ in totals)
    gpu_all = None if any(g is None for _, _, g in totals) else sum(g for _, _, g in totals)
    disk_all = f"**{_bytes(_sum_known(disks))}**" if disks else ""
    lines.append(
        f"| **all** | **total** | **{n_all:,}** | | | | **{_gpu_h(gpu_all)}** | | | | {disk_all} |"
    )

    notes = []
    over: dict[str, list[Job]] = {}
    for j in jobs:
        if j.hours is not None and exceeds_bound(j.hours, rm.max_job_hours):
            over.setdefault(j.rule, []).append(j)
    for rule in SHARDED_RULES:
        groups: dict[str, list[Job]] = {}
        for j in over.get(rule, []):
            groups.setdefault(j.what, []).append(j)
        for what, js in groups.items():
            notes.append(
                f"**warning**: `{rule}` {what}: {len(js):,} shard(s) of a single question, "
                f"estimated at up to {_h(max(j.hours for j in js))} h, over "
                f"`cluster.max_job_hours` ({rm.max_job_hours:g} h): raise `cluster.max_job_hours` "
                f"(and the rule's `runtime` in the Slurm profile) or lower the task's `pool_n`."
            )
    if "token_level_run" in by_rule:
        notes.append(
            token_level_note(
                config, by_rule["token_level_run"], over.get("token_level_run", []), rm
            )
        )
    rl_jobs = [j for j in by_rule.get("rl_train", []) if j.hours is not None]
    if rl_jobs:
        notes.append(rl_train_note(config, rl_jobs, rm))
    notes += memory.table_notes(config, jobs)
    if any(j.hours is None for j in jobs if j.gpus):
        notes.append(
            "`?`: the runtime model has no number for some model or task "
            "(`cluster.params_b`, `cluster.response_tokens`)."
        )
    return "\n".join(lines + ([""] + [f"* {n}" for n in notes] if notes else [])) + "\n"


def token_level_note(config: dict, tl_jobs: list[Job], over: list[Job], rm: RuntimeModel) -> str:
    """The job table's note on the token-level runs: slots, parts, the step model, the bound."""
    tl = config["token_level"]
    shards = len(token_level_shard_sizes(config))
    parts = {m: token_level_parts(config, m) for m in token_level_methods(config)}
    split = ", ".join(
        f"{m} {p} × {token_level_responses_per_job(config, m):,}" for m, p in parts.items()
    )
    limit = f"`cluster.max_job_hours` ({rm.max_job_hours:g} h)"
    bound = (
        f"**warning**: {len(over):,} of {len(tl_jobs):,} jobs are estimated over {limit}, at "
        f"most {_h(max(j.hours for j in over))} h: lower `token_level.responses_per_job` or "
        f"`token_level.slots`"
        if over
        else f"every job within {limit}"
    )
    try:
        steps = (
            f"{token_level_step_s(config, False, tl['slots']):.3f} s plain, "
            f"{token_level_step_s(config, True, tl['slots']):.3f} s bonus"
        )
    except JobModelError:
        steps = "?"
    return (
        f"`token_level_run`: {tl['n_questions'] * tl['seeds']:,} (question, seed) runs per "
        f"method in {shards:,} shards of up to {tl['runs_per_shard']:,}, decoded in lockstep on "
        f"`token_level.slots` = {tl['slots']} slots per GPU (the batched engine); each run's "
        f"{tl['k_max']:,} responses are split into jobs (parts × responses: {split}) that carry "
        f"the runs' state (generator, Σ̃⁻¹) from one to the next; {bound}. The batched rate is "
        f"derived from the single-sequence step `cluster.hf_step_s`, not measured "
        f"(`repexp.tokenlevel.benchmark_rate` measures it on a GPU): a step of {tl['slots']} "
        f"slots takes one such forward + per slot `cluster.tl_slot_s` and the FLOPs of its "
        f"`cluster.tl_candidates` candidates ({steps} per step). The estimate assumes every run "
        f"uses all `k_max` generations; a run stops at its first correct response."
    )


def rl_train_note(config: dict, rl_jobs: list[Job], rm: RuntimeModel) -> str:
    """The job table's note on the training runs: GPUs, time budget, the steps it leaves."""
    rl = config["rl"]
    gpus, budget, max_steps = gpus_per_job(config, "rl_train"), rl.get("max_hours"), rl["max_steps"]
    on = f"{gpus} GPUs (one training process each, `accelerate launch`)" if gpus > 1 else "one GPU"
    head = (
        f"`rl_train`: one job per training run on `rl.gpus_per_run` = {on}, estimated as the "
        f"one-GPU time ÷ {gpus}"
        if gpus > 1
        else f"`rl_train`: one job per training run on {on}"
    )
    oh = rm.overhead_hours
    capped = [j for j in rl_jobs if j.uncapped > j.hours * (1 + 1e-9)]
    if budget is not None:
        steps = [max_steps * (j.hours - oh) / (j.uncapped - oh) for j in capped]
        reach = (
            f"{len(capped)} of {len(rl_jobs)} runs reach it before `rl.max_steps` = "
            f"{max_steps:,} steps, at an estimated {min(steps):,.0f}–{max(steps):,.0f} steps "
            f"(up to {_h(max(j.uncapped for j in capped))} h for all {max_steps:,})"
            if capped
            else f"every run reaches `rl.max_steps` = {max_steps:,} steps first"
        )
        return (
            f"{head}, stopped by the time budget `rl.max_hours` = {budget:g} h of training "
            f"(+ start-up): {reach}. A run cut off by a time limit resumes from its last "
            f"checkpoint on the retry; the budget counts the training time of every attempt. "
            f"The paper gave each run one day on 8 H100s (192 GPU-hours) and stopped there."
        )
    worst = max(j.hours for j in rl_jobs)
    return (
        f"{head}: up to {_h(worst)} h for `rl.max_steps` = {max_steps:,} steps, with no time "
        f"budget (`rl.max_hours`). A run cannot be split: it resumes from its last checkpoint "
        f"whenever it is restarted (a retry after a time limit, or the workflow run again); "
        f"the paper gave each run one day on 8 GPUs (192 GPU-hours) and stopped there."
    )


def readme_table(text: str) -> str:
    """The job table block of README.md (between :data:`README_BEGIN` and :data:`README_END`)."""
    start = text.index(README_BEGIN) + len(README_BEGIN)
    return text[start : text.index(README_END, start)].strip("\n") + "\n"


def table_counts(table: str) -> dict[str, int]:
    """{rule: jobs} of a printed job table (without the totals)."""
    return {
        m.group(1): int(m.group(2).replace(",", ""))
        for m in re.finditer(r"^\| [^|]+ \| `(\w+)` \| ([\d,]+) \|", table, re.MULTILINE)
    }


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.jobs",
        description="Print the job table (jobs, GPU-hours) of a config.",
    )
    ap.add_argument(
        "--configfile", nargs="*", default=[], help="as snakemake's (merged over --base)"
    )
    ap.add_argument("--base", default="config/config.yaml")
    ap.add_argument("--schema", default="workflow/schemas/config.schema.yaml")
    ap.add_argument("--counts", action="store_true", help="print only 'rule count' lines")
    args = ap.parse_args(argv)
    try:
        config = load_config(args.configfile, base=args.base, schema=args.schema)
        if args.counts:
            for rule, n in sorted(job_counts(config).items()):
                print(f"{rule} {n}")
        else:
            print(job_table(config, estimate=False), end="")
    except (JobModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
