"""The RepExp exploration bonus of RL post-training (paper.md §3.1), as pure functions over arrays.

For the G rollouts of one prompt (a GRPO group), each summarised by a feature φ_i (the mean
last-layer hidden state of the frozen base model over the response tokens, sparse-projected and
centred on the group mean), the bonus of rollout i is its **leverage** in the group (paper eq. (2)
with the group including i itself):

    b_i = φ_iᵀ Σ⁻¹ φ_i,   Σ = λ I + Σ_{j=1..G} φ_j φ_jᵀ,

which lies in [0, 1). Σ⁻¹ is built as the authors' code does, by G Sherman–Morrison rank-one
updates from Λ_0 = λ⁻¹ I (paper Alg. 1 line 5; :func:`repexp.elliptical.sherman_morrison`):

    u = Λ φ_j,   Λ ← Λ − u uᵀ / (1 + φ_jᵀ u).

All algebra is float64. The reward of rollout i is r*_i + β b_i; a group whose rollouts are all
incorrect gets no bonus (``zero_if_none_correct``, the recipe's
``turn_off_elliptical_if_none_correct``). A fresh projection matrix is drawn for every training step
and shared by all groups of that step (``projection_seed``).

Entry points: :func:`elliptical_bonus` (one group), :func:`group_bonuses` (a batch of whole
groups, projection + centring + gating), :func:`sparse_projection` and :func:`projection_seed`.
"""

from __future__ import annotations

import numpy as np

from repexp.elliptical import sherman_morrison
from repexp.select import sparse_projection_matrix

__all__ = ["elliptical_bonus", "group_bonuses", "projection_seed", "sparse_projection"]


def elliptical_bonus(features, lam: float, *, center: bool = True) -> np.ndarray:
    """Leverage bonus of every row of ``features`` (one group, G × d) within the group, float64.

    ``center`` subtracts the group mean first (paper App. C: "the mean is taken over the current
    group"). Σ⁻¹ is accumulated by Sherman–Morrison updates from λ⁻¹ I, one per row.
    """
    phi = np.array(features, dtype=np.float64, copy=True)
    if phi.ndim != 2 or phi.shape[0] < 1 or phi.shape[1] < 1:
        raise ValueError(f"features must be a non-empty 2-D array (G × d), got shape {phi.shape}")
    if not np.isfinite(phi).all():
        raise ValueError("features contain NaN or Inf")
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite positive number, got {lam}")
    if center:
        phi -= phi.mean(axis=0)
    Lam = np.eye(phi.shape[1]) / lam
    for f in phi:
        sherman_morrison(Lam, f)
    return np.einsum("id,de,ie->i", phi, Lam, phi)


def projection_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s projection matrix: a 32-bit value from
    ``SeedSequence([seed, step])``."""
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1, dtype=np.uint32)[0])


def sparse_projection(in_dim: int, out_dim: int, rng) -> np.ndarray | None:
    """The ``in_dim × out_dim`` very sparse random projection as a dense float32 array, or None.

    ``rng`` is an integer seed or a ``numpy.random.Generator`` (one 32-bit seed is drawn from it).
    The matrix is :func:`repexp.select.sparse_projection_matrix` (scikit-learn's
    ``SparseRandomProjection(density="auto")``, as the authors' code: density 1/√in_dim, entries
    ±√(√in_dim / out_dim)). ``None`` (no projection) when ``out_dim >= in_dim``, as in
    :func:`repexp.select.project`: nothing to reduce (the tiny test model).
    """
    if out_dim >= in_dim:
        return None
    if isinstance(rng, np.random.Generator):
        rng = int(rng.integers(0, 2**32, dtype=np.uint64))
    return sparse_projection_matrix(in_dim, out_dim, int(rng)).toarray().astype(np.float32)


def group_bonuses(
    features,
    group_ids,
    correct,
    *,
    lam: float,
    proj_matrix: np.ndarray | None,
    zero_if_none_correct: bool = True,
) -> np.ndarray:
    """Bonuses of a batch of whole groups: project, centre per group, leverage per group, gate.

    ``features``: (n × D) mean hidden states; ``group_ids``: (n,) one id per group (rows of a group
    need not be adjacent); ``correct``: (n,) extrinsic rewards in {0, 1}. The projection is applied
    in float32, then everything is float64 (as the authors' code). With ``zero_if_none_correct``,
    a group without a correct rollout gets bonus 0.
    """
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2:
        raise ValueError(f"features must be 2-D (n × D), got shape {feats.shape}")
    if proj_matrix is not None:
        feats = feats @ np.asarray(proj_matrix, dtype=np.float32)
    phi = feats.astype(np.float64)
    group_ids = np.asarray(group_ids)
    correct = np.asarray(correct, dtype=np.float64)
    if not (len(group_ids) == len(correct) == len(phi)):
        raise ValueError(
            f"{len(phi)} features, {len(group_ids)} group ids and {len(correct)} rewards"
        )
    out = np.zeros(len(phi), dtype=np.float64)
    for g in dict.fromkeys(group_ids.tolist()):
        rows = np.flatnonzero(group_ids == g)
        if zero_if_none_correct and not (correct[rows] > 0).any():
            continue
        out[rows] = elliptical_bonus(phi[rows], lam, center=True)
    return out
