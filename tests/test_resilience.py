"""Nothing lost on failure: the whole workflow SIGKILLed in the middle of pool generation, of
feature caching and of RL training, then rerun, ends with the tables of an uninterrupted run;
finished jobs are kept and training resumes from its last checkpoint. A cached file changed on
disk is caught by its checksum, with a message that names the file and the rule that rebuilds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, fresh_run_dir
from test_workflow import snakemake

# game24 in 4 two-question shards (so that a kill lands between shards), one pooling, and one short
# GRPO run of 2 steps with a checkpoint and a dev evaluation after each
RESUME_CONFIG = """
tasks:
  game24: {source: offline, n_questions: 8, subset_seed: 0, splits: [test]}
inference:
  tasks: [game24]
  grid: []
  pool: {n: 8, max_new_tokens: 12, backend: hf, questions_per_shard: 2, batch_size: 8}
  features: {poolings: [mean], layers: [{model: tiny-random, task: game24, layer: null}]}
rl:
  methods: [grpo]
  max_steps: 2
  eval_every: 1
  test_samples: 2
"""
INFERENCE = ("results/tables/stc.csv", "results/tables/questions.parquet")
RL = ("results/tables/rl_passk.csv",)
OPTIONS = (
    "-s",
    str(REPO / "Snakefile"),
    "--cores",
    "2",
    "--configfile",
    "config/test.yaml",
    "resume.yaml",
)
POOLS = Path("results/inference/pools/tiny-random/game24/vanilla")
FEATURES = Path("results/inference/features/tiny-random/game24/vanilla")
RUN = Path("results/rl/tiny-random/gsm8k/grpo/seed41")
# timing columns differ between any two runs; everything else must be equal
TIMING = ("seconds",)


def _run_dir(tmp_path: Path, name: str, wheel_dir: Path) -> Path:
    d = fresh_run_dir(tmp_path / name, wheel_dir)
    (d / "resume.yaml").write_text(RESUME_CONFIG)
    return d


def _kill_when(cwd: Path, targets, ready, what: str, timeout: float = 600) -> None:
    """Start the workflow on ``targets``, SIGKILL its whole process group as soon as ``ready()``."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *targets, *OPTIONS, "--rerun-incomplete"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not ready():
        time.sleep(0.1)
    finished_first = proc.poll() is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not finished_first, f"the workflow finished before it could be killed during {what}"
    snakemake("--unlock", *OPTIONS, cwd=cwd)


def _finished(folder: Path, pattern: str) -> dict[str, int]:
    """Files that a killed workflow finished, by mtime. The newest may belong to a job killed after
    writing it but before Snakemake recorded it as finished: that job reruns, so it is left out."""
    done = {p.name: p.stat().st_mtime_ns for p in folder.glob(pattern)}
    if done:
        done.pop(max(done, key=done.get))
    return done


def _assert_kept(folder: Path, done: dict[str, int]) -> None:
    for name, mtime in done.items():
        assert (folder / name).stat().st_mtime_ns == mtime, f"{folder / name} was rebuilt"


def _table(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return df.drop(columns=[c for c in df.columns if c.startswith(TIMING) or c.startswith("prov_")])


@pytest.mark.slow
def test_sigkill_in_pools_features_and_training_resumes_to_the_same_tables(tmp_path, wheel_dir):
    ref = _run_dir(tmp_path, "uninterrupted", wheel_dir)
    snakemake(*INFERENCE, *RL, *OPTIONS, cwd=ref, timeout=1800)

    run = _run_dir(tmp_path, "killed", wheel_dir)
    pools, features, rl = run / POOLS, run / FEATURES, run / RUN
    # 1. in the middle of pool generation
    _kill_when(
        run,
        INFERENCE,
        lambda: len(list(pools.glob("shard-*[0-9].parquet"))) >= 2,
        "pool generation",
    )
    pools_done = _finished(pools, "shard-*[0-9].parquet")
    assert 1 <= len(pools_done) < 3 and not (run / INFERENCE[0]).exists()
    # 2. in the middle of feature caching
    _kill_when(
        run, INFERENCE, lambda: len(list(features.glob("shard-*.json"))) >= 2, "feature caching"
    )
    features_done = _finished(features, "shard-*.json")
    assert 1 <= len(features_done) < 3 and not (run / INFERENCE[0]).exists()
    # 3. in the middle of training: after the step-1 checkpoint, before the run is done
    _kill_when(
        run,
        RL,
        lambda: any((rl / "checkpoints").glob("checkpoint-*/trainer_state.json")),
        "training",
    )
    assert not (rl / "done.json").exists() and (rl / "state" / "dev.csv").is_file()
    # 4. the rerun
    snakemake(*INFERENCE, *RL, *OPTIONS, "--rerun-incomplete", cwd=run, timeout=1800)
    _assert_kept(pools, pools_done)
    _assert_kept(features, features_done)
    log = (run / "logs/rl_train/tiny-random/gsm8k/grpo/seed41.log").read_text()
    assert "resuming from" in log and "checkpoint-" in log
    for table in (
        *INFERENCE,
        *RL,
        "results/tables/rl_dev.csv",
        "results/tables/rl_train.csv",
        "results/tables/rl_best.csv",
        "results/tables/rl_loglik.parquet",
    ):
        pd.testing.assert_frame_equal(_table(run / table), _table(ref / table), obj=table)
    a = pd.concat(pd.read_parquet(p) for p in sorted(pools.glob("shard-*[0-9].parquet")))
    b = pd.concat(pd.read_parquet(p) for p in sorted((ref / POOLS).glob("shard-*[0-9].parquet")))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))

    # a cached feature file changed on disk: caught when read, naming the file and the rule
    tensors = features / "shard-3.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    failed = snakemake(*INFERENCE, *OPTIONS, "--forcerun", "select_pool", cwd=run, check=False)
    assert failed.returncode != 0
    logs = "".join(p.read_text() for p in (run / "logs" / "select_pool").rglob("*.log"))
    assert f"{tensors.relative_to(run)} does not match its manifest's checksum" in logs
    assert "cache_features" in logs
    # the fix the message gives: delete both files and rerun the same command
    tensors.unlink()
    (features / "shard-3.json").unlink()
    snakemake(*INFERENCE, *OPTIONS, "--forcerun", "select_pool", cwd=run)
    for table in INFERENCE:
        pd.testing.assert_frame_equal(_table(run / table), _table(ref / table), obj=table)
