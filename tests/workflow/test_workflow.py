"""End to end: the workflow on a tiny config, and what a change makes Snakemake rerun.

The repository's workflow and library are copied into a temporary directory
(so a test can edit library code), run once for real through the command
line, then asked through the Snakemake API which jobs a change would rerun.
"""

from __future__ import annotations

import collections
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import copy_project, dry_run, job_env, net_config, snakemake, write_config

TINY = {
    "experiment": "tiny",
    "seeds": [0, 1, 2],
    "compare": {"pairs": [["omd", "ogd"], ["narrow", "wide"]], "permutations": 99},
    "conditions": {
        "omd": {"system": "omd", "steps": 30, "koopman": {"delays": 2}},
        "ogd": {"system": "ogd", "steps": 30, "koopman": {"delays": 2}},
        "narrow": {
            "system": "fcn",
            "hidden": 3,
            "steps": 25,
            "inits": 3,
            "koopman": {"delays": 2, "rank": 4},
        },
        "wide": {
            "system": "fcn",
            "hidden": 6,
            "steps": 25,
            "inits": 3,
            "koopman": {"delays": 1, "rank": 4},
        },
    },
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the workflow with the tiny experiment already run once."""
    root = copy_project(tmp_path_factory.mktemp("project"))
    config = write_config(root / "tiny.yaml", TINY)
    snakemake(root, "--cores", "2", "--configfile", str(config), "--quiet", "rules")
    return root


def stage(rule: str) -> str:
    """A rule's stage: train_<condition>_block<k> (and koopman_...) run a block of seeds."""
    block = re.fullmatch(r"(train|koopman)_.+_block\d+", rule)
    return block.group(1) if block else rule


def planned_jobs(root: Path, config: Path) -> collections.Counter:
    """Jobs a dry run through the Snakemake API would execute, counted by stage and condition.

    Training and Koopman jobs run a block of seeds each (seeds_per_job, default 5):
    the tiny experiment's 3 seeds per condition are one job per condition and stage.
    """
    return collections.Counter(
        (stage(job["rule"]), job["condition"]) for job in dry_run(root, config)
    )


def changed(root: Path, name: str, edit) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    edit(cfg)
    return write_config(root / name, cfg)


def test_outputs_follow_the_contracts(project: Path) -> None:
    out = project / "results" / "tiny"
    table = pd.read_csv(out / "conjugacy.csv")
    assert list(table.columns[:11]) == [
        "condition_a", "condition_b", "n_between", "w_between_mean", "w_between_sd",
        "n_within", "w_within_mean", "w_within_sd", "p_value", "verdict", "excluded",
    ]  # fmt: skip
    assert table[["condition_a", "condition_b"]].values.tolist() == [
        ["omd", "ogd"],
        ["narrow", "wide"],
    ]
    assert set(table.verdict) <= {"conjugate", "not conjugate", "inconclusive"}
    assert (table.n_between == 9).all() and (table.n_within == 6).all()

    traj = xr.open_zarr(out / "trajectories/narrow/seed1.zarr", consolidated=False)
    assert traj["fc2.weight"].dims == ("init", "step", "fc2.weight_dim0", "fc2.weight_dim1")
    assert traj["fc2.weight"].shape == (3, 26, 10, 3)
    assert traj["fc2.weight"].dtype == "float32"
    assert traj.attrs["condition"] == "narrow" and traj.attrs["seed"] == 1
    assert traj.attrs["config"]["hidden"] == 3 and traj.attrs["status"] == "complete"

    spec = xr.open_zarr(out / "spectra/omd/seed0.zarr", consolidated=False)
    assert spec["eigenvalues"].dtype == "complex128" and spec.sizes["mode"] == 6
    assert spec.attrs["delays"] == 2 and spec.attrs["rank"] == 6

    dist = xr.open_zarr(out / "distances.zarr", consolidated=False)["w"]
    assert dist.dims == ("condition_a", "seed_a", "condition_b", "seed_b")
    w = dist.sel(condition_a="omd", condition_b="ogd").values
    assert (w > 0).all()
    assert float(dist.sel(condition_a="omd", seed_a=1, condition_b="omd", seed_b=1)) == 0.0

    for name in ("spectra", "distances", "w_distributions", "loss"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    summary = (out / "summary.md").read_text()
    assert "| omd vs ogd |" in summary and "| narrow vs wide |" in summary
    assert "## Wall time" in summary and "| train | 4 |" in summary


def test_a_second_run_has_nothing_to_do(project: Path) -> None:
    assert planned_jobs(project, project / "tiny.yaml") == collections.Counter()


def test_koopman_option_change_reruns_koopman_and_after_only(project: Path) -> None:
    def edit(cfg):
        cfg["conditions"]["ogd"]["koopman"]["delays"] = 3

    jobs = planned_jobs(project, changed(project, "koopman.yaml", edit))
    assert jobs == {
        ("koopman", "ogd"): 1,
        ("compare", None): 1,
        ("figures_runs", None): 1,
        ("figures_verdicts", None): 1,
        ("summary", None): 1,
        ("all", None): 1,
    }


def test_training_option_change_reruns_that_condition_and_downstream(project: Path) -> None:
    def edit(cfg):
        cfg["conditions"]["wide"]["lr"] = 0.05

    jobs = planned_jobs(project, changed(project, "train.yaml", edit))
    assert jobs == {
        ("train", "wide"): 1,
        ("koopman", "wide"): 1,
        ("compare", None): 1,
        ("figures_runs", None): 1,
        ("figures_verdicts", None): 1,
        ("summary", None): 1,
        ("all", None): 1,
    }


def test_compare_option_change_reruns_compare_and_its_figures(project: Path) -> None:
    """The spectra and loss figures do not depend on the verdicts: they are not redrawn."""

    def edit(cfg):
        cfg["compare"]["alpha"] = 0.01

    jobs = planned_jobs(project, changed(project, "compare.yaml", edit))
    assert jobs == {
        ("compare", None): 1,
        ("figures_verdicts", None): 1,
        ("summary", None): 1,
        ("all", None): 1,
    }


@pytest.mark.parametrize(
    ("module", "first"),
    [
        ("koopman/dmd.py", "koopman"),
        ("systems/toys.py", "train"),
        ("verdict/stats.py", "compare"),
        ("verdict/spectra.py", "compare"),
    ],
)
def test_library_code_change_reruns_its_stage_and_after(project: Path, module, first) -> None:
    path = project / "src" / "conjugacy" / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        jobs = planned_jobs(project, project / "tiny.yaml")
    finally:
        path.write_text(original)
    stages = {rule for rule, _ in jobs}
    order = ["train", "koopman", "compare", "figures_verdicts", "summary", "all"]
    # The spectra figure reads spectra with verdict/spectra.py (not the statistics): it
    # reruns after new spectra or an edit of that reader, not after an edit of stats.py.
    runs_figure = module != "verdict/stats.py"
    assert stages == {*order[order.index(first) :], *(["figures_runs"] * runs_figure)}
    if first == "train":  # toys.py is the toy systems' code: every condition's train reruns
        assert jobs[("train", "omd")] == 1
    if first == "koopman":
        assert sum(n for (rule, _), n in jobs.items() if rule == "koopman") == 4


def test_plain_snakemake_uses_the_default_profile(tmp_path):
    """`snakemake` alone (no --cores) works: the default profile is found and says so."""
    root = copy_project(tmp_path / "p")
    run = subprocess.run(
        ["snakemake", "-n"], cwd=root, env=job_env(), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Using workflow specific profile profiles/default" in run.stdout + run.stderr


MONITORED = {
    **net_config(steps=40),
    "seeds": [0, 1],
    "monitor": {"conditions": ["net"], "window": 20, "stride": 10, "rank": 3},
}


@pytest.fixture(scope="module")
def monitored(tmp_path_factory) -> Path:
    """A copy of the workflow with an experiment that has a `monitor` section, run once."""
    root = copy_project(tmp_path_factory.mktemp("monitored"))
    config = write_config(root / "monitored.yaml", MONITORED)
    snakemake(root, "--cores", "2", "--configfile", str(config), "--quiet", "rules")
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "rerun", "kept"),
    [
        ("koopman/backend.py", {"koopman", "monitor", "monitor_report"}, {"train", "prune"}),
        (
            "report/style.py",
            {"figures_runs", "figures_verdicts", "monitor", "monitor_report"},
            {"train", "koopman"},
        ),
    ],
)
def test_an_edit_reruns_every_stage_that_imports_it(monitored: Path, module, rerun, kept) -> None:
    """The accumulation backend serves koopman and monitor alike; the plot style no training."""
    path = monitored / "src" / "conjugacy" / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        jobs = planned_jobs(monitored, monitored / "monitored.yaml")
    finally:
        path.write_text(original)
    stages = {rule for rule, _ in jobs}
    assert rerun <= stages and not kept & stages, stages
