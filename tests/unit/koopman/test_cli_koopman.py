"""The koopman command on a trained store, against a dense DMD of the same data in plain numpy."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import REPO
from scipy.optimize import linear_sum_assignment

from conjugacy.cli import main

CONFIG = REPO / "config" / "config.yaml"


@pytest.fixture(scope="module")
def omd_store(tmp_path_factory) -> Path:
    """The shipped omd condition, seed 0, trained through the CLI (25 inits x 100 snapshots)."""
    out = tmp_path_factory.mktemp("train") / "omd.zarr"
    argv = ["train", "--config", str(CONFIG), "--condition", "omd", "--seed", "0"]
    assert main([*argv, "-o", str(out), "--quiet"]) == 0
    return out


def dense_dmd(data: np.ndarray, delays: int, rank: int):
    """Exact DMD by a full SVD of the pooled, delay-embedded pairs (inits, steps, p) of `data`.

    Lifted snapshot t of an init: [s_t, s_(t+1), ..., s_(t+delays)]; pairs never
    cross inits. Returns eigenvalues, amplitudes (rank, inits) and all singular values.
    """
    n, t, p = data.shape
    m = t - delays
    lifted = np.concatenate([data[:, k : k + m] for k in range(delays + 1)], axis=2)
    x = lifted[:, :-1].reshape(-1, p * (delays + 1)).T
    y = lifted[:, 1:].reshape(-1, p * (delays + 1)).T
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    u, sr, v = u[:, :rank], s[:rank], vh[:rank].T
    mu, w = np.linalg.eig(u.T @ y @ v / sr[None, :])
    amplitudes = np.linalg.solve(w, u.T @ lifted[:, 0].T)
    return mu, amplitudes, s


def matched(found: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Indices into `ref` of the best one-to-one matching of `found` (equal sizes)."""
    rows, cols = linear_sum_assignment(np.abs(found[:, None] - ref[None, :]))
    return cols[np.argsort(rows)]


@pytest.mark.parametrize(
    ("argv", "delays", "window", "rank", "route"),
    [
        (["--delays", "4"], 4, slice(None), 10, "qr-wide"),
        (["--delays", "4", "--rank", "3"], 4, slice(None), 3, "covariance"),
        (["--delays", "2", "--window", "10:60"], 2, slice(10, 60), 6, "qr-wide"),
        ([], 0, slice(None), 2, "covariance"),
    ],
    ids=["delays4", "delays4-rank3", "delays2-window", "plain"],
)
def test_koopman_cli_matches_a_dense_dmd_of_the_store(
    tmp_path, omd_store, argv, delays, window, rank, route
):
    """Eigenvalues, |amplitudes| and singular values written by the CLI equal a dense DMD's."""
    spec = tmp_path / "spec.zarr"
    assert main(["koopman", str(omd_store), "-o", str(spec), *argv]) == 0
    ds = xr.open_zarr(spec, consolidated=False)
    data = xr.open_zarr(omd_store, consolidated=False)["x"].values[:, window].astype(np.float64)
    mu, amplitudes, s = dense_dmd(data, delays, rank)
    n, t, _ = data.shape
    assert ds.attrs["route"] == route and ds.attrs["rank"] == rank
    assert ds.attrs["n_pairs"] == n * (t - delays - 1) and ds.attrs["lifted_dim"] == 2 * (
        delays + 1
    )
    assert ds.attrs["condition"] == "omd" and ds.attrs["seed"] == 0
    eig = ds["eigenvalues"].values
    assert eig.shape == (rank,) and eig.dtype == np.complex128
    order = matched(eig, mu)
    np.testing.assert_allclose(eig, mu[order], rtol=0, atol=1e-8)
    assert np.all(np.diff(np.abs(eig)) <= 1e-12)  # stored by decreasing modulus
    # Eigenvectors are unit-norm in both, up to a phase: amplitudes agree in modulus.
    np.testing.assert_allclose(
        np.abs(ds["amplitudes"].values),
        np.abs(amplitudes[order]),
        rtol=0,
        atol=1e-6 * np.abs(amplitudes).max(),
    )
    stored_s = ds["singular_values"].values
    np.testing.assert_allclose(stored_s[:rank], s[:rank], rtol=0, atol=1e-10 * s[0])


def test_koopman_cli_max_residual(tmp_path, omd_store):
    """--max-residual drops the modes above it (before keep) and is stored as an attribute;
    unset, the store has neither the attribute nor a dropped_* variable."""
    plain, cut = tmp_path / "plain.zarr", tmp_path / "cut.zarr"
    assert main(["koopman", str(omd_store), "-o", str(plain), "--delays", "4"]) == 0
    full = xr.open_zarr(plain, consolidated=False)
    assert "max_residual" not in full.attrs and "dropped_eigenvalues" not in full
    residual = np.sort(full["residual"].values)
    limit = float(residual[residual.size // 2])  # about half the modes stay
    argv = ["koopman", str(omd_store), "-o", str(cut), "--delays", "4"]
    assert main([*argv, "--max-residual", repr(limit)]) == 0
    ds = xr.open_zarr(cut, consolidated=False)
    assert ds.attrs["max_residual"] == limit
    assert np.all(ds["residual"].values <= limit)
    assert np.all(ds["dropped_residual"].values > limit)
    assert ds.sizes["mode"] + ds.sizes["dropped"] == full.sizes["mode"]


def test_koopman_cli_refuses_a_max_residual_not_above_zero(tmp_path, omd_store, capsys):
    out = tmp_path / "spec.zarr"
    assert main(["koopman", str(omd_store), "-o", str(out), "--max-residual", "0"]) != 0
    assert "--max-residual" in capsys.readouterr().err
    assert not out.exists()


# The allocator settings of `conjugacy koopman` (conjugacy.memory) move no bit: run with
# and without them on a store whose lifted covariance (2500 square, 50 MB) is above glibc's
# default mmap threshold, the spectra must be equal array by array.
UNTUNED = """
import sys
import conjugacy.memory as memory
if sys.argv[1] == "off":
    memory.keep_freed_memory = memory.share_one_arena = lambda: False
from conjugacy.cli import main
sys.exit(main(["koopman", sys.argv[2], "-o", sys.argv[3], "--delays", "9", "--rank", "6"]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_the_allocator_settings_change_no_bit_of_a_spectrum(tmp_path):
    import subprocess

    import zarr

    rng = np.random.default_rng(4)
    steps = np.arange(300)[None, :, None]
    rates = rng.uniform(0.9, 0.999, size=(1, 1, 250))
    data = rng.standard_normal((10, 1, 250)) * rates**steps + 1e-3 * rng.standard_normal(
        (10, 300, 250)
    )
    store = tmp_path / "t.zarr"
    xr.Dataset({"x": (("init", "step", "x_dim0"), data.astype(np.float32))}).to_zarr(
        store, zarr_format=3, consolidated=False
    )
    for mode in ("off", "on"):
        out = tmp_path / f"{mode}.zarr"
        run = subprocess.run(
            [sys.executable, "-c", UNTUNED, mode, str(store), str(out)],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
    off, on = (zarr.open_group(tmp_path / f"{m}.zarr", mode="r") for m in ("off", "on"))
    names = sorted(name for name, _ in off.arrays())
    assert on.attrs["route"] == "covariance" and on.attrs["lifted_dim"] == 2500
    assert "eigenvalues" in names and names == sorted(name for name, _ in on.arrays())
    for name in names:
        assert off[name][...].tobytes() == on[name][...].tobytes(), name
