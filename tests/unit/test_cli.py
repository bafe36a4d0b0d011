"""The command line: stages end to end on small inputs, and one-line errors with status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import REPO
from scipy.optimize import linear_sum_assignment

from conjugacy.cli import main
from conjugacy.stores.contract import open_trajectory

ROOT = REPO
CONFIG = ROOT / "config" / "config.yaml"
ROUTES = {"gram", "covariance", "qr-tall", "qr-wide", "pca"}
VERDICT_COLUMNS = [
    "condition_a",
    "condition_b",
    "n_between",
    "w_between_mean",
    "w_between_sd",
    "n_within",
    "w_within_mean",
    "w_within_sd",
    "p_value",
    "verdict",
    "excluded",
]


@pytest.fixture(scope="module")
def omd_store(tmp_path_factory) -> Path:
    """The shipped omd condition, seed 0, trained through the CLI (25 inits x 100 snapshots)."""
    out = tmp_path_factory.mktemp("train") / "omd.zarr"
    argv = ["train", "--config", str(CONFIG), "--condition", "omd", "--seed", "0"]
    assert main([*argv, "-o", str(out), "--quiet"]) == 0
    return out


def test_train_from_config(omd_store):
    ds = open_trajectory(omd_store)
    cfg = yaml.safe_load(CONFIG.read_text())
    steps = cfg["conditions"]["omd"]["steps"]
    assert ds["x"].shape == (25, steps + 1, 2)
    assert ds.attrs["experiment"] == cfg["experiment"]
    assert ds.attrs["condition"] == "omd"
    assert ds.attrs["seed"] == 0
    assert ds.attrs["status"] == "complete"


def test_train_from_spec_matches_config(tmp_path, omd_store):
    from conjugacy import config

    cond = config.load(CONFIG)["conditions"]["omd"]
    out = tmp_path / "spec.zarr"
    argv = ["train", "--spec", json.dumps(cond), "--condition", "omd", "--seed", "0"]
    assert main([*argv, "--experiment", "x", "-o", str(out), "--quiet"]) == 0
    a, b = open_trajectory(out), open_trajectory(omd_store)
    assert np.array_equal(a["x"].values, b["x"].values)
    assert a.attrs["experiment"] == "x"


def test_koopman_rank_option(tmp_path, omd_store):
    spec = tmp_path / "r.zarr"
    assert main(["koopman", str(omd_store), "-o", str(spec), "--delays", "4", "--rank", "3"]) == 0
    ds = xr.open_zarr(spec, consolidated=False)
    assert ds.sizes["mode"] == 3 and ds.attrs["rank"] == 3


def test_module_help():
    res = subprocess.run(
        [sys.executable, "-m", "conjugacy", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    for cmd in ("train", "koopman", "compare", "figures"):
        assert cmd in res.stdout


def test_the_program_flushes_what_it_printed_and_keeps_its_status(tmp_path, omd_store):
    """`python -m conjugacy` ends without the interpreter's teardown (os._exit): what it
    printed into files (block-buffered) is all there, and the status is main's."""

    def program(*argv: str) -> tuple[int, str, str]:
        out, err = tmp_path / "out.txt", tmp_path / "err.txt"
        with out.open("w") as o, err.open("w") as e:
            argv = [sys.executable, "-m", "conjugacy", *argv]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
            code = subprocess.run(argv, stdout=o, stderr=e, env=env, timeout=120).returncode
        return code, out.read_text(), err.read_text()

    results = tmp_path / "results"
    (results / "trajectories" / "omd").mkdir(parents=True)
    shutil.copytree(omd_store, results / "trajectories" / "omd" / "seed0.zarr")
    code, out, err = program("verify", str(results))
    assert code == 1, err  # its spectrum is missing
    assert "seed0.zarr" in out and "missing" in out and out.endswith("\n")  # the whole table
    assert "1 of 2 stores are whole" in err
    code, out, err = program("koopman", str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "s"))
    assert code == 2
    assert err.startswith("conjugacy koopman: error:") and err.count("\n") == 1


def foreign_store(path: Path, eigenvalues, inits: int = 3, snapshots: int = 12) -> None:
    """A store as another program would write it: one variable w (init, step, a, b), step coord."""
    rng = np.random.default_rng(0)
    n = len(eigenvalues)
    basis = rng.normal(size=(n, n))
    a = basis @ np.diag(eigenvalues) @ np.linalg.inv(basis)
    data = np.empty((inits, snapshots, n))
    data[:, 0] = rng.normal(size=(inits, n))
    for t in range(1, snapshots):
        data[:, t] = data[:, t - 1] @ a.T
    ds = xr.Dataset(
        {"w": (("init", "step", "a", "b"), data.reshape(inits, snapshots, 2, n // 2))},
        coords={"step": np.arange(0, 3 * snapshots, 3)},
    )
    ds.to_zarr(path, zarr_format=3, consolidated=False)


def test_koopman_on_foreign_store(tmp_path):
    traj, spec = tmp_path / "foreign.zarr", tmp_path / "spec.zarr"
    truth = np.array([0.95, 0.8, 0.6, -0.5])
    foreign_store(traj, truth)
    assert main(["koopman", str(traj), "-o", str(spec)]) == 0
    ds = xr.open_zarr(spec, consolidated=False)
    eig = ds["eigenvalues"].values
    assert ds.attrs["observables"] == ["w"]
    np.testing.assert_allclose(np.sort(eig.real), np.sort(truth), atol=1e-8)
    np.testing.assert_allclose(eig.imag, 0, atol=1e-8)
    # a window in optimizer steps (the step coordinate is 0, 3, 6, ...)
    spec2 = tmp_path / "win.zarr"
    assert main(["koopman", str(traj), "-o", str(spec2), "--window", "6:30"]) == 0
    ds2 = xr.open_zarr(spec2, consolidated=False)
    assert ds2.attrs["window"] == [6, 30]
    np.testing.assert_allclose(np.sort(ds2["eigenvalues"].values.real), np.sort(truth), atol=1e-8)


def err_case(tmp_path, omd_store, case):
    """(argv, output path, substrings stderr must contain) of one bad invocation."""
    out = tmp_path / "out.zarr"
    store = str(omd_store)
    missing = tmp_path / "nope.zarr"
    plain = tmp_path / "plain_dir"
    plain.mkdir()
    cases = {
        "missing store": (["koopman", str(missing), "-o", str(out)], [str(missing)]),
        "not a zarr store": (["koopman", str(plain), "-o", str(out)], [str(plain), "Zarr"]),
        "unknown observable": (
            ["koopman", store, "-o", str(out), "--observable", "y"],
            ["--observables", "'y'", "available: ['x']", store],
        ),
        "rank above lifted": (
            ["koopman", store, "-o", str(out), "--delays", "4", "--rank", "11"],
            ["--rank", "at most 10"],
        ),
        "delays too long": (
            ["koopman", store, "-o", str(out), "--delays", "8", "--window", "0:9"],
            ["--delays", "holds 9"],
        ),
        "window reversed": (
            ["koopman", store, "-o", str(out), "--window", "5:3"],
            ["--window", "start < stop"],
        ),
        "pca above dim": (["koopman", store, "-o", str(out), "--pca", "3"], ["--pca", "at most 2"]),
        "unknown condition": (
            ["train", "--config", str(CONFIG), "--condition", "sgd", "--seed", "0"]
            + ["-o", str(out), "--quiet"],
            ["--condition", "'sgd'", "omd", str(CONFIG)],
        ),
        "missing config": (
            ["train", "--config", str(tmp_path / "c.yaml"), "--condition", "omd", "--seed", "0"]
            + ["-o", str(out)],
            [str(tmp_path / "c.yaml"), "does not exist"],
        ),
        "compare missing spectrum": (
            ["compare", str(missing), "-o", str(out)],
            [str(missing)],
        ),
    }
    argv, expected = cases[case]
    return argv, out, expected


ERROR_CASES = [
    "missing store",
    "not a zarr store",
    "unknown observable",
    "rank above lifted",
    "delays too long",
    "window reversed",
    "pca above dim",
    "unknown condition",
    "missing config",
    "compare missing spectrum",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line_with_status_2(tmp_path, omd_store, capsys, case):
    argv, out, expected = err_case(tmp_path, omd_store, case)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"conjugacy {argv[0]}: error:" in err
    assert "Traceback" not in err
    for part in expected:
        assert part in err, (part, err)
    assert not out.exists()


@pytest.mark.parametrize("pca", ["0", "-1"])
def test_koopman_rejects_non_positive_pca(tmp_path, capsys, pca):
    """--pca must be >= 1 (as in the config schema): a clear error, not a crash or a spectrum."""
    traj, out = tmp_path / "small.zarr", tmp_path / "p.zarr"
    foreign_store(traj, [0.9, 0.8, 0.6, -0.5], inits=2, snapshots=8)
    try:
        code = main(["koopman", str(traj), "-o", str(out), "--pca", pca])
    except SystemExit as exc:  # rejected by argparse: also fine
        code = exc.code
    assert code == 2
    assert "--pca" in capsys.readouterr().err
    assert not out.exists()


def test_bad_option_value_exits_2(tmp_path, omd_store, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["koopman", str(omd_store), "-o", str(tmp_path / "o"), "--rank", "zero"])
    assert exc.value.code == 2
    assert "positive integer or 'full'" in capsys.readouterr().err


def test_figures_without_inputs_exits_2(tmp_path, capsys):
    assert main(["figures", "-o", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--spectra" in err and "--comparison" in err
    assert not (tmp_path / "figs").exists()


def spectrum(path: Path, eig, condition: str | None = None, seed: int | None = None) -> None:
    attrs = {} if condition is None else {"condition": condition, "seed": seed}
    path.parent.mkdir(parents=True, exist_ok=True)
    xr.Dataset(
        {"eigenvalues": ("mode", np.asarray(eig, dtype=np.complex128))}, attrs=attrs
    ).to_zarr(path, zarr_format=3, consolidated=False)


def w1(a, b) -> float:
    cost = np.abs(np.asarray(a)[:, None] - np.asarray(b)[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def test_compare_writes_distances_and_verdicts(tmp_path):
    rng = np.random.default_rng(1)
    base_a = np.array([0.9, 0.5 + 0.3j, 0.5 - 0.3j])
    base_b = np.array([0.2, -0.4 + 0.1j, -0.4 - 0.1j])
    paths, eigs = [], {}
    for cond, centre in (("slow", base_a), ("fast", base_b)):
        for seed in range(4):
            eig = centre + 0.01 * rng.normal(size=3)
            # half the stores carry attributes, half are labelled by their path
            p = tmp_path / "spectra" / cond / f"seed{seed}.zarr"
            spectrum(p, eig, *((cond, seed) if seed % 2 else (None, None)))
            paths.append(str(p))
            eigs[cond, seed] = eig
    out = tmp_path / "cmp"
    assert main(["compare", *paths, "-o", str(out), "--pair", "slow:fast"]) == 0

    dist = xr.open_zarr(out / "distances.zarr", consolidated=False)["w"]
    assert dist.dims == ("condition_a", "seed_a", "condition_b", "seed_b")
    assert dist.shape == (2, 4, 2, 4)
    assert dist["condition_a"].values.tolist() == ["slow", "fast"]
    assert dist["seed_b"].values.tolist() == [0, 1, 2, 3]
    w = dist.values.reshape(8, 8)
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(np.diag(w), 0)
    got = dist.sel(condition_a="slow", seed_a=1, condition_b="fast", seed_b=2).item()
    assert got == pytest.approx(w1(eigs["slow", 1], eigs["fast", 2]), rel=1e-12)

    csv = pd.read_csv(out / "distances.csv")
    assert list(csv.columns) == ["condition_a", "seed_a", "condition_b", "seed_b", "w"]
    assert len(csv) == 8 * 7 // 2
    row = csv[(csv.condition_a == "slow") & (csv.seed_a == 0) & (csv.seed_b == 3)]
    row = row[row.condition_b == "slow"]
    assert row["w"].item() == pytest.approx(w1(eigs["slow", 0], eigs["slow", 3]), rel=1e-12)

    table = pd.read_csv(out / "conjugacy.csv")
    assert list(table.columns[: len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS  # then added ones
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.condition_a, row.condition_b) == ("slow", "fast")
    assert row.n_between == 16 and row.n_within == 12
    assert row.w_between_mean > 5 * row.w_within_mean
    # exact enumeration of C(8, 4) = 70 splits, the observed split and its twin are extreme
    assert row.p_value == pytest.approx(2 / 70)
    assert row.verdict == "not conjugate"


def test_compare_conjugate_conditions(tmp_path):
    rng = np.random.default_rng(2)
    centre = np.array([0.9, 0.5 + 0.3j, 0.5 - 0.3j])
    paths = []
    for cond in ("a", "b"):
        for seed in range(5):
            p = tmp_path / cond / f"seed{seed}.zarr"
            spectrum(p, centre + 0.05 * rng.normal(size=3), cond, seed)
            paths.append(str(p))
    out = tmp_path / "cmp"
    assert main(["compare", *paths, "-o", str(out)]) == 0
    table = pd.read_csv(out / "conjugacy.csv")
    assert list(table.columns[: len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS  # then added ones
    assert table.iloc[0].verdict == "conjugate"
