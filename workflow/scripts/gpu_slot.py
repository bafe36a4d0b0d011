"""Run a command on GPUs that no other job holds: `python gpu_slot.py N CMD [ARG ...]`.

Snakemake counts GPUs (`--resources gpu=N` caps how many jobs hold one) but
does not say which device a job gets: every job would see every GPU and use
the first. This wrapper takes N free devices, sets CUDA_VISIBLE_DEVICES to
them and replaces itself with CMD, which keeps an exclusive lock on each
device until it exits. N = 0 hides every GPU.

The devices are those listed in CUDA_VISIBLE_DEVICES when it is set (SLURM
sets it to the GPUs of the job's allocation), else those `nvidia-smi` lists.
When neither names a device, CMD runs unchanged. Locks live in the temporary
directory, one namespace per SLURM job (or one for the machine outside SLURM);
a SLURM job allocated exactly the GPUs it asks for takes them without a lock.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def visible_devices() -> list[str]:
    """The GPUs this job may use, as CUDA_VISIBLE_DEVICES entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d for d in listed.split(",") if d.strip()]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.split()


def lock_dir() -> Path:
    scope = os.environ.get("SLURM_JOB_ID", "local")
    path = Path(tempfile.gettempdir()) / f"conjugacy-gpus-{os.getuid()}" / scope
    path.mkdir(parents=True, exist_ok=True)
    return path


def acquire(devices: list[str], count: int, locks: Path) -> list[tuple[str, int]]:
    """Lock `count` free devices, waiting until that many are free; (device, fd) pairs."""
    while True:
        held = []
        for dev in devices:
            fd = os.open(locks / f"{dev.replace('/', '_')}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((dev, fd))
            if len(held) == count:
                return held
        for _, fd in held:
            os.close(fd)
        time.sleep(1)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: gpu_slot.py N CMD [ARG ...]  (N: number of GPUs, >= 0)")
    count, cmd = int(argv[0]), argv[1:]
    devices = visible_devices()
    if count == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif "SLURM_JOB_ID" in os.environ and count == len(devices):
        pass  # a SLURM job that holds exactly its own GPUs: nothing to share
    elif devices:
        if count > len(devices):
            sys.exit(f"gpu_slot: {count} GPUs requested, only {len(devices)} visible: {devices}")
        held = acquire(devices, count, lock_dir())
        for _, fd in held:
            os.set_inheritable(fd, True)  # the lock lives as long as CMD
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(dev for dev, _ in held)
    print(
        f"gpu_slot: CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}",
        file=sys.stderr,
        flush=True,
    )
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
