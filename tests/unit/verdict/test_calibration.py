"""The calibration suite, small: verdicts on simulated experiments whose answer is known.

The families of benchmarks/calibration.py (docs/calibration.md), 20
experiments each at 5 seeds per condition, through the same path as the
workflow (conjugacy.spectrum, then conjugacy.compare with the default verdict
options; at 5 + 5 seeds the permutation test is exact). The random streams
are those of the full run: these are its first 20 experiments at 5 seeds.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

import conjugacy

REPO = Path(__file__).resolve().parents[3]


def _load():
    spec = importlib.util.spec_from_file_location(
        "calibration", REPO / "benchmarks" / "calibration.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


cal = _load()

EXPERIMENTS = 20
SEEDS = [5]
OPTIONS = {"permutations": cal.PERMUTATIONS}
ALPHA = cal.ALPHA
# A calibrated verdict (false "not conjugate" at rate <= alpha) gives more than this many of
# 20 with probability below 0.005: 4 of 20 (the rate alpha plus a binomial margin).
MAX_FALSE = int(binom.ppf(0.995, EXPERIMENTS, ALPHA))


def family(name: str) -> cal.Family:
    every = [*cal.families(0.01), cal.decay(0.0, "power"), *cal.diagnostics(0.01)]
    return next(f for f in every if f.name == name)


def verdicts(name: str, experiments: int = EXPERIMENTS) -> pd.Series:
    table, _ = cal.run_family(family(name), experiments, SEEDS, OPTIONS, cal.SEED)
    return table.set_index("experiment")["verdict"]


def test_max_false_is_alpha_plus_a_binomial_margin():
    assert MAX_FALSE == 4
    assert binom.sf(MAX_FALSE, EXPERIMENTS, ALPHA) < 0.005


def test_simulators_give_init_step_value_arrays():
    rng = np.random.default_rng(0)
    for name, shape in [
        ("linear-maps", (cal.INITS, cal.STEPS, 4)),
        ("extra-mode", (cal.INITS, cal.STEPS, 6)),
        ("omd-ogd", (9, cal.TOY_STEPS, 2)),
    ]:
        fam = family(name)
        for sim in (fam.a, fam.b):
            x = sim(rng)
            assert x.shape == shape
            assert np.isfinite(x).all()


def test_maps_are_orthogonal_and_well_conditioned():
    rng = np.random.default_rng(1)
    q = cal.orthogonal(6, 4, rng)
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-12)
    s = np.linalg.svd(cal.invertible(4, rng), compute_uv=False)
    assert 0.5 - 1e-12 <= s.min() and s.max() <= 2 + 1e-12


def test_system_has_the_eigenvalues_asked_for():
    lam = np.linalg.eigvals(cal.system(cal.BASE))
    want = [r * np.exp(s * 1j * t) for r, t in cal.BASE for s in (1, -1)]
    np.testing.assert_allclose(np.sort_complex(lam), np.sort_complex(np.array(want)), atol=1e-12)


def test_ogd_in_u_keeps_other_modes_than_omd_in_x():
    """Why OGD recorded in u = log x is not the positive control: the 4 modes of most energy
    of its computed spectrum include one at eigenvalue ~1 (u's offset), OMD's in x do not, in
    every seed; the computed spectra differ by more than their seed-to-seed spread."""
    fam = family("omd-ogd, OGD in u")
    rng = np.random.default_rng(5)
    for _ in range(3):
        omd = conjugacy.spectrum(fam.a(rng), **fam.koopman)
        ogd = conjugacy.spectrum(fam.b(rng), **fam.koopman)
        assert np.abs(omd).max() < 0.998 < 0.9995 < np.abs(ogd).max()


def test_ogd_seen_in_x_starts_where_omd_starts():
    """start: omd, the same stream: OGD's u0 is log of OMD's x0, jitter included."""
    omd = cal.toy("omd")(np.random.default_rng(3))
    ogd_x = cal.toy("ogd", np.exp)(np.random.default_rng(3))
    # Both carry 1% noise of their own RMS; the clean starts are equal.
    np.testing.assert_allclose(omd[:, 0], ogd_x[:, 0], atol=0.1)


def test_null_pair_stays_clear_of_not_conjugate_and_a_shift_does_not():
    """Five experiments each: same design on both sides vs a decay shift of 0.01."""
    null, shifted = verdicts("power", 5), verdicts("decay", 5)
    assert (null != "not conjugate").all()
    assert (shifted == "not conjugate").all()


def test_rates_have_exact_binomial_intervals():
    df = pd.DataFrame(
        {
            "group": "main",
            "family": ["f"] * 20,
            "known_conjugate": True,
            "delta": np.nan,
            "seeds": 5,
            "experiment": range(20),
            "ratio": np.linspace(0.8, 1.2, 20),
            "p_value": [0.01, 0.04] + [0.5] * 18,
            "verdict": ["conjugate"] * 19 + ["inconclusive"],
        }
    )
    row = cal.rates(df).iloc[0]
    assert row["experiments"] == 20 and row["not conjugate"] == 0
    assert row["not conjugate low"] == 0
    assert row["not conjugate high"] == pytest.approx(0.1684, abs=1e-4)  # 1 - 0.025^(1/20)
    assert row["conjugate"] == pytest.approx(0.95)
    assert row["p < alpha"] == pytest.approx(0.1)  # the permutation test alone


def test_auroc_counts_ties_as_one_half():
    assert cal.auroc(np.array([2.0, 3.0]), np.array([1.0, 1.5])) == 1.0
    assert cal.auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert cal.auroc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5


@pytest.fixture(scope="module")
def results() -> dict[str, pd.DataFrame]:
    names = [
        "linear-maps",
        "power",
        "nonlinear-coords",
        "omd-ogd",
        "omd-ogd, OGD in u",
        "decay",
        "rotation",
        "extra-mode",
        "decay, keep 4",
    ]
    return {n: cal.run_family(family(n), EXPERIMENTS, SEEDS, OPTIONS, cal.SEED)[0] for n in names}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["linear-maps", "power", "nonlinear-coords", "omd-ogd", "omd-ogd, OGD in u"]
)
def test_false_not_conjugate_rate_is_at_most_alpha_plus_margin(results, name):
    """Conjugate pairs in the same, linearly or nonlinearly related coordinates (the last with
    enough delays and rank, and keep). OGD in u is within the margin here; over 200
    experiments its 5-seed rate is above alpha (docs/calibration.md, and the test below)."""
    false = int((results[name]["verdict"] == "not conjugate").sum())
    assert false <= MAX_FALSE, f"{name}: {false} of {EXPERIMENTS} called not conjugate"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["decay", "rotation", "extra-mode", "decay, keep 4"])
def test_clearly_different_spectra_are_rarely_called_conjugate(results, name):
    got = results[name]["verdict"]
    assert (got == "conjugate").sum() <= 1
    assert (got == "not conjugate").sum() >= 16  # power at least 80%


@pytest.mark.slow
def test_ratio_ranks_non_conjugate_above_conjugate_pairs(results):
    conj = np.concatenate([results[n]["ratio"] for n in ("linear-maps", "power")])
    other = np.concatenate([results[n]["ratio"] for n in ("decay", "rotation", "extra-mode")])
    assert cal.auroc(other, conj) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nonlinear-coords, no keep", "omd-ogd, OGD in u, no keep"])
def test_without_keep_nonlinear_coordinates_look_not_conjugate(name):
    """What keep fixes: a low rank (or full rank of few delays) mixes the harmonics of the change
    of coordinates into the compared eigenvalues, and the verdict sees the shift."""
    assert (verdicts(name, 5) == "not conjugate").sum() >= 3


def test_saved_spectra_give_the_same_verdicts(tmp_path):
    """spectra.npz holds every seed's eigenvalues bit for bit (no pickle); --recompare's
    verdicts from them equal the run's."""
    rows, kept = cal.run_family(family("linear-maps"), 3, [3, 4], OPTIONS, cal.SEED)
    more, kept_b = cal.run_family(family("decay"), 2, [3, 4], OPTIONS, cal.SEED)
    # the power curve: one name, several deltas, each its own family
    null, kept_0 = cal.run_family(cal.decay(0.0, "power"), 2, [3, 4], OPTIONS, cal.SEED)
    moved, kept_1 = cal.run_family(cal.decay(0.001, "power"), 2, [3, 4], OPTIONS, cal.SEED)
    everything = kept + kept_b + kept_0 + kept_1
    cal.save_spectra(tmp_path / "spectra.npz", everything)
    loaded = cal.load_spectra(tmp_path / "spectra.npz")
    pd.testing.assert_frame_equal(
        pd.DataFrame([d for d, _ in loaded]), pd.DataFrame([d for d, _ in everything])
    )
    for (_, a), (_, b) in zip(loaded, everything, strict=True):
        for cond in "AB":
            assert len(a[cond]) == len(b[cond]) == 4
            assert all(np.array_equal(x, y) for x, y in zip(a[cond], b[cond], strict=True))
    again = cal.recompare(tmp_path, [3, 4], OPTIONS)
    pd.testing.assert_frame_equal(again, pd.concat([rows, more, null, moved], ignore_index=True))
    with pytest.raises(SystemExit, match="--seeds 5: .* holds 4 seeds per condition"):
        cal.recompare(tmp_path, [3, 5], OPTIONS)


def test_methods_are_measured_on_the_same_seeds():
    """plain, stable and sgot each give a verdict row on one experiment's simulated seeds; on a
    shared-map pair far apart (decay 0.95 -> 0.96) every method calls it not conjugate, and
    plain W of the stable modes equals plain W when no mode is unstable."""
    fam = cal.shared_families([0.01])[0]
    rng = np.random.default_rng([cal.SEED, 1])
    rows, spectra = cal.experiment(fam, rng, [5], OPTIONS, ("plain", "stable", "sgot"))
    assert [r["method"] for r in rows] == ["plain", "stable", "sgot"]
    assert all(r["verdict"] == "not conjugate" for r in rows)
    assert rows[0]["ratio"] == pytest.approx(rows[1]["ratio"])
    eigenvalues, modes = spectra["sgot"]["A"][0]
    assert modes.shape == (4, eigenvalues.size)


def test_residual_method_drops_the_noise_modes_of_the_keep_family():
    """residual: W of the modes whose residual is at most --max-residual, on the same seeds as
    plain. At 20 delays and rank 40 on the 4-mode decay system the 36 modes fitted to noise have
    residuals above 0.05 and the 4 of the dynamics below; the verdict stays not conjugate."""
    fam = next(f for f in cal.diagnostics(0.01) if f.name == "decay, keep 4")
    fam.koopman = {k: v for k, v in fam.koopman.items() if k != "keep"}
    rng = np.random.default_rng([cal.SEED, 2])
    quality = cal.QUALITY | {"max_residual": 0.05}
    rows, spectra = cal.experiment(fam, rng, [5], OPTIONS, ("plain", "residual"), quality)
    assert [r["method"] for r in rows] == ["plain", "residual"]
    assert all(s.size == 40 for s in spectra["plain"]["A"])
    assert all(s.size == 4 for c in "AB" for s in spectra["residual"][c])
    assert rows[1]["verdict"] == "not conjugate"
