"""Metrics against exact rational arithmetic, Monte Carlo and hand-computed cases."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from repexp.metrics import (
    difficulty_deciles,
    order_pass_at_k,
    pass_at_k,
    pass_at_k_curve,
    random_samples_to_correct,
    rank_models,
    relative_improvement,
    samples_to_correct,
)


def exact_pass_at_k(n, c, k):
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


NCK = [
    (1, 0, 1),
    (1, 1, 1),
    (5, 2, 1),
    (5, 2, 3),
    (5, 2, 4),
    (10, 3, 4),
    (10, 9, 2),
    (64, 1, 10),
    (100, 50, 1),
    (100, 7, 93),
    (100, 7, 94),
    (6400, 1, 1),
    (6400, 1, 3200),
    (6400, 3, 100),
    (6400, 37, 64),
    (6400, 640, 10),
    (6400, 6399, 1),
    (6400, 100, 6300),
    (6400, 100, 6301),
    (8192, 2, 8000),
]


@pytest.mark.parametrize("n,c,k", NCK)
def test_pass_at_k_exact(n, c, k):
    exact = exact_pass_at_k(n, c, k)
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    assert pass_at_k_curve(n, c, [k])[0] == pytest.approx(float(exact), abs=1e-12)


def test_pass_at_k_random_grid_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        c = int(rng.integers(0, n + 1))
        k = int(rng.integers(1, n + 1))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_known_values_and_edges():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-15)
    assert pass_at_k(6400, 0, 100) == 0.0  # c = 0
    assert pass_at_k(6400, 6400, 1) == 1.0  # c = n
    assert pass_at_k(10, 3, 8) == 1.0  # n − c < k
    assert pass_at_k(10, 3, 7) < 1.0  # n − c = k
    assert pass_at_k(10, 3, 7) == pytest.approx(1 - 1 / math.comb(10, 7), abs=1e-15)


def test_pass_at_k_curve_matches_scalar():
    for n, c in [(6400, 5), (50, 0), (50, 50), (8192, 1), (20, 19)]:
        ks = np.arange(1, n + 1)
        curve = pass_at_k_curve(n, c, ks)
        assert curve.shape == ks.shape
        scalar = np.array([pass_at_k(n, c, int(k)) for k in ks[:: max(1, n // 200)]])
        np.testing.assert_allclose(curve[:: max(1, n // 200)], scalar, atol=1e-12, rtol=0)
        assert np.all(np.diff(curve) >= -1e-15)  # non-decreasing in k
        if c > 0:
            assert curve[n - c :].min() == 1.0  # k > n − c: a correct one is certain
        else:
            assert curve.max() == 0.0
    np.testing.assert_array_equal(pass_at_k_curve(10, 2, [[1, 2], [9, 10]]).shape, (2, 2))


@pytest.mark.parametrize(
    "args", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1), (5, 2.5, 1)]
)
def test_pass_at_k_validation(args):
    with pytest.raises(ValueError):
        pass_at_k(*args)


def test_pass_at_k_curve_validation():
    with pytest.raises(ValueError):
        pass_at_k_curve(5, 2, [0, 1])
    with pytest.raises(ValueError):
        pass_at_k_curve(5, 2, [6])
    with pytest.raises(ValueError):
        pass_at_k_curve(5, 6, [1])


# ---- samples-to-correct -----------------------------------------------------------------


@pytest.mark.parametrize("n,c", [(1, 1), (5, 1), (5, 2), (10, 3), (64, 5), (200, 199), (6400, 7)])
def test_random_stc_identity_exact(n, c):
    # E[first correct position] = Σ_{k=0}^{n−c} P(first k all wrong) = Σ_k C(n−c,k)/C(n,k)
    if n <= 200:
        identity = sum(Fraction(math.comb(n - c, k), math.comb(n, k)) for k in range(n - c + 1))
    else:  # same sum; each term from the previous one, C(n−c,k+1)/C(n,k+1) = term·(n−c−k)/(n−k)
        identity, term = Fraction(0), Fraction(1)
        for k in range(n - c + 1):
            identity += term
            term *= Fraction(n - c - k, n - k)
    assert identity == Fraction(n + 1, c + 1)
    assert random_samples_to_correct(n, c) == pytest.approx(float(identity), rel=1e-15)


@pytest.mark.parametrize("n,c", [(5, 1), (8, 3), (12, 2)])
def test_random_stc_monte_carlo(n, c):
    rng = np.random.default_rng(n * 10 + c)
    trials = 200_000
    # rank of each correct response in a random permutation; the first correct = min over them
    keys = rng.random((trials, n))
    ranks = keys.argsort(axis=1).argsort(axis=1)
    first = ranks[:, :c].min(axis=1) + 1
    assert first.mean() == pytest.approx(random_samples_to_correct(n, c), rel=0.01)


def test_random_stc_unsolved_is_nan():
    assert math.isnan(random_samples_to_correct(10, 0))
    with pytest.raises(ValueError):
        random_samples_to_correct(10, 11)


def test_samples_to_correct():
    correct = np.array([False, True, False, True, False])
    assert samples_to_correct([1, 0, 2], correct) == 1
    assert samples_to_correct([0, 2, 4, 3], correct) == 4
    assert samples_to_correct(np.array([4, 3]), correct.tolist()) == 2
    assert samples_to_correct([0, 2, 4], correct) is None
    assert samples_to_correct([], correct) is None


def test_order_pass_at_k():
    correct = np.array([False, True, False, True, False])
    out = order_pass_at_k([0, 2, 3, 1, 4], correct, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(out, [0.0, 0.0, 1.0, 1.0, 1.0])
    assert out.dtype == np.float64
    np.testing.assert_array_equal(order_pass_at_k([0, 2, 4], correct, [1, 3]), [0.0, 0.0])
    np.testing.assert_array_equal(order_pass_at_k([1], correct, [1]), [1.0])
    with pytest.raises(ValueError):
        order_pass_at_k([0, 2], correct, [3])
    with pytest.raises(ValueError):
        order_pass_at_k([0, 2], correct, [0])


def test_order_pass_at_k_of_random_orders_averages_to_pass_at_k():
    rng = np.random.default_rng(1)
    n, c = 12, 3
    correct = np.zeros(n, dtype=bool)
    correct[rng.choice(n, c, replace=False)] = True
    ks = np.arange(1, n + 1)
    mean = np.mean([order_pass_at_k(rng.permutation(n), correct, ks) for _ in range(20_000)], 0)
    np.testing.assert_allclose(mean, pass_at_k_curve(n, c, ks), atol=0.015)


# ---- summaries --------------------------------------------------------------------------


def test_relative_improvement():
    out = relative_improvement(10.0, 2.5)
    assert out == {"reduction": 0.75, "speedup": 3.0}
    out = relative_improvement(4.0, 5.0)  # RepExp worse than random
    assert out["reduction"] == pytest.approx(-0.25) and out["speedup"] == pytest.approx(-0.2)
    assert relative_improvement(3.0, 3.0) == {"reduction": 0.0, "speedup": 0.0}
    arr = relative_improvement(np.array([2.0, 8.0]), np.array([1.0, 2.0]))
    np.testing.assert_allclose(arr["reduction"], [0.5, 0.75])
    np.testing.assert_allclose(arr["speedup"], [1.0, 3.0])
    with pytest.raises(ValueError):
        relative_improvement(0.0, 1.0)


def test_difficulty_deciles():
    np.testing.assert_array_equal(difficulty_deciles(np.arange(20.0)), np.repeat(np.arange(10), 2))
    np.testing.assert_array_equal(
        difficulty_deciles(np.arange(20.0)[::-1]), np.repeat(np.arange(10), 2)[::-1]
    )
    # ties: the earlier question gets the lower rank (stable)
    np.testing.assert_array_equal(difficulty_deciles([5.0, 1.0, 3.0, 3.0], n_bins=2), [1, 0, 0, 1])
    np.testing.assert_array_equal(difficulty_deciles([2.0, 2.0, 2.0, 2.0], n_bins=4), [0, 1, 2, 3])
    # 15 questions in 10 bins: sizes differ by at most one
    bins = difficulty_deciles(np.random.default_rng(0).random(15))
    assert set(np.bincount(bins, minlength=10).tolist()) == {1, 2}
    # NaN (no correct response at all) ranks as the hardest
    np.testing.assert_array_equal(difficulty_deciles([np.nan, 1.0, 2.0], n_bins=3), [2, 0, 1])
    assert difficulty_deciles([], n_bins=10).size == 0
    with pytest.raises(ValueError):
        difficulty_deciles([1.0, 2.0], n_bins=0)


def test_rank_models():
    assert rank_models({"a": 0.1, "b": 0.9, "c": 0.5}) == {"b": 1, "c": 2, "a": 3}
    assert rank_models({"z": 0.5, "y": 0.5, "x": 0.2}) == {"y": 1, "z": 2, "x": 3}
    assert rank_models({}) == {}
    with pytest.raises(ValueError):
        rank_models({"a": float("nan")})


def test_docstring_examples():
    import doctest

    import repexp.metrics

    result = doctest.testmod(repexp.metrics)
    assert result.attempted > 0 and result.failed == 0
