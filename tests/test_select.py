"""RepExp selection (paper Alg. 1, eq. 2) against an independent from-scratch reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch
from sklearn.random_projection import SparseRandomProjection

from repexp.select import (
    first_picks,
    project,
    repexp_order,
    repexp_orders,
    repexp_orders_torch,
    sparse_projection_matrix,
)


def brute_force_order(features, k, lam=1.0, first=0, center=True):
    """Alg. 1 the slow way: rebuild Σ = λI + Σ_sel φφᵀ and every bonus φᵀΣ⁻¹φ at every step."""
    Phi = np.asarray(features, dtype=np.float64)
    if center:
        Phi = Phi - Phi.mean(axis=0)
    N, d = Phi.shape
    order, bonuses = [first], [Phi[first] @ Phi[first] / lam]
    while len(order) < k:
        Sigma = lam * np.eye(d) + Phi[order].T @ Phi[order]
        bonus = np.einsum("nd,nd->n", Phi, np.linalg.solve(Sigma, Phi.T).T)
        bonus[order] = -np.inf
        i = int(np.argmax(bonus))
        order.append(i)
        bonuses.append(bonus[i])
    return np.array(order), np.array(bonuses)


CASES = [  # N, d, lam, k, first
    (30, 5, 1.0, 30, 0),  # N > d, full order
    (12, 40, 0.5, 12, 7),  # N < d, full order
    (200, 16, 1.0, 200, 123),  # N >> d, full order
    (60, 8, 0.01, 25, 59),  # small λ, partial order
    (50, 50, 10.0, 50, 3),  # N = d, large λ
    (40, 3, 1.0, 1, 11),  # k = 1
]


@pytest.mark.parametrize("N,d,lam,k,first", CASES)
@pytest.mark.parametrize("center", [True, False])
def test_matches_brute_force(N, d, lam, k, first, center):
    rng = np.random.default_rng(N * 1000 + d)
    F = rng.standard_normal((N, d)) * rng.uniform(0.5, 2.0, size=(N, 1)) + 0.3
    order, bonus = repexp_order(F, k, lam=lam, first=first, center=center, return_bonus=True)
    ref_order, ref_bonus = brute_force_order(F, k, lam=lam, first=first, center=center)
    assert order.dtype == np.int64 and order.shape == (k,)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_allclose(bonus, ref_bonus, rtol=1e-9, atol=0)
    assert len(set(order.tolist())) == k  # without replacement


def test_hand_computed_2d():
    # λ = 1, no centring: Λ0 = I, bonuses 1, 4, 9; first = 0 -> u = [1, 0], s = 2,
    # Λ1 = diag(1/2, 1): row 1 keeps 4 (orthogonal), row 2 drops to 9/2; pick row 2
    # -> Λ2 = diag(1/11, 1): row 1 keeps 4.
    F = [[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]
    order, bonus = repexp_order(F, 3, center=False, return_bonus=True)
    np.testing.assert_array_equal(order, [0, 2, 1])
    np.testing.assert_allclose(bonus, [1.0, 4.5, 4.0], rtol=1e-15)
    # λ = 1/2: Λ0 = 2I, bonuses 2, 8, 18; first = 0 -> u = [2, 0], s = 3, Λ1 = diag(2/3, 2):
    # row 1 -> 8, row 2 -> 6; pick row 1, then row 2 (orthogonal to row 1) stays 6.
    order, bonus = repexp_order(F, 3, lam=0.5, center=False, return_bonus=True)
    np.testing.assert_array_equal(order, [0, 1, 2])
    np.testing.assert_allclose(bonus, [2.0, 8.0, 6.0], rtol=1e-15)


def test_centering_uses_pool_mean():
    F = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # mean [2, 1]; row 0 centred = [-1, -1]
    _, bonus = repexp_order(F, 1, lam=1.0, center=True, return_bonus=True)
    assert bonus[0] == pytest.approx(2.0, rel=1e-15)
    _, bonus = repexp_order(F, 1, lam=1.0, center=False, return_bonus=True)
    assert bonus[0] == pytest.approx(1.0, rel=1e-15)


def test_center_true_is_shift_invariant_and_center_false_is_not():
    rng = np.random.default_rng(1)
    F = rng.standard_normal((80, 6))
    shifted = F + 5.0 * rng.standard_normal(6)
    base = repexp_order(F, 80, first=4)
    np.testing.assert_array_equal(repexp_order(shifted, 80, first=4), base)
    np.testing.assert_array_equal(repexp_order(F - F.mean(0), 80, first=4, center=False), base)
    assert not np.array_equal(repexp_order(shifted, 80, first=4, center=False), base)


@pytest.mark.parametrize("first", [0, 5, 19])
def test_first_pick_respected(first):
    F = np.random.default_rng(2).standard_normal((20, 4))
    assert repexp_order(F, 5, first=first)[0] == first
    assert repexp_orders(F, 5, [first, 1])[0, 0] == first


def test_duplicate_of_picked_row_gets_smaller_bonus():
    # exact: a picked row a with B = |a|²/λ leaves its duplicate at B/(1 + B)
    F = [[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    order, bonus = repexp_order(F, 3, center=False, return_bonus=True)
    np.testing.assert_array_equal(order, [0, 2, 1])
    np.testing.assert_allclose(bonus, [1.0, 4.0, 0.5], rtol=1e-15)
    # random pool with row 3 duplicated at the end: the duplicate's bonus at pick time is < B/(1+B)
    rng = np.random.default_rng(3)
    G = rng.standard_normal((30, 8))
    G = np.vstack([G, G[3]])
    order, bonus = repexp_order(G, 31, first=3, return_bonus=True)
    B = bonus[0]
    dup_bonus = bonus[list(order).index(30)]
    assert dup_bonus < B / (1 + B) + 1e-12 < B


def test_ties_go_to_lowest_index():
    # integer features: every bonus is exact, so these are true ties
    F = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0]]
    order, bonus = repexp_order(F, 4, first=2, center=False, return_bonus=True)
    np.testing.assert_array_equal(order, [2, 0, 1, 3])
    np.testing.assert_array_equal(bonus, [1.0, 1.0, 1.0, 0.5])
    np.testing.assert_array_equal(
        repexp_orders(F, 4, [2, 3], center=False), [[2, 0, 1, 3], [3, 0, 2, 1]]
    )
    out = repexp_orders_torch(
        torch.tensor([F], dtype=torch.float64), 4, torch.tensor([[2, 3]]), center=False
    )
    np.testing.assert_array_equal(out[0].numpy(), [[2, 0, 1, 3], [3, 0, 2, 1]])


@pytest.mark.parametrize("bad", [0, 6, -1, 2.5, True])
def test_bad_k(bad):
    with pytest.raises(ValueError, match="k must be"):
        repexp_order(np.ones((5, 2)), bad)
    with pytest.raises(ValueError, match="k must be"):
        repexp_orders(np.ones((5, 2)), bad, [0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"first": 5}, "first picks"),
        ({"first": -1}, "first picks"),
        ({"lam": 0.0}, "lam"),
        ({"lam": -1.0}, "lam"),
        ({"lam": float("nan")}, "lam"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        repexp_order(np.random.default_rng(0).standard_normal((5, 2)), 2, **kwargs)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_features(value):
    F = np.random.default_rng(0).standard_normal((6, 3))
    F[4, 1] = value
    with pytest.raises(ValueError, match="NaN or Inf.*\\[4\\]"):
        repexp_order(F, 3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        repexp_orders(F, 3, [0, 1])
    with pytest.raises(ValueError, match="NaN or Inf"):
        repexp_orders_torch(torch.tensor(F)[None], 3, torch.tensor([[0]]))


def test_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        repexp_order(np.ones(5), 1)
    with pytest.raises(ValueError, match="firsts"):
        repexp_orders(np.ones((5, 2)), 1, [])
    with pytest.raises(ValueError, match="firsts"):
        repexp_orders(np.ones((5, 2)), 1, [0.5])
    with pytest.raises(ValueError, match="B, N, d"):
        repexp_orders_torch(torch.ones(5, 2), 1, torch.zeros(1, 1, dtype=torch.long))


# ---- several trials at once -------------------------------------------------------------


@pytest.mark.parametrize(
    "N,d,k,firsts,lam",
    [
        (300, 20, 300, [0, 5, 9, 299], 1.0),  # full order: rows picked by every trial get dropped
        (300, 20, 300, [7, 7, 8], 1.0),  # repeated first pick
        (25, 64, 25, [1, 2, 3, 4, 5], 0.3),  # N < d
        (500, 32, 60, [499, 0], 2.0),  # partial order
        (10, 3, 10, [4], 1.0),  # a single trial
    ],
)
def test_orders_equal_looped_order(N, d, k, firsts, lam):
    rng = np.random.default_rng(N + d + k)
    F = rng.standard_normal((N, d)) + 1.0
    orders, bonus = repexp_orders(F, k, firsts, lam=lam, return_bonus=True)
    assert orders.shape == (len(firsts), k) and orders.dtype == np.int64
    for j, first in enumerate(firsts):
        ref, ref_bonus = repexp_order(F, k, lam=lam, first=first, return_bonus=True)
        np.testing.assert_array_equal(orders[j], ref)
        np.testing.assert_allclose(bonus[j], ref_bonus, rtol=1e-9)


def test_orders_match_brute_force_uncentred():
    F = np.random.default_rng(4).standard_normal((40, 6))
    orders = repexp_orders(F, 40, [0, 39], lam=0.7, center=False)
    for j, first in enumerate([0, 39]):
        np.testing.assert_array_equal(orders[j], brute_force_order(F, 40, 0.7, first, False)[0])


# ---- batched torch path -----------------------------------------------------------------


def test_torch_equals_numpy():
    rng = np.random.default_rng(5)
    B, N, d, T = 3, 90, 12, 4
    F = rng.standard_normal((B, N, d))
    firsts = np.stack([rng.choice(N, T, replace=False) for _ in range(B)])
    out = repexp_orders_torch(torch.tensor(F), N, torch.tensor(firsts), lam=0.5)
    assert out.shape == (B, T, N) and out.dtype == torch.long
    for b in range(B):
        np.testing.assert_array_equal(out[b].numpy(), repexp_orders(F[b], N, firsts[b], lam=0.5))


def test_torch_float32_input_is_computed_in_float64():
    F = np.random.default_rng(6).standard_normal((1, 50, 8)).astype(np.float32)
    out = repexp_orders_torch(torch.tensor(F), 50, torch.tensor([[3, 9]]), center=False)
    np.testing.assert_array_equal(
        out[0].numpy(), repexp_orders(F[0].astype(np.float64), 50, [3, 9], center=False)
    )


@pytest.mark.parametrize("center", [True, False])
def test_torch_padded_pools(center):
    rng = np.random.default_rng(7)
    B, N, d, T = 3, 40, 6, 2
    sizes = [40, 23, 31]
    F = rng.standard_normal((B, N, d)) + 0.5
    valid = np.zeros((B, N), dtype=bool)
    real = [np.sort(rng.choice(N, n, replace=False)) for n in sizes]  # not a prefix
    for b in range(B):
        valid[b, real[b]] = True
    F[~valid] = np.nan  # padding content must not matter
    firsts = np.stack([rng.choice(real[b], T, replace=False) for b in range(B)])
    k = min(sizes)
    out = repexp_orders_torch(
        torch.tensor(F), k, torch.tensor(firsts), valid=torch.tensor(valid), center=center
    )
    for b in range(B):
        local_first = np.searchsorted(real[b], firsts[b])
        ref = repexp_orders(F[b, real[b]], k, local_first, center=center)
        np.testing.assert_array_equal(out[b].numpy(), real[b][ref])


def test_torch_bad_arguments():
    F = torch.randn(2, 5, 3, dtype=torch.float64)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 3:] = False
    with pytest.raises(ValueError, match="k must be"):
        repexp_orders_torch(F, 4, torch.tensor([[0], [0]]), valid=valid)  # pool 1 has 3 rows
    with pytest.raises(ValueError, match="valid row"):
        repexp_orders_torch(F, 2, torch.tensor([[0], [4]]), valid=valid)  # padded first pick
    with pytest.raises(ValueError, match="first pick"):
        repexp_orders_torch(F, 2, torch.tensor([[0], [5]]))
    with pytest.raises(ValueError, match="firsts"):
        repexp_orders_torch(F, 2, torch.tensor([[0]]))


# ---- projection and first picks ---------------------------------------------------------


def test_projection_matrix_reproducible():
    R1 = sparse_projection_matrix(1000, 64, seed=0)
    R2 = sparse_projection_matrix(1000, 64, seed=0)
    R3 = sparse_projection_matrix(1000, 64, seed=1)
    assert isinstance(R1, scipy.sparse.csr_matrix) and R1.shape == (1000, 64)
    assert R1.dtype == np.float64
    assert (R1 != R2).nnz == 0
    assert (R1 != R3).nnz > 0


def test_projection_matrix_values_and_density():
    in_dim, out_dim = 4096, 512
    R = sparse_projection_matrix(in_dim, out_dim, seed=3)
    density = 1 / np.sqrt(in_dim)  # sklearn density="auto" (Li et al. 2006)
    # sklearn's documented entries: ±sqrt(s)/sqrt(n_components) with s = 1/density, else 0
    scale = np.sqrt(1 / density) / np.sqrt(out_dim)
    assert scale == pytest.approx(np.sqrt(1 / (density * out_dim)))
    values = R.data[R.data != 0]
    np.testing.assert_allclose(np.abs(values), scale, rtol=1e-12)
    expected_nnz = density * in_dim * out_dim  # 32768
    assert abs(values.size - expected_nnz) < 0.05 * expected_nnz
    assert abs(np.mean(values > 0) - 0.5) < 0.02


def test_project_equals_sklearn_transform():
    X = np.random.default_rng(8).standard_normal((7, 300))
    srp = SparseRandomProjection(n_components=32, density="auto", random_state=11)
    srp.fit(np.zeros((1, 300)))
    Y = project(X, 32, seed=11)
    assert Y.dtype == np.float64 and Y.shape == (7, 32)
    np.testing.assert_allclose(Y, srp.transform(X), rtol=1e-12, atol=1e-12)
    # squared norms are preserved in expectation (Johnson–Lindenstrauss)
    Z = project(np.random.default_rng(9).standard_normal((400, 2048)), 512, seed=0)
    ratio = np.mean(np.sum(Z**2, 1)) / 2048
    assert ratio == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("out_dim", [16, 40])
def test_project_without_reduction_returns_features(out_dim):
    X = np.arange(32, dtype=np.float32).reshape(2, 16)
    Y = project(X, out_dim, seed=0)
    assert Y.dtype == np.float64 and not np.shares_memory(X, Y)
    np.testing.assert_array_equal(Y, X)


def test_first_picks():
    a = first_picks(6400, 5, seed=0)
    assert a.dtype == np.int64 and a.shape == (5,)
    np.testing.assert_array_equal(a, first_picks(6400, 5, seed=0))
    assert not np.array_equal(a, first_picks(6400, 5, seed=1))
    assert len(set(a.tolist())) == 5 and a.min() >= 0 and a.max() < 6400
    np.testing.assert_array_equal(np.sort(first_picks(5, 5, seed=2)), np.arange(5))  # distinct
    many = first_picks(3, 10, seed=0)  # more trials than responses: repeats allowed
    assert many.shape == (10,) and set(many.tolist()) <= {0, 1, 2}
    with pytest.raises(ValueError):
        first_picks(0, 1, seed=0)


def test_input_untouched_and_bonus_at_pick_non_increasing():
    F = np.random.default_rng(10).standard_normal((120, 10))
    before = F.copy()
    order, bonus = repexp_order(F, 120, first=17, return_bonus=True)
    _, bonuses = repexp_orders(F, 120, [17, 3], return_bonus=True)
    np.testing.assert_array_equal(F, before)
    # after the (uniform) first pick, each pick is the max of bonuses that only shrink
    assert np.all(np.diff(bonus[1:]) <= 1e-12)
    assert np.all(np.diff(bonuses[:, 1:], axis=1) <= 1e-12)


def test_docstring_examples():
    import doctest

    import repexp.select

    result = doctest.testmod(repexp.select)
    assert result.attempted > 0 and result.failed == 0
