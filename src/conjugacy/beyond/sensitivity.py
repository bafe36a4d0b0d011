"""Sensitivity of the verdicts to the Koopman settings: a grid of delays and ranks.

Per (condition, seed), `grid_spectra` gives the eigenvalues at every
(delays, rank) of the grid with the koopman stage's own routes and DMD
(koopman.spectrum, koopman.dmd), from one pass over the trajectory store(s)
where the accumulated matrices allow it:

* covariance route (lifted dimension D <= pairs M): one pass accumulates the
  lag products B(a, b) of the largest such delay. A smaller delay d needs
  B(a, b) for a, b <= d + 1 summed over its own pairs, t < T - d - 1: those of
  the largest delay plus the pairs it lacks, which lie in the last snapshots
  of each init, kept by the pass (`smaller_lags`).
* Gram route (D > M): the plain snapshot Gram is accumulated once and lifted
  for each delay (a copy each: observables.lifted_gram, bitwise the in-place
  lift of the koopman stage).
* PCA: the Gram and the scores once; each grid point its own small dense DMD.

The ranks of one delay share one eigensolve of its squared matrix: the
eigenvectors the largest rank keeps, the leading ones for the others
(spectrum.gram_dmds; `covariance_dmds`). A grid point whose squared matrix
cannot resolve the rank it asks for (where the koopman stage switches to a
QR route) is decomposed on its own, which reads the store again, and the log
says so; a grid whose delays fall on both routes takes one pass per route.

`sensitivity_table` then computes W and the verdicts (verdict.compare's
verdict_table, the compare stage's test and correction across the pairs) at
every grid point, from the grid stores of every seed of the compared
conditions; `report` writes sensitivity.csv and the heatmap. (The verdict
modules are imported there, not on import: a grid job needs only the
Koopman ones, and scipy.stats is half its start-up.)
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from conjugacy.config import ConfigError, check_koopman
from conjugacy.koopman.backend import backend
from conjugacy.koopman.dmd import (
    DMDError,
    DMDResult,
    dmd_dense,
    dmd_from_covariance,
    leading_eigh,
    needs_qr,
    rank_bound,
    select_rank,
    squared_tol,
)
from conjugacy.koopman.observables import BUDGET, Observable, lift, lifted_gram
from conjugacy.koopman.spectrum import (
    KoopmanOptions,
    accumulate_gram,
    check_dtypes,
    covariances,
    decompose,
    excluded_dataset,
    gram_dmds,
    lag_products,
    machine_memory,
    open_pooled,
    pairs_of,
    pca_scores,
)
from conjugacy.stores.contract import (
    StoreError,
    check_integrity,
    claim_output,
    open_store,
    read,
    tensor_variables,
    write_dataset,
)

log = logging.getLogger(__name__)

Rank = int | float | str

# The columns of sensitivity.csv; ratio_low and ratio_high when the verdicts have them.
COLUMNS = [
    "delays",
    "rank",
    "condition_a",
    "condition_b",
    "n_between",
    "n_within",
    "ratio",
    "ratio_low",
    "ratio_high",
    "p_value",
    "p_corrected",
    "verdict",
    "main",
]


@dataclass
class GridPoint:
    """The DMD of one (delays, rank) of the grid, and the route that computed it."""

    result: DMDResult
    route: str


def rank_label(rank: Rank) -> str:
    """A rank as the grid names it: 10, full, gd, 0.99."""
    return str(rank)


def routes(obs: Observable, opts: KoopmanOptions, delays: list[int]) -> dict[int, str]:
    """The koopman stage's route of each delay: pca, gram (D > M) or covariance."""
    values = opts.pca if opts.pca is not None else obs.dim
    out = {}
    for d in delays:
        tall = values * (d + 1) > obs.inits * (obs.n_steps - d - 1)
        out[d] = "pca" if opts.pca is not None else "gram" if tall else "covariance"
    return out


def smaller_lags(b: np.ndarray, tail: np.ndarray, delays: int) -> np.ndarray:
    """Lag products of `delays` from those of a larger delay and its tail snapshots.

    b: B(a, c) of delay D, ((D + 2), p, (D + 2), p), summed over t < T - D - 1;
    tail: the last D + 1 snapshots of each init, (inits, D + 1, p). The smaller
    delay sums over t < T - delays - 1: its extra pairs t = T - D - 1 + u,
    u < D - delays, have every lag t + a (a <= delays + 1) in the tail.
    """
    big, p, lags = b.shape[0] - 2, b.shape[1], delays + 2
    out = b[:lags, :, :lags].copy()
    for u in range(big - delays):
        z = tail[:, u : u + lags].reshape(tail.shape[0], lags * p)
        out += (z.T @ z).reshape(lags, p, lags, p)
    return out


def covariance_dmds(
    cxx: np.ndarray,
    cyx: np.ndarray,
    cyy: np.ndarray | None,
    x0: np.ndarray,
    ranks: list[Rank],
    n_pairs: int,
    variant: str = "exact",
) -> list[DMDResult]:
    """One DMD per rank from the lifted covariances, by one eigensolve of X X^T.

    The eigensolve and the rank rule are dmd_from_covariance's. For rank r, the
    problem turned into the basis of the leading r eigenvectors U_r (X X^T
    becomes diag(lambda_1..r), Y X^T becomes U_r^T Y X^T U_r, x0 becomes
    U_r^T x0) is a problem whose own DMD at rank r (dmd_from_covariance again,
    now on r x r matrices) has the same reduced matrix A~ up to a signed
    permutation: the same eigenvalues. Modes are not kept (y_basis is in U_r's basis).
    """
    d = cxx.shape[0]
    tol = squared_tol(max(d, n_pairs))

    def pick(lam: np.ndarray, rank: Rank) -> int:
        return select_rank(np.sqrt(lam), rank, tol, (d, n_pairs))

    bounds = [rank_bound(rank) for rank in ranks]
    lam, u = leading_eigh(
        cxx,
        lambda lam: max(pick(lam, rank) for rank in ranks),
        None if None in bounds else max(bounds),
    )
    out = []
    for rank in ranks:
        q = pick(lam, rank)
        uq = u[:, :q]
        res = dmd_from_covariance(
            np.diag(lam[:q]),
            uq.T @ cyx @ uq,
            uq.T @ x0,
            q,
            n_pairs,
            cyy=None if cyy is None else uq.T @ cyy @ uq,
            variant=variant,
        )
        res.singular_values, res.y_basis = np.sqrt(lam), None
        out.append(res)
    return out


def grid_spectra(
    obs: Observable,
    opts: KoopmanOptions,
    delays: list[int],
    ranks: list[Rank],
    budget: int = BUDGET,
) -> dict[tuple[int, str], GridPoint]:
    """The DMD at every (delays, rank) of the grid, keyed by (delays, rank_label(rank)).

    Each grid point equals `decompose(obs, opts with those delays and rank)`
    (its route and its switch to a QR route), to rounding: one pass over the
    store per route the grid's delays take, one eigensolve per delay. `budget`:
    values per block the covariance route reads at a time.
    """
    be = backend(opts.device)
    n, t, variant = obs.inits, obs.n_steps, opts.variant
    values = opts.pca if opts.pca is not None else obs.dim
    route = routes(obs, opts, delays)
    out: dict[tuple[int, str], GridPoint] = {}

    def keep(d: int, results: list[DMDResult], how: str) -> None:
        for rank, result in zip(ranks, results, strict=True):
            out[(d, rank_label(rank))] = GridPoint(result, how)

    if opts.pca is not None:
        scores = pca_scores(accumulate_gram(obs, be), opts.pca).reshape(n, t, opts.pca)
        for d in delays:
            lifted = lift(scores, d)
            x, y = pairs_of(lifted)
            shape = (values * (d + 1), x.shape[0])
            size = max(shape)
            keep(
                d,
                [dmd_dense(x.T, y.T, lifted[:, 0].T, r, size, variant, shape) for r in ranks],
                "pca",
            )
        return out
    tall = [d for d in delays if route[d] == "gram"]
    wide = [d for d in delays if route[d] == "covariance"]
    if tall:
        gram = accumulate_gram(obs, be)
        for d in tall:
            h = lifted_gram(gram, n, t, d)
            keep(d, gram_dmds(h, ranks, values * (d + 1), variant), "gram")
            del h
        del gram
    if wide:
        big = max(wide)
        b, head, tail = lag_products(obs, big, be, budget, keep_tail=True)
        for d in wide:
            lags = b if d == big else smaller_lags(b, tail, d)
            cxx, cyx, cyy, x0 = covariances(lags, head[:, : d + 1], variant)
            n_pairs = n * (t - d - 1)
            keep(d, covariance_dmds(cxx, cyx, cyy, x0, ranks, n_pairs, variant), "covariance")
    for (d, label), point in out.items():
        rank = ranks[[rank_label(r) for r in ranks].index(label)]
        # The rank decompose checks before its QR switch: as asked, or what a rule chose.
        wanted = rank if rank == "full" or isinstance(rank, int) else point.result.rank
        if needs_qr(point.result.singular_values, wanted):
            log.warning(
                "delays %d, rank %s: the %s matrix cannot resolve the rank; decomposing it "
                "on its own by the QR route (another pass over the store)",
                d,
                label,
                point.route,
            )
            result, facts = decompose(obs, replace(opts, delays=d, rank=rank))
            out[(d, label)] = GridPoint(result, facts["route"])  # decompose applied keep
        elif opts.keep is not None:
            out[(d, label)] = GridPoint(point.result.dominant(opts.keep), point.route)
    return out


def grid_bytes(
    inits: int,
    steps: int,
    values: int,
    delays: list[int],
    pca: int | None,
    tall: bool,
    reads: int | None = None,
) -> int:
    """An estimate of the grid's peak memory, from the sizes alone (before any read).

    Gram route: the plain Gram, one lifted copy and the eigensolver's copy
    (three (inits * steps)^2 matrices); covariance route: the lag products of
    the largest delay, a smaller delay's copy and three lifted-dimension squares;
    plus `reads` (Observable.read_bytes), by default three float64 blocks.
    """
    values, big = pca or values, max(delays)
    squares = 2 * (big + 2) ** 2 * values**2 + 3 * (values * (big + 1)) ** 2
    if pca is not None or tall:
        squares = max(squares, 3 * (inits * steps) ** 2)
    return 8 * squares + (8 * 3 * BUDGET if reads is None else reads)


def grid_dataset(
    delays: list[int], ranks: list[Rank], points: dict[tuple[int, str], GridPoint], attrs: dict
) -> xr.Dataset:
    """The sensitivity store's dataset: eigenvalues (delays, rank, mode), NaN-padded, and
    the number of each grid point's eigenvalues (modes); none where `points` has none."""
    labels = [rank_label(r) for r in ranks]
    width = max((len(p.result.eigenvalues) for p in points.values()), default=0)
    eig = np.full((len(delays), len(ranks), width), complex("nan+nanj"))
    kept = np.zeros((len(delays), len(ranks)), dtype=np.int64)
    how = [[""] * len(ranks) for _ in delays]
    for i, d in enumerate(delays):
        for j, label in enumerate(labels):
            point = points.get((d, label))
            if point is None:
                continue
            k = len(point.result.eigenvalues)
            eig[i, j, :k], kept[i, j], how[i][j] = point.result.eigenvalues, k, point.route
    return xr.Dataset(
        {
            "eigenvalues": (("delays", "rank", "mode"), eig),
            "modes": (("delays", "rank"), kept),
        },
        coords={"delays": np.array(delays, dtype=np.int64), "rank": np.array(labels, object)},
        attrs={**attrs, "routes": how},
    )


def write_sensitivity(
    trajectory: str | Path | list[str | Path],
    out: str | Path,
    opts: KoopmanOptions,
    delays: list[int],
    ranks: list[Rank],
    skip_diverged: bool = False,
    max_memory: int | None = None,
    label: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Check the grid against the store(s), compute every grid point and write the store.

    `opts` are the condition's Koopman settings: the grid replaces their
    delays and rank. As the koopman stage: several stores are pooled, a
    diverged one is refused or (`skip_diverged`) answered by an excluded
    store, and everything is checked before any data is read.
    """
    paths = [
        Path(p) for p in (trajectory if isinstance(trajectory, list | tuple) else [trajectory])
    ]
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} pooled)"
    if not delays or not ranks:
        raise StoreError(f"store {where}: the grid needs at least one delay and one rank")
    claim_output(out, "sensitivity", inputs=paths)
    stores = open_pooled(paths, skip_diverged)
    ds = stores[0]
    inits = sum(d.sizes["init"] for d in stores)
    shapes = {n: tuple(ds[n].shape[2:]) for n in tensor_variables(ds)}
    names = list(opts.observables or shapes)
    steps = [int(s) for s in ds["step"].values]
    low = [r for r in ranks if isinstance(r, int) and opts.keep and r < opts.keep]
    if low:
        raise ConfigError(
            f"option --ranks (store {where}): rank {low[0]} is below keep {opts.keep}; "
            f"expected ranks >= {opts.keep}"
        )
    for d in delays:  # a rank above the problem size is capped by the DMD: no check
        check_koopman(
            {**asdict(opts), "delays": d, "rank": "full"},
            shapes,
            steps,
            inits,
            label=lambda key: f"option --{key} (store {where})",
        )
    for d, path in zip(stores, paths, strict=True):
        check_dtypes(d, names, path)
    obs = Observable(stores, names, opts.window, readahead=opts.readahead)
    values, n_steps = obs.dim, obs.n_steps
    tall = any((opts.pca or values) * (d + 1) > inits * (n_steps - d - 1) for d in delays)
    need = grid_bytes(inits, n_steps, values, delays, opts.pca, tall, obs.read_bytes())
    limit = max_memory or machine_memory()
    if need > limit:
        raise StoreError(
            f"trajectory store {where}: the grid would need about {need / 2**30:.1f} GiB "
            f"({inits} inits x {n_steps} snapshots x {values} values, delays up to "
            f"{max(delays)}), more than the {limit / 2**30:.1f} GiB allowed (--max-memory)"
        )
    backend(opts.device)  # a missing GPU is an error before any data is read
    source = {k: ds.attrs[k] for k in ("experiment", "condition", "seed") if k in ds.attrs}
    attrs = {
        **source,
        **(label or {}),
        "observables": names,
        "window": list(opts.window) if opts.window else None,
        "pca": opts.pca,
        "variant": opts.variant,
        "own_delays": opts.delays,
        "own_rank": rank_label(opts.rank),
        "trajectory": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths],
    }
    diverged = next((d for d in stores if d.attrs.get("status") == "diverged"), None)
    if diverged is not None:
        reason = excluded_dataset(diverged, {}).attrs["excluded"]
        result = grid_dataset(delays, ranks, {}, {**attrs, "excluded": reason})
        log.warning("%s: %s; wrote an excluded sensitivity store", where, reason)
        write_dataset(result, out, role="sensitivity", status="excluded")
        return result
    try:
        points = grid_spectra(obs, opts, delays, ranks)
    except DMDError as exc:
        raise StoreError(f"trajectory store {where}: {exc}") from None
    result = grid_dataset(delays, ranks, points, attrs)
    write_dataset(result, out, role="sensitivity")
    log.info(
        "%s: %d delays x %d ranks, routes %s",
        where,
        len(delays),
        len(ranks),
        sorted({p.route for p in points.values()}),
    )
    return result


def open_grid(path: str | Path) -> xr.Dataset:
    """Open a sensitivity store and check it is one, and whole."""
    ds = open_store(path, "sensitivity")
    if "eigenvalues" not in ds or "modes" not in ds or ds.attrs.get("role") != "sensitivity":
        raise StoreError(
            f"store {path} is not a sensitivity store (no 'eigenvalues' and 'modes' over "
            "(delays, rank)); write it with `conjugacy sensitivity`"
        )
    if ds.attrs.get("status", "complete") not in ("complete", "excluded"):
        raise StoreError(f"sensitivity store {path} is {ds.attrs['status']!r}, not complete")
    check_integrity(ds, path, "sensitivity")
    return ds


@dataclass
class Grids:
    """The grid spectra of every usable run, and why each excluded one was left out."""

    delays: list[int]
    ranks: list[str]
    labels: list[tuple[str, int]]  # (condition, seed) of each usable run
    spectra: dict[tuple[int, str], list[np.ndarray]]  # per grid point, in the order of labels
    excluded: dict[tuple[str, int], str]
    own: dict[str, tuple[int, str]]  # each condition's own (delays, rank), from its first store


def load_grids(paths: list[str | Path]) -> Grids:
    """Read the sensitivity stores of every run: one grid, each run once."""
    from conjugacy.verdict.spectra import label as store_label

    grids = None
    for p in map(Path, paths):
        ds = open_grid(p)
        key = store_label(p, ds)
        delays = [int(d) for d in ds["delays"].values]
        ranks = [str(r) for r in ds["rank"].values]
        if grids is None:
            grids = Grids(delays, ranks, [], {(d, r): [] for d in delays for r in ranks}, {}, {})
            first = p
        elif (delays, ranks) != (grids.delays, grids.ranks):
            raise StoreError(
                f"sensitivity stores {first} and {p} have different grids: delays "
                f"{grids.delays} x ranks {grids.ranks} vs delays {delays} x ranks {ranks}"
            )
        if key in grids.labels or key in grids.excluded:
            raise StoreError(f"sensitivity store {p} repeats condition {key[0]!r} seed {key[1]}")
        grids.own.setdefault(key[0], (ds.attrs.get("own_delays"), ds.attrs.get("own_rank")))
        if ds.attrs.get("status") == "excluded":
            grids.excluded[key] = str(ds.attrs.get("excluded", "excluded"))
            continue
        eig = read(ds, "eigenvalues", (slice(None),) * 3)
        kept = read(ds, "modes", (slice(None),) * 2)
        for i, d in enumerate(delays):
            for j, r in enumerate(ranks):
                values = eig[i, j, : kept[i, j]]
                if values.size == 0 or not np.isfinite(values).all():
                    raise StoreError(
                        f"sensitivity store {p}: delays {d}, rank {r} has no finite "
                        "eigenvalues: rerun its sensitivity job"
                    )
                grids.spectra[(d, r)].append(values)
        grids.labels.append(key)
    if grids is None:
        raise StoreError("no sensitivity store given")
    return grids


def pair_distances(
    labels: list[tuple[str, int]], spectra: list[np.ndarray], pairs: list[tuple[str, str]]
) -> np.ndarray:
    """W between every two spectra a pair's verdict reads (the same condition, or the two
    conditions of a pair); NaN between the others, which no verdict reads."""
    from conjugacy.verdict.distance import wasserstein

    wanted = {frozenset(p) for p in pairs}
    n = len(labels)
    w = np.full((n, n), np.nan)
    np.fill_diagonal(w, 0.0)
    for i in range(n):
        for j in range(i + 1, n):
            a, b = labels[i][0], labels[j][0]
            if (a == b and any(a in p for p in pairs)) or frozenset((a, b)) in wanted:
                w[i, j] = w[j, i] = wasserstein(spectra[i], spectra[j])
    return w


def sensitivity_table(paths: list[str | Path], settings: dict[str, Any]) -> pd.DataFrame:
    """The verdict of every pair at every grid point (the columns of COLUMNS present).

    `settings`: the compare section (alpha, max_ratio, permutations, correction, the
    bootstrap, pairs); every setting verdict_table takes is passed to it by
    keyword, so the grid's verdicts are the compare stage's test at each point.
    """
    from conjugacy.config import check_verdict_options
    from conjugacy.verdict.compare import verdict_table

    grids = load_grids(paths)
    present = list(dict.fromkeys(c for c, _ in [*grids.labels, *grids.excluded]))
    pairs = settings.get("pairs")
    if pairs is None:
        pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1 :]]
    pairs = [(a, b) for a, b in pairs]
    check_verdict_options(
        {"pairs": pairs}, lambda k: f"compare.{k}", present, "among the sensitivity stores"
    )
    taken = inspect.signature(verdict_table).parameters
    options = {
        k: v
        for k, v in settings.items()
        if k in taken and k not in ("labels", "w", "pairs", "excluded")
    }
    frames = []
    for d in grids.delays:
        for r in grids.ranks:
            w = pair_distances(grids.labels, grids.spectra[(d, r)], pairs)
            table = verdict_table(grids.labels, w, pairs, excluded=grids.excluded, **options)
            table.insert(0, "delays", d)
            table.insert(1, "rank", r)
            table["main"] = [grids.own.get(a) == (d, r) == grids.own.get(b) for a, b in pairs]
            frames.append(table)
    table = pd.concat(frames, ignore_index=True)
    return table[[c for c in COLUMNS if c in table.columns]]


def report(
    paths: list[str | Path],
    table: str | Path,
    figure: str | Path,
    settings: dict[str, Any],
) -> pd.DataFrame:
    """Write sensitivity.csv and the verdict heatmap of the grid stores."""
    from conjugacy.report.sensitivity import heatmap

    frame = sensitivity_table(paths, settings)
    for out in (table, figure):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(table, index=False)
    heatmap(frame, figure)
    return frame
