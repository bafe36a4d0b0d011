"""The public Python API: spectra, distances and verdicts of your own training runs.

The same code paths as the `conjugacy` commands, so the numbers are the
same: `spectrum` runs the Koopman stage's decomposition, `compare` the
compare stage's verdict table (the columns of conjugacy.csv). Reached as
`conjugacy.spectrum`, `conjugacy.compare`, ... (loaded on first use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from conjugacy.config import ConfigError, check_verdict_options
from conjugacy.config.validation import defaults
from conjugacy.koopman.observables import Observable
from conjugacy.koopman.spectrum import DEFAULTS, KoopmanOptions, decompose, open_pooled
from conjugacy.stores.contract import open_spectrum, open_trajectory, tensor_variables
from conjugacy.verdict.compare import DISTANCE_KEYS, verdict_table
from conjugacy.verdict.distance import SGOT_ETA, modes_gram, pairwise, sgot_pairwise, wasserstein

__all__ = ["compare", "open_spectrum", "open_trajectory", "spectrum", "wasserstein"]

ArrayLike = Any  # a numpy array or a torch tensor shaped (init, step, values)
Source = ArrayLike | str | Path | Sequence[str | Path]


def _as_dataset(data: ArrayLike) -> xr.Dataset:
    """An in-memory trajectory of one observable `x` from an (init, step, values) array."""
    if hasattr(data, "detach"):  # a torch tensor: to numpy, on the CPU, without a graph
        data = data.detach().cpu().numpy()
    values = np.asarray(data)
    if values.ndim == 2:  # (step, values): one init
        values = values[None]
    if values.ndim != 3 or values.shape[1] < 2 or values.shape[2] < 1:
        raise ConfigError(
            f"data: expected an array shaped (init, step, values) with at least 2 steps, "
            f"got shape {values.shape}"
        )
    if values.dtype.kind not in "fiu" or not np.isfinite(values).all():
        raise ConfigError("data: expected finite real numbers")
    steps = np.arange(values.shape[1])
    return xr.Dataset({"x": (("init", "step", "x_dim0"), values)}, coords={"step": steps})


def _stores(data: Source) -> list[xr.Dataset]:
    if isinstance(data, str | Path):
        return [open_trajectory(data)]
    if isinstance(data, Sequence) and data and all(isinstance(p, str | Path) for p in data):
        return open_pooled([Path(p) for p in data], allow_diverged=False)
    return [_as_dataset(data)]


def spectrum(
    data: Source,
    delays: int = DEFAULTS["delays"],
    rank: int | float | str = DEFAULTS["rank"],
    window: tuple[int, int] | None = DEFAULTS["window"],
    pca: int | None = DEFAULTS["pca"],
    variant: str = DEFAULTS["variant"],
    observables: list[str] | None = DEFAULTS["observables"],
    keep: int | None = DEFAULTS["keep"],
    spread_resamples: int | None = None,
    max_spread: float | None = None,
    max_residual: float | None = None,
) -> np.ndarray:
    """Koopman eigenvalues (complex, by decreasing modulus order of the DMD) of one seed's runs.

    `data`: an array or tensor shaped (init, step, values) (each init one run
    of the seed, steps 0..T-1), a trajectory store, or several stores pooled
    as the inits of one DMD. The defaults are the config's (`koopman`
    section of the schema); the numbers equal those of `conjugacy koopman`.
    `spread_resamples` and `max_spread` drop the modes whose eigenvalue moves
    by more than `max_spread` when the inits are resampled (before `keep`).
    `max_residual` drops the modes whose residual ||C'_i - mu_i C_i|| / ||C_i||
    (how far from an eigenfunction on the snapshot pairs) exceeds it (before `keep`).
    """
    from conjugacy.config import check_koopman

    stores = _stores(data)
    opts = KoopmanOptions(
        observables=observables,
        delays=delays,
        rank=rank,
        window=tuple(window) if window else None,
        pca=pca,
        variant=variant,
        keep=keep,
        spread_resamples=spread_resamples,
        max_spread=max_spread,
        max_residual=max_residual,
    )
    ds = stores[0]
    names = opts.observables or tensor_variables(ds)
    shapes = {n: tuple(ds[n].shape[2:]) for n in tensor_variables(ds)}
    inits = sum(d.sizes["init"] for d in stores)
    check_koopman(
        {**defaults("koopman"), **vars(opts)},
        shapes,
        [int(s) for s in ds["step"].values],
        inits,
        label=lambda key: f"argument {key}",
    )
    result, _ = decompose(Observable(stores, list(names), opts.window), opts)
    return result.eigenvalues


def compare(
    spectra: Mapping[str, Sequence[np.ndarray]],
    pairs: Sequence[tuple[str, str]] | None = None,
    **verdict_options: Any,
) -> pd.DataFrame:
    """The verdict table of conjugacy.csv from eigenvalue sets: {condition: [one per seed]}.

    `verdict_options` are the config's `compare` settings (alpha, max_ratio,
    permutations, correction, ...), defaults from the schema; `pairs`
    defaults to every pair of conditions, in the mapping's order. With
    `distance="sgot"` each seed is a pair (eigenvalues, modes), modes shaped
    (values, eigenvalues) in a space all seeds share.
    """
    options = {**defaults("compare"), **verdict_options}
    names = list(spectra)
    if pairs is not None:
        options["pairs"] = [list(p) for p in pairs]
    check_verdict_options(options, lambda key: f"argument {key}", names, "among the spectra")
    if len(names) < 2:
        raise ConfigError(f"spectra: {len(names)} condition(s); a verdict needs two or more")
    labels = [(c, i) for c in names for i in range(len(spectra[c]))]
    how = {k: options.pop(k) for k in DISTANCE_KEYS if k in options}
    if how.get("distance") == "sgot":
        w = _sgot_matrix([v for c in names for v in spectra[c]], how.get("sgot_eta"))
    else:
        w = pairwise([np.asarray(v, dtype=np.complex128) for c in names for v in spectra[c]])
    chosen = options.pop("pairs", None)
    wanted = (
        [tuple(p) for p in chosen]
        if chosen
        else [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    )
    return verdict_table(labels, w, wanted, **options)


def _sgot_matrix(spectra: list[Any], eta: float | None) -> np.ndarray:
    """sgot between (eigenvalues, modes) pairs, modes (values x eigenvalues) of one space."""
    pairs = [(np.asarray(e, dtype=np.complex128), np.asarray(m)) for e, m in spectra]
    sizes = {m.shape[0] for _, m in pairs}
    if len(sizes) != 1 or any(m.shape[1] != e.size for e, m in pairs):
        raise ConfigError(
            "argument distance sgot: expected (eigenvalues, modes) per seed, modes shaped "
            f"(values, eigenvalues) with one number of values; got {sorted(sizes)} values"
        )
    gram = modes_gram([m for _, m in pairs])
    return sgot_pairwise([e for e, _ in pairs], gram, SGOT_ETA if eta is None else eta)
