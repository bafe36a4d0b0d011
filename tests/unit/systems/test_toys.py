"""The optimizer toys: OGD started on OMD's initial conditions (`start: omd`).

OMD with the log barrier and OGD on x = exp(u) are different maps; what holds
is that exp(u) of OGD follows the OMD orbit from the same x0 to first order
in the step size (both discretise the same flow), with the same fixed point
and the same monotone descent. The tests check that, not step-by-step equality.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from conjugacy import config
from conjugacy.systems.toys import Toy

SEEDS = range(10)


@pytest.fixture(scope="module")
def conditions():
    """The resolved conditions of the shipped omd_ogd experiment."""
    return config.load(REPO / "config" / "experiments" / "omd_ogd.yaml")["conditions"]


def orbits(cond, seed, steps):
    """The iterates x_0 .. x_steps of a toy, (steps + 1, inits, 2)."""
    toy = Toy(cond, seed)
    out = [toy.x.copy()]
    for _ in range(steps):
        toy.step()
        out.append(toy.x.copy())
    return np.stack(out)


@pytest.mark.parametrize("seed", SEEDS)
def test_ogd_matched_starts_at_log_of_omds_x0_for_the_same_seed(conditions, seed):
    omd, matched = Toy(conditions["omd"], seed), Toy(conditions["ogd_matched"], seed)
    assert np.array_equal(matched.x0, omd.x0)  # bitwise: the very same draws
    assert np.array_equal(omd.x0, omd.x)
    assert np.array_equal(matched.x, np.log(omd.x0))  # u0 = log x0
    np.testing.assert_allclose(np.exp(matched.x), omd.x0, rtol=1e-15, atol=0)
    assert matched.x0.shape == (25, 2)


def test_seeds_jitter_the_matched_grid_as_they_jitter_omds(conditions):
    exact = Toy(conditions["ogd_matched"], 0).x0
    axis = np.linspace(0.1, 0.9, 5)
    assert np.array_equal(exact, np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2))
    starts = [Toy(conditions["ogd_matched"], s).x0 for s in (1, 2)]
    assert not np.array_equal(starts[0], exact) and not np.array_equal(starts[0], starts[1])
    assert np.abs(starts[0] - exact).max() <= 0.5 * 0.2 + 1e-12  # within half a grid cell


def test_the_papers_ogd_grid_does_not_correspond_to_omds(conditions):
    """The paper's grids: uniform in u is geometric in x, and jittered independently."""
    for seed in (0, 3):
        omd, paper = Toy(conditions["omd"], seed), Toy(conditions["ogd"], seed)
        assert np.abs(paper.x0 - omd.x0).max() > 0.1
        np.testing.assert_allclose(np.exp(paper.x), paper.x0, rtol=1e-15)


def test_the_default_start_is_the_papers_grid(conditions):
    cond = dict(conditions["ogd"])
    assert cond["start"] == "grid"
    del cond["start"]  # a condition resolved before the option existed
    assert np.array_equal(Toy(cond, 4).x, Toy(conditions["ogd"], 4).x)


def test_start_omd_needs_its_grid_in_x():
    with pytest.raises(config.ConfigError, match="'grid' is a required property"):
        config.resolve({"experiment": "e", "conditions": {"o": {"system": "ogd", "start": "omd"}}})


@pytest.mark.parametrize("seed", [0, 3])
def test_matched_orbits_follow_each_other_to_first_order_in_the_step(conditions, seed):
    """exp(u_t) stays within 1 % of the OMD iterate; over the same time, halving eta halves it."""
    gaps = []
    for lr, steps in ((0.02, 50), (0.01, 100), (0.005, 200)):  # the same time lr * steps
        x = orbits({**conditions["omd"], "lr": lr}, seed, steps)
        u = orbits({**conditions["ogd_matched"], "lr": lr}, seed, steps)
        gaps.append(np.abs(np.exp(u) / x - 1).max())
    assert gaps[1] < 0.01
    for coarse, fine in zip(gaps, gaps[1:], strict=False):
        assert 1.8 < coarse / fine < 2.2, gaps
    # the paper's OGD grid: not the same orbits at all
    x = orbits(conditions["omd"], seed, 99)
    paper = np.exp(orbits(conditions["ogd"], seed, 99))
    assert np.abs(paper / x - 1).max() > 0.2  # 20 times the matched gap


@pytest.mark.parametrize("seed", [0, 5])
def test_both_descend_monotonically_to_the_same_fixed_point(conditions, seed):
    """f = sum tan x has gradient sec^2 x > 0: every coordinate falls to the box's low corner."""
    fast = {"lr": 1.0, "steps": 400}
    x = orbits({**conditions["omd"], **fast}, seed, 400)
    y = np.exp(orbits({**conditions["ogd_matched"], **fast}, seed, 400))
    low = conditions["omd"]["domain"][0]
    for orbit in (x, y):
        assert (np.diff(orbit, axis=0) <= 1e-15).all()  # no coordinate ever rises
        f = np.tan(orbit).sum(axis=-1)
        assert (np.diff(f, axis=0) <= 1e-15).all()  # the loss never rises
        np.testing.assert_allclose(orbit[-1], low, rtol=1e-12)  # the fixed point x* = (low, low)
    # at the fixed point both maps stand still
    omd = Toy({**conditions["omd"], **fast}, seed)
    omd.x = np.full_like(omd.x, low)
    ogd = Toy({**conditions["ogd_matched"], **fast}, seed)
    ogd.x = np.full_like(ogd.x, np.log(low))
    omd.step(), ogd.step()
    assert (omd.x == low).all() and (ogd.x == np.log(low)).all()
    # the paper's OGD grid shares the fixed point
    z = np.exp(orbits({**conditions["ogd"], **fast}, seed, 400))
    np.testing.assert_allclose(z[-1], low, rtol=1e-12)


def test_the_matched_condition_trains_into_a_trajectory(conditions, tmp_path):
    import xarray as xr

    from conjugacy.training.train import train

    out = train(conditions["ogd_matched"], 2, tmp_path / "t.zarr", progress=False)
    ds = xr.open_zarr(out, consolidated=False)
    u = ds["x"].values
    assert u.shape[-1] == 2 and np.isfinite(u).all()
    x0 = Toy(conditions["omd"], 2).x0
    start = u[:, 0] if u.shape[1] == 100 else u[0]
    np.testing.assert_allclose(np.exp(start), x0, rtol=1e-15)


def test_ogd_recorded_in_x_is_exp_of_the_recording_in_u(conditions, tmp_path):
    """`recorded_in: x` records exp(u) of the very same OGD run (its state stays u), so the
    matched pair OMD / OGD can be compared in OMD's coordinate."""
    import xarray as xr

    from conjugacy.training.train import train

    in_u = train(conditions["ogd_matched"], 3, tmp_path / "u.zarr", progress=False)
    in_x = train(conditions["ogd_matched_x"], 3, tmp_path / "x.zarr", progress=False)
    assert conditions["ogd_matched_x"]["recorded_in"] == "x"
    assert conditions["ogd_matched"]["recorded_in"] == "u"
    u = xr.open_zarr(in_u, consolidated=False)
    x = xr.open_zarr(in_x, consolidated=False)
    np.testing.assert_array_equal(x["x"].values, np.exp(u["x"].values))
    np.testing.assert_array_equal(x["loss"].values, u["loss"].values)
    np.testing.assert_allclose(x["x"].values[:, 0], Toy(conditions["omd"], 3).x0, rtol=1e-15)
