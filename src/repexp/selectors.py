"""Selectors for the inference-time experiment (issue 13): full orders of one question's pool.

Every selector is one pure function with the same signature,

    selector(ctx: PoolContext, rng: numpy.random.Generator, k: int | None, **options) -> order

and returns a **full order** of the pool: an int64 permutation of ``range(ctx.n)``, the first
pick first. The budget-k selection is the order's first k entries; samples-to-correct (STC),
pass@k and the relative improvement then come from :mod:`repexp.metrics` for every selector alike
(``samples_to_correct``, ``order_pass_at_k``, ``relative_improvement``), seeded, over the same
trials. ``k`` matters only to ``kmeans_rr`` (its number of clusters); every other selector here
is greedy or a sort, so each prefix of its full order is already its budget-k selection, and it
ignores ``k``.

Conventions shared by all selectors [choice unless tagged]:

* **Features** are the pool's projected features (N × d; :func:`repexp.select.project`), centred
  on the pool mean inside the selector, as RepExp does (paper App. B.1). ``PoolContext`` holds
  them uncentred; centring is idempotent, so centred input is fine too. Arithmetic is float64.
* **Randomness** comes only from ``rng``: the same generator state gives the same order.
* **Ties** of a greedy criterion or a sort key are broken by one seeded random permutation of the
  pool drawn at the start (the greedy runs on the permuted pool and takes the lowest permuted
  index among equal scores). The exception is ``repexp``, which keeps Algorithm 1 exactly as
  :func:`repexp.select.repexp_order` has it: ties go to the lowest pool index.
* **Exhausted criteria**: when a greedy criterion can no longer tell the remaining items apart
  (maxmin distances all 0, DPP residuals all 0, no unseen n-gram left), the remaining items follow
  in that same seeded random order. That is exactly what the tie rule gives (all remaining tie),
  so the rule needs no special case; the code only stops computing early.
* **Labels**: correctness is seen by ``oracle`` alone. Each entry of :data:`SELECTORS` names the
  inputs its function may read (``needs``); :func:`run_selector` passes the selector a context
  that holds only those inputs, so any other selector cannot read the labels by construction.

The selectors (``SELECTORS``):

====================  ==========================================================================
``random``            uniform random order (the tables use the closed forms for it)
``repexp``            paper Algorithm 1 (:func:`repexp.select.repexp_order`), uniform first pick
``repexp_loo``        the pool ranked by the authors' ``leave_one_out`` bonus (one shot, no
                      greedy updates); see :func:`leave_one_out_bonus`
``maxmin``            farthest-point (k-center) greedy, Euclidean, uniform first pick
``dpp``               greedy MAP of a DPP with the linear kernel L = ΦΦᵀ (Chen et al. 2018)
``likelihood_high``   highest summed log-probability first ("sharpening")
``likelihood_low``    lowest summed log-probability first ("unlikeliness")
``likelihood_high_per_token`` / ``likelihood_low_per_token``: the same by mean log-prob per token
``answer_dedup``      one response per distinct final answer, round-robin, most frequent first
``kmeans_rr``         k-means with k clusters, round-robin over the clusters
``ngram``             greedy coverage of unseen word n-grams (text only, no model features)
``oracle``            correct responses first (uses the labels; a lower bound on STC)
``repexp_layer<L>``   a family, resolved by name (``repexp_layer15``): ``repexp`` itself, on the
                      mean response state of decoder block L instead of the last layer's
====================  ==========================================================================

``repexp_layer<L>`` is the *same function* as ``repexp``; what differs is the features its
``PoolContext`` holds. Its entry says so with ``layer=L`` (:class:`Selector`): the select stage
(:mod:`repexp.inference`) builds that selector's context from the cache pooling ``mean@L``
(:func:`repexp.features.layer_pooling`; the output of block L, ``hidden_states[L]``, projected
like the last layer's features) and runs it with Algorithm 1's settings and first picks, in the
select job of the ``mean`` pooling. The cache holds ``mean@L`` only for the pools that
``inference.features.layers`` lists. ``answer_dedup`` is left out for code tasks (see
:func:`final_answers`).
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import NamedTuple

import numpy as np

from repexp.select import repexp_orders

__all__ = [
    "INPUTS",
    "SELECTORS",
    "PoolContext",
    "Selector",
    "SelectorTable",
    "answer_dedup",
    "dpp",
    "dpp_greedy_map",
    "final_answers",
    "kmeans_rr",
    "leave_one_out_bonus",
    "likelihood_high",
    "likelihood_high_per_token",
    "likelihood_low",
    "likelihood_low_per_token",
    "maxmin",
    "ngram",
    "ngram_sets",
    "oracle",
    "random_order",
    "repexp",
    "repexp_loo",
    "run_selector",
]

INPUTS = ("features", "logprob_sum", "n_tokens", "answers", "texts", "correct")


# --------------------------------------------------------------------------------------------
# The pool's inputs


@dataclass(frozen=True, eq=False)
class PoolContext:
    """What a selector may know about one question's pool of ``n`` responses (all optional).

    Attributes:
        n: pool size N.
        features: (N, d) projected features φ (:func:`repexp.select.project`), uncentred.
        logprob_sum: (N,) summed log-probability of each response under the sampling model.
        n_tokens: (N,) number of generated tokens of each response (>= 1).
        answers: N extracted final answers (``None``: no answer), see :func:`final_answers`.
        texts: N response texts.
        correct: (N,) bool verifier labels; only ``oracle`` may read them.

    Arrays are stored as read-only float64 / int64 / bool copies; lengths are checked against
    ``n``. A selector reads an input through :meth:`require`, which names a missing input.
    """

    n: int
    features: np.ndarray | None = None
    logprob_sum: np.ndarray | None = None
    n_tokens: np.ndarray | None = None
    answers: tuple | None = None
    texts: tuple | None = None
    correct: np.ndarray | None = None

    def __post_init__(self):
        n = self.n
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"n must be a positive integer (the pool size), got {n!r}")
        object.__setattr__(self, "n", int(n))

        def frozen(name, value, dtype, ndim):
            a = np.array(value, dtype=dtype, copy=True)
            if a.ndim != ndim or a.shape[0] != n:
                want = f"({n}, d)" if ndim == 2 else f"({n},)"
                raise ValueError(f"PoolContext.{name} must have shape {want}, got {a.shape}")
            a.flags.writeable = False
            object.__setattr__(self, name, a)
            return a

        if self.features is not None:
            f = frozen("features", self.features, np.float64, 2)
            if f.shape[1] < 1 or not np.isfinite(f).all():
                raise ValueError("PoolContext.features must have d >= 1 columns and be finite")
        if self.logprob_sum is not None:
            lp = frozen("logprob_sum", self.logprob_sum, np.float64, 1)
            if not np.isfinite(lp).all():
                raise ValueError("PoolContext.logprob_sum contains NaN or Inf")
        if self.n_tokens is not None:
            t = np.asarray(self.n_tokens)
            if t.size and not np.all(t == np.round(t)):
                raise ValueError("PoolContext.n_tokens must hold whole numbers")
            t = frozen("n_tokens", t, np.int64, 1)
            if (t < 1).any():
                raise ValueError(
                    f"PoolContext.n_tokens must be >= 1 (the per-token log-prob "
                    f"divides by it); rows {np.flatnonzero(t < 1)[:5].tolist()} are not"
                )
        for name in ("answers", "texts"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(value)
                if len(value) != n:
                    raise ValueError(f"PoolContext.{name} has {len(value)} entries for n = {n}")
                object.__setattr__(self, name, value)
        if self.texts is not None and not all(isinstance(s, str) for s in self.texts):
            raise ValueError("PoolContext.texts must all be strings")
        if self.correct is not None:
            frozen("correct", np.asarray(self.correct).astype(bool), bool, 1)

    def require(self, name: str):
        """The input ``name``, or a ValueError naming the missing input and how to provide it."""
        if name not in INPUTS:
            raise ValueError(f"unknown input {name!r}; inputs are {', '.join(INPUTS)}")
        value = getattr(self, name)
        if value is None:
            raise ValueError(
                f"this selector needs {name!r}, which its PoolContext does not hold: "
                f"pass {name}=... when building the PoolContext (and list it in the "
                f"selector's `needs` in SELECTORS)"
            )
        return value

    def restricted(self, needs: Iterable[str]) -> PoolContext:
        """A copy that holds only the inputs in ``needs`` (and ``n``)."""
        needs = set(needs)
        unknown = needs - set(INPUTS)
        if unknown:
            raise ValueError(f"unknown inputs {sorted(unknown)}; inputs are {', '.join(INPUTS)}")
        return replace(
            self, **{f.name: None for f in fields(self) if f.name in INPUTS and f.name not in needs}
        )

    @cached_property
    def centred(self) -> np.ndarray:
        """The features centred on the pool mean (float64, read-only), computed once."""
        phi = self.require("features") - self.require("features").mean(axis=0)
        phi.flags.writeable = False
        return phi


# --------------------------------------------------------------------------------------------
# Shared helpers


def _sort_desc(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by decreasing score; equal scores in a seeded random order."""
    perm = rng.permutation(scores.size)
    return perm[np.argsort(-scores[perm], kind="stable")]


def _check_order(order: np.ndarray, n: int, name: str) -> np.ndarray:
    order = np.asarray(order)
    if (
        order.shape != (n,)
        or not np.issubdtype(order.dtype, np.integer)
        or not np.array_equal(np.sort(order), np.arange(n))
    ):
        raise RuntimeError(
            f"selector {name!r} did not return a permutation of range({n}): a bug in that selector"
        )
    return order.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------
# random, repexp, repexp_loo


def random_order(ctx: PoolContext, rng: np.random.Generator, k: int | None = None) -> np.ndarray:
    """A uniformly random order of the pool (``rng.permutation``).

    The tables do not need it: random selection's STC and pass@k have exact closed forms
    (:func:`repexp.metrics.random_samples_to_correct`, :func:`repexp.metrics.pass_at_k`: the
    negative-hypergeometric mean and the unbiased estimator). It is here so that every method can
    run through the same code, and as a Monte-Carlo check of those closed forms.
    """
    return rng.permutation(ctx.n).astype(np.int64)


def repexp(
    ctx: PoolContext,
    rng: np.random.Generator,
    k: int | None = None,
    *,
    lam: float = 1.0,
    first: int | None = None,
) -> np.ndarray:
    """Paper Algorithm 1, as :func:`repexp.select.repexp_order` (λ = 1, centred, float64; computed
    by :func:`repexp.select.repexp_orders` with one trial, which gives the same order faster).

    The first pick is uniform over the pool (Alg. 1 line 1), drawn from ``rng`` unless ``first`` is
    given (e.g. :func:`repexp.select.first_picks`, which the workflow uses to give its trials
    distinct first picks). Later ties go to the lowest index, as in ``repexp_order``.
    """
    n = ctx.n
    if first is None:
        first = int(rng.integers(n))
    # repexp_orders with one trial: the same order as repexp_order (tests/test_select.py), faster
    return repexp_orders(ctx.require("features"), n, [int(first)], lam=lam, center=True)[0]


def leave_one_out_bonus(features, lam: float = 1.0, *, center: bool = True) -> np.ndarray:
    """The ``leave_one_out`` bonus of the authors' RL code, for every row of ``features``.

    Source: ``recipe/rep_exp/workers/elliptical_reward_model_worker.py``, ``_compute_bonuses`` with
    ``reward_type == "leave_one_out"`` (volcengine/verl at 86d081d54; unused by their scripts, which
    set ``leverage``). With Λ = Σ⁻¹ and Σ = λI + Σ_j φ_j φ_jᵀ over the whole group, the code
    downdates Λ by the row itself,

        Λ_{−i} = Λ + Λ φ_i (1 − φ_iᵀ Λ φ_i)⁻¹ φ_iᵀ Λ   (= (Σ − φ_i φ_iᵀ)⁻¹, Sherman–Morrison),

    and returns b_i = φ_iᵀ Λ_{−i} φ_i: the novelty of row i against all the others. Writing the
    leverage ℓ_i = φ_iᵀ Σ⁻¹ φ_i ∈ [0, 1), this is ℓ_i + ℓ_i²/(1 − ℓ_i) = ℓ_i / (1 − ℓ_i), which is
    what is computed here (one Cholesky solve instead of one downdate per row); it is increasing in
    ℓ_i, so ranking by it is ranking by leverage.

    Here a "group" is the whole pool; λ defaults to the selection λ = 1 (paper App. B.1), not the
    RL λ = 0.01; ``center`` subtracts the pool mean first (as the RL code centres per group).
    """
    from scipy.linalg import cho_factor, cho_solve

    phi = np.array(features, dtype=np.float64, copy=True)
    if phi.ndim != 2 or not np.isfinite(phi).all():
        raise ValueError(f"features must be a finite 2-D array (N × d), got shape {phi.shape}")
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite positive number, got {lam}")
    if center:
        phi -= phi.mean(axis=0)
    sigma = lam * np.eye(phi.shape[1]) + phi.T @ phi
    lev = np.einsum("nd,dn->n", phi, cho_solve(cho_factor(sigma), phi.T))
    return lev / (1.0 - lev)


def repexp_loo(
    ctx: PoolContext, rng: np.random.Generator, k: int | None = None, *, lam: float = 1.0
) -> np.ndarray:
    """The pool in decreasing order of the authors' ``leave_one_out`` bonus
    (:func:`leave_one_out_bonus`).

    Why a one-shot ranking and not Algorithm 1 with another bonus: inside Alg. 1 the candidate i is
    never in the selected set S, so its bonus φ_iᵀ(λI + Σ_S)⁻¹φ_i *is* already the leave-one-out
    bonus of i in the group S ∪ {i}; the ``leverage`` reading
    φ_iᵀ(λI + Σ_S + φ_iφ_iᵀ)⁻¹φ_i = b/(1 + b) is increasing in it. Both readings give Alg. 1's
    order exactly (tests/test_selectors.py shows it), so the only new selector the RL bonus
    defines is the one it is used as in RL: each response
    scored against the whole pool at once, without greedy updates. It rewards outliers and, unlike
    Alg. 1, does not stop picking near-duplicates of an earlier pick. Ties: seeded random.
    """
    return _sort_desc(leave_one_out_bonus(ctx.require("features"), lam), rng)


# --------------------------------------------------------------------------------------------
# maxmin (k-center greedy)

_ZERO_REL = 1e-9  # squared distances below this × (‖x‖² + ‖y‖²) are rounding: 0 (duplicates)


def maxmin(ctx: PoolContext, rng: np.random.Generator, k: int | None = None) -> np.ndarray:
    """Farthest-point (k-center) greedy on the centred features: Gonzalez's 2-approximation.

    The first pick is uniform (as RepExp's); each later pick is the response whose Euclidean
    distance to its nearest selected response is largest. So every prefix of k picks covers the pool
    within twice the optimal k-center radius. Where RepExp's bonus measures novelty against the span
    of the selected features (an ellipsoid), this measures it against the selected points
    themselves.

    Squared distances come from ‖x‖² + ‖y‖² − 2xᵀy (one matrix–vector product per pick, O(N·d));
    values below 1e-9·(‖x‖² + ‖y‖²) count as 0, so exact duplicates are recognised despite rounding.
    Once every remaining response is at distance 0 from the selected ones (duplicates), the rest
    follow in the seeded random order (see the module docstring: ties are random).
    """
    X = ctx.centred
    n = ctx.n
    perm = rng.permutation(n)
    Xp = np.ascontiguousarray(X[perm])
    sq = np.einsum("nd,nd->n", Xp, Xp)
    keep = np.arange(n)  # permuted rows still unselected (compacted lazily)
    Xk, sqk = Xp, sq
    mind = np.full(n, np.inf)  # min squared distance to the selected, per kept row
    order = np.empty(n, dtype=np.int64)
    cur = 0  # position in `keep` of the next pick: the uniform first
    n_sel_kept = 0  # selected rows still inside `keep`
    for t in range(n):
        i = keep[cur]
        order[t] = i
        mind[cur] = -np.inf
        n_sel_kept += 1
        if t == n - 1:
            break
        if 4 * n_sel_kept > keep.size:  # drop selected rows from the product
            live = mind > -np.inf
            keep, Xk, sqk, mind = keep[live], Xk[live], sqk[live], mind[live]
            n_sel_kept = 0
        d2 = Xk @ Xp[i]
        d2 *= -2.0
        d2 += sqk
        d2 += sq[i]
        d2[d2 <= _ZERO_REL * (sqk + sq[i])] = 0.0
        np.minimum(mind, d2, out=mind)  # selected rows stay at −inf
        cur = int(np.argmax(mind))
        if mind[cur] <= 0.0:  # only duplicates left: the random order
            rest = keep[mind > -np.inf]
            order[t + 1 :] = rest  # `keep` is sorted: ascending permuted index
            break
    return perm[order]


# --------------------------------------------------------------------------------------------
# DPP greedy MAP

_DPP_REL_TOL = 1e-10  # stop when the largest residual d_i² is below this × max_i L_ii


def dpp_greedy_map(
    features, *, first: int | None = None, rel_tol: float = _DPP_REL_TOL
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy MAP of a DPP with linear kernel L = XXᵀ, the fast algorithm of Chen, Zhang & Zhou
    (NeurIPS 2018, "Fast greedy MAP inference for determinantal point process", Alg. 1).

    Each step adds the item j maximising det(L_{S∪{j}}); Chen et al. keep, for every item i, the
    row c_i of the Cholesky factor of L_{S∪{i}} and d_i² = L_ii − ‖c_i‖² = det(L_{S∪{i}})/det(L_S),
    and after picking j update e_i = (L_ji − ⟨c_j, c_i⟩)/d_j, c_i ← [c_i, e_i], d_i² ← d_i² − e_i²:
    O(N·(d + |S|)) per step with L_j· = X x_j. ``features`` (N × d) are used as given (no centring).

    Args:
        first: force the first pick (default: the greedy one, argmax L_ii).
        rel_tol: Chen et al. stop when the largest d_i² falls below ε; here
            ε = rel_tol · max_i L_ii.

    Returns:
        ``(order, gains)``: the greedy picks until the criterion is exhausted (at most rank(X) of
        them; ties to the lowest index) and ``gains[t] = log d_j²``, the increment of log det.
    """
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError(f"features must be a finite 2-D array (N × d), got shape {X.shape}")
    n, d = X.shape
    d2 = np.einsum("nd,nd->n", X, X)
    eps = rel_tol * float(d2.max()) if n else 0.0
    steps = min(n, d)  # rank(L) <= min(N, d)
    C = np.empty((n, steps))
    order, gains = [], []
    j = int(np.argmax(d2)) if first is None else int(first)
    if not 0 <= j < n:
        raise ValueError(f"first must index a row of features (N = {n}), got {first}")
    for t in range(steps):
        if not d2[j] > eps:
            break
        order.append(j)
        gains.append(math.log(d2[j]))
        e = X @ X[j]
        if t:
            e -= C[:, :t] @ C[j, :t]
        e /= math.sqrt(d2[j])
        C[:, t] = e
        d2 -= e * e  # selected items stay at −inf
        d2[j] = -np.inf
        j = int(np.argmax(d2))
    return np.asarray(order, dtype=np.int64), np.asarray(gains)


def dpp(ctx: PoolContext, rng: np.random.Generator, k: int | None = None) -> np.ndarray:
    """Greedy MAP of a (k-)DPP with the linear kernel L = ΦΦᵀ on the centred features.

    The greedy picks maximise det(L_S), the squared volume spanned by the selected features; the
    first pick is the greedy one (the response farthest from the pool mean). After rank(Φ) <= d
    picks every residual is 0 (no volume left to add) and the rest follow in the seeded random
    order.
    Ties: seeded random. Computed by :func:`dpp_greedy_map` (Chen et al. 2018).

    Relation to RepExp's greedy (paper Alg. 1, eq. 2), with Σ_S = λI + Σ_{j∈S} φ_jφ_jᵀ and RepExp's
    bonus b_i(S) = φ_iᵀ Σ_S⁻¹ φ_i:

    * With the ridge kernel L = I + ΦΦᵀ/λ, Sylvester's identity gives det(L_S) = det(I + Φ_SΦ_Sᵀ/λ)
      = det(Σ_S)/λ^d, and the matrix determinant lemma gives det(Σ_{S∪{i}}) = det(Σ_S)(1 + b_i(S)).
      So the greedy step maximises log(1 + b_i(S)) — the same argmax as RepExp — and Chen et al.'s
      d_i² equals 1 + b_i(S). Greedy MAP of that DPP *is* RepExp's greedy log-det, up to the first
      pick (the DPP's is argmax ‖φ_i‖², RepExp's uniform). L = I + ΦΦᵀ/λ is the linear kernel of
      the features [Φ/√λ, I_N], so the test runs :func:`dpp_greedy_map` on those and gets
      ``repexp_order``'s order and bonuses.
    * This selector's kernel has no ridge: its d_i² = ‖(I − P_S)φ_i‖², the squared distance of φ_i
      to the span of the selected features, which is the λ → 0 limit of λ·b_i(S). It is RepExp with
      a vanishing λ (and the greedy first pick): identical while the selected features are few and
      large relative to √λ, different once the span is full (RepExp keeps ranking by b, the DPP
      has nothing left to rank by).
    """
    X = ctx.centred
    perm = rng.permutation(ctx.n)
    greedy, _ = dpp_greedy_map(X[perm])
    taken = np.zeros(ctx.n, dtype=bool)
    taken[greedy] = True
    return perm[np.concatenate([greedy, np.flatnonzero(~taken)])]


# --------------------------------------------------------------------------------------------
# Likelihood


def _per_token(ctx: PoolContext) -> np.ndarray:
    return ctx.require("logprob_sum") / ctx.require("n_tokens")


def likelihood_high(ctx: PoolContext, rng: np.random.Generator, k: int | None = None) -> np.ndarray:
    """Highest summed log-probability under the sampling model first ("sharpening": trust the
    model's own likelihood). Ties: seeded random."""
    return _sort_desc(ctx.require("logprob_sum"), rng)


def likelihood_low(ctx: PoolContext, rng: np.random.Generator, k: int | None = None) -> np.ndarray:
    """Lowest summed log-probability first ("unlikeliness" at inference time, the reverse of
    sharpening). Ties: seeded random."""
    return _sort_desc(-ctx.require("logprob_sum"), rng)


def likelihood_high_per_token(
    ctx: PoolContext, rng: np.random.Generator, k: int | None = None
) -> np.ndarray:
    """:func:`likelihood_high` by the mean log-probability per generated token (sum / n_tokens),
    which does not favour short responses as the sum does."""
    return _sort_desc(_per_token(ctx), rng)


def likelihood_low_per_token(
    ctx: PoolContext, rng: np.random.Generator, k: int | None = None
) -> np.ndarray:
    """:func:`likelihood_low` by the mean log-probability per generated token."""
    return _sort_desc(-_per_token(ctx), rng)


# --------------------------------------------------------------------------------------------
# answer_dedup


def answer_dedup(ctx: PoolContext, rng: np.random.Generator, k: int | None = None) -> np.ndarray:
    """One response per distinct final answer, round-robin over the answer groups.

    Responses are grouped by their extracted final answer (exact string equality of the strings in
    ``ctx.answers``; :func:`final_answers` extracts and canonicalises them per task). Groups are
    ordered by size, most frequent first (equal sizes: seeded random order); responses with no
    answer (``None``) form one group placed last whatever its size. Round r takes the r-th member
    of every group that still has one, in group order; members of a group come in a seeded random
    order. The first picks are thus one response per distinct answer, in the order majority voting
    would rank the answers: if RepExp's gain were only answer diversity, this would match it.

    Not for code tasks (MBPP+): their "answer" is a program, and grouping by behaviour would mean
    running every program on the prompt's examples in the sandbox; :func:`final_answers` refuses
    them.
    """
    answers = ctx.require("answers")
    perm = rng.permutation(ctx.n)
    groups: dict = {}
    for i in perm:  # members in the seeded random order
        groups.setdefault(answers[i], []).append(int(i))
    none = groups.pop(None, None)
    keys = list(groups)  # first-seen order: random, used for ties
    keys.sort(key=lambda a: -len(groups[a]))  # stable: equal sizes keep the random order
    members = [groups[a] for a in keys] + ([none] if none else [])
    order = [g[r] for r in range(max(map(len, members))) for g in members if r < len(g)]
    return np.asarray(order, dtype=np.int64)


def final_answers(
    task: str,
    responses: Sequence[str],
    *,
    last_number_fallback: bool = False,
    verifiers=None,
) -> list[str | None]:
    """Each response's final answer as the task's verifier extracts it, canonicalised for grouping.

    * ``gsm8k``: the number after the last ``####``
      (:func:`repexp.verifiers.gsm8k.extract_hash_answer`; with ``last_number_fallback``, the
      last number when there is none, as the verifier option),
      written as its exact value (``1,000.00`` and ``1000`` are one answer);
    * ``arith``: the same with the last-number fallback always on (as its verifier);
    * ``math``, ``dapo``, ``aime``, ``aime2024``: the content of the last ``\\boxed{}``
      (:func:`repexp.verifiers.latex.last_boxed`), lightly normalised
      (:func:`repexp.verifiers.math.normalise_answer`: ``\\dfrac``→``\\frac``, spacing, ``$``);
      equivalent answers written differently (``0.5`` vs ``\\frac12``) stay separate groups:
      math-verify's equivalence needs a sympy call per pair under a timeout;
    * ``game24``: the final expression (:func:`repexp.verifiers.game24.extract_expression`) without
      spaces: different correct expressions are different answers.

    ``None`` where no answer can be extracted. Code tasks raise ValueError: ``answer_dedup`` is left
    out for them (see its docstring). ``verifiers``: the verifier settings the task scores with
    (:class:`repexp.verifiers.settings.VerifierSettings`, its dict or JSON; default: the inference
    defaults), so that answers are grouped as the verifier extracts them;
    ``last_number_fallback=True`` turns gsm8k's fallback on whatever they say.
    """
    from repexp.tasks import TASKS, get_task
    from repexp.verifiers.settings import VerifierSettings

    if task not in TASKS:
        raise ValueError(f"final_answers: unknown task {task!r}; known: {', '.join(TASKS)}")
    if isinstance(verifiers, str):
        verifiers = VerifierSettings.from_json(verifiers)
    options = {"last_number_fallback": True} if last_number_fallback else {}
    t = get_task(task, verifiers=verifiers, **options)
    if t.spec.final_answer is None:
        raise ValueError(
            f"answer_dedup is not defined for the task {task!r}: "
            + (
                "a program's 'answer' is its behaviour; leave the selector out for code tasks"
                if t.spec.code
                else "its task record has no final_answer extractor (repexp.tasks.specs)"
            )
        )
    return [t.final_answer(r) for r in responses]


# --------------------------------------------------------------------------------------------
# kmeans_rr


def kmeans_rr(
    ctx: PoolContext,
    rng: np.random.Generator,
    k: int | None = None,
    *,
    n_init: int = 1,
    max_iter: int = 300,
) -> np.ndarray:
    """k-means on the centred features with k = the budget clusters, then round-robin over them.

    scikit-learn's ``KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter,
    random_state=<drawn from rng>)`` (Lloyd). ``n_init=1`` is what scikit-learn's ``"auto"`` means
    for k-means++, fixed here so that a version change cannot alter it. Clusters are visited
    largest first (equal sizes: seeded random order); inside a cluster, responses come by increasing
    distance to its centroid, so the first k picks are the k responses nearest the k centroids.
    Round r takes the r-th member of every cluster that has one; the order is full.

    ``k`` = ``None`` (no budget, e.g. for STC) uses ⌈√N⌉ clusters [choice]. ``k`` above the number
    of distinct feature rows is lowered to it (k-means cannot make more non-empty clusters).
    """
    from sklearn.cluster import KMeans

    X = ctx.centred
    n = ctx.n
    n_clusters = math.ceil(math.sqrt(n)) if k is None else int(k)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"kmeans_rr: k must be in [1, N = {n}], got {k}")
    n_clusters = min(n_clusters, np.unique(X, axis=0).shape[0])
    seed = int(rng.integers(2**31 - 1))
    tie = rng.permutation(n_clusters)  # cluster order among equal sizes
    km = KMeans(
        n_clusters=n_clusters, init="k-means++", n_init=n_init, max_iter=max_iter, random_state=seed
    ).fit(X)
    labels = km.labels_
    dist = np.einsum("nd,nd->n", X - km.cluster_centers_[labels], X - km.cluster_centers_[labels])
    sizes = np.bincount(labels, minlength=n_clusters)
    cluster_order = np.lexsort((tie, -sizes))
    within = np.lexsort((dist, labels))  # by cluster, then by distance to centroid
    starts = np.concatenate([[0], np.cumsum(sizes)])
    members = [within[starts[c] : starts[c + 1]] for c in cluster_order if sizes[c]]
    order = [g[r] for r in range(int(sizes.max())) for g in members if r < len(g)]
    return np.asarray(order, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# ngram

_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_sets(texts: Sequence[str], n: int = 2) -> list[set[tuple[str, ...]]]:
    """The set of word n-grams of each text: lower-cased tokens ``\\w+`` or one punctuation mark
    (so ``x+1=2`` gives x, +, 1, =, 2), consecutive n-tuples. A text of fewer than n tokens has
    none."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    out = []
    for text in texts:
        toks = _WORD.findall(text.lower())
        out.append(set(zip(*(toks[i:] for i in range(n)), strict=False)))
    return out


def ngram(
    ctx: PoolContext, rng: np.random.Generator, k: int | None = None, *, n: int = 2
) -> np.ndarray:
    """Greedy coverage of word n-grams (n = 2 by default), text only: no model features.

    Each pick is the response with the most n-grams that no earlier pick contains (greedy maximum
    coverage, a (1 − 1/e)-approximation of the best k-subset's coverage; chosen over Jaccard
    novelty because it is submodular, so the lazy evaluation below is exact). The first pick is the
    response with the most distinct n-grams. Ties: seeded random; once no response adds an unseen
    n-gram, the rest follow in the seeded random order. Tokens as :func:`ngram_sets`.

    Lazy greedy (Minoux 1978): stale gains are upper bounds (gains only shrink), so a response whose
    recomputed gain still tops the heap is the exact argmax.
    """
    texts = ctx.require("texts")
    N = ctx.n
    vocab: dict = {}
    ids = [
        np.fromiter((vocab.setdefault(g, len(vocab)) for g in s), dtype=np.int64, count=len(s))
        for s in ngram_sets(texts, n)
    ]
    covered = np.zeros(len(vocab), dtype=bool)
    rank = np.empty(N, dtype=np.int64)
    rank[rng.permutation(N)] = np.arange(N)  # tie-break: lower rank first
    heap = [(-a.size, int(rank[i]), i, 0) for i, a in enumerate(ids)]
    heapq.heapify(heap)
    order: list[int] = []
    step = 0
    while heap:
        neg_gain, r, i, stamp = heap[0]
        if neg_gain == 0:  # no unseen n-gram left anywhere
            break
        if stamp == step:  # fresh: the exact argmax
            heapq.heappop(heap)
            order.append(i)
            covered[ids[i]] = True
            step += 1
            continue
        gain = int(np.count_nonzero(~covered[ids[i]]))
        heapq.heapreplace(heap, (-gain, r, i, step))
    rest = sorted((r, i) for _, r, i, _ in heap)  # the seeded random order
    order += [i for _, i in rest]
    return np.asarray(order, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# oracle


def oracle(ctx: PoolContext, rng: np.random.Generator, k: int | None = None) -> np.ndarray:
    """Uses the labels: every correct response first, then the incorrect ones, each in a seeded
    random order. STC = 1 on every question with a correct response: the lower bound of any
    selector."""
    correct = ctx.require("correct")
    perm = rng.permutation(ctx.n)
    return np.concatenate([perm[correct[perm]], perm[~correct[perm]]]).astype(np.int64)


# --------------------------------------------------------------------------------------------
# The table


class Selector(NamedTuple):
    """One entry of :data:`SELECTORS`: the function, the inputs it reads, a display label, and
    ``layer``: None when its ``features`` are the select job's own (the last layer's pooled
    states), else the decoder block L whose mean response state the caller must put in the
    context's ``features`` instead (the ``mean@L`` cache pooling)."""

    fn: Callable[..., np.ndarray]
    needs: frozenset
    label: str
    layer: int | None = None

    @property
    def uses_labels(self) -> bool:
        """True if the selector reads the verifier labels (``correct``): not a real method."""
        return "correct" in self.needs


def run_selector(
    name: str, ctx: PoolContext, rng: np.random.Generator, k: int | None = None, **options
) -> np.ndarray:
    """Run ``SELECTORS[name]`` on ``ctx`` restricted to the inputs it needs; check the order.

    Returns the full order (int64 permutation of ``range(ctx.n)``). ``options`` go to the function
    (e.g. ``lam`` for ``repexp``, ``n`` for ``ngram``).
    """
    try:
        sel = SELECTORS[name]
    except KeyError:
        raise ValueError(f"unknown selector {name!r}; known: {SELECTORS.known()}") from None
    if k is not None and (isinstance(k, bool) or int(k) != k or not 1 <= k <= ctx.n):
        raise ValueError(f"k must be None or an integer in [1, N = {ctx.n}], got {k!r}")
    order = sel.fn(ctx.restricted(sel.needs), rng, k, **options)
    return _check_order(order, ctx.n, name)


class SelectorTable(dict):
    """The selector table: fixed entries (a dict) plus *families*, entries made from a name that
    matches a pattern (``repexp_layer15``). ``name in SELECTORS`` and ``SELECTORS[name]`` resolve
    both; iterating lists the fixed entries only; :meth:`known` names them and the families."""

    def __init__(self, entries: dict, families: dict):
        super().__init__(entries)
        # {display form: (compiled full-match pattern, match -> Selector)}
        self.families = families

    def _family(self, name):
        if isinstance(name, str):
            for pattern, make in self.families.values():
                m = pattern.fullmatch(name)
                if m:
                    return make(m)
        return None

    def __missing__(self, name):
        sel = self._family(name)
        if sel is None:
            raise KeyError(name)
        return sel

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or self._family(name) is not None

    def get(self, name, default=None):
        return self[name] if name in self else default

    def known(self) -> str:
        """Every fixed name and each family's form, for messages."""
        return ", ".join([*self, *self.families])


def _repexp_layer(m: re.Match) -> Selector:
    layer = int(m[1])
    return Selector(
        repexp, frozenset({"features"}), f"RepExp, layer {layer} mean state", layer=layer
    )


_F = frozenset
_ENTRIES: dict[str, Selector] = {
    "random": Selector(random_order, _F(), "random"),
    "repexp": Selector(repexp, _F({"features"}), "RepExp (Alg. 1)"),
    "repexp_loo": Selector(repexp_loo, _F({"features"}), "leave-one-out bonus, one shot"),
    "maxmin": Selector(maxmin, _F({"features"}), "max-min distance (k-center)"),
    "dpp": Selector(dpp, _F({"features"}), "DPP greedy MAP (linear kernel)"),
    "likelihood_high": Selector(likelihood_high, _F({"logprob_sum"}), "likelihood, high first"),
    "likelihood_low": Selector(likelihood_low, _F({"logprob_sum"}), "likelihood, low first"),
    "likelihood_high_per_token": Selector(
        likelihood_high_per_token,
        _F({"logprob_sum", "n_tokens"}),
        "likelihood per token, high first",
    ),
    "likelihood_low_per_token": Selector(
        likelihood_low_per_token, _F({"logprob_sum", "n_tokens"}), "likelihood per token, low first"
    ),
    "answer_dedup": Selector(answer_dedup, _F({"answers"}), "distinct answers, round-robin"),
    "kmeans_rr": Selector(kmeans_rr, _F({"features"}), "k-means, round-robin"),
    "ngram": Selector(ngram, _F({"texts"}), "n-gram novelty (text only)"),
    "oracle": Selector(oracle, _F({"correct"}), "oracle (uses labels)"),
}
SELECTORS: SelectorTable = SelectorTable(
    _ENTRIES,
    {"repexp_layer<L>": (re.compile(r"repexp_layer([1-9][0-9]*)"), _repexp_layer)},
)
