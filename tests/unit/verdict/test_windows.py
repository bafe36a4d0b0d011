"""Successive windows as a Koopman option (config, workflow) and the windows stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import REPO, dry_run, write_config

from conjugacy import config
from conjugacy.cli import main
from conjugacy.report.windows import write_window_figures
from conjugacy.stores.contract import write_dataset
from conjugacy.verdict.windows import distances, load_windows, write_windows


def fcn_cond(windows, steps: int = 40, delays: int = 2, **koopman) -> dict:
    return {
        "system": "fcn",
        "hidden": 3,
        "steps": steps,
        "inits": 2,
        "koopman": {"delays": delays, "rank": 3, "windows": windows, **koopman},
    }


def resolve(cond: dict) -> dict:
    return config.resolve({"experiment": "w", "conditions": {"a": cond}})["conditions"]["a"]


def test_window_bounds_are_successive():
    assert config.window_bounds({"start": 5, "length": 10, "count": 3}) == [
        (5, 15),
        (15, 25),
        (25, 35),
    ]
    cond = resolve(fcn_cond({"length": 20, "count": 2}))
    assert cond["koopman"]["windows"] == {"start": 0, "length": 20, "count": 2}
    assert resolve(fcn_cond(None))["koopman"]["windows"] is None


EXPECTED_WINDOWS = r"koopman\.windows: .*; expected a mapping \{start: .*count: integer >= 2\}"


@pytest.mark.parametrize(
    ("windows", "delays", "message"),
    [
        # steps 0..40 are recorded: window 2 of [20, 30), [30, 40), [40, 50) runs past them
        ({"start": 20, "length": 10, "count": 3}, 2, r"koopman\.windows: window 2 is \[40, 50\)"),
        # 8 delays need 10 snapshots, a window of 6 has 6
        (
            {"length": 6, "count": 2},
            8,
            r"koopman\.delays \(window 0: \[0, 6\)\): 8 delays need at least 10",
        ),
        ({"length": 10, "count": 1}, 2, EXPECTED_WINDOWS),
        ({"length": 10}, 2, EXPECTED_WINDOWS),
    ],
)
def test_bad_windows_are_config_errors_naming_the_key(windows, delays, message):
    with pytest.raises(config.ConfigError, match=r"conditions\.a\." + message):
        resolve(fcn_cond(windows, delays=delays))


def spectrum(path, condition: str, seed: int, window: tuple[int, int], eigenvalues) -> str:
    ds = xr.Dataset(
        {"eigenvalues": ("mode", np.asarray(eigenvalues, dtype=np.complex128))},
        attrs={"condition": condition, "seed": seed, "window": list(window)},
    )
    write_dataset(ds, path, role="spectrum")
    return str(path)


# Window k of every seed is the seed's own spectrum translated by OFFSETS[k]:
# W1 between a point set and its translate by c is |c| exactly, so W between
# successive windows of a seed is |OFFSETS[k+1] - OFFSETS[k]|.
OFFSETS = np.array([0.0, 0.4, 0.5, 0.5])
WINDOWS = [(0, 10), (10, 20), (20, 30), (30, 40)]


@pytest.fixture
def window_spectra(tmp_path):
    return make_window_spectra(tmp_path, 5)


def make_window_spectra(tmp_path, seeds: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for seed in range(seeds):
        # the same spectrum in every seed, up to a small seed-to-seed spread
        base = 0.8 * np.exp(1j * np.array([0.3, 1.2, 2.5])) + 0.01 * rng.normal(size=3)
        base = np.concatenate([base, base.conj()])
        for k, window in enumerate(WINDOWS):
            for cond, scale in (("slow", 1.0), ("fast", 2.0)):
                path = tmp_path / "spectra" / cond / f"seed{seed}" / f"window{k}.zarr"
                paths.append(spectrum(path, cond, seed, window, base + scale * OFFSETS[k]))
    return paths


def test_successive_w_and_all_vs_all_match_the_translations(window_spectra):
    ds = distances(load_windows(window_spectra))
    assert list(ds["condition"].values) == ["slow", "fast"]
    assert list(ds["window_start"].values) == [0, 10, 20, 30]
    for cond, scale in (("slow", 1.0), ("fast", 2.0)):
        expected = scale * np.abs(np.diff(OFFSETS))
        got = ds["successive"].sel(condition=cond).values  # (transition, seed)
        assert np.allclose(got, expected[:, None], atol=1e-12)
        w = ds["w"].sel(condition=cond).values
        same_seed = np.einsum("aibi->abi", w)
        assert np.allclose(same_seed[0, 3], scale * 0.5) and np.allclose(same_seed[1, 1], 0)
        assert np.allclose(w, w.transpose(2, 3, 0, 1))  # symmetric


def test_windows_stage_tables_verdicts_and_figures(window_spectra, tmp_path):
    out = tmp_path / "out"
    table = write_windows(window_spectra, out, permutations=999)
    write_window_figures(out / "windows.zarr", tmp_path / "figs")
    slow = table[table.condition == "slow"].set_index("window_a")
    # 0 -> 1 moves every eigenvalue by 0.4, far beyond the seed-to-seed spread;
    # 2 -> 3 is the same spectra again: between == within, nothing to detect.
    assert slow.loc[0, "verdict"] == "changed" and slow.loc[0, "p_corrected"] < 0.05
    assert slow.loc[2, "verdict"] == "same dynamics" and slow.loc[2, "ratio"] <= 1.0
    assert slow.loc[0, "steps_a"] == "0:10" and slow.loc[0, "steps_b"] == "10:20"
    # The interval the verdicts read: far above the margin for the move, and for the
    # repeat at most 4/5 (seeds drawn paired: a seed's own W(k, k + 1) = 0 enters between).
    assert slow.loc[0, "ratio_low"] > 1.5 and slow.loc[0, "ratio_level"] == pytest.approx(0.9)
    assert slow.loc[2, "ratio_high"] <= 0.8 + 1e-12
    assert slow.loc[2, "ratio"] == pytest.approx(0.8)
    succ = pd.read_csv(out / "windows_successive.csv")
    assert len(succ) == 2 * 5 * 3
    row = succ[(succ.condition == "fast") & (succ.seed == 4) & (succ.transition == 0)]
    assert np.isclose(row.w.item(), 0.8) and row.start_b.item() == 10
    flat = pd.read_csv(out / "windows_all.csv")
    assert len(flat) == 2 * (4 * 5) ** 2
    stored = xr.open_zarr(out / "windows.zarr", consolidated=False)
    assert stored.attrs["status"] == "complete" and stored["w"].shape == (2, 4, 5, 4, 5)
    for name in ("windows_successive", "windows_heatmap"):
        assert (tmp_path / "figs" / f"{name}.png").stat().st_size > 10_000
        assert (tmp_path / "figs" / f"{name}.pdf").is_file()


@pytest.mark.parametrize(
    ("seeds", "moved", "repeated"),
    [
        # 2 seeds: no interval, no verdict either way
        (2, "inconclusive", "inconclusive"),
        # 3 seeds: the repeat is shown equivalent by the interval alone; the move is far
        # above the margin, but "changed" also needs the permutation test, whose smallest
        # p with 3 + 3 seeds is 2/20 = 0.1
        (3, "inconclusive", "same dynamics"),
        # 4 seeds: smallest p 2/70, but Holm over the 3 transitions needs p < 0.05/3
        (4, "inconclusive", "same dynamics"),
    ],
)
def test_window_verdicts_with_few_seeds(tmp_path, seeds, moved, repeated):
    table = write_windows(make_window_spectra(tmp_path, seeds), tmp_path / "out", bootstrap=500)
    slow = table[table.condition == "slow"].set_index("window_a")
    assert slow.loc[0, "verdict"] == moved
    assert slow.loc[2, "verdict"] == repeated
    if seeds >= 3:
        assert slow.loc[0, "ratio_low"] > 1.5 and slow.loc[2, "ratio_high"] < 1.0
    else:
        assert slow[["ratio_low", "ratio_high"]].isna().all().all()


def test_windows_bootstrap_options_reach_the_table(window_spectra, tmp_path):
    first = write_windows(window_spectra, tmp_path / "a", permutations=99, bootstrap_seed=1)
    again = write_windows(window_spectra, tmp_path / "b", permutations=99, bootstrap_seed=1)
    pd.testing.assert_frame_equal(first, again)
    argv = ["windows", *window_spectra, "-o", str(tmp_path / "c"), "--permutations", "99"]
    assert main([*argv, "--bootstrap-seed", "1", "--bootstrap", "2000"]) == 0
    cli = pd.read_csv(tmp_path / "c" / "windows_transitions.csv")
    np.testing.assert_allclose(cli.ratio_high, first.ratio_high)
    assert main([*argv, "--bootstrap", "50"]) == 2  # below the schema's minimum of 99


def test_windows_command_refuses_a_spectrum_without_a_window(tmp_path, capsys):
    good = spectrum(tmp_path / "a.zarr", "c", 0, (0, 10), [0.5, 0.9])
    bare = tmp_path / "b.zarr"
    write_dataset(xr.Dataset({"eigenvalues": ("mode", np.ones(2, complex))}), bare, role="spectrum")
    assert main(["windows", good, str(bare), "-o", str(tmp_path / "o")]) == 2
    assert "b.zarr has no window" in capsys.readouterr().err
    missing = spectrum(tmp_path / "c.zarr", "c", 1, (10, 20), [0.5, 0.9])
    assert main(["windows", good, missing, "-o", str(tmp_path / "o")]) == 2
    assert "condition 'c' seed 1 has no spectrum of window [0, 10)" in capsys.readouterr().err


def test_workflow_plans_one_koopman_job_per_window_only_where_asked(tmp_path):
    cfg = {
        "experiment": "wplan",
        "seeds": [0, 1],
        "conditions": {
            "win": fcn_cond({"start": 10, "length": 10, "count": 3}),
            "plain": fcn_cond(None, hidden=4),
        },
    }
    cfg["conditions"]["plain"] = {**fcn_cond(None), "hidden": 4}
    jobs = dry_run(REPO, write_config(tmp_path / "c.yaml", cfg))
    count = lambda rule, cond=None: sum(  # noqa: E731
        1
        for j in jobs
        if j["rule"].rsplit("_block", 1)[0] in (rule, f"{rule}_{j['condition']}")
        and (cond is None or j["condition"] == cond)
    )
    assert count("koopman_window", "win") == 2 * 3 and count("koopman_window", "plain") == 0
    # train and koopman: one job per condition for its block of 2 seeds (seeds_per_job 5)
    assert count("koopman") == 2 and count("windows") == 1 and count("train") == 2
    default = dry_run(REPO, REPO / "config" / "config.yaml")
    assert not [j for j in default if j["rule"] in ("koopman_window", "windows")]
