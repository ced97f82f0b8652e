"""The cluster profiles and a real Slurm: `snakemake --profile slurm` from the repository root, the
local one-GPU profile, and the test configuration run through a private single-node Slurm
(scripts/slurm_local.sh, with one fake GPU) against a local run with the same seeds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
import yte
from conftest import REPO, fresh_run_dir

SCRIPT = REPO / "scripts" / "slurm_local.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm" / "profile.yaml"
LOCAL_GPU_PROFILE = REPO / "profiles" / "local-gpu" / "profile.yaml"
# A slice of the test config's default target that runs every GPU rule and every kind of
# inference-time, token-level and RL job once (19 jobs: pool, scores, features, a selection, the
# token-level questions, runs and tables, one GRPO training with its test pool, scores and
# log-likelihoods, one figure): the whole target (66 jobs, three trainings) takes far too long
# through Slurm on two cores, where every job starts Snakemake twice and waits for status polls.
SLURM_TARGETS = (
    "results/inference/selection/tiny-random/gsm8k/vanilla/mean.questions.parquet",
    "results/rl/tiny-random/gsm8k/grpo/seed41/test/questions.parquet",
    "results/tables/tokenlevel_passk.csv",
    "results/figures/tokenlevel.pdf",
)


def start_snakemake(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.Popen:
    """snakemake in the background, its output in a file (a pipe could fill up while we wait)."""
    env = dict(env or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # rules call `python`
    output = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.output = output
    return proc


def finish(proc: subprocess.Popen, timeout: int = 900) -> str:
    """Wait for a snakemake started by start_snakemake; its output, or an error with its tail."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    proc.output.seek(0)
    out = proc.output.read()
    proc.output.close()
    if proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(proc.args[3:])} failed ({proc.returncode}):\n{out[-8000:]}"
        )
    return out


def snakemake(*args: str, cwd: Path = REPO, env: dict | None = None) -> str:
    return finish(start_snakemake(*args, cwd=cwd, env=env))


def slurm_profile() -> dict:
    with open(SLURM_PROFILE) as f:
        return yte.process_yaml(f, require_use_yte=True)


# Rules whose GPU count the workflow sets from the config (rl_train: `rl.gpus_per_run`), not the
# profile.
CONFIG_GPU_RULES = {"rl_train"}


def gpu_rules(profile: dict) -> set[str]:
    """The rules that get GPUs: `gpu:` in the profile, or from the config through the rule."""
    return {
        rule for rule, res in profile["set-resources"].items() if res.get("gpu")
    } | CONFIG_GPU_RULES


def workflow_rules() -> set[str]:
    out = snakemake("--list-rules", "-s", str(REPO / "Snakefile"))
    return set(re.findall(r"^([a-z_]\w*)$", out, re.MULTILINE)) - {"all"}


def job_resources(dry_run: str) -> dict[str, list[dict[str, str]]]:
    """{rule: [resources of each job]} from the job listing of `snakemake -n`."""
    jobs: dict[str, list[dict[str, str]]] = {}
    for block in re.finditer(r"^rule (\w+):\n(.*?)(?:\n\n|\Z)", dry_run, re.MULTILINE | re.DOTALL):
        res = re.search(r"^\s+resources: (.*)$", block.group(2), re.MULTILINE)
        if res:
            jobs.setdefault(block.group(1), []).append(
                dict(kv.split("=", 1) for kv in res.group(1).split(", "))
            )
    return jobs


# ------------------------------------------------------------------------------------------------
# the profiles (no Slurm needed)
# ------------------------------------------------------------------------------------------------


def test_profile_is_found_as_slurm_from_the_repository_root():
    assert (REPO / "slurm").is_symlink() and (REPO / "slurm").resolve() == SLURM_PROFILE.parent
    assert "Using profile slurm" in snakemake("-n", "--profile", "slurm", "--quiet", "rules")


def test_profile_gives_gpus_to_the_model_rules_only():
    profile = slurm_profile()
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    rules = workflow_rules()
    assert rules <= set(profile["set-resources"]), (
        "rules without resources in profiles/slurm/profile.yaml: "
        f"{sorted(rules - set(profile['set-resources']))}"
    )
    assert set(profile["set-resources"]) <= rules, sorted(set(profile["set-resources"]) - rules)
    # every rule that may ask for a GPU in the workflow, and the token-level decoder, gets one
    smk = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    asking = {
        m.group(1) for m in re.finditer(r"^rule (\w+):\n(?:(?!^rule ).)*?\bgpu=", smk, re.M | re.S)
    }
    assert asking | {"token_level_run"} <= gpu_rules(profile)
    assert gpu_rules(profile) == {
        "generate_pool",
        "cache_features",
        "token_level_run",
        "rl_train",
        "rl_test_pool",
        "rl_test_questions",
    }
    # rl_train's GPU count comes from the rule (rl.gpus_per_run), which the profiles must not
    # override
    assert {rule for rule in CONFIG_GPU_RULES if "gpu" in profile["set-resources"][rule]} == set()
    config_gpu = re.search(r"^rule rl_train:\n(?:(?!^rule ).)*?\bgpu=rl_gpus\(\)", smk, re.M | re.S)
    assert config_gpu, "rule rl_train must ask for gpu=rl_gpus() (rl.gpus_per_run)"
    # the local one-GPU profile serialises exactly the same rules
    with open(LOCAL_GPU_PROFILE) as f:
        local = yaml.safe_load(f)
    assert local["resources"] == {"gpu": 1}
    local_gpu = {rule for rule, res in local["set-resources"].items() if res.get("gpu") == 1}
    assert local_gpu == gpu_rules(profile) - CONFIG_GPU_RULES
    assert not {rule for rule in CONFIG_GPU_RULES if "gpu" in local["set-resources"].get(rule, {})}


def test_paper_dry_run_shows_the_gpu_requests():
    """`snakemake -n --profile slurm --configfile config/paper.yaml` on a slice of the paper DAG
    that holds every rule with a GPU (the whole DAG, 19k jobs, takes minutes to list)."""
    m = "qwen2.5-7b-instruct"
    targets = (
        f"results/inference/features/{m}/aime/vanilla/shard-0.json",
        f"results/inference/selection/{m}/aime/vanilla/mean.questions.parquet",
        f"results/token_level/{m}/math/vanilla/shard-0.parquet",
        f"results/rl/{m}/gsm8k/grpo/seed41/done.json",
        f"results/rl/{m}/gsm8k/base/test/questions.parquet",
        "results/tables/rl_hparams.csv",
    )
    out = snakemake(*targets, "-n", "-F", "--profile", "slurm", "--configfile", "config/paper.yaml")
    jobs = job_resources(out)
    gpus = {"rl_train": "8"}  # rl.gpus_per_run of config/paper.yaml (1 node x 8 GPUs per run)
    for rule in gpu_rules(slurm_profile()):
        assert rule in jobs, rule
        assert all(
            r.get("gpu") == gpus.get(rule, "1") and r["slurm_partition"] == "CHANGE_ME"
            for r in jobs[rule]
        ), rule
    for rule in (
        "score_pool",
        "select_pool",
        "prepare_task",
        "token_level_questions",
        "rl_test_score",
    ):
        assert all("gpu" not in r for r in jobs[rule]), rule
    # the time budget rl.max_hours = 24 h + 2 h of margin; memory from the model (repexp.memory): at
    # start 8 processes each hold the fp32 policy, 255 GiB per node, requested with its margin
    from repexp import memory
    from repexp.jobs import load_config

    paper = load_config(
        [REPO / "config" / "paper.yaml"],
        base=REPO / "config" / "config.yaml",
        schema=REPO / "workflow" / "schemas" / "config.schema.yaml",
    )
    rl_host = memory.job_estimate(paper, "rl_train", model=m, task="gsm8k", method="grpo").host
    assert jobs["rl_train"][0]["mem_mb"] == str(memory.request_mb(rl_host)) == "343000"
    assert jobs["rl_train"][0]["runtime"] == "1560"
    # every job of the slice asks for the model's request (tests/test_memory.py: every paper job)
    assert all("mem_mb" in r for js in jobs.values() for r in js)
    assert jobs["select_pool"][0]["slurm_account"] == "CHANGE_ME"


# ------------------------------------------------------------------------------------------------
# a real single-node Slurm
# ------------------------------------------------------------------------------------------------


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A private single-node Slurm with one fake GPU; stopped at the end unless it was already
    up."""
    was_running = _script("status").returncode == 0
    if not was_running:
        if sys.platform != "linux" or os.geteuid() != 0:
            pytest.skip(
                "a local Slurm needs root (munged, slurmd); "
                "or start one: scripts/slurm_local.sh start"
            )
        if not shutil.which("slurmctld") and not shutil.which("apt-get"):
            pytest.skip("Slurm is not installed and there is no apt-get to install it")
        install = _script("install")
        if install.returncode != 0:
            pytest.skip(f"cannot install Slurm with apt-get:\n{install.stderr[-2000:]}")
        start = _script("start")
        assert start.returncode == 0, (
            f"scripts/slurm_local.sh start failed:\n{start.stdout}\n{start.stderr}"
        )
    conf = re.search(r"SLURM_CONF=(\S+)", _script("env").stdout).group(1)
    yield {
        "conf": conf,
        "dir": Path(conf).parent.parent,
        "partition": os.environ.get("SLURM_LOCAL_PARTITION", "local"),
    }
    if not was_running:
        _script("stop")


def ci_profile(dest: Path, partition: str) -> Path:
    """profiles/slurm with the settings of a test cluster: squeue for status (no accounting), quick
    status checks, no account, the local partition, 3 GB per job (the rules' threads, so that the
    outputs can be compared with a local run), no retries (a failure must show)."""
    profile = slurm_profile()
    profile.pop("set-threads")
    profile.update(
        {
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 1,
            "slurm-no-account": True,
            "slurm-keep-successful-logs": True,
            "retries": 0,
            "latency-wait": 5,
            "jobs": 4,
            "default-resources": {"slurm_partition": partition, "mem_mb": 3000, "runtime": 30},
        }
    )
    for res in profile["set-resources"].values():
        # memory is enforced (scripts/slurm_local.sh): Snakemake + torch + the tiny model fit in
        # 3 GB
        res.update(slurm_partition=partition, mem_mb=3000)
    # a training job holds the policy, its optimiser, TRL's buffers and reward workers: 3.4 GB seen
    profile["set-resources"].setdefault("rl_train", {}).update(
        slurm_partition=partition, mem_mb=8000
    )
    dest.mkdir(parents=True)
    (dest / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def _result_files(run: Path) -> list[Path]:
    results = run / "results"
    return sorted(
        p.relative_to(run) for p in [*results.glob("tables/*.csv"), *results.rglob("*.parquet")]
    )


@pytest.mark.slow
def test_test_config_through_slurm_matches_a_local_run(slurm_cluster, tmp_path, wheel_dir):
    """Every job through sbatch on a real Slurm (GPU rules on the fake GPU), and the same tables as
    a local `--cores 2` run."""
    env = dict(os.environ, SLURM_CONF=slurm_cluster["conf"])
    base = [*SLURM_TARGETS, "-s", str(REPO / "Snakefile"), "--configfile", "config/test.yaml"]

    # the local reference run goes alongside (the Slurm run spends much of its time waiting)
    local = fresh_run_dir(tmp_path / "local", wheel_dir)
    local_proc = start_snakemake(*base, "--cores", "2", cwd=local)
    run = fresh_run_dir(tmp_path / "slurm", wheel_dir)
    profile = ci_profile(tmp_path / "ci-slurm", slurm_cluster["partition"])
    start = time.time()
    log = snakemake(*base, "--profile", str(profile), cwd=run, env=env)
    wall = time.time() - start
    finish(local_proc)

    # every job of the DAG was submitted with sbatch, and Slurm ran each to completion
    total = int(re.search(r"^total\s+(\d+)$", log, re.MULTILINE).group(1))
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    assert len(submitted) == total >= 19, log[-3000:]
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o"], env=env, capture_output=True, text=True, check=True
    ).stdout
    slurm_jobs = {}
    for line in shown.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if fields.get("JobName") == run_id:
            slurm_jobs[fields["JobId"]] = fields
    assert set(slurm_jobs) == set(submitted.values())
    assert {j["JobState"] for j in slurm_jobs.values()} == {"COMPLETED"}
    assert {j["Partition"] for j in slurm_jobs.values()} == {slurm_cluster["partition"]}
    rule_of = {
        jid: re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", j["Comment"]).group(1)
        for jid, j in slurm_jobs.items()
    }
    gpu = gpu_rules(slurm_profile())
    assert gpu <= set(rule_of.values())  # every GPU rule ran through Slurm
    # GPU rules asked for the GPU (--gpus=1), and their job steps saw it; CPU rules did not
    tasks = (slurm_cluster["dir"] / "log" / "tasks.log").read_text()
    for jid, rule in rule_of.items():
        asked = "gres:gpu:1" in slurm_jobs[jid].get("TresPerJob", "")
        seen = set(
            re.findall(
                rf"^job={jid} step=\S+ gpus=\S* cuda_visible_devices=(\S+)$", tasks, re.MULTILINE
            )
        )
        assert asked == (rule in gpu), (rule, slurm_jobs[jid])
        assert seen == ({"0"} if rule in gpu else {"unset"}), (rule, jid, seen)

    # the same outputs as the local run
    files = _result_files(run)
    assert files == _result_files(local)
    assert {"pools", "selection", "token_level"} <= {part for f in files for part in f.parts}
    for f in files:
        read = pd.read_csv if f.suffix == ".csv" else pd.read_parquet
        pd.testing.assert_frame_equal(read(run / f), read(local / f), obj=str(f))
    assert (run / "results" / "figures" / "tokenlevel.pdf").stat().st_size > 5000
    print(f"slurm run: {total} sbatch jobs in {wall:.0f} s")


# Two jobs that need more memory than their first attempt gets: one fits in the second attempt, one
# in none. The workflow's own `onerror` handler (the Snakefile's last lines) explains the failure.
OOM_SNAKEFILE = """
from repexp.failures import report as report_failures


rule all:
    input: "fits.txt", "never_fits.txt"


rule fits:  # 1.2 GB plus Snakemake's own memory: over 1 GB, under 2 GB
    output: "fits.txt"
    shell: "python -c 'import time; x = b\\"x\\" * (1200 * 2**20); time.sleep(4)' \
&& echo ok > {output}"


rule never_fits:  # 4 GB: over 1, 2 and 3 GB
    output: "never_fits.txt"
    shell: "python -c 'import time; x = b\\"x\\" * (4000 * 2**20); time.sleep(4)' \
&& echo ok > {output}"


onerror:
    report_failures(log)
"""


@pytest.mark.slow
def test_out_of_memory_is_retried_with_more_memory_then_fails_clearly(slurm_cluster, tmp_path):
    """Slurm kills a job over its memory; the profile's retries come back with `attempt` times the
    memory; a job that never fits fails with a message that names the rule, the memory and the
    fix."""
    assert "report_failures(log)" in (REPO / "Snakefile").read_text()  # the handler tested here
    real = slurm_profile()
    retries = real["retries"]
    assert retries == 2 and re.fullmatch(r"\d+ \* attempt", real["default-resources"]["mem_mb"])
    profile = ci_profile(tmp_path / "ci-slurm", slurm_cluster["partition"])
    config = yaml.safe_load((profile / "profile.yaml").read_text())
    # the real profile's retries and its form of memory request, "<MB> * attempt", at a test scale
    config.update(
        {
            "retries": retries,
            "set-resources": {
                rule: {"mem_mb": "1000 * attempt"} for rule in ("fits", "never_fits")
            },
        }
    )
    (profile / "profile.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp_path / "Snakefile").write_text(OOM_SNAKEFILE)
    env = dict(os.environ, SLURM_CONF=slurm_cluster["conf"])
    proc = start_snakemake("--profile", str(profile), cwd=tmp_path, env=env)
    proc.wait(timeout=600)
    proc.output.seek(0)
    out = proc.output.read()
    assert proc.returncode != 0, out[-3000:]
    assert (tmp_path / "fits.txt").read_text() == "ok\n" and not (
        tmp_path / "never_fits.txt"
    ).exists()
    # what Slurm did: fits killed at 1 GB then done at 2 GB; never_fits killed at 1, 2 and 3 GB
    submitted = re.findall(
        r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: .*/rule_(\w+)/", out
    )
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o"], env=env, capture_output=True, text=True, check=True
    ).stdout
    state = {
        f["JobId"]: f
        for f in (dict(re.findall(r"(\w+)=(\S*)", line)) for line in shown.splitlines())
    }
    history = {
        rule: [(state[j]["JobState"], state[j]["MinMemoryNode"]) for j, r in submitted if r == rule]
        for rule in ("fits", "never_fits")
    }
    assert history["fits"] == [("FAILED", "1000M"), ("COMPLETED", "2000M")], history
    assert history["never_fits"] == [
        ("FAILED", "1000M"),
        ("FAILED", "2000M"),
        ("FAILED", "3000M"),
    ], history
    # the clear message: rule, memory of the last attempt, the evidence and the fix; nothing on
    # `fits`
    lines = [line for line in out.splitlines() if line.startswith("repexp: ")]
    assert len(lines) == 1, out[-3000:]
    assert "rule never_fits ran out of memory" in lines[0] and "mem_mb=3000, attempt 3" in lines[0]
    assert "exceeded memory limit" in lines[0] and "raise mem_mb of never_fits" in lines[0]
