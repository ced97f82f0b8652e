"""The replication report (repexp.findings): every finding's number against hand-computed tables,
its bootstrap CI against a brute-force resampling with the same generator (and a closed-form
normal approximation), every verdict branch, "not testable" when the configuration lacks what a
finding needs, the CSV and the results page's section."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from repexp import findings as F
from repexp import metrics, provenance, report

KEYS = ["model", "task", "sampler", "pooling"]


def _questions(pools: dict[tuple, dict[str, list[float]]], n: int = 16) -> pd.DataFrame:
    """questions.parquet: ``pools`` {(model, task, sampler, pooling): {method: STC per question}}
    (NaN = unsolved); c is set so that pass@1 = the pool's ``pass1`` (from its key order)."""
    rows = []
    for key, methods in pools.items():
        c = methods.pop("_c", 8)
        for method, stcs in methods.items():
            for i, stc in enumerate(stcs):
                rows.append(
                    dict(zip(KEYS, key, strict=True))
                    | dict(qid=f"q{i:03d}", method=method, n=n, c=c, pass1=c / n, stc=stc)
                )
    return pd.DataFrame(rows)


def _pool(model="m", task="math", sampler="vanilla", pooling="mean"):
    return (model, task, sampler, pooling)


R = [float(v) for v in range(2, 14)]  # random STC of 12 questions
E = [1.0, 1.5, 2.0, 2.0, 3.0, 2.5, 4.0, 3.0, 5.0, 4.5, 6.0, 5.0]  # RepExp's


def _row(out: pd.DataFrame, finding: str, scope: str | None = None) -> pd.Series:
    rows = out[out["finding"] == finding]
    if scope is not None:
        rows = rows[rows["scope"].str.contains(scope, regex=False)]
    assert len(rows) == 1, rows[["finding", "scope"]]
    return rows.iloc[0]


# ------------------------------------------------------------------------------------------------
# statistics: the minimal detectable effect, the summary, the verdicts, the crossover
# ------------------------------------------------------------------------------------------------
def test_mde_is_z975_plus_z80_times_the_se():
    assert F.mde(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert F.mde(0.1) == pytest.approx(0.28016, abs=1e-5)


def test_bootstrap_summary_quantiles_se_and_mde():
    reps = np.arange(1.0, 101.0)
    s = F.bootstrap_summary(50.0, reps)
    lo, hi = np.quantile(reps, [0.025, 0.975])
    assert (s["lo"], s["hi"]) == pytest.approx((lo, hi)) == (3.475, 97.525)
    assert s["se"] == pytest.approx(np.std(reps, ddof=1))
    assert s["mde"] == pytest.approx(F.mde(np.std(reps, ddof=1)))
    # infinite replicates (no crossover): the nearest replicate, an infinite se / mde
    s = F.bootstrap_summary(3.0, [1.0] * 90 + [math.inf] * 10)
    assert (s["lo"], s["hi"], s["se"], s["mde"]) == (1.0, math.inf, math.inf, math.inf)


@pytest.mark.parametrize(
    "rule, lo, hi, want",
    [
        ("below", 0.5, 0.9, F.CONSISTENT),
        ("below", 1.1, 1.5, F.INCONSISTENT),
        ("below", 0.9, 1.1, F.INCONCLUSIVE),
        ("below", 0.9, 1.0, F.INCONCLUSIVE),  # touching the threshold is not off it
        ("above", 1.1, 1.5, F.CONSISTENT),
        ("above", 0.5, 0.9, F.INCONSISTENT),
        ("above", 0.9, 1.1, F.INCONCLUSIVE),
    ],
)
def test_verdict_below_and_above(rule, lo, hi, want):
    assert F.verdict(rule, 1.0, lo, hi) == want


@pytest.mark.parametrize(
    "lo, hi, want",
    [
        (500, 700, F.CONSISTENT),  # overlaps 512-640
        (600, 620, F.CONSISTENT),
        (100, 400, F.INCONSISTENT),  # below the range
        (700, 900, F.INCONSISTENT),  # above it
        (math.inf, math.inf, F.INCONSISTENT),  # never crosses
        (600, math.inf, F.INCONCLUSIVE),  # overlaps, but unbounded
    ],
)
def test_verdict_within_a_range(lo, hi, want):
    assert F.verdict("within", 512, lo, hi, 640) == want


def test_verdict_refuses_a_missing_ci_and_an_unknown_rule():
    with pytest.raises(ValueError, match="no CI"):
        F.verdict("below", 1.0, math.nan, 1.0)
    with pytest.raises(ValueError, match="unknown verdict rule"):
        F.verdict("near", 1.0, 0.5, 0.6)


def test_crossover_matches_the_plots_helper_on_random_curves():
    from repexp.plots import token_crossover

    rng = np.random.default_rng(3)
    ks = np.arange(1, 21)
    for _ in range(200):
        a, v = np.cumsum(rng.uniform(0, 0.05, (2, ks.size)), axis=1)
        t = pd.DataFrame(
            {"method": ["vanilla"] * 20 + ["b"] * 20, "k": [*ks, *ks], "pass_at_k": [*v, *a]}
        )
        want = token_crossover(t, "b")
        assert F.crossover(a, v, ks)[0] == (math.inf if want is None else want)


# ------------------------------------------------------------------------------------------------
# RF1 and the headline: ratios of mean STC, CIs against metrics.bootstrap_ratio_ci / brute force
# ------------------------------------------------------------------------------------------------
def test_rf1_one_pool_is_the_ratio_of_means_with_metrics_ci():
    q = _questions({_pool(): {"random": R, "repexp": E}})
    r = _row(F.evaluate({"questions": q}, findings=["RF1"]), "RF1")
    assert r["estimate"] == pytest.approx(sum(E) / sum(R))  # 39.5 / 90
    assert r["estimate"] == pytest.approx(39.5 / 90)
    ratio, lo, hi = metrics.bootstrap_ratio_ci(E, R, n_boot=F.N_BOOT, seed=F.SEED)
    assert (r["lo"], r["hi"]) == (lo, hi)  # the same generator, the same draws
    assert r["questions"] == 12 and r["hi"] < 1
    assert r["verdict"] == F.CONSISTENT and r["reason"] == ""


def test_rf1_mean_over_pools_against_a_brute_force_stratified_bootstrap():
    e2 = [2 * v for v in R[:10]]  # a pool where RepExp is twice as slow
    q = _questions(
        {
            _pool("a", "math"): {"random": R, "repexp": E},
            _pool("b", "gsm8k"): {"random": R[:10], "repexp": e2},
            _pool("c", "math"): {"random": R[:3], "repexp": E[:3]},  # too small: left out
            _pool("a", "math", "temp0.6"): {"random": R, "repexp": R},  # not vanilla
        }
    )
    r = _row(F.evaluate({"questions": q}, n_boot=300, findings=["RF1"]), "RF1")
    pools = [("a/math", np.array(E), np.array(R)), ("b/gsm8k", np.array(e2), np.array(R[:10]))]
    assert r["estimate"] == pytest.approx((39.5 / 90 + 2.0) / 2)
    rng = np.random.default_rng(F.SEED)  # strata in sorted order, one draw each
    draws = [rng.integers(0, x.size, size=(300, x.size)) for _, x, _ in pools]
    reps = [
        np.mean(
            [x[d[b]].mean() / y[d[b]].mean() for (_, x, y), d in zip(pools, draws, strict=True)]
        )
        for b in range(300)
    ]
    assert (r["lo"], r["hi"]) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    assert r["se"] == pytest.approx(np.std(reps, ddof=1))
    assert r["questions"] == 22
    assert "2 pool(s)" in r["scope"] and "left out" in r["scope"]
    assert "c/math: 3 questions with an STC (need ≥ 10)" in r["scope"]
    assert r["verdict"] == F.INCONSISTENT  # the CI lies above 1 (b's 2x pulls the mean up)


def test_saturated_pools_are_left_out_of_the_stc_ratio_findings():
    """A pool whose random selection needs < 1.5 samples on average (hand-computed: 12 questions
    of random STC 1.0-1.44, mean 1.22) is left out of RF1, Fig. 4 and RF2, with the reason; a
    pool of random STC exactly 1.5 is kept (the rule is strictly below)."""
    sat = [1.0 + 0.04 * i for i in range(12)]  # mean 1.22
    edge = [1.0, 2.0] * 6  # mean 1.5: kept
    assert np.mean(sat) == pytest.approx(1.22) and np.mean(edge) == 1.5
    assert F.random_stc(_questions({_pool("s"): {"random": sat}})) == {
        "s/math/vanilla": pytest.approx(1.22),
        "s/math": pytest.approx(1.22),
    }
    q = _questions(
        {
            _pool("s", pooling="mean"): {"random": sat, "repexp": sat},
            _pool("s", pooling="last"): {"random": sat, "repexp": sat},
            _pool("w", pooling="mean"): {"random": edge, "repexp": [1.0] * 12, "_c": 2},
        }
    )
    out = F.evaluate({"questions": q}, n_boot=200, findings=["RF1", "RF2", "Fig4-last"])
    rf1 = _row(out, "RF1")
    assert rf1["scope"].startswith("1 pool(s): w/math; left out: s/math: saturated, random STC")
    assert "1.22 < 1.5" in rf1["scope"] and rf1["questions"] == 12
    assert rf1["estimate"] == pytest.approx(12 / 18)  # w alone: mean 1.0 / mean 1.5
    fig4 = _row(out, "Fig4-last")  # only s has last-token features, and it is saturated
    assert fig4["verdict"] == F.NOT_TESTABLE and "saturated" in fig4["reason"]
    rf2 = _row(out, "RF2")  # w (pass@1 2/16) is the weakest, s (8/16) the strongest: saturated
    assert rf2["verdict"] == F.NOT_TESTABLE
    assert "s/math: saturated" in rf2["reason"] and "w/math" not in rf2["reason"]


def test_unsolved_questions_do_not_enter_a_ratio():
    q = _questions({_pool(): {"random": [*R, math.nan], "repexp": [*E, math.nan]}})
    r = _row(F.evaluate({"questions": q}, findings=["RF1"]), "RF1")
    assert r["questions"] == 12 and r["estimate"] == pytest.approx(39.5 / 90)


def test_headline_is_one_minus_the_ratio_per_paper_task():
    e = [v * 0.4 for v in R]  # 60% fewer samples on MATH
    q = _questions(
        {
            _pool("qwen2.5-14b-instruct", "math"): {"random": R, "repexp": e},
            _pool("qwen2.5-14b-instruct", "gsm8k"): {"random": R, "repexp": R},
        }
    )
    out = F.evaluate({"questions": q}, findings=["Qwen14B"])
    math_row = _row(out, "Qwen14B", "/math")
    assert math_row["estimate"] == pytest.approx(0.6)
    assert math_row["lo"] == pytest.approx(0.6) and math_row["verdict"] == F.CONSISTENT
    gsm = _row(out, "Qwen14B", "/gsm8k")
    assert gsm["estimate"] == pytest.approx(0.0) and gsm["verdict"] == F.INCONSISTENT
    assert _row(out, "Qwen14B", "mbppplus")["verdict"] == F.NOT_TESTABLE
    assert len(out) == len(F.HEADLINE_TASKS)


def test_headline_finds_the_model_by_its_hub_id_and_is_not_testable_without_it():
    q = _questions({_pool("big", "math"): {"random": R, "repexp": R}})
    out = F.evaluate({"questions": q}, findings=["Qwen14B"])
    assert _row(out, "Qwen14B")["verdict"] == F.NOT_TESTABLE
    assert "no Qwen-2.5-14B-Instruct pools (models: big)" in _row(out, "Qwen14B")["reason"]
    ctx = {"models": {"big": "Qwen/Qwen2.5-14B-Instruct"}}
    out = F.evaluate({"questions": q}, context=ctx, findings=["Qwen14B"])
    assert _row(out, "Qwen14B", "big/math")["estimate"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------------------------
# RF2, Fig. 4, RF4
# ------------------------------------------------------------------------------------------------
def test_rf2_weakest_minus_strongest_ratio_mean_over_tasks():
    half = [v / 2 for v in R]
    q = _questions(
        {
            _pool("weak", "math"): {"random": R, "repexp": R, "_c": 1},  # ratio 1
            _pool("mid", "math"): {"random": R, "repexp": E, "_c": 5},
            _pool("strong", "math"): {"random": R, "repexp": half, "_c": 12},  # ratio 0.5
            _pool("weak", "gsm8k"): {"random": R, "repexp": half, "_c": 2},  # 0.5
            _pool("strong", "gsm8k"): {"random": R, "repexp": half, "_c": 9},  # 0.5
            _pool("alone", "game24"): {"random": R, "repexp": R},  # one model: no pair
        }
    )
    r = _row(F.evaluate({"questions": q}, findings=["RF2"]), "RF2")
    assert r["estimate"] == pytest.approx(((1 - 0.5) + (0.5 - 0.5)) / 2)
    assert "math: weak (weakest) vs strong (strongest)" in r["scope"]
    assert "game24" not in r["scope"] and r["questions"] == 48


def test_rf2_is_not_testable_with_one_model_per_task():
    q = _questions({_pool("m", "math"): {"random": R, "repexp": E}})
    r = _row(F.evaluate({"questions": q}, findings=["RF2"]), "RF2")
    assert r["verdict"] == F.NOT_TESTABLE and "one model per task" in r["reason"]


def test_fig4_ratio_of_repexp_stc_token_feature_over_mean_feature():
    last = [3 * v for v in E]
    q = _questions(
        {
            _pool(pooling="mean"): {"random": R, "repexp": E},
            _pool(pooling="last"): {"random": R, "repexp": last},
            _pool(pooling="penultimate"): {"random": R, "repexp": E},
        }
    )
    out = F.evaluate({"questions": q}, findings=["Fig4-last", "Fig4-penultimate"])
    last_row, pen = _row(out, "Fig4-last"), _row(out, "Fig4-penultimate")
    assert last_row["estimate"] == pytest.approx(3.0) and last_row["verdict"] == F.CONSISTENT
    assert pen["estimate"] == pytest.approx(1.0) and pen["verdict"] == F.INCONSISTENT
    assert last_row["claim"].endswith("> 2.00") and last_row["paper"] == "> 2.00"
    no_ablation = _questions({_pool(): {"random": R, "repexp": E}})
    r = _row(F.evaluate({"questions": no_ablation}, findings=["Fig4-last"]), "Fig4-last")
    assert r["verdict"] == F.NOT_TESTABLE and "ablation_models" in r["reason"]


def test_rf4_one_row_per_sampler_and_the_hot_sampler_apart():
    half = [v / 2 for v in R]
    q = _questions(
        {
            _pool(sampler="vanilla"): {"random": R, "repexp": half},
            _pool(sampler="cool"): {"random": R, "repexp": half},
            _pool(sampler="minp0.05"): {"random": R, "repexp": R[:5]},  # 5 questions
            _pool(sampler="hot"): {"random": R, "repexp": [2 * v for v in R]},
        }
    )
    samplers = {
        "cool": {"temperature": 0.6, "top_p": 1.0, "min_p": 0.0, "top_k": 0},
        "minp0.05": {"temperature": 1.5, "top_p": 1.0, "min_p": 0.05, "top_k": 0},
        "hot": {"temperature": 1.5, "top_p": 1.0, "min_p": 0.0, "top_k": 0},
    }
    out = F.evaluate({"questions": q}, context={"samplers": samplers}, findings=["RF4", "RF4-hot"])
    assert sorted(out.loc[out["finding"] == "RF4", "scope"]) == [
        "m/math/cool",
        "m/math/minp0.05",
        "m/math/vanilla",
    ]
    assert _row(out, "RF4", "/cool")["estimate"] == pytest.approx(0.5)
    assert _row(out, "RF4", "/cool")["verdict"] == F.CONSISTENT
    assert _row(out, "RF4", "minp")["verdict"] == F.NOT_TESTABLE  # 5 < 10 questions
    hot = _row(out, "RF4-hot")
    assert hot["scope"] == "m/math/hot" and hot["estimate"] == pytest.approx(2.0)
    assert hot["verdict"] == F.CONSISTENT  # no gain, significantly
    # by name when the settings are unknown
    assert F.is_hot("temp1.5", None) and not F.is_hot("temp0.6", None)


# ------------------------------------------------------------------------------------------------
# RF5: the token-level crossover
# ------------------------------------------------------------------------------------------------
def _runs(solved: dict[str, list[list[float]]], k_max: int) -> pd.DataFrame:
    """tokenlevel_runs.csv: {method: per question, the solved_at of each seed (NaN: never)}."""
    rows = []
    for method, per_q in solved.items():
        for i, seeds in enumerate(per_q):
            for s, at in enumerate(seeds):
                rows.append(
                    dict(
                        qid=f"q{i:03d}",
                        rank=i,
                        seed_index=s,
                        method=method,
                        beta=np.nan if method == "vanilla" else 1.0,
                        solved_at=at,
                        generations=k_max if math.isnan(at) else at,
                    )
                )
    return pd.DataFrame(rows)


def test_rf5_a_crossover_every_resample_agrees_on():
    # vanilla solves half the questions at k = 50 and never the rest; beta1 solves all at 600
    nan = math.nan
    vanilla = [[50.0, 50.0] if i % 2 else [nan, nan] for i in range(12)]
    beta = [[600.0, 600.0] for _ in range(12)]
    runs = _runs({"vanilla": vanilla, "beta1": beta}, 1024)
    r = _row(F.evaluate({"tokenlevel_runs": runs}, findings=["RF5"]), "RF5")
    assert (r["estimate"], r["lo"], r["hi"]) == (600, 600, 600)
    assert r["verdict"] == F.CONSISTENT and r["seeds"] == 2 and r["questions"] == 12
    assert r["paper"] == "512–640"
    never = _runs({"vanilla": vanilla, "beta1": [[nan, nan]] * 12}, 1024)
    r = _row(F.evaluate({"tokenlevel_runs": never}, findings=["RF5"]), "RF5")
    assert r["estimate"] == math.inf and r["verdict"] == F.INCONSISTENT


def test_rf5_point_estimate_is_the_plots_crossover_of_the_passk_table():
    from repexp.plots import token_crossover
    from repexp.tokenlevel import passk_table

    rng = np.random.default_rng(5)
    k_max = 700
    solved = {
        m: [[float(rng.geometric(p)) for _ in range(3)] for p in rng.uniform(0.001, 0.01, 15)]
        for m in ("vanilla", "beta1")
    }
    for per_q in solved.values():
        for seeds in per_q:
            seeds[:] = [v if v <= k_max else math.nan for v in seeds]
    runs = _runs(solved, k_max)
    r = _row(F.evaluate({"tokenlevel_runs": runs}, n_boot=200, findings=["RF5"]), "RF5")
    want = token_crossover(passk_table(runs, k_max), "beta1")
    assert r["estimate"] == (math.inf if want is None else want)


def test_rf5_is_not_testable_below_the_papers_budget():
    # every run solved by k = 2: the budget k_max = 8 comes from the pass@k table
    runs = _runs({"vanilla": [[1.0]] * 12, "beta1": [[2.0]] * 12}, 8)
    passk = pd.DataFrame({"method": "vanilla", "k": np.arange(1, 9), "pass_at_k": 1.0})
    tables = {"tokenlevel_runs": runs, "tokenlevel_passk": passk}
    r = _row(F.evaluate(tables, findings=["RF5"]), "RF5")
    assert r["verdict"] == F.NOT_TESTABLE and "k_max = 8 generations" in r["reason"]


# ------------------------------------------------------------------------------------------------
# RF6: pass@k at large k after RL, over questions and seeds
# ------------------------------------------------------------------------------------------------
def _rl(cs: dict[str, list[list[int]]], n: int = 64, task: str = "gsm8k") -> pd.DataFrame:
    """Per-run test tables: {method: per seed, c of each question} (base: one seed, NA)."""
    rows = []
    for method, seeds in cs.items():
        for s, per_q in enumerate(seeds):
            seed = pd.NA if method == "base" else 41 + s
            rows += [
                dict(task=task, method=method, seed=seed, qid=f"q{i:03d}", n=n, c=c)
                for i, c in enumerate(per_q)
            ]
    out = pd.DataFrame(rows)
    out["seed"] = out["seed"].astype("Int64")
    return out


def test_rf6_difference_at_k_equal_n_is_the_share_of_solved_questions():
    # pass@n = 1 when c > 0: base solves 12 of 12, GRPO 9 (seed 41) and 6 (seed 42)
    base = [[1] * 12]
    grpo = [[0] * 3 + [5] * 9, [0] * 6 + [5] * 6]
    repexp = [[3] * 12, [3] * 12]
    q = _rl({"base": base, "grpo": grpo, "repexp": repexp})
    out = F.evaluate({"rl_questions": q}, findings=["RF6-GRPO", "RF6-RepExp"])
    g, r = _row(out, "RF6-GRPO"), _row(out, "RF6-RepExp")
    assert g["estimate"] == pytest.approx((9 + 6) / 24 - 1) and g["seeds"] == 1
    assert g["verdict"] == F.CONSISTENT and "pass@64" in g["scope"]
    assert r["estimate"] == pytest.approx(1 - 15 / 24) and r["verdict"] == F.CONSISTENT


def test_rf6_bootstrap_over_questions_and_seeds_against_brute_force():
    rng = np.random.default_rng(11)
    n, nq, B = 64, 15, 250
    grpo = rng.integers(0, 3, (3, nq)).tolist()
    repexp = rng.integers(0, 6, (2, nq)).tolist()
    q = _rl({"grpo": grpo, "repexp": repexp}, n=n)
    r = _row(F.evaluate({"rl_questions": q}, n_boot=B, findings=["RF6-RepExp"]), "RF6-RepExp")
    p = {
        m: np.array([[metrics.pass_at_k(n, c, n) for c in s] for s in v])
        for m, v in (("repexp", repexp), ("grpo", grpo))
    }
    draw = np.random.default_rng(F.SEED)
    q_idx = draw.integers(0, nq, size=(B, nq))
    s_idx = {m: draw.integers(0, len(p[m]), size=(B, len(p[m]))) for m in ("repexp", "grpo")}
    reps = [
        np.mean([p["repexp"][s, q_idx[b]].mean() for s in s_idx["repexp"][b]])
        - np.mean([p["grpo"][s, q_idx[b]].mean() for s in s_idx["grpo"][b]])
        for b in range(B)
    ]
    assert r["estimate"] == pytest.approx(p["repexp"].mean() - p["grpo"].mean())
    assert (r["lo"], r["hi"]) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    assert r["se"] == pytest.approx(np.std(reps, ddof=1)) and r["seeds"] == 2


def test_rf6_one_seed_ci_is_close_to_the_normal_approximation():
    # paired differences of 0/1 pass@n over 400 questions: SE = sd / sqrt(n)
    rng = np.random.default_rng(2)
    a, b = rng.random(400) < 0.7, rng.random(400) < 0.5
    q = _rl({"repexp": [a.astype(int).tolist()], "grpo": [b.astype(int).tolist()]})
    r = _row(F.evaluate({"rl_questions": q}, findings=["RF6-RepExp"]), "RF6-RepExp")
    d = a.astype(float) - b
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert r["se"] == pytest.approx(se, rel=0.1)
    assert r["lo"] == pytest.approx(d.mean() - 1.96 * se, abs=0.2 * se)
    assert r["hi"] == pytest.approx(d.mean() + 1.96 * se, abs=0.2 * se)
    assert r["mde"] == pytest.approx(2.8016 * r["se"], rel=1e-4)


def test_rf6_is_not_testable_with_small_test_pools_or_a_missing_method():
    q = _rl({"base": [[1] * 12], "grpo": [[1] * 12]}, n=8)
    out = F.evaluate({"rl_questions": q}, findings=["RF6-GRPO", "RF6-RepExp"])
    assert "8 responses per question" in _row(out, "RF6-GRPO")["reason"]
    assert "no repexp run" in _row(out, "RF6-RepExp")["reason"]


# ------------------------------------------------------------------------------------------------
# the table of findings: not testable, columns, records, the CLI, the page
# ------------------------------------------------------------------------------------------------
def test_every_finding_is_not_testable_when_its_stage_is_off():
    out = F.evaluate({})
    assert list(out["finding"]) == list(F.FINDINGS)
    assert (out["verdict"] == F.NOT_TESTABLE).all()
    assert out["reason"].str.contains("stage is off").all()
    assert list(out.columns) == F.COLUMNS


def test_too_few_questions_is_not_testable():
    q = _questions({_pool(): {"random": R[:9], "repexp": E[:9]}})
    r = _row(F.evaluate({"questions": q}, findings=["RF1"]), "RF1")
    assert (
        r["verdict"] == F.NOT_TESTABLE
        and "need ≥ 10" in r["reason"]
        and "m/math: 9" in (r["reason"])
    )


def test_the_papers_numbers_live_in_the_records():
    for f in F.FINDINGS.values():
        assert f.paper_text() in f.claim.format(paper=f.paper_text())
        assert f.section.startswith("paper.md §")
    assert F.FINDINGS["Qwen14B"].paper_text() == "> 50%"
    assert F.FINDINGS["RF1"].paper_text() == "< 1.00"
    with pytest.raises(ValueError, match="rule"):
        F.Finding("x", "c", 1.0, "near", "ratio", "s", "paper.md §5", F.rf1, ("questions",))


def _write_tables(root, q: pd.DataFrame) -> None:
    prov = provenance.collect("abcdef012345", stage="inference", model="m", seed=0)
    root.mkdir(parents=True, exist_ok=True)
    provenance.stamp(q, prov).to_parquet(root / "questions.parquet", index=False)


def test_cli_writes_the_csv_with_provenance_and_the_source_configuration(tmp_path):
    q = _questions({_pool(): {"random": R, "repexp": E}})
    _write_tables(tmp_path / "tables", q)
    out = tmp_path / "tables" / "findings.csv"
    rc = F.main(
        [
            "--tables-dir",
            str(tmp_path / "tables"),
            "--config-name",
            "config/config.yaml",
            "--provenance",
            '{"stage": "findings", "config_hash": "0f0f0f0f0f0f"}',
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    t = pd.read_csv(out)
    assert list(t.columns[: len(F.COLUMNS)]) == F.COLUMNS
    assert {"prov_stage", "prov_git_commit", "prov_config_hash", "prov_packages"} <= set(t.columns)
    rf1 = _row(t, "RF1")
    assert rf1["tables"] == "questions.parquet" and rf1["stage"] == "inference"
    assert rf1["config_hash"] == "abcdef012345" and rf1["config"] == "config/config.yaml"
    assert rf1["estimate"] == pytest.approx(39.5 / 90) and rf1["n_boot"] == F.N_BOOT
    assert _row(t, "RF5")["verdict"] == F.NOT_TESTABLE
    summary = provenance.read(out)
    assert summary["stage"] == ["findings"] and summary["config_hash"] == ["0f0f0f0f0f0f"]


def test_results_page_has_the_findings_section_with_the_tables_numbers(tmp_path):
    q = _questions({_pool(): {"random": R, "repexp": E}})
    t = F.evaluate({"questions": q}, config="config/config.yaml")
    page = report.index_page(
        [], [], None, out=tmp_path / "index.html", config_name="c.yaml", findings=t
    )
    assert "<h2 id='findings'>Replication findings</h2>" in page
    rf1 = _row(t, "RF1")
    ours = f"{rf1['estimate']:.2f} [{rf1['lo']:.2f}, {rf1['hi']:.2f}]"
    assert ours in page and f"{rf1['mde']:.2f}" in page
    assert "not testable at this scale" in page and "config/config.yaml" in page
    assert "(1 consistent, 9 not testable at this scale)" in page
    assert f"{F.N_BOOT} resamples, generator seed {F.SEED}" in page
    for fid in F.FINDINGS:
        assert f"<b>{fid}</b>" in page
    # and through the CLI, after the STC table's place, the other sections kept
    csv = tmp_path / "findings.csv"
    t.to_csv(csv, index=False)
    (tmp_path / "f.png").write_bytes(b"png")
    report.main(
        [
            "--figures",
            str(tmp_path / "f.png"),
            "--findings",
            str(csv),
            "--out",
            str(tmp_path / "index.html"),
        ]
    )
    html = (tmp_path / "index.html").read_text()
    assert "Replication findings" in html and "Provenance" in html and "f.png" in html
    assert "Replication findings" not in report.index_page(
        [], [], None, out=tmp_path / "i.html", config_name="c.yaml"
    )


def test_cli_reads_the_rl_runs_and_only_the_tables_it_is_given(tmp_path):
    # a stale questions.parquet in the folder is not read when --tables names the files
    _write_tables(tmp_path, _questions({_pool(): {"random": R, "repexp": E}}))
    prov = provenance.collect("12312312312a", stage="rl", model="m", seed="41,42")
    passk = pd.DataFrame({"task": ["gsm8k"], "method": ["grpo"], "k": [64], "mean": [0.5]})
    provenance.stamp(passk, prov).to_csv(tmp_path / "rl_passk.csv", index=False)
    runs = []
    q = _rl({"base": [[1] * 12], "grpo": [[0] * 6 + [1] * 6, [1] * 12], "repexp": [[2] * 12] * 2})
    for (method, seed), d in q.groupby(["method", "seed"], dropna=False):
        path = tmp_path / f"{method}-{seed}.parquet"
        d.to_parquet(path, index=False)
        runs.append(str(path))
    out = tmp_path / "findings.csv"
    args = ["--tables", str(tmp_path / "rl_passk.csv"), "--rl-questions", *runs, "--out", str(out)]
    assert F.main(args) == 0
    t = pd.read_csv(out)
    assert _row(t, "RF1")["verdict"] == F.NOT_TESTABLE  # the inference table was not given
    g = _row(t, "RF6-GRPO")
    assert g["estimate"] == pytest.approx(18 / 24 - 1) and g["config_hash"] == "12312312312a"
    assert g["tables"] == "rl_passk.csv" and g["stage"] == "rl"
