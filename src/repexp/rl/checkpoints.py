"""The files of one training run (``repexp.rl.train``): atomic tables, the best-model folder swapped
in whole, the last complete checkpoint to resume from, and publishing the finished run.

A run in progress keeps its tables and best model under ``<out>/state/`` (:data:`STATE`) and the
trainer's checkpoints under ``<out>/checkpoints/``; :func:`publish` copies them to the rule's
outputs only at the end, because Snakemake deletes a killed job's outputs before rerunning it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from repexp.atomic import atomic_path

log = logging.getLogger("repexp.rl.train")

STATE = "state"  # folder of the tables and best model of a run in progress
ROLLOUTS = "rollouts.csv"
PUBLISHED = (
    "dev.csv",
    "train_log.csv",
    "best.json",
    ROLLOUTS,
)  # copied from state/ to the outputs at the end
SKETCH = "weights_sketch.npz"  # CountSketches of the final and the initial weights (divergence)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if path.is_file() and path.stat().st_size:
        return pd.read_csv(path)
    return pd.DataFrame(columns=columns)


def write_json(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def swap_in(tmp: Path, dest: Path) -> None:
    """Replace the folder ``dest`` by ``tmp`` (both on one filesystem); never leaves ``dest``
    half-written."""
    old = dest.with_name(f".{dest.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)


def link_base_model(base: Path, dest: Path, manifest: dict) -> None:
    """``dest`` = links to the base model's files + our manifest (step 0 is the best)."""
    from repexp.models import MANIFEST, check_model_dir

    base = check_model_dir(base).resolve()
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in base.iterdir():
        if f.name != MANIFEST and not f.name.startswith("."):
            (tmp / f.name).symlink_to(f.resolve())
    base_manifest = json.loads((base / MANIFEST).read_text())
    (tmp / MANIFEST).write_text(
        json.dumps({**manifest, "base_manifest": base_manifest}, indent=2, sort_keys=True)
    )
    swap_in(tmp, dest)


def publish(state: Path, out: Path) -> None:
    """Copy the finished run's tables and best model from ``state/`` to the rule's outputs.

    The outputs are written only here, at the end: Snakemake deletes the outputs of a killed job
    before it reruns it, so anything a resumed run needs lives in ``state/`` (and ``checkpoints/``).
    ``best/`` is copied as hard links (no second copy of the weights; the base model's links stay
    links).
    """
    for name in PUBLISHED:
        with atomic_path(out / name) as tmp:
            shutil.copyfile(state / name, tmp)
    tmp = out / ".best.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(state / "best", tmp, symlinks=True, copy_function=os.link)
    swap_in(tmp, out / "best")


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint under ``out/checkpoints`` (None if there is none).

    The trainer writes ``trainer_state.json`` last; a checkpoint folder without it was cut off by a
    kill while it was being saved, and is removed (transformers' ``get_last_checkpoint`` would pick
    it).
    """
    ckpt = out / "checkpoints"
    folders = (
        sorted(
            (p for p in ckpt.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
            key=lambda p: int(p.name[11:]),
            reverse=True,
        )
        if ckpt.is_dir()
        else []
    )
    for folder in folders:
        if (folder / "trainer_state.json").is_file():
            return str(folder)
        log.warning("removing %s: incomplete (killed while it was saved)", folder)
        shutil.rmtree(folder)
    return None
