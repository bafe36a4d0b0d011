"""Exact DMD from one small accumulated matrix.

With lifted snapshot pairs X, Y (D x M, columns pooled over inits) exact DMD
needs X = U S V^T and A~ = U^T Y V S^-1. Both come from a matrix of side
min(D, M) accumulated in float64 in one pass over the data:

* Gram route (D > M):       X^T X = V S^2 V^T,  A~ = S^-1 V^T (X^T Y) V S^-1
* covariance route (D <= M): X X^T = U S^2 U^T,  A~ = U^T (Y X^T) U S^-2

Both give A~ in the same basis U, so eigenvalues agree, and amplitudes up to
the scale and phase of each eigenvector. A
squared matrix resolves singular values only down to about sqrt(eps) * s_max;
when the rank asks for smaller ones, the QR routes (a streaming float64 QR
whose R factor stands in for the data) give them to eps * s_max.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

EPS = np.finfo(np.float64).eps


@dataclass
class DMDResult:
    eigenvalues: np.ndarray  # (rank,) complex128
    amplitudes: np.ndarray  # (rank, inits) complex128: W^-1 U_r^T x0 of each init
    singular_values: np.ndarray  # all singular values of X, descending
    rank: int


def _eigh_desc(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of a symmetric PSD matrix, largest first, negative rounding clipped."""
    lam, vec = scipy.linalg.eigh((m + m.T) / 2)
    return np.clip(lam[::-1], 0.0, None), vec[:, ::-1]


def select_rank(s: np.ndarray, rank: int | str, tol: float) -> int:
    """Truncation rank: k capped at the numerical rank; "full" is the numerical rank.

    The numerical rank counts singular values above tol * s_max: tol is
    max(D, M) * eps when s comes from an SVD or QR of the data, and its square
    root when s comes from a squared (Gram or covariance) matrix, which
    resolves no more. No direction whose singular value is rounding noise
    enters S^-1.
    """
    numerical = int(np.count_nonzero(s > tol * s[0])) if s.size and s[0] > 0 else 0
    if numerical == 0:
        raise ValueError("the snapshot matrix is zero: no DMD is possible")
    return numerical if rank == "full" else min(int(rank), numerical)


def squared_tol(size: int) -> float:
    """Relative singular-value tolerance of a float64 Gram of an X with max(D, M) = size."""
    return float(np.sqrt(size * EPS))


def _spectrum(atilde: np.ndarray, coords0: np.ndarray, s: np.ndarray, r: int) -> DMDResult:
    """Eigen-decompose A~ and express each init's first lifted snapshot in its eigenbasis."""
    mu, w = scipy.linalg.eig(atilde)
    order = np.lexsort((-mu.imag, -np.abs(mu)))
    mu, w = mu[order], w[:, order]
    amplitudes = np.linalg.lstsq(w, coords0.astype(np.complex128), rcond=None)[0]
    return DMDResult(mu.astype(np.complex128), amplitudes, s, r)


def dmd_from_gram(
    gxx: np.ndarray, gxy: np.ndarray, gx0: np.ndarray, rank: int | str, dim: int
) -> DMDResult:
    """Exact DMD from X^T X (M x M), X^T Y (M x M) and X^T x0 (M x inits); X has `dim` rows."""
    lam, v = _eigh_desc(gxx)
    r = select_rank(np.sqrt(lam), rank, squared_tol(max(dim, gxx.shape[0])))
    s = np.sqrt(lam[:r])
    vr = v[:, :r]
    atilde = (vr.T @ gxy @ vr) / s[:, None] / s[None, :]
    coords0 = (vr.T @ gx0) / s[:, None]  # U_r^T x0 with U_r = X V_r S_r^-1
    return _spectrum(atilde, coords0, np.sqrt(lam), r)


def dmd_from_covariance(
    cxx: np.ndarray, cyx: np.ndarray, x0: np.ndarray, rank: int | str, n_pairs: int
) -> DMDResult:
    """Exact DMD from X X^T (D x D), Y X^T (D x D) and the first lifted snapshots x0 (D x inits)."""
    lam, u = _eigh_desc(cxx)
    r = select_rank(np.sqrt(lam), rank, squared_tol(max(cxx.shape[0], n_pairs)))
    ur = u[:, :r]
    atilde = (ur.T @ cyx @ ur) / lam[None, :r]
    return _spectrum(atilde, ur.T @ x0, np.sqrt(lam), r)


def dmd_dense(
    x: np.ndarray, y: np.ndarray, x0: np.ndarray, rank: int | str, size: int | None = None
) -> DMDResult:
    """Exact DMD by SVD of X held in memory; x0 (rows of X x inits) gives the amplitudes.

    Also the last step of the QR routes, where X and Y are replaced by their
    small coefficient matrices in an orthonormal basis (same eigenvalues).
    `size` is max(D, M) of the original X, for the numerical-rank tolerance.
    """
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    r = select_rank(s, rank, (size or max(x.shape)) * EPS)
    atilde = (u[:, :r].T @ y @ vh[:r].T) / s[None, :r]
    return _spectrum(atilde, u[:, :r].T @ x0, s, r)


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
    """
    wanted = s.size if rank == "full" else min(int(rank), s.size)
    return bool(s[wanted - 1] < limit * s[0])
