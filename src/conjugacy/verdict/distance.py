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
