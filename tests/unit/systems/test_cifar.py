"""The CIFAR-10 python-batch reader and the ResNet-20 config, on tiny batch files written here.

A batch is a pickle: a hostile one must neither run code nor take much time or
memory (shared references, codec chains, hash bombs, huge arrays, gzip bombs),
and every bad one fails with one DatasetError naming the file.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import REPO

from conjugacy import config
from conjugacy.systems.data import (
    CIFAR_MAX_BYTES,
    CIFAR_MAX_OPS,
    CIFAR_MEAN,
    CIFAR_STD,
    DatasetError,
    load_cifar10,
    load_dataset,
    read_cifar_batch,
)
from conjugacy.training.train import train

BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def batch_dict(data, labels, name: str = "b") -> dict:
    return {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img{i}.png".encode() for i in range(len(labels))],
    }


def write_batch(path: Path, data, labels, protocol: int = 2, gz: bool = False) -> Path:
    """A batch as the CIFAR site distributes it: a protocol-2 pickle of a dict with bytes keys."""
    raw = pickle.dumps(batch_dict(data, labels, path.name), protocol=protocol)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def tiny_cifar(folder: Path, n: int = 4) -> Path:
    """data_batch_1..5 and test_batch, n images each; image i of batch b has label (b+i) % 10."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for b, name in enumerate([*BATCHES, "test_batch"]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        write_batch(folder / name, data, [(b + i) % 10 for i in range(n)])
    return folder


def refused(path: Path, pattern: str) -> str:
    """read_cifar_batch(path) raises one DatasetError, a line naming path and matching pattern."""
    with pytest.raises(DatasetError) as err:
        read_cifar_batch(path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    assert str(path) in message and re.search(pattern, message), message
    assert isinstance(err.value, config.ConfigError)  # the command line reports it, exit 2
    return message


def refused_fast_and_small(path: Path, pattern: str, seconds=2.0, mib=50.0) -> None:
    """refused(path, pattern) in under `seconds`, and in a tracemalloc peak under `mib` MiB.

    Timed without tracemalloc, which slows allocation-heavy code tenfold.
    """
    start = time.perf_counter()
    refused(path, pattern)
    elapsed = time.perf_counter() - start
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    tracemalloc.start()
    try:
        refused(path, pattern)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < mib, f"peak {peak:.1f} MiB"


# Hand-written pickle pieces (protocol 2): an array as numpy pickles one, without PROTO and STOP.
ARRAY = pickle.dumps(np.zeros((1, 3072), np.uint8), protocol=2)[2:-1]


def batch_pickle(data: bytes, labels: bytes) -> bytes:
    """{b"data": <data>, b"labels": <labels>} from the opcodes of each value."""
    return b"\x80\x02}(C\x04data" + data + b"C\x06labels" + labels + b"u."


def python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch byte for byte as Python 2's cPickle wrote the CIFAR site's files."""
    raw = data.tobytes()
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85U\x01b\x87R"
        b"q\x05(K\x01" + struct.pack("<BiBH", 0x4A, data.shape[0], 0x4D, 3072) + b"\x86"
        b"cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xff"
        b"J\xff\xff\xff\xffK\x00tbI00\nT" + struct.pack("<i", len(raw)) + raw + b"tb"
    )
    items = b"".join(b"K" + bytes([v]) for v in labels)
    return (
        b"\x80\x02}q\x01(U\x0bbatch_labelq\x02U\x0btest batch!U\x06labelsq\x08]q\t("
        + items
        + b"eU\x04dataq\n"
        + array
        + b"u."
    )


def test_batch_round_trip_in_channel_planes(tmp_path):
    data = np.zeros((2, 3072), dtype=np.uint8)
    data[1, 1024 + 32 * 5 + 7] = 200  # image 1, green plane, row 5, column 7
    images, labels = read_cifar_batch(write_batch(tmp_path / "b", data, [3, 9]))
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    assert images[1, 1, 5, 7] == 200 and images.sum() == 200
    assert labels.tolist() == [3, 9] and labels.dtype == np.int64


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("order", ["C", "F"])
def test_batches_of_every_protocol_plain_or_gzipped_read_the_same(tmp_path, protocol, gz, order):
    data = np.random.default_rng(1).integers(0, 256, size=(3, 3072), dtype=np.uint8)
    path = write_batch(tmp_path / "b", np.asarray(data, order=order), [0, 9, 4], protocol, gz)
    images, labels = read_cifar_batch(path)
    assert np.array_equal(images.reshape(3, -1), data) and labels.tolist() == [0, 9, 4]


def test_a_batch_as_python_2_wrote_it_reads(tmp_path):
    data = np.random.default_rng(2).integers(0, 256, size=(3, 3072), dtype=np.uint8)
    path = tmp_path / "py2"
    path.write_bytes(python2_batch(data, [7, 0, 3]))
    images, labels = read_cifar_batch(path)
    assert np.array_equal(images.reshape(3, -1), data) and labels.tolist() == [7, 0, 3]


def test_a_full_size_batch_fits_the_caps(tmp_path):
    """10000 images at protocol 2 from Python 3, every pixel 255: the largest real batch pickle."""
    data = np.full((10_000, 3072), 255, np.uint8)
    path = write_batch(tmp_path / "big", data, [i % 10 for i in range(10_000)])
    assert 55 << 20 < path.stat().st_size < CIFAR_MAX_BYTES
    images, labels = read_cifar_batch(path)
    assert images.shape == (10_000, 3, 32, 32) and images.min() == 255 and len(labels) == 10_000


def test_training_set_is_the_five_batches_normalised_per_channel(tmp_path):
    folder = tiny_cifar(tmp_path / "cifar", n=4)
    x, y = load_dataset("cifar10", folder)
    assert x.shape == (20, 3072) and x.dtype == np.float32
    assert y.tolist() == [(b + i) % 10 for b in range(5) for i in range(4)]
    raw = read_cifar_batch(folder / "data_batch_3")[0]  # images 8..11 of the set
    for c in range(3):
        expected = (raw[2, c, 4, 6] / 255.0 - CIFAR_MEAN[c]) / CIFAR_STD[c]
        assert np.isclose(x[10].reshape(3, 32, 32)[c, 4, 6], expected, atol=1e-6)
    # Normalised batch by batch, the same bits as all at once in float64.
    images = np.concatenate([read_cifar_batch(folder / b)[0] for b in BATCHES]) / 255.0
    mean, std = (np.asarray(v)[None, :, None, None] for v in (CIFAR_MEAN, CIFAR_STD))
    assert np.array_equal(x, ((images - mean) / std).reshape(20, -1).astype(np.float32))
    xt, yt = load_cifar10(folder, split="test")
    assert xt.shape == (4, 3072) and yt.tolist() == [5, 6, 7, 8]


def test_a_missing_batch_is_a_dataset_error(tmp_path):
    folder = tiny_cifar(tmp_path / "cifar", n=2)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match=r"has no data_batch_4 \(nor data_batch_4\.gz\)"):
        load_dataset("cifar10", folder)
    with pytest.raises(DatasetError, match="dataset cifar10 needs a data_dir"):
        load_dataset("cifar10", None)


def test_a_batch_that_is_not_one_is_refused(tmp_path):
    evil = tmp_path / "evil"
    evil.write_bytes(pickle.dumps({b"data": os.getcwd}))  # would call a function on load
    refused(evil, r"not a CIFAR-10 python batch .*posix\.getcwd")
    (tmp_path / "list").write_bytes(pickle.dumps([1, 2]))
    refused(tmp_path / "list", "expected a dict with b'data' and b'labels', got a list")
    short = write_batch(tmp_path / "short", np.zeros((2, 100), np.uint8), [1, 2])
    refused(short, r"b'data' is an array of uint8 \(2, 100\); expected a uint8 array \(n, 3072\)")


GOOD = pickle.dumps(batch_dict(np.zeros((2, 3072), np.uint8), [1, 2]), protocol=2)


def _set_of_keys() -> bytes:
    return pickle.dumps({b"data": {1, 2}, b"labels": []}, protocol=4)


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        (b"", "not a CIFAR-10 python batch"),
        (b"garbage \x00\xff bytes", "not a CIFAR-10 python batch"),
        (np.random.default_rng(3).bytes(4096), "not a CIFAR-10 python batch"),
        (GOOD[: len(GOOD) // 2], r"not a CIFAR-10 python batch \(it is cut short\)"),
        (GOOD[:-1], r"not a CIFAR-10 python batch \(it is cut short\)"),  # no STOP
        (GOOD + b"more", "more data after the end of its pickle"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "got keys b'data'"),
        (pickle.dumps({"data": 1, "labels": [1]}), r"got keys 'data', 'labels'"),
        (pickle.dumps({}), "got keys none"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}), "dtype"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.int64), b"labels": [1, 2]}), "dtype"),
        (pickle.dumps(batch_dict(np.zeros((2, 3, 1024), np.uint8), [1, 2])), r"\(2, 3, 1024\)"),
        (pickle.dumps(batch_dict(np.zeros(3072, np.uint8), [1])), r"array of uint8 \(3072,\)"),
        (pickle.dumps(batch_dict([[0] * 3072] * 2, [1, 2])), "b'data' is a list; expected"),
        (pickle.dumps(batch_dict(b"\x00" * 6144, [1, 2])), "b'data' is a bytes"),
        (pickle.dumps(batch_dict(np.zeros((2, 3072), np.uint8), [1])), "1 labels for the 2"),
        (pickle.dumps(batch_dict(np.zeros((2, 3072), np.uint8), [1, 2, 3])), "3 labels for"),
        (pickle.dumps(batch_dict(np.zeros((2, 3072), np.uint8), [1, 10])), "label 10 at index 1"),
        (pickle.dumps(batch_dict(np.zeros((2, 3072), np.uint8), [-1, 1])), "label -1 at index 0"),
        (pickle.dumps(batch_dict(np.zeros((1, 3072), np.uint8), [2**80])), "an int of 81 bits"),
        (pickle.dumps(batch_dict(np.zeros((1, 3072), np.uint8), [True])), "label a bool"),
        (pickle.dumps(batch_dict(np.zeros((1, 3072), np.uint8), [1.0])), "label a float"),
        (pickle.dumps(batch_dict(np.zeros((1, 3072), np.uint8), ["1"])), "label a str"),
        (pickle.dumps(batch_dict(np.zeros((2, 3072), np.uint8), (1, 2))), "b'labels' is a tuple"),
        (pickle.dumps(batch_dict(np.zeros((2, 3072), np.uint8), np.array([1, 2]))), "dtype"),
        (pickle.dumps(batch_dict(np.zeros((2, 3072), np.uint8), [np.int64(1)] * 2)), "scalar"),
        (pickle.dumps({b"data": os.system, b"labels": []}), r"unexpected object posix\.system"),
        (pickle.dumps({b"data": bytearray(4), b"labels": []}), r"builtins\.bytearray"),
        (_set_of_keys(), "opcode EMPTY_SET"),
        (pickle.dumps({b"data": Path("x"), b"labels": []}, protocol=4), "pathlib"),
        (pickle.dumps(batch_dict(np.zeros((1, 3072), np.uint8), [1]), protocol=5)[:-1], "cut"),
    ],
)
def test_a_bad_batch_is_a_dataset_error_naming_it(tmp_path, raw, pattern):
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    refused(path, pattern)


@pytest.mark.parametrize(
    ("mangle", "pattern"),
    [
        (lambda z: z[: len(z) // 2], "cut short: its gzip stream ends early"),
        (lambda z: z[:-8] + bytes(8), "not a valid gzip file"),
        (lambda z: z + b"garbage", "not a valid gzip file"),
    ],
)
def test_a_corrupt_gzipped_batch_is_a_dataset_error_naming_it(tmp_path, mangle, pattern):
    path = tmp_path / "data_batch_1.gz"
    path.write_bytes(mangle(gzip.compress(GOOD)))
    refused(path, pattern)


def nested(width: int, depth: int) -> list:
    """One list of width items, each the same list of the level below: width**depth ints."""
    level = [0] * width
    for _ in range(depth - 1):
        level = [level] * width
    return level


def self_referencing() -> list:
    loop: list = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("data", "labels", "pattern"),
    [
        # 140**4 labels (3.1 GB as int64) from 4 KB: took 18 s and 3 GB, then was accepted
        (np.zeros((1, 3072), np.uint8), [nested(140, 4)], "label a list at index 0"),
        (np.zeros((100, 3072), np.uint8), nested(100, 5), "label a list at index 0"),
        (np.zeros((1, 3072), np.uint8), self_referencing(), "label a list at index 0"),
        (np.zeros((1, 3072), np.uint8), [self_referencing()], "label a list at index 0"),
        (np.zeros((1, 3072), np.uint8), nested(10**4, 3), r"10000 labels for the 1 images"),
        (nested(3072, 3), [1] * 3072, "b'data' is a list; expected"),
    ],
)
def test_a_shared_reference_bomb_is_refused_fast_and_small(tmp_path, data, labels, pattern):
    path = tmp_path / "bomb"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    assert path.stat().st_size < 350_000
    refused_fast_and_small(path, pattern)


def codec_chain(links: int, codec: str = "hex") -> bytes:
    """_codecs.encode(... _codecs.encode(64 bytes, codec) ..., codec): 64 * 2**links bytes."""
    expr = b"C\x40" + bytes(64)
    for _ in range(links):
        expr = b"h\x00" + expr + b"X" + struct.pack("<I", len(codec)) + codec.encode() + b"\x86R"
    return b"\x80\x02c_codecs\nencode\nq\x00" + batch_pickle(expr, b"]")[2:]


def hash_bomb(depth: int) -> bytes:
    """{t: 1} where t = (t', t'), t' = (t'', t''), ...: hashing t takes 2**depth steps."""
    raw = b"\x80\x02K\x00K\x00\x86q\x00"
    for i in range(1, depth):
        raw += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    return raw + b"}h" + bytes([depth - 1]) + b"K\x01s."


def huge_array(rows: int) -> bytes:
    """An array of rows x 3072 bytes made by _reconstruct itself, no data in the file."""
    shape = b"J" + struct.pack("<i", rows) + b"M\x00\x0c\x86"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + shape + b"C\x01b\x87R"
    return batch_pickle(array, b"]")


def subarray_dtype() -> bytes:
    """A uint8 dtype whose state claims a subarray of 10**9 (numpy would take it)."""
    dtype = b"cnumpy\ndtype\nq\x01X\x02\x00\x00\x00u1K\x00K\x01\x87Rq\x02"
    state = b"(K\x03X\x01\x00\x00\x00|h\x02J\x00\xca\x9a;\x85\x86NNJ\xff\xff\xff\xffJ\xff\xff"
    state += b"\xff\xffK\x00tb"
    return batch_pickle(dtype + state, b"]")


def array_state(shape: tuple[int, int], raw_len: int, typecode: bytes = b"u1") -> bytes:
    """An array whose state says shape but carries raw_len bytes."""
    head = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
    state = b"(K\x01" + struct.pack("<BiBi", 0x4A, shape[0], 0x4A, shape[1]) + b"\x86"
    state += b"cnumpy\ndtype\nC" + bytes([len(typecode)]) + typecode + b"K\x00K\x01\x87R"
    state += b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    state += b"\x89B" + struct.pack("<I", raw_len) + bytes(raw_len) + b"tb"
    return batch_pickle(head + state, b"]")


def deep_list(depth: int) -> bytes:
    """labels = [[[...]]], depth lists deep, with a good array."""
    return batch_pickle(ARRAY, b"]" * depth + b"a" * (depth - 1))


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        # 24 hex doublings of 64 bytes: 1 GiB from 393 bytes (took 1.6 GB before)
        (codec_chain(24), "_codecs.encode other than of text to latin1"),
        (codec_chain(24, "zlib"), "_codecs.encode other than of text to latin1"),
        (hash_bomb(80), "a dict key other than bytes or str"),  # 2**80 steps: never ends
        (huge_array(10**7), "an array made other than numpy pickles one"),  # 30 GB
        (subarray_dtype(), "a uint8 dtype with fields or a subarray"),
        (array_state((10**6, 3072), 6144), "an array whose shape does not fit its data"),
        (array_state((2, 3072), 6144, b"O"), r"dtype b'O' \(expected uint8\)"),
        (array_state((2, 3072), 6144, b"V6144"), r"dtype b'V6144'"),
        (b"\x80\x02]" + b"N" * (CIFAR_MAX_OPS + 10) + b".", f"more than {CIFAR_MAX_OPS} pickle"),
        (b"\x80\x02]" + b"]a" * (CIFAR_MAX_OPS // 2 + 10) + b".", "pickle operations"),
        (deep_list(100_000), "label a list at index 0"),
        (b"\x80\x02" + b"(" * 100_000 + b"t.", "got a tuple"),
    ],
)
def test_a_hostile_pickle_is_refused_fast_and_small(tmp_path, raw, pattern):
    path = tmp_path / "data_batch_1"
    path.write_bytes(raw)
    refused_fast_and_small(path, pattern)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("raw", "plain", "gzipped"),
    [  # strings, frames and bytearrays that say they are huge; the file is a few bytes
        (b"\x80\x02T" + struct.pack("<i", 2**31 - 1) + b"x.", "cut short", "past 64 MiB"),
        (b"\x80\x03B" + struct.pack("<I", 2**32 - 1) + b"x.", "cut short", "past 64 MiB"),
        (b"\x80\x04\x8e" + struct.pack("<Q", 2**63 - 1) + b".", "cut short", "past 64 MiB"),
        (b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N.", "got a NoneType", "past 64 MiB"),
        (b"\x80\x05\x96" + struct.pack("<Q", 2**35) + b"x.", "cut short", "past 64 MiB"),
        (b"\x80\x05\x96" + struct.pack("<Q", 2**62) + b"x.", "cut short", "past 64 MiB"),
    ],
)
def test_a_huge_length_in_a_small_file_is_refused_without_allocating_it(
    tmp_path, raw, plain, gzipped, gz
):
    path = tmp_path / "data_batch_1"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    refused_fast_and_small(path, gzipped if gz else plain, seconds=1.0, mib=5.0)


def test_a_gzipped_batch_declaring_a_huge_string_is_refused_before_reading_it(tmp_path):
    path = tmp_path / "data_batch_1.gz"
    path.write_bytes(gzip.compress(b"\x80\x02}C\x04dataB" + struct.pack("<I", 2**32 - 1)))
    refused_fast_and_small(path, "data past 64 MiB .decompressed, 4294967295 bytes", 1.0, 5.0)


def test_a_gzip_bomb_is_read_no_further_than_a_batch_can_be(tmp_path):
    """128 MiB of pickled zeros in 8 MiB strings: refused after 64 MiB, in about that memory."""
    piece = 8 << 20
    path = tmp_path / "data_batch_1.gz"
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(b"\x80\x02](")
        for _ in range(16):
            fh.write(b"B" + struct.pack("<I", piece))
            for _ in range(8):
                fh.write(bytes(1 << 20))
        fh.write(b"e.")
    assert path.stat().st_size < 1 << 20
    refused_fast_and_small(path, "data past 64 MiB .decompressed", seconds=4.0, mib=90.0)


def test_a_plain_batch_larger_than_a_batch_can_be_is_refused_unread(tmp_path):
    path = tmp_path / "data_batch_1"
    with path.open("wb") as fh:
        fh.truncate(CIFAR_MAX_BYTES + 1)  # sparse: no disk used
    refused_fast_and_small(path, f"is {CIFAR_MAX_BYTES + 1} bytes, more than the 64 MiB", 1.0, 1.0)


def resnet_cifar(data_dir) -> dict:
    raw = yaml.safe_load((REPO / "config/experiments/resnet_cifar.yaml").read_text())
    for cond in raw["conditions"].values():
        cond["data_dir"] = str(data_dir)
    return raw


def test_resnet_cifar_config_needs_the_batches(tmp_path):
    with pytest.raises(config.ConfigError, match=r"data_dir: .* has no data_batch_1; expected"):
        config.resolve(resnet_cifar(tmp_path / "nowhere"))
    folder = tiny_cifar(tmp_path / "cifar", n=2)
    (folder / "data_batch_4").unlink()
    with pytest.raises(
        config.ConfigError, match=r"conditions\.\w+\.data_dir: .* has no data_batch_4"
    ):
        config.resolve(resnet_cifar(folder))


def test_resnet20_trains_a_few_steps_on_the_fake_batches(tmp_path):
    cfg = config.resolve(resnet_cifar(tiny_cifar(tmp_path / "cifar", n=4)))
    for cond in cfg["conditions"].values():
        assert set(cond["koopman"]) == set(config.KOOPMAN_KEYS)
    cond = cfg["conditions"]["resnet20"]
    assert cond["arch"] == "resnet20" and cond["dataset"] == "cifar10" and cond["momentum"] == 0.9
    cond = {**cond, "device": "cpu", "steps": 3, "inits": 2, "batch_size": 6}
    ds = xr.open_zarr(train(cond, 0, tmp_path / "r.zarr", progress=False), consolidated=False)
    w = ds["fc.weight"].values
    assert w.shape == (2, 4, 10, 64) and np.isfinite(w).all()
    assert not np.array_equal(w[:, 0], w[:, -1])  # SGD moved the last layer
    assert np.isfinite(ds["loss"].values).all() and ds.attrs["status"] == "complete"
