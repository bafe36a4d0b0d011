"""The tutorial (docs/tutorial.md, examples/own_runs.py) runs as written, on a reduced size."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, copy_project, job_env, snakemake


@pytest.mark.slow
def test_the_tutorial_runs_end_to_end_and_both_paths_agree(tmp_path):
    root = copy_project(tmp_path / "project")
    script = REPO / "examples" / "own_runs.py"
    small = ["--out", "my_runs", "--seeds", "3", "--runs", "2", "--steps", "40", "--delays", "2"]
    run = subprocess.run(
        [sys.executable, str(script), *small],
        cwd=root, env=job_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sgd" in run.stdout and "adam" in run.stdout
    assert "snakemake --cores all --configfile my_runs/own.yaml" in run.stdout

    snakemake(root, "--cores", "2", "--configfile", "my_runs/own.yaml", "--quiet", "rules")
    results = root / "results" / "own_runs"
    assert not (results / "trajectories").exists()  # the workflow trained nothing
    table = pd.read_csv(results / "conjugacy.csv")
    assert table[["condition_a", "condition_b"]].values.tolist() == [["sgd", "adam"]]
    python_ratio = np.load(root / "my_runs" / "ratio.npy")
    np.testing.assert_allclose(table["ratio"].to_numpy(), python_ratio, rtol=1e-12)
    summary = (results / "summary.md").read_text()
    assert "## Your own runs" in summary and "optimizer sgd" in summary
