"""The figure notebooks run under papermill on small synthetic tables and draw what the tables hold.

Three table sets with the exact schemas of ``results/tables`` (the inference tables long, one row
per method): a rich one (several models, tasks, samplers and poolings, with an unsolved model–task
pair and scattered NaNs), a degenerate one (one model, one task, one sampler, one pooling, one
solved question, NaNs) and one in which no question is solved at all. Every notebook must still
draw a figure for each; on the rich tables, what each figure plots (``<name>.plotted.json``,
:func:`repexp.plots.plotted`) is held against the synthetic table it was drawn from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nbharness import (
    assert_committed_clean,
    assert_figure,
    execute_all,
    line,
    panel,
)
from nbharness import plotted as read_plotted

from repexp.figures import figures_for

# the figures of the inference and token-level stages (the RL ones: tests/test_rl_eval.py)
NOTEBOOKS = list(figures_for({"inference", "token_level"}))
VARIANTS = ["rich", "degenerate", "unsolved"]
N = 64  # pool size of the synthetic pools
KS = [1, 2, 4, 8, 16, 32, 64]


def _questions(rng, variant: str) -> pd.DataFrame:
    """questions.parquet: one row per (model, task, sampler, pooling, question)."""
    if variant == "rich":
        models = {
            "qwen2.5-0.5b-instruct": 0.05,
            "mistral-7b-instruct": 0.2,
            "qwen2.5-7b-instruct": 0.45,
            "qwen2.5-14b-instruct": 0.6,
        }
        tasks = {"math": 1.0, "gsm8k": 1.4, "game24": 0.5}
        pools = [
            (m, t, "vanilla", p)
            for m in models
            for t in tasks
            for p in ("mean", "last", "penultimate")
        ]
        pools += [
            ("qwen2.5-7b-instruct", "math", s, "mean")
            for s in ("temp0.6", "temp1.5", "minp0.05", "topp0.9")
        ]
        n_q = 40
    else:
        models, tasks = {"smollm2-135m-instruct": 0.1}, {"gsm8k": 1.0}
        pools, n_q = [("smollm2-135m-instruct", "gsm8k", "vanilla", "mean")], 10
    rows = []
    for model, task, sampler, pooling in pools:
        strength = min(models[model] * tasks[task], 0.95)
        gain = {"mean": 0.35, "last": 0.7, "penultimate": 0.75}[pooling] * (
            1.6 if sampler == "temp1.5" else 1
        )
        for q in range(n_q):
            p = rng.beta(1 + 4 * strength, 1 + 4 * (1 - strength)) ** 2
            c = int(rng.binomial(N, p))
            if variant == "unsolved" or (model == "qwen2.5-0.5b-instruct" and task == "game24"):
                c = 0
            elif variant == "degenerate":
                c = 3 if q == 0 else 0
            stc_r = (N + 1) / (c + 1)
            stc_e = max(1.0, stc_r * gain * rng.uniform(0.5, 1.5)) if c > 0 else np.nan
            rows.append(
                dict(
                    model=model,
                    task=task,
                    sampler=sampler,
                    pooling=pooling,
                    qid=f"q{q:03d}",
                    n=N,
                    c=c,
                    pass1=c / N,
                    stc_random=stc_r,
                    stc_repexp=stc_e,
                )
            )
    return pd.DataFrame(rows)


def _stc(questions: pd.DataFrame) -> pd.DataFrame:
    """stc.csv: means over the solved questions of each (model, task, sampler, pooling)."""
    keys = ["model", "task", "sampler", "pooling"]
    solved = questions[questions.c > 0]
    stc = (
        questions.groupby(keys)
        .agg(
            questions=("qid", "size"),
            unsolved=("c", lambda c: int((c == 0).sum())),
            pool_n=("n", "max"),
            pass1=("pass1", "mean"),
        )
        .reset_index()
    )
    methods = [c for c in questions.columns if c.startswith("stc_")]
    means = solved.groupby(keys)[methods].mean().reset_index()
    stc = stc.merge(means, on=keys, how="left")
    stc["used"] = stc.questions - stc.unsolved
    stc["reduction"] = (stc.stc_random - stc.stc_repexp) / stc.stc_random
    stc["speedup"] = stc.stc_random / stc.stc_repexp - 1
    stc["model_rank"] = stc.groupby(["task", "sampler", "pooling"]).pass1.rank(
        ascending=False, method="first"
    )
    # answer-format misses: more for weak models (one pool without stats: NaN)
    stc["format_miss"] = (0.6 * (1 - stc["pass1"]) ** 2).round(3)
    no_stats = stc["model"].str.startswith("mistral") & (stc["task"] == "game24")
    stc.loc[no_stats, "format_miss"] = np.nan
    return stc[
        [
            "model",
            "task",
            "sampler",
            "pooling",
            "questions",
            "unsolved",
            "used",
            "pool_n",
            "pass1",
            *methods,
            "reduction",
            "speedup",
            "model_rank",
            "format_miss",
        ]
    ]


def _passk(questions: pd.DataFrame) -> pd.DataFrame:
    """passk.csv: random = the exact without-replacement pass@k; RepExp = a better synthetic
    curve."""
    rows = []
    for (model, task, sampler, pooling), g in questions.groupby(
        ["model", "task", "sampler", "pooling"]
    ):
        for k in KS:
            miss = [
                np.prod([1 - k / i for i in range(N - c + 1, N + 1)]) if N - c >= k else 0.0
                for c in g.c
            ]
            rand = 1 - float(np.mean(miss))
            boost = {"mean": 1.8, "last": 1.3, "penultimate": 1.25}[pooling]
            extra = {  # the other selectors: made-up curves, oracle = the share of solved ones
                m: 1 - (1 - rand) ** b if rand > 0 else np.nan for m, b in EXTRA_BOOST.items()
            }
            extra["oracle"] = float((g.c > 0).mean())
            rows.append(
                dict(
                    model=model,
                    task=task,
                    sampler=sampler,
                    pooling=pooling,
                    k=k,
                    random=rand,
                    repexp=1 - (1 - rand) ** boost if rand > 0 else np.nan,
                    **extra,
                    questions=len(g),
                )
            )
    return pd.DataFrame(rows)


def _deciles(questions: pd.DataFrame) -> pd.DataFrame:
    """deciles.csv; the reference is the strongest model (self-referenced on its own rows), and
    Game-of-24 is binned by the dataset's difficulty field."""
    rows = []
    base = questions[(questions.sampler == "vanilla") & (questions.pooling == "mean")]
    reference = base.groupby("model")["pass1"].mean().idxmax()
    for (model, task), g in base.groupby(["model", "task"]):
        ref = "difficulty" if task == "game24" else reference
        g = g.sort_values("stc_random").reset_index(drop=True)
        for d, idx in enumerate(np.array_split(np.arange(len(g)), 10)):
            part = g.iloc[idx]
            s = part[part.c > 0]
            rows.append(
                dict(
                    model=model,
                    task=task,
                    decile=d,
                    questions=len(part),
                    stc_random=s.stc_random.mean() if len(s) else np.nan,
                    stc_repexp=s.stc_repexp.mean() if len(s) else np.nan,
                    reference=ref,
                    self_referenced=model == ref,
                )
            )
    return pd.DataFrame(rows)


def _overview(rng, variant: str) -> pd.DataFrame:
    """overview.parquet: one question's pool in a 2-D view, with the first K picks of each
    method."""
    centers = rng.normal(0, 3, size=(5, 2))
    which = rng.integers(0, 5, size=N)
    xy = centers[which] + rng.normal(0, 0.6, size=(N, 2))
    correct = (which == 0) if variant == "rich" else np.zeros(N, dtype=bool)
    K = 8
    repexp_pick = np.full(N, np.nan)
    firsts = [int(np.flatnonzero(which == c)[0]) for c in range(5) if (which == c).any()]
    extra = [i for i in rng.permutation(N) if i not in firsts][: K - len(firsts)]
    repexp_pick[firsts + extra] = np.arange(1, K + 1)
    random_pick = np.full(N, np.nan)
    if variant != "unsolved":
        random_pick[rng.choice(N, size=K, replace=False)] = np.arange(1, K + 1)
    xy[-1] = np.nan  # a response whose 2-D view is missing
    model, task = (
        ("qwen2.5-7b-instruct", "math") if variant == "rich" else ("smollm2-135m-instruct", "gsm8k")
    )
    return pd.DataFrame(
        dict(
            qid="q007",
            sample=np.arange(N),
            x=xy[:, 0],
            y=xy[:, 1],
            correct=correct,
            repexp_pick=repexp_pick,
            random_pick=random_pick,
            model=model,
            task=task,
        )
    )


# selectors beyond the paper (issue 13) in the inference tables: STC = random's times a factor
# (oracle: 1 on every solved question), pass@k curves of made-up strength
EXTRA = ["maxmin", "likelihood_high", "ngram", "oracle"]
EXTRA_BOOST = {"maxmin": 1.5, "likelihood_high": 0.9, "ngram": 1.1}
METHODS = {m: m for m in ["random", "repexp", *EXTRA]}
STC_COLUMNS = {f"stc_{m}": m for m in METHODS}


def _with_selectors(questions: pd.DataFrame) -> pd.DataFrame:
    """questions with an STC column per extra selector, drawn from their own generator (the
    random and RepExp columns, and so the other figures' values, stay as they were)."""
    rng = np.random.default_rng(13)
    solved = questions["c"] > 0
    out = questions.copy()
    for m in EXTRA:
        factor = rng.uniform(0.3, 1.4, len(out)) if m != "oracle" else 0.0
        stc = np.maximum(1.0, out["stc_random"] * factor)
        out[f"stc_{m}"] = np.where(solved, stc, np.nan)
    return out


def _long(wide: pd.DataFrame, columns: dict[str, str], value: str) -> pd.DataFrame:
    """The long form of a wide synthetic table (the schema the workflow writes): one row per
    method, ``columns`` mapping each wide column to its method, its values under ``value``;
    method rows of one key next to each other, random first."""
    rest = [c for c in wide.columns if c not in columns and c not in ("reduction", "speedup")]
    parts = [
        wide[rest].assign(_row=np.arange(len(wide)), _m=i, method=m, **{value: wide[col]})
        for i, (col, m) in enumerate(columns.items())
    ]
    out = pd.concat(parts).sort_values(["_row", "_m"], kind="stable")
    return out.drop(columns=["_row", "_m"]).reset_index(drop=True)


def wide_tables(variant: str) -> dict[str, pd.DataFrame]:
    """The synthetic tables of ``variant`` one column per method (the reference of the plotted
    values); :func:`make_tables` writes them long."""
    rng = np.random.default_rng(0)
    questions = _with_selectors(_questions(rng, variant))
    stc = _stc(questions)
    passk = _passk(questions)
    if variant == "rich":  # scattered NaNs, as a failed metric would leave them
        stc.loc[stc.index[-1], ["stc_repexp", "reduction", "speedup"]] = np.nan
        passk.loc[passk.index[::17], "repexp"] = np.nan
    return {
        "questions": questions,
        "stc": stc,
        "passk": passk,
        "deciles": _deciles(questions),
        "overview": _overview(rng, variant),
        "rng": rng,
    }


def make_tables(root: Path, variant: str) -> Path:
    """Write the tables of ``variant`` under ``root`` (the inference ones long) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    t = wide_tables(variant)
    stc_cols = {"stc_random": "random", "stc_repexp": "repexp"}
    _long(t["questions"], STC_COLUMNS, "stc").to_parquet(root / "questions.parquet", index=False)
    stc = _long(t["stc"], STC_COLUMNS, "stc")
    stc = stc[
        ["model", "task", "sampler", "pooling", "method"]
        + [c for c in stc.columns if c not in ("model", "task", "sampler", "pooling", "method")]
    ]
    stc.to_csv(root / "stc.csv", index=False)
    _long(t["passk"], METHODS, "pass_at_k").to_csv(root / "passk.csv", index=False)
    _long(t["deciles"], stc_cols, "stc").to_csv(root / "deciles.csv", index=False)
    picks = {"repexp_pick": "repexp", "random_pick": "random"}
    _long(t["overview"], picks, "pick").to_parquet(root / "overview.parquet", index=False)
    _token_level(t["rng"], variant, root)
    _stamp(root)
    return root


def _stamp(root: Path) -> None:
    """The provenance columns the workflow adds to every table (the notebooks must ignore them)."""
    from repexp import provenance

    prov = provenance.collect("0123456789ab", stage="inference", model="m", seed=0)
    for path in sorted(root.iterdir()):
        if path.suffix == ".csv":
            provenance.stamp(pd.read_csv(path), prov).to_csv(path, index=False)
        elif path.suffix == ".parquet":
            provenance.stamp(pd.read_parquet(path), prov).to_parquet(path, index=False)


def _token_level(rng, variant: str, root: Path) -> None:
    """tokenlevel_{passk,difficulty}.csv built by repexp.tokenlevel from synthetic runs: rich = 30
    questions x 3 seeds x (vanilla, beta0.5, beta1); degenerate = one question, one seed, vanilla
    and beta1; unsolved = no solvable question (empty tables, as the test config gives)."""
    from repexp import tokenlevel as tl

    k_max = 64
    n_q, seeds, methods = {
        "rich": (30, 3, [("vanilla", np.nan), ("beta0.5", 0.5), ("beta1", 1.0)]),
        "degenerate": (1, 1, [("vanilla", np.nan), ("beta1", 1.0)]),
        "unsolved": (0, 0, []),
    }[variant]
    questions = pd.DataFrame(
        {"qid": [f"q{i:03d}" for i in range(n_q)], "ref_pass1": rng.uniform(0.001, 0.2, n_q)}
    )
    rows = []
    for method, beta in methods:
        for q, p in zip(questions["qid"], questions["ref_pass1"], strict=True):
            for s in range(seeds):
                at = int(rng.geometric(min(1.0, p * (1.5 if beta == 1.0 else 1.0))))
                rows += [
                    {
                        "qid": q,
                        "rank": 0,
                        "seed_index": s,
                        "method": method,
                        "beta": beta,
                        "response": i,
                        "correct": i == at,
                    }
                    for i in range(1, min(at, k_max) + 1)
                ]
    runs = pd.DataFrame(
        rows, columns=["qid", "rank", "seed_index", "method", "beta", "response", "correct"]
    )
    per_run = (
        tl.solved_at(runs)
        if len(runs)
        else pd.DataFrame(
            columns=["qid", "rank", "seed_index", "method", "beta", "solved_at", "generations"]
        )
    )
    passk = tl.passk_table(per_run, k_max)
    difficulty = tl.difficulty_table(per_run, questions, k=k_max, bins=5)
    for df, name in ((passk, "tokenlevel_passk.csv"), (difficulty, "tokenlevel_difficulty.csv")):
        df.insert(0, "task", "math")
        df.insert(0, "model", "qwen2.5-7b-instruct")
        df.to_csv(root / name, index=False)


class _Runs:
    """The notebooks run per table set on first use (so ``-k rich`` runs only the rich set)."""

    def __init__(self, root: Path):
        self.root, self.done = root, {}

    def __getitem__(self, key: tuple[str, str]) -> tuple[Path, str | None]:
        variant = key[0]
        if variant not in self.done:
            workers = min(4, max(2, os.cpu_count() or 1))
            self.done[variant] = execute_all(
                self.root, [variant], NOTEBOOKS, make_tables, workers=workers
            )
        return self.done[variant][key]


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> _Runs:
    """{(variant, notebook): (figures folder, None or the error)}, each variant run once."""
    return _Runs(tmp_path_factory.mktemp("notebooks"))


def test_notebooks_are_committed_clean():
    assert_committed_clean(NOTEBOOKS)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_draws_figure(executed, name, variant):
    out, error = executed[variant, name]
    assert_figure(out, name, variant, error)


# ------------------------------------------------------------------------------------------------
# what the figures show, against the tables they were drawn from (the rich set)
# ------------------------------------------------------------------------------------------------
def _figure(executed, name, variant="rich"):
    out, error = executed[variant, name]
    assert error is None, error
    return read_plotted(out, name), wide_tables(variant)


def _close(got, want):
    """Plotted values (None = NaN or masked) against the table's."""
    want = [None if v is None or not np.isfinite(v) else float(v) for v in want]
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert (g is None) == (w is None), (got, want)
        assert g is None or g == pytest.approx(w, rel=1e-9), (got, want)


def test_stc_figure_plots_the_stc_table(executed):
    panels, t = _figure(executed, "stc")
    stc = t["stc"][(t["stc"].sampler == "vanilla") & (t["stc"].pooling == "mean")]
    left = panel(panels, "One point per model–task pair")
    assert len(left["points"]) == len(stc)  # one point per model–task pair
    # one scatter call per row of the table, in its order
    _close([v for pt in left["points"] for v in pt["x"]], stc["stc_random"])
    _close([v for pt in left["points"] for v in pt["y"]], stc["stc_repexp"])
    right = panel(panels, "Per question: ")
    m, task = re.match(r"Per question: (\S+) on (\S+)", right["title"]).groups()
    q = t["questions"]
    q = q[(q.model == m) & (q.task == task) & (q.sampler == "vanilla") & (q.pooling == "mean")]
    q = q[q.c > 0].dropna(subset=["stc_random", "stc_repexp"])
    (points,) = right["points"]
    _close(points["x"], q["stc_random"])
    _close(points["y"], q["stc_repexp"])


def test_samplers_figure_plots_the_passk_rows(executed):
    panels, t = _figure(executed, "samplers")
    pk = t["passk"]
    pk = pk[(pk.model == "qwen2.5-7b-instruct") & (pk.task == "math") & (pk.pooling == "mean")]
    from repexp import plots

    assert len(panels) == pk["sampler"].nunique() == 5
    for sampler, d in pk.groupby("sampler"):
        p = panel(panels, plots.sampler_label(sampler))
        for method, label in (("random", plots.RANDOM_LABEL), ("repexp", plots.REPEXP_LABEL)):
            want = d[["k", method]].dropna().sort_values("k")
            _close(line(p, label)["x"], want["k"])
            _close(line(p, label)["y"], want[method])
        stc = t["stc"].set_index(["model", "task", "sampler", "pooling"])
        r = stc.loc[("qwen2.5-7b-instruct", "math", sampler, "mean")]
        if np.isfinite(r.stc_repexp):
            assert f"mean STC {r.stc_random:.3g} → {r.stc_repexp:.3g}" in p["title"]


def test_features_figure_plots_passk_and_stc_ratios(executed):
    from repexp import plots

    panels, t = _figure(executed, "features")
    pk = t["passk"][t["passk"].sampler == "vanilla"]
    model = plots.pick(
        None, pk.groupby("model").apply(lambda g: len(g[["task", "pooling"]].drop_duplicates())), ""
    )
    pk = pk[pk.model == model]
    for task, d in pk.groupby("task"):
        p = panel(panels, f"pass@k on {task} (")
        base = d[d.pooling == "mean"][["k", "random"]].dropna().sort_values("k")
        _close(line(p, plots.RANDOM_LABEL)["y"], base["random"])
        for pooling, g in d.groupby("pooling"):
            want = g[["k", "repexp"]].dropna().sort_values("k")
            _close(line(p, f"RepExp, {pooling}")["y"], want["repexp"])
    bars = panel(panels, "Samples-to-correct vs random")
    stc = t["stc"][(t["stc"].sampler == "vanilla") & (t["stc"].model == model)]
    ratio = (stc.stc_repexp / stc.stc_random).dropna()
    got = sorted(h for b in bars["bars"] for h in b["heights"])
    assert got == pytest.approx(sorted(ratio))


def test_model_rank_difficulty_figure_plots_reductions_and_deciles(executed):
    from repexp import plots

    panels, t = _figure(executed, "model_rank_difficulty")
    stc = t["stc"][(t["stc"].sampler == "vanilla") & (t["stc"].pooling == "mean")]
    left = panel(panels, "Gain by model strength")
    for task, d in stc.dropna(subset=["reduction"]).groupby("task"):
        d = d.sort_values("model_rank")
        _close(line(left, task)["x"], d["model_rank"])
        _close(line(left, task)["y"], d["reduction"])
    deciles = t["deciles"]
    shown = 0
    for p in panels:
        m = re.match(r"(\S+) on (\S+)\n", p["title"])
        if not m:
            continue
        d = deciles[(deciles.model == m[1]) & (deciles.task == m[2])].sort_values("decile")
        for col, label in (("stc_random", plots.RANDOM_LABEL), ("stc_repexp", plots.REPEXP_LABEL)):
            v = d.dropna(subset=[col])
            _close(line(p, label)["x"], v["decile"])
            _close(line(p, label)["y"], v[col])
        shown += 1
    assert shown == 4


def test_overview_figure_plots_each_methods_first_picks(executed):
    from repexp import plots

    panels, t = _figure(executed, "overview")
    view = t["overview"]
    drawn = view.dropna(subset=["x", "y"])
    for col, label in (("repexp_pick", plots.REPEXP_LABEL), ("random_pick", plots.RANDOM_LABEL)):
        p = panel(panels, f"{label}: ")
        bad, ok, picks = p["points"]
        assert len(bad["x"]) + len(ok["x"]) == len(drawn)
        _close(ok["x"], drawn[drawn.correct]["x"])
        want = view.dropna(subset=[col]).sort_values(col).head(10).dropna(subset=["x", "y"])
        _close(picks["x"], want["x"])
        _close(picks["y"], want["y"])


@pytest.mark.parametrize("name", ["tokenlevel", "tokenlevel_se"])
def test_tokenlevel_figures_plot_the_tokenlevel_tables(executed, name):
    from repexp import plots

    out, error = executed["rich", name]
    assert error is None, error
    panels = read_plotted(out, name)
    passk = plots.load(out.parent / "tables", "tokenlevel_passk.csv")
    left = panel(panels, "pass@k against the number of generations")
    for method, d in passk.groupby("method"):
        d = d.sort_values("k")
        got = line(left, plots.token_method_label(method, d["beta"].iloc[0]))
        _close(got["x"], d["k"])
        _close(got["y"], d["pass_at_k"])
    difficulty = plots.load(out.parent / "tables", "tokenlevel_difficulty.csv")
    right = panel(panels, "improvement over vanilla by question difficulty")
    betas = sorted(m for m in passk["method"].unique() if m != "vanilla")
    shown = betas[-1:] if name == "tokenlevel" else betas
    assert [b["label"] for b in right["bars"]] == [
        plots.token_method_label(m, difficulty[difficulty.method == m]["beta"].iloc[0])
        for m in shown
    ]
    for bars, m in zip(right["bars"], shown, strict=True):
        d = difficulty[difficulty.method == m].sort_values("bin")
        _close(bars["heights"], d["improvement"])


def test_selectors_figure_plots_relative_stc_with_bootstrap_cis_and_passk(executed):
    from repexp import plots
    from repexp.metrics import bootstrap_ratio_ci

    panels, t = _figure(executed, "selectors")
    q = t["questions"][(t["questions"].sampler == "vanilla") & (t["questions"].pooling == "mean")]
    order = [m for m in METHODS if m != "random"]
    for task, d in q.groupby("task"):
        p = panel(panels, f"STC relative to random on {task}")
        for model, g in d.groupby("model"):
            g = g.dropna(subset=list(STC_COLUMNS))  # the questions every selector has an STC for
            (points,) = [pt for pt in p["points"] if pt["label"] == model]
            _close(points["x"], [g[f"stc_{m}"].mean() / g["stc_random"].mean() for m in order])
            want = []
            for m in order:
                _, lo, hi = bootstrap_ratio_ci(g[f"stc_{m}"], g["stc_random"], n_boot=2000)
                want += [lo, hi, np.nan]
            _close(line(p, f"95% CI, {model}")["x"], want)
    p = panel(panels, "pass@k of the main selectors: ")
    m, task = re.match(r"pass@k of the main selectors: (\S+) on (\S+)", p["title"]).groups()
    pk = t["passk"]
    pk = pk[
        (pk.model == m) & (pk.task == task) & (pk.sampler == "vanilla") & (pk.pooling == "mean")
    ]
    for method in METHODS:  # every synthetic selector is one of the main ones
        want = pk[["k", method]].dropna().sort_values("k")
        got = line(p, plots.method_label(method))
        _close(got["x"], want["k"])
        _close(got["y"], want[method])
