"""The workflow through a real SLURM cluster: run by `make test-slurm`, which starts one.

A tiny experiment is submitted with the workflow's cluster profile
(profiles/slurm) and the test cluster's site profile (tests/slurm/site, what a
user keeps in their own global profile). The checks read what SLURM was asked
for (`scontrol show job` of every job the executor reports submitting) and
compare the results with a local run of the same config.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import pytest

if not os.environ.get("CONJUGACY_SLURM"):
    pytest.skip("needs the test SLURM cluster: run `make test-slurm`", allow_module_level=True)

from conftest import assert_stores_identical, copy_project, snakemake, write_config

SITE = Path(__file__).parent / "site"
# One condition per kind of job: CPU, one GPU, two GPUs (computed on the CPU:
# `gpus` only sets what the job requests).
TINY = {
    "experiment": "tiny",
    "seeds": [0, 1],
    "seeds_per_job": 1,  # one job per seed: the bundling below counts them
    "compare": {"pairs": [["narrow", "wide"]], "permutations": 99},
    "conditions": {
        "omd": {"system": "omd", "steps": 30, "koopman": {"delays": 2}},
        "narrow": {
            "system": "fcn",
            "hidden": 3,
            "steps": 25,
            "inits": 3,
            "gpus": 1,
            "koopman": {"delays": 2, "rank": 4},
        },
        "wide": {
            "system": "fcn",
            "hidden": 6,
            "steps": 25,
            "inits": 3,
            "gpus": 2,
            "koopman": {"delays": 1, "rank": 4},
        },
    },
}
# A condition whose training fails on a machine without CUDA, next to one that works.
FAILING = {
    "experiment": "failing",
    "seeds": [0, 1],
    "seeds_per_job": 1,
    "compare": {"permutations": 99},
    "conditions": {
        "omd": {"system": "omd", "steps": 30, "koopman": {"delays": 2}},
        "broken": {
            "system": "fcn",
            "hidden": 3,
            "steps": 25,
            "inits": 3,
            "device": "cuda",
            "koopman": {"delays": 2, "rank": 4},
        },
    },
}
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) ")


def project(root: Path, cfg: dict) -> Path:
    copy_project(root)  # with the profiles
    write_config(root / "config.yaml", cfg)
    return root


def on_slurm(root: Path, check: bool = True) -> subprocess.CompletedProcess:
    """The README's cluster command, with the test cluster's site profile."""
    return snakemake(
        root,
        "--workflow-profile",
        "profiles/slurm",
        "--profile",
        str(SITE),
        "--configfile",
        "config.yaml",
        check=check,
    )


def submitted(run: subprocess.CompletedProcess) -> list[dict[str, str]]:
    """What SLURM was asked for, for every job the executor reports submitting."""
    jobs = []
    for jobid in SUBMITTED.findall(run.stderr):
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True, check=True
        ).stdout
        jobs.append(dict(re.findall(r"(\w+)=(\S*)", out)))
    return jobs


def kind(job: dict[str, str]) -> str:
    """The executor's comment names the group: train, train_gpu or koopman."""
    return re.match(r"rule_(train_gpu|train|koopman)_", job["Comment"]).group(1)


def device_line(log: Path) -> str:
    return re.search(r"gpu_slot: CUDA_VISIBLE_DEVICES=(\S*)", log.read_text()).group(1)


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    root = project(tmp_path_factory.mktemp("slurm"), TINY)
    return root, on_slurm(root)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = project(tmp_path_factory.mktemp("local"), TINY)
    snakemake(root, "--cores", "2", "--configfile", "config.yaml")
    return root


def test_gpu_jobs_request_their_gpus_and_cpu_jobs_none(cluster_run):
    root, run = cluster_run
    jobs = submitted(run)
    assert jobs
    for job in jobs:
        if kind(job) == "train_gpu":
            assert job["Partition"] == "gpu", job
            assert job["TresPerJob"] in ("gres:gpu:1", "gres:gpu:2"), job
        else:
            assert job["Partition"] == "cpu", job
            assert "TresPerJob" not in job, job
    requested = sorted(job["TresPerJob"] for job in jobs if kind(job) == "train_gpu")
    assert requested == ["gres:gpu:1"] * 2 + ["gres:gpu:2"] * 2  # narrow x 2, wide x 2
    # Each training job sees the GPUs SLURM gave it, CPU jobs none.
    logs = root / "results/tiny/logs/train"
    for seed in (0, 1):
        assert re.fullmatch(r"\d", device_line(logs / f"narrow/seed{seed}.log"))
        assert device_line(logs / f"wide/seed{seed}.log") == "0,1"
        assert device_line(logs / f"omd/seed{seed}.log") == ""


def test_short_jobs_are_bundled(cluster_run):
    _, run = cluster_run
    jobs = submitted(run)
    kinds = sorted(kind(job) for job in jobs)
    # 6 trainings and 6 Koopman jobs in 6 SLURM jobs: the 2 CPU trainings in
    # one, the 4 GPU trainings one each, the 6 Koopman jobs in one.
    assert kinds == ["koopman", "train", "train_gpu", "train_gpu", "train_gpu", "train_gpu"]
    # A bundle runs its jobs one after another: it asks for what one job needs
    # (1 CPU, 2000 MB) and the sum of their runtimes (2 x 30 minutes).
    (cpu_bundle,) = [job for job in jobs if kind(job) == "train"]
    assert cpu_bundle["NumCPUs"] == "1" and cpu_bundle["MinMemoryNode"] == "2000M"
    assert cpu_bundle["TimeLimit"] == "01:00:00"
    assert all(job["JobState"] == "COMPLETED" for job in jobs)


def test_results_are_identical_to_a_local_run(cluster_run, local_run):
    root, _ = cluster_run
    a, b = root / "results/tiny", local_run / "results/tiny"
    for condition in TINY["conditions"]:
        for seed in TINY["seeds"]:
            for stage in ("trajectories", "spectra"):
                store = f"{stage}/{condition}/seed{seed}.zarr"
                assert_stores_identical(a / store, b / store)
    for table in ("conjugacy.csv", "distances.csv"):
        assert (a / table).read_bytes() == (b / table).read_bytes()
    assert_stores_identical(a / "distances.zarr", b / "distances.zarr")


def test_a_second_invocation_submits_nothing(cluster_run):
    root, _ = cluster_run
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    run = on_slurm(root)
    assert SUBMITTED.search(run.stderr) is None
    assert "Nothing to be done" in run.stderr
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert after == before


def test_a_failing_job_is_retried_once_reported_and_the_rest_kept(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the failing job is a cuda training on a machine without CUDA")
    root = project(tmp_path / "failing", FAILING)
    run = on_slurm(root, check=False)
    assert run.returncode != 0
    # Reported: the rule, its log, and the log's content.
    for seed in (0, 1):
        assert f"results/failing/logs/train/broken/seed{seed}.log" in run.stderr
    assert "Error in rule train" in run.stderr and "cuda" in run.stderr
    # Retried once: each of the 2 failing trainings submitted twice, the
    # retry with the memory of attempt 2.
    failed = [job for job in submitted(run) if kind(job) == "train_gpu"]
    assert sorted(job["MinMemoryNode"] for job in failed) == ["2000M"] * 2 + ["4000M"] * 2
    assert all(job["JobState"] == "FAILED" for job in failed)
    assert run.stderr.count("Trying to restart job") == 2
    # Kept: the other condition's trajectories, which a fixed rerun does not train again.
    out = root / "results/failing"
    stores = [out / f"trajectories/omd/seed{seed}.zarr" for seed in (0, 1)]
    mtimes = [(s / "zarr.json").stat().st_mtime_ns for s in stores]
    fixed = copy.deepcopy(FAILING)
    fixed["conditions"]["broken"]["device"] = "cpu"
    write_config(root / "config.yaml", fixed)
    rerun = on_slurm(root)
    assert sorted(kind(job) for job in submitted(rerun)) == ["koopman", "train"]
    assert [(s / "zarr.json").stat().st_mtime_ns for s in stores] == mtimes
    assert (out / "conjugacy.csv").is_file()
