"""The inference-time stage on synthetic pools: per-question tables, summaries, the overview
view; the long tables against the wide ones of the code before them; selectors in the tables."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from repexp.inference import overview, pass_ks, select_pool, summarize
from repexp.metrics import methods_wide, pass_at_k, versus
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
    assert list(questions.columns) == ["qid", "method", "n", "c", "pass1", "stc"]
    assert questions["method"].tolist() == ["random", "repexp"] * 4
    q = methods_wide(questions).set_index("qid")
    assert q["c"].tolist() == [0, 1, 5, 12] and (q["n"] == 12).all()
    assert np.isnan(q.loc["q0", "stc_random"]) and np.isnan(q.loc["q0", "stc_repexp"])
    for qid in ["q1", "q2", "q3"]:
        assert q.loc[qid, "stc_random"] == pytest.approx((12 + 1) / (q.loc[qid, "c"] + 1))
    assert q.loc["q3", "stc_repexp"] == 1.0  # every response correct: the first pick is


def test_trials_follow_algorithm_1_with_seeded_first_picks(pool):
    feats, rows = pool
    trials, questions, _ = select_pool(feats, rows, **KW)
    assert set(trials["method"]) == {"repexp"}  # random's STC and pass@k are closed forms
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
    _, questions, long = select_pool(feats, rows, **KW)
    assert list(long.columns) == ["qid", "method", "k", "pass_at_k"]
    passk = methods_wide(long, "pass_at_k", name="{method}")
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
    assert stc["method"].tolist() == ["random", "repexp"] * 2
    assert "reduction" not in stc  # a comparison, not a per-method column: metrics.versus
    stc = versus(stc)
    row = stc[stc.model == "strong"].iloc[0]
    q = methods_wide(q)
    solved = q.dropna(subset=["stc_random"])
    assert row["unsolved"] == 1 and row["used"] == 3
    assert row["stc_random"] == pytest.approx(solved["stc_random"].mean())
    assert row["reduction"] == pytest.approx((row.stc_random - row.stc_repexp) / row.stc_random)
    assert row["speedup"] == pytest.approx(row.stc_random / row.stc_repexp - 1)
    assert stc.set_index("model")["model_rank"].to_dict() == {"strong": 1, "weak": 2}
    incl, _, _ = summarize(qa, pa, exclude_unsolved=False)
    incl = versus(incl)
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
    assert deciles["method"].tolist() == ["random", "repexp"] * 3
    deciles = methods_wide(deciles)
    # bins are over every question (4 bins for 4): q2 -> 0, q3 -> 1, q1 -> 2, q0 -> 3; q0 is
    # unsolved, so its bin has no STC row
    assert deciles["decile"].tolist() == [0.0, 1.0, 2.0]
    assert deciles["stc_random"].tolist() == pytest.approx(
        methods_wide(q).set_index("qid").loc[["q2", "q3", "q1"], "stc_random"].tolist()
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
    stc = versus(stc)
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
    deciles = methods_wide(deciles)
    assert set(stc["model"]) == {"m"}  # the reference is no row of the tables
    by_q = methods_wide(q).set_index("qid")
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
    assert stc["format_miss"].tolist() == pytest.approx([12 / 48] * 2)  # random and repexp rows
    deciles = methods_wide(pd.read_csv(out / "deciles.csv"))
    assert deciles["decile"].tolist() == [0.0, 2.0, 3.0] and set(deciles["reference"]) == {"ref"}
    assert not deciles["self_referenced"].any()


def test_overview_marks_picks_of_a_mixed_question(pool):
    feats, rows = pool
    view = overview(feats, rows, proj_dim=8, lam=1.0, picks=5, projection_seed=0, seed=0)
    assert (
        view["qid"].nunique() == 1 and view["qid"].iloc[0] == "q2"
    )  # 5/12 correct: closest to half
    picks = methods_wide(view, "pick", name="{method}_pick")
    assert sorted(picks["repexp_pick"].dropna()) == [1, 2, 3, 4, 5]
    assert sorted(picks["random_pick"].dropna()) == [1, 2, 3, 4, 5]
    assert len(picks) == 12 and np.isfinite(picks[["x", "y"]].to_numpy()).all()
    assert len(view) == 24 and view["method"].tolist() == ["repexp"] * 12 + ["random"] * 12


# ------------------------------------------------------------------------------------------------
# pools on disk: shard by shard (the select and overview CLIs)
# ------------------------------------------------------------------------------------------------
def _write_shards(tmp_path, feats, rows, per_shard, dtype="float32"):
    """The pool as feature shards (the real cache writer) and score shards, ``per_shard``
    questions each."""
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
    """9 questions in shards of 2 (the last of 1), 2 workers: at most 4 questions in flight, so
    shards finish while later ones are submitted; the tables come out shard by shard, in pool
    order."""
    from repexp.inference import load_pool, pool_shards, select_shards

    feats, rows = synthetic_pool(np.random.default_rng(1), n_questions=9)
    manifests, scores = _write_shards(tmp_path, feats.astype(np.float32), rows, 2)
    whole, merged = load_pool(manifests, scores, "mean")
    assert whole.dtype == np.float64 and np.array_equal(whole, feats.astype(np.float32))
    pd.testing.assert_frame_equal(merged[["qid", "sample", "correct"]], rows)
    ref = select_pool(whole, merged, **KW)
    parts = list(select_shards(pool_shards(manifests, scores, "mean"), **KW, workers=2))
    assert [p[1]["qid"].nunique() for p in parts] == [2, 2, 2, 2, 1]
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


# ------------------------------------------------------------------------------------------------
# the long tables against the wide ones of the code before them (tests/fixtures/golden)
# ------------------------------------------------------------------------------------------------
GOLDEN = Path(__file__).parent / "fixtures" / "golden"
GOLDEN_KW = dict(proj_dim=8, lam=1.0, trials=3, center=True, projection_seed=0, seed=7)
GOLDEN_POOLS = [  # model, task, sampler, pooling, rng seed, questions, k_max
    ("strong", "math", "vanilla", "mean", 0, 4, None),
    ("strong", "math", "vanilla", "last", 1, 4, None),
    ("weak", "math", "vanilla", "mean", 2, 4, 4),  # k_max < n: some RepExp STCs unknown (NaN)
    ("weak", "math", "temp1.5", "mean", 3, 4, None),
    ("strong", "game24", "vanilla", "mean", 4, 5, None),
]


def golden_input(methods=("random", "repexp")):
    """The seeded synthetic pools of tests/fixtures/golden/README.md, selected and summarised:
    (trials, questions, passk per question) and the summaries with and without unsolved ones."""
    tables = [], [], []
    for model, task, sampler, pooling, s, nq, k_max in GOLDEN_POOLS:
        feats, rows = synthetic_pool(np.random.default_rng(s), n_questions=nq)
        keys = dict(model=model, task=task, sampler=sampler, pooling=pooling)
        parts = select_pool(
            feats,
            rows,
            **GOLDEN_KW,
            k_max=k_max,
            seed_parts=(model, task, sampler, pooling),
            methods=methods,
        )
        for acc, part in zip(tables, parts, strict=True):
            acc.append(part.assign(**keys))
    trials, questions, passk = (pd.concat(t, ignore_index=True) for t in tables)
    stats = pd.DataFrame(
        {
            "model": "ref",
            "task": "math",
            "sampler": "vanilla",
            "qid": ["q0", "q1", "q2", "q3"],
            "n": 12,
            "c": [6, 0, 2, 11],
            "format_ok": [12, 10, 12, 3],
        }
    )
    own = (
        questions[questions.pooling == "mean"]
        .groupby(["model", "task", "sampler", "qid"], as_index=False)[["n", "c"]]
        .first()
    )
    own["format_ok"] = own["n"] - own["c"] % 3
    stats = pd.concat([stats, own], ignore_index=True)
    difficulty = pd.DataFrame(
        {
            "qid": [f"q{i}" for i in range(5)],
            "task": "game24",
            "difficulty": [0.9, 0.8, 0.1, 0.5, 0.3],
        }
    )
    summary = summarize(
        questions, passk, reference_model="ref", difficulty=difficulty, pool_stats=stats
    )
    summary_all = summarize(questions, passk, exclude_unsolved=False, difficulty=difficulty)
    return (trials, questions, passk), summary, summary_all


def _same(got: pd.DataFrame, name: str) -> None:
    want = pd.read_parquet(GOLDEN / f"{name}.parquet")
    assert set(got.columns) == set(want.columns), name
    pd.testing.assert_frame_equal(
        got[want.columns].reset_index(drop=True),
        want,
        check_dtype=False,
        check_exact=False,
        rtol=1e-12,
        atol=1e-12,
        obj=name,
    )


def test_long_tables_pivot_back_to_the_wide_golden_tables():
    """Issue 16: the long tables, one column per method again, equal the wide tables the code
    wrote before them (same seeds, same numbers; the pairwise columns from metrics.versus)."""
    (trials, questions, passk), (stc, deciles, pk), (stc_all, deciles_all, _) = golden_input()
    assert set(trials["method"]) == {"repexp"}
    _same(trials[trials["method"] == "repexp"].drop(columns="method"), "trials")
    _same(methods_wide(questions), "questions")
    _same(methods_wide(passk, "pass_at_k", name="{method}"), "passk_questions")
    _same(versus(stc), "stc")
    _same(methods_wide(deciles), "deciles")
    _same(methods_wide(pk, "pass_at_k", name="{method}"), "passk")
    _same(versus(stc_all), "stc_all")
    _same(methods_wide(deciles_all), "deciles_all")
    # the long schemas
    assert list(stc.columns[:5]) == ["model", "task", "sampler", "pooling", "method"]
    assert list(deciles.columns[:4]) == ["model", "task", "decile", "method"]
    assert list(pk.columns) == [
        "model",
        "task",
        "sampler",
        "pooling",
        "method",
        "k",
        "pass_at_k",
        "questions",
    ]


# ------------------------------------------------------------------------------------------------
# selectors of repexp.selectors in the tables
# ------------------------------------------------------------------------------------------------
def test_a_new_selector_is_one_function_and_one_table_entry(pool, monkeypatch):
    """A throwaway selector registered in SELECTORS alone reaches every long table, with its own
    seeded trials, beside random and RepExp (whose rows do not change)."""
    from repexp import selectors

    def reverse(ctx, rng, k=None):
        """The pool backwards from a random first pick."""
        first = int(rng.integers(ctx.n))
        return np.roll(np.arange(ctx.n)[::-1], first)

    monkeypatch.setitem(
        selectors.SELECTORS, "reverse", selectors.Selector(reverse, frozenset(), "reverse")
    )
    feats, rows = pool
    methods = ("random", "repexp", "reverse")
    trials, questions, passk = select_pool(feats, rows, **KW, methods=methods)
    ref = select_pool(feats, rows, **KW)
    for got, want in zip((trials, questions, passk), ref, strict=True):
        mine = got[got["method"] != "reverse"].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, want)
    assert set(trials["method"]) == {"repexp", "reverse"}
    for qid, g in rows.groupby("qid"):
        mine = trials[(trials.qid == qid) & (trials.method == "reverse")].sort_values("trial")
        correct = g["correct"].to_numpy() > 0
        for t, order in enumerate(mine["order"]):
            seed = question_seed(7, "m", "t", "vanilla", "mean", qid, "reverse", str(t))
            want = reverse(SimpleNamespace(n=len(g)), np.random.default_rng(seed))
            assert order == g["sample"].to_numpy()[want].tolist()
            stc = mine["stc"].iloc[t]
            pos = np.flatnonzero(correct[want])
            assert np.isnan(stc) if not pos.size else stc == pos[0] + 1
    q = methods_wide(questions).set_index("qid")
    assert np.isnan(q.loc["q0", "stc_reverse"]) and q.loc["q3", "stc_reverse"] == 1.0
    stc, deciles, pk = summarize(*_keyed(questions, passk, "m", "t"))
    assert stc["method"].tolist() == list(methods)
    assert set(pk["method"]) == set(methods)
    assert methods_wide(pk, "pass_at_k", name="{method}").query("k == 12")["reverse"].item() == 0.75


def test_selectors_in_the_tables_match_run_selector_on_every_path(pool):
    """maxmin and oracle through select_pool: their orders are run_selector's on the question's
    projected features (seeded per question, method and trial), the same on the worker and the
    torch paths; oracle's STC is 1 on every solved question; and the SELECTORS entry of RepExp
    gives the orders of the fast path."""
    from repexp.selectors import PoolContext, run_selector

    feats, rows = pool
    methods = ("random", "repexp", "maxmin", "oracle")
    ref = select_pool(feats, rows, **KW, methods=methods)
    for kw in (dict(workers=2), dict(device="cpu:0", batch_questions=3)):
        got = select_pool(feats, rows, **KW, methods=methods, **kw)
        for a, b in zip(ref, got, strict=True):
            pd.testing.assert_frame_equal(a, b)
    trials, questions, _ = ref
    phi = project(feats, KW["proj_dim"], KW["projection_seed"])
    q = methods_wide(questions).set_index("qid")
    assert (q.loc[q["c"] > 0, "stc_oracle"] == 1.0).all()
    for qid, g in rows.groupby("qid"):
        idx, samples = g.index.to_numpy(), g["sample"].to_numpy()
        ctx = PoolContext(len(idx), features=phi[idx], correct=g["correct"].to_numpy() > 0)
        mine = trials[trials.qid == qid]
        for t in range(KW["trials"]):
            seed = question_seed(7, "m", "t", "vanilla", "mean", qid, "maxmin", str(t))
            want = run_selector("maxmin", ctx, np.random.default_rng(seed))
            got = mine[(mine.method == "maxmin") & (mine.trial == t)]["order"].item()
            assert got == samples[want].tolist()
        firsts = first_picks(
            len(idx), 3, question_seed(7, "m", "t", "vanilla", "mean", qid, "first-picks")
        )
        for t, first in enumerate(firsts):
            want = run_selector("repexp", ctx, np.random.default_rng(0), first=int(first))
            got = mine[(mine.method == "repexp") & (mine.trial == t)]["order"].item()
            assert got == samples[want].tolist()


def test_selection_methods_are_checked(monkeypatch):
    from repexp import selectors
    from repexp.inference import STAGE_INPUTS, check_methods

    # every input of SELECTORS is one the select stage provides (issue 13), so a selector it
    # cannot feed is one that reads an input outside it
    assert set(selectors.INPUTS) <= STAGE_INPUTS
    assert check_methods(list(selectors.SELECTORS)) == tuple(selectors.SELECTORS)
    monkeypatch.setitem(
        selectors.SELECTORS,
        "needs_rewards",
        selectors.Selector(selectors.random_order, frozenset({"rewards"}), "x"),
    )

    assert check_methods(["random", "repexp"]) == ("random", "repexp")
    with pytest.raises(ValueError, match="unknown selection method 'nope'"):
        check_methods(["random", "nope"])
    with pytest.raises(ValueError, match="needs \\['rewards'\\], which the select stage"):
        check_methods(["needs_rewards"])
    with pytest.raises(ValueError, match="distinct"):
        check_methods(["random", "random"])
    # answer_dedup: refused when no task has a final answer, skipped on the code tasks otherwise
    with pytest.raises(ValueError, match="answer_dedup cannot run on task 'mbppplus'"):
        check_methods(["random", "answer_dedup"], tasks=["mbppplus"])
    assert check_methods(["answer_dedup"], tasks=["mbppplus", "gsm8k"]) == ("answer_dedup",)


def test_results_page_shows_repexp_against_random_from_the_long_stc_table(tmp_path):
    from repexp import report

    _, (stc, _, _), _ = golden_input()
    page = report.index_page([], [], stc, out=tmp_path / "index.html", config_name="c.yaml")
    want = versus(stc[(stc.sampler == "vanilla") & (stc.pooling == "mean")])
    cols = ["model", "task", "questions", "unsolved", "pass1"]
    cols += ["stc_random", "stc_repexp", "reduction", "speedup"]
    assert want[cols].round(3).to_html(index=False, na_rep="-") in page
    assert "stc_repexp" in page and "reduction" in page


# ------------------------------------------------------------------------------------------------
# the pool's texts, log-probs and final answers in the select stage (issue 13)
# ------------------------------------------------------------------------------------------------
TEXT_METHODS = [
    "random",
    "repexp",
    "repexp_loo",
    "maxmin",
    "dpp",
    "likelihood_high",
    "likelihood_low",
    "likelihood_high_per_token",
    "likelihood_low_per_token",
    "answer_dedup",
    "kmeans_rr",
    "ngram",
    "oracle",
]


def _pool_texts(rows, rng):
    """The pool-shard columns of ``rows`` (repexp.pools.POOL_COLUMNS): GSM8K-style texts whose
    final answers repeat (answer = sample % 3, sample 0 none), distinct log-probs and lengths."""
    answers = [None if s == 0 else str(10 * (s % 3)) for s in rows["sample"]]
    text = [
        f"step {q} {s} {'so' if s % 2 else 'thus'} " + ("no answer" if a is None else f"#### {a}")
        for q, s, a in zip(rows["qid"], rows["sample"], answers, strict=True)
    ]
    n_tokens = rng.integers(5, 40, size=len(rows))
    return rows[["qid", "sample"]].assign(
        prompt_ids=[[1, 2]] * len(rows),
        response_ids=[list(range(t)) for t in n_tokens],
        text=text,
        finish_reason="stop",
        logprob=-rng.permutation(len(rows)).astype(float) - rng.uniform(0, 0.5, len(rows)),
        n_tokens=n_tokens,
    )


def _cli_select_task(manifests, scores, pools, prefix, task, methods, *extra):
    from repexp.inference import main

    args = ["select", *extra, "--features", *manifests, "--scores", *scores, "--pools", *pools]
    args += ["--model", "m", "--task", task, "--sampler", "vanilla", "--pooling", "mean"]
    args += ["--proj-dim", "8", "--trials", "3", "--seed", "7", "--methods", *methods]
    assert main([*args, "--out-prefix", str(prefix)]) == 0
    return [
        pd.read_parquet(f"{prefix}.{name}.parquet") for name in ("trials", "questions", "passk")
    ]


def test_select_cli_feeds_texts_logprobs_and_answers_to_every_selector(pool, tmp_path, caplog):
    from repexp.atomic import write_parquet

    feats, rows = pool
    manifests, scores = _write_shards(tmp_path, feats.astype(np.float32), rows, 3)
    texts = _pool_texts(rows, np.random.default_rng(5))
    pools = []
    for m in manifests:
        part = pd.read_parquet(m.replace(".json", ".scores.parquet"), columns=["qid", "sample"])
        p = m.replace(".json", ".parquet")
        write_parquet(texts.merge(part, on=["qid", "sample"]), p)
        pools.append(p)
    trials, questions, passk = _cli_select_task(
        manifests, scores, pools, tmp_path / "sel", "gsm8k", TEXT_METHODS
    )
    assert questions["method"].tolist() == TEXT_METHODS * 4  # rows for every selector
    assert set(passk["method"]) == set(TEXT_METHODS)
    assert set(trials["method"]) == set(TEXT_METHODS) - {"random"}
    q = methods_wide(questions).set_index("qid")
    solved = q["c"] > 0
    assert solved.sum() == 3 and (q.loc[solved, "stc_oracle"] == 1.0).all()
    by = texts.set_index(["qid", "sample"])
    for (qid, method), g in trials.groupby(["qid", "method"]):
        mine = by.loc[qid]
        for order in g["order"]:
            assert sorted(order) == list(range(12))  # full orders: permutations of the pool
        if method == "likelihood_high":  # hand check: the max summed log-prob comes first
            assert set(g["first"]) == {int(mine["logprob"].idxmax())}
        if method == "likelihood_low_per_token":
            per_token = mine["logprob"] / mine["n_tokens"]
            assert set(g["first"]) == {int(per_token.idxmin())}
        if method == "answer_dedup":  # answers 0, 10, 20 (4, 4, 3 responses), then sample 0
            for order in g["order"]:
                heads = [int(order[i]) % 3 for i in range(3)]
                assert sorted(heads) == [0, 1, 2] and heads[2] == 0  # the group of 3 is third
                assert order[3] == 0  # the no-answer group (sample 0) last in each round
                assert [int(order[4 + i]) % 3 for i in range(3)] == heads  # round 2, same order
    # random and RepExp as without the pool shards (the golden path)
    keys = dict(model="m", task="gsm8k", sampler="vanilla", pooling="mean")
    plain = select_pool(
        feats.astype(np.float32).astype(np.float64),
        rows,
        **{**KW, "seed_parts": tuple(keys.values())},
    )
    for got, want in zip((trials, questions, passk), plain, strict=True):
        mine = got[got["method"].isin(["random", "repexp"])].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, want.assign(**keys))
    # the same tables from two worker processes (the inputs travel with each question)
    workers = _cli_select_task(
        manifests, scores, pools, tmp_path / "w2", "gsm8k", TEXT_METHODS, "--threads", "2"
    )
    for a, b in zip((trials, questions, passk), workers, strict=True):
        pd.testing.assert_frame_equal(a, b)
    # a code task: answer_dedup is skipped with a note, the others run
    with caplog.at_level("WARNING", logger="repexp.inference"):
        _, code_q, _ = _cli_select_task(
            manifests, scores, pools, tmp_path / "code", "mbppplus", TEXT_METHODS
        )
    assert "answer_dedup skipped on task 'mbppplus'" in caplog.text
    assert code_q["method"].tolist() == [m for m in TEXT_METHODS if m != "answer_dedup"] * 4
    # without the pool shards a text selector cannot run
    with pytest.raises(ValueError, match="pass one pool shard per feature shard"):
        _cli_select_task(manifests, scores, [], tmp_path / "none", "gsm8k", ["random", "ngram"])


# ------------------------------------------------------------------------------------------------
# repexp_layer<L>: RepExp on a middle layer's mean state (issue 13)
# ------------------------------------------------------------------------------------------------
LAYER_METHODS = ("random", "repexp", "repexp_layer15", "maxmin")


def _layer_feats(feats):
    """Stand-in mean@15 features of the pool: as many rows, the same width, other values."""
    return np.random.default_rng(11).normal(size=feats.shape)


def test_repexp_layer_is_algorithm_1_on_the_layer_features_with_repexps_first_picks(pool):
    """In the tables, repexp_layer15 is Algorithm 1 on the projected mean@15 features with the
    seeded first picks of repexp (hand check with repexp_order), i.e. repexp's rows of a run on
    those features; repexp and the other methods are untouched; every path agrees."""
    feats, rows = pool
    layer = _layer_feats(feats)
    extra = {"mean@15": layer}
    ref = select_pool(feats, rows, **KW, methods=LAYER_METHODS, extra=extra)
    trials, questions, passk = ref
    assert questions["method"].tolist() == list(LAYER_METHODS) * 4
    phi = project(layer, KW["proj_dim"], KW["projection_seed"])
    for qid, g in rows.groupby("qid"):
        idx, samples = g.index.to_numpy(), g["sample"].to_numpy()
        firsts = first_picks(
            len(idx), 3, question_seed(7, "m", "t", "vanilla", "mean", qid, "first-picks")
        )
        mine = trials[(trials.qid == qid) & (trials.method == "repexp_layer15")]
        for t, first in enumerate(firsts):
            want = repexp_order(phi[idx], len(idx), first=int(first), lam=1.0)
            assert mine[mine.trial == t]["order"].item() == samples[want].tolist()
    # = repexp's rows of a run on the layer's features; the last layer's repexp unchanged
    on_layer = select_pool(layer, rows, **KW, methods=("random", "repexp"))
    plain = select_pool(feats, rows, **KW, methods=("random", "repexp", "maxmin"))
    for got, lay, base in zip(ref, on_layer, plain, strict=True):
        mine = got[got["method"] == "repexp_layer15"].reset_index(drop=True)
        want = lay[lay["method"] == "repexp"].reset_index(drop=True).assign(method="repexp_layer15")
        pd.testing.assert_frame_equal(mine, want)
        others = got[got["method"] != "repexp_layer15"].reset_index(drop=True)
        pd.testing.assert_frame_equal(others, base)
    for kw in (dict(workers=2), dict(device="cpu:0", batch_questions=3)):
        got = select_pool(feats, rows, **KW, methods=LAYER_METHODS, extra=extra, **kw)
        for a, b in zip(ref, got, strict=True):
            pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="needs the mean@15 features.*extra_poolings"):
        select_pool(feats, rows, **KW, methods=LAYER_METHODS)


def test_repexp_layer_methods_are_checked():
    from repexp.inference import check_methods, method_poolings

    methods = ["random", "repexp", "repexp_layer15"]
    assert check_methods(methods) == tuple(methods)  # without the pools' layers: a name check
    assert check_methods(methods, layers={15: ["m/t"]}) == tuple(methods)
    with pytest.raises(
        ValueError,
        match=r"'repexp_layer15' reads the mean state of decoder block 15 \(cache pooling "
        r"mean@15\), which no pool caches \(inference.features.layers: layer 7: m/t\); add "
        r"\{model: <model>, task: <task>, layer: 15\} to inference.features.layers",
    ):
        check_methods(methods, layers={7: ["m/t"]})
    with pytest.raises(ValueError, match="inference.features.layers: none"):
        check_methods(methods, layers={})
    with pytest.raises(ValueError, match="unknown selection method 'repexp_layer0'"):
        check_methods(["repexp_layer0"])
    assert method_poolings(methods, "mean") == ["mean@15"]
    assert method_poolings(["repexp_layer3", "repexp", "repexp_layer1"], "mean") == [
        "mean@3",
        "mean@1",
    ]
    assert method_poolings(["repexp"], "last") == []
    with pytest.raises(ValueError, match="mean pooling only.*'last'"):
        method_poolings(methods, "last")


def test_select_cli_reads_the_layer_pooling_from_the_cache(pool, tmp_path):
    """The select CLI on a tiny cache holding mean and mean@15: rows of repexp_layer15 in all
    three tables, equal to select_pool with the layer's features (cache float32); a cache without
    mean@15, or a job of another pooling, is refused with the fix."""
    from repexp.atomic import write_parquet
    from repexp.features import FeatureError, write_cache
    from repexp.inference import main

    feats, rows = pool
    feats, layer = feats.astype(np.float32), _layer_feats(feats).astype(np.float32)
    manifests, scores = [], []
    for s, qids in enumerate((["q0", "q1"], ["q2", "q3"])):
        part = rows[rows["qid"].isin(qids)]
        m = tmp_path / f"shard-{s}.json"
        idx = part.index.to_numpy()
        by = {"mean": feats[idx], "mean@15": layer[idx]}
        write_cache(m, by, part, model="m", dtype="float32", shard_name=m.stem)
        write_parquet(part[["qid", "sample", "correct"]], m.with_suffix(".scores.parquet"))
        manifests.append(str(m))
        scores.append(str(m.with_suffix(".scores.parquet")))
    got = _cli_select(manifests, scores, tmp_path / "sel", "--methods", *LAYER_METHODS)
    want = select_pool(
        feats.astype(np.float64),
        rows,
        **KW,
        methods=LAYER_METHODS,
        extra={"mean@15": layer.astype(np.float64)},
    )
    keys = dict(model="m", task="t", sampler="vanilla", pooling="mean")
    for a, b in zip(want, got, strict=True):
        pd.testing.assert_frame_equal(a.assign(**keys), b)
    assert set(got[1]["method"]) == set(LAYER_METHODS)
    assert (got[0]["method"] == "repexp_layer15").sum() == 4 * KW["trials"]
    plain, _ = _write_shards(tmp_path / "plain", feats, rows, 2)
    with pytest.raises(FeatureError, match="no 'mean@15'.*inference.features.layers"):
        _cli_select(plain, scores, tmp_path / "p", "--methods", *LAYER_METHODS)
    with pytest.raises(ValueError, match="mean pooling only"):
        main(
            ["select", "--features", *manifests, "--scores", *scores, "--model", "m"]
            + ["--task", "t", "--sampler", "vanilla", "--pooling", "last"]
            + ["--methods", *LAYER_METHODS, "--out-prefix", str(tmp_path / "last")]
        )
    assert not (tmp_path / "last.trials.parquet").exists()


def _layer_config(tmp_path, layers, methods=None):
    import yaml

    from repexp.config import load_config

    inf = {"features": {"layers": layers}}
    if methods is not None:
        inf["selection"] = {"methods": methods}
    overlay = tmp_path / "layers.yaml"
    overlay.write_text(yaml.safe_dump({"inference": inf}))
    return overlay, lambda *files: load_config([*files, overlay])


def test_layers_in_the_dag_and_the_config_check(tmp_path, monkeypatch):
    """inference.features.layers: which pools cache which layer (null: the middle block, from
    the model's shape without loading it), which select jobs run repexp_layer<L>, and the config
    check's refusals, each naming the fix."""
    from repexp import dag
    from repexp.config import ConfigError

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    methods = ["random", "repexp", "repexp_layer1", "maxmin"]
    layers = [{"model": "tiny-random", "task": "gsm8k", "layer": None}]
    _, load = _layer_config(tmp_path, layers, methods)
    cfg = load("config/test.yaml")
    assert dag.feature_layers(cfg, "tiny-random", "gsm8k", "vanilla") == [1]  # 2 blocks // 2
    assert dag.feature_layers(cfg, "tiny-random", "game24", "vanilla") == []
    assert dag.feature_layers(cfg, "tiny-random", "gsm8k", "temp1.5") == []
    assert dag.layer_pools(cfg) == {1: ["tiny-random/gsm8k"]}
    assert dag.pool_poolings(cfg, "tiny-random", "gsm8k", "vanilla") == [
        "mean",
        "last",
        "penultimate",
    ]  # no select job of its own
    assert dag.pool_methods(cfg, "tiny-random", "gsm8k", "vanilla", "mean") == methods
    for pool, pooling in (("gsm8k", "last"), ("game24", "mean")):
        got = dag.pool_methods(cfg, "tiny-random", pool, "vanilla", pooling)
        assert got == ["random", "repexp", "maxmin"]
    # the default's SmolLM2 (30 blocks, from repexp.memory.SHAPES): null is block 15
    _, load_default = _layer_config(
        tmp_path, [{"model": "smollm2-135m-instruct", "task": "mbppplus", "layer": None}]
    )
    default = load_default()
    assert dag.feature_layers(default, "smollm2-135m-instruct", "mbppplus", "vanilla") == [15]
    # refusals: a method no pool can run, a layer outside the model, a pool that does not exist
    _, load = _layer_config(tmp_path, [], ["random", "repexp_layer1"])
    with pytest.raises(ConfigError, match="repexp_layer1.*no pool caches.*add"):
        load("config/test.yaml")
    bad = [
        {"model": "tiny-random", "task": "gsm8k", "layer": 2},
        {"model": "tiny-randon", "task": "gsm8k", "layer": 1},
    ]
    plain = ["random", "repexp"]  # config/test.yaml's own list runs repexp_layer1
    _, load = _layer_config(tmp_path, bad, plain)
    with pytest.raises(ConfigError) as err:
        load("config/test.yaml")
    assert "`inference.features.layers.0.layer`: inference.features.layers: layer 2" in str(
        err.value
    )
    assert "2 decoder blocks: a middle layer is 1..1" in str(err.value)
    assert "`inference.features.layers.1.model` names model 'tiny-randon'" in str(err.value)
    # a defined model and task that this config does not run: the entry caches nothing (the
    # default's entry under an overlay with other models)
    _, load = _layer_config(tmp_path, [{"model": "tiny-random", "task": "math", "layer": 5}], plain)
    assert dag.layer_pools(load("config/test.yaml")) == {}
    _, load = _layer_config(
        tmp_path, [{"model": "tiny-random", "task": "gsm8k", "layer": 0}], plain
    )
    with pytest.raises(ConfigError, match=r"inference.features.layers.0.layer"):
        load("config/test.yaml")
