"""Datasets the nets train on: scikit-learn's digits (offline) and MNIST from IDX files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from conjugacy.systems.shapes import DATASET_FILES

# IDX type codes (the third byte of the magic number) and their big-endian dtypes.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual normalisation, as the reference


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (the MNIST format), plain or gzipped, as a numpy array."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(IDX_TYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise ValueError(f"{path}: {len(body)} bytes of data for dims {tuple(dims)}")
    return np.frombuffer(body, dtype=dtype).reshape(tuple(dims))


def _find(folder: Path, name: str) -> Path:
    plain = folder / name
    return plain if plain.is_file() else folder / f"{name}.gz"


def load_dataset(name: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n, d), labels int64 (n,)), features standardised."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = bunch.data.astype(np.float64) / 16.0
        x = (x - x.mean()) / x.std()
        return x.astype(np.float32), bunch.target.astype(np.int64)
    if name == "mnist":
        images, labels = (read_idx(_find(Path(data_dir), f)) for f in DATASET_FILES["mnist"])
        x = (images.reshape(len(images), -1).astype(np.float64) / 255.0 - MNIST_MEAN) / MNIST_STD
        return x.astype(np.float32), labels.astype(np.int64)
    raise ValueError(f"unknown dataset {name!r}; expected 'digits' or 'mnist'")
