"""The work estimate of a spectrum (config.work): what orders the workflow's jobs."""

from __future__ import annotations

import pytest

from conjugacy.config import resolve
from conjugacy.config.work import EIGENSOLVE_PER_SQUARE, spectrum_work


def fcn(hidden: int, delays: int, **koopman) -> dict:
    raw = {
        "experiment": "w",
        "seeds": [0],
        "conditions": {
            "net": {
                "system": "fcn",
                "hidden": hidden,
                "dataset": "digits",
                "steps": 100,
                "inits": 3,
                "koopman": {"observables": ["fc2.weight"], "delays": delays, **koopman},
            }
        },
    }
    return resolve(raw)["conditions"]["net"]


def test_work_is_lag_products_plus_eigensolve_computed_by_hand() -> None:
    # fc2.weight of a 64 -> 4 -> 10 net: 40 values; 2 delays: lifted 120;
    # 101 snapshots: 98 pairs per init, 3 inits.
    pairs, values, lifted = 3 * 98, 40, 120
    expected = pairs * values * lifted + EIGENSOLVE_PER_SQUARE * lifted**2
    assert spectrum_work(fcn(4, 2)) == pytest.approx(expected, rel=1e-12)


def test_a_window_and_pca_shrink_the_work() -> None:
    full = spectrum_work(fcn(4, 2))
    window = spectrum_work(fcn(4, 2, window=[0, 51]))  # 51 snapshots: 48 pairs per init
    assert window == pytest.approx(3 * 48 * 40 * 120 + EIGENSOLVE_PER_SQUARE * 120**2)
    pca = spectrum_work(fcn(4, 2, pca=5))  # 5 values, lifted 15
    assert pca == pytest.approx(3 * 98 * 5 * 15 + EIGENSOLVE_PER_SQUARE * 15**2)
    assert window < full and pca < full


def test_your_own_stores_have_no_estimate() -> None:
    assert spectrum_work({"system": "external", "koopman": {}}) == 0.0
