"""The elliptical algebra shared by selection, the RL bonus and token-level RepExp (pure arrays).

Every stage keeps the inverse Λ = Σ⁻¹ of a ridge covariance Σ = λI + Σ_j h_j h_jᵀ and grows it
one vector at a time with the Sherman–Morrison rank-one update (paper Alg. 1 line 5):

    u = Λ_{t-1} h,   s = 1 + hᵀu,   Λ_t = Λ_{t-1} − u uᵀ / s,   Λ_0 = λ⁻¹ I,

which is Λ_{t-1} − (Λ_{t-1} h hᵀ Λ_{t-1}) / (1 + hᵀ Λ_{t-1} h) because Λ is symmetric; one update
costs O(d²) instead of the O(d³) of a new inverse. All callers use float64 (paper App. B.2).

The same update in the three layouts its callers need (each the arithmetic its caller always
had, so every result is unchanged to the bit):

* :func:`sherman_morrison` -- one dense (d, d) inverse, numpy or torch (the RL bonus,
  :mod:`repexp.bonus`; the token-level covariance, :class:`CentredInverse`);
* :func:`sherman_morrison_upper` -- one numpy inverse kept as its upper triangle only, through
  BLAS ``symv``/``syr`` (half the memory traffic; selection, :func:`repexp.select.repexp_order`);
* :class:`DeferredUpperInverse` -- the same inverse with its rank-one updates applied m at a
  time (one ``syrk`` per m picks instead of m ``syr`` passes over Λ; selection trials,
  :func:`repexp.select.repexp_orders`);
* :func:`sherman_morrison_batch` -- n torch inverses at once (batched selection,
  :func:`repexp.select.repexp_orders_torch`).

For a set that grows while its mean moves (token level), :func:`centred_inverse` recovers the
inverse of the centred covariance from the uncentred one (paper Proposition B.2) and
:class:`CentredInverse` keeps both. No I/O, and nothing here imports a stage.
"""

from __future__ import annotations

import numpy as np

# at import, before a caller's thread cap (threadpoolctl caps only the BLAS already loaded)
from scipy.linalg.blas import dsymv, dsyr, dsyrk

__all__ = [
    "CentredInverse",
    "DeferredUpperInverse",
    "centred_inverse",
    "sherman_morrison",
    "sherman_morrison_batch",
    "sherman_morrison_upper",
]


def sherman_morrison(inverse, h):
    """Λ ← Λ − u uᵀ / s in place, with u = Λh and s = 1 + hᵀu (Alg. 1 line 5); returns (u, s).

    ``inverse``: a symmetric (d, d) float64 numpy array or torch tensor, ``h``: (d,) of the same
    kind. Afterwards ``inverse`` is (Λ⁻¹ + h hᵀ)⁻¹.

    >>> lam = np.eye(2) / 0.5  # Λ_0 = λ⁻¹ I, λ = 0.5
    >>> u, s = sherman_morrison(lam, np.array([1.0, 0.0]))
    >>> lam  # (0.5 I + e₁e₁ᵀ)⁻¹
    array([[0.66666667, 0.        ],
           [0.        , 2.        ]])
    """
    u = inverse @ h  # Λ is symmetric: Λ h hᵀ Λ = u uᵀ
    s = 1.0 + h @ u
    inverse -= u[:, None] * u[None, :] / s
    return u, s


def sherman_morrison_upper(inverse: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`sherman_morrison` on a C-ordered float64 numpy Λ of which only the upper triangle is
    stored and touched: BLAS ``dsymv`` (u = Λh) and ``dsyr`` (Λ += −uuᵀ/s) on the lower triangle
    of its Fortran view. The other triangle is stale and must never be read. Returns (u, s)."""
    u = dsymv(1.0, inverse.T, h, lower=1)
    s = 1.0 + float(h @ u)
    dsyr(-1.0 / s, u, a=inverse.T, lower=1, overwrite_a=True)
    return u, s


class DeferredUpperInverse:
    """Λ under Sherman–Morrison updates, with the updates folded into the stored matrix m at a time.

    After t updates by h_1..h_t, Λ_t = Λ_e − Σ_{j∈pending} w_j w_jᵀ with w_j = u_j/√s_j, where Λ_e
    (upper triangle only, as :func:`sherman_morrison_upper`) holds every update up to the last
    flush and the pending w_j (at most ``m``) sit in a (d, m) buffer W. One update is then

        u = Λ_e h − W (Wᵀ h),   s = 1 + hᵀu,   W ← [W, u/√s],

    and every m updates Λ_e ← Λ_e − W Wᵀ (one BLAS ``dsyrk``, a matrix product) and W ← [].
    Λ_t and (u, s) are those of :func:`sherman_morrison` (Alg. 1 line 5) up to rounding: u uᵀ/s =
    w wᵀ. Λ is read once per update instead of three times (``symv``, then ``syr``'s read and
    write), which matters when Λ does not stay in the cache (selection at N = 6,400: the features
    stream through it between updates).

    >>> inv = DeferredUpperInverse(2, lam=0.5, m=2)
    >>> for h in ([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]):
    ...     _ = inv.update(np.array(h))
    >>> np.allclose(inv.dense(), np.linalg.inv(0.5 * np.eye(2) + [[2, 1], [1, 2]]))
    True
    """

    def __init__(self, dim: int, lam: float, *, m: int = 8):
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m}")
        self.stored = np.eye(dim) / lam  # Λ_e, C order: only its upper triangle is kept current
        self.pending = np.zeros((dim, m), order="F")  # W
        self.count = 0

    def update(self, h: np.ndarray) -> tuple[np.ndarray, float]:
        """Λ ← Λ − u uᵀ/s for u = Λh, s = 1 + hᵀu; returns (u, s)."""
        u = dsymv(1.0, self.stored.T, h, lower=1)  # Λ_e h
        if self.count:
            w = self.pending[:, : self.count]
            u -= w @ (h @ w)
        s = 1.0 + float(h @ u)
        self.pending[:, self.count] = u / np.sqrt(s)
        self.count += 1
        if self.count == self.pending.shape[1]:
            self.flush()
        return u, s

    def flush(self) -> None:
        """Fold the pending updates into the stored triangle: Λ_e ← Λ_e − W Wᵀ."""
        if self.count:
            w = self.pending[:, : self.count]
            dsyrk(-1.0, w, beta=1.0, c=self.stored.T, lower=1, overwrite_c=1)
            self.count = 0

    def dense(self) -> np.ndarray:
        """Λ as a full symmetric (d, d) array (a copy; for tests and inspection)."""
        self.flush()
        upper = np.triu(self.stored)
        return upper + np.triu(upper, 1).T


def sherman_morrison_batch(inverse, h):
    """:func:`sherman_morrison` of n torch inverses at once: ``inverse`` (n, d, d) is updated in
    place by the rows of ``h`` (n, d), one each (``bmm``/``baddbmm``); returns u (n, d), s (n,)."""
    import torch

    x = h[:, :, None]
    u = torch.bmm(inverse, x)  # u = Λ h
    s = 1.0 + (x * u).sum(dim=(1, 2))  # s = 1 + hᵀ u
    inverse.baddbmm_(u, (u / s[:, None, None]).transpose(1, 2), alpha=-1.0)  # Λ -= u uᵀ/s
    return u[:, :, 0], s


def centred_inverse(raw_inverse, mean, count: int):
    """Σ⁻¹ of the centred states from the uncentred Σ̃⁻¹ (Proposition B.2): with Σ̃ = λI +
    Σ_t h_t h_tᵀ over ``count`` = H states of mean μ, Σ = Σ̃ − Hμμᵀ = λI + Σ_t (h_t − μ)(h_t − μ)ᵀ
    and, by Woodbury (U = μ, C = −H, V = μᵀ),

        Σ⁻¹ = Σ̃⁻¹ − Σ̃⁻¹μμᵀΣ̃⁻¹ / (−1/H + μᵀΣ̃⁻¹μ).

    numpy or torch; returns a new array."""
    v = raw_inverse @ mean
    return raw_inverse - v[:, None] * v[None, :] / (-1.0 / count + mean @ v)


class CentredInverse:
    """The centred inverse Σ⁻¹ of the token states folded in so far (paper.md §2, Proposition B.2),
    in float64 torch tensors.

    Keeps the uncentred inverse Σ̃⁻¹ (Σ̃ = λI + Σ_t h_t h_tᵀ, one :func:`sherman_morrison` update
    per token), the running sum of the states and their count H; :meth:`inverse` is then
    :func:`centred_inverse`. With nothing folded in, Σ⁻¹ = λ⁻¹I and μ = 0.
    """

    def __init__(self, dim: int, lam: float, *, device="cpu"):
        import torch

        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        self.lam, self.dim = float(lam), int(dim)
        self.raw_inverse = torch.eye(dim, dtype=torch.float64, device=device) / lam
        self.total = torch.zeros(dim, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, states) -> None:
        """Fold in the (T, d) states of one completed response, one rank-one update per token."""
        import torch

        h = torch.as_tensor(states).to(self.raw_inverse.device, torch.float64)
        if h.ndim != 2 or h.shape[1] != self.dim:
            raise ValueError(f"states must be (T, {self.dim}), got {tuple(h.shape)}")
        if not torch.isfinite(h).all():
            raise ValueError(
                "a token state is NaN/Inf: the model overflowed in its dtype (use float32)"
            )
        for row in h:
            sherman_morrison(self.raw_inverse, row)
        self.total += h.sum(0)
        self.count += h.shape[0]

    @property
    def mean(self):
        return self.total / self.count if self.count else self.total.clone()

    def inverse(self):
        """Σ⁻¹ of the centred states (Proposition B.2)."""
        if not self.count:
            return self.raw_inverse.clone()
        return centred_inverse(self.raw_inverse, self.mean, self.count)

    def bonus(self, states, inverse=None):
        """sqrt(h̃ᵀ Σ⁻¹ h̃) for each row of ``states`` (float64); pass ``inverse`` to reuse Σ⁻¹."""
        import torch

        inv = self.inverse() if inverse is None else inverse
        h = torch.as_tensor(states).to(inv.device, torch.float64) - self.mean
        return torch.sqrt(torch.clamp(((h @ inv) * h).sum(-1), min=0.0))
