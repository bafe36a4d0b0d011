"""Sensitivity to the Koopman settings: grid spectra from one pass, verdicts per grid point."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.optimize import linear_sum_assignment

from conjugacy import config
from conjugacy.beyond.sensitivity import (
    grid_spectra,
    routes,
    sensitivity_table,
    smaller_lags,
    write_sensitivity,
)
from conjugacy.cli import main
from conjugacy.config import ConfigError
from conjugacy.config.checks import check_sensitivity_section
from conjugacy.koopman.observables import Observable
from conjugacy.koopman.spectrum import KoopmanOptions, decompose, lag_products
from conjugacy.report.sensitivity import read_table, stability, stability_section, statement
from conjugacy.report.summary import render
from conjugacy.stores.contract import StoreError, TrajectoryWriter, open_trajectory


def trajectory(path, y: np.ndarray, attrs: dict | None = None, status: str = "complete"):
    """A trajectory store of (inits, steps, p) data in one tensor x."""
    inits, steps, p = y.shape
    w = TrajectoryWriter(path, {"x": (p,)}, list(range(steps)), inits, "float64", attrs or {})
    w.write(0, {"x": y}, np.ones((inits, steps)))
    if status == "diverged":
        w.close("diverged", diverged_step=steps - 1)
    else:
        w.close()
    return path


def linear(p: int, inits: int, steps: int, seed: int = 0, radius: float = 0.9, noise=0.1):
    """Noisy linear dynamics in p dimensions, eigenvalues spread inside `radius`.

    The noise keeps the squared matrices well conditioned: a grid point and its own
    decomposition sum the same products in another order (lag products of a smaller
    delay from the largest one's), so they agree to rounding times the condition
    number (noise 1e-3: about 1e-9 on the covariance route with tls).
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    a = q @ np.diag(radius * np.linspace(1.0, 0.3, p)) @ q.T
    rot = np.eye(p)
    rot[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    a = a @ rot
    y = np.empty((inits, steps, p))
    y[:, 0] = rng.standard_normal((inits, p))
    for t in range(1, steps):
        y[:, t] = y[:, t - 1] @ a.T + noise * rng.standard_normal((inits, p))
    return y


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest distance between matched eigenvalues, relative to the largest modulus."""
    assert a.shape == b.shape
    cost = np.abs(a[:, None] - b[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max() / np.abs(b).max())


class Reads:
    """Counts Observable._read calls and the values they return."""

    def __init__(self, monkeypatch):
        self.calls = self.values = 0
        original = Observable._read

        def counted(obs, *args, **kwargs):
            block = original(obs, *args, **kwargs)
            self.calls += 1
            self.values += block.size
            return block

        monkeypatch.setattr(Observable, "_read", counted)

    def reset(self):
        self.calls = self.values = 0


CASES = {
    # name: (p, inits, steps, delays, ranks, variant, pca, expected routes)
    "covariance": (4, 3, 40, [0, 1, 3, 6], [2, 5, "full", 0.99], "exact", None, {"covariance"}),
    "covariance-tls": (3, 2, 30, [2, 0, 4], [3, "full"], "tls", None, {"covariance"}),
    "covariance-fb": (3, 2, 30, [1, 3], [2, "gd"], "fb", None, {"covariance"}),
    "gram": (40, 2, 16, [0, 2, 5], [3, 8, "full"], "exact", None, {"gram"}),
    "gram-tls": (40, 2, 16, [1, 3], [4, "full"], "tls", None, {"gram"}),
    "mixed": (12, 2, 14, [0, 1, 4], [3, "full"], "exact", None, {"gram", "covariance"}),
    "pca": (30, 2, 20, [0, 3], [2, "full"], "exact", 5, {"pca"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_grid_point_equals_its_own_decomposition(tmp_path, monkeypatch, case):
    p, inits, steps, delays, ranks, variant, pca, expected = CASES[case]
    y = linear(p, inits, steps)
    ds = open_trajectory(trajectory(tmp_path / "t.zarr", y))
    opts = KoopmanOptions(variant=variant, pca=pca)
    obs = Observable(ds, ["x"])
    reads = Reads(monkeypatch)
    points = grid_spectra(obs, opts, delays, ranks)
    grid_calls = reads.calls
    assert {pt.route for pt in points.values()} == expected
    assert set(routes(obs, opts, delays).values()) == expected
    separate_calls = 0
    for d in delays:
        for r in ranks:
            reads.reset()
            ref, facts = decompose(obs, KoopmanOptions(delays=d, rank=r, variant=variant, pca=pca))
            separate_calls += reads.calls
            got = points[(d, str(r))]
            assert got.route == facts["route"]
            assert got.result.rank == ref.rank
            assert rel_err(got.result.eigenvalues, ref.eigenvalues) < 1e-10, (d, r)
    # One pass per route the grid takes (each read here is one tensor over every step).
    assert grid_calls == len(expected) < separate_calls


def test_one_pass_reads_each_value_once(tmp_path, monkeypatch):
    """Covariance route over several step blocks: the grid reads what one decomposition of
    its largest delay reads, value for value."""
    y = linear(6, 3, 60)
    ds = open_trajectory(trajectory(tmp_path / "t.zarr", y))
    obs = Observable(ds, ["x"])
    reads = Reads(monkeypatch)
    budget = 3 * 6 * 12  # blocks of 12 steps
    grid_spectra(obs, KoopmanOptions(), [0, 2, 5], [3, "full"], budget=budget)
    grid = (reads.calls, reads.values)
    reads.reset()
    lag_products(obs, 5, budget=budget)
    assert grid == (reads.calls, reads.values) and reads.calls > 3


@pytest.mark.gpu
def test_the_torch_accumulation_gives_the_same_grid(tmp_path):
    """device cuda's code path (torch, float64; here on the CPU), on both routes."""
    y = linear(12, 2, 14)
    obs = Observable(open_trajectory(trajectory(tmp_path / "t.zarr", y)), ["x"])
    ref = grid_spectra(obs, KoopmanOptions(), [0, 1, 4], [3, "full"])
    got = grid_spectra(obs, KoopmanOptions(device="torch-cpu"), [0, 1, 4], [3, "full"])
    assert {p.route for p in got.values()} == {"gram", "covariance"}
    for key, point in ref.items():
        assert rel_err(got[key].result.eigenvalues, point.result.eigenvalues) < 1e-10, key


@pytest.mark.parametrize(("big", "small"), [(6, 0), (6, 3), (4, 3)])
def test_smaller_delays_lag_products_from_the_largest(tmp_path, big, small):
    y = 1e2 + linear(3, 2, 25)
    obs = Observable(open_trajectory(trajectory(tmp_path / "t.zarr", y)), ["x"])
    b, head, tail = lag_products(obs, big, keep_tail=True)
    ref, ref_head = lag_products(obs, small)
    np.testing.assert_allclose(smaller_lags(b, tail, small), ref, rtol=1e-13)
    np.testing.assert_array_equal(head[:, : small + 1], ref_head)
    np.testing.assert_array_equal(tail, y[:, -(big + 1) :])


def test_a_rank_the_squared_matrix_cannot_resolve_takes_the_qr_route(tmp_path, caplog):
    """Singular values spread over 1e-6: rank full needs the QR route, as decompose takes."""
    rng = np.random.default_rng(3)
    y = rng.standard_normal((3, 30, 5)) * np.logspace(0, -6, 5)
    obs = Observable(open_trajectory(trajectory(tmp_path / "t.zarr", y)), ["x"])
    points = grid_spectra(obs, KoopmanOptions(), [0, 1], [2, "full"])
    ref, facts = decompose(obs, KoopmanOptions(delays=1, rank="full"))
    assert facts["route"] == "qr-wide" == points[(1, "full")].route
    np.testing.assert_array_equal(points[(1, "full")].result.eigenvalues, ref.eigenvalues)
    assert points[(0, "2")].route == "covariance"
    assert "QR route" in caplog.text


# --- stores, table and figure ----------------------------------------------------------------


def runs(tmp_path, seeds=4):
    """Trajectory stores of two conditions: slow (radius 0.9) and fast (0.5) dynamics."""
    out = {}
    for cond, radius in (("slow", 0.9), ("fast", 0.5)):
        for seed in range(seeds):
            y = linear(3, 3, 30, seed=100 * seed, radius=radius, noise=1e-2)
            attrs = {"condition": cond, "seed": seed}
            out[(cond, seed)] = trajectory(tmp_path / f"{cond}{seed}.zarr", y, attrs)
    return out


def test_cli_writes_stores_table_and_heatmap(tmp_path):
    stores = []
    koopman = json.dumps({"delays": 1, "rank": "full"})
    for (cond, seed), path in runs(tmp_path).items():
        out = tmp_path / "grid" / cond / f"seed{seed}.zarr"
        args = ["sensitivity", str(path), "-o", str(out), "--koopman", koopman]
        args += ["--settings", json.dumps({"delays": [0, 1, 2], "ranks": [2, "full"]})]
        args += ["--condition", cond, "--seed", str(seed)]
        assert main(args) == 0
        stores.append(str(out))
    ds = xr.open_zarr(stores[0], consolidated=False)
    assert ds.attrs["role"] == "sensitivity" and ds.attrs["status"] == "complete"
    assert ds["eigenvalues"].dims == ("delays", "rank", "mode")
    assert list(ds["rank"].values) == ["2", "full"] and list(ds["delays"].values) == [0, 1, 2]
    assert ds["modes"].sel(delays=2, rank="full") == 9 and ds["modes"].sel(rank="2").max() == 2
    table_path, figure = tmp_path / "sensitivity.csv", tmp_path / "fig" / "sensitivity.png"
    compare = json.dumps({"permutations": 99, "bootstrap": 199})
    args = ["sensitivity-report", *stores, "-o", str(table_path), "--figure", str(figure)]
    assert main([*args, "--settings", compare]) == 0
    table = read_table(table_path)
    assert list(table.columns[:4]) == ["delays", "rank", "condition_a", "condition_b"]
    assert {"ratio", "ratio_low", "ratio_high", "p_value", "verdict", "main"} <= set(table)
    assert len(table) == 3 * 2 and set(table["rank"]) == {"2", "full"}
    assert table[["condition_a", "condition_b"]].drop_duplicates().values.tolist() == [
        ["slow", "fast"]
    ]
    own = [d == 1 and r == "full" for d, r in zip(table.delays, table["rank"], strict=True)]
    assert table.main.tolist() == own  # the conditions' own settings: delays 1, rank full
    assert (table.ratio > 1).all()  # different dynamics: W between exceeds W within
    assert figure.read_bytes()[:4] == b"\x89PNG" and figure.with_suffix(".pdf").is_file()


def test_the_grid_verdicts_are_the_compare_stages_at_each_point(tmp_path):
    """A grid point computes W and verdict_table as compare does on spectra of those settings."""
    from conjugacy.verdict.compare import write_verdicts

    stores, spectra = [], []
    for (cond, seed), path in runs(tmp_path, seeds=3).items():
        out = tmp_path / "grid" / cond / f"seed{seed}.zarr"
        label = {"condition": cond, "seed": seed}
        write_sensitivity(path, out, KoopmanOptions(), [0, 2], [2], label=label)
        stores.append(out)
        spectrum = str(tmp_path / f"s{cond}{seed}.zarr")
        assert main(["koopman", str(path), "-o", spectrum, "--delays", "2", "--rank", "2"]) == 0
        spectra.append(tmp_path / f"s{cond}{seed}.zarr")
    settings = {"permutations": 99, "bootstrap": 199, "alpha": 0.05, "max_ratio": 1.5}
    table = sensitivity_table(stores, settings)
    ref = write_verdicts(spectra, tmp_path / "cmp", **settings)
    row = table[(table.delays == 2)].iloc[0]
    np.testing.assert_allclose(row.ratio, ref.ratio.iloc[0], rtol=1e-9)
    np.testing.assert_allclose(row.p_value, ref.p_value.iloc[0])
    assert row.verdict == ref.verdict.iloc[0]


def test_a_diverged_run_is_left_out_and_named(tmp_path):
    paths = runs(tmp_path, seeds=3)
    bad = trajectory(
        tmp_path / "bad.zarr",
        linear(3, 3, 30),
        {"condition": "slow", "seed": 7},
        status="diverged",
    )
    stores = []
    for (cond, seed), path in [*paths.items(), (("slow", 7), bad)]:
        out = tmp_path / "grid" / cond / f"seed{seed}.zarr"
        write_sensitivity(path, out, KoopmanOptions(), [1], [2], skip_diverged=True)
        stores.append(out)
    assert xr.open_zarr(stores[-1], consolidated=False).attrs["status"] == "excluded"
    with pytest.raises(StoreError, match="diverged"):
        write_sensitivity(bad, tmp_path / "x.zarr", KoopmanOptions(), [1], [2])
    table = sensitivity_table(stores, {"permutations": 99, "bootstrap": 199})
    assert len(table) == 1 and table.n_within.iloc[0] == 3 + 3  # seed 7 left out


def test_checks_before_reading(tmp_path):
    path = trajectory(tmp_path / "t.zarr", linear(3, 2, 10))
    with pytest.raises(ConfigError, match=r"option --delays .*9 delays need at least 11"):
        write_sensitivity(path, tmp_path / "o.zarr", KoopmanOptions(), [0, 9], [2])
    with pytest.raises(StoreError, match="GiB"):
        write_sensitivity(path, tmp_path / "o.zarr", KoopmanOptions(), [0], [2], max_memory=1000)
    assert not (tmp_path / "o.zarr").exists()
    out = tmp_path / "a.zarr"
    write_sensitivity(path, out, KoopmanOptions(), [0, 1], [2], label={"condition": "a", "seed": 0})
    other = tmp_path / "b.zarr"
    write_sensitivity(
        path, other, KoopmanOptions(), [0, 2], [2], label={"condition": "b", "seed": 0}
    )
    with pytest.raises(StoreError, match="different grids"):
        sensitivity_table([out, other], {})


def test_cli_needs_a_grid(tmp_path, capsys):
    path = trajectory(tmp_path / "t.zarr", linear(3, 2, 10))
    assert main(["sensitivity", str(path), "-o", str(tmp_path / "o.zarr"), "--delays", "1"]) == 2
    assert "--ranks" in capsys.readouterr().err
    args = ["sensitivity", str(path), "-o", str(tmp_path / "o.zarr"), "--delays", "1"]
    assert main([*args, "--ranks", "2", "--koopman", '{"delays": -1}']) == 2
    assert "option --koopman key delays" in capsys.readouterr().err


# --- config ----------------------------------------------------------------------------------


def tiny(**sensitivity):
    return {
        "experiment": "t",
        "conditions": {
            "omd": {"system": "omd", "steps": 30, "koopman": {"delays": 2}},
            "ogd": {"system": "ogd", "steps": 30},
        },
        "sensitivity": sensitivity,
    }


def test_config_section():
    cfg = config.resolve(tiny(delays=[0, 4], ranks=[5, "full", 0.99]))
    assert cfg["sensitivity"] == {"delays": [0, 4], "ranks": [5, "full", 0.99]}
    check_sensitivity_section(cfg)
    absent = {k: v for k, v in tiny().items() if k != "sensitivity"}
    assert "sensitivity" not in config.resolve(absent)  # absent: the stage does not run
    for bad, match in [
        ({"delays": [-1], "ranks": [2]}, "sensitivity.delays.0"),
        ({"delays": [1], "ranks": [0]}, "sensitivity.ranks.0"),
        ({"delays": [1], "ranks": ["most"]}, "sensitivity.ranks.0"),
        ({"delays": [1]}, "'ranks' is a required property"),
        ({"delays": [1], "ranks": [2], "windows": 3}, "allowed keys"),
    ]:
        with pytest.raises(ConfigError, match=match):
            config.resolve(tiny(**bad))
    cfg = config.resolve(tiny(delays=[0, 30], ranks=[2]))
    with pytest.raises(
        ConfigError, match=r"sensitivity.delays \(omd\): 30 delays need at least 32"
    ):
        check_sensitivity_section(cfg)


# --- stability -------------------------------------------------------------------------------


def grid_table(verdicts: dict[tuple[str, str], list[str]]) -> pd.DataFrame:
    rows = []
    for (a, b), calls in verdicts.items():
        for i, call in enumerate(calls):
            rows.append(
                {
                    "delays": [0, 4][i // 2],
                    "rank": ["5", "full"][i % 2],
                    "condition_a": a,
                    "condition_b": b,
                    "ratio": 1.0 + i,
                    "verdict": call,
                    "main": i == 3,
                }
            )
    return pd.DataFrame(rows)


def test_stability_of_each_pair():
    c, n, i = "conjugate", "not conjugate", "inconclusive"
    table = grid_table(
        {("a", "b"): [c, c, c, c], ("a", "x"): [n, i, n, n], ("b", "x"): [c, n, i, c]}
    )
    s = stability(table).set_index(["condition_a", "condition_b"])
    assert s.loc[("a", "b")].stable and s.loc[("a", "b")].verdict == c
    assert not s.loc[("a", "x")].stable and not s.loc[("a", "x")].contradictory
    assert s.loc[("b", "x")].contradictory and s.loc[("b", "x")].verdict == "mixed"
    assert s.loc[("a", "x")].main == n and s.loc[("b", "x")].main == c
    rows = stability(table).to_dict("records")
    assert statement(rows[0]) == "**stable**: conjugate at all 4 grid points"
    assert statement(rows[1]) == (
        "**not stable**: inconclusive at 1, not conjugate at 3 of 4 grid points (never conjugate)"
    )
    assert "conjugate at 2, inconclusive at 1, not conjugate at 1 of 4" in statement(rows[2])
    assert "depends on the settings" in statement(rows[2])
    text = stability_section(table)
    assert "delays [0, 4] x ranks [5, full]" in text
    assert "stable across the grid for 1 of 3 pairs" in text
    assert "| a vs b | 4 | 0 | 0 | conjugate |" in text
    one = stability_section(grid_table({("a", "b"): [c, c, c, c]}))
    assert "The verdict of every pair is stable across the grid." in one


def test_summary_has_the_section_only_with_a_table():
    cfg = config.resolve(tiny(delays=[0], ranks=[2]))
    verdicts = pd.DataFrame({"condition_a": ["omd"], "condition_b": ["ogd"], "verdict": ["x"]})
    bench = pd.DataFrame(columns=["job", "stage", "s", "cpu_s", "start", "end"])
    assert "Sensitivity" not in render(cfg, verdicts, bench)
    c = "conjugate"
    text = render(cfg, verdicts, bench, grid_table({("omd", "ogd"): [c, c, c, c]}))
    assert "## Sensitivity to the Koopman settings" in text
    assert text.index("## Verdicts") < text.index("## Sensitivity") < text.index("## Settings")
