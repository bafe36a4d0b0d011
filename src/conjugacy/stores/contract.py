"""The on-disk contracts: trajectory and spectrum stores (xarray on Zarr v3).

Trajectory store: one variable per recorded tensor with dims
("init", "step", <name>_dim0, ...), a `loss` variable ("init", "step"), a
`step` coordinate holding optimizer steps, and provenance attributes. It is
pre-created empty and filled one block of steps at a time (region writes), so
a trajectory never has to fit in memory.

Integrity: every chunk of every store carries a CRC32C checksum (verified by
zarr on each read), and the attributes written last hold `status` and, per
variable, the number of chunks it must have. Every store this project writes
carries a `role` attribute from its creation on, so a store killed before its
seal is known as ours and refused; a store without `role` or `integrity` was
written by another program and is accepted as foreign.

Outputs: a store is (re)written only where nothing stands, or where a store
of the same role written by this project stands (`claim_output`); a user's
folder, a store of another role or an input is never replaced.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

if TYPE_CHECKING:  # xarray (and pandas) load when a store is opened: training never does
    import xarray as xr

STEP_BLOCK = 64  # steps per chunk; a chunk also holds every init of the tensor rows in it
CHUNK_VALUES = 1 << 21  # target values per chunk (16 MiB of float64)
RESERVED = ("loss",)

CHECKSUM = (Crc32cCodec(),)  # bytes-to-bytes codecs of every array we write
# Recorded blocks are data: skip zarr's per-chunk comparison with the fill value.
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}
STATUSES = ("complete", "diverged")  # a finished trajectory; anything else is partial

# Snakemake writes .snakemake_timestamp into declared directory outputs.
warnings.filterwarnings("ignore", message=r".*\.snakemake_timestamp.*")


class StoreError(ValueError):
    """A store is missing, malformed or not what the stage expects; names the store."""


def _inside(a: Path, b: Path) -> bool:
    """Whether path a is b or lies inside it (both resolved)."""
    return a == b or b in a.parents


def store_role(path: Path) -> str | None:
    """The `role` attribute of a store this project wrote, read from its root metadata."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    role = attrs.get("role") if isinstance(attrs, dict) else None
    return role if isinstance(role, str) else None


def claim_output(
    path: str | Path, role: str, inputs: tuple[str | Path, ...] | list[str | Path] = ()
) -> Path:
    """Check, before any work, that a `role` store may be written at `path`.

    Allowed: nothing there, an empty folder, or a store of the same role that
    this project wrote (it is replaced). Refused, naming the path: a file, a
    folder with other content, a store of another role or of another
    program, and a path equal to, inside or around one of the inputs.
    """
    path = Path(path)
    where = path.resolve()
    for source in inputs:
        src = Path(source).resolve()
        if _inside(where, src) or _inside(src, where):
            raise StoreError(
                f"output {path} is (or holds, or lies inside) the input {source}; "
                "choose another output path"
            )
    if not path.exists() and not path.is_symlink():
        return path
    if not path.is_dir():
        raise StoreError(f"output {path} exists and is not a {role} store; nothing was written")
    if not any(path.iterdir()):
        return path
    found = store_role(path)
    if found != role:
        what = f"is a {found} store" if found else "holds files conjugacy did not write"
        raise StoreError(
            f"output {path} {what}, not a {role} store; move it away or choose another "
            "output path (nothing was written)"
        )
    return path


def package_versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers, for the store's provenance."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
    """Read once per process: 9 ms of package metadata, for every store of a block."""
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
    """Creates an empty trajectory store and fills it block by block.

    `resume=True` reopens a store this class created before (after a kill),
    keeping what it holds: region writes are repeatable, so the steps after
    the last checkpoint are simply written again.
    """

    def __init__(
        self,
        path: str | Path,
        tensors: Mapping[str, tuple[int, ...]],
        steps: list[int],
        inits: int,
        dtype: str,
        attrs: dict[str, Any],
        step_block: int = STEP_BLOCK,
        resume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.tensors = dict(tensors)
        self.n_steps = len(steps)
        self.inits = inits
        # Array handles are kept: looking one up in the group reads its metadata from disk.
        if resume:
            self.group = zarr.open_group(self.path, mode="r+", zarr_format=3)
            self.arrays = {name: self.group[name] for name in [*self.tensors, "loss"]}
        else:
            self.group = self._create(steps, inits, dtype, attrs, min(step_block, self.n_steps))

    def _create(
        self, steps: list[int], inits: int, dtype: str, attrs: dict[str, Any], block: int
    ) -> zarr.Group:
        group = zarr.open_group(self.path, mode="w", zarr_format=3)
        self.arrays = {}
        for name, shape in self.tensors.items():
            self.arrays[name] = group.create_array(
                name,
                shape=(inits, self.n_steps, *shape),
                chunks=chunk_shape(inits, shape, block),
                dtype=dtype,
                fill_value=np.nan,
                compressors=CHECKSUM,
                dimension_names=dim_names(name, len(shape)),
                config=WRITE_EVERY_CHUNK,
            )
        self.arrays["loss"] = group.create_array(
            "loss",
            shape=(inits, self.n_steps),
            chunks=(inits, block),
            dtype="float64",
            fill_value=np.nan,
            compressors=CHECKSUM,
            dimension_names=("init", "step"),
            config=WRITE_EVERY_CHUNK,
        )
        for coord, values in (("step", np.asarray(steps)), ("init", np.arange(inits))):
            arr = group.create_array(
                coord,
                shape=values.shape,
                dtype="int64",
                compressors=CHECKSUM,
                dimension_names=(coord,),
            )
            arr[:] = values
        # One metadata write (attrs.update would write the file once per key).
        group.update_attributes(
            {**attrs, "role": "trajectory", "status": "incomplete", "versions": package_versions()}
        )
        return group

    def write(self, start: int, tensors: Mapping[str, np.ndarray], loss: np.ndarray) -> None:
        """Write snapshots [start, start + k) of every tensor: (init, k, *shape) arrays."""
        k = loss.shape[1]
        if start + k > self.n_steps:
            raise ValueError(f"block [{start}, {start + k}) past the {self.n_steps} steps")
        for name, block in tensors.items():
            self.arrays[name][:, start : start + k] = block
        self.arrays["loss"][:, start : start + k] = loss

    def close(self, status: str = "complete", **extra: Any) -> None:
        """Seal the store: chunk counts and status, the last things written."""
        seal(self.group, status, **extra)


DEFAULT_KEYS = {"name": "default", "configuration": {"separator": "/"}}


def stored_chunks(store: Path, name: str) -> int:
    """How many chunks array `name` of the local store `store` holds: zarr's
    nchunks_initialized, counted from the file names for the default chunk keys.

    Opening the group and listing each array's keys through zarr's event loop
    costs a few ms a store, paid again by every stage that opens it; counting
    the files under <name>/c is a directory walk. Other chunk keys (v2, ".")
    are counted by zarr. A missing array, or a name that is not one folder
    (a planted integrity attribute), is a FileNotFoundError.
    """
    if name in ("", ".", "..") or "/" in name or os.sep in name:
        raise FileNotFoundError(f"no array {name!r} in {store}")
    meta = json.loads((store / name / "zarr.json").read_text())
    if meta.get("chunk_key_encoding") != DEFAULT_KEYS:
        return int(zarr.open_array(store / name, mode="r").nchunks_initialized)
    chunks = store / name / "c"
    if chunks.is_file():  # a 0-d array's one chunk
        return 1
    return sum(len(files) for _, _, files in os.walk(chunks))


def seal(group: zarr.Group, status: str, **extra: Any) -> None:
    """Write the integrity attribute (chunks per variable) and the status, last."""
    arrays = sorted(group.arrays(), key=lambda item: item[0])  # listing order varies
    root = getattr(group.store, "root", None)  # a local store: count files
    integrity = {
        name: stored_chunks(Path(root, group.path), name)
        if root is not None
        else int(arr.nchunks_initialized)
        for name, arr in arrays
    }
    group.update_attributes({**extra, "integrity": integrity, "status": status})  # one write


def _damaged_metadata(path: Path) -> str | None:
    """Name of the first node whose zarr.json is missing or not valid JSON, if any."""
    for meta in sorted(path.rglob("zarr.json")):
        try:
            json.loads(meta.read_text())
        except (OSError, ValueError):
            return str(meta.parent.relative_to(path)) or "<root>"
    return None


def open_store(path: str | Path, kind: str) -> xr.Dataset:
    """Open a store lazily, turning a missing or unreadable one into a StoreError."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{kind} store {path} does not exist")
    if not (path / "zarr.json").is_file() and not (path / ".zgroup").is_file():
        raise StoreError(f"{path} is not a Zarr store (no zarr.json): expected a {kind} store")
    try:
        import xarray as xr

        ds = xr.open_zarr(path, consolidated=False, chunks=None)
    except Exception as exc:  # zarr/xarray raise many types for a damaged store
        node = _damaged_metadata(path)
        where = f": the metadata of {node!r} is damaged" if node else ""
        raise StoreError(f"{kind} store {path} cannot be read{where} ({exc})") from exc
    ds.encoding["source"] = str(path)  # for messages about this store
    if "role" in ds.attrs and "integrity" not in ds.attrs:
        raise StoreError(
            f"{kind} store {path} is {ds.attrs.get('status', 'incomplete')!r} and was never "
            "sealed (its writer was interrupted): rerun the stage that writes it"
        )
    return ds


def check_integrity(ds: xr.Dataset, path: str | Path, kind: str) -> None:
    """Every variable must have as many chunks as when the store was sealed."""
    expected = ds.attrs.get("integrity")
    if expected is None:  # written by another program (open_store refused ours unsealed)
        return
    for name, count in expected.items():
        try:
            found = stored_chunks(Path(path), name)
        except (OSError, ValueError):  # no such variable, or its metadata unreadable
            raise StoreError(f"{kind} store {path}: variable {name!r} is missing") from None
        if found != count:
            raise StoreError(
                f"{kind} store {path}: variable {name!r} has {found} of its {count} chunks "
                "(the store is damaged or was truncated)"
            )


def read(ds: xr.Dataset, name: str, index: tuple) -> np.ndarray:
    """ds[name][index] as numpy; a chunk that fails its checksum is a StoreError naming both."""
    try:
        return np.asarray(ds[name].variable[index].values)
    except Exception as exc:
        path = ds.encoding.get("source", "?")
        raise StoreError(f"store {path}: variable {name!r} is damaged ({exc})") from exc


def tensor_variables(ds: xr.Dataset) -> list[str]:
    """Recorded tensors of a trajectory: every variable with dims (init, step, ...)."""
    return [
        name
        for name, var in ds.data_vars.items()
        if name not in RESERVED and var.dims[:2] == ("init", "step")
    ]


def open_trajectory(path: str | Path, allow_diverged: bool = False) -> xr.Dataset:
    """Open a trajectory store and check it follows the contract and is whole.

    A diverged trajectory (training stopped at a non-finite loss or
    parameter) is refused unless `allow_diverged`.
    """
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
    if status == "diverged" and not allow_diverged:
        raise StoreError(
            f"trajectory store {path} diverged at step {ds.attrs.get('diverged_step')} "
            f"({ds.attrs.get('diverged_reason', 'non-finite values')}): no spectrum from it"
        )
    if status not in STATUSES:
        raise StoreError(f"trajectory store {path} is {status!r}, not complete: rerun its training")
    check_integrity(ds, path, "trajectory")
    if "step" not in ds.coords:
        ds = ds.assign_coords(step=np.arange(ds.sizes["step"]))
    return ds


def write_dataset(ds: xr.Dataset, path: str | Path, role: str, status: str = "complete") -> None:
    """Write a small dataset as a checksummed Zarr v3 store (spectra, distances), sealed last.

    The store says its role and `incomplete` from its first write on, so a
    writer killed before the seal leaves a store every reader refuses.
    """
    claim_output(path, role)
    encoding = {name: {"compressors": CHECKSUM} for name in ds.variables}
    ds = ds.assign_attrs(role=role, status="incomplete")
    ds.to_zarr(Path(path), mode="w", consolidated=False, zarr_format=3, encoding=encoding)
    seal(zarr.open_group(Path(path), mode="r+", zarr_format=3), status)


def open_spectrum(path: str | Path) -> xr.Dataset:
    """Open a spectrum store and check it has eigenvalues and is whole.

    An `excluded` spectrum (of a diverged trajectory) opens: it says why it
    has no eigenvalues, for compare to report.
    """
    ds = open_store(path, "spectrum")
    if "eigenvalues" not in ds:
        raise StoreError(
            f"spectrum store {path} has no 'eigenvalues' variable; "
            f"variables: {sorted(ds.data_vars)}"
        )
    if ds.attrs.get("status", "complete") not in ("complete", "excluded"):
        raise StoreError(f"spectrum store {path} is {ds.attrs['status']!r}, not complete")
    check_integrity(ds, path, "spectrum")
    return ds
