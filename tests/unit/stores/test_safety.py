"""Fault injection by a hostile or careless user: each attack, and what must happen instead.

Nothing a user made or a run computed is deleted or changed, nothing from
disk runs code, and every bad input is a one-line error with exit status 2
before any work.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import REPO

from conjugacy import config
from conjugacy.cli import main
from conjugacy.koopman.spectrum import KoopmanOptions
from conjugacy.koopman.spectrum import write_spectrum as koopman
from conjugacy.stores.contract import StoreError, claim_output, write_dataset
from conjugacy.stores.verify import verify
from conjugacy.training import checkpoint
from conjugacy.training.train import train


def toy(**extra) -> dict:
    cond = {"system": "omd", "steps": 30, **extra}
    return config.resolve({"experiment": "s", "conditions": {"c": cond}})["conditions"]["c"]


def user_folder(path: Path) -> dict[Path, bytes]:
    """A folder with a user's files in it; returns their contents, to check nothing changed."""
    (path / "sub").mkdir(parents=True)
    files = {path / "notes.txt": b"my thesis", path / "sub" / "data.bin": os.urandom(64)}
    for file, content in files.items():
        file.write_bytes(content)
    return files


def untouched(files: dict[Path, bytes]) -> bool:
    return all(f.is_file() and f.read_bytes() == c for f, c in files.items())


def one_error_line(capsys, *names: object) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for name in names:
        assert str(name) in err, (name, err)
    return err


def train_args(out: Path, *extra: str) -> list[str]:
    argv = ["train", "--config", "config/config.yaml", "--condition", "omd", "--seed", "0"]
    return [*argv, "--quiet", "-o", str(out), *extra]


@pytest.fixture
def trajectory(tmp_path) -> Path:
    out = tmp_path / "t.zarr"
    train(toy(), 0, out, progress=False, condition="c")
    return out


# ----------------------------------------------- 1. outputs never replace what is not ours


def test_train_refuses_an_output_folder_of_the_user(tmp_path, capsys):
    files = user_folder(tmp_path / "precious_out")
    assert main(train_args(tmp_path / "precious_out")) == 2
    one_error_line(capsys, tmp_path / "precious_out", "not a trajectory store")
    assert untouched(files)


def test_train_refuses_a_checkpoint_folder_of_the_user(tmp_path, capsys):
    files = user_folder(tmp_path / "precious_ck")
    out = tmp_path / "t.zarr"
    assert main(train_args(out, "--checkpoint-dir", str(tmp_path / "precious_ck"))) == 2
    one_error_line(capsys, tmp_path / "precious_ck")
    assert untouched(files) and not out.exists()


def test_checkpoint_dir_dot_deletes_nothing(tmp_path, capsys, monkeypatch):
    files = user_folder(tmp_path / "cwd")
    monkeypatch.chdir(tmp_path / "cwd")
    repo_config = REPO / "config/config.yaml"
    argv = ["train", "--config", str(repo_config), "--condition", "omd", "--seed", "0"]
    assert main([*argv, "--quiet", "-o", str(tmp_path / "t.zarr"), "--checkpoint-dir", "."]) == 2
    one_error_line(capsys, "checkpoint folder .")
    assert untouched(files)


def test_koopman_refuses_a_user_folder_and_its_own_input(trajectory, tmp_path, capsys):
    files = user_folder(tmp_path / "kout")
    assert main(["koopman", str(trajectory), "-o", str(tmp_path / "kout")]) == 2
    one_error_line(capsys, tmp_path / "kout")
    assert untouched(files)
    before = {p: p.read_bytes() for p in trajectory.rglob("*") if p.is_file()}
    for out in (trajectory, trajectory / "inner.zarr"):
        assert main(["koopman", str(trajectory), "-o", str(out)]) == 2
        one_error_line(capsys, "the input")
    assert {p: p.read_bytes() for p in trajectory.rglob("*") if p.is_file()} == before


def test_a_store_of_our_own_of_the_same_role_is_replaced_and_no_other(trajectory, tmp_path):
    spectrum = tmp_path / "s.zarr"
    koopman(trajectory, spectrum, KoopmanOptions(delays=2))
    koopman(trajectory, spectrum, KoopmanOptions(delays=3))  # a rerun replaces it
    assert xr.open_zarr(spectrum, consolidated=False).attrs["delays"] == 3
    with pytest.raises(StoreError, match="is a spectrum store, not a trajectory store"):
        train(toy(), 0, spectrum, progress=False)
    with pytest.raises(StoreError, match="is a trajectory store, not a spectrum store"):
        koopman(spectrum, trajectory, KoopmanOptions())
    train(toy(), 1, trajectory, progress=False)  # a trajectory replaces a trajectory
    assert xr.open_zarr(trajectory, consolidated=False).attrs["seed"] == 1


@pytest.mark.parametrize("role", ["predict", "prune", "monitor", "accelerate", "distances"])
def test_every_stage_claims_its_output_the_same_way(tmp_path, role):
    files = user_folder(tmp_path / "out")
    with pytest.raises(StoreError, match="holds files conjugacy did not write"):
        claim_output(tmp_path / "out", role)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is not a"):
        claim_output(tmp_path / "file", role)
    assert untouched(files)
    assert claim_output(tmp_path / "new", role) == tmp_path / "new"  # nothing there: fine


# ------------------------------------------------ 2. nothing from a checkpoint runs code


class Planted:
    """A pickle payload: unpickling it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_planted_pickle_checkpoint_never_runs(tmp_path, caplog):
    work = tmp_path / "ck"
    work.mkdir()
    marker = tmp_path / "PWNED"
    (work / "state.pkl").write_bytes(pickle.dumps({"key": "x", "system": Planted(marker)}))
    out = tmp_path / "t.zarr"
    with caplog.at_level(logging.WARNING):
        train(toy(), 0, out, progress=False, checkpoint_dir=work)
    assert not marker.exists()
    assert "never read" in caplog.text
    assert xr.open_zarr(out, consolidated=False).attrs["status"] == "complete"
    assert not work.exists()  # the old checkpoint folder was ours, and is cleaned up


def test_arrays_that_need_pickle_are_refused(tmp_path, caplog):
    work = tmp_path / "ck"
    checkpoint.claim(work)
    (work / checkpoint.STORE).mkdir()
    np.savez(work / "state-5.npz", a0=np.array([Planted(tmp_path / "PWNED")], dtype=object))
    doc = {"key": "k", "next_step": 5, "arrays": "state-5.npz", "state": {"__array__": "a0"}}
    (work / checkpoint.STATE).write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        assert checkpoint.load(work, "k") is None
    assert "unreadable checkpoint" in caplog.text and not (tmp_path / "PWNED").exists()
    doc["arrays"] = "../../elsewhere.npz"  # a path out of the folder is not followed
    (work / checkpoint.STATE).write_text(json.dumps(doc))
    assert checkpoint.load(work, "k") is None


def test_checkpoint_state_round_trips_bit_for_bit(tmp_path):
    import torch

    state = {
        "params": {"w": torch.randn(3, 4), "h": torch.randn(2).to(torch.bfloat16)},
        "optimizer": {
            "state": {0: {"step": torch.tensor(7.0)}},
            "param_groups": [{"betas": (0.9, 0.98), "lr": 1e-3}],
        },  # fmt: skip
        "rng": np.random.default_rng(3).bit_generator.state,
        "order": np.arange(10)[::-1].copy(),
        "nothing": None,
    }
    work = tmp_path / "ck"
    checkpoint.claim(work)
    (work / checkpoint.STORE).mkdir()
    checkpoint.save(work, "k", 12, state)
    back = checkpoint.load(work, "k")
    assert back["next_step"] == 12
    got = back["system"]
    for name in ("w", "h"):
        assert got["params"][name].dtype == state["params"][name].dtype
        assert torch.equal(got["params"][name], state["params"][name])
    assert got["optimizer"]["state"][0]["step"].item() == 7.0
    assert got["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.98)
    assert got["rng"] == state["rng"] and np.array_equal(got["order"], state["order"])
    assert checkpoint.load(work, "another key") is None
    assert sorted(p.name for p in work.iterdir()) == sorted(
        [checkpoint.MARKER, checkpoint.STATE, checkpoint.STORE, "state-12.npz"]
    )


# ----------------------------------------------------- 6. a store that was never sealed


def test_an_unsealed_spectrum_is_refused_by_every_reader(tmp_path, monkeypatch, capsys):
    spectra = []
    for seed in range(3):
        trajectory = tmp_path / f"t{seed}.zarr"
        train(toy(), seed, trajectory, progress=False, condition="c")
        spectra.append(tmp_path / "spectra" / "c" / f"seed{seed}.zarr")
        if seed < 2:
            koopman(trajectory, spectra[-1], KoopmanOptions(delays=2))
    killed = spectra.pop()
    import conjugacy.stores.contract as store

    def killed_before_seal(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "seal", killed_before_seal)
    with pytest.raises(KeyboardInterrupt):
        koopman(trajectory, killed, KoopmanOptions(delays=2))
    monkeypatch.undo()
    attrs = zarr.open_group(killed, mode="r").attrs
    assert attrs["status"] == "incomplete" and "integrity" not in attrs
    assert main(["compare", *map(str, [*spectra, killed]), "-o", str(tmp_path / "out")]) == 2
    one_error_line(capsys, killed, "never sealed")
    assert not (tmp_path / "out" / "conjugacy.csv").exists()
    row = verify(tmp_path).set_index("store").loc[str(killed)]
    assert row.status == "damaged" and "never sealed" in row.problem


def test_a_foreign_store_without_seal_is_accepted(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 30, 4)).cumsum(axis=1)
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"w": (("init", "step", "v"), values)}).to_zarr(
        foreign, consolidated=False, zarr_format=3
    )
    assert koopman(foreign, tmp_path / "s.zarr", KoopmanOptions(rank=3)).sizes["mode"] == 3


def test_verify_reports_missing_stores_and_nan_eigenvalues(trajectory, tmp_path):
    results = tmp_path / "results"
    for cond, seed in (("a", 0), ("a", 1)):
        path = results / "trajectories" / cond / f"seed{seed}.zarr"
        path.parent.mkdir(parents=True, exist_ok=True)
        train(toy(), seed, path, progress=False, condition=cond)
    spectrum = results / "spectra/a/seed0.zarr"
    koopman(results / "trajectories/a/seed0.zarr", spectrum, KoopmanOptions(delays=2))
    nan = xr.Dataset({"eigenvalues": ("mode", np.array([0.5, np.nan], complex))})
    nan_path = results / "spectra/b/seed0.zarr"
    write_dataset(nan.assign_attrs(condition="b", seed=0), nan_path, role="spectrum")
    table = verify(results).set_index("store")
    assert table.loc[str(results / "spectra/a/seed1.zarr"), "status"] == "missing"
    assert table.loc[str(results / "trajectories/b/seed0.zarr"), "status"] == "missing"
    assert "not all finite" in table.loc[str(results / "spectra/b/seed0.zarr"), "problem"]
    conditions = {"a": {"system": "omd", "steps": 30}}
    cfg = config.resolve({"experiment": "s", "seeds": [0, 1, 2], "conditions": conditions})
    table = verify(results, cfg).set_index("store")
    assert table.loc[str(results / "trajectories/a/seed2.zarr"), "status"] == "missing"


# -------------------------------------------- weak spots: one line, exit 2, before any work


def foreign_store(path: Path, values: np.ndarray) -> Path:
    xr.Dataset({"w": (("init", "step", "v"), values)}).to_zarr(
        path, consolidated=False, zarr_format=3
    )
    return path


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.zeros((2, 30, 5)), "every snapshot is zero"),
        (np.random.default_rng(0).normal(size=(2, 30, 5)) * 1e300, "overflow float64"),
        (np.ones((2, 30, 5)) + 1j, "expected real numbers"),
    ],
    ids=["all zero", "near 1e300", "complex"],
)
def test_koopman_on_data_it_cannot_decompose(tmp_path, capsys, values, message):
    path = foreign_store(tmp_path / "bad.zarr", values)
    assert main(["koopman", str(path), "-o", str(tmp_path / "s.zarr")]) == 2
    one_error_line(capsys, path, message)
    assert not (tmp_path / "s.zarr").exists()


def test_koopman_estimates_its_memory_before_reading(tmp_path, capsys):
    path = tmp_path / "huge.zarr"  # 164 KB of metadata that declares 4e10 values
    group = zarr.open_group(path, mode="w", zarr_format=3)
    dims = ("init", "step", "v")
    shape, chunks = (1, 200_000, 200_000), (1, 64, 200_000)
    group.create_array("w", shape=shape, chunks=chunks, dtype="float32", dimension_names=dims)
    assert main(["koopman", str(path), "-o", str(tmp_path / "s.zarr"), "--max-memory", "8G"]) == 2
    err = one_error_line(capsys, path, "GiB", "--max-memory")
    assert "894.1 GiB" in err or "GiB (1 inits" in err


@pytest.mark.parametrize(
    ("eigenvalues", "seed", "message"),
    [
        (np.array([0.5, np.nan]), 0, "not finite"),
        (np.array([0.5, np.inf]), 0, "not finite"),
        (np.zeros(0), 0, "no eigenvalues"),
        (np.array([0.5, 0.9]), "seven", "attribute seed"),
        (np.array([0.5, 0.9]), 1.5, "attribute seed"),
    ],
    ids=["nan", "inf", "empty", "text seed", "fractional seed"],
)
def test_compare_refuses_spectra_it_cannot_use(tmp_path, capsys, eigenvalues, seed, message):
    paths = []
    for i, values in enumerate((np.array([0.5, 0.9]), eigenvalues)):
        ds = xr.Dataset({"eigenvalues": ("mode", values.astype(complex))})
        path = tmp_path / f"s{i}.zarr"
        write_dataset(ds.assign_attrs(condition="c", seed=seed if i else 9), path, role="spectrum")
        paths.append(path)
    assert main(["compare", *map(str, paths), "-o", str(tmp_path / "out")]) == 2
    one_error_line(capsys, paths[1], message)
    assert not (tmp_path / "out").exists()
