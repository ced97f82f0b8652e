"""RepExp coreset selection: Algorithm 1 of the paper, as pure functions over arrays.

Given the N responses of one prompt, each summarised by a feature vector φ (mean last-layer hidden
state, sparse-projected to d = 512 dims and centred on the pool mean; paper §3 and App. B.1), RepExp
orders the pool greedily by the elliptical bonus (novelty) of paper eq. (2):

    bonus(φ | φ_1..φ_t) = φᵀ Λ_t φ,   Λ_t = Σ_t⁻¹,   Σ_t = λ I + Σ_{j≤t} φ_j φ_jᵀ.

Algorithm 1: the first pick is uniform over the pool (here: the caller's ``first``; see
:func:`first_picks`); every later pick is the not-yet-selected response of largest bonus. After
each pick Λ is updated by Sherman–Morrison (Alg. 1 line 5; :mod:`repexp.elliptical`),

    u = Λ_{t-1} φ_t,   s = 1 + φ_tᵀ u,   Λ_t = Λ_{t-1} − u uᵀ / s,

and the bonus of every candidate i follows from the same vector u without touching Λ again,

    bonus_i ← bonus_i − (φ_iᵀ u)² / s,

so one step costs O(N·d + d²) instead of the O(N·d²) of recomputing every φᵀΛφ. All algebra is
float64 (paper App. B.2; the authors' RL code also uses float64). Ties go to the lowest index.

Entry points:

* :func:`repexp_order` -- one trial (one first pick), the reference implementation;
* :func:`repexp_orders` -- several trials of one pool, sharing each pass over the features;
* :func:`repexp_orders_torch` -- many pools × trials at once, on any torch device;
* :func:`sparse_projection_matrix` / :func:`project` -- the very sparse random projection
  (Li, Hastie & Church 2006) to ``out_dim`` dims, as scikit-learn builds it;
* :func:`first_picks` -- the seeded uniform first picks of the trials.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import scipy.sparse

from repexp.elliptical import (
    DeferredUpperInverse,
    sherman_morrison_batch,
    sherman_morrison_upper,
)

__all__ = [
    "first_picks",
    "project",
    "repexp_order",
    "repexp_orders",
    "repexp_orders_torch",
    "sparse_projection_matrix",
]


# --------------------------------------------------------------------------------------------
# Sparse random projection (paper §3, App. B.1)


def sparse_projection_matrix(in_dim: int, out_dim: int, seed: int) -> scipy.sparse.csr_matrix:
    """The ``in_dim × out_dim`` very sparse random projection matrix R (features are rows: φ = h R).

    Built exactly as the authors' code does: scikit-learn's
    ``SparseRandomProjection(n_components=out_dim, density="auto", random_state=seed)`` fitted on a
    dummy ``1 × in_dim`` input (only its shape matters), returning ``components_.T``. With
    ``density="auto"`` the density is ρ = 1/√in_dim; each entry is 0 with probability 1 − ρ and
    ±√(1/(ρ·out_dim)) with probability ρ/2 each, so E‖hR‖² = ‖h‖². Same seed, same matrix.
    """
    from sklearn.random_projection import SparseRandomProjection

    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"in_dim and out_dim must be >= 1, got {in_dim} and {out_dim}")
    srp = SparseRandomProjection(n_components=out_dim, density="auto", random_state=seed)
    with warnings.catch_warnings():  # out_dim > in_dim: sklearn warns that nothing is reduced
        warnings.simplefilter("ignore")
        srp.fit(np.zeros((1, in_dim)))
    return scipy.sparse.csr_matrix(srp.components_.T, dtype=np.float64)


def project(features: np.ndarray, out_dim: int, seed: int) -> np.ndarray:
    """Project ``features`` (N × in_dim) to ``out_dim`` dims: ``features @ R`` in float64.

    If ``out_dim >= in_dim`` there is nothing to reduce and the features are returned unchanged
    (as a float64 copy): the projection only approximates the identity map (it preserves squared
    norms in expectation), so the identity is its exact, distortion-free limit, and the bonus scale
    relative to λ is the same in expectation either way. This lets small test models with hidden
    size below 512 run with the paper's ``proj_dim``.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (N × in_dim), got shape {features.shape}")
    in_dim = features.shape[1]
    if out_dim >= in_dim:
        return features.copy()
    R = _cached_projection_matrix(in_dim, out_dim, seed)
    # dense @ sparse -> dense; each output row depends on its input row alone (same arithmetic
    # whatever the other rows), so a pool projected shard by shard equals the pool projected at once
    return np.asarray(features @ R, dtype=np.float64)


@functools.lru_cache(maxsize=4)
def _cached_projection_matrix(in_dim: int, out_dim: int, seed: int) -> scipy.sparse.csr_matrix:
    """:func:`sparse_projection_matrix`, built once per process (a pool is projected shard by shard
    or question by question); read-only by convention."""
    return sparse_projection_matrix(in_dim, out_dim, seed)


# --------------------------------------------------------------------------------------------
# Algorithm 1 (numpy)


def _prepare(features, lam: float, center: bool) -> np.ndarray:
    """Validated float64 C-contiguous copy of the features, centred on the pool mean (App. B.1)."""
    phi = np.array(features, dtype=np.float64, order="C", copy=True)
    if phi.ndim != 2 or phi.shape[0] < 1 or phi.shape[1] < 1:
        raise ValueError(f"features must be a non-empty 2-D array (N × d), got shape {phi.shape}")
    if not np.isfinite(phi).all():
        bad = np.flatnonzero(~np.isfinite(phi).all(axis=1))
        raise ValueError(
            f"features contain NaN or Inf in {bad.size} row(s), first rows {bad[:5].tolist()}"
        )
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite positive number, got {lam}")
    if center:
        phi -= phi.mean(axis=0)
    return phi


def _check_k(k: int, n: int) -> int:
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= n:
        raise ValueError(f"k must be an integer with 1 <= k <= N = {n}, got {k!r}")
    return int(k)


def _check_firsts(firsts, n: int) -> np.ndarray:
    firsts = np.asarray(firsts)
    if firsts.ndim != 1 or firsts.size < 1 or not np.issubdtype(firsts.dtype, np.integer):
        raise ValueError(f"firsts must be a non-empty 1-D integer array, got {firsts!r}")
    if firsts.min() < 0 or firsts.max() >= n:
        raise ValueError(f"first picks must lie in [0, N = {n}), got {firsts.tolist()}")
    return firsts.astype(np.int64)


def repexp_order(
    features,
    k: int,
    *,
    lam: float = 1.0,
    first: int = 0,
    center: bool = True,
    return_bonus: bool = False,
):
    """Greedy RepExp selection order of one pool (paper Alg. 1, bonus of eq. 2).

    Args:
        features: (N, d) response features φ_i (one row per response of the pool).
        k: number of responses to select, 1 <= k <= N (k = N gives the full order).
        lam: ridge λ > 0; Λ_0 = λ⁻¹ I (paper: λ = 1).
        first: index of the first pick (Alg. 1 draws it uniformly; see :func:`first_picks`).
        center: subtract the mean of all N rows first (App. B.1).
        return_bonus: also return ``bonus_at_pick``.

    Returns:
        ``order`` (k,) int64, the selected indices in selection order; with ``return_bonus``,
        ``(order, bonus_at_pick)`` where ``bonus_at_pick[t]`` is φᵀΛ_{t}φ of the t-th pick when it
        was picked (``bonus_at_pick[0] = ‖φ_first‖²/λ``).

    Each step costs O(N·d + d²): every candidate's bonus is kept current by the rank-one
    (Sherman–Morrison) update ``bonus_i -= (φ_iᵀu)²/s`` and Λ itself by ``Λ -= u uᵀ/s``.
    Already-selected rows get bonus −∞ and are never picked again (selection without
    replacement); among equal bonuses the lowest index wins (``np.argmax``).

    Example without centring: picking [1, 0] leaves the bonus of the orthogonal [0, 2] at 4 and
    shrinks that of the parallel [3, 0] from 9 to 9/(1 + 1) = 4.5, which is still larger:

    >>> repexp_order([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], 3, center=False, return_bonus=True)
    (array([0, 2, 1]), array([1. , 4.5, 4. ]))
    """
    Phi = _prepare(features, lam, center)
    N, d = Phi.shape
    k = _check_k(k, N)
    i = int(_check_firsts([first], N)[0])

    Lambda = np.eye(d) / lam  # Λ_0 = λ⁻¹ I
    bonus = np.einsum("nd,nd->n", Phi, Phi) / lam  # φᵢᵀ Λ_0 φᵢ for every candidate
    order = np.empty(k, dtype=np.int64)
    bonus_at_pick = np.empty(k)
    for t in range(k):
        order[t], bonus_at_pick[t] = i, bonus[i]
        bonus[i] = -np.inf  # selected: never picked again
        if t == k - 1:
            break
        u, s = sherman_morrison_upper(Lambda, Phi[i])  # Λ: upper triangle only
        bonus -= (Phi @ u) ** 2 / s  # φᵢᵀΛ_tφᵢ = φᵢᵀΛ_{t-1}φᵢ − (φᵢᵀu)²/s
        i = int(np.argmax(bonus))  # ties: lowest index
    return (order, bonus_at_pick) if return_bonus else order


def repexp_orders(
    features, k: int, firsts, *, lam: float = 1.0, center: bool = True, return_bonus: bool = False
):
    """Several RepExp trials of one pool at once: row j is ``repexp_order(..., first=firsts[j])``.

    Returns (T, k) int64 orders for T = ``len(firsts)``; with ``return_bonus`` also the (T, k)
    bonuses at pick time. Other arguments as in :func:`repexp_order`; same algorithm (Alg. 1,
    eq. 2, Sherman–Morrison), same float64 arithmetic for Λ, same tie-breaking.

    What makes it fast (a step is bound by reading the N×d features, not by arithmetic):

    * the T trials share every pass over Φ: their bonus updates come from one product Φ U with
      U = [u_1 .. u_T] (d × T), so 5 trials cost little more than one;
    * that product runs over row blocks of ~512 KB, which stay in the L2 cache (with OpenBLAS,
      N = 6400, d = 512, T = 5: 1.2 ms per step, against 2.3–3 ms for one tall-skinny GEMM);
    * rows that every trial has already selected are dropped from Φ (each time they make up
      1/32 of the rows still kept); for a full order this removes close to half of the reads
      (N = 6,400, 5 trials: 56% of the N² row reads are left, against 55% when dropped at once);
    * each trial's Λ takes its Sherman–Morrison updates 8 at a time
      (:class:`repexp.elliptical.DeferredUpperInverse`): one read of Λ per pick instead of three.
    """
    Phi = _prepare(features, lam, center)
    N, d = Phi.shape
    k = _check_k(k, N)
    firsts = _check_firsts(firsts, N)
    T = firsts.size
    trials = np.arange(T)
    block = max(1, 65536 // d)  # rows per block of the product

    inverses = [DeferredUpperInverse(d, lam) for _ in range(T)]  # Λ_0 = λ⁻¹ I per trial
    keep = np.arange(N)  # rows of Φ still needed by some trial
    Phi_keep = Phi
    bonus = np.repeat((np.einsum("nd,nd->n", Phi, Phi) / lam)[:, None], T, axis=1)  # (rows, T)
    times_picked = np.zeros(N, dtype=np.int64)
    n_done = 0  # kept rows that every trial has picked
    U, s = np.empty((d, T)), np.empty(T)
    P = np.empty((N, T))
    order = np.empty((T, k), dtype=np.int64)
    bonus_at_pick = np.empty((T, k))
    pos = firsts.copy()  # positions in the kept rows
    for t in range(k):
        order[:, t], bonus_at_pick[:, t] = keep[pos], bonus[pos, trials]
        bonus[pos, trials] = -np.inf  # selected: never picked again by that trial
        if t == k - 1:
            break
        for j, i in enumerate(order[:, t]):
            U[:, j], s[j] = inverses[j].update(Phi[i])
        np.add.at(times_picked, order[:, t], 1)
        n_done += np.count_nonzero(times_picked[np.unique(order[:, t])] == T)
        if 32 * n_done > keep.size:  # drop rows no trial can pick any more
            still = times_picked[keep] < T
            keep, Phi_keep, bonus, n_done = keep[still], Phi_keep[still], bonus[still], 0
        PU = P[: keep.size]
        for a in range(0, keep.size, block):
            np.matmul(Phi_keep[a : a + block], U, out=PU[a : a + block])  # φᵢᵀ u_j
        PU **= 2
        PU /= s
        bonus -= PU  # every trial's bonuses, Sherman–Morrison
        pos = np.argmax(bonus, axis=0)  # ties: lowest index (kept rows stay sorted)
    return (order, bonus_at_pick) if return_bonus else order


# --------------------------------------------------------------------------------------------
# Algorithm 1 (torch, many pools at once)


def repexp_orders_torch(
    features, k: int, firsts, *, lam: float = 1.0, center: bool = True, valid=None
):
    """Batched RepExp (paper Alg. 1) for B pools × T trials at once, on the tensors' device.

    Args:
        features: (B, N, d) tensor; pool b's responses are its rows (padded rows allowed, see
            ``valid``). Converted to float64 on its own device (CUDA when it lives there).
        k: number of picks per trial, 1 <= k <= the smallest pool size.
        firsts: (B, T) integer tensor of first picks (each a valid row of its pool).
        lam, center: as in :func:`repexp_order`; centring uses the mean of the valid rows only.
        valid: optional (B, N) bool mask, True for real responses of pools shorter than N.

    Returns:
        (B, T, k) int64 tensor of selection orders, equal to :func:`repexp_order` on each pool.
    """
    import torch

    if features.ndim != 3:
        raise ValueError(f"features must be (B, N, d), got shape {tuple(features.shape)}")
    Phi = features.to(torch.float64)
    B, N, d = Phi.shape
    dev = Phi.device
    firsts = torch.as_tensor(firsts, device=dev)
    if firsts.ndim != 2 or firsts.shape[0] != B or firsts.dtype.is_floating_point:
        raise ValueError(
            f"firsts must be an integer (B, T) = ({B}, T) tensor, got {tuple(firsts.shape)}"
        )
    firsts = firsts.long()
    T = firsts.shape[1]
    valid = (
        torch.ones(B, N, dtype=torch.bool, device=dev)
        if valid is None
        else torch.as_tensor(valid, device=dev).bool()
    )
    if valid.shape != (B, N):
        raise ValueError(f"valid must have shape ({B}, {N}), got {tuple(valid.shape)}")
    if not torch.isfinite(Phi[valid]).all():
        raise ValueError("features contain NaN or Inf in valid rows")
    if not (lam > 0 and np.isfinite(lam)):
        raise ValueError(f"lam must be a finite positive number, got {lam}")
    sizes = valid.sum(dim=1)
    k = _check_k(k, int(sizes.min()))
    if (
        (firsts < 0).any()
        or (firsts >= N).any()
        or not valid.gather(1, firsts.clamp(0, N - 1)).all()
    ):
        raise ValueError("every first pick must index a valid row of its pool")

    rows = valid[:, :, None]
    Phi = torch.where(rows, Phi, 0.0)  # padded rows -> 0
    if center:  # mean of the real rows
        mean = Phi.sum(dim=1, keepdim=True) / sizes[:, None, None].to(Phi.dtype)
        Phi = torch.where(rows, Phi - mean, 0.0)

    Lambda = (torch.eye(d, dtype=Phi.dtype, device=dev) / lam).repeat(B * T, 1, 1)  # Λ_0 per trial
    bonus = ((Phi * Phi).sum(-1) / lam)[:, None, :].repeat(1, T, 1)  # (B, T, N)
    bonus.masked_fill_(~valid[:, None, :], float("-inf"))  # padding: never picked
    order = torch.empty(B, T, k, dtype=torch.long, device=dev)
    pool = torch.arange(B, device=dev)[:, None]
    idx = firsts
    for t in range(k):
        order[:, :, t] = idx
        bonus.scatter_(2, idx[:, :, None], float("-inf"))  # selected
        if t == k - 1:
            break
        u, s = sherman_morrison_batch(Lambda, Phi[pool, idx].reshape(B * T, d))  # picked φ
        proj = torch.bmm(u.view(B, T, d), Phi.transpose(1, 2))  # φᵢᵀ u, (B, T, N)
        bonus -= proj.square_().div_(s.view(B, T, 1))  # Sherman–Morrison
        idx = bonus.argmax(dim=2)  # first max: lowest index
    return order


# --------------------------------------------------------------------------------------------


def first_picks(n: int, trials: int, seed: int) -> np.ndarray:
    """Seeded uniform first picks of ``trials`` trials on a pool of ``n`` (Alg. 1 line 1).

    Distinct (sampled without replacement) when ``trials <= n``, otherwise with replacement.
    Uses ``np.random.default_rng(seed)``; returns int64.
    """
    if n < 1 or trials < 1:
        raise ValueError(f"n and trials must be >= 1, got n={n}, trials={trials}")
    rng = np.random.default_rng(seed)
    return rng.choice(n, size=trials, replace=trials > n).astype(np.int64)
