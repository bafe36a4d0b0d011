"""The spectra a comparison reads: eigenvalues and (condition, seed) labels of spectrum
stores and eigenvalue files.

Apart from the comparison (no scipy), so the figures of the spectra read
them without the comparison's imports.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from conjugacy.config import ConfigError
from conjugacy.stores.contract import StoreError, open_spectrum, read

SEED_FILE = re.compile(r"seed(\d+)(\.zarr|\.npy|\.csv)")
EIGENVALUE_FILES = (".npy", ".csv")


def layout_label(path: Path) -> tuple[str, int] | None:
    """(condition, seed) from the layout <condition>/seed<N>.zarr (or .npy, .csv), if it is one."""
    match = SEED_FILE.fullmatch(path.name)
    return (path.parent.name, int(match.group(1))) if match else None


def label(path: Path, ds: xr.Dataset) -> tuple[str, int]:
    """(condition, seed) of a spectrum store: its path (<condition>/seed<N>.zarr), else its
    attributes (`conjugacy koopman --condition --seed` sets them)."""
    found = layout_label(path)
    if found is not None:
        return found
    if ds.attrs.get("condition") and "seed" in ds.attrs:
        seed = ds.attrs["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise StoreError(
                f"spectrum store {path}: attribute seed is {str(seed)[:40]!r}; "
                "expected an integer >= 0"
            )
        return str(ds.attrs["condition"]), seed
    raise StoreError(
        f"spectrum store {path} is not named seed<N>.zarr inside a folder named after its "
        "condition, and has no condition/seed attributes"
    )


def read_eigenvalue_file(path: Path) -> np.ndarray:
    """Eigenvalues from a .npy file (complex or real, 1-D; never unpickled) or a .csv file
    (columns `real` and `imag`, or one column of numbers such as 0.9+0.1j)."""
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            table = pd.read_csv(path)
            if {"real", "imag"} <= set(table.columns):
                values = table["real"].to_numpy(float) + 1j * table["imag"].to_numpy(float)
            else:
                values = table.iloc[:, 0].astype(str).map(complex).to_numpy()
        values = np.asarray(values, dtype=np.complex128)
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise StoreError(f"eigenvalue file {path} cannot be read ({exc})") from None
    if values.ndim != 1:
        raise StoreError(
            f"eigenvalue file {path}: expected one eigenvalue per row, got {values.shape}"
        )
    return values


def load_spectra(
    paths: list[str | Path], labels_given: list[str] | None = None
) -> tuple[list[tuple[str, int]], list[np.ndarray], dict[tuple[str, int], str]]:
    """(labels, eigenvalues) of the usable spectra, and why each excluded one was left out.

    Inputs are spectrum stores or eigenvalue files (.npy, .csv): a file's
    condition is the next of `labels_given` (in order), else its folder's
    name; its seed comes from seed<N> in its name, else its position.
    """
    labels, spectra, excluded = [], [], {}
    given = list(labels_given or [])
    files = [Path(p) for p in paths if Path(p).suffix in EIGENVALUE_FILES]
    if given and len(given) != len(files):
        raise ConfigError(
            f"option --label: {len(given)} labels for {len(files)} eigenvalue files; "
            "expected one per .npy/.csv input, in order"
        )
    for p in map(Path, paths):
        if p.suffix in EIGENVALUE_FILES:
            condition = given.pop(0) if given else p.parent.name
            found = layout_label(p)
            seed = found[1] if found else sum(1 for c, _ in labels if c == condition)
            key, values = (condition, seed), read_eigenvalue_file(p)
        else:
            ds = open_spectrum(p)
            key = label(p, ds)
            if ds.attrs.get("status") == "excluded":
                if key in labels or key in excluded:
                    raise StoreError(f"spectrum {p} repeats condition {key[0]!r} seed {key[1]}")
                excluded[key] = str(ds.attrs.get("excluded", "excluded"))
                continue
            values = read(ds, "eigenvalues", (slice(None),))
        if key in labels or key in excluded:
            raise StoreError(f"spectrum {p} repeats condition {key[0]!r} seed {key[1]}")
        if values.size == 0 or not np.isfinite(values).all():
            what = "no eigenvalues" if values.size == 0 else "eigenvalues that are not finite"
            raise StoreError(f"spectrum {p} has {what}: rerun its Koopman stage")
        labels.append(key)
        spectra.append(values)
    return labels, spectra, excluded
