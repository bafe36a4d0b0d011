"""`conjugacy verify`: check every store of an experiment, reading every chunk.

Each chunk's CRC32C is checked by zarr as it is read; a store of ours must
also be sealed and have every chunk it was sealed with; a complete
trajectory must hold only finite values and a spectrum only finite
eigenvalues. Stores the experiment should have but lacks are reported (those
the config names, when it is given, else a spectrum without its trajectory
or the other way round), and so are leftover working directories of
interrupted trainings (rerunning the workflow resumes them).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from conjugacy.stores.contract import (
    StoreError,
    check_integrity,
    open_spectrum,
    open_store,
    open_trajectory,
    read,
)


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
    if kind == "spectrum":
        ds = open_spectrum(path)
        eigenvalues = read(ds, "eigenvalues", (slice(None),))
        if not np.isfinite(eigenvalues).all():
            raise StoreError(f"spectrum store {path}: eigenvalues are not all finite (NaN or inf)")
    else:
        ds = open_store(path, kind)
        check_integrity(ds, path, kind)
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
    ("sensitivity/*/*.zarr", "sensitivity"),
)


def stores(results: Path) -> list[tuple[Path, str]]:
    """Every store of an experiment's results folder, with its kind."""
    return [(p, kind) for pattern, kind in LAYOUT for p in sorted(results.glob(pattern))]


def expected_runs(results: Path, cfg: dict | None) -> set[tuple[str, int]]:
    """(condition, seed) of every run: the config's, else those seen in trajectories or spectra."""
    if cfg is not None:
        return {(c, int(s)) for c, cond in cfg["conditions"].items() for s in cond["seeds"]}
    runs = set()
    for pattern in ("trajectories/*/seed*.zarr", "spectra/*/seed*.zarr"):
        for path in results.glob(pattern):
            seed = path.name.removeprefix("seed").removesuffix(".zarr")
            if seed.isdigit():
                runs.add((path.parent.name, int(seed)))
    return runs


def missing(results: Path, cfg: dict | None) -> list[dict[str, str]]:
    """A row for each trajectory or spectrum store the experiment should have but lacks."""
    rows = []
    for condition, seed in sorted(expected_runs(results, cfg)):
        for folder, kind in (("trajectories", "trajectory"), ("spectra", "spectrum")):
            path = results / folder / condition / f"seed{seed}.zarr"
            if not path.exists():
                problem = f"{kind} store of condition {condition!r} seed {seed} is missing"
                rows.append(
                    {"store": str(path), "kind": kind, "status": "missing", "problem": problem}
                )
    return rows


def verify(results: str | Path, cfg: dict | None = None) -> pd.DataFrame:
    """One row per store (and per missing store and leftover working directory).

    Columns: path, kind, status, problem. `cfg`, a resolved config, names the
    stores the experiment must have.
    """
    results = Path(results)
    rows = missing(results, cfg)
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
