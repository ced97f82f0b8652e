"""Provenance of the result tables: config hash, git commit, package versions, stamping, the index
page."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from importlib import metadata

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import repexp
from repexp import provenance, report
from repexp.atomic import write_parquet

CONFIG = {
    "seed": 0,
    "models": {"m": {"source": "tiny_random", "seed": 1}},
    "tasks": {"gsm8k": {"source": "offline", "n_questions": 8, "splits": ["test"]}},
    "verifiers": {"workers": 2, "math_timeout_s": 5.0},
    "inference": {"models": ["m"], "pool": {"n": 8, "backend": "hf"}},
    "token_level": {"model": "m", "betas": [0.5]},
    "rl": {"model": "m", "seeds": [41], "learning_rate": 1e-5},
}


def _reordered(obj):
    """The same mapping with every key order reversed (recursively)."""
    if isinstance(obj, dict):
        return {k: _reordered(obj[k]) for k in reversed(list(obj))}
    return obj


# ------------------------------------------------------------------------------------------------
# config hash
# ------------------------------------------------------------------------------------------------
def test_config_hash_is_stable_under_key_order():
    sections = ["seed", "models", "inference"]
    h = provenance.config_hash(CONFIG, sections)
    assert re.fullmatch(r"[0-9a-f]{12}", h)
    assert provenance.config_hash(_reordered(CONFIG), sections) == h
    assert provenance.config_hash(CONFIG, list(reversed(sections))) == h
    # pinned: sha256 of the canonical JSON of the named sections
    text = json.dumps(
        {s: CONFIG[s] for s in sorted(sections)}, sort_keys=True, separators=(",", ":")
    )
    assert h == hashlib.sha256(text.encode()).hexdigest()[:12]


def test_config_hash_follows_only_its_sections():
    inference = provenance.stage_hash(CONFIG, "inference")
    rl = provenance.stage_hash(CONFIG, "rl")
    edited_rl = {**CONFIG, "rl": {**CONFIG["rl"], "learning_rate": 1e-6}}
    assert (
        provenance.stage_hash(edited_rl, "inference") == inference
    )  # RL edits leave inference alone
    assert provenance.stage_hash(edited_rl, "token_level") == provenance.stage_hash(
        CONFIG, "token_level"
    )
    assert provenance.stage_hash(edited_rl, "rl") != rl
    edited_pool = {
        **CONFIG,
        "inference": {**CONFIG["inference"], "pool": {"n": 16, "backend": "hf"}},
    }
    assert provenance.stage_hash(edited_pool, "inference") != inference
    assert provenance.stage_hash(edited_pool, "rl") != rl  # the RL test pools use the pool settings
    assert provenance.stage_hash({**CONFIG, "seed": 1}, "inference") != inference


# ------------------------------------------------------------------------------------------------
# git commit and packages
# ------------------------------------------------------------------------------------------------
def _no_parent_repo(monkeypatch, tmp_path):
    """git must not find a checkout above tmp_path."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for var in ("GIT_DIR", "GIT_WORK_TREE"):
        monkeypatch.delenv(var, raising=False)


def test_collect_outside_a_git_checkout(tmp_path, monkeypatch):
    _no_parent_repo(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    prov = provenance.collect("0123456789ab", stage="inference", model="m", seed=0, ignored=None)
    assert prov["git_commit"] == "unknown"
    assert prov["config_hash"] == "0123456789ab" and prov["stage"] == "inference"
    assert prov["model"] == "m" and prov["seed"] == 0 and "ignored" not in prov
    pkgs = dict(p.split("==") for p in prov["packages"].split(";"))
    assert pkgs["repexp"] == repexp.__version__
    assert pkgs["numpy"] == np.__version__ and pkgs["pandas"] == pd.__version__
    assert pkgs["torch"] == metadata.version("torch") and pkgs["transformers"] == metadata.version(
        "transformers"
    )
    assert re.fullmatch(r"3\.\d+\.\d+", pkgs["python"])
    assert provenance.collect()["config_hash"] == "unknown"


def test_no_git_binary_gives_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert provenance.git_commit() == "unknown"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_collect_in_a_git_checkout_gives_its_head(tmp_path, monkeypatch):
    _no_parent_repo(monkeypatch, tmp_path)
    for var, value in (
        ("GIT_AUTHOR_NAME", "t"),
        ("GIT_AUTHOR_EMAIL", "t@example.org"),
        ("GIT_COMMITTER_NAME", "t"),
        ("GIT_COMMITTER_EMAIL", "t@example.org"),
    ):
        monkeypatch.setenv(var, value)
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    git("init", "-q")
    (repo / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    monkeypatch.chdir(repo)
    assert provenance.collect("h")["git_commit"] == head
    (repo / "new.txt").write_text("untracked files do not make it dirty\n")
    assert provenance.git_commit() == head
    (repo / "a.txt").write_text("two\n")  # a modified tracked file does
    assert provenance.collect("h")["git_commit"] == f"{head}-dirty"
    assert provenance.git_commit(repo) == f"{head}-dirty"


def test_write_parquet_records_the_environment(tmp_path):
    out = tmp_path / "t.parquet"
    write_parquet(pd.DataFrame({"x": [1]}), out, task="t")
    meta = pq.read_schema(out).metadata
    assert json.loads(meta[b"repexp"]) == {"task": "t"}
    env = json.loads(meta[b"repexp_provenance"])
    assert env == provenance.environment()
    assert f"numpy=={np.__version__}" in env["packages"].split(";")


# ------------------------------------------------------------------------------------------------
# stamping and reading
# ------------------------------------------------------------------------------------------------
PROV = {
    "git_commit": "a" * 40,
    "config_hash": "0123e4567890",
    "packages": "repexp==0.1.0;numpy==2.0",
    "stage": "inference",
    "model": "m",
    "seed": 0,
}


def test_stamp_adds_columns_at_the_end_and_leaves_the_rest():
    df = pd.DataFrame({"task": ["math", "gsm8k"], "k": [1, 2], "mean": [0.5, np.nan]})
    out = provenance.stamp(df, PROV)
    assert list(out.columns) == [
        "task",
        "k",
        "mean",
        "prov_stage",
        "prov_git_commit",
        "prov_config_hash",
        "prov_model",
        "prov_seed",
        "prov_packages",
    ]
    pd.testing.assert_frame_equal(out[df.columns], df)
    assert list(df.columns) == ["task", "k", "mean"]  # the input is not modified
    assert (out["prov_git_commit"] == "a" * 40).all() and (out["prov_seed"] == "0").all()
    assert (out["prov_config_hash"] == "0123e4567890").all()
    # a table with model and seed columns carries them per row: no prov_model / prov_seed
    own = provenance.stamp(df.assign(model="x", seed=41), PROV)
    assert "prov_model" not in own and "prov_seed" not in own and (own["model"] == "x").all()
    # stamping again replaces the old stamp; strip removes it
    again = provenance.stamp(out, {**PROV, "config_hash": "ffffffffffff"})
    assert (
        list(again.columns) == list(out.columns)
        and (again["prov_config_hash"] == "ffffffffffff").all()
    )
    pd.testing.assert_frame_equal(provenance.strip(again), df)
    empty = provenance.stamp(df.iloc[:0], PROV)
    assert empty.empty and "prov_git_commit" in empty


def test_stamp_rows_keeps_the_columns_of_a_key_value_table():
    table = pd.DataFrame(
        {
            "section": ["Common"],
            "parameter": ["lr"],
            "key": ["learning_rate"],
            "math": ["1e-06"],
            "gsm8k": ["1e-06"],
        }
    )
    out = provenance.stamp_rows(table, PROV)
    assert list(out.columns) == list(table.columns)
    rows = out[out["section"] == "provenance"].set_index("key")
    assert (
        rows.loc["prov_git_commit", "math"] == "a" * 40
        and rows.loc["prov_config_hash", "gsm8k"] == "0123e4567890"
    )
    assert rows.loc["prov_seed", "parameter"] == "seed"
    pd.testing.assert_frame_equal(provenance.strip(out), table)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_read_summarises_a_written_table(tmp_path, fmt):
    df = provenance.stamp(pd.DataFrame({"model": ["m1", "m2", "m1"], "x": [1.0, 2.0, 3.0]}), PROV)
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    s = provenance.read(path)
    assert s["table"] == f"t.{fmt}" and s["rows"] == 3
    assert s["git_commit"] == ["a" * 40] and s["config_hash"] == [
        "0123e4567890"
    ]  # not read as a number
    assert s["model"] == ["m1", "m2"] and s["seed"] == ["0"] and s["stage"] == ["inference"]
    assert s["packages"] == ["repexp==0.1.0;numpy==2.0"]


def test_read_a_table_without_provenance(tmp_path):
    pd.DataFrame({"x": [1, 2]}).to_csv(tmp_path / "old.csv", index=False)
    s = provenance.read(tmp_path / "old.csv")
    assert s["rows"] == 2 and s["git_commit"] == [] and s["config_hash"] == []


def test_read_a_key_value_table(tmp_path):
    table = pd.DataFrame(
        {"section": ["Common"], "parameter": ["lr"], "key": ["learning_rate"], "math": ["1e-06"]}
    )
    provenance.stamp_rows(table, {**PROV, "stage": "rl", "seed": "41,42"}).to_csv(
        tmp_path / "hp.csv", index=False
    )
    s = provenance.read(tmp_path / "hp.csv")
    assert s["rows"] == 1 and s["stage"] == ["rl"] and s["seed"] == ["41,42"]
    assert s["config_hash"] == ["0123e4567890"] and s["git_commit"] == ["a" * 40]


def test_summarize_cli_stamps_every_table(tmp_path):
    from repexp import inference

    keys = {"model": "m", "task": "math", "sampler": "vanilla", "pooling": "mean"}
    questions = pd.DataFrame(
        {
            **keys,
            "qid": ["q0", "q0", "q1", "q1"],
            "method": ["random", "repexp"] * 2,
            "n": 8,
            "c": [2, 2, 0, 0],
            "pass1": [0.25, 0.25, 0.0, 0.0],
            "stc": [3.0, 2.0, np.nan, np.nan],
        }
    )
    passk = pd.DataFrame(
        {
            **keys,
            "qid": ["q0"] * 4 + ["q1"] * 4,
            "method": ["random", "random", "repexp", "repexp"] * 2,
            "k": [1, 2] * 4,
            "pass_at_k": [0.25, 0.46, 0.25, 0.6, 0.0, 0.0, 0.0, 0.0],
        }
    )
    questions.to_parquet(tmp_path / "q.parquet")
    passk.to_parquet(tmp_path / "p.parquet")
    given = {"stage": "inference", "config_hash": "0123e4567890", "model": "m", "seed": 7}
    out = tmp_path / "tables"
    assert (
        inference.main(
            [
                "summarize",
                "--questions",
                str(tmp_path / "q.parquet"),
                "--passk",
                str(tmp_path / "p.parquet"),
                "--reference-model=m",
                "--out-dir",
                str(out),
                "--provenance",
                json.dumps(given),
            ]
        )
        == 0
    )
    stc, _, _ = inference.summarize(questions, passk)
    written = pd.read_csv(out / "stc.csv", dtype={"prov_config_hash": str})
    pd.testing.assert_frame_equal(written[stc.columns], stc, check_dtype=False)
    for name in ("stc.csv", "deciles.csv", "passk.csv", "questions.parquet"):
        s = provenance.read(out / name)
        assert s["config_hash"] == ["0123e4567890"] and s["stage"] == ["inference"], name
        assert s["packages"] == [provenance.packages()] and len(s["git_commit"]) == 1, name
        assert s["model"] == ["m"], name
    assert (
        "prov_seed" in written and (written["prov_seed"] == 7).all() and "prov_model" not in written
    )


# ------------------------------------------------------------------------------------------------
# the results index page
# ------------------------------------------------------------------------------------------------
def _row(page: str, table: str) -> str:
    rows = [r for r in page.split("<tr") if f"<code>{table}</code>" in r]
    assert len(rows) == 1, table
    return rows[0]


def test_index_page_shows_provenance_and_flags_a_mismatch(tmp_path, monkeypatch):
    _no_parent_repo(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)  # no checkout: this page's commit is unknown
    env = provenance.collect()["packages"]
    tables = tmp_path / "results" / "tables"
    tables.mkdir(parents=True)
    good = {**PROV, "packages": env, "config_hash": "111111111111"}
    stale = {
        **good,
        "git_commit": "b" * 40 + "-dirty",
        "config_hash": "222222222222",
        "packages": "repexp==0.0.1",
    }
    provenance.stamp(pd.DataFrame({"model": ["m"], "x": [1]}), good).to_csv(
        tables / "stc.csv", index=False
    )
    provenance.stamp(pd.DataFrame({"model": ["m"], "k": [1]}), good).to_csv(
        tables / "passk.csv", index=False
    )
    provenance.stamp(pd.DataFrame({"model": ["m"], "y": [2]}), stale).to_parquet(
        tables / "questions.parquet"
    )
    pd.DataFrame({"z": [1]}).to_csv(
        tables / "deciles.csv", index=False
    )  # written before provenance existed
    png = tmp_path / "results" / "figures" / "stc.png"
    png.parent.mkdir()
    png.write_bytes(b"png")
    out = tmp_path / "results" / "index.html"
    paths = [str(tables / n) for n in ("stc.csv", "passk.csv", "questions.parquet", "deciles.csv")]
    assert (
        report.main(
            [
                "--figures",
                str(png),
                "--tables",
                *paths,
                "--stage-hashes",
                json.dumps({"inference": "111111111111", "rl": "333333333333"}),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    page = out.read_text()
    assert "<h2 id='provenance'>Provenance</h2>" in page
    assert (
        "This page: commit <code>unknown</code>" in page
        and "inference <code>111111111111</code>" in page
    )
    assert env.split(";")[0] in page  # this environment's packages are listed
    ok = _row(page, "stc.csv")
    assert (
        "<code>" + "a" * 12 + "</code>" in ok
        and "<code>111111111111</code>" in ok
        and "<code>m</code>" in ok
    )
    assert "env 1" in ok and "<td class=flag>ok</td>" in ok
    assert "<td class=flag>ok</td>" in _row(page, "passk.csv")
    bad = _row(page, "questions.parquet")
    assert "<code>" + "b" * 12 + "-dirty</code>" in bad and "<code>222222222222</code>" in bad
    assert "commit differs from the other tables" in bad
    assert "config changed since (this config: 111111111111)" in bad
    assert "packages differ from this environment" in bad and "env 2" in bad
    assert "repexp==0.0.1" in page
    assert "no provenance recorded" in _row(page, "deciles.csv")


def test_index_page_flags_a_commit_other_than_the_checkout(tmp_path, monkeypatch):
    table = tmp_path / "stc.csv"
    provenance.stamp(pd.DataFrame({"x": [1]}), PROV).to_csv(table, index=False)
    current = {"git_commit": "c" * 40, "packages": PROV["packages"]}
    section = report.provenance_section([str(table)], current, {"inference": PROV["config_hash"]})
    row = _row(section, "stc.csv")
    assert "commit differs from this checkout" in row and "config changed" not in row
    assert "packages differ" not in row
    same = report.provenance_section([str(table)], {**current, "git_commit": "a" * 40})
    assert "<td class=flag>ok</td>" in _row(same, "stc.csv")
