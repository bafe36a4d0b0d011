"""Wasserstein-1 distance between eigenvalue sets in the complex plane."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between uniform measures on two eigenvalue sets, Euclidean ground metric.

    Equal sizes: the mean matched distance of the optimal one-to-one
    assignment (equal to W1 for uniform weights). Unequal sizes: POT's exact
    solver with weights 1/n and 1/m (a rectangular assignment is not W1).
    """
    a, b = np.asarray(a, dtype=np.complex128), np.asarray(b, dtype=np.complex128)
    if a.size == 0 or b.size == 0:
        raise ValueError("cannot compare an empty eigenvalue set")
    cost = cdist(np.column_stack([a.real, a.imag]), np.column_stack([b.real, b.imag]))
    if a.size == b.size:
        rows, cols = linear_sum_assignment(cost)
        return float(cost[rows, cols].mean())
    import ot

    return float(ot.emd2(np.full(a.size, 1 / a.size), np.full(b.size, 1 / b.size), cost))


def pairwise(spectra: list[np.ndarray]) -> np.ndarray:
    """Symmetric matrix of W1 between every two spectra (zero diagonal)."""
    n = len(spectra)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = wasserstein(spectra[i], spectra[j])
    return out


SGOT_ETA = 0.5  # POT's default weight of the eigenvalue term


class DependentModes(ValueError):
    """A spectrum's modes are linearly dependent: it has no left eigenvectors (`index`)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"spectrum {index}: its modes are linearly dependent")
        self.index = index


def mode_coordinates(gram: np.ndarray, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Right and left eigenvectors of every spectrum as coordinates in one orthonormal basis.

    `gram` is R^H R of all spectra's right eigenvectors (modes) stacked as
    columns, `sizes` how many each spectrum has. With gram = C^H C
    (C = sqrt(Lambda) E^H from its eigendecomposition), R = Q C for an
    orthonormal Q that is never formed: every inner product ot.sgot takes is
    kept. A spectrum's left eigenvectors are the dual basis of its right ones
    in their span, L = R (R^H R)^-1 (row i of the fitted operator's
    eigenvector inverse), whose coordinates are C_a G_aa^-1. DependentModes
    names the spectrum whose modes are linearly dependent.
    """
    lam, vec = np.linalg.eigh(gram)
    keep = lam > lam.max(initial=0.0) * 1e-13
    coords = (vec[:, keep] * np.sqrt(lam[keep])[None, :]).conj().T  # C: rank x total
    out, start = [], 0
    for a, size in enumerate(sizes):
        block = slice(start, start + size)
        own = gram[block, block]
        if np.linalg.cond(own) > 1e12:
            raise DependentModes(a)
        right = coords[:, block]
        out.append((right, right @ np.linalg.inv(own)))
        start += size
    return out


def sgot(
    a: np.ndarray,
    right_a: np.ndarray,
    left_a: np.ndarray,
    b: np.ndarray,
    right_b: np.ndarray,
    left_b: np.ndarray,
    eta: float = SGOT_ETA,
) -> float:
    """Spectral-Grassmann Wasserstein distance (POT's ot.sgot.sgot_metric) of two spectra.

    W1 between uniform measures on eigenpairs with ground distance
    sqrt(eta |lambda - lambda'|^2 + (1 - eta)(1 - delta^2)), delta = |<r, r'>
    <l, l'>| of unit right and left eigenvectors (the chordal Grassmann
    distance): q = 2, p = 1, r = 1 in POT's terms, so that with eta = 1, or
    eigenvectors that coincide, it is sqrt(eta) times the plain W1.
    """
    from ot.sgot import sgot_metric

    return float(
        sgot_metric(
            a,
            right_a,
            left_a,
            b,
            right_b,
            left_b,
            eta=eta,
            p=1,
            q=2,
            r=1,
            grassmann_metric="chordal",
        )  # fmt: skip
    )


def sgot_pairwise(spectra: list[np.ndarray], gram: np.ndarray, eta: float = SGOT_ETA) -> np.ndarray:
    """Symmetric matrix of sgot between every two spectra, from the Gram of their modes."""
    coords = mode_coordinates(gram, [s.size for s in spectra])
    n = len(spectra)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            ri, li = coords[i]
            rj, lj = coords[j]
            out[i, j] = out[j, i] = sgot(spectra[i], ri, li, spectra[j], rj, lj, eta)
    return out


def modes_gram(modes: list[np.ndarray]) -> np.ndarray:
    """R^H R of modes (values x r each) stacked as columns: all of them, or (the compare
    stage, summing over blocks of values) the rows of one block."""
    rows = np.vstack([np.asarray(m, dtype=np.complex128).T for m in modes])
    return rows.conj() @ rows.T
