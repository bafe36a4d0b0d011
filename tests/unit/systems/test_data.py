"""The MNIST IDX reader and the data_dir check, on tiny IDX files written here.

Bad files (cut, wrong, hostile) must fail with one DatasetError naming the file,
before any expensive work; a gzip bomb must be refused fast and in little memory.
"""

from __future__ import annotations

import gzip
import re
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml

from conjugacy import config
from conjugacy.cli import main
from conjugacy.config.shapes import DATASET_DIRS
from conjugacy.systems import data
from conjugacy.systems.data import (
    FASHION_MEAN,
    FASHION_STD,
    MNIST_MEAN,
    MNIST_STD,
    DatasetError,
    load_dataset,
    read_digits,
    read_idx,
)
from conjugacy.training.train import train

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
FASHION_DIR = Path(DATASET_DIRS["fashion_mnist"])
needs_fashion = pytest.mark.skipif(
    not all((FASHION_DIR / f"{name}.gz").is_file() for name in (IMAGES, LABELS)),
    reason=f"Fashion-MNIST is not in {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """An IDX file by the format's definition: magic, big-endian dims, big-endian data."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    raw = struct.pack(">BBBB", 0, 0, code, array.ndim)
    return raw + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, gz: bool = False) -> Path:
    raw = idx_bytes(array, code)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def tiny_mnist(
    folder: Path, n: int = 30, gz: bool = False, seed: int = 0, n_labels: int | None = None
) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n if n_labels is None else n_labels, dtype=np.uint8)
    write_idx(folder / f"{IMAGES}{suffix}", images, gz=gz)
    write_idx(folder / f"{LABELS}{suffix}", labels, gz=gz)
    return folder


def refused(call, *args) -> str:
    """The message of the DatasetError call(*args) raises: one line."""
    with pytest.raises(DatasetError) as err:
        call(*args)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    assert isinstance(err.value, config.ConfigError)  # the command line reports it, exit 2
    return message


def fast_and_small(call, *args, seconds: float = 2.0, mib: float = 50.0) -> str:
    """refused(call, *args), in under `seconds` and in a tracemalloc peak under `mib` MiB.

    Timed without tracemalloc, which slows allocation-heavy code tenfold.
    """
    start = time.perf_counter()
    message = refused(call, *args)
    elapsed = time.perf_counter() - start
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    tracemalloc.start()
    try:
        refused(call, *args)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < mib, f"peak {peak:.1f} MiB"
    return message


def gzip_stream(path: Path, head: bytes, zeros: int) -> Path:
    """A gzip file of head then `zeros` zero bytes, written a MiB at a time (10 KB per 10 MiB)."""
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(head)
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            fh.write(block)
        fh.write(bytes(zeros % (1 << 20)))
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("code", "values"),
    [(0x08, [[0, 7], [255, 3]]), (0x0C, [[-5, 70000]]), (0x09, [-1, 2]), (0x0D, [[0.5]])],
)
def test_read_idx_round_trip(tmp_path, gz, code, values):
    array = np.array(values)
    got = read_idx(write_idx(tmp_path / "a.idx", array, code, gz))
    assert got.shape == array.shape and np.array_equal(got, array)


def test_read_idx_of_empty_dims(tmp_path):
    got = read_idx(write_idx(tmp_path / "e", np.zeros((0, 3)), 0x0C, gz=True))
    assert got.shape == (0, 3)


GOOD = idx_bytes(np.arange(12).reshape(4, 3))  # 4 + 8 header bytes, 12 data bytes


@pytest.mark.parametrize(
    ("raw", "gz", "message"),
    [
        (b"", False, r"is not an IDX file \(magic missing\)"),
        (b"PK\x03\x04 not idx", False, "is not an IDX file"),
        (b"\x00\x00\x07\x01" + bytes(8), False, "is not an IDX file"),  # no such type code
        (b"\x00\x01\x08\x01" + bytes(8), False, "is not an IDX file"),
        (bytes(range(256)) * 4, False, "is not an IDX file"),  # garbage
        (b"\x00\x00\x08\x00", False, "of 0 dimensions"),
        (b"\x00\x00\x08\x40" + bytes(256), False, "of 64 dimensions"),
        (GOOD[:10], False, "cut short in its header: 6 of the 8 bytes"),
        (GOOD[:10], True, "cut short in its header"),
        (GOOD[:-2], False, r"10 bytes of data for dims \(4, 3\) of uint8, which need 12"),
        (GOOD[:-2], True, r"10 bytes of data for dims \(4, 3\) of uint8, which need 12"),
        (GOOD + b"\x00", False, r"13 bytes of data for dims \(4, 3\)"),
        (GOOD + b"\x00", True, r"more bytes of data than the 12 its dims \(4, 3\)"),
        (b"\x00\x00\x0c\x03" + b"\xff" * 12, False, r"declare \d+ bytes of data, more than the 2"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5 << 29), True, "more than the 2 GiB"),
    ],
)
def test_read_idx_refuses_a_bad_file_naming_it(tmp_path, raw, gz, message):
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    got = refused(read_idx, path)
    assert str(path) in got
    assert re.search(message, got), got


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda z: z[: len(z) // 2], "is cut short: its gzip stream ends early"),
        (lambda z: z[:-8] + bytes(8), "is not a valid gzip file"),  # CRC and size wrong
        (lambda z: z[:12] + bytes(len(z) - 12), "gzip"),  # deflate data zeroed
        (lambda z: z + b"trailing garbage", "is not a valid gzip file"),
        (lambda z: z[:2] + b"\x07" + z[3:], "is not a valid gzip file"),  # unknown method
    ],
)
def test_read_idx_refuses_a_corrupt_gzip_naming_it(tmp_path, mangle, message):
    path = tmp_path / "y.gz"
    path.write_bytes(mangle(gzip.compress(idx_bytes(np.arange(600).reshape(20, 30) % 256))))
    got = refused(read_idx, path)
    assert str(path) in got and message in got


def test_read_idx_refuses_what_is_not_a_file(tmp_path):
    assert f"cannot read {tmp_path}: Is a directory" in refused(read_idx, tmp_path)
    if Path("/dev/zero").exists():  # a device reads without end
        assert "/dev/zero is not a regular file" in refused(read_idx, "/dev/zero")
    assert "No such file" in refused(read_idx, tmp_path / "nowhere")


def test_a_gzip_bomb_after_a_small_header_is_refused_fast_and_small(tmp_path):
    """3 images declared, 96 MiB of zeros after them: the reader reads 2353 bytes, not 96 MiB."""
    head = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    path = gzip_stream(tmp_path / "bomb.gz", head, 96 << 20)
    assert path.stat().st_size < 1 << 20
    got = fast_and_small(read_idx, path, seconds=1.0, mib=5.0)
    assert str(path) in got and r"more bytes of data than the 2352" in got


def test_a_small_gzip_declaring_much_is_refused_without_allocating_it(tmp_path):
    """1.5 GiB declared (under the cap), 1 KB there: no buffer of the declared size."""
    path = tmp_path / "liar.gz"
    path.write_bytes(gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 3 << 29) + bytes(1000)))
    got = fast_and_small(read_idx, path, seconds=1.0, mib=5.0)
    assert "1000 bytes of data for dims (1610612736,) of uint8, which need 1610612736" in got


def test_load_mnist_normalises_and_flattens(tmp_path):
    folder = tiny_mnist(tmp_path / "mnist", n=5, gz=True)
    x, y = load_dataset("mnist", folder)
    images = read_idx(folder / f"{IMAGES}.gz")
    assert x.shape == (5, 784) and x.dtype == np.float32 and y.dtype == np.int64
    expected = (images[2, 3, 4] / 255.0 - MNIST_MEAN) / MNIST_STD
    assert x[2, 3 * 28 + 4] == pytest.approx(expected, rel=1e-6)
    assert np.array_equal(y, read_idx(folder / f"{LABELS}.gz"))
    reference = (images.reshape(5, -1).astype(np.float64) / 255.0 - MNIST_MEAN) / MNIST_STD
    assert np.array_equal(x, reference.astype(np.float32))  # chunking changes no bit


@pytest.mark.parametrize("gz", [False, True])
def test_images_and_labels_of_different_counts_are_refused(tmp_path, gz):
    folder = tiny_mnist(tmp_path / "m", n=200, n_labels=50, gz=gz)
    got = refused(load_dataset, "mnist", folder)
    suffix = ".gz" if gz else ""
    assert f"{folder / IMAGES}{suffix} holds 200 images but {folder / LABELS}{suffix}" in got
    assert "holds 50 labels" in got


def test_the_counts_are_compared_before_any_data_is_read(tmp_path, monkeypatch):
    folder = tiny_mnist(tmp_path / "m", n=20, n_labels=19)
    monkeypatch.setattr(data, "_idx_data", lambda *a: pytest.fail("read data first"))
    assert "holds 20 images but" in refused(load_dataset, "mnist", folder)


@pytest.mark.parametrize(
    ("labels", "code", "message"),
    [
        (np.array([1, 2, 10, 3, 11]), 0x08, "label 10 at index 2; expected integers 0 to 9"),
        (np.array([0, 255, 1, 1, 1]), 0x08, "label 255 at index 1"),
        (np.array([0, 1, 2, 3, -1]), 0x09, "label -1 at index 4"),
        (np.array([0, 1, 2, 3, 70000]), 0x0C, "label 70000 at index 4"),
        (np.array([0.0, 1, 2, 3, 4]), 0x0D, "labels of type float32; expected integers"),
        (np.zeros((5, 1)), 0x08, r"labels of dims \(5, 1\); expected \(n,\)"),
    ],
)
def test_labels_must_be_integers_0_to_9(tmp_path, labels, code, message):
    folder = tiny_mnist(tmp_path / "m", n=5)
    write_idx(folder / LABELS, labels, code)
    got = refused(load_dataset, "mnist", folder)
    assert str(folder / LABELS) in got and re.search(message, got), got


@pytest.mark.parametrize(
    ("images", "code", "message"),
    [
        (np.zeros((5, 27, 28)), 0x08, r"images of dims \(5, 27, 28\); expected \(n, 28, 28\)"),
        (np.zeros((5, 784)), 0x08, r"images of dims \(5, 784\)"),
        (np.zeros((5, 28, 28, 1)), 0x08, r"images of dims \(5, 28, 28, 1\)"),
        (np.zeros((5, 28, 28)), 0x0C, "pixels of type int32; expected unsigned bytes"),
        (np.zeros((0, 28, 28)), 0x08, "holds no images"),
    ],
)
def test_images_must_be_28_by_28_bytes(tmp_path, images, code, message):
    folder = tiny_mnist(tmp_path / "m", n=len(images))
    write_idx(folder / IMAGES, images, code)
    got = refused(load_dataset, "mnist", folder)
    assert str(folder / IMAGES) in got and re.search(message, got), got


def test_fashion_mnist_reads_mnists_files_with_its_own_normalisation(tmp_path):
    folder = tiny_mnist(tmp_path / "fashion", n=5, gz=True)
    x, y = load_dataset("fashion_mnist", folder)
    images = read_idx(folder / f"{IMAGES}.gz")
    reference = (images.reshape(5, -1).astype(np.float64) / 255.0 - FASHION_MEAN) / FASHION_STD
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x, reference.astype(np.float32))
    assert np.array_equal(y, read_idx(folder / f"{LABELS}.gz"))
    # mnist's own normalisation is untouched
    x_mnist, _ = load_dataset("mnist", folder)
    assert not np.array_equal(x, x_mnist)


def test_fashion_mnist_without_data_dir_reads_its_default_folder(tmp_path, monkeypatch):
    folder = tiny_mnist(tmp_path / "fashion", n=3)
    monkeypatch.setitem(DATASET_DIRS, "fashion_mnist", str(folder))
    x, y = load_dataset("fashion_mnist")
    assert x.shape == (3, 784) and y.shape == (3,)
    monkeypatch.setitem(DATASET_DIRS, "fashion_mnist", str(tmp_path / "nowhere"))
    assert f"has no {IMAGES}" in refused(load_dataset, "fashion_mnist", None)


@needs_fashion
def test_fashion_mnist_from_debians_package_loads_standardised():
    x, y = load_dataset("fashion_mnist")  # its default folder
    assert x.shape == (60000, 784) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(y), np.full(10, 6000))  # 6000 images per class
    mean, std = x.mean(dtype=np.float64), x.std(dtype=np.float64)
    assert abs(mean) < 1e-3 and abs(std - 1.0) < 1e-3, (mean, std)


def test_mnist_without_its_files_or_data_dir_is_refused(tmp_path):
    assert "needs a data_dir" in refused(load_dataset, "mnist", None)
    (tmp_path / "m").mkdir()
    write_idx(tmp_path / "m" / IMAGES, np.zeros((2, 28, 28)))
    got = refused(load_dataset, "mnist", tmp_path / "m")
    assert f"has no {LABELS} (nor {LABELS}.gz)" in got
    assert "unknown dataset 'svhn'" in refused(load_dataset, "svhn", tmp_path)


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


def test_the_command_line_reports_a_bad_data_file_in_one_line(tmp_path, capsys):
    folder = tiny_mnist(tmp_path / "mnist", n=200, n_labels=50)
    cond = {"system": "fcn", "dataset": "mnist", "data_dir": str(folder), "hidden": 4}
    cond |= {"steps": 5, "inits": 2, "batch_size": 10, "record": ["fc1.weight"]}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"experiment": "m", "conditions": {"c": cond}}))
    argv = ["train", "--config", str(path), "--condition", "c", "--seed", "0"]
    assert main([*argv, "-o", str(tmp_path / "t.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("conjugacy train: error: ")
    assert "holds 200 images but" in err[-1] and "holds 50 labels" in err[-1]
    assert not (tmp_path / "t.zarr").exists()


@pytest.mark.parametrize(
    ("data_dir", "message"),
    [
        (None, "dataset mnist needs it"),
        ("missing", f"has no {IMAGES}"),
        ("labels-only", f"has no {IMAGES}"),
    ],
)
def test_a_data_dir_without_the_files_is_a_config_error(tmp_path, data_dir, message):
    if data_dir == "labels-only":
        (tmp_path / data_dir).mkdir()
        write_idx(tmp_path / data_dir / LABELS, np.zeros(3))
    cond = {"system": "fcn", "dataset": "mnist"}
    if data_dir is not None:
        cond["data_dir"] = str(tmp_path / data_dir)
    with pytest.raises(config.ConfigError, match=message) as err:
        config.resolve({"experiment": "m", "conditions": {"net": cond}})
    assert "config key conditions.net.data_dir" in str(err.value)
    assert LABELS in str(err.value)  # says what was expected


def test_digits_read_without_sklearn_equal_sklearns():
    from sklearn.datasets import load_digits

    pixels, labels = read_digits()
    bunch = load_digits()
    np.testing.assert_array_equal(pixels, bunch.data)
    np.testing.assert_array_equal(labels, bunch.target)
    assert labels.dtype == np.int64 and pixels.shape == (1797, 64)


def test_digits_without_sklearn_is_a_dataset_error(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    assert "needs scikit-learn installed" in refused(read_digits)
    assert "needs scikit-learn installed" in refused(load_dataset, "digits")


def test_digits_from_a_broken_sklearn_is_a_dataset_error(tmp_path, monkeypatch):
    from importlib.machinery import ModuleSpec

    spec = ModuleSpec("sklearn", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: spec)
    path = tmp_path / "datasets" / "data" / "digits.csv.gz"
    assert f"cannot read {path}" in refused(read_digits)
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    assert f"{path}: a table of shape (2, 3); expected (n, 65)" in refused(read_digits)
