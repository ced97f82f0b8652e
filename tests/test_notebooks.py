"""The figure notebooks run under papermill on small synthetic tables and write a PDF and a PNG.

Three table sets with the exact schemas of ``results/tables``: a rich one (several models, tasks,
samplers and poolings, with an unsolved model–task pair and scattered NaNs), a degenerate one (one
model, one task, one sampler, one pooling, one solved question, NaNs) and one in which no question
is solved at all. Every notebook must still draw a figure for each.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
from conftest import REPO

NOTEBOOKS = [
    "overview",
    "stc",
    "features",
    "model_rank_difficulty",
    "samplers",
    "tokenlevel",
    "tokenlevel_se",
]
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
    means = solved.groupby(keys)[["stc_random", "stc_repexp"]].mean().reset_index()
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
            "stc_random",
            "stc_repexp",
            "reduction",
            "speedup",
            "model_rank",
            "format_miss",
        ]
    ]


def _passk(questions: pd.DataFrame) -> pd.DataFrame:
    """passk.csv: random = the exact without-replacement pass@k; RepExp = a better synthetic curve."""
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
            rows.append(
                dict(
                    model=model,
                    task=task,
                    sampler=sampler,
                    pooling=pooling,
                    k=k,
                    random=rand,
                    repexp=1 - (1 - rand) ** boost if rand > 0 else np.nan,
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
    """overview.parquet: one question's pool in a 2-D view, with the first K picks of each method."""
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


def make_tables(root: Path, variant: str) -> Path:
    """Write the five tables of ``variant`` under ``root`` and return ``root``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    questions = _questions(rng, variant)
    questions.to_parquet(root / "questions.parquet", index=False)
    stc = _stc(questions)
    passk = _passk(questions)
    if variant == "rich":  # scattered NaNs, as a failed metric would leave them
        stc.loc[stc.index[-1], ["stc_repexp", "reduction", "speedup"]] = np.nan
        passk.loc[passk.index[::17], "repexp"] = np.nan
    stc.to_csv(root / "stc.csv", index=False)
    passk.to_csv(root / "passk.csv", index=False)
    _deciles(questions).to_csv(root / "deciles.csv", index=False)
    _overview(rng, variant).to_parquet(root / "overview.parquet", index=False)
    _token_level(rng, variant, root)
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


def _execute(notebook: str, out_dir: str, tables_dir: str) -> str | None:
    """Run one notebook with papermill; None on success, else the error text (picklable). The
    figures go to ``out_dir``, which the notebook must create; the executed copy next to it."""
    name = Path(notebook).stem
    try:
        papermill.execute_notebook(
            notebook,
            str(Path(out_dir).parent / f"{name}.ipynb"),
            parameters={
                "tables_dir": tables_dir,
                "out_pdf": str(Path(out_dir) / f"{name}.pdf"),
                "out_png": str(Path(out_dir) / f"{name}.png"),
            },
            kernel_name="python3",
            cwd=str(REPO),
            progress_bar=False,
        )
    except Exception as err:  # noqa: BLE001 -- reported by the test of this notebook
        return f"{type(err).__name__}: {err}"
    return None


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, str | None]]:
    """Every notebook on every table set, a few at a time (each run is mostly kernel start-up)."""
    root = tmp_path_factory.mktemp("notebooks")
    jobs = {}
    workers = min(4, max(2, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for variant in VARIANTS:
            tables = make_tables(root / variant / "tables", variant)
            for name in NOTEBOOKS:
                out = root / variant / "figures"
                jobs[variant, name] = (
                    out,
                    pool.submit(
                        _execute, str(REPO / "notebooks" / f"{name}.ipynb"), str(out), str(tables)
                    ),
                )
        return {key: (out, future.result()) for key, (out, future) in jobs.items()}


def test_notebooks_are_committed_clean():
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
        for param in ("tables_dir", "out_pdf", "out_png"):
            assert f"{param} = " in tagged[0].source, f"{name}: no parameter {param}"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name} has outputs"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_draws_figure(executed, name, variant):
    out, error = executed[variant, name]
    assert error is None, f"{name} failed on the {variant} tables:\n{error}"
    pdf, png = out / f"{name}.pdf", out / f"{name}.png"
    assert pdf.exists() and pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 2_000
    assert png.exists() and png.stat().st_size > 5_000, f"{variant}/{name}: the PNG is nearly empty"
