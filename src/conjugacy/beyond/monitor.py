"""Spectral convergence monitor: sliding-window DMD over a recorded trajectory.

Manojlović et al. (2020): Koopman eigenvalues of the parameter dynamics
cluster around 1 as training converges, and a spectral radius clearly above
1 flags a diverging run or a bad initialisation early. Each window of
snapshots gets one pooled exact DMD (the koopman stage's engine); per window
we keep the distance of the leading eigenvalues from 1, the spectral radius
and the number of eigenvalues within `radius` of 1. A run is flagged
converged once the leading eigenvalues lie within `radius` of 1 for
`consecutive` windows in a row, and that step is set against the step at
which the validation loss stops improving (early stopping with patience).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from conjugacy.config import ConfigError, check_koopman
from conjugacy.config.shapes import tensor_shapes
from conjugacy.config.validation import defaults
from conjugacy.koopman.observables import Observable
from conjugacy.koopman.spectrum import KoopmanOptions, decompose
from conjugacy.stores.contract import (
    StoreError,
    claim_output,
    open_store,
    open_trajectory,
    read,
    tensor_variables,
    write_dataset,
)

log = logging.getLogger(__name__)


DEFAULTS = defaults("monitor")  # the schema's: the one place of every default


@dataclass
class MonitorOptions:
    """The config's `monitor` settings (defaults and meanings in the schema)."""

    observables: list[str] | None = DEFAULTS["observables"]
    window: int = DEFAULTS["window"]  # snapshots per window
    stride: int = DEFAULTS["stride"]  # snapshots between window starts
    delays: int = DEFAULTS["delays"]
    rank: int | str = DEFAULTS["rank"]
    leading: int = DEFAULTS["leading"]  # eigenvalues of largest modulus that must cluster at 1
    radius: float = DEFAULTS["radius"]
    consecutive: int = DEFAULTS["consecutive"]
    unstable: float = DEFAULTS["unstable"]  # spectral radius above this flags the window
    patience: int = DEFAULTS["patience"]  # steps without improvement that stop the loss
    min_delta: float = DEFAULTS["min_delta"]  # relative improvement that counts

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> MonitorOptions:
        """Options from resolved `monitor` settings (config.validation.settings)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls)})


def check_options(opts: MonitorOptions, label=lambda k: f"option --{k}") -> None:
    """Values the metrics need, checked before any data is read."""
    for key in ("window", "stride", "leading", "consecutive"):
        if getattr(opts, key) < 1:
            raise ConfigError(f"{label(key)}: expected an integer >= 1, got {getattr(opts, key)}")
    if opts.window < opts.delays + 2:
        raise ConfigError(
            f"{label('window')}: {opts.window} snapshots; {opts.delays} delays need at least "
            f"{opts.delays + 2}"
        )
    if not opts.radius > 0:
        raise ConfigError(f"{label('radius')}: expected a positive number, got {opts.radius}")
    if not opts.unstable > 1:
        raise ConfigError(f"{label('unstable')}: expected a number above 1, got {opts.unstable}")
    if opts.patience < 1 or opts.min_delta < 0:
        raise ConfigError(f"{label('patience')}: expected patience >= 1 and min_delta >= 0")


def window_starts(n_snapshots: int, window: int, stride: int) -> list[int]:
    """Start indices of every whole window of `window` snapshots, `stride` apart."""
    return list(range(0, n_snapshots - window + 1, stride))


def window_metrics(eigenvalues: np.ndarray, leading: int, radius: float) -> dict[str, float]:
    """Distance of the leading eigenvalues from 1, spectral radius, eigenvalues near 1."""
    ev = eigenvalues[np.argsort(-np.abs(eigenvalues), kind="stable")]
    dist = np.abs(ev - 1.0)
    return {
        "leading_distance": float(dist[:leading].max()),
        "spectral_radius": float(np.abs(ev).max()),
        "near_one": int(np.count_nonzero(dist <= radius)),
    }


def first_run(flags: np.ndarray, length: int) -> int:
    """Index at which `flags` has first been true `length` times in a row, or -1."""
    count = 0
    for i, f in enumerate(flags):
        count = count + 1 if f else 0
        if count >= length:
            return i
    return -1


def plateau_step(steps: np.ndarray, loss: np.ndarray, patience: int, min_delta: float) -> int:
    """Early stopping: the step of the last improvement once `patience` steps bring none.

    An improvement lowers the best loss so far by more than min_delta times
    its magnitude. Returns -1 when the loss still improves at the end.
    """
    best, best_step = np.inf, int(steps[0])
    for s, value in zip(steps, loss, strict=True):
        if value < best - min_delta * abs(best) or not np.isfinite(best):
            best, best_step = value, int(s)
        elif s - best_step >= patience:
            return best_step
    return -1


def evaluable(ds: xr.Dataset) -> dict[str, Any] | None:
    """The training config of a store whose nets can be rebuilt (every parameter recorded)."""
    cfg = ds.attrs.get("config")
    if not isinstance(cfg, dict) or cfg.get("system") != "fcn":
        return None
    if not set(tensor_shapes(cfg)) <= set(tensor_variables(ds)):
        return None
    return cfg


def loss_curve(ds: xr.Dataset, block: int = 64) -> tuple[np.ndarray, np.ndarray, str]:
    """(loss (init, step), accuracy (init, step), what): rebuilt nets on held-out data.

    When the nets cannot be rebuilt (not an FCN, or not every parameter
    recorded), the recorded mini-batch training loss, with NaN accuracy.
    """
    cfg = evaluable(ds)
    n, t = ds.sizes["init"], ds.sizes["step"]
    if cfg is None:
        loss = read(ds, "loss", (slice(None), slice(None)))
        return loss, np.full((n, t), np.nan), "recorded training loss (mini-batch)"
    from conjugacy.systems.fcn import evaluate, evaluation_data

    x, y, what = evaluation_data(cfg)
    loss, acc = np.empty((n, t)), np.empty((n, t))
    for a in range(0, t, block):
        b = min(a + block, t)
        params = {
            k: read(ds, k, (slice(None), slice(a, b))).astype(np.float64)
            for k in tensor_shapes(cfg)
        }
        loss[:, a:b], acc[:, a:b] = evaluate(params, x, y)
    return loss, acc, f"{what} loss"


def monitor(ds: xr.Dataset, opts: MonitorOptions) -> xr.Dataset:
    """Sliding-window DMD metrics and the flags of one trajectory (the monitor store)."""
    names = opts.observables or tensor_variables(ds)
    steps = ds["step"].values.astype(np.int64)
    starts = window_starts(len(steps), opts.window, opts.stride)
    if not starts:
        raise ConfigError(
            f"option --window: {opts.window} snapshots, but the trajectory has {len(steps)}"
        )
    rank = opts.rank
    spectra, rows = [], []
    for a in starts:
        b = a + opts.window
        obs = Observable(ds, list(names), (int(steps[a]), int(steps[b - 1]) + 1))
        result, _ = decompose(obs, KoopmanOptions(delays=opts.delays, rank=rank))
        spectra.append(result.eigenvalues)
        rows.append(window_metrics(result.eigenvalues, opts.leading, opts.radius))
    metrics = pd.DataFrame(rows)
    clustered = metrics.leading_distance.to_numpy() <= opts.radius
    unstable = metrics.spectral_radius.to_numpy() > opts.unstable
    ends = np.array([steps[a + opts.window - 1] for a in starts])
    hit = first_run(clustered, opts.consecutive)
    loss, acc, what = loss_curve(ds)
    mean_loss = loss.mean(axis=0)
    plateau = plateau_step(steps, mean_loss, opts.patience, opts.min_delta)
    eig = np.full((len(starts), max(len(e) for e in spectra)), np.nan + 0j)
    for i, e in enumerate(spectra):
        eig[i, : len(e)] = e
    attrs = {
        **{k: ds.attrs[k] for k in ("experiment", "condition", "seed") if k in ds.attrs},
        **{k: v for k, v in asdict(opts).items() if k not in ("observables", "rank")},
        "rank": str(rank),
        "observables": list(names),
        "loss_kind": what,
        "converged_step": int(ends[hit]) if hit >= 0 else -1,
        "plateau_step": plateau,
        "first_unstable_step": int(ends[np.argmax(unstable)]) if unstable.any() else -1,
        "trajectory": str(ds.encoding.get("source", "")),
    }
    return xr.Dataset(
        {
            "window_start": ("window", np.array([steps[a] for a in starts])),
            "window_end": ("window", ends),
            "leading_distance": ("window", metrics.leading_distance.to_numpy()),
            "spectral_radius": ("window", metrics.spectral_radius.to_numpy()),
            "near_one": ("window", metrics.near_one.to_numpy().astype(np.int64)),
            "clustered": ("window", clustered),
            "unstable": ("window", unstable),
            "eigenvalues": (("window", "mode"), eig),
            "loss": (("init", "step"), loss),
            "accuracy": (("init", "step"), acc),
        },
        coords={"step": steps, "init": np.arange(ds.sizes["init"])},
        attrs=attrs,
    )


def write_monitor(trajectory: str | Path, out: str | Path, opts: MonitorOptions) -> xr.Dataset:
    """Check the options against the store, compute the monitor, write it as a Zarr store."""
    check_options(opts)
    claim_output(out, "monitor", inputs=[trajectory])
    ds = open_trajectory(trajectory)
    available = tensor_variables(ds)
    check_koopman(
        {"observables": opts.observables, "delays": opts.delays, "rank": opts.rank},
        {n: tuple(ds[n].shape[2:]) for n in available},
        list(range(opts.window)),
        ds.sizes["init"],
        label=lambda key: f"option --{key} (store {trajectory})",
    )
    result = monitor(ds, opts)
    write_dataset(result, out, role="monitor")
    log.info(
        "%s: %d windows, converged at step %s, validation plateau at step %s, first unstable %s",
        trajectory,
        result.sizes["window"],
        result.attrs["converged_step"],
        result.attrs["plateau_step"],
        result.attrs["first_unstable_step"],
    )
    return result


SUMMARY_COLUMNS = [
    "condition",
    "seed",
    "windows",
    "converged_step",
    "plateau_step",
    "difference",
    "first_unstable_step",
    "unstable_windows",
    "final_leading_distance",
    "final_spectral_radius",
    "loss_kind",
]


def summary(paths: list[str | Path]) -> pd.DataFrame:
    """One row per monitored run: flagged step against the validation plateau."""
    rows = []
    for p in map(Path, paths):
        ds = open_store(p, "monitor")
        if "leading_distance" not in ds:
            raise StoreError(f"monitor store {p} has no 'leading_distance': not a monitor store")
        a = ds.attrs
        conv, plat = a["converged_step"], a["plateau_step"]
        rows.append(
            {
                "condition": a.get("condition", p.parent.name),
                "seed": a.get("seed", -1),
                "windows": ds.sizes["window"],
                "converged_step": conv,
                "plateau_step": plat,
                "difference": conv - plat if conv >= 0 and plat >= 0 else None,
                "first_unstable_step": a["first_unstable_step"],
                "unstable_windows": int(ds.unstable.values.sum()),
                "final_leading_distance": float(ds.leading_distance.values[-1]),
                "final_spectral_radius": float(ds.spectral_radius.values[-1]),
                "loss_kind": a["loss_kind"],
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def plot(paths: list[str | Path], out: str | Path) -> None:
    """Per condition: leading distance and spectral radius, eigenvalues near 1, and the loss."""
    from conjugacy.report.style import colours, panels, save

    stores = [open_store(p, "monitor") for p in paths]
    conditions = list(dict.fromkeys(str(s.attrs.get("condition", "")) for s in stores))
    colour = colours(conditions)
    fig, axes = panels(3)
    for s in stores:
        cond, seed = str(s.attrs.get("condition", "")), s.attrs.get("seed", 0)
        c, first = colour[cond], seed == min(t.attrs.get("seed", 0) for t in stores)
        end = s.window_end.values
        axes[0].plot(end, s.leading_distance, color=c, lw=1, label=cond if first else None)
        axes[0].plot(end, s.spectral_radius - 1, color=c, lw=1, ls=":")
        axes[1].plot(end, s.near_one, color=c, lw=1, label=cond if first else None)
        axes[2].plot(s.step, s.loss.mean("init"), color=c, lw=1, label=cond if first else None)
        for ax in axes:
            if s.attrs["converged_step"] >= 0:
                ax.axvline(s.attrs["converged_step"], color=c, lw=0.8, ls="--", alpha=0.6)
        if s.attrs["plateau_step"] >= 0:
            axes[2].axvline(s.attrs["plateau_step"], color=c, lw=0.8, ls="-.", alpha=0.6)
    a = stores[0].attrs
    axes[0].axhline(a["radius"], color="k", lw=0.8)
    axes[0].axhline(a["unstable"] - 1, color="r", lw=0.8, ls="--")
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].set_ylabel(f"max |λ - 1| of {a['leading']} leading (solid); ρ - 1 (dotted)")
    axes[1].set_ylabel(f"eigenvalues within {a['radius']} of 1")
    axes[2].set_ylabel(f"{a['loss_kind']} (mean over inits)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("optimizer step (window end)" if ax is not axes[2] else "optimizer step")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("Spectral convergence monitor: -- converged flag, -. validation plateau")
    fig.tight_layout()
    save(fig, out)


def report(paths: list[str | Path], table: str | Path, figure: str | Path) -> pd.DataFrame:
    """Write the summary table (CSV) and the figure of the monitored runs."""
    frame = summary(paths)
    Path(table).parent.mkdir(parents=True, exist_ok=True)
    Path(figure).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(table, index=False)
    plot(paths, figure)
    return frame
