"""DMD from one small accumulated matrix: exact, total-least-squares and forward-backward.

With lifted snapshot pairs X, Y (D x M, columns pooled over inits) every
route ends in the same r-dimensional POD coordinates of X = U S V^T:
X~ = U_r^T X = S_r V_r^T and Y~ = U_r^T Y, through the three r x r matrices

    S_r^2 = X~ X~^T,   Syx = Y~ X~^T,   Syy = Y~ Y~^T

which come from a matrix of side min(D, M) accumulated in float64 in one
pass over the data:

* Gram route (D > M):       X^T X = V S^2 V^T; Y~^T = (Y^T X) V S^-1
* covariance route (D <= M): X X^T = U S^2 U^T; Syx = U^T (Y X^T) U, Syy = U^T (Y Y^T) U
* QR routes: an SVD of small coefficient matrices with the inner products of X, Y

Variants (`variant`):

* exact: A~ = Syx S^-2 = U^T Y V S^-1 (Tu et al. 2014).
* tls: total least squares on the POD coordinates (Hemati et al. 2017): the
  leading r left singular vectors [U11; U21] of [X~; Y~] give A~ = U21 U11^-1.
  De-biases noise in X as well as Y.
* fb: forward-backward (Dawson et al. 2016): forward f = Syx S^-2, backward
  b = Syx^T Syy^-1, A~ = (f b^-1)^(1/2), each eigenvalue's root chosen nearest
  the forward one. Noise shrinks f and b^-1 alike, so the root cancels it.

Every eigenpair also gets its energy (the share of the snapshots' squared norm
on it) and residual (how far it is from an exact eigenpair on the data), both
from the same r x r matrices (`mode_quality`); `dominant` keeps the modes of
most energy.

The squared matrix's leading eigenpairs come from `leading_eigh`: block
Lanczos for an integer rank (then only the leading `rank` singular values are
known), LAPACK for the other rank rules (every singular value).

A squared matrix resolves singular values only down to about sqrt(eps) * s_max;
when the rank asks for smaller ones, the QR routes (a streaming float64 QR
whose R factor stands in for the data) give them to eps * s_max.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

EPS = np.finfo(np.float64).eps
VARIANTS = ("exact", "tls", "fb")
RANK_RULES = ("full", "gd")  # besides a positive integer and an energy fraction in (0, 1)


class DMDError(ValueError):
    """The data admit no DMD (all zero, or too large to square in float64); says why."""


def require_finite(m: np.ndarray) -> None:
    """An accumulated product matrix must be finite: inf or NaN means the data overflowed."""
    if not np.isfinite(m).all():
        raise DMDError(
            "the products of the snapshots overflow float64 (values too large to square); "
            "rescale the data"
        )


@dataclass
class DMDResult:
    eigenvalues: np.ndarray  # (rank,) complex128
    amplitudes: np.ndarray  # (rank, inits) complex128: W^-1 U_r^T x0 of each init
    # Singular values of X, descending: all of them, or only the leading `rank` from the
    # Gram and covariance routes with an integer rank (see leading_eigh).
    singular_values: np.ndarray
    rank: int
    eigenvectors: np.ndarray | None = None  # W: eigenvectors of A~ in the POD basis
    # How to get Y V S^-1 for the modes: in the lifted space directly (D x r),
    # or as coefficients over the pair columns (M x r: Y V S^-1 = Y @ pair_coefs).
    y_basis: np.ndarray | None = None
    pair_coefs: np.ndarray | None = None
    energy: np.ndarray | None = None  # (rank,) share of sum_t |x~_t|^2 on each mode
    residual: np.ndarray | None = None  # (rank,) relative residual of each eigenpair
    # (rank,) median distance of each eigenvalue to its match in fits to inits resampled
    # with replacement (spectrum.init_spread); None unless asked for
    spread: np.ndarray | None = None
    # eigenvalues, energy, residual (and spread) that `dominant` or `within` left
    dropped: dict[str, np.ndarray] | None = None

    def dominant(self, keep: int) -> DMDResult:
        """The `keep` modes of most energy (in decreasing-modulus order), the rest in `dropped`.

        Noise and the higher harmonics a nonlinear change of coordinates adds
        carry little energy; the modes that carry the data do not.
        """
        size = self.eigenvalues.size
        if keep > size:
            raise DMDError(
                f"the fit kept {size} modes (rank {self.rank}), fewer than the {keep} to keep; "
                "lower keep or raise the rank"
            )
        # Ties (the two modes of a complex pair carry equal energy) keep the earlier one.
        order = np.argsort(-np.round(self.energy, 12), kind="stable")
        return self._split(np.sort(order[:keep]), np.sort(order[keep:]))

    def within(self, score: np.ndarray, limit: float) -> DMDResult:
        """The modes whose `score` (one per mode) is at most `limit`, the rest in `dropped`.

        The score is a mode's spread over init resamples (max_spread: an
        eigenvalue fitted to noise moves when the inits are resampled, one of
        the dynamics stays put) or its residual (max_residual: a noise mode is
        far from an eigenfunction on the snapshot pairs). At least the mode of
        smallest score is kept.
        """
        score = np.asarray(score)
        kept = np.flatnonzero(score <= limit)
        if kept.size == 0:
            kept = np.array([int(np.argmin(score))])
        return self._split(kept, np.setdiff1d(np.arange(score.size), kept))

    def _split(self, kept: np.ndarray, left: np.ndarray) -> DMDResult:
        """Modes `kept` stay, modes `left` are appended to `dropped` (both index arrays)."""
        fields = ("eigenvalues", "energy", "residual") + (("spread",) * (self.spread is not None))
        before = self.dropped or {}
        dropped = {
            f: np.concatenate([before[f], getattr(self, f)[left]])
            if f in before
            else getattr(self, f)[left]
            for f in fields
        }
        return replace(
            self,
            eigenvalues=self.eigenvalues[kept],
            amplitudes=self.amplitudes[kept],
            eigenvectors=None if self.eigenvectors is None else self.eigenvectors[:, kept],
            energy=self.energy[kept],
            residual=self.residual[kept],
            spread=None if self.spread is None else self.spread[kept],
            dropped=dropped,
        )

    def mode_matrix(self, y_v_sinv: np.ndarray) -> np.ndarray:
        """Modes Phi = Y V S^-1 W / mu from rows of Y V S^-1 (exact DMD modes, scaled).

        Scaled by 1/mu so that Phi diag(mu^t) b reproduces snapshot t with the
        stored amplitudes b (for data that a linear map fits, Phi = U_r W).
        """
        mu = self.eigenvalues
        big = np.abs(mu) > 1e3 * EPS * max(np.abs(mu).max(initial=0.0), EPS)
        scale = np.where(big, 1.0 / np.where(big, mu, 1.0), 1.0)
        return (y_v_sinv @ self.eigenvectors) * scale[None, :]


def eigh_desc(m: np.ndarray, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric PSD matrix (one triangle read), largest first, clipped at 0.

    LAPACK's dsyevr: small workspace, unlike numpy's dsyevd (2 n^2 more).
    """
    if m.flags.c_contiguous and not m.flags.f_contiguous:
        m = m.T  # the same symmetric matrix, in the Fortran order LAPACK takes without a copy
    lam, vec = scipy.linalg.eigh(
        m, lower=True, overwrite_a=overwrite, check_finite=False, driver="evr"
    )
    return np.clip(lam[::-1], 0.0, None), vec[:, ::-1]


KRYLOV_TOL = 1e-15  # Lanczos estimate of each kept pair's residual, relative to the largest
KRYLOV_CHECK = 1e-12  # the residual computed at the end, relative to the largest, or dense
KRYLOV_SEED = 0  # the start block: the same input gives bitwise the same output
# Columns of the Lanczos block beyond the k wanted: any b > k finds every copy of a repeated
# eigenvalue among the k leading, and each extra column costs 2 n^2 flops a step while saving
# few steps (fcn_width, k = 10: 12-13 products of 12 columns against 10-12 of 18, 0.51
# against 0.58 s of eigensolves for a seed of each width).
KRYLOV_EXTRA = 2


def leading_eigh(
    m: np.ndarray,
    pick: Callable[[np.ndarray], int],
    most: int | None = None,
    overwrite: bool = False,
    every: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of a symmetric PSD matrix (largest first, clipped at 0) and the leading
    pick(eigenvalues) eigenvectors; `most` bounds pick's answer when known.

    Without a bound (or a large one: most > n / 4, or n < 64) every eigenvalue,
    by LAPACK's dsyevr. With a bound, only the leading `most` eigenvalues
    (pick sees those), by block Lanczos (`krylov_eigh`): O(n^2 most) per
    block step instead of the O(n^3) tridiagonalisation, and each returned
    pair's residual |m y - theta y| is checked to be at most KRYLOV_CHECK times
    the largest eigenvalue (so each eigenvalue is that close to the exact one;
    in practice they equal dense eigh's to ~1e-15); when it is not, or the
    Krylov basis would outgrow n / 3, the tridiagonal route answers instead,
    with the same leading `most` eigenvalues. `every`: with a bound, every
    eigenvalue and the leading eigenvectors by the tridiagonal route (the
    former default): the Householder tridiagonalisation (dsytrd), its
    eigenvalues, r of its eigenvectors and r back-transforms. n = 3250,
    r = 10, one BLAS thread (benchmarks/eigensolve.py): 0.09 s (0.22 s for a
    spectrum decaying as 1/i) against 3.1 s of CPU for the tridiagonal route.
    """
    require_finite(m)
    n = m.shape[0]
    if most is None or most > n // 4 or n < 64:
        lam, vec = eigh_desc(m, overwrite)
        return lam, signed(vec[:, : pick(lam)])
    found = None if every else krylov_eigh(m, most)
    if found is None:
        c, d, e, tau = _tridiagonal(m, overwrite)
        lam = np.clip(scipy.linalg.eigh_tridiagonal(d, e, eigvals_only=True)[::-1], 0.0, None)
        lam = lam if every else lam[:most]
        r = _picked(pick, lam, most)
        return lam, signed(_tridiagonal_vectors(c, d, e, tau, r))
    lam, vec = found
    return lam, signed(vec[:, : _picked(pick, lam, most)])


def signed(vec: np.ndarray) -> np.ndarray:
    """Eigenvectors (columns) times the unit factor that makes each one's entry of largest
    magnitude real (to rounding) and positive: a sign for real vectors, a phase for complex.

    An eigenvector is fixed only up to that factor, and solvers and BLAS builds
    pick it by rounding. Fixing it makes the DMD modes and amplitudes built on
    these vectors the same, to rounding, whichever solver or machine found them.
    A complex conjugate pair stays a conjugate pair (both peaks at one row).
    """
    peak = vec[np.abs(vec).argmax(axis=0), np.arange(vec.shape[1])]
    unit = np.sign(peak)  # peak / |peak| (numpy >= 2): +-1 for real, a phase for complex
    return vec * np.where(unit == 0, 1, unit.conj())


def _picked(pick: Callable[[np.ndarray], int], lam: np.ndarray, most: int) -> int:
    r = pick(lam)
    if not 0 < r <= most:
        raise ValueError(f"{r} eigenvectors asked for, at most {most} expected")
    return r


def _tridiagonal(m: np.ndarray, overwrite: bool) -> tuple[np.ndarray, ...]:
    """Householder tridiagonal form Q^T m Q (LAPACK dsytrd, lower triangle): c, d, e, tau."""
    if m.flags.c_contiguous and not m.flags.f_contiguous:
        m = m.T  # the same symmetric matrix, in Fortran order
    lwork, _ = lapack.dsytrd_lwork(m.shape[0], lower=1)
    c, d, e, tau, info = lapack.dsytrd(m, lower=1, lwork=int(lwork), overwrite_a=overwrite)
    if info != 0:
        raise np.linalg.LinAlgError(f"dsytrd failed (info {info})")
    return c, d, e, tau


def _tridiagonal_vectors(
    c: np.ndarray, d: np.ndarray, e: np.ndarray, tau: np.ndarray, r: int
) -> np.ndarray:
    """The leading r eigenvectors of m from its tridiagonal form: r back-transforms, O(n^2 r)."""
    n = d.size
    _, z = scipy.linalg.eigh_tridiagonal(d, e, select="i", select_range=(n - r, n - 1))
    z = np.ascontiguousarray(z[:, ::-1])
    for i in range(n - 2, -1, -1):  # z <- Q z, Q = H(0) ... H(n-2), H(i) = I - tau v v^T
        v = np.empty(n - i - 1)
        v[0], v[1:] = 1.0, c[i + 2 :, i]
        z[i + 1 :] -= tau[i] * np.outer(v, v @ z[i + 1 :])
    return z


def krylov_eigh(
    m: np.ndarray,
    k: int,
    tol: float = KRYLOV_TOL,
    check: float = KRYLOV_CHECK,
    max_basis: int | None = None,
    block: int | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The k largest eigenpairs of a symmetric PSD matrix by block Lanczos, or None.

    Block Lanczos with full reorthogonalisation from a fixed Gaussian start
    block of b = k + KRYLOV_EXTRA columns (`block`): each step multiplies m by the newest
    block (dgemm, 2 n^2 b flops), orthogonalises the product against the
    basis Q (block classical Gram-Schmidt, twice or three times) and takes the
    Ritz pairs of T = Q^T m Q. It stops when the Lanczos estimate of every
    kept pair's residual, |R_j s|, is at most `tol` times the largest Ritz
    value, then computes the residuals |m y - theta y| of the returned pairs
    and answers None unless they are at most `check` times the largest (also
    None when the basis would pass `max_basis`, default n / 3: beyond it the
    dense route costs less). A residual rho bounds the eigenvalue's error by
    rho (and, for an isolated eigenvalue, by rho^2 / gap) and the vector's
    angle by rho / gap. A block of b > k columns finds every copy of a
    repeated eigenvalue among the k leading (single-vector Lanczos can miss
    copies: on benchmarks/eigensolve.py --degenerate ARPACK's eigsh returns a
    6-fold eigenvalue 5 times, then the next one).

    m must be symmetric in both triangles (the products read all of it).
    Returns the eigenvalues (largest first, clipped at 0) and the eigenvectors
    (n x k). Deterministic: the same matrix gives bitwise the same answer.
    """
    n = m.shape[0]
    b = block if block is not None else k + KRYLOV_EXTRA
    limit = max_basis if max_basis is not None else n // 3
    if 2 * b > limit:
        return None
    m = _rows_unit_stride(m)
    rng = np.random.default_rng(KRYLOV_SEED)
    cap = min(limit, 8 * b)  # grows by doubling: most solves need a few blocks
    q = np.empty((n, cap), order="F")
    t = np.zeros((cap, cap))
    q[:, :b] = np.linalg.qr(rng.standard_normal((n, b)))[0]
    start = 0
    while True:
        end = start + b
        fresh, coefs, r = _extend(q[:, :end], times(m, q[:, start:end]))
        t[:end, start:end] = coefs[:end]
        t[start:end, :start] = coefs[:start].T
        t[start:end, start:end] = (coefs[start:end] + coefs[start:end].T) / 2
        theta, s = scipy.linalg.eigh(
            t[:end, :end], subset_by_index=(end - k, end - 1), driver="evr", check_finite=False
        )
        theta, s = theta[::-1], s[:, ::-1]
        top = max(theta[0], 0.0)
        estimate = np.linalg.norm(r @ s[start:end], axis=0)  # |m y - theta y| of each pair
        if estimate.max() <= tol * top:
            break
        if end + b > limit:
            return None
        if end + b > cap:
            cap = min(2 * cap, limit)
            grown = np.empty((n, cap), order="F")
            grown[:, :end] = q[:, :end]
            q, t = grown, np.pad(t, ((0, cap - t.shape[0]), (0, cap - t.shape[1])))
        q[:, end : end + b] = fresh
        start = end
    y = q[:, :end] @ s
    residual = np.linalg.norm(times(m, y) - y * theta, axis=0)
    if residual.max() > check * top:
        return None
    return np.clip(theta, 0.0, None), y


def _rows_unit_stride(m: np.ndarray) -> np.ndarray:
    """A symmetric m as a view with unit stride along its rows, without a copy when it has
    unit stride along either axis (a block of the lag products, or Fortran order: m.T)."""
    if m.strides[1] == m.itemsize:
        return m
    return m.T if m.strides[0] == m.itemsize else np.ascontiguousarray(m)


def times(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """m @ v for a large m and a few columns v, computed as (v^T m^T)^T.

    The same product, rounded differently: OpenBLAS runs this form 1.6-1.8x
    faster than m @ v for 10-30 columns of a 3000-4000 square m (12.7 against
    20 ms at 3250 x 18, one thread), and such products are most of a
    spectrum's eigensolve (the Krylov steps) and of its reduced operator.
    """
    return (v.T @ m.T).T


def _extend(q: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """v = q c + w r with w orthonormal and orthogonal to q (orthonormal): (w, c, r).

    Block classical Gram-Schmidt with a QR after each pass; a third pass when
    the second one still cancels much (v nearly inside span(q), where
    "twice is enough" needs help; w then has directions v barely has, with
    near-zero rows in r).
    """
    c = q.T @ v
    w, r = np.linalg.qr(v - q @ c)
    for _ in range(2):
        c2 = q.T @ w
        w, r2 = np.linalg.qr(w - q @ c2)
        c += c2 @ r
        r = r2 @ r
        if np.abs(np.diagonal(r2)).min() > 0.5:
            break
    return w, c, r


def rank_bound(rank: int | float | str) -> int | None:
    """The most eigenvectors a rank rule can ask for, when known before the eigenvalues."""
    return rank if isinstance(rank, int) and not isinstance(rank, bool) else None


def gavish_donoho(s: np.ndarray, shape: tuple[int, int]) -> float:
    """Optimal hard threshold for singular values in white noise of unknown level.

    Gavish & Donoho (2014): omega(beta) * median(s), beta = min / max of the
    matrix's sides, with their cubic fit of omega.
    """
    beta = min(shape) / max(shape)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return float(omega * np.median(s[: min(shape)]))


def select_rank(
    s: np.ndarray, rank: int | float | str, tol: float, shape: tuple[int, int] | None = None
) -> int:
    """Truncation rank by a rule, capped at the numerical rank.

    rank: a positive integer k; "full" (the numerical rank); "gd" (singular
    values above the Gavish-Donoho threshold, needs the matrix `shape`); or a
    float in (0, 1): the fewest leading singular values whose squares hold that
    fraction of the total energy sum(s^2).

    The numerical rank counts singular values above tol * s_max: tol is
    max(D, M) * eps when s comes from an SVD or QR of the data, and its square
    root when s comes from a squared (Gram or covariance) matrix, which
    resolves no more. No direction whose singular value is rounding noise
    enters S^-1.
    """
    numerical = int(np.count_nonzero(s > tol * s[0])) if s.size and s[0] > 0 else 0
    if numerical == 0:
        raise DMDError("every snapshot is zero: there are no dynamics to decompose")
    if rank == "full":
        return numerical
    if rank == "gd":
        size = shape if shape is not None else (s.size, s.size)
        wanted = int(np.count_nonzero(s > gavish_donoho(s, size)))
    elif isinstance(rank, float):
        if not 0.0 < rank < 1.0:
            raise ValueError(f"energy fraction {rank} is not in (0, 1)")
        energy = np.cumsum(s.astype(np.float64) ** 2)
        wanted = int(np.searchsorted(energy, rank * energy[-1], side="left")) + 1
    else:
        wanted = int(rank)
    return max(1, min(wanted, numerical))


def squared_tol(size: int) -> float:
    """Relative singular-value tolerance of a float64 Gram of an X with max(D, M) = size."""
    return float(np.sqrt(size * EPS))


def reduced_dmd(
    s: np.ndarray, syx: np.ndarray, syy: np.ndarray | None, coords0: np.ndarray, variant: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues (by decreasing modulus), eigenvectors W and amplitudes of a variant's A~.

    s: the r kept singular values; syx = Y~ X~^T, syy = Y~ Y~^T (r x r,
    needed by tls and fb); coords0 = U_r^T x0 (r x inits). Each column of W
    has its largest entry real and positive (`signed`), so the amplitudes do
    not change sign or phase with rounding.
    """
    s2 = s**2
    if variant == "exact":
        atilde = syx / s2[None, :]
        mu, w = scipy.linalg.eig(atilde)
    elif variant == "tls":
        r = s.size
        z = np.block([[np.diag(s2), syx.T], [syx, syy]])
        _, uz = eigh_desc(z)
        u11, u21 = uz[:r, :r], uz[r:, :r]
        mu, w = scipy.linalg.eig(np.linalg.solve(u11.T, u21.T).T)  # U21 U11^-1
    elif variant == "fb":
        forward = syx / s2[None, :]
        backward = syx.T @ np.linalg.inv(syy)
        mu2, w = scipy.linalg.eig(forward @ np.linalg.inv(backward))
        root = np.sqrt(mu2.astype(np.complex128))
        fwd = np.diag(np.linalg.solve(w, forward @ w))  # forward's value along each vector
        mu = np.where(np.abs(root - fwd) <= np.abs(-root - fwd), root, -root)
    else:
        raise ValueError(f"unknown DMD variant {variant!r}; expected one of {list(VARIANTS)}")
    order = np.lexsort((-mu.imag, -np.abs(mu)))
    mu, w = mu[order].astype(np.complex128), signed(w[:, order].astype(np.complex128))
    amplitudes = np.linalg.lstsq(w, coords0.astype(np.complex128), rcond=None)[0]
    return mu, w, amplitudes


def mode_quality(
    s: np.ndarray, syx: np.ndarray, syy: np.ndarray | None, mu: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Energy share and residual of each eigenpair (mu_i, w_i) on the reduced snapshots.

    With unit eigenvectors W and the snapshots' coefficients on them,
    C = W^-1 X~ and C' = W^-1 Y~: energy_i = sum_t |C_it|^2, as a share of the
    sum over modes, and residual_i = ||C'_i - mu_i C_i|| / ||C_i||, how far
    the eigenfunction of row i of W^-1 is from an exact one on the data
    (ResDMD's residual in the POD basis; NaN without Syy). Both are quadratic
    forms of S^2, Syx, Syy: no pass over the data; as a difference of them, the
    residual resolves values down to about sqrt(eps) = 1.5e-8.
    """
    z = np.linalg.inv(w / np.linalg.norm(w, axis=0)[None, :])
    energy = np.sum(np.abs(z * s[None, :]) ** 2, axis=1)  # diag of Z S^2 Z^*
    if syy is None:
        residual = np.full(mu.shape, np.nan)
    else:
        yy = np.einsum("ij,jk,ik->i", z, syy, z.conj()).real  # sum_t |C'_it|^2
        yx = np.einsum("ij,jk,ik->i", z, syx, z.conj())  # sum_t C'_it conj(C_it)
        square = yy - 2.0 * np.real(np.conj(mu) * yx) + np.abs(mu) ** 2 * energy
        residual = np.sqrt(np.clip(square, 0.0, None) / np.maximum(energy, np.finfo(float).tiny))
    return energy / max(energy.sum(), np.finfo(float).tiny), residual


def _result(
    s_all: np.ndarray,
    r: int,
    syx: np.ndarray,
    syy: np.ndarray | None,
    coords0: np.ndarray,
    variant: str,
    **modes: np.ndarray,
) -> DMDResult:
    mu, w, amplitudes = reduced_dmd(s_all[:r], syx, syy, coords0, variant)
    energy, residual = mode_quality(s_all[:r], syx, syy, mu, w)
    return DMDResult(mu, amplitudes, s_all, r, w, **modes, energy=energy, residual=residual)


def dmd_from_gram(
    gxx: np.ndarray,
    gxy: np.ndarray,
    gx0: np.ndarray,
    rank: int | float | str,
    dim: int,
    variant: str = "exact",
    every: bool = False,
) -> DMDResult:
    """DMD from X^T X (M x M), X^T Y (M x M) and X^T x0 (M x inits); X has `dim` rows.

    every: keep every singular value also for an integer rank (leading_eigh).
    """
    m = gxx.shape[0]
    tol = squared_tol(max(dim, m))
    lam, vr = leading_eigh(
        gxx,
        lambda lam: select_rank(np.sqrt(lam), rank, tol, (dim, m)),
        rank_bound(rank),
        every=every,
    )
    s_all = np.sqrt(lam)
    return dmd_from_gram_factors(s_all, vr.shape[1], vr, gxy.T @ vr, gx0, variant)


def dmd_from_gram_factors(
    s_all: np.ndarray,
    r: int,
    vr: np.ndarray,
    ytxv: np.ndarray,
    gx0: np.ndarray,
    variant: str = "exact",
) -> DMDResult:
    """DMD from the Gram's leading eigenvectors V_r, Y^T X V_r (M x r) and X^T x0 (M x inits)."""
    s = s_all[:r]
    ytilde_t = ytxv / s[None, :]  # Y~^T = Y^T U_r = Y^T X V_r S_r^-1
    syx = ytilde_t.T @ (vr * s[None, :])  # Y~ X~^T with X~^T = V_r S_r
    syy = ytilde_t.T @ ytilde_t
    coords0 = (vr.T @ gx0) / s[:, None]  # U_r^T x0 with U_r = X V_r S_r^-1
    return _result(s_all, r, syx, syy, coords0, variant, pair_coefs=vr / s[None, :])


def dmd_from_covariance(
    cxx: np.ndarray,
    cyx: np.ndarray,
    x0: np.ndarray,
    rank: int | float | str,
    n_pairs: int,
    cyy: np.ndarray | None = None,
    variant: str = "exact",
    every: bool = False,
) -> DMDResult:
    """DMD from X X^T, Y X^T (D x D), the first lifted snapshots x0 (D x inits) and, for
    the tls and fb variants, Y Y^T. every: keep every singular value also for an integer
    rank (leading_eigh)."""
    d = cxx.shape[0]
    tol = squared_tol(max(d, n_pairs))
    lam, ur = leading_eigh(
        cxx,
        lambda lam: select_rank(np.sqrt(lam), rank, tol, (d, n_pairs)),
        rank_bound(rank),
        every=every,
    )
    s_all = np.sqrt(lam)
    r = ur.shape[1]
    cyx_ur = times(cyx, ur)
    syx = ur.T @ cyx_ur
    syy = ur.T @ times(cyy, ur) if cyy is not None else None
    y_basis = cyx_ur / lam[None, :r]  # Y V S^-1 = Y X^T U S^-2
    return _result(s_all, r, syx, syy, ur.T @ x0, variant, y_basis=y_basis)


def dmd_dense(
    x: np.ndarray,
    y: np.ndarray,
    x0: np.ndarray,
    rank: int | float | str,
    size: int | None = None,
    variant: str = "exact",
    shape: tuple[int, int] | None = None,
) -> DMDResult:
    """DMD by SVD of X held in memory; x0 (rows of X x inits) gives the amplitudes.

    Also the last step of the QR routes, where X and Y are replaced by small
    coefficient matrices with the same inner products (same eigenvalues).
    `size` is max(D, M) and `shape` (D, M) of the original X, for the
    numerical-rank tolerance and the Gavish-Donoho threshold.
    """
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    r = select_rank(s, rank, (size or max(x.shape)) * EPS, shape or x.shape)
    ytilde = u[:, :r].T @ y
    syx = ytilde @ (vh[:r].T * s[None, :r])
    syy = ytilde @ ytilde.T
    coefs = vh[:r].T / s[None, :r]
    return _result(s, r, syx, syy, u[:, :r].T @ x0, variant, y_basis=y @ coefs, pair_coefs=coefs)


def tsqr_update(r: np.ndarray | None, block: np.ndarray) -> np.ndarray:
    """R factor of [R; block] in float64: one step of a streaming (tall-skinny) QR."""
    stacked = block if r is None else np.vstack([r, block])
    full = scipy.linalg.qr(stacked, mode="r", overwrite_a=True, check_finite=False)[0]
    return full[: min(stacked.shape)]  # rows below are zero: keep R square (or short)


def needs_qr(s: np.ndarray, rank: int | str, limit: float = 1e-4) -> bool:
    """True when a singular value the rank asks for is below what a float64 Gram resolves well.

    Gram eigenvalues carry an absolute error of about eps * s_max^2, so a
    singular value below `limit` * s_max has lost more than eps / limit^2
    (~2e-8) of its relative accuracy, and one below sqrt(eps) * s_max is gone.
    `rank` is "full" (every singular value) or the number of them used.
    """
    wanted = s.size if rank == "full" else min(int(rank), s.size)
    return bool(s[wanted - 1] < limit * s[0])


def condition_number(s: np.ndarray, rank: int | str) -> float:
    """Condition number of the squared matrix restricted to the wanted rank: (s_1 / s_r)^2."""
    wanted = s.size if rank == "full" else min(int(rank), s.size)
    low = s[wanted - 1]
    return float((s[0] / low) ** 2) if low > 0 else float("inf")


def matched_spread(full: np.ndarray, resampled: list[np.ndarray], q: float = 0.5) -> np.ndarray:
    """Per eigenvalue of `full`, the q-quantile over resamples of |lambda_b - lambda|.

    Each resample's eigenvalues are matched to the full data's one to one by
    the assignment of least total distance; a full-data eigenvalue left
    unmatched (a resample of lower numerical rank) takes its distance to the
    nearest resampled one.
    """
    from scipy.optimize import linear_sum_assignment

    dist = np.empty((len(resampled), full.size))
    for b, values in enumerate(resampled):
        cost = np.abs(full[:, None] - values[None, :])
        rows, cols = linear_sum_assignment(cost)
        dist[b] = cost.min(axis=1)
        dist[b, rows] = cost[rows, cols]
    return np.quantile(dist, q, axis=0)


def fixed_point(
    modes: np.ndarray, eigenvalues: np.ndarray, amplitudes: np.ndarray
) -> tuple[np.ndarray, complex]:
    """Re(phi_k b_k) for k = argmin |mu_k - 1|, and mu_k: where the fitted dynamics settle.

    modes (D, r) as DMDResult.mode_matrix scales them, amplitudes (r,) or
    (r, inits) of one snapshot, so that x_t = sum_j phi_j mu_j^t b_j. Terms
    with |mu_j| < 1 die out and one with mu_k = 1 stays: phi_k b_k is the
    limit. On a trajectory still converging, the eigenvalue nearest 1 stands
    for it (mu_k^t barely moves over the horizon). Re: the state is real (a
    real eigenvalue's mode is real up to rounding); when the nearest is one
    of a complex pair (a slow rotation), this is half the pair's part.

    Affine dynamics x <- A x + c, made linear by a constant coordinate
    (z = [x; 1]), need no rule of their own: the eigenvalue-1 mode is
    [(I - A)^-1 c; 1] up to scale, the other modes are [v; 0], and every
    z_t has constant entry 1, so phi_k b_k has constant entry 1:
    Re(phi_k b_k) = [(I - A)^-1 c; 1], the mode divided by its constant
    entry, without a division by that entry (0 when there is no affine part).
    Where no affine map fits the data exactly, that entry is near 1, not 1,
    and the rule keeps the fit's own limit rather than rescaling it.
    """
    k = int(np.argmin(np.abs(eigenvalues - 1)))
    return np.multiply.outer(modes[:, k], amplitudes[k]).real, complex(eigenvalues[k])
