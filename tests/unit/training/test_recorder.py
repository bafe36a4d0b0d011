"""The background writer of recorder.py: same bytes as writing in place, errors surface."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conjugacy.stores.contract import TrajectoryWriter, open_trajectory
from conjugacy.training.recorder import Recorder

INITS, STEPS, BLOCK = 3, 150, 16  # 150 = 9 full blocks and a partial one
SHAPES = {"a.weight": (5, 4), "b": (7,)}


def snapshots(seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        tensors = {
            n: rng.standard_normal((INITS, *s)).astype(np.float32) for n, s in SHAPES.items()
        }
        yield tensors, rng.standard_normal(INITS)


def writer(path: Path) -> TrajectoryWriter:
    steps = list(range(0, 2 * STEPS, 2))
    return TrajectoryWriter(path, SHAPES, steps, INITS, "float32", {"seed": 0}, step_block=BLOCK)


def record_all(path: Path, background: bool) -> None:
    rec = Recorder(writer(path), INITS, "float32", BLOCK, background=background)
    for tensors, loss in snapshots():
        rec.record(tensors, loss)
    rec.close()


def files(path: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()
    }


def test_background_store_is_bitwise_the_synchronous_store(tmp_path):
    record_all(tmp_path / "sync.zarr", background=False)
    record_all(tmp_path / "bg.zarr", background=True)
    sync, bg = files(tmp_path / "sync.zarr"), files(tmp_path / "bg.zarr")
    assert len(sync) > 20 and sync.keys() == bg.keys()
    assert [(k, sync[k], bg[k]) for k in sync if sync[k] != bg[k]] == []
    ds = open_trajectory(tmp_path / "bg.zarr")
    expected = list(snapshots())
    np.testing.assert_array_equal(ds["b"].values[:, 77], expected[77][0]["b"])
    np.testing.assert_array_equal(ds["loss"].values[:, -1], expected[-1][1])


def test_a_slow_disk_delays_training_but_loses_and_reorders_nothing(tmp_path, monkeypatch):
    original = TrajectoryWriter.write

    def slow(self, start, tensors, loss):
        time.sleep(0.02)  # the training thread fills the other buffer meanwhile
        original(self, start, tensors, loss)

    monkeypatch.setattr(TrajectoryWriter, "write", slow)
    record_all(tmp_path / "slow.zarr", background=True)
    ds = open_trajectory(tmp_path / "slow.zarr")
    got = ds["a.weight"].values
    for t, (tensors, _) in enumerate(snapshots()):
        np.testing.assert_array_equal(got[:, t], tensors["a.weight"])


def test_flush_waits_until_the_blocks_are_on_disk(tmp_path):
    rec = Recorder(writer(tmp_path / "t.zarr"), INITS, "float32", BLOCK)
    data = list(snapshots())
    for tensors, loss in data[:40]:  # two full blocks handed over, 8 snapshots buffered
        rec.record(tensors, loss)
    rec.flush()  # what a checkpoint does before saving the training state
    group = zarr.open_group(tmp_path / "t.zarr", mode="r")
    np.testing.assert_array_equal(group["loss"][:, :40], np.stack([d[1] for d in data[:40]], 1))
    assert np.isnan(group["loss"][:, 40:]).all()
    assert group.attrs["status"] == "incomplete"
    for tensors, loss in data[40:]:
        rec.record(tensors, loss)
    rec.close()
    assert zarr.open_group(tmp_path / "t.zarr", mode="r").attrs["status"] == "complete"
    assert not rec._thread.is_alive()


def test_a_write_error_is_raised_as_is_in_the_training_thread(tmp_path, monkeypatch):
    original = TrajectoryWriter.write
    disk_full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "somewhere/c/0/0")

    def failing(self, start, tensors, loss):
        if start >= 2 * BLOCK:
            raise disk_full
        original(self, start, tensors, loss)

    monkeypatch.setattr(TrajectoryWriter, "write", failing)
    rec = Recorder(writer(tmp_path / "t.zarr"), INITS, "float32", BLOCK)
    with pytest.raises(OSError) as info:
        for tensors, loss in snapshots():
            rec.record(tensors, loss)
        rec.close()
    assert info.value is disk_full  # the cli turns exactly this into its one-line error
    assert threading.current_thread() is threading.main_thread()
    rec.stop()
    group = zarr.open_group(tmp_path / "t.zarr", mode="r")
    assert group.attrs["status"] == "incomplete"  # never sealed
    assert not np.isnan(group["loss"][:, : 2 * BLOCK]).any()


def test_closing_short_of_the_steps_is_an_error_and_diverged_seals(tmp_path):
    rec = Recorder(writer(tmp_path / "t.zarr"), INITS, "float32", BLOCK)
    data = list(snapshots())
    for tensors, loss in data[:5]:
        rec.record(tensors, loss)
    with pytest.raises(RuntimeError, match="recorded 5 of 150"):
        rec.close()
    rec = Recorder(writer(tmp_path / "d.zarr"), INITS, "float32", BLOCK)
    for tensors, loss in data[:5]:
        rec.record(tensors, loss)
    rec.close("diverged", diverged_step=8)
    attrs = zarr.open_group(tmp_path / "d.zarr", mode="r").attrs
    assert attrs["status"] == "diverged" and attrs["diverged_step"] == 8


def test_block_steps_are_whole_chunks_within_the_buffer(tmp_path, monkeypatch):
    import conjugacy.training.recorder as recorder

    w = writer(tmp_path / "b.zarr")  # 3 inits x (20 + 7) float32 + the float64 loss
    per_step = INITS * (27 * 4 + 8)
    monkeypatch.setattr(recorder, "STEP_BLOCK", BLOCK)
    monkeypatch.setattr(recorder, "BUFFER_BYTES", 5 * BLOCK * per_step + 1)
    assert recorder.block_steps(w, "float32") == 5 * BLOCK  # 5 whole chunks fit
    monkeypatch.setattr(recorder, "BUFFER_BYTES", 0)
    assert recorder.block_steps(w, "float32") == BLOCK  # never less than one chunk
    monkeypatch.setattr(recorder, "BUFFER_BYTES", 1 << 40)
    assert recorder.block_steps(w, "float32") == STEPS  # never more than the trajectory


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_first_bad_names_the_tensor_or_the_loss(bad):
    from conjugacy.training.train import first_bad

    ok = {"a": np.ones((2, 3), dtype=np.float32), "b": np.zeros(4)}
    assert first_bad(np.zeros(2), ok) is None
    assert first_bad(np.array([0.0, bad]), ok) == "non-finite loss"
    for name in ok:
        broken = {n: v.copy() for n, v in ok.items()}
        broken[name].flat[-1] = bad
        assert first_bad(np.zeros(2), broken) == f"non-finite {name}"
    huge = {"a": np.full(4, 1e308)}  # the sum overflows, no element is bad
    assert first_bad(np.zeros(2), huge) is None
