"""Koopman training: predict future weights from a window of past ones, and check them.

Two predictors, both linear in the observables, fitted on `window` snapshots
and applied from the window's last snapshot w(t):

* node (Dogra & Redman 2020): one operator per neuron on its incoming
  weights, its bias and a constant 1, K = F' pinv(F); w(t + T) = K^T w(t).
* global: exact DMD (koopman.dmd.dmd_dense) of every parameter of a net
  (and a constant 1), extrapolated through its modes, w(t + T) =
  Re(Phi Lambda^T b); and the fixed point koopman.dmd.fixed_point, Re(phi_k
  b_k) of the eigenvalue nearest 1 (the limit the affine fit predicts for
  T -> infinity).

The constant makes an affine update (gradient descent on a quadratic: w <-
A w + c) exactly linear, so on such a problem both jumps are exact. The
`predict` stage fits them on a recorded trajectory for a schedule of
(window, jump) and compares the predicted weights with the optimizer's at
the same step: loss and accuracy (R^2 for regression) on the whole dataset,
distance, and the time of fit + jump against T optimizer steps.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from conjugacy.config import check_predict
from conjugacy.config.validation import defaults
from conjugacy.koopman.dmd import EPS, dmd_dense, fixed_point
from conjugacy.stores.contract import (
    StoreError,
    claim_output,
    open_trajectory,
    read,
    tensor_variables,
    write_dataset,
)

log = logging.getLogger(__name__)

# Times are CPU seconds of this process (time.process_time): with one BLAS/torch
# thread they equal wall time on an idle core, and they stay meaningful on a
# shared, overloaded machine, where wall time mostly measures the other jobs.
EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------- node Koopman


def layers(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Layer names (`fc1`) of a net's `<layer>.weight` matrices, in order."""
    return sorted(n.rsplit(".", 1)[0] for n, s in shapes.items() if n.endswith(".weight"))


def node_observables(params: dict[str, np.ndarray], layer: str) -> np.ndarray:
    """(..., neurons, fan_in [+ 1 bias] + 1): each neuron's incoming weights, bias and a 1."""
    w = np.asarray(params[f"{layer}.weight"], dtype=np.float64)
    parts = [w]
    if f"{layer}.bias" in params:
        parts.append(np.asarray(params[f"{layer}.bias"], dtype=np.float64)[..., None])
    parts.append(np.ones(w.shape[:-1] + (1,)))
    return np.concatenate(parts, axis=-1)


def split_node(obs: np.ndarray, layer: str, has_bias: bool) -> dict[str, np.ndarray]:
    """Inverse of node_observables (the constant dropped)."""
    out = {f"{layer}.weight": obs[..., : obs.shape[-1] - 1 - has_bias]}
    if has_bias:
        out[f"{layer}.bias"] = obs[..., -2]
    return out


def node_fit(snaps: np.ndarray, rtol: float = EPS) -> np.ndarray:
    """K = F' pinv(F) per node from snapshots (S, ..., d): (..., d, d).

    F holds snapshots 0..S-2 as columns, F' snapshots 1..S-1. Singular values
    of F below rtol * max(d, S - 1) * s_max are treated as zero (rounding of
    the recorded data), so with fewer than d + 1 snapshots K is the
    minimum-norm fit: exact on the span of the window, identity nowhere else.
    """
    f = np.moveaxis(snaps[:-1], 0, -1)
    fp = np.moveaxis(snaps[1:], 0, -1)
    u, s, vh = np.linalg.svd(f, full_matrices=False)
    keep = s > rtol * max(f.shape[-2:]) * s[..., :1]
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=keep)
    # (F' V) S^-1 U^T: multiplying F' V first keeps the rounding of an explicit pinv out
    return ((fp @ np.swapaxes(vh, -1, -2)) * inv[..., None, :]) @ np.swapaxes(u, -1, -2)


def node_jump(k: np.ndarray, w: np.ndarray, steps: int) -> np.ndarray:
    """K^T w for every node: (..., d, d) and (..., d) -> (..., d)."""
    return (np.linalg.matrix_power(k, steps) @ w[..., None])[..., 0]


def node_predict(
    window: dict[str, np.ndarray], jumps: list[int], rtol: float
) -> tuple[dict[int, dict[str, np.ndarray]], float, dict[int, float]]:
    """Node-Koopman predictions from window snapshots (S, inits, *shape) for each jump.

    Returns {jump: params (inits, *shape)}, the fit time and the time of each jump (s).
    """
    shapes = {n: v.shape[2:] for n, v in window.items()}
    t0 = time.process_time()
    fits = {}
    for layer in layers(shapes):
        snaps = node_observables(window, layer)
        fits[layer] = (node_fit(snaps, rtol), snaps[-1], f"{layer}.bias" in window)
    fit_s = time.process_time() - t0
    preds, jump_s = {}, {}
    for steps in jumps:
        t0 = time.process_time()
        out: dict[str, np.ndarray] = {}
        for layer, (k, last, has_bias) in fits.items():
            out.update(split_node(node_jump(k, last, steps), layer, has_bias))
        jump_s[steps] = time.process_time() - t0
        preds[steps] = out
    return preds, fit_s, jump_s


# ------------------------------------------------------------------ global DMD


@dataclass
class GlobalDMD:
    eigenvalues: np.ndarray  # (r,) complex
    modes: np.ndarray  # (P + 1, r) complex: DMDResult.mode_matrix's, last row the constant
    amplitudes: np.ndarray  # (r,) complex: the window's last snapshot in the modes


def global_fit(snaps: np.ndarray, rank: int | str = "full", rtol: float = EPS) -> GlobalDMD:
    """Exact DMD (dmd_dense) of one trajectory's flattened parameters (S, P) with a constant row.

    Singular values below rtol * max(D, M) * s_max count as zero (dmd_dense's
    tolerance is size * EPS). Amplitudes of the window's last snapshot,
    W^-1 U_r^T x_last: when X has full rank, Phi b = Y V S^-1 A~^-1 U^T x_last
    is x_last itself, with few snapshots (V square) or many (U square), so a
    jump of 0 steps is no jump.
    """
    z = np.hstack([snaps, np.ones((snaps.shape[0], 1))]).T  # (P + 1, S)
    x, y = z[:, :-1], z[:, 1:]
    fit = dmd_dense(x, y, z[:, -1:], rank, size=round(rtol / EPS * max(x.shape)))
    return GlobalDMD(fit.eigenvalues, fit.mode_matrix(fit.y_basis), fit.amplitudes[:, 0])


def global_jump(fit: GlobalDMD, steps: int) -> np.ndarray:
    """Re(Phi Lambda^T b) without the constant: the parameters `steps` after the window."""
    return (fit.modes @ (fit.eigenvalues**steps * fit.amplitudes)).real[:-1]


def flatten(params: dict[str, np.ndarray], lead: int) -> np.ndarray:
    """Concatenate tensors (lead axes, *shape) into (lead axes, P), in name order."""
    return np.concatenate(
        [
            np.asarray(params[n], np.float64).reshape(params[n].shape[:lead] + (-1,))
            for n in sorted(params)
        ],
        axis=-1,
    )


def unflatten(flat: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Inverse of flatten for (inits, P) arrays."""
    out, i = {}, 0
    for name in sorted(shapes):
        size = int(np.prod(shapes[name]))
        out[name] = flat[:, i : i + size].reshape(flat.shape[:1] + tuple(shapes[name]))
        i += size
    return out


def global_predict(
    window: dict[str, np.ndarray], jumps: list[int], rank: int | str, rtol: float
) -> tuple[dict[int, dict[str, np.ndarray]], dict[str, np.ndarray], float, dict[int, float]]:
    """Global-DMD predictions (one DMD per init) for each jump, and the fixed point.

    Returns {jump: params}, fixed-point params, the fit time, the time of each jump (s).
    """
    shapes = {n: v.shape[2:] for n, v in window.items()}
    t0 = time.process_time()
    flat = flatten(window, 2)  # (S, inits, P)
    fits = [global_fit(flat[:, i], rank, rtol) for i in range(flat.shape[1])]
    fit_s = time.process_time() - t0
    preds, jump_s = {}, {}
    for steps in jumps:
        t0 = time.process_time()
        preds[steps] = unflatten(np.stack([global_jump(f, steps) for f in fits]), shapes)
        jump_s[steps] = time.process_time() - t0
    fixed = unflatten(
        np.stack([fixed_point(f.modes, f.eigenvalues, f.amplitudes)[0][:-1] for f in fits]), shapes
    )
    return preds, fixed, fit_s, jump_s


# ------------------------------------------------------------------ evaluation


class Evaluator:
    """Loss and score of stacked parameters on a system's whole dataset (no update).

    The systems' one evaluation (float64): NLL and accuracy for the classifier
    nets (systems.fcn.evaluate), MSE and R^2 for the regression MLP
    (systems.mlp.evaluate).
    """

    def __init__(self, system: Any) -> None:
        from conjugacy.systems import fcn, mlp

        self.regression = isinstance(system, mlp.MLP)
        self.metrics = mlp.evaluate if self.regression else fcn.evaluate
        self.score_name = "r2" if self.regression else "accuracy"
        self.data = host(system.x), host(system.y)

    def __call__(
        self, params: dict[str, np.ndarray], batch: tuple[Any, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(loss, score) per init on the whole dataset, or on `batch` (x, y) if given."""
        x, y = (host(a) for a in batch) if batch is not None else self.data
        return self.metrics(params, x, y)


def host(tensor: Any) -> np.ndarray:
    """A (torch) tensor as a host numpy array."""
    return tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)


def optimizer_seconds(system: Any, steps: int) -> np.ndarray:
    """Cumulative CPU time (s) of 0..steps optimizer steps of the system (all inits)."""
    out = np.zeros(steps + 1)
    t0 = time.process_time()
    for t in range(steps):
        system.step()
        out[t + 1] = time.process_time() - t0
    return out


DEFAULTS = defaults("predict")  # the schema's: the one place of every default


@dataclass
class PredictOptions:
    """The config's `predict` schedule (defaults and meanings in the schema)."""

    start: int = DEFAULTS["start"]
    windows: tuple[int, ...] = tuple(DEFAULTS["windows"])
    jumps: tuple[int, ...] = tuple(DEFAULTS["jumps"])
    methods: tuple[str, ...] = tuple(DEFAULTS["methods"])
    rank: int | str = DEFAULTS["rank"]

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> PredictOptions:
        """Options from resolved `predict` settings (config.validation.settings)."""
        return cls(
            start=settings["start"],
            windows=tuple(settings["windows"]),
            jumps=tuple(settings["jumps"]),
            methods=tuple(settings["methods"]),
            rank=settings["rank"],
        )


def _check_store(ds: xr.Dataset, cond: dict[str, Any], path: Path) -> None:
    from conjugacy.config.shapes import tensor_shapes

    shapes = tensor_shapes(cond)
    have = {n: tuple(ds[n].shape[2:]) for n in tensor_variables(ds)}
    for name, shape in shapes.items():
        if have.get(name) != tuple(shape):
            raise StoreError(
                f"trajectory store {path}: the condition needs tensor {name!r} of shape "
                f"{tuple(shape)}, the store has {have.get(name)}; record every tensor"
            )
    steps = ds["step"].values
    if not np.array_equal(steps, np.arange(len(steps))):
        raise StoreError(f"trajectory store {path}: steps are not 0, 1, 2, ...; record_every 1")


def write_predictions(
    trajectory: str | Path,
    out: str | Path,
    cond: dict[str, Any],
    opts: PredictOptions,
    condition: str = "",
) -> xr.Dataset:
    """Fit and jump for every (method, window, jump) and compare with the recorded weights."""
    from conjugacy.training.train import make_system

    trajectory = Path(trajectory)
    claim_output(out, "predict", inputs=[trajectory])
    check_predict(
        {"start": opts.start, "windows": list(opts.windows), "jumps": list(opts.jumps)},
        cond,
        lambda k: (
            f"condition {condition or cond['system']}" if k == "conditions" else f"option --{k}"
        ),
    )
    ds = open_trajectory(trajectory)
    _check_store(ds, cond, trajectory)
    need = opts.start + max(opts.windows) - 1 + max(opts.jumps)
    if ds.sizes["step"] <= need:
        raise StoreError(
            f"trajectory store {trajectory} holds steps 0..{ds.sizes['step'] - 1}; the schedule "
            f"needs step {need}"
        )
    seed = int(ds.attrs.get("seed", 0))
    names = sorted(tensor_variables(ds))
    dtype = ds[names[0]].dtype
    rtol = EPS32 if dtype == np.float32 else EPS
    windows, jumps, methods = sorted(opts.windows), sorted(opts.jumps), list(opts.methods)
    inits = ds.sizes["init"]

    def snapshots(i0: int, i1: int) -> dict[str, np.ndarray]:
        """Steps [i0, i1) of every tensor as (steps, inits, *shape) float64."""
        return {
            n: np.moveaxis(read(ds, n, (slice(None), slice(i0, i1))), 1, 0).astype(np.float64)
            for n in names
        }

    system, _ = make_system(cond, seed)
    evaluate = Evaluator(system)
    log.info("timing %d optimizer steps of %s seed %d", max(jumps), condition, seed)
    opt_s = optimizer_seconds(system, max(jumps))

    shape = (len(methods), len(windows), len(jumps), inits)
    loss_pred, score_pred, rel_err = (np.full(shape, np.nan) for _ in range(3))
    fit_s = np.full(shape[:2], np.nan)
    jump_s = np.full(shape[:3], np.nan)
    loss_true, score_true = (np.full(shape[1:], np.nan) for _ in range(2))
    loss_last, score_last = (np.full(shape[1:2] + (inits,), np.nan) for _ in range(2))
    for wi, window in enumerate(windows):
        snaps = snapshots(opts.start, opts.start + window)
        last_step = opts.start + window - 1
        last = {n: v[-1] for n, v in snaps.items()}
        loss_last[wi], score_last[wi] = evaluate(last)
        truth = {}
        for ji, jump in enumerate(jumps):
            truth[jump] = {
                n: v[0] for n, v in snapshots(last_step + jump, last_step + jump + 1).items()
            }
            loss_true[wi, ji], score_true[wi, ji] = evaluate(truth[jump])
        fitted = None  # one global DMD serves both global and fixed_point
        for mi, method in enumerate(methods):
            if method == "node":
                preds, fit, per_jump = node_predict(snaps, jumps, rtol)
            else:
                fitted = fitted or global_predict(snaps, jumps, opts.rank, rtol)
                preds, fixed, fit, per_jump = fitted
                if method == "fixed_point":
                    preds = {j: fixed for j in jumps}
                    per_jump = {j: 0.0 for j in jumps}
            fit_s[mi, wi] = fit
            for ji, jump in enumerate(jumps):
                jump_s[mi, wi, ji] = per_jump[jump]
                pred = preds[jump]
                loss_pred[mi, wi, ji], score_pred[mi, wi, ji] = evaluate(pred)
                moved = flatten(truth[jump], 1) - flatten(last, 1)
                miss = flatten(pred, 1) - flatten(truth[jump], 1)
                rel_err[mi, wi, ji] = np.linalg.norm(miss, axis=1) / np.linalg.norm(moved, axis=1)
        log.info("window %d done", window)
    result = xr.Dataset(
        {
            "loss_pred": (("predictor", "window", "jump", "init"), loss_pred),
            "score_pred": (("predictor", "window", "jump", "init"), score_pred),
            "rel_error": (("predictor", "window", "jump", "init"), rel_err),
            "loss_true": (("window", "jump", "init"), loss_true),
            "score_true": (("window", "jump", "init"), score_true),
            "loss_last": (("window", "init"), loss_last),
            "score_last": (("window", "init"), score_last),
            "fit_s": (("predictor", "window"), fit_s),
            "jump_s": (("predictor", "window", "jump"), jump_s),
            "optimizer_s": (("jump",), opt_s[jumps]),
        },
        coords={"predictor": methods, "window": windows, "jump": jumps, "init": np.arange(inits)},
        attrs={
            "condition": condition or str(ds.attrs.get("condition", "")),
            "experiment": str(ds.attrs.get("experiment", "")),
            "seed": seed,
            "start": opts.start,
            "rank_requested": str(opts.rank),
            "score": evaluate.score_name,
            "trajectory": str(trajectory),
        },
    )
    with warnings.catch_warnings():  # string coordinates: zarr warns, xarray reads them
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
        write_dataset(result, out, role="predict")
    return result


def table(results: list[xr.Dataset]) -> Any:
    """One row per (condition, seed, method, window, jump): means over inits, CPU times."""
    import pandas as pd

    rows = []
    for r in results:
        mean = r.mean("init")
        for m in r.predictor.values:
            for w in r.window.values:
                for j in r.jump.values:
                    sel = {"predictor": m, "window": w, "jump": j}
                    loss_last = float(mean.loss_last.sel(window=w))
                    loss_true = float(mean.loss_true.sel(window=w, jump=j))
                    loss_pred = float(mean.loss_pred.sel(**sel))
                    koop = float(r.fit_s.sel(predictor=m, window=w) + r.jump_s.sel(**sel))
                    opt = float(r.optimizer_s.sel(jump=j))
                    rows.append(
                        {
                            "condition": r.attrs["condition"],
                            "seed": r.attrs["seed"],
                            "method": str(m),
                            "start": r.attrs["start"],
                            "window": int(w),
                            "jump": int(j),
                            "loss_last": loss_last,
                            "loss_true": loss_true,
                            "loss_pred": loss_pred,
                            # share of the optimizer's loss decrease over the jump that it gets
                            "gain": (loss_last - loss_pred) / (loss_last - loss_true),
                            "score": r.attrs["score"],
                            "score_true": float(mean.score_true.sel(window=w, jump=j)),
                            "score_pred": float(mean.score_pred.sel(**sel)),
                            "rel_error": float(np.median(r.rel_error.sel(**sel).values)),
                            "koopman_s": koop,
                            "optimizer_s": opt,
                            "speedup": opt / koop if koop > 0 else np.inf,
                        }
                    )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------- summary


def summarize(
    predictions: list[str | Path], accelerated: list[str | Path], outdir: str | Path
) -> list[Path]:
    """predict.csv, accelerate.csv and their figures from the stage's stores."""
    import pandas as pd

    from conjugacy.stores.contract import open_store

    outdir = Path(outdir)
    (outdir / "figures").mkdir(parents=True, exist_ok=True)
    preds = [open_store(p, "prediction").load() for p in predictions]
    table_ = table(preds)
    table_.to_csv(outdir / "predict.csv", index=False)
    curves = []
    for path in accelerated:
        ds = open_store(path, "accelerated training").load()
        for run_name in ds.run.values:
            c = ds.sel(run=run_name)
            keep = ~np.isnan(c.loss.values)
            curves.append(
                pd.DataFrame(
                    {
                        "condition": ds.attrs["condition"],
                        "seed": ds.attrs["seed"],
                        "run": str(run_name),
                        "effective_step": c.effective_step.values[keep].astype(int),
                        "wall_s": c.wall_s.values[keep],
                        "cpu_s": c.cpu_s.values[keep],
                        "loss": c.loss.values[keep],
                        "score_name": ds.attrs["score"],
                        "score": c.score.values[keep],
                    }
                )
            )
    acc = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    acc.to_csv(outdir / "accelerate.csv", index=False)
    paths = [outdir / "figures" / "predict.png", outdir / "figures" / "accelerate.png"]
    plot_predictions(table_, paths[0])
    plot_accelerated(acc, paths[1])
    return [outdir / "predict.csv", outdir / "accelerate.csv", *paths]


def plot_predictions(tab: Any, out: Path) -> None:
    """Per condition: share of the optimizer's loss decrease the jump gets, and the speed-up."""
    import matplotlib.pyplot as plt

    from conjugacy.report.style import apply_style, save

    conditions = list(dict.fromkeys(tab.condition)) or ["none"]
    apply_style()
    fig, axes = plt.subplots(
        2, len(conditions), figsize=(4.6 * len(conditions), 8.4), squeeze=False
    )
    styles = {"node": ("o", "-"), "global": ("s", "--"), "fixed_point": ("^", ":")}
    windows = sorted(set(tab.window)) if len(tab) else []
    cmap = plt.get_cmap("viridis")
    colour = {w: cmap(i / max(len(windows) - 1, 1)) for i, w in enumerate(windows)}
    for col, cond in enumerate(conditions):
        sub = tab[tab.condition == cond]
        mean = sub.groupby(["method", "window", "jump"], as_index=False).mean(numeric_only=True)
        for (method, window), g in mean.groupby(["method", "window"]):
            marker, ls = styles[method]
            kw = {"marker": marker, "ls": ls, "color": colour[window], "ms": 5}
            label = f"{method}, window {window}"
            axes[0, col].plot(g.jump, g.gain.clip(-1, 1.5), label=label, **kw)
            if method != "fixed_point":
                axes[1, col].plot(g.jump, g.speedup, label=label, **kw)
        ax = axes[0, col]
        ax.axhline(1, color="k", lw=0.8)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_ylim(-1.05, 1.55)
        ax.set_xlabel("jump T (optimizer steps)")
        ax.set_ylabel("gain: (L_last - L_pred) / (L_last - L_true)")
        ax.set_title(f"{cond}: prediction vs optimizer (clipped to [-1, 1.5])", fontsize=9)
        ax.legend(fontsize=6)
        ax = axes[1, col]
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("jump T (optimizer steps)")
        ax.set_ylabel("speed-up: optimizer CPU time / (fit + jump)")
    fig.tight_layout()
    save(fig, out)


def plot_accelerated(acc: Any, out: Path) -> None:
    """Per condition: loss against training wall time and against effective step."""
    import matplotlib.pyplot as plt

    from conjugacy.report.style import apply_style, colours, save

    conditions = list(dict.fromkeys(acc.condition)) if len(acc) else ["none"]
    apply_style()
    fig, axes = plt.subplots(
        2, len(conditions), figsize=(4.6 * len(conditions), 8.4), squeeze=False
    )
    optimizers = list(dict.fromkeys(r.split("+")[0] for r in acc.run)) if len(acc) else []
    colour = colours(optimizers)
    for col, cond in enumerate(conditions):
        sub = acc[acc.condition == cond] if len(acc) else acc
        for run_name, g in sub.groupby("run", sort=False) if len(sub) else []:
            opt = run_name.split("+")[0]
            ls = "--" if run_name.endswith("+koopman") else "-"
            axes[0, col].plot(g.cpu_s, g.loss, ls=ls, color=colour[opt], label=run_name)
            axes[1, col].plot(g.effective_step, g.loss, ls=ls, color=colour[opt], label=run_name)
        for row, xlabel in enumerate(
            ("training CPU time (s, one thread)", "effective optimizer step")
        ):
            ax = axes[row, col]
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("loss on the whole dataset (mean over inits)")
            if ax.lines:
                ax.legend(fontsize=8)
        axes[0, col].set_title(f"{cond}: plain vs Koopman-accelerated", fontsize=9)
    fig.tight_layout()
    save(fig, out)
