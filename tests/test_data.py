"""The MNIST IDX reader and the data_dir check, on tiny IDX files written here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from conjugacy import config
from conjugacy.systems.data import MNIST_MEAN, MNIST_STD, load_dataset, read_idx
from conjugacy.train import train


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, gz: bool = False) -> Path:
    """An IDX file by the format's definition: magic, big-endian dims, big-endian data."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    raw = struct.pack(">BBBB", 0, 0, code, array.ndim)
    raw += struct.pack(f">{array.ndim}I", *array.shape) + array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def tiny_mnist(folder: Path, n: int = 30, gz: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", images, gz=gz)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return folder


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("code", "values"), [(0x08, [[0, 7], [255, 3]]), (0x0C, [[-5, 70000]])])
def test_read_idx_round_trip(tmp_path, gz, code, values):
    array = np.array(values)
    got = read_idx(write_idx(tmp_path / "a.idx", array, code, gz))
    assert got.shape == array.shape and np.array_equal(got, array)


def test_read_idx_refuses_a_file_that_is_not_idx_or_is_cut(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x")
    full = write_idx(tmp_path / "y", np.zeros((4, 3)), 0x08).read_bytes()
    (tmp_path / "y").write_bytes(full[:-2])
    with pytest.raises(ValueError, match="bytes of data"):
        read_idx(tmp_path / "y")


def test_load_mnist_normalises_and_flattens(tmp_path):
    folder = tiny_mnist(tmp_path / "mnist", n=5, gz=True)
    x, y = load_dataset("mnist", folder)
    images = read_idx(folder / "train-images-idx3-ubyte.gz")
    assert x.shape == (5, 784) and x.dtype == np.float32 and y.dtype == np.int64
    expected = (images[2, 3, 4] / 255.0 - MNIST_MEAN) / MNIST_STD
    assert x[2, 3 * 28 + 4] == pytest.approx(expected, rel=1e-6)
    assert np.array_equal(y, read_idx(folder / "train-labels-idx1-ubyte.gz"))


def test_an_fcn_trains_on_mnist_from_data_dir(tmp_path):
    folder = tiny_mnist(tmp_path / "mnist", n=40)
    cond = config.resolve(
        {
            "experiment": "m",
            "conditions": {
                "c": {
                    "system": "fcn",
                    "dataset": "mnist",
                    "data_dir": str(folder),
                    "hidden": 4,
                    "steps": 5,
                    "inits": 2,
                    "batch_size": 10,
                    "record": ["fc1.weight", "fc2.weight"],
                    "koopman": {"delays": 0, "rank": 2},
                }
            },
        }
    )["conditions"]["c"]
    out = train(cond, 0, tmp_path / "t.zarr", progress=False)
    import xarray as xr

    ds = xr.open_zarr(out, consolidated=False)
    assert ds["fc1.weight"].shape == (2, 6, 4, 784)
    assert np.isfinite(ds["loss"].values).all()


@pytest.mark.parametrize(
    ("data_dir", "message"),
    [
        (None, "dataset mnist needs it"),
        ("missing", "has no train-images-idx3-ubyte"),
        ("labels-only", "has no train-images-idx3-ubyte"),
    ],
)
def test_a_data_dir_without_the_files_is_a_config_error(tmp_path, data_dir, message):
    if data_dir == "labels-only":
        (tmp_path / data_dir).mkdir()
        write_idx(tmp_path / data_dir / "train-labels-idx1-ubyte", np.zeros(3))
    cond = {"system": "fcn", "dataset": "mnist"}
    if data_dir is not None:
        cond["data_dir"] = str(tmp_path / data_dir)
    with pytest.raises(config.ConfigError, match=message) as err:
        config.resolve({"experiment": "m", "conditions": {"net": cond}})
    assert "config key conditions.net.data_dir" in str(err.value)
    assert "train-labels-idx1-ubyte" in str(err.value)  # says what was expected


def test_digits_read_without_sklearn_equal_sklearns():
    from sklearn.datasets import load_digits

    from conjugacy.systems.data import read_digits

    pixels, labels = read_digits()
    bunch = load_digits()
    np.testing.assert_array_equal(pixels, bunch.data)
    np.testing.assert_array_equal(labels, bunch.target)
    assert labels.dtype == np.int64 and pixels.shape == (1797, 64)
