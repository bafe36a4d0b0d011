"""Helpers to run the workflow for real on a copy of the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_PARTS = ("Snakefile", "workflow", "src", "config", "envs", "profiles")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/workflow and tests/slurm run Snakemake: mark them `workflow`."""
    for item in items:
        parts = Path(item.fspath).relative_to(REPO / "tests").parts
        if parts[0] in ("workflow", "slurm"):
            item.add_marker(pytest.mark.workflow)
        if parts[0] == "slurm":
            item.add_marker(pytest.mark.slow)


def copy_project(root: Path) -> Path:
    """The workflow and library copied to `root` (so a test may edit code or break things)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_PARTS:
        src = REPO / name
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(src, root / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy(src, root / name)
    return root


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def job_env() -> dict[str, str]:
    """The environment of a workflow run: this interpreter's `python` first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the snakemake command line in `root`; with check, fail the test on a non-zero exit."""
    run = subprocess.run(
        ["snakemake", *args], cwd=root, env=job_env(), capture_output=True, text=True
    )
    if check:
        assert run.returncode == 0, run.stderr[-4000:]
    return run


def dry_run(root: Path, config: Path) -> list[dict]:
    """The jobs a dry run through the Snakemake API plans: rule, condition, gpu, group, priority."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        Quietness,
        ResourceSettings,
        StorageSettings,
    )

    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
            wf = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(configfiles=[config]),
                storage_settings=StorageSettings(),
                snakefile=root / "Snakefile",
                workdir=root,
            )
            dag = wf.dag(DAGSettings())
            dag.execute_workflow(executor="dryrun")
            return [
                {
                    "rule": job.rule.name,
                    "condition": job.wildcards.get("condition"),
                    "gpu": job.resources.get("gpu"),
                    "group": job.group,
                    "priority": job.priority,
                }
                for job in dag.workflow_api._workflow.dag.finished_jobs
            ]
    finally:
        os.chdir(cwd)  # the API changes into the workflow's directory


def assert_stores_identical(a: Path, b: Path) -> None:
    """Bitwise equality of every variable and coordinate of two stores."""
    da = xr.open_zarr(a, consolidated=False)
    db = xr.open_zarr(b, consolidated=False)
    assert set(da.variables) == set(db.variables), (a, b)
    for name in da.variables:
        va, vb = da[name].values, db[name].values
        assert va.dtype == vb.dtype, (a, name)
        assert np.array_equal(va, vb, equal_nan=va.dtype.kind in "fc"), (a, name)


class StepCounter:
    """Counts a system's optimizer updates and can stop training after `stop_after` of them.

    Stopping raises KeyboardInterrupt inside the update, as a wall-time
    limit or a kill would interrupt the job.
    """

    def __init__(self, monkeypatch, cls, stop_after: float = float("inf")) -> None:
        self.calls, self.stop_after = 0, stop_after
        original = cls.step

        def step(system):
            self.calls += 1
            if self.calls > self.stop_after:
                raise KeyboardInterrupt
            return original(system)

        monkeypatch.setattr(cls, "step", step)

    def reset(self, stop_after: float = float("inf")) -> None:
        self.calls, self.stop_after = 0, stop_after


def net_config(**extra) -> dict:
    """A tiny FCN experiment recording every weight (prune and monitor tests)."""
    cond = {
        "system": "fcn",
        "hidden": 4,
        "steps": 60,
        "inits": 2,
        "batch_size": 30,
        "record": ["fc1.weight", "fc2.weight"],
        **extra,
    }
    return {"experiment": "t", "seeds": [0], "conditions": {"net": cond}}


@pytest.fixture()
def one_torch_thread():
    """torch on one thread for the test: tiny ops on two busy cores are slower with more."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
