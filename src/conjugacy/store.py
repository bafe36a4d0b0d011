"""The on-disk contracts: trajectory and spectrum stores (xarray on Zarr v3).

Trajectory store: one variable per recorded tensor with dims
("init", "step", <name>_dim0, ...), a `loss` variable ("init", "step"), a
`step` coordinate holding optimizer steps, and provenance attributes. It is
pre-created empty and filled one block of steps at a time (region writes), so
a trajectory never has to fit in memory; `status` = "complete" is written last.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

STEP_BLOCK = 64  # steps per chunk; a chunk also holds every init of the tensor rows in it
CHUNK_VALUES = 1 << 21  # target values per chunk (16 MiB of float64)
RESERVED = ("loss",)

# Snakemake writes .snakemake_timestamp into declared directory outputs.
warnings.filterwarnings("ignore", message=r".*\.snakemake_timestamp.*")


class StoreError(ValueError):
    """A store is missing, malformed or not what the stage expects; names the store."""


def package_versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers, for the store's provenance."""
    out = {"python": platform.python_version()}
    for pkg in ("conjugacy", "numpy", "scipy", "torch", "zarr", "xarray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def dim_names(name: str, ndim: int) -> tuple[str, ...]:
    """Dims of a recorded tensor: init, step, then one per tensor axis."""
    return ("init", "step", *(f"{name}_dim{i}" for i in range(ndim)))


def chunk_shape(inits: int, shape: tuple[int, ...], step_block: int) -> tuple[int, ...]:
    """(all inits, a block of steps, a block of the tensor's leading axis, rest whole)."""
    if not shape:
        return (inits, step_block)
    inner = int(np.prod(shape[1:], dtype=np.int64))
    rows = max(1, min(shape[0], CHUNK_VALUES // max(1, inits * step_block * inner)))
    return (inits, step_block, rows, *shape[1:])


class TrajectoryWriter:
    """Creates an empty trajectory store and fills it block by block."""

    def __init__(
        self,
        path: str | Path,
        tensors: Mapping[str, tuple[int, ...]],
        steps: list[int],
        inits: int,
        dtype: str,
        attrs: dict[str, Any],
        step_block: int = STEP_BLOCK,
    ) -> None:
        self.path = Path(path)
        self.tensors = dict(tensors)
        self.n_steps = len(steps)
        block = min(step_block, self.n_steps)
        group = zarr.open_group(self.path, mode="w", zarr_format=3)
        for name, shape in self.tensors.items():
            group.create_array(
                name,
                shape=(inits, self.n_steps, *shape),
                chunks=chunk_shape(inits, shape, block),
                dtype=dtype,
                fill_value=np.nan,
                dimension_names=dim_names(name, len(shape)),
            )
        group.create_array(
            "loss",
            shape=(inits, self.n_steps),
            chunks=(inits, block),
            dtype="float64",
            fill_value=np.nan,
            dimension_names=("init", "step"),
        )
        for coord, values in (("step", np.asarray(steps)), ("init", np.arange(inits))):
            arr = group.create_array(
                coord, shape=values.shape, dtype="int64", dimension_names=(coord,)
            )
            arr[:] = values
        group.attrs.update({**attrs, "status": "incomplete", "versions": package_versions()})
        self.group = group

    def write(self, start: int, tensors: Mapping[str, np.ndarray], loss: np.ndarray) -> None:
        """Write snapshots [start, start + k) of every tensor: (init, k, *shape) arrays."""
        k = loss.shape[1]
        if start + k > self.n_steps:
            raise ValueError(f"block [{start}, {start + k}) past the {self.n_steps} steps")
        for name, block in tensors.items():
            self.group[name][:, start : start + k] = block
        self.group["loss"][:, start : start + k] = loss

    def close(self) -> None:
        """Mark the store complete: the last thing written, so a killed job leaves none."""
        self.group.attrs["status"] = "complete"


def open_store(path: str | Path, kind: str) -> xr.Dataset:
    """Open a store lazily, turning a missing or unreadable one into a StoreError."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{kind} store {path} does not exist")
    if not (path / "zarr.json").is_file() and not (path / ".zgroup").is_file():
        raise StoreError(f"{path} is not a Zarr store (no zarr.json): expected a {kind} store")
    try:
        return xr.open_zarr(path, consolidated=False, chunks=None)
    except Exception as exc:  # zarr/xarray raise many types for a damaged store
        raise StoreError(f"{kind} store {path} cannot be read: {exc}") from exc


def tensor_variables(ds: xr.Dataset) -> list[str]:
    """Recorded tensors of a trajectory: every variable with dims (init, step, ...)."""
    return [
        name
        for name, var in ds.data_vars.items()
        if name not in RESERVED and var.dims[:2] == ("init", "step")
    ]


def open_trajectory(path: str | Path) -> xr.Dataset:
    """Open a trajectory store and check it follows the contract."""
    ds = open_store(path, "trajectory")
    if "step" not in ds.dims or "init" not in ds.dims:
        raise StoreError(
            f"trajectory store {path} has dims {sorted(ds.dims)}; expected 'init' and 'step'"
        )
    if not tensor_variables(ds):
        raise StoreError(
            f"trajectory store {path} has no variable with dims ('init', 'step', ...); "
            f"variables: {sorted(ds.data_vars)}"
        )
    status = ds.attrs.get("status", "complete")
    if status != "complete":
        raise StoreError(f"trajectory store {path} is {status!r}, not 'complete'")
    if "step" not in ds.coords:
        ds = ds.assign_coords(step=np.arange(ds.sizes["step"]))
    return ds


def write_dataset(ds: xr.Dataset, path: str | Path) -> None:
    """Write a small dataset as a Zarr v3 store (spectra, distances)."""
    ds.to_zarr(Path(path), mode="w", consolidated=False, zarr_format=3)


def open_spectrum(path: str | Path) -> xr.Dataset:
    """Open a spectrum store and check it has eigenvalues."""
    ds = open_store(path, "spectrum")
    if "eigenvalues" not in ds:
        raise StoreError(
            f"spectrum store {path} has no 'eigenvalues' variable; "
            f"variables: {sorted(ds.data_vars)}"
        )
    return ds
