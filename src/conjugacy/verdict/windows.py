"""Stage: compare the spectra of successive windows of training (early-phase transitions).

Each window of a condition's trajectory has its own spectrum store (one per
seed). W is computed between every two window spectra of a condition, across
seeds too, so that the change from window k to window k + 1 can be tested
against the seed-to-seed spread inside each window: the same permutation test
over seed labels as the conjugacy verdict, with Holm's correction across the
transitions of a condition. The interval of the ratio resamples seeds
*paired*: a drawn seed brings both its windows (they come from one run).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from conjugacy.config import check_verdict_options
from conjugacy.config.validation import defaults
from conjugacy.stores.contract import (
    StoreError,
    claim_output,
    open_spectrum,
    read,
    write_dataset,
)
from conjugacy.verdict.compare import DISTANCE_KEYS
from conjugacy.verdict.distance import pairwise
from conjugacy.verdict.stats import corrected, verdict

DEFAULTS = defaults("compare")  # the schema's: the one place of every default
STORE = "windows.zarr"
TABLES = ("windows_successive.csv", "windows_transitions.csv", "windows_all.csv")

Key = tuple[str, tuple[int, int], int]  # (condition, (start, stop), seed)


def load_windows(paths: list[str | Path]) -> dict[Key, np.ndarray]:
    """Eigenvalues of every window spectrum, keyed by condition, window and seed (attributes)."""
    out: dict[Key, np.ndarray] = {}
    for path in map(Path, paths):
        ds = open_spectrum(path)
        window = ds.attrs.get("window")
        if not window or "condition" not in ds.attrs or "seed" not in ds.attrs:
            raise StoreError(
                f"spectrum store {path} has no window, condition or seed attribute; "
                "expected a spectrum of one window (conjugacy koopman --window)"
            )
        if ds.attrs.get("status") == "excluded":
            raise StoreError(
                f"spectrum store {path} is excluded ({ds.attrs.get('excluded')}): "
                "its trajectory diverged, so its windows cannot be compared"
            )
        key = (str(ds.attrs["condition"]), (int(window[0]), int(window[1])), int(ds.attrs["seed"]))
        if key in out:
            raise StoreError(f"spectrum store {path} repeats {key}")
        out[key] = read(ds, "eigenvalues", (slice(None),))
    if not out:
        raise StoreError("no window spectra given")
    return out


def window_grid(spectra: dict[Key, np.ndarray]) -> tuple[list[str], list[tuple[int, int]], list]:
    """Conditions (in order of appearance), windows and seeds; every condition must have all."""
    conditions = list(dict.fromkeys(c for c, _, _ in spectra))
    windows = sorted({w for _, w, _ in spectra})
    seeds = sorted({s for _, _, s in spectra})
    for c in conditions:
        for w in windows:
            for s in seeds:
                if (c, w, s) not in spectra:
                    raise StoreError(
                        f"condition {c!r} seed {s} has no spectrum of window [{w[0]}, {w[1]}); "
                        "every condition needs the same windows and seeds"
                    )
    return conditions, windows, seeds


def distances(spectra: dict[Key, np.ndarray]) -> xr.Dataset:
    """W between every two window spectra of a condition, across seeds too.

    Dims (condition, window_a, seed_a, window_b, seed_b); `successive` is
    W(window k, window k + 1) of the same seed, dims (condition, transition, seed).
    """
    conditions, windows, seeds = window_grid(spectra)
    nw, ns = len(windows), len(seeds)
    w = np.empty((len(conditions), nw, ns, nw, ns))
    for i, c in enumerate(conditions):
        flat = pairwise([spectra[(c, win, s)] for win in windows for s in seeds])
        w[i] = flat.reshape(nw, ns, nw, ns)
    window_coords = {
        "start": ("window", np.array([a for a, _ in windows], dtype=np.int64)),
        "stop": ("window", np.array([b for _, b in windows], dtype=np.int64)),
    }
    ds = xr.Dataset(
        {"w": (("condition", "window_a", "seed_a", "window_b", "seed_b"), w)},
        coords={
            "condition": np.array(conditions, dtype=object),
            "window_a": np.arange(nw),
            "seed_a": seeds,
            "window_b": np.arange(nw),
            "seed_b": seeds,
        },
    )
    ds = ds.assign_coords(
        window_start=("window_a", window_coords["start"][1]),
        window_stop=("window_a", window_coords["stop"][1]),
    )
    idx = np.arange(nw - 1)
    same = np.stack([w[:, k, :, k + 1, :].diagonal(axis1=1, axis2=2) for k in idx], axis=1)
    ds["successive"] = (("condition", "transition", "seed"), same)
    ds = ds.assign_coords(transition=idx, seed=seeds)
    return ds


def transitions(
    ds: xr.Dataset,
    alpha: float = DEFAULTS["alpha"],
    max_ratio: float = DEFAULTS["max_ratio"],
    permutations: int = DEFAULTS["permutations"],
    correction: str = DEFAULTS["correction"],
    bootstrap: int = DEFAULTS["bootstrap"],
    bootstrap_seed: int = DEFAULTS["bootstrap_seed"],
) -> pd.DataFrame:
    """Window k vs window k + 1 of each condition: W between vs W within (seed to seed), tested.

    The verdict of the conjugacy test (stats.decide: the equivalence test on
    the ratio's interval, and the permutation p corrected across a
    condition's transitions), named for windows: 'same dynamics' (interval at
    or below the margin) or 'changed' (above it, and p < alpha). The
    bootstrap draws seeds paired across the two windows.
    """
    rows = []
    ns = ds.sizes["seed_a"]
    starts, stops = ds["window_start"].values, ds["window_stop"].values
    for c in ds["condition"].values:
        w = ds["w"].sel(condition=c).values
        found = []
        for k in ds["transition"].values:
            sub = np.block(
                [[w[k, :, k, :], w[k, :, k + 1, :]], [w[k + 1, :, k, :], w[k + 1, :, k + 1, :]]]
            )
            found.append(
                verdict(
                    sub, ns, alpha, max_ratio, permutations, bootstrap, bootstrap_seed, paired=True
                )
            )
        for k, v in enumerate(corrected(found, alpha, max_ratio, correction)):
            rows.append(
                {
                    "condition": c,
                    "window_a": k,
                    "window_b": k + 1,
                    "steps_a": f"{starts[k]}:{stops[k]}",
                    "steps_b": f"{starts[k + 1]}:{stops[k + 1]}",
                    "w_successive_mean": float(ds["successive"].sel(condition=c).values[k].mean()),
                    **asdict(v),
                }
            )
    table = pd.DataFrame(rows)
    table["verdict"] = table["verdict"].replace(
        {"conjugate": "same dynamics", "not conjugate": "changed"}
    )
    return table


def successive_table(ds: xr.Dataset) -> pd.DataFrame:
    """W between window k and k + 1 of the same seed, one row per (condition, seed, k)."""
    starts = ds["window_start"].values
    frame = ds["successive"].to_dataframe().reset_index()
    frame["start_a"] = starts[frame["transition"]]
    frame["start_b"] = starts[frame["transition"] + 1]
    return frame.rename(columns={"successive": "w"})[
        ["condition", "seed", "transition", "start_a", "start_b", "w"]
    ]


def write_windows(paths: list[str | Path], outdir: str | Path, **options: Any) -> pd.DataFrame:
    """Distances and tables of the window spectra; returns the transition table.

    `options`: the config's `compare` settings (alpha, max_ratio, permutations,
    correction, bootstrap, bootstrap_seed); the schema's defaults fill the rest.
    """
    check_verdict_options(options, lambda k: f"compare.{k}")
    skip = ("pairs", *DISTANCE_KEYS)  # the windows stage measures W1 (no modes)
    opts = {k: v for k, v in {**DEFAULTS, **options}.items() if k not in skip}
    claim_output(Path(outdir) / STORE, "windows", inputs=paths)
    spectra = load_windows(paths)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    ds = distances(spectra)
    table = transitions(ds, **opts)
    write_dataset(ds, outdir / STORE, role="windows")
    successive_table(ds).to_csv(outdir / TABLES[0], index=False)
    table.to_csv(outdir / TABLES[1], index=False)
    flat = ds["w"].to_dataframe().reset_index()
    flat.to_csv(outdir / TABLES[2], index=False)
    return table
