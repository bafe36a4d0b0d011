"""Stage 3: W between every two spectra, and a verdict per condition pair."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from conjugacy.config import check_verdict_options
from conjugacy.stores.contract import StoreError, claim_output, open_spectrum, read, write_dataset
from conjugacy.verdict.distance import pairwise
from conjugacy.verdict.stats import corrected, verdict

VERDICT_COLUMNS = [
    "condition_a",
    "condition_b",
    "n_between",
    "w_between_mean",
    "w_between_sd",
    "n_within",
    "w_within_mean",
    "w_within_sd",
    "p_value",
    "verdict",
    "excluded",
    # Added after the columns above (readers by position keep working).
    "ratio",
    "p_min",
    "correction",
    "p_corrected",
    "p_min_corrected",
    "mw_u",
    "mw_p",
]


def label(path: Path, ds: xr.Dataset) -> tuple[str, int]:
    """(condition, seed) of a spectrum: its attributes, else its path (<condition>/seed<N>.zarr)."""
    if "condition" in ds.attrs and "seed" in ds.attrs and ds.attrs["condition"]:
        seed = ds.attrs["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise StoreError(
                f"spectrum store {path}: attribute seed is {str(seed)[:40]!r}; "
                "expected an integer >= 0"
            )
        return str(ds.attrs["condition"]), seed
    match = re.fullmatch(r"seed(\d+)\.zarr", path.name)
    if not match:
        raise StoreError(
            f"spectrum store {path} has no condition/seed attributes and its name is not "
            "seed<N>.zarr inside a folder named after its condition"
        )
    return path.parent.name, int(match.group(1))


def load_spectra(
    paths: list[str | Path],
) -> tuple[list[tuple[str, int]], list[np.ndarray], dict[tuple[str, int], str]]:
    """(labels, eigenvalues) of the usable spectra, and why each excluded one was left out."""
    labels, spectra, excluded = [], [], {}
    for p in map(Path, paths):
        ds = open_spectrum(p)
        key = label(p, ds)
        if key in labels or key in excluded:
            raise StoreError(f"spectrum store {p} repeats condition {key[0]!r} seed {key[1]}")
        if ds.attrs.get("status") == "excluded":
            excluded[key] = str(ds.attrs.get("excluded", "excluded"))
            continue
        values = read(ds, "eigenvalues", (slice(None),))
        if values.size == 0 or not np.isfinite(values).all():
            what = "no eigenvalues" if values.size == 0 else "eigenvalues that are not finite"
            raise StoreError(f"spectrum store {p} has {what}: rerun its Koopman stage")
        labels.append(key)
        spectra.append(values)
    return labels, spectra, excluded


def distances_dataset(labels: list[tuple[str, int]], w: np.ndarray) -> xr.Dataset:
    """W as a 4-D array over (condition, seed) on both sides; NaN where a seed is absent."""
    conditions = list(dict.fromkeys(c for c, _ in labels))
    seeds = sorted({s for _, s in labels})
    ci = {c: i for i, c in enumerate(conditions)}
    si = {s: i for i, s in enumerate(seeds)}
    grid = np.full((len(conditions), len(seeds)) * 2, np.nan)
    for i, (ca, sa) in enumerate(labels):
        for j, (cb, sb) in enumerate(labels):
            grid[ci[ca], si[sa], ci[cb], si[sb]] = w[i, j]
    return xr.Dataset(
        {"w": (("condition_a", "seed_a", "condition_b", "seed_b"), grid)},
        coords={  # object strings are stored as Zarr v3 variable-length strings
            "condition_a": np.array(conditions, dtype=object),
            "seed_a": seeds,
            "condition_b": np.array(conditions, dtype=object),
            "seed_b": seeds,
        },
        attrs={"description": "W1 between Koopman eigenvalue sets (Euclidean, uniform weights)"},
    )


def verdict_table(
    labels: list[tuple[str, int]],
    w: np.ndarray,
    pairs: list[tuple[str, str]],
    alpha: float,
    max_ratio: float,
    permutations: int,
    excluded: dict[tuple[str, int], str] | None = None,
    correction: str = "holm",
) -> pd.DataFrame:
    """One verdict per pair, p corrected across the pairs; diverged runs are named in `excluded`."""
    results, left_outs = [], []
    excluded = excluded or {}
    present = {c for c, _ in labels} | {c for c, _ in excluded}
    for a, b in pairs:
        for c in (a, b):
            if c not in present:
                raise StoreError(f"no spectrum of condition {c!r} among the inputs")
        ia = [i for i, (c, _) in enumerate(labels) if c == a]
        ib = [i for i, (c, _) in enumerate(labels) if c == b]
        idx = np.array(ia + ib, dtype=int)
        results.append(verdict(w[np.ix_(idx, idx)], len(ia), alpha, max_ratio, permutations))
        left_outs.append(
            "; ".join(
                f"{c}/seed{s}: {why}" for (c, s), why in sorted(excluded.items()) if c in (a, b)
            )
        )
    rows = [
        {"condition_a": a, "condition_b": b, **asdict(v), "excluded": left_out}
        for (a, b), v, left_out in zip(
            pairs, corrected(results, alpha, max_ratio, correction), left_outs, strict=True
        )
    ]
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def write_verdicts(
    spectra: list[str | Path],
    outdir: str | Path,
    pairs: list[tuple[str, str]] | None = None,
    alpha: float = 0.05,
    max_ratio: float = 1.5,
    permutations: int = 9999,
    correction: str = "holm",
) -> pd.DataFrame:
    """Write distances.zarr, distances.csv and conjugacy.csv under outdir."""
    options = {"alpha": alpha, "max_ratio": max_ratio, "permutations": permutations}
    options |= {"correction": correction} | ({} if pairs is None else {"pairs": pairs})
    check_verdict_options(options, lambda k: f"compare.{k}")
    claim_output(Path(outdir) / "distances.zarr", "distances", inputs=spectra)
    labels, values, excluded = load_spectra(spectra)
    if pairs is not None:  # every condition of a pair has spectra, before W is computed
        present = [c for c, _ in [*labels, *excluded]]
        check_verdict_options(
            {"pairs": pairs}, lambda k: f"compare.{k}", present, "among the spectra"
        )
    if pairs is None:
        conds = list(dict.fromkeys(c for c, _ in [*labels, *excluded]))
        pairs = [(a, b) for i, a in enumerate(conds) for b in conds[i + 1 :]]
    w = pairwise(values)
    table = verdict_table(
        labels, w, pairs, alpha, max_ratio, permutations, excluded, correction=correction
    )
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    write_dataset(distances_dataset(labels, w), outdir / "distances.zarr", role="distances")
    iu = np.triu_indices(len(labels), k=1)
    pd.DataFrame(
        {
            "condition_a": [labels[i][0] for i in iu[0]],
            "seed_a": [labels[i][1] for i in iu[0]],
            "condition_b": [labels[j][0] for j in iu[1]],
            "seed_b": [labels[j][1] for j in iu[1]],
            "w": w[iu],
        }
    ).to_csv(outdir / "distances.csv", index=False)
    table.to_csv(outdir / "conjugacy.csv", index=False)
    return table
