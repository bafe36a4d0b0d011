"""Eigenvalue spread over resampled inits: zero without noise, growing with it, on every route."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conjugacy.api import _as_dataset
from conjugacy.config import ConfigError, check_koopman
from conjugacy.config.validation import defaults
from conjugacy.koopman.backend import NumpyBackend
from conjugacy.koopman.dmd import matched_spread
from conjugacy.koopman.observables import Observable
from conjugacy.koopman.spectrum import (
    KoopmanOptions,
    decompose,
    resample_fits,
    spectrum_dataset,
)

TRUE = np.array(
    [0.95 * np.exp(0.3j), 0.95 * np.exp(-0.3j), 0.85 * np.exp(0.9j), 0.85 * np.exp(-0.9j)]
)
# (options, route): each route of the decomposition, on 4 inits x 50 steps of a 4-d system
ROUTES = [
    ({}, "covariance"),
    ({"variant": "tls"}, "covariance"),
    ({"delays": 30, "rank": 4}, "gram"),
    ({"delays": 5, "rank": "full"}, "qr-wide"),
    ({"delays": 30, "rank": "full"}, "qr-tall"),
    ({"pca": 4}, "pca"),
]


def seed_data(noise: float, seed: int = 0, inits: int = 4, steps: int = 50) -> np.ndarray:
    """(inits, steps, 4) of x_{t+1} = A x_t (eigenvalues TRUE) through an orthogonal map."""
    rng = np.random.default_rng(seed)
    a = np.zeros((4, 4))
    for k, (r, th) in enumerate(((0.95, 0.3), (0.85, 0.9))):
        a[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = r * np.array(
            [[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]
        )
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    x = rng.standard_normal((inits, 4))
    out = np.empty((inits, steps, 4))
    for t in range(steps):
        out[:, t] = x @ q.T
        x = x @ a.T
    rms = np.sqrt(np.mean(out**2))
    return out + noise * rms * rng.standard_normal(out.shape)


def fit(data: np.ndarray, **options):
    obs = Observable([_as_dataset(data)], ["x"], None)
    return obs, *decompose(obs, KoopmanOptions(**options))


def test_matched_spread_by_hand():
    """Each resample is matched one to one; the spread is the median distance over resamples."""
    full = np.array([0.0, 1.0])
    resampled = [np.array([1.1, 0.1]), np.array([0.0, 1.2]), np.array([0.3])]
    # distances: (0.1, 0.1), (0, 0.2), (0.3 matched to 0; 1 unmatched: nearest 0.7)
    assert np.allclose(matched_spread(full, resampled), [0.1, 0.2])


@pytest.mark.parametrize(("options", "route"), ROUTES)
def test_the_full_draw_refits_the_fit_on_every_route(options, route):
    """A resample that draws every init once is the data itself: the same eigenvalues.
    (Exact data make the full rank ill-conditioned: the QR routes.)"""
    obs, result, facts = fit(seed_data(0.0 if route.startswith("qr") else 0.01), **options)
    assert facts["route"] == route
    opts = KoopmanOptions(**options)
    refit = resample_fits(obs, opts, result.rank, route, NumpyBackend())
    again = refit(np.arange(obs.inits))
    assert np.allclose(np.sort_complex(again), np.sort_complex(result.eigenvalues), atol=1e-9)


@pytest.mark.parametrize(("options", "route"), [r for r in ROUTES if r[1] != "pca"])
def test_spread_is_zero_without_noise_and_grows_with_it(options, route):
    spreads = []
    for noise in (0.0, 0.01, 0.05):
        _, result, facts = fit(seed_data(noise), spread_resamples=20, **options)
        if noise == 0.0:
            assert facts["route"] == route or route.startswith("qr")
            assert result.spread.max() < 1e-7  # exact linear data: every refit is exact
        spreads.append(np.sort(result.spread)[:4].mean())  # the system's 4 modes
    assert 0 < spreads[1] < spreads[2]


def test_defaults_store_no_spread_and_the_same_eigenvalues():
    data = seed_data(0.01)
    _, plain, _ = fit(data)
    _, spread, _ = fit(data, spread_resamples=10)
    assert plain.spread is None and "spread" not in spectrum_dataset(plain, {})
    assert np.array_equal(plain.eigenvalues, spread.eigenvalues)
    assert spectrum_dataset(spread, {})["spread"].dims == ("mode",)


def test_max_spread_drops_noise_modes_and_keeps_the_dynamics():
    """With a rank above the system's 4 modes, the extra ones are fitted to noise: they move
    when the inits are resampled and max_spread drops them; the 4 true ones stay."""
    data = seed_data(0.01, inits=6)
    _, full, _ = fit(data, delays=5, rank=12)
    _, kept, _ = fit(data, delays=5, rank=12, spread_resamples=40, max_spread=0.01)
    assert full.eigenvalues.size == 12
    assert kept.eigenvalues.size == 4
    assert np.abs(np.sort_complex(kept.eigenvalues) - np.sort_complex(TRUE)).max() < 0.01
    assert kept.dropped["spread"].min() > 0.01
    assert kept.dropped["eigenvalues"].size == 8


def test_keep_takes_at_most_the_stable_modes():
    data = seed_data(0.01, inits=6)
    _, kept, _ = fit(data, delays=5, rank=12, spread_resamples=40, max_spread=0.01, keep=6)
    assert kept.eigenvalues.size == 4


def test_max_spread_needs_resamples():
    with pytest.raises(ConfigError, match="max_spread.*spread_resamples"):
        check_koopman({"max_spread": 0.01}, {"x": (4,)}, list(range(50)), 4, label=str)


# max_residual: the residual ||C'_i - mu_i C_i|| / ||C_i|| of each eigenpair. With noise 1% of
# the rms on 6 inits x 50 steps and rank 12 (delays 5) of a 4-mode system, the 4 true modes have
# residuals 0.002-0.007 (about the noise level) and the 8 fitted to noise 0.58-0.86 (white noise
# is no eigenfunction), on exact and tls DMD: 0.1 lies more than 10x from both. The true
# eigenvalues come out within 5e-4 of TRUE; 0.01 leaves a margin of 20x (as max_spread's test).
MAX_RESIDUAL = 0.1


@pytest.mark.parametrize("variant", ["exact", "tls"])
def test_max_residual_drops_noise_modes_and_keeps_the_dynamics(variant):
    data = seed_data(0.01, inits=6)
    _, full, _ = fit(data, delays=5, rank=12, variant=variant)
    _, kept, _ = fit(data, delays=5, rank=12, variant=variant, max_residual=MAX_RESIDUAL)
    assert full.eigenvalues.size == 12
    assert kept.eigenvalues.size == 4
    assert np.abs(np.sort_complex(kept.eigenvalues) - np.sort_complex(TRUE)).max() < 0.01
    assert kept.residual.max() < MAX_RESIDUAL < kept.dropped["residual"].min()
    assert kept.dropped["eigenvalues"].size == 8
    # the kept modes are those of the full fit, with their numbers
    same = np.isin(full.eigenvalues, kept.eigenvalues)
    assert np.array_equal(full.eigenvalues[same], kept.eigenvalues)
    assert np.array_equal(full.residual[same], kept.residual)
    assert np.array_equal(full.energy[same], kept.energy)


def test_keep_takes_at_most_the_modes_below_max_residual():
    data = seed_data(0.01, inits=6)
    _, kept, _ = fit(data, delays=5, rank=12, max_residual=MAX_RESIDUAL, keep=6)
    assert kept.eigenvalues.size == 4
    _, two, _ = fit(data, delays=5, rank=12, max_residual=MAX_RESIDUAL, keep=2)
    assert two.eigenvalues.size == 2 and two.dropped["eigenvalues"].size == 10
    assert np.all(np.isin(two.eigenvalues, kept.eigenvalues))  # keep chose among those left


def test_max_residual_keeps_at_least_the_mode_of_smallest_residual():
    data = seed_data(0.01, inits=6)
    _, full, _ = fit(data, delays=5, rank=12)
    _, one, _ = fit(data, delays=5, rank=12, max_residual=1e-12)
    assert one.eigenvalues.size == 1
    assert one.residual[0] == full.residual.min()


def test_max_residual_and_max_spread_share_one_filter():
    """within(score, limit) is the one filter both options use: by hand on a fit."""
    data = seed_data(0.01, inits=6)
    _, full, _ = fit(data, delays=5, rank=12)
    by_hand = full.within(full.residual, MAX_RESIDUAL)
    _, kept, _ = fit(data, delays=5, rank=12, max_residual=MAX_RESIDUAL)
    for f in ("eigenvalues", "energy", "residual", "amplitudes"):
        assert np.array_equal(getattr(by_hand, f), getattr(kept, f))
    for f in ("eigenvalues", "energy", "residual"):
        assert np.array_equal(by_hand.dropped[f], kept.dropped[f])


def test_max_residual_unset_gives_identical_arrays():
    data = seed_data(0.01, inits=6)
    for options in ({"delays": 5, "rank": 12}, {"delays": 5, "rank": 12, "keep": 4}):
        _, a, _ = fit(data, **options)
        _, b, _ = fit(data, **options, max_residual=None)
        da, db = spectrum_dataset(a, {}), spectrum_dataset(b, {})
        assert sorted(da.data_vars) == sorted(db.data_vars)
        for name in da.data_vars:
            assert np.array_equal(da[name].values, db[name].values)
    # no schema default: a config without it resolves as before, and the options leave it unset
    assert "max_residual" not in defaults("koopman")
    assert KoopmanOptions.from_settings(defaults("koopman")).max_residual is None


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, True, "0.1"])
def test_max_residual_must_be_a_positive_number(bad):
    with pytest.raises(ConfigError, match="max_residual.*expected a number > 0"):
        check_koopman({"max_residual": bad}, {"x": (4,)}, list(range(50)), 4, label=str)


def test_max_residual_positive_passes_the_check():
    check_koopman({"max_residual": 0.05}, {"x": (4,)}, list(range(50)), 4, label=str)


@pytest.mark.parametrize(("options", "route"), [r for r in ROUTES if r[1] in ("gram", "pca")])
def test_the_gram_and_pca_spread_reuse_the_fit_without_a_second_pass(monkeypatch, options, route):
    """The resamples pick rows and columns of what the fit computed: one pass over the store."""
    from conjugacy.koopman import spectrum

    calls = []
    original = spectrum.accumulate_gram
    monkeypatch.setattr(spectrum, "accumulate_gram", lambda *a: calls.append(1) or original(*a))
    _, result, facts = fit(seed_data(0.01), **options, spread_resamples=5)
    assert facts["route"] == route and result.spread is not None
    assert len(calls) == 1
