"""Modular addition a + b mod p as token sequences (a, b, '='), split into train and test.

Every pair (a, b) in [0, p)^2 is one example; token p stands for '='. The
split is a seeded permutation of the p^2 pairs, the first floor(fraction p^2)
of which are the training set (as in Nanda et al. 2023). The split's seed is
a setting of its own, so every training seed sees the same split.
"""

from __future__ import annotations

import numpy as np


def modular_addition(p: int) -> tuple[np.ndarray, np.ndarray]:
    """All p^2 inputs (a, b, p) as int64 (p^2, 3) and their labels (a + b) mod p."""
    a, b = np.divmod(np.arange(p * p, dtype=np.int64), p)
    x = np.stack([a, b, np.full_like(a, p)], axis=1)
    return x, (a + b) % p


def split(
    p: int, fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(x_train, y_train), (x_test, y_test): a seeded random train fraction of the pairs."""
    if not 0 < fraction < 1:
        raise ValueError(f"train fraction must lie in (0, 1), got {fraction}")
    x, y = modular_addition(p)
    order = np.random.default_rng([seed, 113]).permutation(len(y))
    n_train = int(fraction * len(y))
    if n_train == 0 or n_train == len(y):
        raise ValueError(f"train fraction {fraction} of {len(y)} pairs leaves an empty split")
    train, test = order[:n_train], order[n_train:]
    return (x[train], y[train]), (x[test], y[test])
