"""The Snakemake workflow: lint, format, the paper DAG, bad configs, and a real run of the test
config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, fresh_run_dir


def snakemake(
    *args: str, cwd: Path = REPO, check: bool = True, timeout: int = 900
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def test_lint_is_clean():
    proc = snakemake("--lint", "-s", str(REPO / "Snakefile"))
    assert "Congratulations" in proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_paper_dag_builds_here():
    proc = snakemake("-n", "--configfile", "config/paper.yaml", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    assert "prepare_model" in out and "prepare_task" in out
    # ten hub models and every paper split; -F: every job, as in a fresh clone (whatever
    # resources/ has)
    listing = snakemake("-n", "-F", "--configfile", "config/paper.yaml").stdout
    assert listing.count("rule prepare_model:") == 10
    # the README's job table (python -m repexp.jobs) has the dry run's job counts, rule by rule
    from repexp.jobs import parse_job_stats, readme_table, table_counts

    assert parse_job_stats(listing) == table_counts(readme_table((REPO / "README.md").read_text()))
    for target in [
        "resources/tasks/math/dev.parquet",
        "resources/tasks/gsm8k/test_rest.parquet",
        "resources/tasks/dapo/train.parquet",
        "resources/tasks/aime2024/test.parquet",
        "resources/models/qwen2.5-7b-instruct",
    ]:
        assert target in listing


def test_paper_dag_has_the_rl_grid():
    """3 tasks x 3 methods x 3 seeds trainings; the base model and every run sampled on its test
    set."""
    targets = ("results/tables/rl_passk.csv", "results/tables/rl_hparams.csv")
    listing = snakemake(*targets, "-n", "-p", "--configfile", "config/paper.yaml").stdout
    stats = listing[listing.index("Job stats") :]
    counts = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)
    }
    assert counts["rl_train"] == 27 and counts["rl_test_questions"] == 30
    assert counts["rl_tables"] == 1 and counts["rl_hparams"] == 1
    # runtime-bounded test pools (repexp.jobs, at most 800 questions x 256 samples per shard):
    # MATH's 4,500 questions in 6 shards, GSM8K's 807 in 2, AIME's 30 in 1
    assert counts["rl_test_pool"] == counts["rl_test_score"] == 10 * (6 + 2 + 1)
    for seed in (41, 42, 43):
        for method in ("grpo", "unlikeliness", "repexp"):
            assert f"results/rl/qwen2.5-7b-instruct/dapo/{method}/seed{seed}/done.json" in listing
    assert "results/rl/qwen2.5-7b-instruct/math/base/test/questions.parquet" in listing
    dapo = next(
        line for line in listing.splitlines() if "repexp.rl.train" in line and "--task dapo" in line
    )
    assert "--dev resources/tasks/aime2024/test.parquet" in dapo and "--source hub" in dapo
    settings = json.loads(dapo.split("--settings '")[1].split("'")[0])
    assert settings["max_response_length"] == 8192 and settings["repexp"]["proj_dim"] == 128
    assert (
        settings["dev_task"] == "aime2024"
        and "seeds" not in settings
        and "task_overrides" not in settings
    )
    math_pool = next(
        line for line in listing.splitlines() if "repexp.pools" in line and "/math/" in line
    )
    assert "--n 256 --max-new-tokens 1024 --temperature 1.0 --top-p 1.0" in math_pool
    assert "resources/tasks/math/test_rest.parquet" in math_pool


@pytest.mark.parametrize(
    "override,needle",
    [
        ("tasks: {gsm8kk: {}}", "unknown key(s) 'gsm8kk' under `tasks`"),
        ("inference: {models: [nope]}", "`inference.models.0` names model 'nope'"),
        ("inference: {pool: {n: 0}}", "`inference.pool.n` has value 0; allowed: a number > 0"),
        (
            "inference: {selection: {lam: -1.0}}",
            "`inference.selection.lam` has value -1.0; allowed: a number > 0",
        ),
        (
            "inference: {selection: {lamda: 1.0}}",
            "unknown key(s) 'lamda' under `inference.selection`",
        ),
    ],
)
def test_bad_config_stops_before_any_job(tmp_path, override, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(override + "\n")
    proc = snakemake("--cores", "1", "--configfile", "config/test.yaml", str(bad), check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "invalid configuration (nothing was run)" in proc.stderr
    assert "Job stats" not in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, wheel_dir):
    """A fresh working directory holding only the configs and the cached wheels."""
    return fresh_run_dir(tmp_path_factory.mktemp("run"), wheel_dir)


@pytest.mark.slow
def test_test_config_runs_end_to_end(run_dir):
    """The whole default target of the test config: models, tasks, pools, scores, features,
    selection, tables, the five inference-time figures, the token-level and RL stages (trainings,
    test pools, tables, figures) and the results page."""
    args = (
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(run_dir),
        "--cores",
        "2",
        "--configfile",
        "config/test.yaml",
    )
    snakemake(
        *args, timeout=2400
    )  # every stage, RL's three trainings included (~15 min on 2 busy cores)
    model = run_dir / "resources" / "models" / "tiny-random"
    assert json.loads((model / "repexp_model.json").read_text())["spec"]["source"] == "tiny_random"
    sizes = {"game24": 8, "gsm8k": 8, "math": 8, "mbppplus": 4, "aime": 4}
    for task, n in sizes.items():
        df = pd.read_parquet(run_dir / "resources" / "tasks" / task / "test.parquet")
        assert len(df) == n and df["qid"].is_unique, task
    for split in ("train", "dev", "test_rest"):
        assert (run_dir / "resources" / "tasks" / "gsm8k" / f"{split}.parquet").exists()
    pool = pd.read_parquet(
        run_dir / "results/inference/pools/tiny-random/game24/vanilla/shard-0.parquet"
    )
    assert len(pool) == 8 * 8 and pool.groupby("qid").size().eq(8).all()
    stc = pd.read_csv(run_dir / "results" / "tables" / "stc.csv")
    assert set(stc["pooling"]) == {"mean", "last", "penultimate"}
    assert set(stc["sampler"]) == {"vanilla", "temp1.5"}
    for fig in ("overview", "stc", "features", "model_rank_difficulty", "samplers"):
        assert (run_dir / "results" / "figures" / f"{fig}.png").stat().st_size > 5000, fig
        assert (run_dir / "results" / "notebooks" / f"{fig}.html").exists(), fig
    # RL post-training: three trainings, the base model and the best checkpoints on the test set
    rl_runs = run_dir / "results" / "rl" / "tiny-random" / "gsm8k"
    for method in ("grpo", "unlikeliness", "repexp"):
        best = json.loads((rl_runs / method / "seed41" / "best.json").read_text())
        assert best["method"] == method and (rl_runs / method / "seed41" / "best").is_dir()
    passk = pd.read_csv(run_dir / "results" / "tables" / "rl_passk.csv")
    assert set(passk["method"]) == {"base", "grpo", "unlikeliness", "repexp"}
    assert passk["k"].max() == 4 and passk["mean"].between(0, 1).all()
    assert len(pd.read_csv(run_dir / "results" / "tables" / "rl_efficiency.csv")) == 3
    loglik = pd.read_parquet(run_dir / "results" / "tables" / "rl_loglik.parquet")
    assert len(loglik) == 4 * 8  # base + 3 methods x 8 test questions
    base = loglik[
        loglik["method"] == "base"
    ]  # the base model's own samples: the pool's log-probability
    assert (base["loglik_sum"] - base["policy_logprob"]).abs().max() < 1e-2
    hparams = pd.read_csv(run_dir / "results" / "tables" / "rl_hparams.csv")
    assert list(hparams.columns) == ["section", "parameter", "key", "gsm8k"]
    for fig in (
        "rl_passk",
        "rl_passk_alt",
        "rl_loglik",
        "rl_loglik_tasks",
        "rl_training",
        "rl_hparams",
    ):
        assert (run_dir / "results" / "figures" / f"{fig}.png").stat().st_size > 5000, fig
    index = (run_dir / "results" / "index.html").read_text()
    assert "figures/stc.png" in index and "notebooks/stc.html" in index
    snakemake(*args, "--report", str(run_dir / "report.html"))
    assert (run_dir / "report.html").stat().st_size > 100_000
    # nothing left to do on a rerun
    again = snakemake(*args)
    assert "Nothing to be done" in again.stdout + again.stderr
    # editing one notebook redraws that figure (and the index page) and nothing upstream
    nb = run_dir / "notebooks" / "stc.ipynb"
    nb.write_text(nb.read_text().replace("tables_dir =", "tables_dir  ="))
    plan = snakemake(*args, "-n").stdout
    jobs = {
        m.group(1)
        for m in re.finditer(r"^(\w+)\s+\d+$", plan[plan.index("Job stats") :], re.MULTILINE)
    }
    assert "figure" in jobs and "results_index" in jobs
    for upstream in (
        "generate_pool",
        "score_pool",
        "cache_features",
        "select_pool",
        "summarize_inference",
        "rl_train",
        "rl_test_pool",
        "rl_tables",
    ):
        assert upstream not in jobs, upstream
    assert "wildcards: figure=stc" in plan and "figure=samplers" not in plan
