"""The public API: `import conjugacy` is light, and each function gives the commands' numbers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import conjugacy
from conjugacy.cli import main
from conjugacy.stores.contract import write_dataset


def rotation(rate: float, seed: int, inits: int = 3, steps: int = 40, noise: float = 0.0):
    """x_{t+1} = A x_t, A a rotation by `rate` shrunk by 0.95, embedded in 6 dimensions."""
    rng = np.random.default_rng(seed)
    a = 0.95 * np.array([[np.cos(rate), -np.sin(rate)], [np.sin(rate), np.cos(rate)]])
    q, _ = np.linalg.qr(rng.normal(size=(6, 2)))
    z = np.zeros((inits, steps, 2))
    z[:, 0] = rng.normal(size=(inits, 2))
    for t in range(steps - 1):
        z[:, t + 1] = z[:, t] @ a.T
    return z @ q.T + noise * rng.normal(size=(inits, steps, 6))


def test_import_is_light():
    code = "import conjugacy, sys; print('torch' in sys.modules, 'xarray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert {"record", "spectrum", "wasserstein", "compare", "open_trajectory"} <= set(
        dir(conjugacy)
    )


def test_spectrum_of_an_array_has_the_known_eigenvalues():
    mu = conjugacy.spectrum(rotation(0.3, 0), rank=2)
    expected = 0.95 * np.exp(1j * np.array([-0.3, 0.3]))
    np.testing.assert_allclose(np.sort_complex(mu), np.sort_complex(expected), atol=1e-10)


def test_spectrum_of_stores_equals_the_koopman_command(tmp_path):
    paths = []
    for i in range(2):
        ds = xr.Dataset({"w": (("init", "step", "v"), rotation(0.3, i, noise=1e-3))})
        paths.append(tmp_path / f"run{i}.zarr")
        ds.to_zarr(paths[-1], consolidated=False, zarr_format=3)
    ours = conjugacy.spectrum([str(p) for p in paths], delays=2, rank=4)
    out = tmp_path / "s.zarr"
    assert main(["koopman", *map(str, paths), "-o", str(out), "--delays", "2", "--rank", "4"]) == 0
    theirs = conjugacy.open_spectrum(out)["eigenvalues"].values
    np.testing.assert_array_equal(ours, theirs)  # the same code path: bitwise


def test_compare_equals_the_compare_command(tmp_path):
    spectra = {
        "slow": [conjugacy.spectrum(rotation(0.2, s, noise=1e-2), rank=2) for s in range(5)],
        "fast": [conjugacy.spectrum(rotation(0.4, 10 + s, noise=1e-2), rank=2) for s in range(5)],
    }
    table = conjugacy.compare(spectra, permutations=999)
    paths = []
    for cond, values in spectra.items():
        for seed, mu in enumerate(values):
            paths.append(tmp_path / cond / f"seed{seed}.zarr")
            write_dataset(xr.Dataset({"eigenvalues": ("mode", mu)}), paths[-1], role="spectrum")
    assert (
        main(["compare", *map(str, paths), "-o", str(tmp_path / "o"), "--permutations", "999"]) == 0
    )
    csv = pd.read_csv(tmp_path / "o" / "conjugacy.csv")
    assert list(table.columns) == list(csv.columns)
    for column in ("ratio", "p_value", "ratio_low", "ratio_high", "verdict"):
        assert table[column].iloc[0] == csv[column].iloc[0], column
    assert table.verdict.iloc[0] == "not conjugate"
    assert conjugacy.wasserstein(spectra["slow"][0], spectra["slow"][0]) == 0.0


def test_compare_needs_two_conditions_and_valid_options():
    one = {"a": [np.array([0.5, 0.9])] * 3}
    with pytest.raises(conjugacy.api.ConfigError, match="needs two or more"):
        conjugacy.compare(one)
    two = {"a": [np.array([0.5])] * 3, "b": [np.array([0.6])] * 3}
    with pytest.raises(conjugacy.api.ConfigError, match="argument alpha"):
        conjugacy.compare(two, alpha=2)
