"""The replication report (issue 13, part 3): every finding and headline number of the paper, what
this run measured for it with a 95% bootstrap CI, the smallest effect the run could have detected,
and a verdict.

One record per finding in :data:`FINDINGS` (the paper's claim, its number, the paper.md section
that states it, the function that computes ours, the verdict rule, the smallest sample it needs).
The paper's numbers live only there; every number of the results page's "Replication findings"
section is read from ``findings.csv``, which :func:`evaluate` builds from the result tables::

    python -m repexp.findings --tables-dir results/tables --out results/tables/findings.csv

Findings (paper.md §5 unless said otherwise; ``ours`` in brackets):

* ``RF1``: RepExp needs fewer samples to a correct response than random selection [the mean over
  the vanilla, mean-feature pools of each pool's mean-STC ratio RepExp/random; paper: below 1];
* ``RF2``: gains grow with model strength, weak models gain little or lose [per task with two
  or more models, the weakest model's ratio minus the strongest's (pass@1 ranks them), mean over
  tasks; paper: above 0];
* ``Fig4-last``, ``Fig4-penultimate``: mean-pooled features are over 2x more sample-efficient
  than last- / penultimate-token features [RepExp's mean STC with the token feature divided by its
  mean STC with the mean feature, paired by question, mean over the ablation pools; paper: above
  2; "2x more sample-efficient" read as half the samples-to-correct, paper.md §7 item 5];
* ``RF4``: RepExp improves on every pool sampler except τ = 1.5 (Fig. 6, paper.md §1.6) [per
  sampler of the pools generated with more than one sampler, the ratio RepExp/random; paper:
  below 1]; ``RF4-hot``: no gain at τ = 1.5 [the same ratio for the τ = 1.5 sampler without
  truncation; paper: above 1: only a significant loss confirms "no gain", see the verdicts];
* ``RF5``: token-level exploration overtakes vanilla sampling once the budget exceeds 512–640
  generations (Fig. 7, paper.md §2) [per β, the crossover k: the smallest k from which β's pass@k
  stays at least vanilla's up to ``k_max`` (as :func:`repexp.plots.token_crossover`); paper:
  within 512–640];
* ``RF6-GRPO``: GRPO falls below the base model at large k [GRPO's pass@k minus the base model's
  at the largest k of the test pools; paper: below 0]; ``RF6-RepExp``: RepExp keeps pass@k at large
  k where GRPO loses it [RepExp's minus GRPO's; paper: above 0; "preserves" against the base model
  is a claim of no difference, which a CI cannot confirm without an equivalence margin, so the
  comparative form is tested];
* ``Qwen14B``: over 50% fewer samples-to-correct for Qwen-2.5-14B-Instruct on MATH, GSM8K, MBPP+
  and Game-of-24 [per task, the reduction 1 − ratio; paper: above 0.5].

The STC ratio of a pool is :func:`repexp.metrics.bootstrap_ratio_ci`'s mean(STC of one method) /
mean(STC of the other) over the pool's questions that both have a finite STC (the ``used``
questions of ``stc.csv``): solved questions.

**Bootstrap.** Percentile bootstrap, :data:`N_BOOT` = 2,000 resamples from one
``numpy.random.default_rng(SEED)`` (:data:`SEED` = 0) per finding, fixed so that the same tables
give the same CIs. Questions are resampled with replacement within each pool (strata in sorted
order, one ``integers(0, n, (N_BOOT, n))`` draw per pool, so that a single pool gives exactly
:func:`repexp.metrics.bootstrap_ratio_ci`'s CI); the statistic is recomputed on every resample and
the CI is its 2.5% and 97.5% quantiles. Pools are resampled independently of one another (RF2's
weakest and strongest models: conservative, their questions are not paired). RL (RF6): the test
questions are resampled once per replicate and shared by the methods compared (paired), and each
method's training seeds are resampled with replacement independently (seeds are separate runs,
crossed with the questions): the bootstrap is over questions and over seeds. Token level (RF5):
a question's runs (its seeds) are resampled with it (a cluster bootstrap; the seeds are nested in
the questions).

**Power.** ``mde``, the minimal detectable effect at 80% power: (z_0.975 + z_0.8) × SE ≈ 2.80 ×
SE, with SE the standard deviation of the bootstrap replicates. A true deviation from the
verdict's threshold at least this large would put the 95% CI off the threshold with probability
0.8 (normal approximation of the statistic); smaller effects this run could not tell from none.
Infinite (RF5) when some resample never crosses over.

**Verdicts** (column ``verdict``; ``reason`` says why for the last two):

* ``consistent``: the CI lies entirely on the paper's side of its threshold (rule ``below θ``:
  hi < θ; ``above θ``: lo > θ; ``within [a, b]``: the CI overlaps [a, b] and is bounded);
* ``inconsistent``: the CI lies entirely on the other side (``below``: lo > θ; ``above``:
  hi < θ; ``within``: the CI misses [a, b]);
* ``inconclusive``: the CI covers the threshold (``within``: overlaps it but is unbounded): this
  run cannot tell; ``mde`` says how large an effect it could have seen;
* ``not testable at this scale``: the configuration lacks what the finding needs (the stage is
  off, no such pools or models, fewer than :data:`MIN_QUESTIONS` = 10 questions with an STC in a
  pool, a token-level budget ``k_max`` below the paper's crossover, RL test pools smaller than
  :data:`MIN_RL_K` = 64 responses per question, a quarter of the paper's 256 [choice]).

**Saturated pools.** The STC-ratio findings (RF1, RF2, Fig. 4, RF4) leave out a pool whose random
selection needs fewer than :data:`MIN_RANDOM_STC` = 1.5 samples on average (its mean random STC
over the questions with an STC): most of its responses are correct, every selector's STC is at
least 1, and no choice of response, feature or selector can show the paper's effects there (a
model far stronger than the task, e.g. Qwen2.5-Coder on the default's HumanEval problems)
[choice]. The scope column names the pools left out and why.

Every row says which tables and configuration it came from: ``tables``, their ``stage`` and
``config_hash`` (the tables' ``prov_config_hash``: :mod:`repexp.provenance`) and ``config`` (the
config files of the run).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from repexp import provenance
from repexp.metrics import bootstrap_ratio_replicates, pass_at_k_curve

__all__ = [
    "COLUMNS",
    "FINDINGS",
    "Finding",
    "bootstrap_summary",
    "crossover",
    "evaluate",
    "format_value",
    "main",
    "mde",
    "verdict",
]

N_BOOT = 2000  # bootstrap resamples
SEED = 0  # the bootstrap generator's seed: numpy.random.default_rng(SEED), fixed
LEVEL = 0.95  # confidence level of every CI
POWER = 0.8  # the power of the minimal detectable effect
MIN_QUESTIONS = 10  # questions with a finite STC a pool needs (and tasks of RF6, runs of RF5)
MIN_RL_K = 64  # the smallest largest-k of the RL test pools that counts as "large k" [choice]
MIN_RANDOM_STC = 1.5  # a pool whose random mean STC is below this is saturated [choice]
CONSISTENT, INCONSISTENT = "consistent", "inconsistent"
INCONCLUSIVE, NOT_TESTABLE = "inconclusive", "not testable at this scale"
VERDICTS = (CONSISTENT, INCONSISTENT, INCONCLUSIVE, NOT_TESTABLE)
RULES = ("below", "above", "within")
KEYS = ["model", "task", "sampler", "pooling"]
BASE, GRPO, REPEXP = "base", "grpo", "repexp"  # repexp.rl.methods' run names
# the tables each kind of input comes from (file names under results/tables; RL's per-question
# test tables are read from the runs, their provenance from rl_passk.csv)
TABLE_FILES = {
    "questions": "questions.parquet",
    "tokenlevel_runs": "tokenlevel_runs.csv",
    "tokenlevel_passk": "tokenlevel_passk.csv",
    "rl_passk": "rl_passk.csv",
}
PROVENANCE_OF = {"rl_questions": "rl_passk"}
# the text columns of findings.csv, for reading it back (a config hash may look like a number)
TEXT_COLUMNS = dict.fromkeys(["scope", "reason", "tables", "stage", "config_hash", "config"], str)
COLUMNS = [
    "finding",
    "scope",
    "claim",
    "paper",
    "section",
    "statistic",
    "unit",
    "rule",
    "threshold",
    "threshold_hi",
    "estimate",
    "lo",
    "hi",
    "se",
    "mde",
    "questions",
    "seeds",
    "verdict",
    "reason",
    "n_boot",
    "boot_seed",
    "tables",
    "stage",
    "config_hash",
    "config",
]


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------
def mde(se: float, level: float = LEVEL, power: float = POWER) -> float:
    """Minimal detectable effect of a two-sided test at ``level`` with ``power``:
    (z_{(1+level)/2} + z_power) × ``se`` (2.80 × SE at 95% and 80%).

    >>> round(mde(1.0), 4)
    2.8016
    """
    z = NormalDist()
    return float((z.inv_cdf((1 + level) / 2) + z.inv_cdf(power)) * se)


def bootstrap_summary(estimate: float, replicates, level: float = LEVEL) -> dict:
    """``estimate`` with its percentile CI (numpy's linear quantiles of ``replicates``), the
    replicates' standard deviation ``se`` and :func:`mde`. Infinite replicates (RF5: no
    crossover) give infinite quantiles where they reach them, and an infinite ``se`` / ``mde``."""
    r = np.asarray(replicates, dtype=np.float64)
    if np.isinf(r).any():  # linear interpolation towards inf is undefined: the nearest replicate
        lo, hi = np.quantile(r, _tails(level), method="nearest")
        se = math.inf
    else:
        lo, hi = np.quantile(r, _tails(level))
        se = float(r.std(ddof=1)) if r.size > 1 else math.nan
    return {
        "estimate": float(estimate),
        "lo": float(lo),
        "hi": float(hi),
        "se": se,
        "mde": mde(se, level) if math.isfinite(se) else se,
    }


def _tails(level: float) -> tuple[float, float]:
    return ((1 - level) / 2, (1 + level) / 2)


def verdict(rule: str, threshold: float, lo: float, hi: float, threshold_hi: float = math.nan):
    """The verdict of a CI ``[lo, hi]`` against the paper's ``threshold`` (module docstring):
    ``below``: consistent when hi < θ, inconsistent when lo > θ; ``above``: the mirror;
    ``within`` [θ, θ_hi]: inconsistent when the CI misses the range, consistent when it overlaps
    it and hi is finite; anything else is inconclusive.

    >>> verdict("below", 1.0, 0.4, 0.9), verdict("below", 1.0, 0.9, 1.1)
    ('consistent', 'inconclusive')
    >>> verdict("within", 512, 600, math.inf, 640)
    'inconclusive'
    """
    if rule not in RULES:
        raise ValueError(f"unknown verdict rule {rule!r}; one of {RULES}")
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"no CI to judge: [{lo}, {hi}]")
    if rule == "below":
        return CONSISTENT if hi < threshold else INCONSISTENT if lo > threshold else INCONCLUSIVE
    if rule == "above":
        return CONSISTENT if lo > threshold else INCONSISTENT if hi < threshold else INCONCLUSIVE
    if hi < threshold or lo > threshold_hi:
        return INCONSISTENT
    return CONSISTENT if math.isfinite(hi) else INCONCLUSIVE


def _weights(rng, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n): how often each of n items is drawn in each resample, divided by n (so that
    ``weights @ v`` is the resample's mean of v)."""
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0 / n)
    return w


def crossover(a, v, ks) -> np.ndarray:
    """Per row of the pass@k curves ``a`` (a β) and ``v`` (vanilla), shaped (..., len(ks)): the
    smallest k from which ``a`` stays at least ``v`` up to the last k (``inf``: behind at the
    last k), as :func:`repexp.plots.token_crossover` for one pair of curves.

    >>> crossover([[0.1, 0.3, 0.5]], [[0.2, 0.3, 0.4]], [1, 2, 4])
    array([2.])
    """
    a, v = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(v, float))
    ks = np.asarray(ks, dtype=np.float64)
    behind = a < v - 1e-12
    any_behind = behind.any(axis=1)
    last = ks.size - 1 - np.argmax(behind[:, ::-1], axis=1)  # the last k where a is behind
    nxt = np.minimum(last + 1, ks.size - 1)
    out = np.where(last + 1 < ks.size, ks[nxt], np.inf)
    return np.where(any_behind, out, ks[0])


# ------------------------------------------------------------------------------------------------
# inputs: the result tables, seen the way the findings read them
# ------------------------------------------------------------------------------------------------
def _stc_wide(questions: pd.DataFrame) -> pd.DataFrame:
    """questions.parquet with one STC column per method (``stc_<method>``) per pool and question,
    and the question's pass@1."""
    from repexp.metrics import methods_wide

    q = questions[[*KEYS, "qid", "method", "stc"]]
    wide = methods_wide(q, "stc")
    p1 = questions.drop_duplicates([*KEYS, "qid"])[[*KEYS, "qid", "pass1"]]
    return wide.merge(p1, on=[*KEYS, "qid"], how="left")


def _paired(df: pd.DataFrame, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """The finite pairs (x, y) of ``df``'s columns."""
    if x not in df or y not in df:
        return np.zeros(0), np.zeros(0)
    both = df[[x, y]].dropna()
    both = both[np.isfinite(both[x]) & np.isfinite(both[y])]
    return both[x].to_numpy(np.float64), both[y].to_numpy(np.float64)


def _pool_name(key) -> str:
    return "/".join(str(k) for k in key)


def _no(reason: str, **extra) -> list[dict]:
    return [{"scope": extra.pop("scope", "-"), "verdict": NOT_TESTABLE, "reason": reason, **extra}]


def _ratio_rows(
    strata: list[tuple[str, np.ndarray, np.ndarray]],
    *,
    n_boot: int,
    seed: int,
    scope: str,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """The mean over strata of each stratum's ratio of means, bootstrapped within strata (sorted
    by name; one generator)."""
    rng = np.random.default_rng(seed)
    points, reps = [], []
    for _, x, y in sorted(strata, key=lambda s: s[0]):
        p, r = bootstrap_ratio_replicates(x, y, rng, n_boot)
        points.append(p)
        reps.append(r)
    point, rep = float(np.mean(points)), np.mean(reps, axis=0)
    if transform is not None:
        point, rep = float(transform(np.array(point))), transform(rep)
    return {
        "scope": scope,
        "questions": int(sum(x.size for _, x, _ in strata)),
        "seeds": np.nan,
        **bootstrap_summary(point, rep),
    }


def random_stc(questions: pd.DataFrame) -> dict[str, float]:
    """Per pool ``model/task/sampler`` (and ``model/task`` for its vanilla pool): random
    selection's mean STC over the questions with an STC (random does not depend on the pooling).

    >>> q = pd.DataFrame({"model": "m", "task": "t", "sampler": "vanilla", "pooling": "mean",
    ...                   "qid": ["a", "b", "c"], "method": "random", "stc": [1.0, 2.0, np.nan]})
    >>> random_stc(q)
    {'m/t/vanilla': 1.5, 'm/t': 1.5}
    """
    r = questions[(questions["method"] == "random") & np.isfinite(questions["stc"])]
    r = r.drop_duplicates(["model", "task", "sampler", "qid"])
    out = {}
    for (model, task, sampler), g in r.groupby(["model", "task", "sampler"], sort=True):
        out[f"{model}/{task}/{sampler}"] = float(g["stc"].mean())
        if sampler == "vanilla":
            out[f"{model}/{task}"] = out[f"{model}/{task}/{sampler}"]
    return out


def _why_left_out(name: str, n: int, min_q: int, random: Mapping[str, float]) -> str | None:
    """Why the pool ``name`` with ``n`` questions with an STC is not judged (too few questions,
    or saturated: random STC below :data:`MIN_RANDOM_STC`); None when it is."""
    if n < min_q:
        return f"{n} questions with an STC (need ≥ {min_q})"
    if random.get(name, math.inf) < MIN_RANDOM_STC:
        return (
            f"saturated, random STC {random[name]:.2f} < {MIN_RANDOM_STC:g} "
            "(no room for a selector to gain)"
        )
    return None


def _left_out(strata, min_q: int, random: Mapping[str, float]) -> list[str]:
    """``"<pool>: <why>"`` for each stratum that is not judged."""
    whys = ((name, _why_left_out(name, x.size, min_q, random)) for name, x, _ in strata)
    return [f"{name}: {why}" for name, why in whys if why]


def _big_enough(strata, min_q: int, random: Mapping[str, float] | None = None):
    """The strata with at least ``min_q`` questions that are not saturated (random STC below
    :data:`MIN_RANDOM_STC`), and a scope naming them and those left out (with why)."""
    random = random or {}
    keep = [s for s in strata if _why_left_out(s[0], s[1].size, min_q, random) is None]
    names = [s[0] for s in keep]
    scope = f"{len(keep)} pool(s)" + (": " + ", ".join(names) if len(names) <= 4 else "")
    left = _left_out(strata, min_q, random)
    if left:
        more = f" and {len(left) - 4} more" if len(left) > 4 else ""
        scope += f"; left out: {'; '.join(left[:4])}{more}"
    return keep, scope


def _none_judged(strata, min_q: int, random: Mapping[str, float]) -> str:
    """The not-testable reason when every stratum is left out."""
    return "every pool left out: " + "; ".join(_left_out(strata, min_q, random))


# ------------------------------------------------------------------------------------------------
# the findings: each a pure function of the tables, one or more rows out
# ------------------------------------------------------------------------------------------------
def rf1(tables: Mapping[str, pd.DataFrame], context: Mapping, *, n_boot, seed, min_q) -> list:
    """RF1: the mean over the vanilla, mean-feature pools of each pool's STC ratio
    RepExp/random."""
    if "questions" not in tables:
        return _no("the inference stage is off (no questions.parquet)")
    wide = _stc_wide(tables["questions"])
    base = wide[(wide["sampler"] == "vanilla") & (wide["pooling"] == "mean")]
    strata = [
        (_pool_name(key[:2]), *_paired(g, "stc_repexp", "stc_random"))
        for key, g in base.groupby(["model", "task"], sort=True)
    ]
    if not strata:
        return _no("no vanilla pools with mean features")
    random = random_stc(tables["questions"])
    keep, scope = _big_enough(strata, min_q, random)
    if not keep:
        return _no(_none_judged(strata, min_q, random))
    return [_ratio_rows(keep, n_boot=n_boot, seed=seed, scope=scope)]


def rf2(tables, context, *, n_boot, seed, min_q) -> list:
    """RF2: per task with two or more models, the weakest model's ratio minus the strongest's
    (pass@1 over the pool's questions ranks them), mean over such tasks."""
    if "questions" not in tables:
        return _no("the inference stage is off (no questions.parquet)")
    wide = _stc_wide(tables["questions"])
    base = wide[(wide["sampler"] == "vanilla") & (wide["pooling"] == "mean")]
    pairs = []
    for task, g in base.groupby("task", sort=True):
        pass1 = g.groupby("model")["pass1"].mean()
        if len(pass1) < 2:
            continue
        ranked = sorted(pass1.index, key=lambda m: (pass1[m], m))
        weak, strong = ranked[0], ranked[-1]
        pairs.append(
            (
                task,
                (weak, *_paired(g[g["model"] == weak], "stc_repexp", "stc_random")),
                (strong, *_paired(g[g["model"] == strong], "stc_repexp", "stc_random")),
            )
        )
    if not pairs:
        return _no("one model per task: RF2 compares models of different strength")
    random = random_stc(tables["questions"])
    why = {  # task -> why its weakest or strongest pool is left out
        t: _left_out([(f"{m}/{t}", x, y) for m, x, y in (w, st)], min_q, random)
        for t, w, st in pairs
    }
    every = [(f"{m}/{t}", x, y) for t, *pools in pairs for m, x, y in pools]
    if all(why.values()):
        return _no(_none_judged(every, min_q, random))
    left = [r for t, *_ in pairs for r in why[t]]
    pairs = [p for p in pairs if not why[p[0]]]
    strata = [(f"{m}/{t}", x, y) for t, *pools in pairs for m, x, y in pools]
    rng = np.random.default_rng(seed)
    points, reps = [], []
    for _, (_, xw, yw), (_, xs, ys) in pairs:
        pw, rw = bootstrap_ratio_replicates(xw, yw, rng, n_boot)
        ps, rs = bootstrap_ratio_replicates(xs, ys, rng, n_boot)
        points.append(pw - ps)
        reps.append(rw - rs)
    scope = ", ".join(f"{t}: {w[0]} (weakest) vs {s[0]} (strongest)" for t, w, s in pairs)
    if left:
        scope += f"; left out: {'; '.join(left)}"
    return [
        {
            "scope": scope,
            "questions": int(sum(x.size for _, x, _ in strata)),
            "seeds": np.nan,
            **bootstrap_summary(float(np.mean(points)), np.mean(reps, axis=0)),
        }
    ]


def _fig4(pooling: str):
    def compute(tables, context, *, n_boot, seed, min_q) -> list:
        # Fig. 4: RepExp's mean STC with the `pooling` feature over its mean STC with the mean
        # feature, paired by question, mean over the ablation pools
        if "questions" not in tables:
            return _no("the inference stage is off (no questions.parquet)")
        q = tables["questions"]
        q = q[(q["sampler"] == "vanilla") & (q["method"] == "repexp")]
        wide = q.pivot_table(
            index=["model", "task", "qid"], columns="pooling", values="stc", dropna=False
        ).reset_index()
        if pooling not in wide or "mean" not in wide:
            return _no(
                f"no pools with {pooling}-token features "
                "(inference.features.ablation_models, poolings)"
            )
        strata = [
            (_pool_name(key), *_paired(g, pooling, "mean"))
            for key, g in wide.groupby(["model", "task"], sort=True)
            if g[pooling].notna().any()
        ]
        if not strata:
            return _no(f"no pools with {pooling}-token features")
        random = random_stc(tables["questions"])
        keep, scope = _big_enough(strata, min_q, random)
        if not keep:
            return _no(_none_judged(strata, min_q, random))
        return [_ratio_rows(keep, n_boot=n_boot, seed=seed, scope=scope)]

    compute.__name__ = f"fig4_{pooling}"
    return compute


def is_hot(name: str, settings: Mapping | None) -> bool:
    """The paper's high-temperature sampler (τ = 1.5, no truncation), where it reports no gain:
    from the sampler's settings when known, else from a name ``temp<τ>`` with τ ≥ 1.5.

    >>> is_hot("temp1.5", None), is_hot("minp0.05", {"temperature": 1.5, "min_p": 0.05})
    (True, False)
    """
    if settings:
        return (
            float(settings.get("temperature", 1.0)) >= 1.5
            and float(settings.get("top_p", 1.0) or 1.0) >= 1.0
            and float(settings.get("min_p", 0.0) or 0.0) == 0.0
            and int(settings.get("top_k", 0) or 0) == 0
        )
    m = re.fullmatch(r"temp(\d+(?:\.\d+)?)", name)
    return bool(m) and float(m.group(1)) >= 1.5


def _samplers(hot: bool):
    def compute(tables, context, *, n_boot, seed, min_q) -> list:
        """RF4 (Fig. 6): per sampler of the pools sampled more than one way, the STC ratio
        RepExp/random (mean features); ``hot`` picks the τ = 1.5 sampler, else the others."""
        if "questions" not in tables:
            return _no("the inference stage is off (no questions.parquet)")
        wide = _stc_wide(tables["questions"])
        wide = wide[wide["pooling"] == "mean"]
        random = random_stc(tables["questions"])
        settings = (context or {}).get("samplers") or {}
        rows = []
        for (model, task), g in wide.groupby(["model", "task"], sort=True):
            samplers = sorted(set(g["sampler"]))
            if len(samplers) < 2:
                continue
            for s in samplers:
                if is_hot(s, settings.get(s)) != hot:
                    continue
                x, y = _paired(g[g["sampler"] == s], "stc_repexp", "stc_random")
                scope = f"{model}/{task}/{s}"
                why = _why_left_out(scope, x.size, min_q, random)
                if why:
                    rows += _no(why, scope=scope)
                    continue
                rows.append(_ratio_rows([(scope, x, y)], n_boot=n_boot, seed=seed, scope=scope))
        if not rows:
            what = "a τ = 1.5 sampler" if hot else "a sampler besides"
            return _no(
                f"no pool sampled with {what} "
                + ("(inference.grid)" if hot else "vanilla (inference.grid)")
            )
        return rows

    compute.__name__ = "rf4_hot" if hot else "rf4"
    return compute


def rf5(tables, context, *, n_boot, seed, min_q) -> list:
    """RF5 (Fig. 7): per β, the crossover k against vanilla, bootstrapped over questions (each
    with its runs)."""
    if "tokenlevel_runs" not in tables:
        return _no("the token-level stage is off (no tokenlevel_runs.csv)")
    runs = tables["tokenlevel_runs"]
    k_max = int(runs["generations"].max()) if len(runs) else 0
    if "tokenlevel_passk" in tables and len(tables["tokenlevel_passk"]):
        k_max = max(k_max, int(tables["tokenlevel_passk"]["k"].max()))
    hi_paper = FINDINGS["RF5"].threshold_hi  # the paper's crossover must lie within the budget
    if k_max < hi_paper:
        return _no(f"k_max = {k_max} generations, below the paper's crossover ({hi_paper:g})")
    if "vanilla" not in set(runs["method"]):
        return _no("no vanilla runs to compare with")
    ks = np.arange(1, k_max + 1)

    def frac(m: str) -> pd.DataFrame:  # per question: share of its runs solved within k
        d = runs[runs["method"] == m]
        solved = d["solved_at"].to_numpy(np.float64)[:, None] <= ks[None, :]
        return pd.DataFrame(solved, index=d["qid"].to_numpy()).groupby(level=0).mean()

    vanilla = frac("vanilla")
    rows = []
    for m in sorted(set(runs["method"]) - {"vanilla"}):
        mine = frac(m)
        qids = sorted(set(mine.index) & set(vanilla.index))
        if len(qids) < min_q:
            rows += _no(f"{len(qids)} questions with runs (need ≥ {min_q})", scope=m)
            continue
        a, v = mine.loc[qids].to_numpy(), vanilla.loc[qids].to_numpy()
        w = _weights(np.random.default_rng(seed), len(qids), n_boot)
        point = crossover(a.mean(axis=0), v.mean(axis=0), ks)[0]
        reps = crossover(w @ a, w @ v, ks)
        seeds = runs[runs["method"] == m].groupby("qid").size().max()
        rows.append(
            {
                "scope": f"{m} vs vanilla (k ≤ {k_max})",
                "questions": len(qids),
                "seeds": int(seeds),
                **bootstrap_summary(point, reps),
            }
        )
    return rows or _no("no token-level method besides vanilla")


def _rl(first: str, second: str):
    def compute(tables, context, *, n_boot, seed, min_q) -> list:
        # RF6: `first`'s test pass@k minus `second`'s at the largest k, per task, bootstrapped
        # over the questions (paired) and over each method's seeds
        if "rl_questions" not in tables:
            return _no("the RL stage is off (no per-question test tables)")
        q = tables["rl_questions"]
        rows = []
        for task, g in q.groupby("task", sort=True):
            methods = set(g["method"])
            if not {first, second} <= methods:
                missing = sorted({first, second} - methods)
                rows += _no(f"no {', '.join(missing)} run(s) on this task", scope=task)
                continue
            g = g[g["method"].isin([first, second])]
            k = int(g["n"].min())
            if k < MIN_RL_K:
                rows += _no(
                    f"test pools of {k} responses per question: pass@k at large k needs "
                    f"≥ {MIN_RL_K} (the paper: 256)",
                    scope=task,
                )
                continue
            runs_of = g.groupby(["method", "seed"], dropna=False)
            qids = sorted(set.intersection(*(set(d["qid"]) for _, d in runs_of)))
            if len(qids) < min_q:
                rows += _no(f"{len(qids)} test questions (need ≥ {min_q})", scope=task)
                continue
            rng = np.random.default_rng(seed)
            w = _weights(rng, len(qids), n_boot)
            points, reps, seeds = {}, {}, {}
            for m in (first, second):
                d = g[g["method"] == m]
                runs = sorted(d["seed"].dropna().unique()) or [None]
                p = np.array(
                    [
                        [
                            pass_at_k_curve(int(n), int(c), [k])[0]
                            for n, c in _run(d, s).set_index("qid").loc[qids, ["n", "c"]].values
                        ]
                        for s in runs
                    ]
                )  # seeds x questions
                s_idx = rng.integers(0, len(runs), size=(n_boot, len(runs)))
                per_seed = w @ p.T  # n_boot x seeds: each seed's mean over the resampled questions
                points[m] = float(p.mean())
                reps[m] = np.take_along_axis(per_seed, s_idx, axis=1).mean(axis=1)
                seeds[m] = len(runs)
            rows.append(
                {
                    "scope": f"{task}: {first} − {second}, pass@{k}",
                    "questions": len(qids),
                    "seeds": min(seeds.values()),
                    **bootstrap_summary(points[first] - points[second], reps[first] - reps[second]),
                }
            )
        return rows or _no("no RL task")

    compute.__name__ = f"rf6_{first}_{second}"
    return compute


def _run(d: pd.DataFrame, seed) -> pd.DataFrame:
    return d if seed is None else d[d["seed"] == seed]


HEADLINE_TASKS = ("math", "gsm8k", "mbppplus", "game24")
HEADLINE_MODEL = r"qwen2\.?5-14b"


def headline(tables, context, *, n_boot, seed, min_q) -> list:
    """The >50% headline: per paper task, Qwen-2.5-14B-Instruct's reduction 1 − STC ratio
    RepExp/random (vanilla pools, mean features)."""
    if "questions" not in tables:
        return _no("the inference stage is off (no questions.parquet)")
    wide = _stc_wide(tables["questions"])
    base = wide[(wide["sampler"] == "vanilla") & (wide["pooling"] == "mean")]
    models = (context or {}).get("models") or {}

    def is_14b(name: str) -> bool:
        return any(re.search(HEADLINE_MODEL, str(x).lower()) for x in (name, models.get(name)) if x)

    mine = base[base["model"].map(is_14b)]
    if mine.empty:
        have = ", ".join(sorted(set(base["model"]))) or "none"
        return _no(f"no Qwen-2.5-14B-Instruct pools (models: {have})")
    rows = []
    for task in HEADLINE_TASKS:
        g = mine[mine["task"] == task]
        if g.empty:
            rows += _no(f"no {task} pool of this model", scope=task)
            continue
        model = g["model"].iloc[0]
        x, y = _paired(g[g["model"] == model], "stc_repexp", "stc_random")
        scope = f"{model}/{task}"
        if x.size < min_q:
            rows += _no(f"too few questions with an STC (need ≥ {min_q}): {x.size}", scope=scope)
            continue
        rows.append(
            _ratio_rows(
                [(scope, x, y)], n_boot=n_boot, seed=seed, scope=scope, transform=lambda r: 1 - r
            )
        )
    return rows


# ------------------------------------------------------------------------------------------------
# the table of findings
# ------------------------------------------------------------------------------------------------
UNITS = {"ratio": "{:.2f}", "difference": "{:+.3f}", "share": "{:.0%}", "generations": "{:.0f}"}


def format_value(unit: str, value: float) -> str:
    """A number of ``findings.csv`` as the page writes it.

    >>> format_value("share", 0.512), format_value("generations", float("inf"))
    ('51%', '∞')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return UNITS[unit].format(value)


@dataclass(frozen=True)
class Finding:
    """One finding of the paper: ``claim`` in words (``{paper}`` is replaced by the paper's
    number, :meth:`paper_text`), ``threshold`` (and ``threshold_hi`` for a range) the paper's
    number on the scale of ``statistic`` (``unit``), ``rule`` how a CI is judged against it
    (:func:`verdict`), ``section`` where paper.md states it, ``compute`` the function of the
    tables that gives ours (rows: ``scope``, ``estimate``, ``lo``, ``hi``, ``se``, ``mde``,
    ``questions``, ``seeds``; or ``verdict`` = not testable with a ``reason``), ``needs`` the
    tables it reads, ``min_questions`` the smallest sample it judges."""

    id: str
    claim: str
    threshold: float
    rule: str
    unit: str
    statistic: str
    section: str
    compute: Callable[..., list]
    needs: tuple[str, ...]
    threshold_hi: float = math.nan
    min_questions: int = MIN_QUESTIONS

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"finding {self.id}: rule {self.rule!r} not in {RULES}")
        if self.unit not in UNITS:
            raise ValueError(f"finding {self.id}: unit {self.unit!r} not in {sorted(UNITS)}")
        if self.rule == "within" and not self.threshold_hi >= self.threshold:
            raise ValueError(f"finding {self.id}: a range needs threshold_hi >= threshold")
        unknown = set(self.needs) - set(TABLE_FILES) - set(PROVENANCE_OF)
        if unknown:
            raise ValueError(f"finding {self.id}: unknown tables {sorted(unknown)}")

    def paper_text(self) -> str:
        """The paper's number as the rule reads it, e.g. ``< 1.00``, ``512–640``."""
        if self.rule == "within":
            lo, hi = (format_value(self.unit, v) for v in (self.threshold, self.threshold_hi))
            return f"{lo}–{hi}"
        return ("< " if self.rule == "below" else "> ") + format_value(self.unit, self.threshold)


FINDINGS: dict[str, Finding] = {
    f.id: f
    for f in (
        Finding(
            "RF1",
            "RepExp needs fewer samples to a correct response than random selection "
            "(most model–task points below y = x): STC ratio {paper}",
            1.0,
            "below",
            "ratio",
            "mean over pools of mean STC RepExp / mean STC random (vanilla, mean features)",
            "paper.md §5 (RF1), §4 Fig. 1",
            rf1,
            ("questions",),
        ),
        Finding(
            "RF2",
            "Gains grow with model strength; weak models (Qwen-2.5-0.5B) gain little or lose: "
            "weakest model's STC ratio minus the strongest's {paper}",
            0.0,
            "above",
            "difference",
            "STC ratio RepExp/random of the weakest model minus the strongest's, mean over tasks",
            "paper.md §5 (RF2), §1.5 model-strength ranking",
            rf2,
            ("questions",),
        ),
        Finding(
            "Fig4-last",
            "Mean-pooled features are over 2x more sample-efficient than last-token features: "
            "RepExp STC (last) / STC (mean) {paper}",
            2.0,
            "above",
            "ratio",
            "mean over ablation pools of RepExp's mean STC, last-token / mean features",
            "paper.md §5 (Fig. 4), §0 response feature",
            _fig4("last"),
            ("questions",),
        ),
        Finding(
            "Fig4-penultimate",
            "Mean-pooled features are over 2x more sample-efficient than penultimate-token "
            "features: RepExp STC (penultimate) / STC (mean) {paper}",
            2.0,
            "above",
            "ratio",
            "mean over ablation pools of RepExp's mean STC, penultimate-token / mean features",
            "paper.md §5 (Fig. 4), §0 response feature",
            _fig4("penultimate"),
            ("questions",),
        ),
        Finding(
            "RF4",
            "RepExp improves on every pool sampler except τ = 1.5 (Fig. 6): STC ratio {paper}",
            1.0,
            "below",
            "ratio",
            "mean STC RepExp / mean STC random of each sampler's pool (mean features)",
            "paper.md §5 (RF4), §1.6",
            _samplers(hot=False),
            ("questions",),
        ),
        Finding(
            "RF4-hot",
            "No gain from RepExp on the τ = 1.5 pool (Fig. 6): STC ratio {paper}",
            1.0,
            "above",
            "ratio",
            "mean STC RepExp / mean STC random of the τ = 1.5 pool (mean features)",
            "paper.md §5 (RF4), §1.6",
            _samplers(hot=True),
            ("questions",),
        ),
        Finding(
            "RF5",
            "Token-level exploration is below vanilla at small budgets and overtakes it at "
            "{paper} generations (Fig. 7)",
            512.0,
            "within",
            "generations",
            "crossover k: the smallest k from which β's pass@k stays ≥ vanilla's up to k_max",
            "paper.md §2 Result (RF5), §5",
            rf5,
            ("tokenlevel_runs", "tokenlevel_passk"),
            threshold_hi=640.0,
        ),
        Finding(
            "RF6-GRPO",
            "GRPO falls below the base model's pass@k at large k (diversity collapse): "
            "difference {paper}",
            0.0,
            "below",
            "difference",
            "test pass@k GRPO − base model at the largest k (mean over seeds and questions)",
            "paper.md §5 (RF6), §3.5",
            _rl(GRPO, BASE),
            ("rl_questions",),
        ),
        Finding(
            "RF6-RepExp",
            "RepExp keeps pass@k at large k where GRPO loses it: difference {paper}",
            0.0,
            "above",
            "difference",
            "test pass@k RepExp − GRPO at the largest k (mean over seeds and questions)",
            "paper.md §5 (RF6), §3.5",
            _rl(REPEXP, GRPO),
            ("rl_questions",),
        ),
        Finding(
            "Qwen14B",
            "RepExp cuts the samples-to-correct of Qwen-2.5-14B-Instruct on MATH, GSM8K, MBPP+ "
            "and Game-of-24 (abstract): reduction {paper}",
            0.5,
            "above",
            "share",
            "reduction 1 − mean STC RepExp / mean STC random (vanilla, mean features)",
            "paper.md §5 first bullet ([P] abstract, §1.1, RF1)",
            headline,
            ("questions",),
        ),
    )
}


def evaluate(
    tables: Mapping[str, pd.DataFrame],
    *,
    context: Mapping | None = None,
    sources: Mapping[str, Mapping] | None = None,
    config: str = "",
    n_boot: int = N_BOOT,
    seed: int = SEED,
    findings: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``findings.csv``: every finding of :data:`FINDINGS` (or those named) on ``tables``
    ({kind: DataFrame without provenance}: ``questions``, ``tokenlevel_runs``,
    ``tokenlevel_passk``, ``rl_questions``; a stage that is off is simply absent), one row per
    scope, in :data:`COLUMNS`. ``context``: ``samplers`` (the config's sampler settings) and
    ``models`` ({name: hub id}); ``sources``: {kind: :func:`repexp.provenance.read` summary} for
    the configuration columns; ``config``: the config files of the run."""
    sources = sources or {}
    rows = []
    for fid in findings or FINDINGS:
        f = FINDINGS[fid]
        out = f.compute(tables, context or {}, n_boot=n_boot, seed=seed, min_q=f.min_questions)
        used = [PROVENANCE_OF.get(t, t) for t in f.needs]
        present = [t for t in used if t in sources]
        prov = {
            "tables": ", ".join(TABLE_FILES.get(t, t) for t in present) or "-",
            "stage": ",".join(sorted({s for t in present for s in sources[t].get("stage", [])})),
            "config_hash": ",".join(
                sorted({h for t in present for h in sources[t].get("config_hash", [])})
            ),
        }
        for r in out:
            row = {
                "finding": f.id,
                "claim": f.claim.format(paper=f.paper_text()),
                "paper": f.paper_text(),
                "section": f.section,
                "statistic": f.statistic,
                "unit": f.unit,
                "rule": f.rule,
                "threshold": f.threshold,
                "threshold_hi": f.threshold_hi,
                "n_boot": n_boot,
                "boot_seed": seed,
                "config": config,
                **prov,
                **r,
            }
            if row.get("verdict") != NOT_TESTABLE:
                row["verdict"] = verdict(f.rule, f.threshold, row["lo"], row["hi"], f.threshold_hi)
                row["reason"] = _inconclusive(f) if row["verdict"] == INCONCLUSIVE else ""
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _inconclusive(f: Finding) -> str:
    if f.rule == "within":
        return "the CI is unbounded: in some resamples the curves never cross"
    return (
        f"the CI covers {format_value(f.unit, f.threshold)}: an effect smaller than the mde "
        "cannot be told from none"
    )


# ------------------------------------------------------------------------------------------------
# the workflow's side: reading the tables, the rule's parameters, the CLI
# ------------------------------------------------------------------------------------------------
def context_json(config: Mapping) -> str:
    """The ``--context`` of the findings rule: the config's sampler settings and each model's hub
    id (what :func:`is_hot` and the Qwen-2.5-14B headline read)."""
    return json.dumps(
        {
            "samplers": (config.get("inference") or {}).get("samplers") or {},
            "models": {
                m: (s or {}).get("repo_id") for m, s in (config.get("models") or {}).items()
            },
        },
        sort_keys=True,
    )


def provenance_json(config: Mapping) -> str:
    """The ``--provenance`` of the findings rule: stage ``findings`` and the hash of every
    section any stage reads (the findings read every stage's tables)."""
    sections = sorted({s for secs in provenance.STAGE_SECTIONS.values() for s in secs})
    return json.dumps(
        {"stage": "findings", "config_hash": provenance.config_hash(config, sections)},
        sort_keys=True,
    )


def _read(path: Path) -> pd.DataFrame:
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    return provenance.strip(df)


def read_tables(
    paths: Sequence[str | Path], rl_questions: Sequence[str | Path] = ()
) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """The tables :func:`evaluate` reads from files (known by their names, :data:`TABLE_FILES`;
    others are ignored), without provenance, and each one's provenance summary; the RL runs'
    per-question test tables (``rl_questions``) concatenated."""
    by_name = {v: k for k, v in TABLE_FILES.items()}
    tables, sources = {}, {}
    for p in map(Path, paths):
        kind = by_name.get(p.name)
        if kind is None:
            continue
        tables[kind] = _read(p)
        sources[kind] = provenance.read(p)
    if rl_questions:
        q = pd.concat([pd.read_parquet(p) for p in rl_questions], ignore_index=True)
        q["seed"] = q["seed"].astype("Int64")
        tables["rl_questions"] = q
    return tables, sources


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m repexp.findings", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--tables-dir", help="read every known table present here")
    ap.add_argument("--tables", nargs="*", default=None, help="or exactly these table files")
    ap.add_argument(
        "--rl-questions", nargs="*", default=[], help="the RL runs' test/questions.parquet"
    )
    ap.add_argument("--context", default="{}", help="JSON: samplers, models (context_json)")
    ap.add_argument("--config-name", default="", help="the run's config files, for the table")
    ap.add_argument("--n-boot", type=int, default=N_BOOT)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", required=True)
    provenance.add_argument(ap)
    a = ap.parse_args(argv)
    from repexp.atomic import atomic_path
    from repexp.parallel import start_cli

    start_cli()
    if a.tables is None and a.tables_dir is None:
        ap.error("give --tables-dir or --tables")
    paths = (
        a.tables
        if a.tables is not None
        else [
            Path(a.tables_dir) / f
            for f in TABLE_FILES.values()
            if (Path(a.tables_dir) / f).is_file()
        ]
    )
    tables, sources = read_tables(paths, a.rl_questions)
    out = evaluate(
        tables,
        context=json.loads(a.context),
        sources=sources,
        config=a.config_name,
        n_boot=a.n_boot,
        seed=a.seed,
    )
    with atomic_path(a.out) as tmp:
        provenance.stamp(out, provenance.from_cli(a.provenance)).to_csv(tmp, index=False)
    import logging

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        logging.getLogger(__name__).info(
            "findings:\n%s",
            out[["finding", "scope", "estimate", "lo", "hi", "mde", "verdict"]].to_string(
                index=False
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
