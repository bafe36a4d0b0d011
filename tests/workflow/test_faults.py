"""Fault injection: every reliability promise of docs/recovery.md, and every attack on safety.

Each test injects one fault (a kill, a wall-time stop, divergence, a damaged
store, a bad config, a full disk) and checks that nothing is lost or stale.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from conftest import (
    StepCounter,
    assert_stores_identical,
    copy_project,
    job_env,
    snakemake,
    write_config,
)

from conjugacy import config
from conjugacy.cli import main
from conjugacy.koopman.spectrum import KoopmanOptions
from conjugacy.koopman.spectrum import write_spectrum as koopman
from conjugacy.stores.contract import StoreError, open_trajectory
from conjugacy.stores.verify import verify
from conjugacy.systems.fcn import FCN
from conjugacy.systems.toys import Toy
from conjugacy.training.checkpoint import STATE
from conjugacy.training.train import train
from conjugacy.verdict.compare import write_verdicts as compare


def resolved(**cond) -> dict:
    return config.resolve({"experiment": "f", "conditions": {"c": cond}})["conditions"]["c"]


def trajectory(tmp_path: Path, name: str = "t.zarr", **cond) -> Path:
    out = tmp_path / name
    train(resolved(**cond), 0, out, progress=False)
    return out


# ------------------------------------------------- 2. resume after a wall-time stop


@pytest.mark.parametrize(
    ("system", "cls"),
    [
        (dict(system="omd", steps=55), Toy),
        (dict(system="fcn", hidden=4, steps=55, inits=3, optimizer="adam"), FCN),
    ],
    ids=["toy", "fcn-adam"],
)
def test_restart_resumes_from_the_last_checkpoint(tmp_path, monkeypatch, system, cls):
    k, stop_at = 10, 37
    cond = resolved(**system, checkpoint_every=k, checkpoint_seconds=0)
    reference = tmp_path / "reference.zarr"
    train(cond, 0, reference, progress=False)
    assert not reference.with_name("reference.zarr.partial").exists()  # checkpoints removed

    counter = StepCounter(monkeypatch, cls, stop_after=stop_at)
    out = tmp_path / "resumed.zarr"
    with pytest.raises(KeyboardInterrupt):
        train(cond, 0, out, progress=False)
    work = out.with_name("resumed.zarr.partial")
    assert (work / STATE).is_file() and not out.exists()

    counter.reset()
    train(cond, 0, out, progress=False)
    resumed_from = 55 - counter.calls  # the second job ran only the updates after its checkpoint
    assert resumed_from == 30  # the last multiple of k before the stop
    assert stop_at - resumed_from <= k  # steps redone <= K
    assert_stores_identical(out, reference)
    assert not work.exists()


def test_checkpoints_wait_for_checkpoint_seconds(tmp_path, monkeypatch):
    """A checkpoint is due every checkpoint_every steps but taken only once
    checkpoint_seconds have passed since the last one; the store is the same."""
    import conjugacy.training.train as train_module

    clock = [0.0]  # seconds of training: one per update
    step = Toy.step

    def timed_step(self):
        clock[0] += 1.0
        return step(self)

    saved = []
    save = train_module.SeedRun.save

    def spy(run, next_step):
        saved.append(next_step)
        save(run, next_step)

    monkeypatch.setattr(Toy, "step", timed_step)
    monkeypatch.setattr(train_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(train_module.SeedRun, "save", spy)
    every_five = resolved(system="omd", steps=55, checkpoint_every=5, checkpoint_seconds=12)
    train(every_five, 0, tmp_path / "a.zarr", progress=False)
    assert saved == [15, 30, 45]  # due at 5, 10, ...; 15 s apart (12 s would be 12: not due)

    saved.clear()
    never = resolved(system="omd", steps=55, checkpoint_every=5)  # default: 60 s
    train(never, 0, tmp_path / "b.zarr", progress=False)
    assert saved == []  # 55 s of training: shorter than checkpoint_seconds
    assert_stores_identical(tmp_path / "a.zarr", tmp_path / "b.zarr")


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path, monkeypatch):
    cond = resolved(system="omd", steps=30, checkpoint_every=5, checkpoint_seconds=0)
    counter = StepCounter(monkeypatch, Toy, stop_after=12)
    out = tmp_path / "t.zarr"
    with pytest.raises(KeyboardInterrupt):
        train(cond, 0, out, progress=False)
    counter.reset()
    other = resolved(system="omd", steps=30, checkpoint_every=5, checkpoint_seconds=0, lr=0.02)
    train(other, 0, out, progress=False)
    fresh = tmp_path / "fresh.zarr"
    train(other, 0, fresh, progress=False)
    assert_stores_identical(out, fresh)


# ------------------------------------------------------------------- 3. divergence


def test_divergence_stops_training_and_is_recorded(tmp_path, monkeypatch):
    counter = StepCounter(monkeypatch, FCN)
    path = trajectory(tmp_path, system="fcn", hidden=4, steps=50, inits=2, lr=1e30)
    ds = open_trajectory(path, allow_diverged=True)
    step = ds.attrs["diverged_step"]
    assert ds.attrs["status"] == "diverged" and 0 < step < 50
    assert counter.calls == step + 1  # stopped at the first bad step
    loss = ds["loss"].values
    assert np.isfinite(loss[:, :step]).all() and not np.isfinite(loss[:, step]).all()
    assert np.isnan(ds["fc2.weight"].values[:, step + 1 :]).all()  # nothing after it

    with pytest.raises(StoreError, match=rf"{path}.*diverged at step {step}"):
        open_trajectory(path)
    assert main(["koopman", str(path), "-o", str(tmp_path / "s.zarr")]) == 2
    assert not (tmp_path / "s.zarr").exists()


def test_compare_excludes_a_diverged_run_and_says_so(tmp_path):
    spectra = []
    for seed in range(3):
        for cond, lr in (("a", 0.01), ("b", 0.02)):
            traj = tmp_path / f"{cond}{seed}.zarr"
            train(
                resolved(system="omd", steps=20, lr=lr), seed, traj, condition=cond, progress=False
            )
            spectra.append(tmp_path / "spectra" / cond / f"seed{seed}.zarr")
            koopman(traj, spectra[-1], KoopmanOptions(delays=2))
    bad = tmp_path / "bad.zarr"
    cond = resolved(system="fcn", hidden=3, steps=20, inits=2, lr=1e30)
    train(cond, 7, bad, condition="b", progress=False)
    excluded = koopman(bad, tmp_path / "spectra/b/seed7.zarr", KoopmanOptions(), True)
    assert excluded.sizes["mode"] == 0 and "diverged" in excluded.attrs["excluded"]

    table = compare([*spectra, tmp_path / "spectra/b/seed7.zarr"], tmp_path / "out", [("a", "b")])
    row = table.iloc[0]
    assert row.n_between == 9 and row.n_within == 6  # seed 7 of b left out
    assert row.excluded.startswith("b/seed7: trajectory diverged at step")
    assert pd.read_csv(tmp_path / "out/conjugacy.csv").excluded[0] == row.excluded


# ---------------------------------------------------------- 4. corrupt or truncated store


def chunk_files(store: Path, variable: str) -> list[Path]:
    return sorted(p for p in (store / variable / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["deleted chunk", "garbage chunk", "truncated metadata"])
def test_a_damaged_store_is_named_and_nothing_is_written(tmp_path, capsys, damage):
    (tmp_path / "trajectories/c").mkdir(parents=True)  # where verify looks
    path = trajectory(tmp_path, "trajectories/c/seed0.zarr", system="omd", steps=80)
    assert verify(tmp_path).set_index("store").loc[str(path), "problem"] == ""
    chunk = chunk_files(path, "x")[-1]
    if damage == "deleted chunk":
        chunk.unlink()
    elif damage == "garbage chunk":
        chunk.write_bytes(os.urandom(chunk.stat().st_size))
    else:
        meta = path / "x" / "zarr.json"
        meta.write_text(meta.read_text()[:40])
    out = tmp_path / "spectrum.zarr"
    assert main(["koopman", str(path), "-o", str(out), "--delays", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and "'x'" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert not out.exists()
    row = verify(tmp_path).set_index("store").loc[str(path)]
    assert row.kind == "trajectory" and row.status == "damaged"
    assert str(path) in row.problem and "'x'" in row.problem


def test_verify_reads_the_stores_of_every_stage(tmp_path):
    """Windowed spectra and the windows/predict/accelerate/prune/monitor stores are checked too."""
    import xarray as xr

    from conjugacy.stores.contract import write_dataset

    ds = xr.Dataset({"v": ("row", np.arange(4.0))})
    made = {
        "windows": "windows/windows.zarr",
        "predict": "predict/a/seed0.zarr",
        "accelerate": "accelerate/a.zarr",
        "prune": "prune/a/seed0.zarr",
        "monitor": "monitor/a/seed0.zarr",
    }
    for kind, rel in made.items():
        write_dataset(ds, tmp_path / rel, role=kind)
    traj = trajectory(tmp_path, system="omd", steps=20)
    window = tmp_path / "spectra/c/seed0/window0.zarr"
    koopman(traj, window, KoopmanOptions(delays=2))
    chunk = chunk_files(tmp_path / made["monitor"], "v")[0]
    chunk.write_bytes(os.urandom(chunk.stat().st_size))

    table = verify(tmp_path).set_index("store")
    assert table.loc[str(window), "kind"] == "spectrum"
    assert table.loc[str(window), "status"] == "complete"
    for kind, rel in made.items():
        row = table.loc[str(tmp_path / rel)]
        assert row.kind == kind
        assert row.status == ("damaged" if kind == "monitor" else "complete"), kind
    assert "'v'" in table.loc[str(tmp_path / made["monitor"]), "problem"]


def test_a_damaged_spectrum_stops_compare(tmp_path, capsys):
    spectra = []
    for seed in range(2):
        traj = trajectory(tmp_path, f"t{seed}.zarr", system="omd", steps=20)
        spectra.append(tmp_path / "spectra/omd" / f"seed{seed}.zarr")
        koopman(traj, spectra[-1], KoopmanOptions(delays=2))
    chunk_files(spectra[1], "eigenvalues")[0].write_bytes(b"garbage")
    assert main(["compare", *map(str, spectra), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(spectra[1]) in err and "eigenvalues" in err
    assert not (tmp_path / "out" / "conjugacy.csv").exists()


# ----------------------------------------------------------------- 8. disk full


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_fails_clearly_and_leaves_nothing_complete(
    tmp_path, monkeypatch, capsys, code
):
    from zarr.storage import LocalStore

    original = LocalStore.set
    writes = {"n": 0}

    async def failing_set(self, key, value):
        writes["n"] += 1
        if writes["n"] > 12:
            raise OSError(code, os.strerror(code), str(self.root / key))
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", failing_set)
    out = tmp_path / "t.zarr"
    argv = ["train", "--config", "config/config.yaml", "--condition", "omd", "--seed", "0"]
    assert main([*argv, "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and os.strerror(code) in err and "Traceback" not in err
    assert not out.exists()  # no half-written store where a complete one belongs
    partial = out.with_name("t.zarr.partial") / "trajectory.zarr"
    if (partial / "zarr.json").exists():
        assert zarr.open_group(partial, mode="r").attrs["status"] == "incomplete"


# ------------------------------------- 1, 5, 6, 7: the workflow under faults, for real

MANY = {
    "experiment": "faults",
    "seeds": [0, 1, 2, 3],
    "compare": {"permutations": 99},
    "conditions": {
        "omd": {"system": "omd", "steps": 25, "koopman": {"delays": 2}},
        "ogd": {"system": "ogd", "steps": 25, "koopman": {"delays": 2}},
        "boom": {  # every seed diverges: the rest of the workflow must not care
            "system": "fcn",
            "hidden": 3,
            "steps": 20,
            "inits": 2,
            "lr": 1.0e30,
            "koopman": {"delays": 1, "rank": 3},
        },
    },
}


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """A 28-job workflow (12 trainings, 12 spectra, compare, 2 figure jobs, all) on 2 cores."""
    root = copy_project(tmp_path_factory.mktemp("many"))
    config_file = write_config(root / "many.yaml", MANY)
    snakemake(root, "--cores", "2", "--configfile", str(config_file), "--quiet", "rules")
    return root


def test_many_jobs_on_two_cores_all_outputs_whole(many: Path) -> None:
    results = many / "results/faults"
    table = verify(results)
    assert len(table) == 12 + 12 + 1 and (table.problem == "").all(), table.to_string()
    statuses = table.set_index("kind").status
    assert sorted(statuses["trajectory"]) == ["complete"] * 8 + ["diverged"] * 4
    assert not (results / "checkpoints").exists() or not any(
        (results / "checkpoints").rglob("*.pkl")
    )
    verdicts = pd.read_csv(results / "conjugacy.csv")
    boom = verdicts[(verdicts.condition_a == "boom") | (verdicts.condition_b == "boom")]
    assert len(boom) == 2 and (boom.verdict == "inconclusive").all()
    assert all(boom.excluded.str.count("diverged at step") == 4)
    normal = verdicts[~verdicts.index.isin(boom.index)]
    assert normal.n_between.item() == 16 and pd.isna(normal.excluded.item())
    for name in ("spectra", "distances", "w_distributions", "loss"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 1000
    assert main(["verify", str(results)]) == 0


def test_one_core_and_two_cores_give_bitwise_identical_results(many, tmp_path) -> None:
    other = copy_project(tmp_path / "one-core")
    config_file = write_config(other / "many.yaml", MANY)
    snakemake(other, "--cores", "1", "--configfile", str(config_file), "--quiet", "rules")
    a, b = many / "results/faults", other / "results/faults"
    stores = sorted(p.relative_to(a) for p in a.glob("*/*/seed*.zarr"))
    assert len(stores) == 24
    for rel in stores:
        assert_stores_identical(a / rel, b / rel)
    assert (a / "conjugacy.csv").read_text() == (b / "conjugacy.csv").read_text()
    assert (a / "distances.csv").read_text() == (b / "distances.csv").read_text()


BAD = [
    ("conditions.omd.lr", {"lr": -0.1}),
    ("conditions.omd.bogus", {"bogus": 1}),
    ("conditions.omd.koopman.rank", {"koopman": {"delays": 2, "rank": 99}}),
    ("conditions.omd.koopman.delays", {"koopman": {"delays": 40}}),
    ("conditions.omd.steps", {"steps": "ten"}),
]


@pytest.mark.parametrize(("key", "change"), BAD, ids=[k for k, _ in BAD])
def test_a_bad_config_stops_before_any_job_and_touches_nothing(many, key, change) -> None:
    results = many / "results"
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*")}
    cfg = json.loads(json.dumps(MANY))
    cfg["conditions"]["omd"].update(change)
    bad = write_config(many / "bad.yaml", cfg)
    run = snakemake(many, "--cores", "2", "--configfile", str(bad), check=False)
    assert run.returncode != 0
    assert f"config key {key.rsplit('.bogus', 1)[0]}" in run.stderr
    assert "Execute" not in run.stderr
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*")} == before


# -------------------------------------------------------------- 1. kill mid-training

LONG = {
    "experiment": "kill",
    "seeds": [0],
    "conditions": {
        "long": {
            "system": "fcn",
            "hidden": 5,
            "steps": 6000,
            "inits": 2,
            "checkpoint_every": 200,
            "checkpoint_seconds": 0,
            "koopman": {"delays": 2, "rank": 5},
        },
    },
}


def test_kill_mid_training_then_rerun_is_bitwise_identical(tmp_path) -> None:
    root = copy_project(tmp_path / "kill")
    config_file = write_config(root / "long.yaml", LONG)
    args = ["snakemake", "--cores", "1", "--configfile", str(config_file)]
    proc = subprocess.Popen(
        args, cwd=root, env=job_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    state = root / "results/kill/checkpoints/long/seed0" / STATE
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert state.exists(), "training never reached its first checkpoint"
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and Snakemake die at once, as on a lost node
    proc.wait()
    out = root / "results/kill/trajectories/long/seed0.zarr"
    assert not (out / "zarr.json").exists()  # never a partial store where downstream looks

    # The documented recovery, as typed: no --cores, no --rerun-incomplete (the profile's).
    snakemake(root, "--configfile", str(config_file), "--unlock")  # the lock of the dead run
    rerun = snakemake(root, "--configfile", str(config_file))
    assert "Using workflow specific profile profiles/default" in rerun.stderr
    log = (root / "results/kill/logs/train/long/seed0.log").read_text()
    assert "resuming long seed 0 from its checkpoint at step" in log
    assert not (root / "results/kill/checkpoints/long/seed0").exists()

    reference = tmp_path / "reference.zarr"
    spec = config.training_json(config.resolve(LONG)["conditions"]["long"])
    subprocess.run(
        [sys.executable, "-m", "conjugacy", "train", "--spec", spec, "--experiment", "kill",
         "--condition", "long", "--seed", "0", "--threads", "1", "--quiet", "-o", str(reference)],
        env={**job_env(), "OMP_NUM_THREADS": "1"}, check=True, capture_output=True,
    )  # fmt: skip
    assert_stores_identical(out, reference)
    ours = xr.open_zarr(out, consolidated=False).attrs
    assert ours["status"] == "complete"
