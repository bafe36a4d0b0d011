"""Stage 2: Koopman eigenvalues of one trajectory store by DMD.

Snapshot pairs of all inits are pooled (no pair crosses two inits) and one
DMD is fitted. One pass over the store accumulates, in float64, the plain
snapshot Gram (when the lifted dimension D exceeds the number of pairs M, or
when PCA is asked for) or the lifted covariance (otherwise). Time delays are
applied to the accumulated matrix or per block, never to the whole data.
Modes, when asked for, take a second pass (Gram and QR-tall routes) or come
from the accumulated covariance (the others).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from conjugacy.config import ConfigError, check_koopman, check_windows, external_paths
from conjugacy.config.validation import defaults
from conjugacy.koopman.backend import NumpyBackend, TorchBackend, backend
from conjugacy.koopman.dmd import (
    DMDError,
    DMDResult,
    condition_number,
    dmd_dense,
    dmd_from_covariance,
    dmd_from_gram_factors,
    leading_eigh,
    matched_spread,
    needs_qr,
    rank_bound,
    require_finite,
    select_rank,
    squared_tol,
    tsqr_update,
)
from conjugacy.koopman.observables import BUDGET, Observable, lift, lift_gram_inplace
from conjugacy.stores.contract import (
    CHECKSUM,
    StoreError,
    claim_output,
    open_trajectory,
    seal,
    tensor_variables,
    write_dataset,
)
from conjugacy.stores.readahead import DEPTH

log = logging.getLogger(__name__)

Backend = NumpyBackend | TorchBackend
MODE_CHUNK = 1 << 17  # values per chunk of the modes array (times the rank, complex128)


DEFAULTS = defaults("koopman")  # the schema's: the one place of every default


@dataclass
class KoopmanOptions:
    """How one spectrum is computed: the config's `koopman` settings, plus read-ahead."""

    observables: list[str] | None = DEFAULTS["observables"]
    delays: int = DEFAULTS["delays"]
    rank: int | float | str = DEFAULTS["rank"]
    window: tuple[int, int] | None = DEFAULTS["window"]
    pca: int | None = DEFAULTS["pca"]
    variant: str = DEFAULTS["variant"]
    device: str = DEFAULTS["device"]
    modes: bool = DEFAULTS["modes"]
    keep: int | None = DEFAULTS["keep"]
    # Opt-in (no schema default, so configs without them resolve as before):
    spread_resamples: int | None = None  # init resamples for each eigenvalue's spread
    max_spread: float | None = None  # drop modes whose spread exceeds it (before keep)
    max_residual: float | None = None  # drop modes whose residual exceeds it (before keep)
    readahead: int = DEPTH  # a run-time resource, not a setting: results do not depend on it

    @classmethod
    def from_settings(cls, settings: dict[str, Any], readahead: int = DEPTH) -> KoopmanOptions:
        """Options from resolved `koopman` settings (config.validation.settings); `windows` is the
        workflow's business (one spectrum per window), not a single decomposition's."""
        window = settings.get("window")
        return cls(
            observables=settings.get("observables"),
            delays=settings["delays"],
            rank=settings["rank"],
            window=tuple(window) if window else None,
            pca=settings.get("pca"),
            variant=settings["variant"],
            device=settings["device"],
            modes=settings["modes"],
            keep=settings.get("keep"),
            spread_resamples=settings.get("spread_resamples"),
            max_spread=settings.get("max_spread"),
            max_residual=settings.get("max_residual"),
            readahead=readahead,
        )


def accumulate_gram(obs: Observable, be: Backend | None = None) -> np.ndarray:
    """X^T X over every snapshot (init-major), one block of parameters at a time."""
    be = be or NumpyBackend()
    n = obs.inits * obs.n_steps
    acc = be.zeros((n, n))
    for block in obs.param_blocks():
        be.add_gram(acc, block.reshape(n, -1))
    return be.finish_gram(acc)


def pairs_of(lifted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) rows of snapshot pairs of lifted (inits, L, D) data: pairs never cross inits."""
    d = lifted.shape[2]
    return lifted[:, :-1].reshape(-1, d), lifted[:, 1:].reshape(-1, d)


def gram_route(
    obs: Observable,
    delays: int,
    rank: int | float | str,
    dim: int,
    variant: str = "exact",
    be: Backend | None = None,
) -> DMDResult:
    """D > M: the lifted Gram is a sum of shifted blocks of the plain snapshot Gram.

    Memory: the plain Gram (inits*T)^2, turned into the lifted one in place,
    then one M x M copy of X^T X for the eigensolver and its eigenvectors.
    X^T Y is never formed: Y^T X V_r is summed block by block from the
    lifted Gram's views.
    """
    return gram_dmds(lifted_gram(obs, delays, be), [rank], dim, variant)[0]


def lifted_gram(obs: Observable, delays: int, be: Backend | None = None) -> np.ndarray:
    """The lifted Gram (inits, m, inits, m), a view, from one pass over the store."""
    return lift_gram_inplace(accumulate_gram(obs, be), obs.inits, obs.n_steps, delays)


def gram_dmds(
    h: np.ndarray, ranks: list[int | float | str], dim: int, variant: str = "exact"
) -> list[DMDResult]:
    """One DMD per rank from the lifted Gram h (inits, m, inits, m), by one eigensolve.

    The eigensolve keeps the eigenvectors the largest rank asks for (every
    one when a rank has no bound known beforehand); each rank takes the
    leading columns of them and of Y^T X V.
    """
    n, m = h.shape[0], h.shape[1]
    k = m - 1  # pairs per init
    size = n * k
    gxx = np.empty((n, k, n, k))
    gxx[...] = h[:, :k, :, :k]
    gx0 = h[:, :k, :, 0].reshape(size, n)  # X^T x0: the first lifted snapshot of each init
    tol = squared_tol(max(dim, size))

    def pick(lam: np.ndarray, rank: int | float | str) -> int:
        return select_rank(np.sqrt(lam), rank, tol, (dim, size))

    bounds = [rank_bound(rank) for rank in ranks]
    lam, vr = leading_eigh(
        gxx.reshape(size, size),
        lambda lam: max(pick(lam, rank) for rank in ranks),
        None if None in bounds else max(bounds),
        overwrite=True,
    )
    del gxx
    s_all = np.sqrt(lam)
    r = vr.shape[1]
    vr = np.ascontiguousarray(vr)
    v4 = vr.reshape(n, k, r)
    ytxv = np.zeros((n, k, r))
    for a in range(n):  # Y^T X V_r: rows at y positions (t >= 1), columns at x positions
        for b in range(n):
            ytxv[a] += h[a, 1:, b, :k] @ v4[b]
    ytxv = ytxv.reshape(size, r)
    kept = [pick(lam, rank) for rank in ranks]
    return [dmd_from_gram_factors(s_all, q, vr[:, :q], ytxv[:, :q], gx0, variant) for q in kept]


def lag_products(
    obs: Observable,
    delays: int,
    be: Backend | None = None,
    budget: int = BUDGET,
    keep_tail: bool = False,
) -> tuple[np.ndarray, ...]:
    """Lagged sums B(a, b) = sum over inits and t < k of s_(t+a) s_(t+b)^T, a, b in 0..d+1.

    With d delays the lifted snapshot is x_t = [s_t, ..., s_(t+d)], so every
    p x p block of X X^T, Y X^T and Y Y^T is one B(a, b). The pass over the
    store sums only the d + 2 lags B(0, l); B(a + 1, a + 1 + l) follows from
    B(a, a + l) by removing the pair at the head and adding the one at the
    tail: (d + 2) instead of (d + 2)^2 products of the data, each term added
    or removed once, so rounding is that of direct summation. Returns B as
    ((d + 2), p, (d + 2), p) float64 and the first d + 1 snapshots (inits, d + 1, p);
    with `keep_tail` also the last d + 1 (what a smaller delay's B adds).
    """
    be = be or NumpyBackend()
    base, head, tail = lag_sums(obs, delays, be, budget)
    out = assemble_lags([np.array(be.numpy(b), dtype=np.float64) for b in base], head, tail)
    return (out, head, tail) if keep_tail else (out, head)


def lag_sums(
    obs: Observable,
    delays: int,
    be: Backend,
    budget: int = BUDGET,
    per_init: bool = False,
) -> tuple[list, np.ndarray, np.ndarray]:
    """The pass of lag_products: B(0, l) for l in 0..d+1 (backend arrays), the first and the
    last d + 1 snapshots of each init. `per_init`: B(0, l) of each init on its own, a list
    (inits) of lists (lags): what a resample of the inits sums with its counts as weights."""
    t, lags = obs.n_steps, delays + 2
    k = t - delays - 1  # pairs per init
    base = head = tail = None
    for start, block in obs.step_blocks(overlap=lags - 1, budget=budget):
        p = block.shape[2]
        if base is None:
            count = block.shape[0] if per_init else 1
            base = [[be.zeros((p, p)) for _ in range(lags)] for _ in range(count)]
            head = block[:, : lags - 1].copy()
        u0, u1 = start, min(k, start + block.shape[1] - (lags - 1))  # t whose lags lie here
        if u1 > u0:
            groups = [block[i : i + 1] for i in range(block.shape[0])] if per_init else [block]
            for acc, part in zip(base, groups, strict=True):
                # Step-major rows: each lag's rows are one contiguous view, not a copy per lag.
                window = part[:, u0 - start : u1 - start + lags - 1]
                steps = np.ascontiguousarray(window.swapaxes(0, 1))
                first = steps[: u1 - u0].reshape(-1, p)
                be.add_product(acc[0], first, first)  # numpy takes a.T @ a as a symmetric product
                for lag in range(1, lags):
                    be.add_product(acc[lag], first, steps[lag : lag + u1 - u0].reshape(first.shape))
        if start + block.shape[1] == t:
            tail = block[:, block.shape[1] - (lags - 1) :].copy()  # s_k .. s_(T-1)
    return (base if per_init else base[0]), head, tail


def assemble_lags(
    diag: list[np.ndarray], head: np.ndarray, tail: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Every B(a, b) ((d + 2), p, (d + 2), p) from the B(0, l) (float64, changed in place).

    B(a + 1, a + 1 + l) follows from B(a, a + l) by taking out the pair at the
    head and adding the one at the tail; `weights` (one per init) weigh each
    init's head and tail pairs as the B(0, l) were weighed.
    """
    lags, p = len(diag), head.shape[2]
    out = np.empty((lags, p, lags, p))
    for a in range(lags):
        for lag in range(lags - a):
            out[a, :, a + lag] = diag[lag]
            out[a + lag, :, a] = diag[lag].T
        if a == lags - 1:
            break
        h, t = head[:, a], tail[:, a]
        if weights is not None:
            h, t = h * weights[:, None], t * weights[:, None]
        for lag in range(lags - a - 1):  # step to B(a + 1, a + 1 + l): head pair out, tail in
            diag[lag] -= h.T @ head[:, a + lag]
            diag[lag] += t.T @ tail[:, a + lag]
    return out


def covariance_route(
    obs: Observable,
    delays: int,
    rank: int | float | str,
    n_pairs: int,
    variant: str = "exact",
    be: Backend | None = None,
) -> DMDResult:
    """D <= M: X X^T, Y X^T (and Y Y^T for tls, fb) of the lifted pairs, from lag products."""
    cxx, cyx, cyy, x0 = covariances(*lag_products(obs, delays, be), variant)
    return dmd_from_covariance(cxx, cyx, x0, rank, n_pairs, cyy=cyy, variant=variant)


def covariances(
    b: np.ndarray, head: np.ndarray, variant: str = "exact"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """X X^T, Y X^T, Y Y^T (the residuals, tls and fb) and x0 from lag products and head."""
    d = (b.shape[0] - 1) * b.shape[1]
    cxx = b[:-1, :, :-1].reshape(d, d)
    cyx = b[1:, :, :-1].reshape(d, d)
    cyy = b[1:, :, 1:].reshape(d, d)
    x0 = head.reshape(head.shape[0], d).T.copy()  # first lifted snapshot of each init
    return cxx, cyx, cyy, x0


def qr_tall_route(
    obs: Observable, delays: int, rank: int | float | str, size: int, variant: str = "exact"
) -> DMDResult:
    """D > M, ill-conditioned: streaming QR of the lifted snapshots Z (D x inits*m).

    Z = Q R, so X = Q R[:, x] and Y = Q R[:, y]: DMD of the small coefficient
    matrices has the same eigenvalues, with R accurate to eps * s_max.
    """
    r = qr_tall_factor(obs, delays)
    res = qr_tall_dmd(r, np.arange(obs.inits), obs.n_steps - delays, obs.dim * (delays + 1),
                      rank, size, variant)  # fmt: skip
    res.y_basis = None  # in the basis Q, not the lifted space: modes take the second pass
    return res


def qr_tall_factor(obs: Observable, delays: int) -> np.ndarray:
    """R of the streaming QR of the lifted snapshots Z (D x inits*m), init-major columns."""
    n, m = obs.inits, obs.n_steps - delays
    r = None
    for block in obs.param_blocks(budget=BUDGET // (delays + 1)):
        rows = np.concatenate(
            [block[:, d : d + m] for d in range(delays + 1)], axis=2, dtype=np.float64
        )
        r = tsqr_update(r, rows.reshape(n * m, -1).T)
    return r


def qr_tall_dmd(
    r: np.ndarray,
    inits: np.ndarray,
    m: int,
    dim: int,
    rank: int | float | str,
    size: int,
    variant: str,
) -> DMDResult:
    """DMD of the columns of R of the given inits (with repeats): X = Q R[:, x], Y = Q R[:, y]."""
    cols = (inits[:, None] * m + np.arange(m)[None, :]).reshape(inits.size, m)
    x_cols, y_cols = cols[:, :-1].ravel(), cols[:, 1:].ravel()
    shape = (dim, x_cols.size)
    return dmd_dense(r[:, x_cols], r[:, y_cols], r[:, cols[:, 0]], rank, size, variant, shape)


def qr_wide_route(
    obs: Observable, delays: int, rank: int | float | str, size: int, variant: str = "exact"
) -> DMDResult:
    """D <= M, ill-conditioned: streaming QR of the pair rows [X^T | Y^T] (M x 2D).

    [X^T | Y^T] = Q R gives X = R[:, :D]^T Q^T and Y = R[:, D:]^T Q^T: DMD of
    the D x 2D coefficient matrices has the same eigenvalues and modes.
    """
    r, x0, n_pairs = qr_wide_factor(obs, delays)
    d = r.shape[1] // 2
    res = dmd_dense(r[:, :d].T, r[:, d:].T, x0, rank, size, variant, (d, n_pairs))
    res.pair_coefs = None  # over the rows of Q, not the pairs; y_basis is the lifted one
    return res


def qr_wide_factor(
    obs: Observable, delays: int, per_init: bool = False
) -> tuple[np.ndarray | list[np.ndarray], np.ndarray, int]:
    """R of the streaming QR of the pair rows [X^T | Y^T] (or, `per_init`, one R per init),
    the first lifted snapshots (D x inits) and the number of pairs."""
    r = x0 = None
    n_pairs = 0
    for start, block in obs.step_blocks(overlap=delays + 1):
        lifted = lift(block, delays)
        if per_init:
            r = r or [None] * lifted.shape[0]
            for i in range(lifted.shape[0]):
                r[i] = tsqr_update(r[i], np.hstack(pairs_of(lifted[i : i + 1])))
            n_pairs += lifted.shape[0] * (lifted.shape[1] - 1)
        else:
            pairs = np.hstack(pairs_of(lifted))
            n_pairs += pairs.shape[0]
            r = tsqr_update(r, pairs)
        if start == 0:
            x0 = lifted[:, 0].T.copy()
    return r, x0, n_pairs


def pca_scores(gram: np.ndarray, k: int) -> np.ndarray:
    """Scores on the first k principal components, from the snapshot Gram.

    Equal (up to the sign of each component) to scikit-learn's
    PCA(k).fit_transform of the pooled snapshots: centred by the snapshot
    mean, with no further centring afterwards.
    """
    require_finite(gram)
    centred = gram - gram.mean(axis=0)[None, :] - gram.mean(axis=1)[:, None] + gram.mean()
    lam, vec = np.linalg.eigh((centred + centred.T) / 2)
    lam, vec = np.clip(lam[::-1][:k], 0.0, None), vec[:, ::-1][:, :k]
    return vec * np.sqrt(lam)[None, :]


def pca_dmd(
    scores: np.ndarray, delays: int, rank: int | float | str, size: int, variant: str
) -> DMDResult:
    """DMD of the delay-lifted PCA scores (inits, steps, components), in memory."""
    lifted = lift(scores, delays)
    x, y = pairs_of(lifted)
    return dmd_dense(x.T, y.T, lifted[:, 0].T, rank, size, variant, x.T.shape)


def machine_memory() -> int:
    """Bytes of memory this machine has: the default bound of a decomposition."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def peak_bytes(
    inits: int, steps: int, values: int, delays: int, pca: int | None, reads: int | None = None
) -> int:
    """An estimate of a decomposition's peak memory, from the sizes alone (before any read).

    The squared matrix dominates: three (inits * steps)^2 float64 matrices on
    the Gram and PCA routes, the lag products and three lifted-dimension
    squares on the covariance route; plus `reads`, the bytes the reads hold
    at once (Observable.read_bytes: large chunks make large reads), by
    default three float64 blocks.
    """
    lifted = (pca or values) * (delays + 1)
    pairs = inits * (steps - delays - 1)
    if pca is not None or lifted > pairs:
        squares = 3 * (inits * steps) ** 2
    else:
        squares = (delays + 2) ** 2 * values**2 + 3 * lifted**2
    return 8 * squares + (8 * 3 * BUDGET if reads is None else reads)


def check_memory(obs: Observable, opts: KoopmanOptions, limit: int, path) -> None:
    """Stop before reading when the decomposition would need more than `limit` bytes."""
    steps, values, inits = obs.n_steps, obs.dim, obs.inits
    need = peak_bytes(inits, steps, values, opts.delays, opts.pca, obs.read_bytes())
    if need > limit:
        raise StoreError(
            f"trajectory store {path}: the decomposition would need about {need / 2**30:.1f} GiB "
            f"({inits} inits x {steps} snapshots x {values} values), more than "
            f"the {limit / 2**30:.1f} GiB allowed (--max-memory); use a window, PCA or fewer "
            "observables, or raise --max-memory"
        )


def check_dtypes(ds: xr.Dataset, names: list[str], path) -> None:
    """Observables must be real numbers: the DMD of this project is over the reals."""
    for name in names:
        kind = ds[name].dtype.kind
        if kind not in "fiub":
            raise StoreError(
                f"trajectory store {path}: variable {name!r} has dtype {ds[name].dtype}; "
                "expected real numbers (float or integer)"
            )


def _wanted(rank: int | float | str, result: DMDResult) -> int | str:
    """The rank needs_qr checks: an integer or "full" as asked, else the rank a rule chose."""
    return rank if rank == "full" or isinstance(rank, int) else result.rank


def fit_sizes(obs: Observable, opts: KoopmanOptions) -> tuple[int, int, int]:
    """(lifted dimension D, snapshot pairs M, max(D, M)) of a fit of `obs` with `opts`."""
    values = opts.pca if opts.pca is not None else obs.dim
    lifted_dim = values * (opts.delays + 1)
    n_pairs = obs.inits * (obs.n_steps - opts.delays - 1)
    return lifted_dim, n_pairs, max(lifted_dim, n_pairs)


def decompose(obs: Observable, opts: KoopmanOptions) -> tuple[DMDResult, dict[str, Any]]:
    """Fit one pooled DMD to an observable; return it with facts about the fit.

    The route is chosen by size (Gram when D > M, covariance otherwise), and
    switches to the matching QR route when the squared matrix cannot resolve
    the singular values the rank asks for (the log says so, with the
    condition number).
    """
    n, t, delays = obs.inits, obs.n_steps, opts.delays
    lifted_dim, n_pairs, size = fit_sizes(obs, opts)
    be = backend(opts.device)
    variant = opts.variant
    fitted = None  # the lifted Gram or PCA scores of the fit: the spread's resamples reuse them
    if opts.pca is not None:
        route = "pca"
        fitted = pca_scores(accumulate_gram(obs, be), opts.pca).reshape(n, t, opts.pca)
        result = pca_dmd(fitted, delays, opts.rank, size, variant)
        result.y_basis = result.pair_coefs = None  # modes of PCA scores: not written
    else:
        tall = lifted_dim > n_pairs
        route = "gram" if tall else "covariance"
        if tall:
            fitted = lifted_gram(obs, delays, be)
            result = gram_dmds(fitted, [opts.rank], lifted_dim, variant)[0]
        else:
            result = covariance_route(obs, delays, opts.rank, n_pairs, variant, be)
        wanted = _wanted(opts.rank, result)
        if needs_qr(result.singular_values, wanted):
            log.warning(
                "the %s matrix is ill-conditioned for rank %s: condition number %.2e "
                "(float64 resolves about 1e8 well); switching to the stable QR route",
                route,
                opts.rank,
                condition_number(result.singular_values, wanted),
            )
            route = "qr-tall" if tall else "qr-wide"
            qr = qr_tall_route if tall else qr_wide_route
            fitted = None  # freed before the QR route's pass
            result = qr(obs, delays, opts.rank, size, variant)
    if opts.spread_resamples:
        spread = init_spread(obs, opts, result, route, be, fitted)
        result = replace(result, spread=spread)
        if opts.max_spread is not None:
            result = result.within(result.spread, opts.max_spread)
    del fitted
    if opts.max_residual is not None:
        if result.residual is None or np.isnan(result.residual).any():
            raise DMDError("max_residual: this fit has no residual for its modes")
        result = result.within(result.residual, opts.max_residual)
    if opts.keep is not None:  # after max_spread / max_residual, keep takes what is left
        chose = (opts.max_spread is not None and opts.spread_resamples) or (
            opts.max_residual is not None
        )
        result = result.dominant(min(opts.keep, result.eigenvalues.size) if chose else opts.keep)
    facts = {
        "route": route,
        "lifted_dim": lifted_dim,
        "n_pairs": n_pairs,
        "n_inits": n,
        "n_snapshots": t,
    }
    log.info(
        "DMD %s (%s) %s route on %s: %d inits x %d snapshots, lifted dim %d, %d pairs, rank %d",
        variant,
        opts.rank,
        route,
        be.name,
        n,
        t,
        lifted_dim,
        n_pairs,
        result.rank,
    )
    return result, facts


SPREAD_SEED = 0  # the init resamples: the same data give the same spread
SPREAD_QUANTILE = 0.5  # the spread is the median distance over the resamples


def init_resamples(inits: int, count: int, seed: int = SPREAD_SEED) -> np.ndarray:
    """`count` draws of `inits` init indices with replacement (count x inits), fixed seed."""
    return np.random.default_rng(seed).integers(0, inits, size=(count, inits))


def init_spread(
    obs: Observable,
    opts: KoopmanOptions,
    result: DMDResult,
    route: str,
    be: Backend,
    fitted: np.ndarray | None = None,
) -> np.ndarray:
    """Each eigenvalue's spread over fits to the inits resampled with replacement.

    The seed's inits are its replicates: a DMD refitted to a resample of them
    at the same rank moves an eigenvalue of the dynamics little and one
    fitted to noise much. The Gram and PCA routes reuse the fit's lifted Gram
    or scores (`fitted`: a resample picks rows and columns); the others take
    one more pass over the store for what a resample needs: the lag sums of
    each init (covariance: a resample sums them with its counts), R of each
    init's pair rows (QR-wide: R of the stacked R's) or R of the snapshots
    (QR-tall: a resample picks columns). Spread: the median over resamples of the distance from
    each eigenvalue to its match (matched_spread).
    """
    draws = init_resamples(obs.inits, opts.spread_resamples)
    fits = resample_fits(obs, opts, result.rank, route, be, fitted)
    resampled = [fits(idx) for idx in draws]
    return matched_spread(result.eigenvalues, resampled, SPREAD_QUANTILE)


def resample_fits(
    obs: Observable,
    opts: KoopmanOptions,
    rank: int,
    route: str,
    be: Backend,
    fitted: np.ndarray | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function from resampled init indices to the eigenvalues of that resample's DMD.

    `fitted`: the lifted Gram (Gram route) or PCA scores the fit computed, else
    they are computed again from the store.
    """
    n, t, delays, variant = obs.inits, obs.n_steps, opts.delays, opts.variant
    lifted_dim, n_pairs, size = fit_sizes(obs, opts)
    if route == "gram":
        h = fitted if fitted is not None else lifted_gram(obs, delays, be)

        def gram_fit(idx: np.ndarray) -> np.ndarray:
            return gram_dmds(h[idx][:, :, idx], [rank], lifted_dim, variant)[0].eigenvalues

        return gram_fit
    if route == "covariance":
        base, head, tail = lag_sums(obs, delays, be, per_init=True)
        per_init = [[np.array(be.numpy(b), dtype=np.float64) for b in acc] for acc in base]

        def covariance_fit(idx: np.ndarray) -> np.ndarray:
            w = np.bincount(idx, minlength=n).astype(np.float64)
            diag = [sum(w[i] * per_init[i][lag] for i in np.flatnonzero(w)) for lag in
                    range(delays + 2)]  # fmt: skip
            b = assemble_lags(diag, head, tail, w)
            cxx, cyx, cyy, x0 = covariances(b, head[idx], variant)
            fit = dmd_from_covariance(cxx, cyx, x0, rank, n_pairs, cyy=cyy, variant=variant)
            return fit.eigenvalues

        return covariance_fit
    if route == "qr-wide":
        rs, x0, _ = qr_wide_factor(obs, delays, per_init=True)
        d = rs[0].shape[1] // 2

        def wide_fit(idx: np.ndarray) -> np.ndarray:
            r = tsqr_update(None, np.vstack([rs[i] for i in idx]))
            return dmd_dense(r[:, :d].T, r[:, d:].T, x0[:, idx], rank, size, variant,
                             (d, n_pairs)).eigenvalues  # fmt: skip

        return wide_fit
    if route == "qr-tall":
        r = qr_tall_factor(obs, delays)
        m = t - delays
        return lambda idx: qr_tall_dmd(r, idx, m, lifted_dim, rank, size, variant).eigenvalues
    if fitted is None:
        fitted = pca_scores(accumulate_gram(obs, be), opts.pca).reshape(n, t, opts.pca)
    return lambda idx: pca_dmd(fitted[idx], delays, rank, size, variant).eigenvalues


def write_modes(group: zarr.Group, obs: Observable, result: DMDResult, delays: int) -> None:
    """DMD modes of the observables' values as a chunked (mode, value) complex128 array.

    Modes are those of the first delay block of the lifted space (the
    snapshot itself). Where Y V S^-1 is only known through pair coefficients
    (Gram and QR-tall routes), a second pass over the store forms it block by
    block: Y's first delay block is the snapshots 1 .. m-1 of each init.
    """
    r, dim = result.eigenvalues.size, obs.dim
    arr = group.create_array(
        "modes",
        shape=(r, dim),
        chunks=(r, min(dim, MODE_CHUNK)),
        dtype="complex128",
        fill_value=complex("nan+nanj"),
        compressors=CHECKSUM,
        dimension_names=("mode", "value"),
    )
    for first, count, modes in mode_blocks(obs, result, delays):
        arr[:, first : first + count] = modes.T


def mode_blocks(
    obs: Observable, result: DMDResult, delays: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first value, count, modes (count x rank)) of the observables' values, block by block.

    From Y V S^-1 in the lifted space where the route has it, else by a pass
    over the store: Y's first delay block is the snapshots 1 .. m-1 of each init.
    """
    if result.y_basis is not None:
        yield 0, obs.dim, result.mode_matrix(result.y_basis[: obs.dim])
        return
    m = obs.n_steps - delays
    ranges = obs.param_ranges()
    for (_, _, first, count), block in zip(ranges, obs.param_blocks(), strict=True):
        y = block[:, 1:m].reshape(-1, count).astype(np.float64)  # (pairs, values), init-major
        yield first, count, result.mode_matrix(y.T @ result.pair_coefs)


def value_modes(obs: Observable, result: DMDResult, delays: int) -> np.ndarray:
    """The modes write_modes writes, in memory (values x rank)."""
    return np.vstack([modes for _, _, modes in mode_blocks(obs, result, delays)])


def spectrum_dataset(result: DMDResult, attrs: dict[str, Any]) -> xr.Dataset:
    """The spectrum store's dataset (the contract in the README)."""
    data = {
        "eigenvalues": ("mode", result.eigenvalues),
        "amplitudes": (("mode", "init"), result.amplitudes),
        "energy": ("mode", result.energy),
        "residual": ("mode", result.residual),
        "singular_values": ("component", result.singular_values),
    }
    if result.spread is not None:
        data["spread"] = ("mode", result.spread)
    for name, values in (result.dropped or {}).items():
        data[f"dropped_{name}"] = ("dropped", values)
    return xr.Dataset(data, attrs={**attrs, "rank": result.rank})


def excluded_dataset(ds: xr.Dataset, attrs: dict[str, Any]) -> xr.Dataset:
    """A spectrum with no eigenvalues that says why: its trajectory diverged."""
    empty = np.zeros(0, dtype=np.complex128)
    reason = (
        f"trajectory diverged at step {ds.attrs.get('diverged_step')} "
        f"({ds.attrs.get('diverged_reason', 'non-finite values')})"
    )
    return xr.Dataset(
        {
            "eigenvalues": ("mode", empty),
            "amplitudes": (("mode", "init"), np.zeros((0, ds.sizes["init"]), np.complex128)),
            "singular_values": ("component", np.zeros(0)),
        },
        attrs={**attrs, "rank": 0, "excluded": reason},
    )


def open_pooled(paths: list[Path], allow_diverged: bool) -> list[xr.Dataset]:
    """Trajectory stores pooled as the inits of one DMD: the same tensors, shapes and steps.

    One store per run works as well as one store per seed; a mismatch is a
    one-line error naming both stores and what differs.
    """
    stores = [open_trajectory(p, allow_diverged=allow_diverged) for p in paths]
    first, ref = stores[0], paths[0]
    for ds, path in zip(stores[1:], paths[1:], strict=True):
        mine = {n: tuple(first[n].shape[2:]) for n in tensor_variables(first)}
        theirs = {n: tuple(ds[n].shape[2:]) for n in tensor_variables(ds)}
        if mine != theirs:
            raise StoreError(
                f"trajectory stores {ref} and {path} cannot be pooled: tensors {mine} vs {theirs}"
            )
        if not np.array_equal(first["step"].values, ds["step"].values):
            raise StoreError(
                f"trajectory stores {ref} and {path} cannot be pooled: they record different "
                f"steps ({first.sizes['step']} vs {ds.sizes['step']} snapshots)"
            )
    return stores


def check_external(name: str, cond: dict[str, Any]) -> None:
    """Before any job: every store of an `external` condition exists, follows the contract,
    and fits its Koopman settings (one line naming the store and what is wrong)."""
    key = f"config key conditions.{name}"
    for seed in cond["seeds"]:
        paths = [Path(p) for p in external_paths(cond, seed)]
        for path in paths:
            if not path.exists():
                raise ConfigError(f"{key}.trajectories: seed {seed}: {path} does not exist")
        try:
            stores = open_pooled(paths, allow_diverged=True)
        except StoreError as exc:
            raise ConfigError(f"{key}.trajectories: seed {seed}: {exc}") from None
        ds = stores[0]
        shapes = {n: tuple(ds[n].shape[2:]) for n in tensor_variables(ds)}
        steps = [int(s) for s in ds["step"].values]
        inits = sum(d.sizes["init"] for d in stores)
        where = f"seed {seed}: {paths[0]}"

        def label(k: str, where: str = where) -> str:
            return f"{key}.koopman.{k} ({where})"

        check_koopman(cond["koopman"], shapes, steps, inits, label=label)
        if cond["koopman"].get("windows"):
            check_windows(cond["koopman"], shapes, steps, inits, label=label)


def write_spectrum(
    trajectory: str | Path | list[str | Path],
    out: str | Path,
    opts: KoopmanOptions,
    skip_diverged: bool = False,
    max_memory: int | None = None,
    label: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Open, check the options against the store(s), decompose, and write the spectrum store.

    Several trajectory stores are pooled as the inits of one DMD. A diverged
    trajectory is refused, or with `skip_diverged` (as the workflow asks)
    answered by an `excluded` spectrum for compare to report. With `modes`,
    the store also gets the `modes` array and is sealed after it. Everything
    is checked before any data is read: the output path, the options, the
    dtypes and the memory the decomposition would need (at most `max_memory`
    bytes, default what the machine has). `label` (condition, seed) names
    the spectrum instead of the first store's attributes.
    """
    paths = [
        Path(p) for p in (trajectory if isinstance(trajectory, list | tuple) else [trajectory])
    ]
    where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} pooled)"
    claim_output(out, "spectrum", inputs=paths)
    stores = open_pooled(paths, skip_diverged)
    ds = stores[0]
    inits = sum(d.sizes["init"] for d in stores)
    available = tensor_variables(ds)
    shapes = {n: tuple(ds[n].shape[2:]) for n in available}
    names = opts.observables or available
    check_koopman(
        asdict(opts),
        shapes,
        [int(s) for s in ds["step"].values],
        inits,
        label=lambda key: f"option --{key} (store {where})",
    )
    if opts.modes and opts.pca is not None:
        raise ConfigError(
            f"option --modes (store {where}): modes are of the observables' values, "
            "not of PCA scores; expected --modes without --pca"
        )
    for d, path in zip(stores, paths, strict=True):
        check_dtypes(d, list(names), path)
    obs = Observable(stores, list(names), opts.window, readahead=opts.readahead)
    check_memory(obs, opts, max_memory or machine_memory(), where)
    backend(opts.device)  # a missing GPU is an error before any data is read
    settings = {
        "observables": list(names),
        "delays": opts.delays,
        "rank_requested": str(opts.rank),
        "window": list(opts.window) if opts.window else None,
        "pca": opts.pca,
        "variant": opts.variant,
        "device": opts.device,
        "keep": opts.keep,
    }
    if opts.spread_resamples:  # opt-in: stores written without it keep their attributes
        settings |= {"spread_resamples": opts.spread_resamples, "max_spread": opts.max_spread}
    if opts.max_residual is not None:  # opt-in, likewise
        settings |= {"max_residual": opts.max_residual}
    source = {k: ds.attrs[k] for k in ("experiment", "condition", "seed") if k in ds.attrs}
    source |= label or {}
    stored = str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
    attrs = {**source, **settings, "trajectory": stored}
    diverged = next((d for d in stores if d.attrs.get("status") == "diverged"), None)
    if diverged is not None:
        spectrum = excluded_dataset(diverged, {**attrs, "n_inits": inits})
        log.warning("%s: %s; wrote an excluded spectrum", where, spectrum.attrs["excluded"])
        write_dataset(spectrum, out, role="spectrum", status="excluded")
        return spectrum
    try:
        result, facts = decompose(obs, opts)
    except DMDError as exc:
        raise StoreError(f"trajectory store {where}: {exc}") from None
    spectrum = spectrum_dataset(result, {**attrs, **facts})
    if not opts.modes:
        write_dataset(spectrum, out, role="spectrum")
        return spectrum
    write_dataset(spectrum, out, role="spectrum", status="incomplete")  # sealed after the modes
    group = zarr.open_group(Path(out), mode="r+", zarr_format=3)
    write_modes(group, obs, result, opts.delays)
    seal(group, "complete", mode_values={n: obs.sizes[n] for n in obs.names})
    log.info("wrote modes (%d x %d) into %s", result.eigenvalues.size, obs.dim, out)
    return spectrum
