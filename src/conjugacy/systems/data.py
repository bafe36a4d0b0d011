"""Datasets the nets train on: scikit-learn's digits (offline), MNIST (IDX), CIFAR-10 (pickles)."""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np

from conjugacy.systems.shapes import DATASET_FILES

# IDX type codes (the third byte of the magic number) and their big-endian dtypes.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the usual normalisation, as the reference
# The usual per-channel normalisation of CIFAR-10 (training-set mean and std).
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR_TEST = "test_batch"


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


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds (dicts, lists, bytes, numpy arrays).

    A pickle can run any code on loading; a batch file asking for anything
    else is refused rather than trusted.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes inside protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch")


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (plain or gzipped): images uint8 (n, 3, 32, 32), labels int64.

    The format of the CIFAR site: a pickled dict with b"data" (n x 3072 uint8,
    the red, green and blue 32x32 planes of each image) and b"labels".
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path} is not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(
            f"{path}: data {data.shape} and {len(labels)} labels; expected (n, 3072) and n labels"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 training (data_batch_1..5) or test (test_batch) set, flattened and normalised."""
    names = DATASET_FILES["cifar10"] if split == "train" else (CIFAR_TEST,)
    parts = [read_cifar_batch(_find(Path(data_dir), n)) for n in names]
    images = np.concatenate([p[0] for p in parts]).astype(np.float64) / 255.0
    mean = np.asarray(CIFAR_MEAN)[None, :, None, None]
    std = np.asarray(CIFAR_STD)[None, :, None, None]
    x = ((images - mean) / std).reshape(len(images), -1)
    return x.astype(np.float32), np.concatenate([p[1] for p in parts])


def _find(folder: Path, name: str) -> Path:
    plain = folder / name
    return plain if plain.is_file() else folder / f"{name}.gz"


def split_holdout(
    x: np.ndarray, y: np.ndarray, fraction: float | None
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x, y) to train on, (x, y) held out): a fixed split, the same for every seed.

    With no fraction (or 0) nothing is held out and the held-out part is empty.
    """
    n_out = int(round(len(y) * (fraction or 0.0)))
    order = np.random.default_rng(0).permutation(len(y))
    held, kept = np.sort(order[:n_out]), np.sort(order[n_out:])
    return (x[kept], y[kept]), (x[held], y[held])


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (pixels float64 (1797, 64), labels int64) from its data file.

    The file sklearn.datasets.load_digits reads, read without importing
    scikit-learn: that import alone costs about a second per training job.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("dataset 'digits' needs scikit-learn installed (it ships the data)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def load_dataset(name: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 (n, d), labels int64 (n,)), features standardised."""
    if name == "digits":
        pixels, labels = read_digits()
        x = pixels / 16.0
        x = (x - x.mean()) / x.std()
        return x.astype(np.float32), labels
    if name == "mnist":
        images, labels = (read_idx(_find(Path(data_dir), f)) for f in DATASET_FILES["mnist"])
        x = (images.reshape(len(images), -1).astype(np.float64) / 255.0 - MNIST_MEAN) / MNIST_STD
        return x.astype(np.float32), labels.astype(np.int64)
    if name == "cifar10":
        return load_cifar10(data_dir)
    raise ValueError(f"unknown dataset {name!r}; expected 'digits', 'mnist' or 'cifar10'")
