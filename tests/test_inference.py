"""The inference-time stage on synthetic pools: per-question tables, summaries, the overview view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from repexp.inference import overview, pass_ks, select_pool, summarize
from repexp.metrics import pass_at_k
from repexp.pools import question_seed
from repexp.select import first_picks, project, repexp_order

KW = dict(
    proj_dim=8,
    lam=1.0,
    trials=3,
    k_max=None,
    center=True,
    projection_seed=0,
    seed=7,
    seed_parts=("m", "t", "vanilla", "mean"),
)


def synthetic_pool(rng, n_questions=4, n=12, dim=16):
    rows, feats = [], []
    for q in range(n_questions):
        c = [0, 1, 5, n][q % 4]  # unsolved, one correct, some, all
        correct = np.zeros(n)
        correct[rng.permutation(n)[:c]] = 1
        for s in range(n):
            rows.append({"qid": f"q{q}", "sample": s, "correct": correct[s]})
        feats.append(rng.normal(size=(n, dim)))
    return np.concatenate(feats), pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pool():
    return synthetic_pool(np.random.default_rng(0))


def test_questions_table_closed_forms(pool):
    feats, rows = pool
    trials, questions, passk = select_pool(feats, rows, **KW)
    q = questions.set_index("qid")
    assert q["c"].tolist() == [0, 1, 5, 12] and (q["n"] == 12).all()
    assert np.isnan(q.loc["q0", "stc_random"]) and np.isnan(q.loc["q0", "stc_repexp"])
    for qid in ["q1", "q2", "q3"]:
        assert q.loc[qid, "stc_random"] == pytest.approx((12 + 1) / (q.loc[qid, "c"] + 1))
    assert q.loc["q3", "stc_repexp"] == 1.0  # every response correct: the first pick is


def test_trials_follow_algorithm_1_with_seeded_first_picks(pool):
    feats, rows = pool
    trials, questions, _ = select_pool(feats, rows, **KW)
    phi = project(feats, KW["proj_dim"], KW["projection_seed"])
    for qid, grp in rows.groupby("qid"):
        idx = grp.index.to_numpy()
        firsts = first_picks(
            len(idx), 3, question_seed(7, "m", "t", "vanilla", "mean", qid, "first-picks")
        )
        got = trials[trials.qid == qid].sort_values("trial")
        for t, first in enumerate(firsts):
            want = repexp_order(phi[idx], len(idx), first=int(first), lam=1.0)
            assert got["order"].iloc[t] == grp["sample"].to_numpy()[want].tolist()
            correct = grp["correct"].to_numpy()[want] > 0
            stc = got["stc"].iloc[t]
            assert np.isnan(stc) if not correct.any() else stc == np.argmax(correct) + 1
        assert sorted(got["order"].iloc[0]) == list(range(len(idx)))


def test_batched_torch_path_gives_the_same_tables(pool):
    """The GPU path (run here by torch on the CPU: device "cpu:0") batches questions x trials with
    padded pools of unequal size, and gives the numpy path's tables."""
    feats, rows = pool
    drop = rows.index[(rows.qid == "q3") & (rows["sample"] >= 9)]  # q3 keeps 9 of 12 responses
    rows, feats = rows.drop(drop).reset_index(drop=True), np.delete(feats, drop, axis=0)
    ref = select_pool(feats, rows, **KW, device="cpu")
    for batch in (2, 3):
        got = select_pool(feats, rows, **KW, device="cpu:0", batch_questions=batch)
        for a, b in zip(ref, got, strict=True):
            pd.testing.assert_frame_equal(a, b)
    # k_max = 9 puts all four questions (12 and 9 responses) in one padded batch
    ref9 = select_pool(feats, rows, **{**KW, "k_max": 9}, device="cpu")
    got9 = select_pool(feats, rows, **{**KW, "k_max": 9}, device="cpu:0", batch_questions=4)
    for a, b in zip(ref9, got9, strict=True):
        pd.testing.assert_frame_equal(a, b)


def test_passk_table(pool):
    feats, rows = pool
    _, questions, passk = select_pool(feats, rows, **KW)
    assert pass_ks(12) == [1, 2, 4, 8, 12] and pass_ks(8) == [1, 2, 4, 8]
    q2 = passk[passk.qid == "q2"].set_index("k")
    for k in [1, 2, 4, 8, 12]:
        assert q2.loc[k, "random"] == pytest.approx(pass_at_k(12, 5, k))
    assert q2.loc[12, "repexp"] == 1.0 and (passk[passk.qid == "q0"]["repexp"] == 0).all()


def test_k_max_truncates_orders(pool):
    feats, rows = pool
    trials, questions, passk = select_pool(feats, rows, **{**KW, "k_max": 4})
    assert trials["order"].map(len).eq(4).all()
    assert passk["k"].max() == 4


def _keyed(questions, passk, model, task, sampler="vanilla", pooling="mean"):
    keys = dict(model=model, task=task, sampler=sampler, pooling=pooling)
    return questions.assign(**keys), passk.assign(**keys)


def test_summarize_means_ranks_and_unsolved(pool):
    feats, rows = pool
    _, q, pk = select_pool(feats, rows, **KW)
    qa, pa = _keyed(q, pk, "strong", "t")
    weak = q.copy()
    weak["pass1"] = weak["pass1"] / 2
    qb, pb = _keyed(weak, pk, "weak", "t")
    stc, deciles, passk = summarize(pd.concat([qa, qb]), pd.concat([pa, pb]))
    row = stc[stc.model == "strong"].iloc[0]
    solved = q.dropna(subset=["stc_random"])
    assert row["unsolved"] == 1 and row["used"] == 3
    assert row["stc_random"] == pytest.approx(solved["stc_random"].mean())
    assert row["reduction"] == pytest.approx((row.stc_random - row.stc_repexp) / row.stc_random)
    assert row["speedup"] == pytest.approx(row.stc_random / row.stc_repexp - 1)
    assert stc.set_index("model")["model_rank"].to_dict() == {"strong": 1, "weak": 2}
    incl, _, _ = summarize(qa, pa, exclude_unsolved=False)
    # an unsolved question counts n + 1 = 13 for both methods
    assert incl.iloc[0]["stc_random"] == pytest.approx((solved["stc_random"].sum() + 13) / 4)
    assert set(passk["k"]) == {1, 2, 4, 8, 12}


def test_deciles_from_the_dataset_difficulty_field(pool):
    feats, rows = pool
    _, q, pk = select_pool(feats, rows, **KW)
    qa, pa = _keyed(q, pk, "m", "game24")
    diff = pd.DataFrame(
        {"qid": ["q0", "q1", "q2", "q3"], "task": "game24", "difficulty": [0.9, 0.8, 0.1, 0.5]}
    )
    _, deciles, _ = summarize(qa, pa, difficulty=diff)
    # bins are over every question (4 bins for 4): q2 -> 0, q3 -> 1, q1 -> 2, q0 -> 3; q0 is
    # unsolved, so its bin has no STC row
    assert deciles["decile"].tolist() == [0.0, 1.0, 2.0]
    assert deciles["stc_random"].tolist() == pytest.approx(
        q.set_index("qid").loc[["q2", "q3", "q1"], "stc_random"].tolist()
    )


def _stats(model, task, c, n=12, format_ok=None, sampler="vanilla"):
    """pool_stats rows: questions q0.. with c[i] correct of n and format_ok[i] in the format."""
    format_ok = format_ok or [n] * len(c)
    return pd.DataFrame(
        {
            "model": model,
            "task": task,
            "sampler": sampler,
            "qid": [f"q{i}" for i in range(len(c))],
            "n": n,
            "c": c,
            "format_ok": format_ok,
        }
    )


def test_format_miss_rate_per_pool(pool):
    feats, rows = pool
    _, q, pk = select_pool(feats, rows, **KW)
    qa, pa = _keyed(q, pk, "m", "t")
    qb, pb = _keyed(q, pk, "m", "t", pooling="last")
    stats = _stats("m", "t", [0, 1, 5, 12], format_ok=[12, 6, 0, 12])  # 30 of 48 in the format
    stc, _, _ = summarize(pd.concat([qa, qb]), pd.concat([pa, pb]), pool_stats=stats)
    # both poolings of the pool
    assert stc["format_miss"].tolist() == pytest.approx([18 / 48, 18 / 48])
    stc, _, _ = summarize(qa, pa)
    assert stc["format_miss"].isna().all()  # no stats: unknown


def test_deciles_of_a_pools_only_reference_model(pool):
    """A reference model outside the grid (pool stats only) bins every grid model's questions by its
    random STC (n + 1)/(c + 1); a question it never solves is the hardest."""
    feats, rows = pool
    _, q, pk = select_pool(feats, rows, **KW)
    qa, pa = _keyed(q, pk, "m", "math")
    # the reference solves q3 best, then q0, then q2; never q1 -> order q3, q0, q2, q1
    ref = _stats("ref", "math", [0, 0, 0, 0])
    ref["c"] = [6, 0, 2, 11]
    stats = pd.concat([_stats("m", "math", [0, 1, 5, 12]), ref])
    stc, deciles, _ = summarize(qa, pa, reference_model="ref", pool_stats=stats)
    assert set(stc["model"]) == {"m"}  # the reference is no row of the tables
    by_q = q.set_index("qid")
    # 4 bins of one question: q3 -> 0, q0 -> 1 (unsolved by m: no STC row), q2 -> 2, q1 -> 3
    assert deciles["decile"].tolist() == [0.0, 2.0, 3.0]
    want = by_q.loc[["q3", "q2", "q1"], "stc_random"].tolist()
    assert deciles["stc_random"].tolist() == pytest.approx(want)
    assert (deciles["reference"] == "ref").all() and not deciles["self_referenced"].any()


def test_deciles_mark_the_self_referenced_model(pool):
    feats, rows = pool
    _, q, pk = select_pool(feats, rows, **KW)
    qa, pa = _keyed(q, pk, "strong", "math")
    weak = q.copy()
    weak["pass1"] = weak["pass1"] / 2
    qb, pb = _keyed(weak, pk, "weak", "math")
    questions, passk = pd.concat([qa, qb]), pd.concat([pa, pb])
    stats = pd.concat([_stats(m, "math", [0, 1, 5, 12]) for m in ("strong", "weak")])
    _, deciles, _ = summarize(questions, passk, reference_model="strong", pool_stats=stats)
    flags = deciles.groupby("model")["self_referenced"].agg(["all", "any"])
    assert flags.loc["strong", "all"] and not flags.loc["weak", "any"]
    assert (deciles["reference"] == "strong").all()
    # the same bins from the reference's own selection rows (no pool stats)
    _, from_rows, _ = summarize(questions, passk, reference_model="strong")
    pd.testing.assert_frame_equal(from_rows, deciles)
    # a task without a reference pool falls back to the dataset's difficulty field
    qc, pc = _keyed(q, pk, "weak", "game24")
    diff = pd.DataFrame(
        {"qid": ["q0", "q1", "q2", "q3"], "task": "game24", "difficulty": [0.9, 0.8, 0.1, 0.5]}
    )
    _, mixed, _ = summarize(
        pd.concat([questions, qc]),
        pd.concat([passk, pc]),
        reference_model="strong",
        pool_stats=stats,
        difficulty=diff,
    )
    g24 = mixed[mixed["task"] == "game24"]
    assert (g24["reference"] == "difficulty").all() and not g24["self_referenced"].any()


def test_summarize_cli_reads_the_pool_stats(pool, tmp_path):
    from repexp.inference import main

    feats, rows = pool
    _, q, pk = select_pool(feats, rows, **KW)
    qa, pa = _keyed(q, pk, "m", "math")
    ref = _stats("ref", "math", [6, 0, 2, 11])
    files = {
        "q": tmp_path / "q.parquet",
        "pk": tmp_path / "pk.parquet",
        "m": tmp_path / "m.parquet",
        "ref": tmp_path / "ref.parquet",
    }
    qa.to_parquet(files["q"])
    pa.to_parquet(files["pk"])
    _stats("m", "math", [0, 1, 5, 12], format_ok=[0, 12, 12, 12]).to_parquet(files["m"])
    ref.to_parquet(files["ref"])
    out = tmp_path / "tables"
    assert (
        main(
            [
                "summarize",
                "--questions",
                str(files["q"]),
                "--passk",
                str(files["pk"]),
                "--pool-stats",
                str(files["m"]),
                str(files["ref"]),
                "--reference-model=ref",
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    stc = pd.read_csv(out / "stc.csv")
    assert stc["format_miss"].tolist() == pytest.approx([12 / 48])
    deciles = pd.read_csv(out / "deciles.csv")
    assert deciles["decile"].tolist() == [0.0, 2.0, 3.0] and set(deciles["reference"]) == {"ref"}
    assert not deciles["self_referenced"].any()


def test_overview_marks_picks_of_a_mixed_question(pool):
    feats, rows = pool
    view = overview(feats, rows, proj_dim=8, lam=1.0, picks=5, projection_seed=0, seed=0)
    assert (
        view["qid"].nunique() == 1 and view["qid"].iloc[0] == "q2"
    )  # 5/12 correct: closest to half
    assert sorted(view["repexp_pick"].dropna()) == [1, 2, 3, 4, 5]
    assert sorted(view["random_pick"].dropna()) == [1, 2, 3, 4, 5]
    assert len(view) == 12 and np.isfinite(view[["x", "y"]].to_numpy()).all()


# ------------------------------------------------------------------------------------------------
# pools on disk: shard by shard (the select and overview CLIs)
# ------------------------------------------------------------------------------------------------
def _write_shards(tmp_path, feats, rows, per_shard, dtype="float32"):
    """The pool as feature shards (the real cache writer) and score shards, ``per_shard`` questions each."""
    from repexp.atomic import write_parquet
    from repexp.features import write_cache

    qids = list(pd.unique(rows["qid"]))
    manifests, scores = [], []
    for s in range(0, len(qids), per_shard):
        part = rows[rows["qid"].isin(qids[s : s + per_shard])]
        m = tmp_path / f"shard-{s // per_shard}.json"
        write_cache(
            m,
            {"mean": feats[part.index.to_numpy()]},
            part,
            model="m",
            dtype=dtype,
            shard_name=m.stem,
        )
        write_parquet(part[["qid", "sample", "correct"]], m.with_suffix(".scores.parquet"))
        manifests.append(str(m))
        scores.append(str(m.with_suffix(".scores.parquet")))
    return manifests, scores


def _cli_select(manifests, scores, prefix, *extra):
    from repexp.inference import main

    assert (
        main(
            [
                "select",
                "--features",
                *manifests,
                "--scores",
                *scores,
                "--model",
                "m",
                "--task",
                "t",
                "--sampler",
                "vanilla",
                "--pooling",
                "mean",
                "--proj-dim",
                "8",
                "--trials",
                "3",
                "--seed",
                "7",
                "--out-prefix",
                str(prefix),
                *extra,
            ]
        )
        == 0
    )
    return [
        pd.read_parquet(f"{prefix}.{name}.parquet") for name in ("trials", "questions", "passk")
    ]


@pytest.mark.parametrize("threads", [1, 2])
def test_select_cli_shard_by_shard_equals_the_whole_pool(pool, tmp_path, threads):
    """The CLI reads, projects and selects one shard at a time (two with workers); its tables equal
    select_pool on the concatenated pool, row for row, whatever the shard size and worker count."""
    feats, rows = pool
    feats = feats.astype(np.float32)  # the cache's dtype: the in-memory run sees the same values
    ref = select_pool(feats.astype(np.float64), rows, **KW)
    keys = dict(model="m", task="t", sampler="vanilla", pooling="mean")
    for per_shard in (1, 3):
        manifests, scores = _write_shards(tmp_path / f"s{per_shard}", feats, rows, per_shard)
        got = _cli_select(
            manifests, scores, tmp_path / f"s{per_shard}" / "sel", "--threads", str(threads)
        )
        for a, b in zip(ref, got, strict=True):
            pd.testing.assert_frame_equal(a.assign(**keys), b)


def test_select_shards_workers_and_load_pool_agree(tmp_path):
    """9 questions in shards of 2 (the last of 1), 2 workers: at most 4 questions in flight, so shards
    finish while later ones are submitted; the tables come out shard by shard, in pool order."""
    from repexp.inference import load_pool, pool_shards, select_shards

    feats, rows = synthetic_pool(np.random.default_rng(1), n_questions=9)
    manifests, scores = _write_shards(tmp_path, feats.astype(np.float32), rows, 2)
    whole, merged = load_pool(manifests, scores, "mean")
    assert whole.dtype == np.float64 and np.array_equal(whole, feats.astype(np.float32))
    pd.testing.assert_frame_equal(merged[["qid", "sample", "correct"]], rows)
    ref = select_pool(whole, merged, **KW)
    parts = list(select_shards(pool_shards(manifests, scores, "mean"), **KW, workers=2))
    assert [len(p[1]) for p in parts] == [2, 2, 2, 2, 1]
    for i, table in enumerate(ref):
        pd.testing.assert_frame_equal(pd.concat([p[i] for p in parts], ignore_index=True), table)


def test_pool_shards_errors(pool, tmp_path):
    from repexp.inference import pool_shards

    feats, rows = pool
    manifests, scores = _write_shards(tmp_path, feats.astype(np.float32), rows, 2)
    with pytest.raises(ValueError, match="2 feature manifests but 1 score tables"):
        next(pool_shards(manifests, scores[:1], "mean"))
    with pytest.raises(ValueError, match="out of step; rerun score_pool"):
        next(pool_shards(manifests, scores[::-1], "mean"))
    with pytest.raises(ValueError, match="also in an earlier shard"):
        list(pool_shards([manifests[0], manifests[0]], [scores[0], scores[0]], "mean"))


def test_overview_cli_reads_one_shard_and_equals_the_whole_pool_view(pool, tmp_path):
    from repexp.inference import overview_pool

    feats, rows = pool
    feats = feats.astype(np.float32)
    manifests, scores = _write_shards(tmp_path, feats, rows, 1)
    want = overview(
        feats.astype(np.float64), rows, proj_dim=8, lam=1.0, picks=5, projection_seed=0, seed=0
    )
    # the chosen question (q2) lies in shard 2: the other shards' feature files are never read
    for i in (0, 1, 3):
        Path(manifests[i]).with_suffix(".safetensors").unlink()
    got = overview_pool(manifests, scores, proj_dim=8, lam=1.0, picks=5, projection_seed=0, seed=0)
    pd.testing.assert_frame_equal(got, want)


def test_a_worker_error_reaches_the_caller(pool):
    from repexp.inference import select_shards

    feats, rows = pool
    bad = feats.copy()
    bad[13, 2] = np.nan  # question q1
    with pytest.raises(ValueError, match="NaN or Inf"):
        list(select_shards([(bad, rows)], **KW, workers=2))
