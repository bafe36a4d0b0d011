"""Your own runs in the workflow: `system: external` conditions read their stores, train nothing.

Stores written by another program (xarray's to_zarr: no seal of ours) and by
the project's writer both count; a changed store reruns exactly its spectrum
and what comes after; a store that breaks the contract stops the run before
any job, naming it.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import copy_project, dry_run, snakemake, write_config

SEEDS = [0, 1, 2, 3]
CONFIG = {
    "experiment": "own",
    "seeds": SEEDS,
    "compare": {"permutations": 99},
    "conditions": {
        "slow": {"system": "external", "trajectories": "runs/slow/seed{seed}.zarr"},
        "fast": {
            "system": "external",
            "trajectories": ["runs/fast/seed{seed}-a.zarr", "runs/fast/seed{seed}-b.zarr"],
            "koopman": {"rank": 4},
        },
    },
}


def rotation_run(path: Path, rate: float, seed: int, inits: int = 2) -> Path:
    """A trajectory store of x_{t+1} = A x_t (a decaying rotation), written by xarray."""
    rng = np.random.default_rng(seed)
    a = 0.97 * np.array([[np.cos(rate), -np.sin(rate)], [np.sin(rate), np.cos(rate)]])
    a = np.kron(np.eye(2), a)
    x = np.zeros((inits, 30, 4))
    x[:, 0] = rng.normal(size=(inits, 4))
    for t in range(29):
        x[:, t + 1] = x[:, t] @ a.T
    ds = xr.Dataset(
        {"w": (("init", "step", "w_dim0"), x), "loss": (("init", "step"), (x**2).sum(-1))},
        coords={"step": np.arange(30)},
        attrs={"optimizer": "my own", "seed": seed},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("external"))
    for seed in SEEDS:
        rotation_run(root / f"runs/slow/seed{seed}.zarr", 0.1, seed)
        rotation_run(root / f"runs/fast/seed{seed}-a.zarr", 0.3, 10 + seed)
        rotation_run(root / f"runs/fast/seed{seed}-b.zarr", 0.3, 20 + seed)
    config = write_config(root / "own.yaml", CONFIG)
    snakemake(root, "--cores", "2", "--configfile", str(config), "--quiet", "rules")
    return root


def test_the_workflow_compares_stores_it_did_not_train(project: Path) -> None:
    results = project / "results" / "own"
    assert not (results / "trajectories").exists()  # nothing trained
    spectrum = xr.open_zarr(results / "spectra/fast/seed2.zarr", consolidated=False)
    assert spectrum.attrs["condition"] == "fast" and spectrum.attrs["seed"] == 2
    assert spectrum.attrs["n_inits"] == 4  # two stores of two inits, pooled
    eigen = np.sort_complex(spectrum["eigenvalues"].values)
    rate = np.abs(np.angle(eigen)).max()
    assert np.isclose(rate, 0.3, atol=1e-8) and np.allclose(np.abs(eigen), 0.97, atol=1e-8)
    row = pd.read_csv(results / "conjugacy.csv").iloc[0]
    assert {row.condition_a, row.condition_b} == {"slow", "fast"}
    assert row.n_between == 16 and row.verdict == "not conjugate"
    summary = (results / "summary.md").read_text()
    assert "## Your own runs" in summary and "runs/slow/seed{seed}.zarr" in summary
    assert "optimizer my own" in summary
    assert "| train |" not in summary


def test_a_changed_store_reruns_its_spectrum_and_after_only(project: Path) -> None:
    config = project / "own.yaml"
    assert not dry_run(project, config)
    rotation_run(project / "runs/slow/seed1.zarr", 0.12, 1)
    jobs = collections.Counter((j["rule"], j["condition"]) for j in dry_run(project, config))
    assert jobs == {  # the Koopman job of the block of seeds that holds seed 1
        ("koopman_slow_block0", "slow"): 1,
        ("compare", None): 1,
        ("figures_runs", None): 1,
        ("figures_verdicts", None): 1,
        ("summary", None): 1,
        ("all", None): 1,
    }


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "runs/slow/seed3.zarr does not exist"),
        ("not a store", "is not a Zarr store"),
        ("too few steps", "koopman.delays"),
    ],
)
def test_a_store_that_breaks_the_contract_stops_before_any_job(tmp_path, damage, message):
    root = copy_project(tmp_path / "p")
    for seed in SEEDS:
        rotation_run(root / f"runs/slow/seed{seed}.zarr", 0.1, seed)
        rotation_run(root / f"runs/fast/seed{seed}-a.zarr", 0.3, seed)
        rotation_run(root / f"runs/fast/seed{seed}-b.zarr", 0.3, seed)
    bad = root / "runs/slow/seed3.zarr"
    cfg = {**CONFIG, "conditions": {**CONFIG["conditions"]}}
    if damage == "missing":
        for child in sorted(bad.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
        bad.rmdir()
    elif damage == "not a store":
        (bad / "zarr.json").unlink()
    else:
        cfg["conditions"]["slow"] = {**cfg["conditions"]["slow"], "koopman": {"delays": 40}}
    config = write_config(root / "bad.yaml", cfg)
    run = snakemake(root, "--cores", "1", "--configfile", str(config), check=False)
    assert run.returncode != 0
    assert message in run.stderr and "conditions.slow" in run.stderr
    assert not (root / "results").exists()
