"""End to end: a config with a `sensitivity` section runs the grid, its table and figure,
and summary.md says whether each verdict is stable; a changed grid reruns only that stage."""

from __future__ import annotations

import collections
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import copy_project, dry_run, snakemake, write_config

GRIDDED = {
    "experiment": "gridded",
    "seeds": [0, 1, 2],
    "compare": {"pairs": [["omd", "ogd"]], "permutations": 99, "bootstrap": 199},
    "sensitivity": {"delays": [1, 2], "ranks": [2, "full"]},
    "conditions": {
        "omd": {"system": "omd", "steps": 30, "koopman": {"delays": 2}},
        "ogd": {"system": "ogd", "steps": 30, "koopman": {"delays": 2}},
        "bisection": {"system": "bisection", "steps": 30},  # in no pair: no grid
    },
}


@pytest.fixture(scope="module")
def gridded(tmp_path_factory) -> Path:
    root = copy_project(tmp_path_factory.mktemp("gridded"))
    config = write_config(root / "gridded.yaml", GRIDDED)
    snakemake(root, "--cores", "2", "--configfile", str(config), "--quiet", "rules")
    return root


@pytest.mark.slow
def test_the_grid_runs_end_to_end(gridded: Path) -> None:
    out = gridded / "results" / "gridded"
    table = pd.read_csv(out / "sensitivity.csv", dtype={"rank": str})
    assert table[["delays", "rank"]].values.tolist() == [
        [1, "2"],
        [1, "full"],
        [2, "2"],
        [2, "full"],
    ]
    assert (table.condition_a == "omd").all() and (table.condition_b == "ogd").all()
    assert table.main.tolist() == [False, False, False, True]  # delays 2, rank full: their own
    assert set(table.verdict) <= {"conjugate", "not conjugate", "inconclusive"}
    assert (out / "figures" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    grid = xr.open_zarr(out / "sensitivity/ogd/seed1.zarr", consolidated=False)
    assert grid.attrs["role"] == "sensitivity" and grid.attrs["condition"] == "ogd"
    assert not (out / "sensitivity" / "bisection").exists()
    # The grid point equal to the conditions' own settings is the compare stage's verdict.
    main = pd.read_csv(out / "conjugacy.csv").iloc[0]
    own = table[table.main].iloc[0]
    assert own.verdict == main.verdict and own.ratio == pytest.approx(main.ratio, rel=1e-9)
    summary = (out / "summary.md").read_text()
    assert "## Sensitivity to the Koopman settings" in summary
    assert "delays [1, 2] x ranks [2, full]" in summary and "| omd vs ogd |" in summary
    assert "grid points" in summary


@pytest.mark.slow
def test_a_changed_grid_reruns_the_grid_and_the_summary_only(gridded: Path) -> None:
    cfg = yaml.safe_load(yaml.safe_dump(GRIDDED))
    cfg["sensitivity"]["ranks"] = [2]
    jobs = collections.Counter(
        job["rule"] for job in dry_run(gridded, write_config(gridded / "changed.yaml", cfg))
    )
    assert jobs == {
        "sensitivity_omd_block0": 1,  # seeds_per_job 5: one job per condition here
        "sensitivity_ogd_block0": 1,
        "sensitivity_report": 1,
        "summary": 1,
        "all": 1,
    }
