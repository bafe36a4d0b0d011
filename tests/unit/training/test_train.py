"""Stage 1: the toy optimizers, the batched nets, the recorder and the trajectory store."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import StepCounter

import conjugacy.training.recorder
import conjugacy.training.train
from conjugacy import config
from conjugacy.stores.contract import StoreError, TrajectoryWriter, open_trajectory
from conjugacy.systems.toys import Toy
from conjugacy.training.recorder import Recorder
from conjugacy.training.train import train


def resolved(**cond) -> dict:
    """One resolved condition (defaults filled) from the given keys."""
    cond.setdefault("koopman", {"delays": 0})
    return config.resolve({"experiment": "t", "conditions": {"c": cond}})["conditions"]["c"]


def run(tmp_path, cond, seed=0, name="t.zarr", **kw):
    out = tmp_path / name
    train(cond, seed, out, progress=False, **kw)
    return open_trajectory(out)


# ---------------------------------------------------------------- toy stores


@pytest.mark.parametrize(("steps", "every"), [(6, 1), (7, 2), (8, 2)])
def test_toy_store_layout(tmp_path, steps, every):
    cond = resolved(system="omd", steps=steps, record_every=every)
    ds = run(tmp_path, cond, seed=3, experiment="exp", condition="omd_c")
    expected_steps = list(range(0, steps + 1, every))
    n = len(expected_steps)
    assert ds["x"].dims == ("init", "step", "x_dim0")
    assert ds["x"].shape == (25, n, 2)
    assert ds["x"].dtype == np.float64
    assert ds["loss"].dims == ("init", "step")
    assert ds["loss"].shape == (25, n)
    assert ds["step"].values.tolist() == expected_steps
    assert not np.isnan(ds["x"].values).any()
    assert not np.isnan(ds["loss"].values).any()
    attrs = ds.attrs
    assert attrs["status"] == "complete"
    assert attrs["experiment"] == "exp"
    assert attrs["condition"] == "omd_c"
    assert attrs["seed"] == 3
    # the training settings of the condition, as resolved
    stored = attrs["config"]
    assert {"system", "steps", "record_every", "lr", "jitter", "grid", "domain"} <= set(stored)
    assert {k: cond[k] for k in stored} == stored
    assert "numpy" in attrs["versions"] and "python" in attrs["versions"]


@pytest.mark.parametrize("every", [1, 2])
def test_omd_loss_is_f_of_recorded_snapshot(tmp_path, every):
    cond = resolved(system="omd", steps=9, record_every=every, lr=0.05)
    ds = run(tmp_path, cond)
    x = ds["x"].values
    np.testing.assert_allclose(ds["loss"].values, np.tan(x).sum(axis=-1), rtol=1e-13, atol=0)
    # the iterate moves, so a loss shifted by one step would not match
    assert np.abs(np.diff(ds["loss"].values, axis=1)).min() > 1e-6


def test_ogd_loss_is_f_of_exp_of_recorded_iterate(tmp_path):
    ds = run(tmp_path, resolved(system="ogd", steps=5, lr=0.05))
    u = ds["x"].values
    np.testing.assert_allclose(ds["loss"].values, np.tan(np.exp(u)).sum(axis=-1), rtol=1e-13)


def test_omd_one_step_by_hand(tmp_path):
    # a large step so that part of the grid lands below the domain and is clipped
    lr = 50.0
    cond = resolved(system="omd", steps=1, lr=lr)
    x = run(tmp_path, cond)["x"].values
    x0, x1 = x[:, 0], x[:, 1]
    mirror = 1.0 / (1.0 / x0 + lr / np.cos(x0) ** 2)
    low, high = cond["domain"]
    clipped = mirror < low
    assert clipped.any() and not clipped.all()
    np.testing.assert_allclose(x1, np.clip(mirror, low, high), rtol=1e-14, atol=0)
    assert np.all(x1[clipped] == low)


def test_omd_seed0_is_exact_grid(tmp_path):
    x0 = run(tmp_path, resolved(system="omd", steps=1))["x"].values[:, 0]
    axis = [0.1 + 0.2 * k for k in range(5)]
    expected = np.array([(a, b) for b, a in itertools.product(axis, axis)])  # first fastest
    np.testing.assert_allclose(x0, expected, rtol=0, atol=1e-15)


def test_seed1_jitter_bounded_by_spacing(tmp_path):
    jitter = 0.3
    cond = resolved(system="omd", steps=1, jitter=jitter)
    x0 = run(tmp_path, cond, seed=0, name="s0.zarr")["x"].values[:, 0]
    x1 = run(tmp_path, cond, seed=1, name="s1.zarr")["x"].values[:, 0]
    spacing = (0.9 - 0.1) / 4
    shift = np.abs(x1 - x0)
    assert shift.max() <= jitter * spacing * (1 + 1e-12)
    assert np.all(shift > 0)
    # the jitter is used, not a tiny fraction of it
    assert shift.max() > 0.5 * jitter * spacing
    # seeds > 0 differ from each other too
    x2 = run(tmp_path, cond, seed=2, name="s2.zarr")["x"].values[:, 0]
    assert not np.allclose(x1, x2)


def test_bisection_bracket_shrinks_around_the_root():
    cond = resolved(system="bisection", steps=30)
    toy = Toy(cond, seed=1)

    def f(v):
        return np.tan(v).sum(axis=-1)

    width = np.linalg.norm(toy.b - toy.a, axis=1)
    for _ in range(30):
        assert np.all(f(toy.a) <= 0) and np.all(f(toy.b) >= 0)
        toy.step()
        new_width = np.linalg.norm(toy.b - toy.a, axis=1)
        np.testing.assert_allclose(new_width, width / 2, rtol=1e-6)
        width = new_width
    assert np.all(f(toy.a) <= 0) and np.all(f(toy.b) >= 0)


def test_bisection_recorded_iterate_converges(tmp_path):
    ds = run(tmp_path, resolved(system="bisection", steps=40), seed=2)
    x = ds["x"].values
    fx = np.abs(np.tan(x).sum(axis=-1))
    np.testing.assert_allclose(ds["loss"].values, fx, rtol=1e-12, atol=1e-300)
    # every move is half the previous one: the bracket halves each step
    moves = np.linalg.norm(np.diff(x[:, :20], axis=1), axis=-1)  # before rounding dominates
    np.testing.assert_allclose(moves[:, 1:] / moves[:, :-1], 0.5, rtol=1e-6)
    assert fx[:, -1].max() < 1e-8
    assert np.all(fx[:, -1] < fx[:, 0])


# ---------------------------------------------------------------- nets


def fcn(**kw) -> dict:
    base = {"system": "fcn", "hidden": 6, "steps": 12, "inits": 3, "batch_size": 60}
    return resolved(**{**base, **kw})


def test_fcn_store_layout(tmp_path):
    cond = fcn(hidden=7, steps=5, inits=3)
    ds = run(tmp_path, cond)
    assert set(ds.data_vars) == {"fc2.weight", "loss"}
    w = ds["fc2.weight"]
    assert w.dims == ("init", "step", "fc2.weight_dim0", "fc2.weight_dim1")
    assert w.shape == (3, 6, 10, 7)
    assert w.dtype == np.float32
    assert ds["loss"].shape == (3, 6)
    assert ds["step"].values.tolist() == list(range(6))
    assert ds.attrs["status"] == "complete"
    assert not np.isnan(w.values).any()


def test_fcn_base_init_does_not_depend_on_inits(tmp_path):
    record = ["fc1.weight", "fc2.weight", "fc1.bias", "fc2.bias"]
    one = run(tmp_path, fcn(steps=1, inits=1, bias=True, record=record), seed=4, name="a")
    five = run(tmp_path, fcn(steps=1, inits=5, bias=True, record=record), seed=4, name="b")
    for name in record:
        assert np.array_equal(one[name].values[0, 0], five[name].values[0, 0]), name
    other = run(tmp_path, fcn(steps=1, inits=1, bias=True, record=record), seed=5, name="c")
    assert not np.array_equal(one["fc1.weight"].values[0, 0], other["fc1.weight"].values[0, 0])


def test_fcn_perturbed_inits_within_relative_factor(tmp_path):
    eps = 0.01
    record = ["fc1.weight", "fc2.weight"]
    ds = run(tmp_path, fcn(steps=1, inits=4, init_perturbation=eps, record=record))
    for name in record:
        w0 = ds[name].values[:, 0].astype(np.float64)
        rel = w0[1:] / w0[0] - 1
        assert np.abs(rel).max() <= eps * (1 + 1e-4), name
        assert np.abs(rel).max() > eps / 2, name  # the perturbation is applied
        assert np.all(np.any(rel != 0, axis=tuple(range(1, rel.ndim)))), name
        # each init has its own perturbation
        assert not np.allclose(rel[0], rel[1])


def test_fcn_training_is_deterministic(tmp_path):
    cond = fcn(steps=8, record=["fc1.weight", "fc2.weight"])
    a = run(tmp_path, cond, seed=1, name="a.zarr")
    b = run(tmp_path, cond, seed=1, name="b.zarr")
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        assert np.array_equal(a[name].values, b[name].values), name
    c = run(tmp_path, cond, seed=2, name="c.zarr")
    assert not np.array_equal(a["fc2.weight"].values, c["fc2.weight"].values)
    assert not np.array_equal(a["loss"].values, c["loss"].values)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fcn_batching_does_not_couple_inits(tmp_path, optimizer):
    lr = 0.1 if optimizer == "sgd" else 0.01
    record = ["fc1.weight", "fc2.weight"]
    kw = {"steps": 20, "optimizer": optimizer, "lr": lr, "record": record}
    batched = run(tmp_path, fcn(inits=4, **kw), seed=3, name="n4.zarr")
    alone = run(tmp_path, fcn(inits=1, **kw), seed=3, name="n1.zarr")
    for name in record:
        a = batched[name].values[0].astype(np.float64)
        b = alone[name].values[0].astype(np.float64)
        assert np.linalg.norm(a - b) <= 1e-6 * np.linalg.norm(a), name
        # the trajectory moved, so the comparison is not of two copies of the init
        assert np.linalg.norm(a[-1] - a[0]) > 1e-3 * np.linalg.norm(a[0])
    np.testing.assert_allclose(batched["loss"].values[0], alone["loss"].values[0], rtol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_fcn_sgd_gradients_written_out_equal_autograd(bias):
    """The closed-form SGD step against autograd + torch.optim.SGD on the same batches."""
    from conjugacy.systems.fcn import FCN

    cond = fcn(hidden=12, inits=3, batch_size=30, lr=0.5, bias=bias)
    fast, slow = FCN(cond, seed=2), FCN(cond, seed=2)
    slow.closed_form = False
    assert fast.closed_form
    start = fast.snapshot()
    for _ in range(25):
        np.testing.assert_allclose(fast.step(), slow.step(), rtol=2e-5)
    moved = 0.0
    for name, a in fast.snapshot().items():
        b = slow.snapshot()[name]
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), name
        moved = max(moved, float(np.abs(a - start[name]).max() / np.abs(b).max()))
    assert moved > 1e-2  # lr 0.5 for 25 steps moved the weights: not two copies of the init


def test_fcn_loss_decreases_on_digits(tmp_path):
    ds = run(tmp_path, fcn(hidden=10, steps=40, inits=2, lr=0.1))
    loss = ds["loss"].values
    assert np.isfinite(loss).all()
    assert loss[:, :5].mean() > 1.5 * loss[:, -5:].mean()
    # the starting loss is that of a near-uniform guess over 10 classes
    assert abs(loss[:, 0].mean() - np.log(10)) < 0.5


# ---------------------------------------------------------------- recorder


def test_block_not_dividing_steps_writes_every_snapshot(tmp_path, monkeypatch):
    cond = resolved(system="omd", steps=10, lr=0.05)
    ref = run(tmp_path, cond, name="ref.zarr")
    monkeypatch.setattr(
        conjugacy.training.recorder, "BUFFER_BYTES", 0
    )  # one chunk of steps per write
    monkeypatch.setattr(conjugacy.training.recorder, "STEP_BLOCK", 3)  # 11 snapshots: 3 + 3 + 3 + 2
    small = run(tmp_path, cond, name="small.zarr")
    assert not np.isnan(small["x"].values).any()
    assert not np.isnan(small["loss"].values).any()
    assert np.array_equal(small["x"].values, ref["x"].values)
    assert np.array_equal(small["loss"].values, ref["loss"].values)


def test_recorder_with_writer_blocks(tmp_path):
    path = tmp_path / "r.zarr"
    steps = list(range(0, 20, 2))  # 10 snapshots
    writer = TrajectoryWriter(
        path, {"w": (3, 2)}, steps, inits=2, dtype="float32", attrs={}, step_block=4
    )
    rec = Recorder(writer, inits=2, dtype="float32", block=3)
    data = np.arange(2 * 10 * 6, dtype=np.float32).reshape(2, 10, 3, 2)
    loss = np.arange(20, dtype=np.float64).reshape(2, 10) + 0.5
    for t in range(10):
        rec.record({"w": data[:, t]}, loss[:, t])
    rec.close()
    ds = open_trajectory(path)
    assert ds["step"].values.tolist() == steps
    assert np.array_equal(ds["w"].values, data)
    assert np.array_equal(ds["loss"].values, loss)
    assert ds.attrs["status"] == "complete"


def test_incomplete_recording_is_refused(tmp_path):
    path = tmp_path / "cut.zarr"
    writer = TrajectoryWriter(path, {"w": (2,)}, list(range(6)), 2, "float64", {}, step_block=2)
    rec = Recorder(writer, inits=2, dtype="float64", block=2)
    for t in range(3):
        rec.record({"w": np.full((2, 2), t, dtype=np.float64)}, np.zeros(2))
    with pytest.raises(RuntimeError, match="3 of 6"):
        rec.close()
    import zarr

    assert zarr.open_group(path, mode="r").attrs["status"] == "incomplete"
    with pytest.raises(StoreError, match="incomplete") as err:
        open_trajectory(path)
    assert str(path) in str(err.value)


def test_training_killed_midway_leaves_no_store_at_the_output(tmp_path, monkeypatch):
    """The partial store stays in the working directory, marked incomplete."""
    cond = resolved(system="omd", steps=10)
    StepCounter(monkeypatch, Toy, stop_after=5)
    monkeypatch.setattr(conjugacy.training.recorder, "BUFFER_BYTES", 0)
    monkeypatch.setattr(conjugacy.training.recorder, "STEP_BLOCK", 2)
    out = tmp_path / "killed.zarr"
    with pytest.raises(KeyboardInterrupt):
        train(cond, 0, out, progress=False)
    assert not out.exists()
    partial = out.with_name(out.name + ".partial") / "trajectory.zarr"
    with pytest.raises(StoreError, match="incomplete") as err:
        open_trajectory(partial)
    assert str(partial) in str(err.value)


def test_cuda_condition_without_a_gpu_fails_clearly(tmp_path, monkeypatch):
    """CI has no GPU: the cuda path must refuse with a message, not a torch traceback."""
    import torch

    from conjugacy.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cond = fcn(hidden=3, steps=2, inits=2, device="cuda")
    with pytest.raises(ConfigError, match="device: cuda"):
        train(cond, 0, tmp_path / "t.zarr", progress=False)
    assert not (tmp_path / "t.zarr").exists()
