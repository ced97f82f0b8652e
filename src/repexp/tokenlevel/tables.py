"""The token-level experiment's tables, as pure functions over DataFrames (paper.md §2 "Setting").

* the questions: the hardest *solvable* ones, lowest reference pass@1 > 0 in a reference model's
  pools (:func:`reference_subsample`, :func:`reference_counts`, :func:`hardest_from_counts`,
  :func:`hardest_solvable`);
* the runs: (question rank, seed index) pairs in shards (:func:`run_shards`, :func:`shard_runs`),
  named by method (:func:`method_name`);
* the results: per run the first correct response (:func:`solved_at`), pass@k per method
  (:func:`passk_table`) and the solve rate by difficulty (:func:`difficulty_table`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DIFFICULTY_COLUMNS = [
    "method",
    "beta",
    "bin",
    "ref_pass1_min",
    "ref_pass1_max",
    "questions",
    "solve_rate",
    "improvement",
    "improvement_se",
    "k",
]
RUN_COLUMNS = [
    "qid",
    "rank",
    "seed_index",
    "method",
    "beta",
    "response",
    "n_tokens",
    "finish_reason",
    "correct",
    "text",
    "mean_bonus",
    "mean_candidates",
    "seconds",
]


def reference_subsample(scores: pd.DataFrame, samples: int | None, seed: int) -> pd.DataFrame:
    """The reference responses that rank the questions: per question, ``samples`` of its responses
    drawn uniformly without replacement (all of them when it has at most ``samples``, or when
    ``samples`` is None).

    The paper estimates pass@1 from 1,024 samples per question, so its floor is 1/1,024; a larger
    pool (the paper grid's 6,400) would rank by a finer, lower floor and pick a harder set. The draw
    of a question is ``numpy.random.default_rng(question_seed(seed, "reference-subsample", qid))``
    over its responses in ``sample`` order: it depends on neither the shards nor the other
    questions."""
    if samples is None:
        return scores
    from repexp.pools import question_seed

    keep = []
    for qid, g in scores.groupby("qid", sort=False):
        g = g.sort_values("sample", kind="stable")
        if len(g) > samples:
            rng = np.random.default_rng(question_seed(seed, "reference-subsample", str(qid)))
            g = g.iloc[np.sort(rng.choice(len(g), size=samples, replace=False))]
        keep.append(g)
    return pd.concat(keep) if keep else scores.iloc[:0]


def reference_counts(scores: pd.DataFrame, samples: int | None, seed: int) -> pd.DataFrame:
    """Per question of ``scores`` (``qid, sample, correct``): ``ref_n``, ``ref_correct`` of its
    :func:`reference_subsample` and ``pool_n``, ``pool_correct`` of all its responses. A question
    only needs its own rows, so a pool can be counted shard by shard."""
    pool = scores.groupby("qid")["correct"].agg(pool_n="size", pool_correct="sum")
    sub = reference_subsample(scores, samples, seed)
    per_q = sub.groupby("qid")["correct"].agg(ref_n="size", ref_correct="sum")
    return per_q.join(pool).reset_index()


def hardest_from_counts(counts: pd.DataFrame, n_questions: int) -> pd.DataFrame:
    """The ``n_questions`` questions of :func:`reference_counts` with the lowest ``ref_pass1`` > 0
    (ties: by question id), ranked from 0 (hardest)."""
    per_q = counts.assign(ref_pass1=counts["ref_correct"] / counts["ref_n"])
    solvable = per_q[per_q["ref_correct"] > 0].sort_values(["ref_pass1", "qid"], kind="stable")
    out = solvable.head(n_questions).reset_index(drop=True)
    out.insert(0, "rank", np.arange(len(out)))
    out = out.astype({"ref_correct": int, "pool_correct": int})
    return out[["rank", "qid", "ref_n", "ref_correct", "ref_pass1", "pool_n", "pool_correct"]]


def hardest_solvable(
    scores: pd.DataFrame, n_questions: int, *, samples: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """The ``n_questions`` questions with the lowest reference pass@1 > 0 (ties: by question id).

    ``scores``: ``qid, sample, correct`` of the reference model's pools. pass@1 is estimated on
    :func:`reference_subsample` (``samples`` responses per question, seeded by ``seed``), so a
    question the subsample never solves is not solvable here. Returns ``rank`` (0 = hardest),
    ``qid``, ``ref_n``, ``ref_correct``, ``ref_pass1`` (of the subsample) and ``pool_n``,
    ``pool_correct`` (of the whole pool).
    """
    return hardest_from_counts(reference_counts(scores, samples, seed), n_questions)


def run_shards(n_questions: int, seeds: int, runs_per_shard: int) -> int:
    return -(-n_questions * seeds // runs_per_shard)


def shard_runs(
    n_questions: int, seeds: int, runs_per_shard: int, shard: int
) -> list[tuple[int, int]]:
    """(question rank, seed index) of the runs of one shard; runs are ordered seed-major so that a
    shard of a short run list still covers several questions."""
    runs = [(rank, s) for s in range(seeds) for rank in range(n_questions)]
    if not 0 <= shard < run_shards(n_questions, seeds, runs_per_shard):
        raise ValueError(
            f"shard {shard} out of range for {len(runs)} runs, {runs_per_shard} per shard"
        )
    return runs[shard * runs_per_shard : (shard + 1) * runs_per_shard]


def method_name(beta: float | None) -> str:
    return "vanilla" if beta is None else f"beta{beta:g}"


def solved_at(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (qid, seed_index, method, beta): ``solved_at`` = 1-based index of the first
    correct generation (NaN if none within the run), ``generations``."""
    keys = ["qid", "rank", "seed_index", "method", "beta"]
    g = runs.assign(hit=np.where(runs["correct"], runs["response"], np.nan)).groupby(
        keys, dropna=False
    )
    return g.agg(solved_at=("hit", "min"), generations=("response", "max")).reset_index()


def passk_table(per_run: pd.DataFrame, k_max: int) -> pd.DataFrame:
    """pass@k for k = 1..k_max per method: per question the fraction of its runs solved within k
    generations, then the mean over questions, with the standard error over questions."""
    ks = np.arange(1, k_max + 1)
    rows = []
    for (method, beta), df in per_run.groupby(["method", "beta"], dropna=False):
        solved = df["solved_at"].to_numpy()[:, None] <= ks[None, :]  # NaN compares False
        per_q = pd.DataFrame(solved, index=df["qid"].to_numpy()).groupby(level=0).mean()
        n = len(per_q)
        se = per_q.std(ddof=1).to_numpy() / np.sqrt(n) if n > 1 else np.full(len(ks), np.nan)
        rows.append(
            pd.DataFrame(
                {
                    "method": method,
                    "beta": beta,
                    "k": ks,
                    "pass_at_k": per_q.mean().to_numpy(),
                    "se": se,
                    "questions": n,
                    "runs": len(df),
                }
            )
        )
    return (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["method", "beta", "k", "pass_at_k", "se", "questions", "runs"])
    )


def difficulty_table(
    per_run: pd.DataFrame, questions: pd.DataFrame, *, k: int, bins: int
) -> pd.DataFrame:
    """Solve rate within ``k`` generations per difficulty bin and method, and each β's
    improvement over vanilla (paired by question; SE over the bin's questions).

    Bins are quantiles of the reference pass@1 (bin 1 = hardest), as equal in size as possible.
    """
    from repexp.metrics import difficulty_deciles

    q = questions.set_index("qid")
    n_bins = max(1, min(bins, len(q)))
    # difficulty_deciles: bin 0 = lowest STC (easiest); here the value is pass@1, lowest = hardest
    bin_of = pd.Series(difficulty_deciles(-q["ref_pass1"].to_numpy(), n_bins), index=q.index)
    bin_of = n_bins - bin_of  # 1 = hardest
    rate = (
        per_run.assign(solved=per_run["solved_at"] <= k)
        .groupby(["method", "beta", "qid"], dropna=False)["solved"]
        .mean()
        .reset_index()
    )
    rate["bin"] = rate["qid"].map(bin_of)
    lo = q["ref_pass1"].groupby(bin_of).min()
    hi = q["ref_pass1"].groupby(bin_of).max()
    vanilla = rate[rate["method"] == "vanilla"].set_index("qid")["solved"]
    rows = []
    if rate.empty:
        return pd.DataFrame(columns=DIFFICULTY_COLUMNS)
    for (method, beta, b), df in rate.groupby(["method", "beta", "bin"], dropna=False):
        diff = (df.set_index("qid")["solved"] - vanilla.reindex(df["qid"]).to_numpy()).dropna()
        rows.append(
            {
                "method": method,
                "beta": beta,
                "bin": int(b),
                "ref_pass1_min": lo[b],
                "ref_pass1_max": hi[b],
                "questions": len(df),
                "solve_rate": df["solved"].mean(),
                "improvement": diff.mean() if len(diff) else np.nan,
                "improvement_se": diff.std(ddof=1) / np.sqrt(len(diff))
                if len(diff) > 1
                else np.nan,
                "k": k,
            }
        )
    return pd.DataFrame(rows, columns=DIFFICULTY_COLUMNS)
