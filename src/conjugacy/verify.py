"""`conjugacy verify`: check every store of an experiment, reading every chunk.

Each chunk's CRC32C is checked by zarr as it is read; a trajectory must also
be sealed (complete or diverged), have every chunk it was sealed with, and,
when complete, hold only finite values. Leftover working directories of
interrupted trainings are reported too (rerunning the workflow resumes them).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from conjugacy.store import StoreError, open_spectrum, open_store, open_trajectory


def _read_every_chunk(path: Path, finite: bool) -> None:
    """Read each chunk of each array once (verifying checksums); optionally require finite."""
    group = zarr.open_group(path, mode="r", zarr_format=3)
    for name, arr in group.arrays():
        grid = [range(0, n, c) for n, c in zip(arr.shape, arr.chunks, strict=True)]
        for corner in itertools.product(*grid):
            index = tuple(slice(i, i + c) for i, c in zip(corner, arr.chunks, strict=True))
            try:
                values = arr[index]
            except Exception as exc:
                raise StoreError(f"store {path}: variable {name!r} is damaged ({exc})") from exc
            if finite and values.dtype.kind in "fc" and not np.isfinite(values).all():
                raise StoreError(f"store {path}: variable {name!r} has non-finite values")


def check(path: Path, kind: str) -> str:
    """The store's status after a full check; raises StoreError naming what is wrong."""
    if kind == "trajectory":
        ds = open_trajectory(path, allow_diverged=True)
        status = ds.attrs.get("status", "complete")
        _read_every_chunk(path, finite=status == "complete")
        return status
    ds = open_spectrum(path) if kind == "spectrum" else open_store(path, kind)
    _read_every_chunk(path, finite=False)
    return ds.attrs.get("status", "complete")


# (glob under an experiment's results folder, kind), in the order of the stages
LAYOUT = (
    ("trajectories/*/*.zarr", "trajectory"),
    ("spectra/*/*.zarr", "spectrum"),
    ("spectra/*/*/*.zarr", "spectrum"),  # one per window: spectra/<cond>/seed<N>/window<k>.zarr
    ("distances.zarr", "distances"),
    ("windows/windows.zarr", "windows"),
    ("predict/*/*.zarr", "predict"),
    ("accelerate/*.zarr", "accelerate"),
    ("prune/*/*.zarr", "prune"),
    ("monitor/*/*.zarr", "monitor"),
)


def stores(results: Path) -> list[tuple[Path, str]]:
    """Every store of an experiment's results folder, with its kind."""
    return [(p, kind) for pattern, kind in LAYOUT for p in sorted(results.glob(pattern))]


def verify(results: str | Path) -> pd.DataFrame:
    """One row per store (and per leftover working directory): path, kind, status, problem."""
    results = Path(results)
    rows = []
    for path, kind in stores(results):
        try:
            status, problem = check(path, kind), ""
        except StoreError as exc:
            status, problem = "damaged", str(exc)
        rows.append({"store": str(path), "kind": kind, "status": status, "problem": problem})
    for work in sorted(results.glob("checkpoints/*/*")):
        rows.append(
            {
                "store": str(work),
                "kind": "training in progress",
                "status": "partial",
                "problem": "an interrupted training: rerun the workflow to resume it",
            }
        )
    return pd.DataFrame(rows, columns=["store", "kind", "status", "problem"])
