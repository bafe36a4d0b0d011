"""Stage 2: Koopman eigenvalues of one trajectory store by exact DMD.

Snapshot pairs of all inits are pooled (no pair crosses two inits) and one
DMD is fitted. One pass over the store accumulates, in float64, the plain
snapshot Gram (when the lifted dimension D exceeds the number of pairs M, or
when PCA is asked for) or the lifted covariance (otherwise). Time delays are
applied to the accumulated matrix or per block, never to the whole data.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from conjugacy.config import check_koopman
from conjugacy.dmd import (
    DMDResult,
    dmd_dense,
    dmd_from_covariance,
    dmd_from_gram,
    needs_qr,
    tsqr_update,
)
from conjugacy.observables import BUDGET, Observable, lift, lifted_gram
from conjugacy.store import open_trajectory, tensor_variables, write_dataset

log = logging.getLogger(__name__)


@dataclass
class KoopmanOptions:
    observables: list[str] | None = None
    delays: int = 0
    rank: int | str = "full"
    window: tuple[int, int] | None = None
    pca: int | None = None


def accumulate_gram(obs: Observable) -> np.ndarray:
    """X^T X over every snapshot (init-major), one block of parameters at a time."""
    n = obs.inits * obs.n_steps
    gram = np.zeros((n, n), dtype=np.float64)
    for block in obs.param_blocks():
        b = block.reshape(n, -1)
        gram += b @ b.T
    return gram


def pairs_of(lifted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X, Y) rows of snapshot pairs of lifted (inits, L, D) data: pairs never cross inits."""
    d = lifted.shape[2]
    return lifted[:, :-1].reshape(-1, d), lifted[:, 1:].reshape(-1, d)


def gram_route(obs: Observable, delays: int, rank: int | str, dim: int) -> DMDResult:
    """D > M: the lifted Gram is a sum of shifted blocks of the plain snapshot Gram."""
    n = obs.inits
    h = lifted_gram(accumulate_gram(obs), n, obs.n_steps, delays)
    m = obs.n_steps - delays - 1  # pair columns per init
    gxx = h[:, :m, :, :m].reshape(n * m, n * m)
    gxy = h[:, :m, :, 1:].reshape(n * m, n * m)
    return dmd_from_gram(gxx, gxy, gxx[:, ::m], rank, dim)


def covariance_route(obs: Observable, delays: int, rank: int | str, n_pairs: int) -> DMDResult:
    """D <= M: X X^T and Y X^T of lifted pairs, one block of steps at a time."""
    cxx = cyx = x0 = None
    for start, block in obs.step_blocks(overlap=delays + 1):
        lifted = lift(block, delays)
        x, y = pairs_of(lifted)
        cxx = x.T @ x if cxx is None else cxx + x.T @ x
        cyx = y.T @ x if cyx is None else cyx + y.T @ x
        if start == 0:
            x0 = lifted[:, 0].T.copy()
    return dmd_from_covariance(cxx, cyx, x0, rank, n_pairs)


def qr_tall_route(obs: Observable, delays: int, rank: int | str, size: int) -> DMDResult:
    """D > M, ill-conditioned: streaming QR of the lifted snapshots Z (D x inits*m).

    Z = Q R, so X = Q R[:, x] and Y = Q R[:, y]: DMD of the small coefficient
    matrices has the same eigenvalues, with R accurate to eps * s_max.
    """
    n, m = obs.inits, obs.n_steps - delays
    r = None
    for block in obs.param_blocks(budget=BUDGET // (delays + 1)):
        rows = np.concatenate([block[:, d : d + m] for d in range(delays + 1)], axis=2)
        r = tsqr_update(r, rows.reshape(n * m, -1).T)
    cols = np.arange(n * m).reshape(n, m)
    x_cols, y_cols = cols[:, :-1].ravel(), cols[:, 1:].ravel()
    return dmd_dense(r[:, x_cols], r[:, y_cols], r[:, cols[:, 0]], rank, size)


def qr_wide_route(obs: Observable, delays: int, rank: int | str, size: int) -> DMDResult:
    """D <= M, ill-conditioned: streaming QR of the pair rows [X^T | Y^T] (M x 2D).

    [X^T | Y^T] = Q R gives X = R[:, :D]^T Q^T and Y = R[:, D:]^T Q^T: DMD of
    the D x 2D coefficient matrices has the same eigenvalues and modes.
    """
    r = x0 = None
    for start, block in obs.step_blocks(overlap=delays + 1):
        lifted = lift(block, delays)
        r = tsqr_update(r, np.hstack(pairs_of(lifted)))
        if start == 0:
            x0 = lifted[:, 0].T.copy()
    d = r.shape[1] // 2
    return dmd_dense(r[:, :d].T, r[:, d:].T, x0, rank, size)


def pca_scores(gram: np.ndarray, k: int) -> np.ndarray:
    """Scores on the first k principal components, from the snapshot Gram.

    Equal (up to the sign of each component) to scikit-learn's
    PCA(k).fit_transform of the pooled snapshots: centred by the snapshot
    mean, with no further centring afterwards.
    """
    centred = gram - gram.mean(axis=0)[None, :] - gram.mean(axis=1)[:, None] + gram.mean()
    lam, vec = np.linalg.eigh((centred + centred.T) / 2)
    lam, vec = np.clip(lam[::-1][:k], 0.0, None), vec[:, ::-1][:, :k]
    return vec * np.sqrt(lam)[None, :]


def decompose(obs: Observable, opts: KoopmanOptions) -> tuple[DMDResult, dict[str, Any]]:
    """Fit one pooled exact DMD to an observable; return it with facts about the fit.

    The route is chosen by size (Gram when D > M, covariance otherwise), and
    switches to the matching QR route when the squared matrix cannot resolve
    the singular values the rank asks for.
    """
    n, t, delays = obs.inits, obs.n_steps, opts.delays
    values = opts.pca if opts.pca is not None else obs.dim
    lifted_dim = values * (delays + 1)
    n_pairs = n * (t - delays - 1)
    size = max(lifted_dim, n_pairs)
    if opts.pca is not None:
        route = "pca"
        scores = pca_scores(accumulate_gram(obs), opts.pca).reshape(n, t, opts.pca)
        lifted = lift(scores, delays)
        x, y = pairs_of(lifted)
        result = dmd_dense(x.T, y.T, lifted[:, 0].T, opts.rank, size)
    elif lifted_dim > n_pairs:
        route = "gram"
        result = gram_route(obs, delays, opts.rank, lifted_dim)
        if needs_qr(result.singular_values, opts.rank):
            route = "qr-tall"
            result = qr_tall_route(obs, delays, opts.rank, size)
    else:
        route = "covariance"
        result = covariance_route(obs, delays, opts.rank, n_pairs)
        if needs_qr(result.singular_values, opts.rank):
            route = "qr-wide"
            result = qr_wide_route(obs, delays, opts.rank, size)
    if route.startswith("qr"):
        log.info("the Gram is too ill-conditioned for rank %s: used the QR route", opts.rank)
    facts = {
        "route": route,
        "lifted_dim": lifted_dim,
        "n_pairs": n_pairs,
        "n_inits": n,
        "n_snapshots": t,
    }
    log.info(
        "DMD %s route: %d inits x %d snapshots, lifted dim %d, %d pairs, rank %d",
        route,
        n,
        t,
        lifted_dim,
        n_pairs,
        result.rank,
    )
    return result, facts


def spectrum_dataset(result: DMDResult, attrs: dict[str, Any]) -> xr.Dataset:
    """The spectrum store's dataset (the contract in the README)."""
    return xr.Dataset(
        {
            "eigenvalues": ("mode", result.eigenvalues),
            "amplitudes": (("mode", "init"), result.amplitudes),
            "singular_values": ("component", result.singular_values),
        },
        attrs={**attrs, "rank": result.rank},
    )


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


def run(
    trajectory: str | Path, out: str | Path, opts: KoopmanOptions, skip_diverged: bool = False
) -> xr.Dataset:
    """Open, check the options against the store, decompose, and write the spectrum store.

    A diverged trajectory is refused, or with `skip_diverged` (as the
    workflow asks) answered by an `excluded` spectrum for compare to report.
    """
    ds = open_trajectory(trajectory, allow_diverged=skip_diverged)
    available = tensor_variables(ds)
    shapes = {n: tuple(ds[n].shape[2:]) for n in available}
    names = opts.observables or available
    check_koopman(
        asdict(opts),
        shapes,
        [int(s) for s in ds["step"].values],
        ds.sizes["init"],
        label=lambda key: f"option --{key} (store {trajectory})",
    )
    settings = {
        "observables": list(names),
        "delays": opts.delays,
        "rank_requested": str(opts.rank),
        "window": list(opts.window) if opts.window else None,
        "pca": opts.pca,
    }
    source = {k: ds.attrs[k] for k in ("experiment", "condition", "seed") if k in ds.attrs}
    attrs = {**source, **settings, "trajectory": str(trajectory)}
    if ds.attrs.get("status") == "diverged":
        spectrum = excluded_dataset(ds, attrs)
        log.warning("%s: %s; wrote an excluded spectrum", trajectory, spectrum.attrs["excluded"])
        write_dataset(spectrum, out, status="excluded")
        return spectrum
    obs = Observable(ds, list(names), opts.window)
    result, facts = decompose(obs, opts)
    spectrum = spectrum_dataset(result, {**attrs, **facts})
    write_dataset(spectrum, out)
    return spectrum
