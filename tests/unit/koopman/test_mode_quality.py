"""Energy and residual of each eigenpair, and `keep`: known answers on systems built by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import conjugacy
from conjugacy.cli import main
from conjugacy.koopman.dmd import dmd_dense


def pairs(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, Y (values x pairs) and x0 (values x inits) of (inits, steps, values), no delays."""
    x = data[:, :-1].reshape(-1, data.shape[2]).T
    y = data[:, 1:].reshape(-1, data.shape[2]).T
    return x, y, data[:, 0].T


def test_energy_shares_of_orthogonal_modes_are_their_squared_norms():
    """Modes on orthogonal axes: mode i carries sum_t (c_i lambda_i^t)^2 over the X snapshots."""
    lam, c, steps = np.array([0.9, 0.5]), np.array([1.0, 2.0]), 30
    data = (c[None, :] * lam[None, :] ** np.arange(steps)[:, None])[None]  # (1, steps, 2)
    result = dmd_dense(*pairs(data), rank=2)
    by_hand = c**2 * np.array([np.sum(v ** (2 * np.arange(steps - 1))) for v in lam])
    order = np.argsort(-result.eigenvalues.real)  # 0.9 first
    np.testing.assert_allclose(result.eigenvalues.real[order], lam, atol=1e-12)
    np.testing.assert_allclose(result.energy[order], by_hand / by_hand.sum(), rtol=1e-10)


def test_residual_of_a_scalar_fit_equals_the_least_squares_misfit():
    """Rank 1 on a scalar series: mu = <s+, s>/<s, s>, residual = ||s+ - mu s|| / ||s||."""
    s = np.random.default_rng(0).standard_normal(40).cumsum()
    result = dmd_dense(*pairs(s[None, :, None]), rank=1)
    mu = s[1:] @ s[:-1] / (s[:-1] @ s[:-1])
    residual = np.linalg.norm(s[1:] - mu * s[:-1]) / np.linalg.norm(s[:-1])
    np.testing.assert_allclose(result.eigenvalues, [mu], rtol=1e-12)
    np.testing.assert_allclose(result.residual, [residual], rtol=1e-9)
    assert result.energy == pytest.approx([1.0])


def test_exact_linear_data_have_zero_residuals():
    """Zero down to sqrt(eps): the residual is a difference of quadratic forms."""
    rng = np.random.default_rng(1)
    a = np.linalg.qr(rng.standard_normal((4, 4)))[0] * 0.9
    x = rng.standard_normal((3, 4))
    data = np.stack([x @ np.linalg.matrix_power(a, t).T for t in range(25)], axis=1)
    result = dmd_dense(*pairs(data), rank=4)
    assert np.all(result.residual < 1e-7)
    assert result.energy.sum() == pytest.approx(1.0)


def warped_series(steps: int = 60) -> np.ndarray:
    """y_t = x_t + 0.1 x_t^3 with x_t = 2 * 0.9^t: exponentials 0.9^t (energy 4) and 0.729^t."""
    x = 2.0 * 0.9 ** np.arange(steps)
    return (x + 0.1 * x**3)[None, :, None]


def test_keep_leaves_out_the_harmonic_a_nonlinear_change_of_coordinates_adds():
    """Rank 2 with one delay resolves 0.9 and 0.9^3 exactly; keep 1 returns 0.9 alone, while a
    rank-1 fit of the same series is pulled off 0.9 by the cube."""
    data = warped_series()
    both = conjugacy.spectrum(data, delays=1, rank=2)
    np.testing.assert_allclose(np.sort(both.real), [0.729, 0.9], atol=1e-9)
    kept = conjugacy.spectrum(data, delays=1, rank=2, keep=1)
    np.testing.assert_allclose(kept, [0.9], atol=1e-9)
    assert abs(conjugacy.spectrum(data, rank=1)[0] - 0.9) > 1e-3


def test_dominant_keeps_modulus_order_and_reports_the_rest():
    data = warped_series()
    x = np.concatenate([data[:, k : k + 59] for k in range(2)], axis=2)
    result = dmd_dense(*pairs(x), rank=2)
    kept = result.dominant(1)
    assert kept.eigenvalues.shape == (1,) and kept.amplitudes.shape == (1, 1)
    assert kept.eigenvectors.shape == (2, 1)
    np.testing.assert_allclose(kept.dropped["eigenvalues"].real, [0.729], atol=1e-9)
    assert kept.energy[0] > kept.dropped["energy"][0]
    with pytest.raises(ValueError, match="fewer than the 3 to keep"):
        result.dominant(3)


@pytest.fixture()
def warped_store(tmp_path: Path) -> Path:
    """A store another program could have written: the warped series, one value, one init."""
    data = warped_series()
    path = tmp_path / "warped.zarr"
    ds = xr.Dataset(
        {"y": (("init", "step", "value"), data)}, coords={"step": np.arange(data.shape[1])}
    )
    ds.to_zarr(path, zarr_format=3)
    return path


def test_koopman_command_writes_kept_and_dropped_modes(warped_store: Path, tmp_path: Path):
    out = tmp_path / "spectrum.zarr"
    argv = ["koopman", str(warped_store), "-o", str(out), "--delays", "1", "--rank", "2"]
    assert main([*argv, "--keep", "1", "--modes"]) == 0
    ds = xr.open_zarr(out)
    np.testing.assert_allclose(ds["eigenvalues"].values, [0.9], atol=1e-9)
    np.testing.assert_allclose(ds["dropped_eigenvalues"].values.real, [0.729], atol=1e-9)
    assert ds["energy"].values[0] > ds["dropped_energy"].values[0]
    assert ds["residual"].values[0] < 1e-6
    assert ds["modes"].shape == (1, 1) and ds.attrs["keep"] == 1


def test_keep_above_the_rank_is_a_one_line_error(warped_store: Path, tmp_path: Path, capsys):
    argv = ["koopman", str(warped_store), "-o", str(tmp_path / "s.zarr"), "--delays", "1"]
    assert main([*argv, "--rank", "2", "--keep", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keep" in err[0] and "at most 2" in err[0]
    assert not (tmp_path / "s.zarr").exists()


def config_with(tmp_path: Path, koopman: str, extra: str = "") -> Path:
    path = tmp_path / "c.yaml"
    text = "experiment: k\nseeds: [0]\nconditions:\n  omd: {system: omd}\n  ogd: {system: ogd}\n"
    path.write_text(text + f"koopman: {koopman}\n" + extra)
    return path


def test_config_keep_above_the_rank_names_the_key(tmp_path: Path):
    from conjugacy.config import ConfigError, load

    with pytest.raises(ConfigError, match=r"koopman\.keep: 5 modes, .*at most 3"):
        load(config_with(tmp_path, "{delays: 4, rank: 3, keep: 5}"))


def test_sensitivity_rank_below_keep_names_the_key(tmp_path: Path):
    from conjugacy.config import ConfigError, load
    from conjugacy.config.checks import check_sensitivity_section

    grid = "sensitivity: {delays: [2, 4], ranks: [2, 6]}\n"
    cfg = load(config_with(tmp_path, "{delays: 4, rank: 6, keep: 3}", grid))
    with pytest.raises(ConfigError, match=r"sensitivity\.ranks: rank 2 is below .*keep 3"):
        check_sensitivity_section(cfg)
