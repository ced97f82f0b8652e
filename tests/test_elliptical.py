"""The shared elliptical algebra (repexp.elliptical): the Sherman–Morrison update in its three
layouts and the centred inverse of Proposition B.2, against inverses computed from scratch with
np.linalg.inv."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repexp.elliptical import (
    CentredInverse,
    DeferredUpperInverse,
    centred_inverse,
    sherman_morrison,
    sherman_morrison_batch,
    sherman_morrison_upper,
)


def brute_inverse(rows: np.ndarray, lam: float) -> np.ndarray:
    """(λI + Σ_j h_j h_jᵀ)⁻¹ from scratch."""
    return np.linalg.inv(lam * np.eye(rows.shape[1]) + rows.T @ rows)


def updates(seed: int) -> tuple[np.ndarray, float]:
    """Rows of very different scales (an ill-conditioned Σ) and a ridge."""
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(1, 30)), int(rng.integers(1, 20))
    rows = rng.normal(size=(n, d)) * rng.uniform(0.01, 10, size=(n, 1)) + rng.normal(0, 3, d)
    return rows, float(rng.choice([0.01, 0.1, 1.0]))


# ------------------------------------------------------------------------------------------------
# the rank-one update (paper Alg. 1 line 5)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("seed", range(6))
def test_sherman_morrison_equals_the_inverse_from_scratch(seed, kind):
    rows, lam = updates(seed)
    d = rows.shape[1]
    inv = np.eye(d) / lam if kind == "numpy" else torch.eye(d, dtype=torch.float64) / lam
    for t, h in enumerate(rows, start=1):
        before = inv.copy() if kind == "numpy" else inv.clone().numpy()
        u, s = sherman_morrison(inv, h if kind == "numpy" else torch.from_numpy(h))
        want = brute_inverse(rows[:t], lam)
        np.testing.assert_allclose(np.asarray(inv), want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
        # the returned u = Λ_{t-1} h and s = 1 + hᵀ Λ_{t-1} h
        np.testing.assert_allclose(np.asarray(u), before @ h, rtol=1e-12, atol=1e-12)
        assert float(s) == pytest.approx(1.0 + h @ before @ h, rel=1e-12)


@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("seed", range(6))
def test_deferred_updates_equal_the_inverse_from_scratch(seed, m):
    """Every (u, s) and Λ_t of the deferred layout, before and across the flushes every m
    updates, against the dense update and (λI + Σ hhᵀ)⁻¹ from scratch."""
    rows, lam = updates(seed)
    d = rows.shape[1]
    deferred, dense = DeferredUpperInverse(d, lam, m=m), np.eye(d) / lam
    pending = 0  # updates since the last flush
    for t, h in enumerate(rows, start=1):
        u_def, s_def = deferred.update(h)
        u, s = sherman_morrison(dense, h)
        np.testing.assert_allclose(u_def, u, rtol=1e-9, atol=1e-9 * np.abs(u).max())
        assert s_def == pytest.approx(float(s), rel=1e-9)
        pending = (pending + 1) % m
        assert deferred.count == pending  # folded into the stored triangle every m updates
        if t % 4 == 0 or t == len(rows):  # dense() flushes the pending ones too
            want = brute_inverse(rows[:t], lam)
            np.testing.assert_allclose(
                deferred.dense(), want, rtol=1e-9, atol=1e-9 * np.abs(want).max()
            )
            assert deferred.count == 0
            pending = 0


def test_deferred_rejects_an_empty_buffer():
    with pytest.raises(ValueError, match="m must be >= 1"):
        DeferredUpperInverse(3, 1.0, m=0)


@pytest.mark.parametrize("seed", range(6))
def test_upper_triangle_update_equals_the_dense_update(seed):
    rows, lam = updates(seed)
    d = rows.shape[1]
    upper, dense = np.eye(d) / lam, np.eye(d) / lam
    for t, h in enumerate(rows, start=1):
        u_up, s_up = sherman_morrison_upper(upper, h)
        u, s = sherman_morrison(dense, h)
        want = brute_inverse(rows[:t], lam)
        iu = np.triu_indices(d)  # the lower triangle is stale by design
        np.testing.assert_allclose(upper[iu], want[iu], rtol=1e-9, atol=1e-9 * np.abs(want).max())
        np.testing.assert_allclose(u_up, u, rtol=1e-9, atol=1e-9 * np.abs(u).max())
        assert s_up == pytest.approx(float(s), rel=1e-9)


def test_batched_update_equals_one_update_per_inverse():
    rng = np.random.default_rng(7)
    n, d, lam, steps = 4, 6, 0.1, 5
    rows = rng.normal(size=(steps, n, d)) * 2
    batch = (torch.eye(d, dtype=torch.float64) / lam).repeat(n, 1, 1)
    for t in range(steps):
        u, s = sherman_morrison_batch(batch, torch.from_numpy(rows[t]))
        assert u.shape == (n, d) and s.shape == (n,)
        for i in range(n):
            want = brute_inverse(rows[: t + 1, i], lam)
            np.testing.assert_allclose(batch[i].numpy(), want, rtol=1e-9, atol=1e-12)


def test_centred_inverse_is_proposition_b2():
    """The centred inverse from the uncentred one equals (λI + Σ (h − μ)(h − μ)ᵀ)⁻¹."""
    rows, lam = updates(3)
    rows = rows[:12] if len(rows) >= 2 else np.vstack([rows, rows + 1])
    raw = brute_inverse(rows, lam)
    got = centred_inverse(raw, rows.mean(0), len(rows))
    np.testing.assert_allclose(got, brute_inverse(rows - rows.mean(0), lam), rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# Proposition B.2
# ------------------------------------------------------------------------------------------------
def direct_centred_inverse(states: np.ndarray, lam: float) -> np.ndarray:
    c = states - states.mean(0)
    return np.linalg.inv(lam * np.eye(states.shape[1]) + c.T @ c)


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("seed", range(5))
def test_incremental_centred_inverse_equals_the_direct_inverse(seed):
    rng = np.random.default_rng(seed)
    d, lam = int(rng.integers(4, 24)), 0.1
    offset = rng.normal(0, 3, d)  # hidden states are far from centred
    inv = CentredInverse(d, lam)
    seen = []
    for _ in range(int(rng.integers(2, 7))):
        resp = offset + rng.normal(
            0, 1, (int(rng.integers(1, 40)), d)
        )  # responses of random lengths
        inv.add(torch.from_numpy(resp))
        seen.append(resp)
        all_states = np.concatenate(seen)
        assert rel(inv.inverse().numpy(), direct_centred_inverse(all_states, lam)) <= 1e-8
        np.testing.assert_allclose(inv.mean.numpy(), all_states.mean(0), rtol=1e-12, atol=1e-12)
        # the bonus is the square root of the quadratic form in the centred inverse
        h = offset + rng.normal(0, 1, (5, d))
        c = h - all_states.mean(0)
        want = np.sqrt(np.einsum("ij,jk,ik->i", c, direct_centred_inverse(all_states, lam), c))
        assert rel(inv.bonus(torch.from_numpy(h)).numpy(), want) <= 1e-8


def test_empty_inverse_is_identity_over_lambda_and_bad_states_fail():
    inv = CentredInverse(3, 0.1)
    np.testing.assert_allclose(inv.inverse().numpy(), np.eye(3) * 10.0)
    np.testing.assert_allclose(
        inv.bonus(torch.tensor([[3.0, 4.0, 0.0]])).numpy(), [np.sqrt(10.0) * 5.0]
    )
    with pytest.raises(ValueError, match="NaN/Inf"):
        inv.add(torch.tensor([[1.0, float("nan"), 0.0]]))
    with pytest.raises(ValueError, match=r"\(T, 3\)"):
        inv.add(torch.ones(2, 4))
    with pytest.raises(ValueError, match="lam"):
        CentredInverse(3, 0.0)


def test_docstring_examples():
    import doctest

    import repexp.elliptical

    result = doctest.testmod(repexp.elliptical)
    assert result.attempted > 0 and result.failed == 0
