"""The RL reward maths: the RepExp leverage bonus (paper.md §3.1) and the Unlikeliness scale (§3.3),
checked against independent references (a brute-force inverse, hand-computed ranks)."""

from __future__ import annotations

import numpy as np
import pytest

from repexp.bonus import elliptical_bonus, group_bonuses, projection_seed, sparse_projection
from repexp.rl.rewards import check_whole_groups, unlikeliness_ranks, unlikeliness_scale


def brute_force_bonus(phi, lam, center=True):
    phi = np.asarray(phi, dtype=np.float64)
    if center:
        phi = phi - phi.mean(axis=0)
    inv = np.linalg.inv(lam * np.eye(phi.shape[1]) + phi.T @ phi)
    return np.array([f @ inv @ f for f in phi])


@pytest.mark.parametrize(
    "g,d,lam", [(8, 32, 0.01), (8, 4, 0.01), (3, 16, 1.0), (16, 128, 0.1), (1, 5, 0.01)]
)
def test_bonus_equals_brute_force_inverse(g, d, lam):
    rng = np.random.default_rng(g * 1000 + d)
    for _ in range(5):
        phi = rng.normal(size=(g, d)) * rng.uniform(0.1, 10)
        got = elliptical_bonus(phi, lam)
        ref = brute_force_bonus(phi, lam)
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
        assert got.dtype == np.float64
        assert (got >= 0).all() and (got < 1).all()


def test_bonus_uncentred_and_leverage_sum():
    rng = np.random.default_rng(1)
    phi = rng.normal(size=(8, 32))
    np.testing.assert_allclose(
        elliptical_bonus(phi, 0.01, center=False),
        brute_force_bonus(phi, 0.01, center=False),
        rtol=1e-9,
    )
    # leverages sum to the trace of the hat matrix: rank(Φ) = 7 after centring (8 points, 32 dims),
    # up to the λ shrinkage, which is tiny next to these norms
    assert elliptical_bonus(phi, 1e-8).sum() == pytest.approx(7.0, rel=1e-6)


def test_bonus_is_invariant_to_a_shift_of_all_rows():
    rng = np.random.default_rng(2)
    phi = rng.normal(size=(8, 16))
    shift = rng.normal(size=16) * 100
    np.testing.assert_allclose(
        elliptical_bonus(phi + shift, 0.01), elliptical_bonus(phi, 0.01), rtol=1e-7
    )


def test_bonus_of_identical_rows_is_zero_and_an_outlier_gets_the_most():
    same = np.ones((8, 4))
    np.testing.assert_array_equal(elliptical_bonus(same, 0.01), np.zeros(8))
    rng = np.random.default_rng(3)
    phi = rng.normal(size=(8, 4)) * 0.01
    phi[5] += 3.0
    b = elliptical_bonus(phi, 0.01)
    assert b.argmax() == 5


def test_bonus_input_checks():
    with pytest.raises(ValueError, match="2-D"):
        elliptical_bonus(np.ones(3), 0.1)
    with pytest.raises(ValueError, match="lam"):
        elliptical_bonus(np.ones((2, 3)), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        elliptical_bonus(np.array([[1.0, np.nan]]), 0.1)


def test_group_bonuses_project_centre_per_group_and_gate():
    rng = np.random.default_rng(4)
    G, D, k = 8, 64, 16
    feats = rng.normal(size=(3 * G, D)).astype(np.float32)
    groups = np.repeat(["a", "b", "c"], G)
    correct = np.zeros(3 * G)
    correct[[0, 9, 10]] = 1.0  # group c (rows 16..23) is all incorrect
    R = sparse_projection(D, k, 7)
    got = group_bonuses(feats, groups, correct, lam=0.01, proj_matrix=R, zero_if_none_correct=True)
    phi = (feats @ R).astype(np.float64)
    for gi in range(2):
        rows = slice(gi * G, (gi + 1) * G)
        np.testing.assert_allclose(got[rows], brute_force_bonus(phi[rows], 0.01), rtol=1e-9)
    np.testing.assert_array_equal(got[2 * G :], 0.0)
    ungated = group_bonuses(
        feats, groups, correct, lam=0.01, proj_matrix=R, zero_if_none_correct=False
    )
    np.testing.assert_allclose(ungated[2 * G :], brute_force_bonus(phi[2 * G :], 0.01), rtol=1e-9)
    assert (ungated[2 * G :] > 0).all()
    # a constant added to every row of one group changes nothing (per-group centring)
    shifted = feats.copy()
    shifted[G : 2 * G] += 5.0
    np.testing.assert_allclose(
        group_bonuses(shifted, groups, correct, lam=0.01, proj_matrix=R)[G : 2 * G],
        got[G : 2 * G],
        rtol=1e-4,
    )
    # rows of a group need not be adjacent
    perm = rng.permutation(3 * G)
    np.testing.assert_allclose(
        group_bonuses(feats[perm], groups[perm], correct[perm], lam=0.01, proj_matrix=R),
        got[perm],
        rtol=1e-9,
    )  # row order changes float sums only


def test_sparse_projection_is_li_very_sparse_and_seeded():
    D, k = 576, 32
    R = sparse_projection(D, k, 123)
    assert R.shape == (D, k) and R.dtype == np.float32
    vals = np.unique(np.abs(R[R != 0]))
    np.testing.assert_allclose(vals, [np.sqrt(np.sqrt(D) / k)], rtol=1e-6)
    density = (R != 0).mean()
    assert abs(density - 1 / np.sqrt(D)) < 0.01
    np.testing.assert_array_equal(R, sparse_projection(D, k, 123))
    assert not np.array_equal(R, sparse_projection(D, k, 124))
    assert sparse_projection(64, 64, 0) is None and sparse_projection(64, 128, 0) is None
    # a numpy Generator is accepted and is deterministic too
    np.testing.assert_array_equal(
        sparse_projection(D, k, np.random.default_rng(5)),
        sparse_projection(D, k, np.random.default_rng(5)),
    )


def test_projection_seed_depends_on_seed_and_step():
    seeds = {projection_seed(s, t) for s in (41, 42, 43) for t in range(20)}
    assert len(seeds) == 60
    assert projection_seed(41, 3) == projection_seed(41, 3)
    assert 0 <= projection_seed(41, 3) < 2**32


# --------------------------------------------------------------------------------- Unlikeliness
def test_unlikeliness_ranks_ascending_with_stable_ties():
    lp = np.array([-0.5, -2.0, -1.0, -2.0, -0.1])
    # ascending: -2.0 (index 1), -2.0 (index 3), -1.0, -0.5, -0.1; tie broken by index
    np.testing.assert_array_equal(unlikeliness_ranks(lp), [3, 0, 2, 1, 4])
    np.testing.assert_array_equal(unlikeliness_ranks(np.zeros(4)), [0, 1, 2, 3])


def test_unlikeliness_scale_hand_made_groups():
    G, beta = 4, 0.25
    r = np.array([1.0, 0.0, 1.0, 1.0])
    lp = np.array([-0.3, -0.9, -1.2, -0.1])  # ranks 2, 1, 0, 3
    np.testing.assert_allclose(
        unlikeliness_scale(r, lp, beta), [1 - beta * 2 / G, 0.0, 1.0, 1 - beta * 3 / G]
    )
    # all incorrect: stays zero
    np.testing.assert_array_equal(unlikeliness_scale(np.zeros(G), lp, beta), np.zeros(G))
    # all correct: 1 - beta*rank/G, the least likely keeps 1, the most likely (G-1)/G of the penalty
    np.testing.assert_allclose(
        unlikeliness_scale(np.ones(G), lp, beta), 1 - beta * np.array([2, 1, 0, 3]) / G
    )
    # ties: equal log-probs are ranked by position (0 first)
    np.testing.assert_allclose(unlikeliness_scale(np.ones(3), np.zeros(3), 0.3), [1.0, 0.9, 0.8])
    # beta_rank = 0 is plain GRPO
    np.testing.assert_array_equal(unlikeliness_scale(r, lp, 0.0), r)


def test_unlikeliness_scale_batches_of_groups():
    r = np.array([1.0, 1.0, 1.0, 1.0])
    lp = np.array([-1.0, -2.0, -1.0, -2.0])
    got = unlikeliness_scale(r, lp, 0.5, group_size=2)
    np.testing.assert_allclose(got, [1 - 0.5 / 2, 1.0, 1 - 0.5 / 2, 1.0])
    with pytest.raises(ValueError, match="multiple"):
        unlikeliness_scale(np.ones(3), np.zeros(3), 0.5, group_size=2)


def test_check_whole_groups_fails_clearly_on_a_split_group():
    check_whole_groups(["a"] * 4 + ["b"] * 4, 4)
    with pytest.raises(ValueError, match="split"):
        check_whole_groups(["a"] * 4 + ["b"] * 2, 4)
    with pytest.raises(ValueError, match="not whole"):
        check_whole_groups(["a"] * 3 + ["b"] * 5, 4)
