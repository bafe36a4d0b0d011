"""Datasets the nets train on, all available offline."""

from __future__ import annotations

import numpy as np


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n, d), labels int64 (n,)), features standardised globally."""
    if name != "digits":
        raise ValueError(f"unknown dataset {name!r}; expected 'digits'")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float64) / 16.0
    x = (x - x.mean()) / x.std()
    return x.astype(np.float32), bunch.target.astype(np.int64)
