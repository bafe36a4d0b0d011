"""The spectral-Grassmann distance (ot.sgot) and `conjugacy compare --distance sgot`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conjugacy.api import compare
from conjugacy.cli import main
from conjugacy.stores.contract import write_dataset
from conjugacy.verdict.distance import modes_gram, sgot_pairwise, wasserstein


def operator(seed: int = 0, n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and right eigenvectors of a random real n x n matrix."""
    mu, v = np.linalg.eig(np.random.default_rng(seed).standard_normal((n, n)))
    return mu.astype(np.complex128), v.astype(np.complex128)


def test_identical_operators_are_at_zero():
    mu, v = operator()
    w = sgot_pairwise([mu, mu], modes_gram([v, v]))
    assert w[0, 1] < 1e-7  # sqrt(1 - delta^2) of delta = 1 up to rounding


def test_basis_scaling_and_order_do_not_matter():
    """Eigenvectors are directions: scaling a column or reordering the pairs changes nothing."""
    mu, v = operator()
    order = np.array([3, 0, 4, 1, 2])
    scaled = v[:, order] * np.array([2.0, -1.0, 1j, 0.5, 3.0])[None, :]
    assert sgot_pairwise([mu, mu[order]], modes_gram([v, scaled]))[0, 1] < 1e-7


def test_shifted_eigenvalue_with_the_same_eigenvectors_is_w1_times_root_eta():
    mu, v = operator()
    moved = mu.copy()
    moved[0] += 0.1
    for eta in (1.0, 0.5):
        w = sgot_pairwise([mu, moved], modes_gram([v, v]), eta=eta)[0, 1]
        assert w == pytest.approx(np.sqrt(eta) * wasserstein(mu, moved), rel=1e-6)
        assert w > 0


def test_one_dimensional_case_by_hand():
    """One eigenpair each in the plane: delta = cos(45 deg)^2 (right and dual left vectors),
    ground distance sqrt(eta 0.1^2 + (1 - eta)(1 - delta^2))."""
    a, b = np.array([0.9 + 0j]), np.array([0.8 + 0j])
    ra, rb = np.array([[1.0], [0.0]]), np.array([[1.0], [1.0]])
    w = sgot_pairwise([a, b], modes_gram([ra, rb]), eta=0.5)[0, 1]
    assert w == pytest.approx(np.sqrt(0.5 * 0.01 + 0.5 * (1 - 0.25)), rel=1e-12)


def test_rotated_eigenvectors_add_to_the_distance():
    mu, v = operator()
    rot = np.linalg.qr(np.random.default_rng(3).standard_normal((5, 5)))[0]
    w_same = sgot_pairwise([mu, mu], modes_gram([v, v]))[0, 1]
    w_rot = sgot_pairwise([mu, mu], modes_gram([v, rot @ v]))[0, 1]
    assert w_rot > 0.1 > w_same


def test_api_compare_with_sgot_separates_shifted_operators():
    rng = np.random.default_rng(0)
    mu, v = operator()
    spectra = {}
    for cond, shift in (("a", 0.0), ("b", 0.2)):
        spectra[cond] = []
        for _ in range(5):
            noise = 0.01 * (rng.standard_normal(5) + 1j * rng.standard_normal(5))
            vn = v + 0.01 * rng.standard_normal(v.shape)
            spectra[cond].append((mu + shift + noise, vn))
    row = compare(spectra, distance="sgot", permutations=999).iloc[0]
    assert row.verdict == "not conjugate"
    same = compare({"a": spectra["a"], "b": spectra["a"][::-1]}, distance="sgot").iloc[0]
    assert same.ratio < 1.5


def store(path, eigenvalues, modes=None) -> None:
    data = {"eigenvalues": ("mode", eigenvalues)}
    if modes is not None:
        data["modes"] = (("mode", "value"), modes.T)
    write_dataset(xr.Dataset(data), path, role="spectrum")


def test_cli_sgot_reads_the_modes_of_the_stores(tmp_path):
    mu, v = operator()
    rng = np.random.default_rng(1)
    paths = []
    for cond, shift in (("a", 0.0), ("b", 0.3)):
        for seed in range(5):
            paths.append(tmp_path / cond / f"seed{seed}.zarr")
            store(paths[-1], mu + shift + 0.01 * rng.standard_normal(5), v)
    out = tmp_path / "out"
    assert main(["compare", *map(str, paths), "-o", str(out), "--distance", "sgot"]) == 0
    table = pd.read_csv(out / "distances.csv")
    expected = sgot_pairwise(
        [xr.open_zarr(p, consolidated=False)["eigenvalues"].values for p in paths[:2]],
        modes_gram([v, v]),
    )[0, 1]
    assert table["w"].iloc[0] == pytest.approx(expected, rel=1e-9)
    assert pd.read_csv(out / "conjugacy.csv").iloc[0].verdict == "not conjugate"


def test_cli_sgot_refuses_stores_without_modes_or_of_other_sizes(tmp_path, capsys):
    mu, v = operator()
    good = [tmp_path / "a" / f"seed{s}.zarr" for s in range(3)]
    for p in good:
        store(p, mu, v)
    bare = tmp_path / "b" / "seed0.zarr"
    store(bare, mu)
    args = ["compare", *map(str, good), str(bare), "-o", str(tmp_path / "o")]
    assert main([*args, "--distance", "sgot"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--distance sgot" in err and str(bare) in err and "\n" not in err
    other = tmp_path / "c" / "seed0.zarr"
    store(other, mu[:3], np.ones((7, 3)) + np.eye(7, 3))
    args = ["compare", *map(str, good), str(other), "-o", str(tmp_path / "o2")]
    assert main([*args, "--distance", "sgot"]) == 2
    err = capsys.readouterr().err.strip()
    assert "7 values" in err and str(other) in err and "\n" not in err
    assert not (tmp_path / "o2" / "conjugacy.csv").exists()
