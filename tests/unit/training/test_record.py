"""conjugacy.record: any nn.Module's tensors, bitwise, in a store every stage accepts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import REPO

import conjugacy
from conjugacy.koopman.spectrum import KoopmanOptions, write_spectrum
from conjugacy.stores.contract import StoreError, open_spectrum, open_trajectory
from conjugacy.training import record as record_module
from conjugacy.training.record import RecordError


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks of one chunk (64 snapshots), so short runs write several blocks; one torch
    thread (tiny ops on two busy cores are slower with more)."""
    monkeypatch.setattr(record_module, "BUFFER_BYTES", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 10),
        torch.nn.BatchNorm1d(10),
        torch.nn.Tanh(),
        torch.nn.Linear(10, 3),
    )
    return model.to(dtype)


def train(model, rec=None, steps=150, first=1, seed=0, state=None, loss_kind="tensor", hook=None):
    """SGD on fixed random batches; returns {step: {name: tensor copy}} after each update.

    `hook(t, model, opt)` runs after the recorder's step t (checkpoints, crashes).
    """
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randn(16, 6, generator=gen).to(dtype) for _ in range(steps + 1)]
    snaps = {first - 1: copies(model)}
    losses = {}
    for t in range(first, steps + 1):
        loss = model(batches[t]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses[t] = loss.detach()
        if rec is not None:
            rec.step(loss=loss if loss_kind == "tensor" else loss.item())
        snaps[t] = copies(model)
        if hook is not None:
            hook(t, model, opt)
    return snaps, losses, opt


def copies(model):
    named = [*model.named_parameters(), *model.named_buffers()]
    return {n: t.detach().clone() for n, t in named}


def stores_equal(a, b) -> None:
    """Every variable and the step coordinate bitwise (NaN == NaN)."""
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in [*a.data_vars, "step"]:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_values_are_the_parameters_at_each_step_bitwise(tmp_path):
    model = make_model()
    path = tmp_path / "run.zarr"
    with conjugacy.record(path, model, ["0.weight", "3.*"], attrs={"seed": 7}) as rec:
        snaps, losses, _ = train(model, rec)
    ds = open_trajectory(path)
    assert ds.attrs["status"] == "complete" and ds.attrs["seed"] == 7
    assert {"torch", "zarr", "conjugacy"} <= set(ds.attrs["versions"])
    assert ds.attrs["role"] == "trajectory" and ds.attrs["integrity"]
    np.testing.assert_array_equal(ds["step"].values, np.arange(151))
    assert ds["0.weight"].dims == ("init", "step", "0.weight_dim0", "0.weight_dim1")
    for name in ("0.weight", "3.weight", "3.bias"):
        assert ds[name].dtype == np.float32
        expected = np.stack([snaps[t][name].numpy() for t in range(151)])
        np.testing.assert_array_equal(ds[name].values[0], expected)
    assert np.isnan(ds["loss"].values[0, 0])  # the initial state has no loss
    np.testing.assert_array_equal(
        ds["loss"].values[0, 1:], [losses[t].double().item() for t in range(1, 151)]
    )
    assert sorted(ds.data_vars) == ["0.weight", "3.bias", "3.weight", "loss"]


def test_every_and_float_loss(tmp_path):
    model = make_model()
    path = tmp_path / "run.zarr"
    with conjugacy.record(path, model, "0.bias", every=4) as rec:
        snaps, losses, _ = train(model, rec, steps=30, loss_kind="float")
    ds = open_trajectory(path)
    np.testing.assert_array_equal(ds["step"].values, np.arange(0, 31, 4))
    expected = np.stack([snaps[t]["0.bias"].numpy() for t in range(0, 31, 4)])
    np.testing.assert_array_equal(ds["0.bias"].values[0], expected)
    np.testing.assert_array_equal(
        ds["loss"].values[0, 1:], [float(losses[t]) for t in range(4, 31, 4)]
    )


def test_bf16_is_stored_as_its_float32_conversion(tmp_path):
    model = make_model(dtype=torch.bfloat16)
    path = tmp_path / "bf16.zarr"
    with conjugacy.record(path, model, ["*.weight"]) as rec:
        snaps, _, _ = train(model, rec, steps=70)
    ds = open_trajectory(path)
    assert ds.attrs["source_dtypes"]["0.weight"] == "bfloat16"
    for name in ("0.weight", "1.weight", "3.weight"):
        assert ds[name].dtype == np.float32
        expected = np.stack([snaps[t][name].float().numpy() for t in range(71)])
        np.testing.assert_array_equal(ds[name].values[0], expected)


def test_glob_selects_parameters_and_buffers(tmp_path):
    model = make_model()
    rec = conjugacy.record(tmp_path / "g.zarr", model, ["1.running_*", "1.num_batches_tracked"])
    assert rec.names == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    snaps, _, _ = train(model, rec, steps=5)
    rec.close()
    ds = open_trajectory(tmp_path / "g.zarr")
    assert ds["1.num_batches_tracked"].dtype == np.float64  # integers as float64
    np.testing.assert_array_equal(ds["1.num_batches_tracked"].values[0], np.arange(6))
    np.testing.assert_array_equal(
        ds["1.running_var"].values[0], np.stack([snaps[t]["1.running_var"] for t in range(6)])
    )
    every_param = conjugacy.record(tmp_path / "all.zarr", model)
    assert every_param.names == [n for n, _ in model.named_parameters()]
    every_param.close()


def test_unknown_name_stops_at_once_listing_the_names(tmp_path):
    path = tmp_path / "x.zarr"
    with pytest.raises(RecordError) as err:
        conjugacy.record(path, make_model(), ["0.weight", "blocks.*.W_out"])
    message = str(err.value)
    assert "\n" not in message and "'blocks.*.W_out'" in message
    assert (
        "its names: 0.weight, 0.bias, 1.weight, 1.bias, 3.weight, 3.bias, 1.running_mean" in message
    )
    assert "1.running_mean" in message
    assert not path.exists()


def test_a_foreign_folder_is_refused(tmp_path):
    path = tmp_path / "mine"
    path.mkdir()
    (path / "notes.txt").write_text("keep")
    with pytest.raises(StoreError, match="holds files conjugacy did not write"):
        conjugacy.record(path, make_model(), "0.bias")
    assert (path / "notes.txt").read_text() == "keep"


def test_the_store_grows_and_is_cut_to_what_was_recorded(tmp_path):
    for steps in (40, 200):  # pre-allocated short (grows) and long (cut at close)
        model = make_model()
        path = tmp_path / f"s{steps}.zarr"
        with conjugacy.record(path, model, "0.bias", steps=steps) as rec:
            snaps, _, _ = train(model, rec, steps=100)
        ds = open_trajectory(path)
        assert ds.sizes["step"] == 101
        np.testing.assert_array_equal(
            ds["0.bias"].values[0, -1], snaps[100]["0.bias"].numpy(), err_msg=str(steps)
        )


def uninterrupted(tmp_path, every=1):
    model = make_model()
    with conjugacy.record(tmp_path / "whole.zarr", model, ["0.weight", "3.bias"], every=every) as r:
        train(model, r)
    return open_trajectory(tmp_path / "whole.zarr")


CRASH = """
import os, sys, torch
sys.path[:0] = [{tests!r}, {here!r}]
import test_record as t
import conjugacy
from conjugacy.training import record
record.BUFFER_BYTES = 1
torch.set_num_threads(1)

def hook(step, model, opt):
    if step == 60:
        rec.flush()  # before the checkpoint: the store never lags it
        torch.save({{"model": model.state_dict(), "opt": opt.state_dict()}}, {ckpt!r})
    if step == 100:
        os._exit(3)  # killed: the snapshots in the buffer are lost, the store is unsealed

model = t.make_model()
rec = conjugacy.record({path!r}, model, ["0.weight", "3.bias"], every={every})
t.train(model, rec, hook=hook)
"""


@pytest.mark.parametrize("every", [1, 3])
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, every):
    path, ckpt = tmp_path / "run.zarr", tmp_path / "ckpt.pt"
    here = REPO / "tests" / "unit" / "training"
    script = CRASH.format(
        tests=str(REPO / "tests"), here=str(here), path=str(path), every=every, ckpt=str(ckpt)
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 3, run.stderr[-3000:]
    with pytest.raises(StoreError, match="never sealed"):
        open_trajectory(path)
    state = torch.load(ckpt)
    model = make_model()
    model.load_state_dict(state["model"])  # the state of step 60, before the recorder starts
    names = ["0.weight", "3.bias"]
    with conjugacy.record(path, model, names, every=every, resume=True, start=60) as rec:
        assert rec.next_step == 61
        train(model, rec, first=61, state=state)
    stores_equal(open_trajectory(path), uninterrupted(tmp_path, every))


def test_resume_without_start_goes_on_after_the_last_snapshot(tmp_path):
    path = tmp_path / "run.zarr"
    names = ["0.weight", "3.bias"]
    states = {}

    def hook(t, model, opt):
        states[t] = {"model": copies_state(model), "opt": copies_state(opt)}
        if t == 97:
            raise RuntimeError("preempted")  # the with block writes what it holds

    model = make_model()
    with pytest.raises(RuntimeError, match="preempted"):
        with conjugacy.record(path, model, names) as rec:
            train(model, rec, hook=hook)
    model = make_model()
    with conjugacy.record(path, model, names, resume=True) as rec:
        assert rec.last_step == 97 and rec.next_step == 98
        train(model, rec, first=98, state=states[97])
    stores_equal(open_trajectory(path), uninterrupted(tmp_path))


def copies_state(obj):
    import copy

    return copy.deepcopy(obj.state_dict())


def test_a_lost_snapshot_is_an_error_on_resume(tmp_path):
    path = tmp_path / "run.zarr"
    model = make_model()
    with pytest.raises(RuntimeError):
        with conjugacy.record(path, model, "0.bias") as rec:
            train(model, rec, steps=40)
            raise RuntimeError("killed")
    with pytest.raises(RecordError, match="snapshot of step 41 is lost"):
        conjugacy.record(path, make_model(), "0.bias", resume=True, start=50)
    with pytest.raises(RecordError, match="holds the tensors"):
        conjugacy.record(path, make_model(), "0.weight", resume=True)


def test_inits_share_a_store(tmp_path):
    path = tmp_path / "shared.zarr"
    runs = {}
    for init in (0, 2, 1):  # until init 1 is there, the store says it is incomplete
        model = make_model(seed=init)
        with conjugacy.record(path, model, "3.weight", every=2, init=init) as rec:
            runs[init], _, _ = train(model, rec, steps=80, seed=init)
        if init == 2:
            with pytest.raises(StoreError, match="incomplete"):
                open_trajectory(path)
    ds = open_trajectory(path)
    np.testing.assert_array_equal(ds["init"].values, [0, 1, 2])
    for init, snaps in runs.items():
        expected = np.stack([snaps[t]["3.weight"].numpy() for t in range(0, 81, 2)])
        np.testing.assert_array_equal(ds["3.weight"].values[init], expected)
    with pytest.raises(RecordError, match="every 2 steps"):
        conjugacy.record(path, make_model(), "3.weight", every=3, init=1)
    short = make_model(seed=3)
    with conjugacy.record(path, short, "3.weight", every=2, init=3) as rec:
        train(short, rec, steps=20)  # fewer steps than the other inits
    with pytest.raises(StoreError, match="incomplete"):
        open_trajectory(path)
    again = make_model(seed=0)  # init 0 again (not resumed): the store starts anew
    with conjugacy.record(path, again, "3.weight", every=2, init=0) as rec:
        train(again, rec, steps=10)
    assert open_trajectory(path).sizes == {
        "init": 1,
        "step": 6,
        "3.weight_dim0": 3,
        "3.weight_dim1": 10,
    }


def fake_distributed(monkeypatch, rank):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)


@pytest.mark.parametrize(("my_rank", "writer", "writes"), [(0, None, 1), (1, None, 0), (1, 1, 1)])
def test_only_the_writing_rank_writes(tmp_path, monkeypatch, my_rank, writer, writes):
    fake_distributed(monkeypatch, my_rank)
    path = tmp_path / "run.zarr"
    model = make_model()
    with conjugacy.record(path, model, "0.bias", rank=writer) as rec:
        assert rec.writing == bool(writes)
        train(model, rec, steps=10)
    assert path.exists() == bool(writes)
    if writes:
        assert open_trajectory(path).sizes["step"] == 11


def test_koopman_accepts_the_store(tmp_path):
    model = make_model()
    path = tmp_path / "run.zarr"
    with conjugacy.record(path, model, ["0.weight", "3.weight"]) as rec:
        train(model, rec, steps=60)
    out = tmp_path / "spectrum.zarr"
    spectrum = write_spectrum(path, out, KoopmanOptions(rank=5))
    assert spectrum.sizes["mode"] == 5
    assert open_spectrum(out).attrs["status"] == "complete"


def test_a_non_finite_parameter_seals_the_store_diverged(tmp_path):
    model = make_model()
    path = tmp_path / "run.zarr"
    with conjugacy.record(path, model, "3.bias") as rec:
        train(model, rec, steps=12)
        with torch.no_grad():
            model[3].bias[1] = float("inf")
        rec.step(loss=None)
    with pytest.raises(StoreError, match="diverged at step 13"):
        open_trajectory(path)
    ds = open_trajectory(path, allow_diverged=True)
    assert ds.attrs["diverged_reason"] == "non-finite 3.bias"


def test_steps_must_not_skip_a_snapshot(tmp_path):
    model = make_model()
    with conjugacy.record(tmp_path / "run.zarr", model, "0.bias", every=5) as rec:
        rec.step(step=4)
        with pytest.raises(RecordError, match="snapshot of step 5 was never taken"):
            rec.step(step=6)
        with pytest.raises(RecordError, match="must increase"):
            rec.step(step=4)
        rec.step(loss=torch.tensor(2.5), step=5)
    ds = open_trajectory(tmp_path / "run.zarr")
    np.testing.assert_array_equal(ds["step"].values, [0, 5])
    assert ds["loss"].values[0, 1] == 2.5


def test_attrs_are_checked(tmp_path):
    with pytest.raises(RecordError, match="may not set"):
        conjugacy.record(tmp_path / "a.zarr", make_model(), "0.bias", attrs={"status": "x"})
    with pytest.raises(RecordError, match="JSON"):
        conjugacy.record(tmp_path / "b.zarr", make_model(), "0.bias", attrs={"x": object()})


def test_import_conjugacy_stays_light():
    code = textwrap.dedent(
        """
        import sys, conjugacy
        assert not {"torch", "xarray", "zarr"} & set(sys.modules), sys.modules.keys()
        assert callable(conjugacy.record) and "torch" in sys.modules
        assert "record" in dir(conjugacy)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
