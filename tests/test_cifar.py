"""The CIFAR-10 python-batch reader and the ResNet-20 config, on tiny batch files written here."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import REPO

from conjugacy import config
from conjugacy.systems.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    load_cifar10,
    load_dataset,
    read_cifar_batch,
)
from conjugacy.train import train

BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def write_batch(path: Path, data: np.ndarray, labels: list[int]) -> Path:
    """A batch as the CIFAR site distributes it: a protocol-2 pickle of a dict with bytes keys."""
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img{i}.png".encode() for i in range(len(labels))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path


def tiny_cifar(folder: Path, n: int = 4) -> Path:
    """data_batch_1..5 and test_batch, n images each; image i of batch b has label (b+i) % 10."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for b, name in enumerate([*BATCHES, "test_batch"]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        write_batch(folder / name, data, [(b + i) % 10 for i in range(n)])
    return folder


def test_batch_round_trip_in_channel_planes(tmp_path):
    data = np.zeros((2, 3072), dtype=np.uint8)
    data[1, 1024 + 32 * 5 + 7] = 200  # image 1, green plane, row 5, column 7
    images, labels = read_cifar_batch(write_batch(tmp_path / "b", data, [3, 9]))
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    assert images[1, 1, 5, 7] == 200 and images.sum() == 200
    assert labels.tolist() == [3, 9] and labels.dtype == np.int64


def test_training_set_is_the_five_batches_normalised_per_channel(tmp_path):
    folder = tiny_cifar(tmp_path / "cifar", n=4)
    x, y = load_dataset("cifar10", folder)
    assert x.shape == (20, 3072) and x.dtype == np.float32
    assert y.tolist() == [(b + i) % 10 for b in range(5) for i in range(4)]
    raw = read_cifar_batch(folder / "data_batch_3")[0]  # images 8..11 of the set
    for c in range(3):
        expected = (raw[2, c, 4, 6] / 255.0 - CIFAR_MEAN[c]) / CIFAR_STD[c]
        assert np.isclose(x[10].reshape(3, 32, 32)[c, 4, 6], expected, atol=1e-6)
    xt, yt = load_cifar10(folder, split="test")
    assert xt.shape == (4, 3072) and yt.tolist() == [5, 6, 7, 8]


def test_a_batch_that_is_not_one_is_refused(tmp_path):
    evil = tmp_path / "evil"
    evil.write_bytes(pickle.dumps({b"data": os.getcwd}))  # would call a function on load
    with pytest.raises(ValueError, match=r"not a CIFAR-10 python batch .*posix\.getcwd"):
        read_cifar_batch(evil)
    (tmp_path / "list").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="expected a dict with b'data' and b'labels'"):
        read_cifar_batch(tmp_path / "list")
    short = write_batch(tmp_path / "short", np.zeros((2, 100), np.uint8), [1, 2])
    with pytest.raises(ValueError, match=r"data \(2, 100\) and 2 labels"):
        read_cifar_batch(short)


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
