"""Stage 3: W between every two spectra, and a verdict per condition pair."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from conjugacy.config import ConfigError, check_verdict_options
from conjugacy.config.validation import defaults
from conjugacy.stores.contract import StoreError, claim_output, open_spectrum, read, write_dataset
from conjugacy.verdict.distance import (
    SGOT_ETA,
    DependentModes,
    modes_gram,
    pairwise,
    sgot_pairwise,
)
from conjugacy.verdict.spectra import EIGENVALUE_FILES, label, load_spectra
from conjugacy.verdict.stats import corrected, verdict

log = logging.getLogger(__name__)
DEFAULTS = defaults("compare")  # the schema's: the one place of every default

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
    # The cluster-bootstrap interval of the ratio (level 1 - 2 alpha) the verdict reads.
    "ratio_low",
    "ratio_high",
    "ratio_level",
]


DESCRIPTIONS = {
    "w1": "W1 between Koopman eigenvalue sets (Euclidean, uniform weights)",
    "sgot": "spectral-Grassmann W1 between Koopman eigenpairs (ot.sgot, chordal)",
}


def distances_dataset(
    labels: list[tuple[str, int]], w: np.ndarray, distance: str = "w1"
) -> xr.Dataset:
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
        attrs={"description": DESCRIPTIONS[distance]},
    )


def verdict_table(
    labels: list[tuple[str, int]],
    w: np.ndarray,
    pairs: list[tuple[str, str]],
    alpha: float = DEFAULTS["alpha"],
    max_ratio: float = DEFAULTS["max_ratio"],
    permutations: int = DEFAULTS["permutations"],
    excluded: dict[tuple[str, int], str] | None = None,
    correction: str = DEFAULTS["correction"],
    bootstrap: int = DEFAULTS["bootstrap"],
    bootstrap_seed: int = DEFAULTS["bootstrap_seed"],
) -> pd.DataFrame:
    """One verdict per pair, p corrected across the pairs; diverged runs are named in `excluded`.

    Every pair's bootstrap starts from `bootstrap_seed`: its interval does not
    depend on which other pairs are tested.
    """
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
        sub = w[np.ix_(idx, idx)]
        results.append(
            verdict(sub, len(ia), alpha, max_ratio, permutations, bootstrap, bootstrap_seed)
        )
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


DISTANCE_KEYS = ("distance", "sgot_eta")  # which distance: not options of the test itself
MODE_BLOCK = 1 << 26  # bytes of stacked modes read at a time for their Gram


def spectrum_modes(paths: list[str | Path], labels: list[tuple[str, int]]) -> list[xr.Dataset]:
    """The spectrum stores of `labels` (in order), checked for sgot before any mode is read:
    each has modes, one per eigenvalue, of as many values as the others and at most as
    many modes as values (else the left eigenvectors, their dual basis, do not exist)."""
    found = {}
    for p in map(Path, paths):
        if p.suffix in EIGENVALUE_FILES:
            raise ConfigError(
                f"option --distance sgot: eigenvalue file {p} has no modes; expected spectrum "
                "stores written with koopman modes: true"
            )
        ds = open_spectrum(p)
        if ds.attrs.get("status") == "excluded":
            continue
        if "modes" not in ds:
            raise ConfigError(
                f"option --distance sgot: spectrum store {p} has no modes; rerun its Koopman "
                "stage with modes: true (--modes)"
            )
        found[label(p, ds)] = (p, ds)
    first_path, first = found[labels[0]]
    values = first.sizes["value"]
    for key in labels:
        p, ds = found[key]
        modes, size = ds["modes"].shape, ds.sizes["mode"]
        if modes[1] != values:
            raise ConfigError(
                f"option --distance sgot: spectrum store {p} has modes of {modes[1]} values, "
                f"{first_path} of {values}; sgot compares spectra observed in one space"
            )
        if size > values:
            raise ConfigError(
                f"option --distance sgot: spectrum store {p} has {size} modes of {values} "
                "values; expected at most as many modes as values (fewer delays or a "
                "lower rank, or keep)"
            )
    return [found[key][1] for key in labels]


def stores_modes_gram(stores: list[xr.Dataset]) -> np.ndarray:
    """R^H R of every store's modes stacked as columns, summed over blocks of values."""
    sizes = [ds.sizes["mode"] for ds in stores]
    total, values = sum(sizes), stores[0].sizes["value"]
    step = max(1, MODE_BLOCK // (16 * total))
    gram = np.zeros((total, total), dtype=np.complex128)
    for start in range(0, values, step):
        cols = slice(start, min(values, start + step))
        gram += modes_gram([read(ds, "modes", (slice(None), cols)).T for ds in stores])
    return gram


def distance_matrix(
    labels: list[tuple[str, int]],
    values: list[np.ndarray],
    stores: list[xr.Dataset] | None = None,
    sgot_eta: float = SGOT_ETA,
) -> np.ndarray:
    """W1 between the eigenvalue sets, or sgot between the eigenpairs of `stores` (their
    spectrum stores, as spectrum_modes checked them)."""
    if stores is None:
        return pairwise(values)
    try:
        return sgot_pairwise(values, stores_modes_gram(stores), sgot_eta)
    except DependentModes as exc:
        where = stores[exc.index].encoding.get("source", labels[exc.index])
        raise StoreError(
            f"option --distance sgot: spectrum store {where}: its modes are linearly "
            "dependent, so it has no left eigenvectors"
        ) from None


def write_verdicts(
    spectra: list[str | Path],
    outdir: str | Path,
    pairs: list[tuple[str, str]] | None = None,
    labels_given: list[str] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Write distances.zarr, distances.csv and conjugacy.csv under outdir.

    `options`: the config's `compare` settings (alpha, max_ratio, permutations,
    correction, bootstrap, bootstrap_seed); the schema's defaults fill the rest.
    """
    given = options | ({} if pairs is None else {"pairs": pairs})
    check_verdict_options(given, lambda k: f"compare.{k}")
    opts = {k: v for k, v in {**DEFAULTS, **options}.items() if k != "pairs"}
    how = {k: opts.pop(k) for k in DISTANCE_KEYS if k in opts}
    claim_output(Path(outdir) / "distances.zarr", "distances", inputs=spectra)
    labels, values, excluded = load_spectra(spectra, labels_given)
    stores = None  # sgot: the stores with modes, checked before any W is computed
    if how.get("distance") == "sgot" and labels:
        stores = spectrum_modes(spectra, labels)
    if pairs is not None:  # every condition of a pair has spectra, before W is computed
        present = [c for c, _ in [*labels, *excluded]]
        check_verdict_options(
            {"pairs": pairs}, lambda k: f"compare.{k}", present, "among the spectra"
        )
    if pairs is None:
        conds = list(dict.fromkeys(c for c, _ in [*labels, *excluded]))
        pairs = [(a, b) for i, a in enumerate(conds) for b in conds[i + 1 :]]
        if not pairs:
            log.warning(
                "nothing to compare: the spectra hold one condition (%s); a verdict needs two",
                ", ".join(conds) or "none",
            )
    w = distance_matrix(labels, values, stores, how.get("sgot_eta", SGOT_ETA))
    table = verdict_table(labels, w, pairs, excluded=excluded, **opts)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    dataset = distances_dataset(labels, w, how.get("distance", "w1"))
    write_dataset(dataset, outdir / "distances.zarr", role="distances")
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
