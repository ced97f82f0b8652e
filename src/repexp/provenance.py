"""Provenance of the result tables: which commit, configuration, packages, model and seed made them.

Every summary table in ``results/tables`` carries ``prov_*`` columns (the same value on every row):

* ``prov_stage``: the stage that wrote it (``inference``, ``token_level``, ``rl``);
* ``prov_git_commit``: ``git rev-parse HEAD`` of the checkout the job ran in, ``-dirty`` appended
  when tracked files were modified, ``unknown`` outside a git checkout or without git;
* ``prov_config_hash``: :func:`config_hash` of the config sections the stage reads
  (:data:`STAGE_SECTIONS`), so that editing the ``rl`` section leaves the inference tables' hash
  alone;
* ``prov_model``, ``prov_seed``: the stage's model(s) and seed(s), only where the table has no
  ``model`` / ``seed`` column of its own (those carry them per row);
* ``prov_packages``: ``repexp==...;python==...;torch==...;...`` of the job's environment.

Key/value tables (``rl_hparams.csv``: section, parameter, key, one column per task) get the same
fields as rows of section ``provenance`` instead (:func:`stamp_rows`), so their columns stay the
tasks. :func:`strip` removes both forms (the notebooks read the tables through it) and
:func:`read` summarises a table's provenance for the results page.

>>> round_trip = strip(stamp(pd.DataFrame({"x": [1]}), {"git_commit": "abc", "config_hash": "h"}))
>>> list(round_trip.columns)
['x']
>>> config_hash({"seed": 0, "rl": {"a": 1}}, ["seed"]) == config_hash(
...     {"rl": {"a": 2}, "seed": 0}, ["seed"]
... )
True
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import pandas as pd

PREFIX = "prov_"
# The config sections each stage's tables depend on (top-level keys of the config).
STAGE_SECTIONS = {
    "inference": ["seed", "models", "tasks", "verifiers", "inference"],
    "token_level": ["seed", "models", "tasks", "verifiers", "inference", "token_level"],
    "rl": ["seed", "models", "tasks", "verifiers", "inference", "rl"],
}
# Distributions whose versions are recorded (absent ones, e.g. vllm on CPU machines, are left out).
PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "vllm",
    "accelerate",
    "datasets",
    "numpy",
    "pandas",
    "pyarrow",
    "snakemake",
    "math-verify",
)
# Column order of the stamp; packages last (the long one).
FIELDS = ("stage", "git_commit", "config_hash", "model", "seed", "packages")
LABELS = {
    "stage": "stage",
    "git_commit": "git commit",
    "config_hash": "config hash",
    "model": "model",
    "seed": "seed",
    "packages": "packages",
}
UNKNOWN = "unknown"


def config_hash(config: Mapping, sections: Sequence[str]) -> str:
    """sha256 (first 12 hex digits) of the canonical JSON (sorted keys) of the named top-level
    sections of ``config``; a missing section hashes as null."""
    chosen = {s: config.get(s) for s in sorted(set(sections))}
    text = json.dumps(chosen, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stage_hash(config: Mapping, stage: str) -> str:
    """:func:`config_hash` of the sections of ``stage`` (:data:`STAGE_SECTIONS`)."""
    return config_hash(config, STAGE_SECTIONS[stage])


def _git(*args: str, cwd: str | os.PathLike | None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """HEAD of the git checkout at ``cwd`` (default: the working directory), ``-dirty`` appended
    when a tracked file differs from it; ``unknown`` when there is no git or no checkout."""
    try:
        head = _git("rev-parse", "HEAD", cwd=cwd)
        dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return f"{head}-dirty" if dirty else head or UNKNOWN


def packages() -> str:
    """``repexp==…;python==…;torch==…;…``: the versions of :data:`PACKAGES` that are installed."""
    from repexp import __version__

    parts = [f"repexp=={__version__}", f"python=={platform.python_version()}"]
    for name in PACKAGES:
        try:
            parts.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ";".join(parts)


def collect(config_hash: str = UNKNOWN, **extra) -> dict:
    """The provenance of a table written now: git commit (of the working directory), the given
    config hash, package versions, and ``extra`` fields (``stage``, ``model``, ``seed``; ``None``
    and empty values are dropped)."""
    prov = {
        "git_commit": git_commit(),
        "config_hash": config_hash or UNKNOWN,
        "packages": packages(),
    }
    prov.update({k: v for k, v in extra.items() if v is not None and v != ""})
    return prov


def add_argument(parser) -> None:
    """The ``--provenance`` flag of the commands that write result tables."""
    parser.add_argument(
        "--provenance",
        default="{}",
        help="JSON object: config_hash, stage, model, seed of the tables "
        "(the workflow's stage_provenance); git commit and packages are read here",
    )


def from_cli(text: str | None) -> dict:
    """:func:`collect` with the fields of a ``--provenance`` JSON object."""
    return collect(**json.loads(text or "{}"))


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """git commit and packages of this process (cached: for the metadata of every Parquet file)."""
    return {"git_commit": git_commit(), "packages": packages()}


def _fields(prov: Mapping) -> list[str]:
    return [k for k in FIELDS if prov.get(k) is not None] + sorted(set(prov) - set(FIELDS))


def _text(value) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def stamp(df: pd.DataFrame, prov: Mapping) -> pd.DataFrame:
    """``df`` with a ``prov_<field>`` column per provenance field, at the end; ``model`` and
    ``seed`` only where ``df`` has no such column. Earlier ``prov_*`` columns are replaced."""
    out = strip(df)
    for key in _fields(prov):
        if key in ("model", "seed") and key in out.columns:
            continue
        out[PREFIX + key] = _text(prov[key])
    return out


def stamp_rows(
    df: pd.DataFrame,
    prov: Mapping,
    *,
    key: str = "key",
    section: str = "section",
    label: str = "parameter",
) -> pd.DataFrame:
    """A key/value table (``section``, ``label``, ``key`` and value columns) with one row per
    provenance field appended: section ``provenance``, key ``prov_<field>``, the value in every
    value column."""
    out = strip(df)
    values = [c for c in out.columns if c not in (key, section, label)]
    rows = [
        {
            section: "provenance",
            label: LABELS.get(k, k),
            key: PREFIX + k,
            **dict.fromkeys(values, _text(prov[k])),
        }
        for k in _fields(prov)
    ]
    return pd.concat([out, pd.DataFrame(rows, columns=out.columns)], ignore_index=True)


def strip(df: pd.DataFrame, key: str = "key") -> pd.DataFrame:
    """``df`` without its provenance: no ``prov_*`` columns, no ``prov_*`` rows of a key column."""
    out = df[[c for c in df.columns if not str(c).startswith(PREFIX)]]
    if key in out.columns:
        out = out[~out[key].astype(str).str.startswith(PREFIX)].reset_index(drop=True)
    return out.copy()


def _columns(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    try:
        return list(pd.read_csv(path, nrows=0).columns)
    except pd.errors.EmptyDataError:  # an empty file: no columns, no rows
        return []


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path, columns=columns).astype("string")
    return pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, na_values=[""])


def _unique(values) -> list[str]:
    return sorted({str(v) for v in values if not pd.isna(v) and str(v) != ""})


def read(path: str | os.PathLike) -> dict:
    """A table's provenance, for the results page: ``{"table", "rows", "<field>": [distinct
    values]}`` over every field of :data:`FIELDS` (``model`` / ``seed`` from the table's own
    columns where it has them); a field the table does not record is an empty list."""
    path = Path(path)
    cols = _columns(path)
    summary = {"table": path.name, "rows": 0, **{k: [] for k in FIELDS}}
    prov_cols = [c for c in cols if c.startswith(PREFIX)]
    if not cols:
        return summary
    if prov_cols or "key" not in cols:
        own = [c for c in ("model", "seed") if c in cols]
        df = _read(path, prov_cols + own or cols[:1])  # one column at least: the row count
        summary["rows"] = len(df)
        for c in prov_cols:
            summary[c[len(PREFIX) :]] = _unique(df[c])
        for c in own:
            summary[c] = _unique(df[c])
        return summary
    df = _read(path, cols)  # a key/value table: provenance rows
    rows = df[df["key"].astype(str).str.startswith(PREFIX)]
    summary["rows"] = len(df) - len(rows)
    values = [c for c in cols if c not in ("section", "parameter", "key")]
    for _, r in rows.iterrows():
        summary[r["key"][len(PREFIX) :]] = _unique(r[c] for c in values)
    return summary
