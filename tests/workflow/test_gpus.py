"""GPU requests: what training jobs ask for, and which devices each job sees.

Snakemake only counts GPUs (`--resources gpu=N`); workflow/scripts/gpu_slot.py
gives each job its own devices through CUDA_VISIBLE_DEVICES. No GPU is needed:
the device list comes from CUDA_VISIBLE_DEVICES, and conditions computed on
the CPU may still request GPUs (`gpus`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, copy_project, dry_run, write_config

pytestmark = pytest.mark.gpu


SLOT = REPO / "workflow" / "scripts" / "gpu_slot.py"
# Prints the devices it was given and when it started, then holds them a while.
SHOW = (
    "import os, time; print(os.environ.get('CUDA_VISIBLE_DEVICES')); print(time.time());"
    " time.sleep({})"
)


def slot(count: int, tmp_path: Path, visible: str | None = "3,5", hold: float = 0.0, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env.update(extra)
    env["TMPDIR"] = str(tmp_path)  # the locks of this test only
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"  # no nvidia-smi
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    cmd = [sys.executable, str(SLOT), str(count), sys.executable, "-c", SHOW.format(hold)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc) -> tuple[str, float]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    devices, started = out.splitlines()
    return devices, float(started)


def test_concurrent_jobs_get_distinct_devices_and_a_third_waits(tmp_path):
    first, second = slot(1, tmp_path, hold=2), slot(1, tmp_path, hold=2)
    time.sleep(1)  # both hold their device
    third = slot(1, tmp_path)
    (d1, t1), (d2, t2), (d3, t3) = result(first), result(second), result(third)
    assert {d1, d2} == {"3", "5"}
    assert d3 in {"3", "5"}
    assert t3 >= min(t1, t2) + 2 - 0.1  # started once a device was released


def test_a_job_may_take_several_devices(tmp_path):
    devices, _ = result(slot(2, tmp_path, visible="0,1,2"))
    assert len(set(devices.split(","))) == 2 and set(devices.split(",")) <= {"0", "1", "2"}


def test_a_cpu_job_sees_no_gpu(tmp_path):
    assert result(slot(0, tmp_path))[0] == ""


def test_more_gpus_than_visible_is_an_error(tmp_path):
    proc = slot(3, tmp_path, visible="0,1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "3 GPUs requested, only 2 visible" in err


def test_a_slurm_job_holding_exactly_its_gpus_takes_them_without_locks(tmp_path):
    assert result(slot(2, tmp_path, SLURM_JOB_ID="7"))[0] == "3,5"
    assert not list(tmp_path.glob("conjugacy-gpus-*"))
    # a bundle of jobs sharing an allocation takes them one at a time, with locks
    assert result(slot(1, tmp_path, SLURM_JOB_ID="7"))[0] in ("3", "5")
    assert list(tmp_path.glob("conjugacy-gpus-*/7/*.lock"))


def test_without_any_device_the_command_runs_unchanged(tmp_path):
    assert result(slot(1, tmp_path, visible=None))[0] == "None"


CONFIG = {
    "experiment": "gpus",
    "seeds": [0, 1],
    "compare": {"permutations": 99},
    "conditions": {
        "omd": {"system": "omd", "steps": 10, "koopman": {"delays": 1}},
        "one": {"system": "fcn", "hidden": 3, "steps": 10, "inits": 2, "gpus": 1},
        "cuda": {"system": "fcn", "hidden": 3, "steps": 10, "inits": 2, "device": "cuda"},
        "two": {"system": "fcn", "hidden": 3, "steps": 10, "inits": 2, "gpus": 2},
    },
}


def planned_train_jobs(root: Path, config: Path) -> dict[str, tuple[int, str]]:
    """(gpu resource, group) of every training job a dry run plans, by condition."""
    return {
        job["condition"]: (job["gpu"], job["group"])
        for job in dry_run(root, config)
        if job["rule"].startswith("train_")  # one job per condition: its block of 2 seeds
    }


def test_training_jobs_request_the_gpus_of_their_condition(tmp_path):
    root = copy_project(tmp_path / "project")
    jobs = planned_train_jobs(root, write_config(root / "gpus.yaml", CONFIG))
    assert jobs == {
        "omd": (0, "train"),
        "one": (1, "train_gpu"),
        "cuda": (1, "train_gpu"),  # device cuda requests one GPU unless `gpus` says otherwise
        "two": (2, "train_gpu"),
    }


def test_local_profile_gives_each_training_job_its_own_devices(tmp_path):
    root = copy_project(tmp_path / "project")  # with profiles/local
    cfg = {**CONFIG, "conditions": {k: v for k, v in CONFIG["conditions"].items() if k != "cuda"}}
    config = write_config(root / "gpus.yaml", cfg)
    env_devices = "0,1"
    trajectories = [
        f"results/gpus/trajectories/{c}/seed{s}.zarr" for c in cfg["conditions"] for s in (0, 1)
    ]
    run = subprocess.run(
        ["snakemake", *trajectories, "--workflow-profile", "profiles/local",
         "--configfile", str(config), "--cores", "2", "--resources", "gpu=2"],
        cwd=root,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": env_devices,
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    logs = root / "results/gpus/logs/train"

    def devices(condition):  # one training job per condition: seeds 0 and 1
        text = (logs / condition / "seed0-1.log").read_text()
        return re.search(r"gpu_slot: CUDA_VISIBLE_DEVICES=(\S*)", text).group(1)

    assert devices("omd") == ""
    assert devices("one") in ("0", "1")
    assert sorted(devices("two").split(",")) == ["0", "1"]
