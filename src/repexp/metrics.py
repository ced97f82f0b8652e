"""Metrics of the inference-time experiments (paper §4, RF1–RF3, App. B.1), as pure functions.

* pass@k of uniform random selection without replacement: the unbiased estimator of Chen et al.
  (2021), ``1 − C(n−c, k)/C(n, k)`` (paper App. B.1), in its numerically stable product form;
* samples-to-correct (STC, RF1): the 1-based position of the first correct response, in closed
  form for random selection (negative hypergeometric mean) and read off a RepExp order;
* pass@k of one RepExp order (Fig. 6): whether its first k picks contain a correct response;
* the two readings of "relative improvement" (Fig. 5), difficulty deciles (RF3, Fig. 5 right)
  and the model-strength ranking by pass@1 (RF2, Fig. 5 left);
* the long result tables (one row per method, a ``method`` column) seen one method per column:
  :func:`methods_wide`, and one method against a baseline: :func:`versus`;
* the selector comparison (issue 13): each method's mean STC relative to a baseline's with a
  bootstrap CI over questions, :func:`bootstrap_ratio_ci` and :func:`relative_stc`.

Conventions: a pool has ``n`` responses of which ``c`` are correct; ``correct`` is a boolean
array over the pool (indexed like the features); an ``order`` lists pool indices in selection
order (as returned by :func:`repexp.select.repexp_order`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "bootstrap_ratio_ci",
    "bootstrap_ratio_replicates",
    "difficulty_deciles",
    "methods_wide",
    "order_pass_at_k",
    "pass_at_k",
    "pass_at_k_curve",
    "random_samples_to_correct",
    "rank_models",
    "relative_improvement",
    "relative_stc",
    "samples_to_correct",
    "versus",
]


def _check_pool(n: int, c: int) -> None:
    if int(n) != n or int(c) != c or not 0 <= c <= n or n < 1:
        raise ValueError(f"need integers 0 <= c <= n with n >= 1, got n={n}, c={c}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021; paper App. B.1): 1 − C(n−c, k)/C(n, k).

    The probability that k responses drawn uniformly without replacement from a pool of n, c of
    them correct, contain a correct one. Stable product form (no huge binomials):
    1 if n − c < k, else 1 − Π_{i=n−c+1}^{n} (1 − k/i).

    >>> round(pass_at_k(5, 2, 1), 12)
    0.4
    """
    _check_pool(n, c)
    if int(k) != k or not 1 <= k <= n:
        raise ValueError(f"need an integer 1 <= k <= n = {n}, got k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_curve(n: int, c: int, ks) -> np.ndarray:
    """:func:`pass_at_k` for every k in ``ks`` at once (float64 array shaped like ``ks``).

    Uses the equivalent product C(n−c, k)/C(n, k) = Π_{j=0}^{k−1} (n−c−j)/(n−j), so one
    cumulative product over j serves every k (O(max k) in all); every factor lies in [0, 1].
    """
    _check_pool(n, c)
    ks = np.asarray(ks)
    if ks.size == 0:
        return np.zeros(ks.shape)
    if not np.issubdtype(ks.dtype, np.integer) or ks.min() < 1 or ks.max() > n:
        raise ValueError(f"ks must be integers in [1, n = {n}], got {ks.tolist()}")
    j = np.arange(ks.max(), dtype=np.float64)
    miss = np.cumprod(np.maximum(n - c - j, 0.0) / (n - j))  # miss[k-1] = C(n−c,k)/C(n,k)
    return 1.0 - miss[ks - 1]


def random_samples_to_correct(n: int, c: int) -> float:
    """Expected samples-to-correct of uniform random selection without replacement (RF1).

    The mean position of the first correct response in a uniformly random order of a pool of n
    with c correct (negative hypergeometric; Rohatgi & Saleh 2015): (n + 1)/(c + 1). Equivalently
    Σ_{k=0}^{n−c} C(n−c, k)/C(n, k) = Σ_{k≥0} (1 − pass@k).

    A pool with c = 0 has no first correct response: the result is ``nan``. Callers exclude such
    questions (config ``metrics.exclude_unsolved``) before averaging.

    >>> random_samples_to_correct(9, 4)
    2.0
    """
    _check_pool(n, c)
    return float("nan") if c == 0 else (n + 1) / (c + 1)


def samples_to_correct(order, correct) -> int | None:
    """1-based position in ``order`` of the first correct response, or None if there is none.

    >>> samples_to_correct([3, 0, 2], [True, False, False, False])
    2
    """
    hits = np.flatnonzero(np.asarray(correct, dtype=bool)[np.asarray(order, dtype=np.int64)])
    return int(hits[0]) + 1 if hits.size else None


def order_pass_at_k(order, correct, ks) -> np.ndarray:
    """pass@k of one selection order (Fig. 6): 1.0 if its first k picks contain a correct one.

    Returns a float64 array of 0.0/1.0 shaped like ``ks`` (each 1 <= k <= len(order)), so that
    averaging over trials and questions gives the RepExp pass@k curve.
    """
    order = np.asarray(order, dtype=np.int64)
    ks = np.asarray(ks)
    if ks.size and (
        not np.issubdtype(ks.dtype, np.integer) or ks.min() < 1 or ks.max() > order.size
    ):
        raise ValueError(
            f"ks must be integers in [1, len(order) = {order.size}], got {ks.tolist()}"
        )
    stc = samples_to_correct(order, correct)
    if stc is None:
        return np.zeros(ks.shape)
    return (ks >= stc).astype(np.float64)


def relative_improvement(stc_random, stc_repexp) -> dict:
    """The two readings of "relative improvement" of RepExp over random (Fig. 5; never defined).

    With R = STC of random selection and E = STC of RepExp (both >= 1):
    ``reduction`` = (R − E)/R, the fraction of verifier calls saved (in (−∞, 1));
    ``speedup`` = R/E − 1, how many times fewer calls, minus one ("3× fewer" = 2.0).
    Works elementwise on arrays.

    >>> relative_improvement(10.0, 2.5)
    {'reduction': 0.75, 'speedup': 3.0}
    """
    R = np.asarray(stc_random, dtype=np.float64)
    E = np.asarray(stc_repexp, dtype=np.float64)
    if not (np.all(R > 0) and np.all(E > 0)):
        raise ValueError(f"samples-to-correct must be positive, got {stc_random} and {stc_repexp}")
    out = {"reduction": (R - E) / R, "speedup": R / E - 1.0}
    return {name: float(v) if v.ndim == 0 else v for name, v in out.items()}


def difficulty_deciles(values, n_bins: int = 10) -> np.ndarray:
    """Equal-count difficulty bins by rank (RF3, Fig. 5 right): bin 0 = easiest.

    ``values`` is a difficulty score per question where higher = harder (the paper sorts by a
    reference model's random-sampling STC). Questions are ranked by value (ties: the earlier
    question gets the lower rank; NaN ranks as the hardest) and the rank r of n questions goes
    to bin ``r * n_bins // n``, so bin sizes differ by at most one.

    >>> difficulty_deciles([5.0, 1.0, 3.0, 3.0], n_bins=2)
    array([1, 0, 0, 1])
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    n = values.size
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(values, kind="stable")] = np.arange(n)
    return rank * int(n_bins) // max(n, 1)


def rank_models(pass1: dict[str, float]) -> dict[str, int]:
    """Rank models by pass@1 (RF2, Fig. 5 left): rank 1 = strongest (highest pass@1).

    Ranks are distinct; equal pass@1 is broken by model name (alphabetical first).

    >>> rank_models({"small": 0.2, "large": 0.7, "mid": 0.5})
    {'large': 1, 'mid': 2, 'small': 3}
    """
    for name, p in pass1.items():
        if not math.isfinite(p):
            raise ValueError(f"pass@1 of {name!r} is not a finite number: {p}")
    ranked = sorted(pass1, key=lambda name: (-pass1[name], name))
    return {name: r for r, name in enumerate(ranked, start=1)}


def methods_wide(table, value: str = "stc", *, methods=None, name: str = "{value}_{method}"):
    """A long result table (a ``method`` column) with one column per method of ``value``.

    Every column other than ``method`` and ``value`` identifies a row of the result (the question,
    the pool, k, and facts that do not depend on the method such as n, c, pass@1): rows with equal
    such columns (NaN equal to NaN) become one row, in order of first appearance, with the column
    ``name.format(value=value, method=m)`` per method ``m`` (NaN where a method has no row).
    ``methods``: which methods and in what column order (default: as they first appear).

    >>> import pandas as pd
    >>> long = pd.DataFrame({"qid": ["a", "a", "b", "b"], "method": ["random", "repexp"] * 2,
    ...                      "stc": [3.0, 2.0, 6.5, 4.0]})
    >>> methods_wide(long).to_dict("list")
    {'qid': ['a', 'b'], 'stc_random': [3.0, 6.5], 'stc_repexp': [2.0, 4.0]}
    """
    import pandas as pd

    if methods is None:
        methods = list(dict.fromkeys(table["method"]))
    table = table[table["method"].isin(methods)].reset_index(drop=True)
    index = [c for c in table.columns if c not in ("method", value)]
    if index:
        key = table.groupby(index, dropna=False, sort=False).ngroup().to_numpy()
    else:
        key = np.zeros(len(table), dtype=np.int64)
    first = ~pd.Series(key).duplicated().to_numpy()
    out = table.loc[first, index].reset_index(drop=True)
    for m in methods:
        mine = (table["method"] == m).to_numpy()
        if pd.Series(key[mine]).duplicated().any():
            raise ValueError(
                f"method {m!r} has several rows with the same {index}: a column that differs "
                f"between them is missing from the index (or the table holds duplicates)"
            )
        column = np.full(len(out), np.nan)
        column[key[mine]] = table.loc[mine, value].to_numpy(dtype=np.float64)
        out[name.format(value=value, method=m)] = column
    return out


def versus(table, ours: str = "repexp", baseline: str = "random", value: str = "stc"):
    """Method ``ours`` against ``baseline`` from a long STC table: :func:`methods_wide` with the
    columns ``{value}_{baseline}``, ``{value}_{ours}`` and the two relative improvements of
    :func:`relative_improvement` (``reduction`` = (R − E)/R, ``speedup`` = R/E − 1, with R the
    baseline's STC and E ours), NaN where either STC is missing. Other methods' rows are left out.

    >>> import pandas as pd
    >>> long = pd.DataFrame({"task": ["math", "math"], "method": ["random", "repexp"],
    ...                      "stc": [10.0, 2.5]})
    >>> versus(long).to_dict("records")
    [{'task': 'math', 'stc_random': 10.0, 'stc_repexp': 2.5, 'reduction': 0.75, 'speedup': 3.0}]
    """
    wide = methods_wide(table, value, methods=[baseline, ours])
    r, e = wide[f"{value}_{baseline}"].to_numpy(), wide[f"{value}_{ours}"].to_numpy()
    both = np.isfinite(r) & np.isfinite(e)
    for col in ("reduction", "speedup"):
        wide[col] = np.nan
    if both.any():
        rel = relative_improvement(r[both], e[both])
        for col in ("reduction", "speedup"):
            wide.loc[both, col] = rel[col]
    return wide


def bootstrap_ratio_ci(
    x, y, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """mean(x) / mean(y) over paired observations (one per question) and its percentile bootstrap
    confidence interval: ``n_boot`` resamples of the questions with replacement (one draw
    ``default_rng(seed).integers(0, n, (n_boot, n))``, so the same inputs give the same CI), the
    ratio of means of each, and their ``(1 − level)/2`` and ``(1 + level)/2`` quantiles (numpy's
    linear interpolation). Resampling whole questions keeps each question's pair together.

    Returns ``(ratio, lo, hi)``; all NaN without observations.

    >>> bootstrap_ratio_ci([2.0, 2.0], [4.0, 4.0])
    (0.5, 0.5, 0.5)
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and paired, got shapes {x.shape} and {y.shape}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise ValueError("x and y must be finite (drop the questions without an STC first)")
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    ratio, ratios = bootstrap_ratio_replicates(x, y, np.random.default_rng(seed), n_boot)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return (ratio, float(lo), float(hi))


def bootstrap_ratio_replicates(x, y, rng: np.random.Generator, n_boot: int):
    """mean(x) / mean(y) of paired observations and its ``n_boot`` bootstrap replicates: one draw
    ``rng.integers(0, n, (n_boot, n))`` of the pairs, the ratio of means of each resample.
    :func:`bootstrap_ratio_ci` takes their quantiles; :mod:`repexp.findings` averages several
    pools' replicates drawn from one generator. Here the draws are the pairs [1, 1], [1, 0] and
    [0, 0]: ratios 3/2, 2/2 and 1/2.

    >>> bootstrap_ratio_replicates(np.array([1.0, 3.0]), np.array([2.0, 2.0]),
    ...                            np.random.default_rng(0), 3)
    (1.0, array([1.5, 1. , 0.5]))
    """
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    return float(x.mean() / y.mean()), x[idx].mean(axis=1) / y[idx].mean(axis=1)


def relative_stc(
    questions,
    baseline: str = "random",
    *,
    keys=("model", "task", "sampler", "pooling"),
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
):
    """Each method's mean STC relative to ``baseline``'s, per pool, with a bootstrap CI over
    questions (:func:`bootstrap_ratio_ci`), from the long per-question table
    (``questions.parquet``: ``keys``, ``qid``, ``method``, ``stc``).

    The questions of a pool are those every method of the pool has a finite STC for (the
    ``used`` questions of ``stc.csv``), so ``ratio`` is ``stc.csv``'s STC of the method divided
    by the baseline's. One row per pool and method other than the baseline: ``keys``,
    ``method``, ``questions``, ``ratio``, ``lo``, ``hi`` (below 1: fewer samples to a correct
    response than the baseline). Each pool's bootstrap uses ``seed``, so every method of a pool
    is resampled over the same draws of questions.
    """
    import pandas as pd

    keys = list(keys)
    cols = [*keys, "method", "questions", "ratio", "lo", "hi"]
    rows = []
    q = questions[[*keys, "qid", "method", "stc"]]
    for key, g in q.groupby(keys, sort=True):
        wide = methods_wide(g.drop(columns=keys), name="{method}").set_index("qid")
        if baseline not in wide:
            continue
        wide = wide.dropna()  # questions every method has an STC for
        for m in (c for c in wide.columns if c != baseline):
            ratio, lo, hi = bootstrap_ratio_ci(
                wide[m].to_numpy(), wide[baseline].to_numpy(), n_boot=n_boot, level=level, seed=seed
            )
            rows.append((*key, m, len(wide), ratio, lo, hi))
    return pd.DataFrame(rows, columns=cols)
