"""Koopman magnitude pruning (Redman et al. 2022), set against plain magnitude pruning.

Exact DMD on an early window of one net's parameter history (every layer,
flattened) writes theta(t) ~ sum_k phi_k lambda_k^t b_k; the mode of the
eigenvalue nearest 1 is what does not decay, so Re(phi_k b_k) predicts the
converged parameters. Pruning globally by its magnitude is compared with
global magnitude pruning of the real weights at the end of the window and at
the end of training: overlap of the kept sets (Jaccard), and accuracy of the
trained net under each mask, before and after a short fine-tuning with the
mask fixed. Each init of a seed is its own trajectory and gets its own DMD.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from conjugacy.config import ConfigError
from conjugacy.config.shapes import tensor_shapes
from conjugacy.config.validation import defaults
from conjugacy.koopman.dmd import dmd_dense, fixed_point
from conjugacy.stores.contract import (
    StoreError,
    claim_output,
    open_store,
    open_trajectory,
    read,
    write_dataset,
)

log = logging.getLogger(__name__)

METHODS = ("koopman", "magnitude_window", "magnitude_final")
PAIRS = (
    ("koopman", "magnitude_window"),
    ("koopman", "magnitude_final"),
    ("magnitude_window", "magnitude_final"),
)
PHASES = ("before", "after")


DEFAULTS = defaults("prune")  # the schema's: the one place of every default


@dataclass
class PruneOptions:
    """How a net is pruned: the config's `prune` settings (defaults from the schema)."""

    window: tuple[int, int] = tuple(DEFAULTS["window"])  # [start, stop) steps of the DMD
    rank: int | str = DEFAULTS["rank"]
    sparsities: list[float] = field(default_factory=lambda: list(DEFAULTS["sparsities"]))
    finetune_steps: int = DEFAULTS["finetune_steps"]
    finetune_lr: float | None = DEFAULTS["finetune_lr"]  # None: the condition's learning rate

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> PruneOptions:
        """Options from resolved `prune` settings (config.validation.settings)."""
        return cls(
            window=tuple(settings["window"]),
            rank=settings["rank"],
            sparsities=list(settings["sparsities"]),
            finetune_steps=settings["finetune_steps"],
            finetune_lr=settings["finetune_lr"],
        )


def check_sparsities(sparsities: list[float], label: str = "option --sparsities") -> None:
    """A non-empty list of distinct fractions in (0, 1)."""
    if not sparsities:
        raise ConfigError(f"{label}: expected at least one sparsity")
    for s in sparsities:
        if not isinstance(s, int | float) or isinstance(s, bool) or not 0 < s < 1:
            raise ConfigError(f"{label}: {s!r} is not a fraction in (0, 1)")
    if len(set(sparsities)) != len(sparsities):
        raise ConfigError(f"{label}: {list(sparsities)} repeats a value")


def check_options(opts: PruneOptions, steps: list[int], label=lambda k: f"option --{k}") -> None:
    """Options against the recorded steps, before any data is read."""
    check_sparsities(opts.sparsities, label("sparsities"))
    start, stop = opts.window
    inside = [s for s in steps if start <= s < stop]
    if not start < stop or len(inside) < 3:
        raise ConfigError(
            f"{label('window')}: [{start}, {stop}) holds {len(inside)} recorded steps; "
            "expected [start, stop) with at least 3"
        )
    if stop > steps[-1]:
        raise ConfigError(
            f"{label('window')}: stop {stop} is past the last recorded step {steps[-1]}; the "
            "window must end before training does"
        )
    if opts.rank != "full" and (not isinstance(opts.rank, int) or opts.rank < 1):
        raise ConfigError(f"{label('rank')}: expected a positive integer or 'full'")
    if opts.finetune_steps < 0:
        raise ConfigError(f"{label('finetune_steps')}: expected an integer >= 0")
    if opts.finetune_lr is not None and not opts.finetune_lr > 0:
        raise ConfigError(f"{label('finetune_lr')}: expected a positive number")


def koopman_fixed_point(
    snapshots: np.ndarray, rank: int | str = "full"
) -> tuple[np.ndarray, complex]:
    """(predicted converged state, its eigenvalue) from (T, D) snapshots by exact DMD.

    dmd_dense's modes and the first snapshot's amplitudes; the fixed point is
    the mode of the eigenvalue nearest 1 (in the complex plane) times its
    amplitude (koopman.dmd.fixed_point).
    """
    z = np.asarray(snapshots, dtype=np.float64)
    fit = dmd_dense(z[:-1].T, z[1:].T, z[0][:, None], rank)
    return fixed_point(fit.mode_matrix(fit.y_basis), fit.eigenvalues, fit.amplitudes[:, 0])


def magnitude_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask of global magnitude pruning over the last axis: the round(s * n) smallest go.

    Ties are broken by position (stable sort), so the mask is deterministic.
    """
    scores = np.abs(np.asarray(scores))
    n = scores.shape[-1]
    order = np.argsort(scores, axis=-1, kind="stable")[..., : int(round(sparsity * n))]
    keep = np.ones(scores.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=-1)
    return keep


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a and b| / |a or b| of boolean masks over the last axis (1 when both are empty)."""
    inter = np.logical_and(a, b).sum(axis=-1)
    union = np.logical_or(a, b).sum(axis=-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def prunable(cfg: dict[str, Any]) -> list[str]:
    """Tensors pruned: the weights (biases are kept, as usual)."""
    return [n for n in tensor_shapes(cfg) if n.endswith(".weight")]


def finetune(
    cfg: dict[str, Any],
    seed: int,
    params: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    steps: int,
    lr: float | None,
) -> dict[str, np.ndarray]:
    """`steps` optimizer steps of every init from `params`, masked weights held at zero."""
    import torch

    from conjugacy.systems.determinism import deterministic_torch
    from conjugacy.systems.fcn import FCN

    deterministic_torch()
    # The learning rate goes in the condition: SGD steps of the FCN read it there.
    net = FCN({**cfg, "device": "cpu", "lr": cfg["lr"] if lr is None else lr}, seed)
    with torch.no_grad():
        for name, value in params.items():
            net.params[name].copy_(torch.from_numpy(value.astype(np.float32)))
    keep = {n: torch.from_numpy(m.astype(np.float32)) for n, m in masks.items()}
    for _ in range(steps):
        net.step()
        with torch.no_grad():
            for name, m in keep.items():
                net.params[name].mul_(m)
    return {n: t.detach().double().numpy() for n, t in net.params.items()}


def prune(ds: xr.Dataset, opts: PruneOptions) -> xr.Dataset:
    """Masks, overlaps and accuracies of one trajectory store (the prune store)."""
    cfg = ds.attrs.get("config")
    if not isinstance(cfg, dict) or cfg.get("system") != "fcn":
        raise StoreError(
            f"trajectory store {ds.encoding.get('source', '?')} is not of a fully connected net "
            "(system fcn): prune rebuilds the nets from their recorded weights"
        )
    names = list(tensor_shapes(cfg))
    missing = [n for n in names if n not in ds]
    if missing:
        raise StoreError(
            f"trajectory store {ds.encoding.get('source', '?')} lacks {missing}: prune needs "
            f"every parameter recorded (record: {names})"
        )
    weights = prunable(cfg)
    steps = ds["step"].values.astype(np.int64)
    t0, t1 = (int(np.searchsorted(steps, w, side="left")) for w in opts.window)
    n = ds.sizes["init"]
    shapes = {k: ds[k].shape[2:] for k in names}
    sizes = [int(np.prod(shapes[k])) for k in weights]

    def flat(index) -> np.ndarray:  # (init, [step,] D) of the prunable weights
        return np.concatenate(
            [
                read(ds, k, index).astype(np.float64).reshape(*read_shape(index), -1)
                for k in weights
            ],
            axis=-1,
        )

    def read_shape(index) -> tuple[int, ...]:
        return (n,) if isinstance(index[1], int) else (n, index[1].stop - index[1].start)

    window = flat((slice(None), slice(t0, t1)))  # (init, W, D)
    final = {k: read(ds, k, (slice(None), len(steps) - 1)).astype(np.float64) for k in names}
    final_flat = np.concatenate([final[k].reshape(n, -1) for k in weights], axis=-1)
    predicted = np.empty_like(final_flat)
    eigen = np.empty(n, dtype=np.complex128)
    for i in range(n):
        predicted[i], eigen[i] = koopman_fixed_point(window[i], opts.rank)
    scores = {
        "koopman": predicted,
        "magnitude_window": window[:, -1],
        "magnitude_final": final_flat,
    }
    from conjugacy.systems.fcn import evaluate, evaluation_data

    x, y, what = evaluation_data(cfg)
    lr = opts.finetune_lr
    k_s, k_m, k_i = len(opts.sparsities), len(METHODS), n
    acc = np.empty((k_m, k_s, len(PHASES), k_i))
    loss = np.empty_like(acc)
    jac = np.empty((len(PAIRS), k_s, k_i))
    masks = np.empty((k_m, k_s, k_i, final_flat.shape[1]), dtype=bool)
    for j, sparsity in enumerate(opts.sparsities):
        for m, method in enumerate(METHODS):
            masks[m, j] = magnitude_mask(scores[method], sparsity)
        for p, (a, b) in enumerate(PAIRS):
            jac[p, j] = jaccard(masks[METHODS.index(a), j], masks[METHODS.index(b), j])
        for m, method in enumerate(METHODS):
            split = np.split(masks[m, j], np.cumsum(sizes)[:-1], axis=-1)
            keep = {k: s.reshape(n, *shapes[k]) for k, s in zip(weights, split, strict=True)}
            pruned = {k: final[k] * keep[k] if k in keep else final[k] for k in names}
            loss[m, j, 0], acc[m, j, 0] = evaluate(pruned, x, y)
            tuned = finetune(
                cfg, int(ds.attrs.get("seed", 0)), pruned, keep, opts.finetune_steps, lr
            )
            loss[m, j, 1], acc[m, j, 1] = evaluate(tuned, x, y)
            log.info(
                "sparsity %.3f %s: accuracy %.3f -> %.3f after fine-tuning",
                sparsity,
                method,
                acc[m, j, 0].mean(),
                acc[m, j, 1].mean(),
            )
    unpruned = {
        "final": evaluate(final, x, y),
        "window_end": evaluate(
            {k: read(ds, k, (slice(None), t1 - 1)).astype(np.float64) for k in names}, x, y
        ),
    }
    rel_error = np.linalg.norm(predicted - final_flat, axis=1) / np.linalg.norm(final_flat, axis=1)
    window_error = np.linalg.norm(window[:, -1] - final_flat, axis=1) / np.linalg.norm(
        final_flat, axis=1
    )
    attrs = {
        **{k: ds.attrs[k] for k in ("experiment", "condition", "seed") if k in ds.attrs},
        "window": [int(steps[t0]), int(steps[t1 - 1]) + 1],
        "final_step": int(steps[-1]),
        "rank": str(opts.rank),
        "finetune_steps": opts.finetune_steps,
        "finetune_lr": lr if lr is not None else cfg["lr"],
        "evaluated_on": what,
        "pruned_tensors": weights,
        "accuracy_final": float(unpruned["final"][1].mean()),
        "accuracy_window_end": float(unpruned["window_end"][1].mean()),
        "trajectory": str(ds.encoding.get("source", "")),
    }
    coords = {
        "criterion": np.array(METHODS, dtype=object),
        "sparsity": np.asarray(opts.sparsities, dtype=np.float64),
        "phase": np.array(PHASES, dtype=object),
        "init": np.arange(n),
        "pair": np.array([f"{a}:{b}" for a, b in PAIRS], dtype=object),
    }
    return xr.Dataset(
        {
            "accuracy": (("criterion", "sparsity", "phase", "init"), acc),
            "loss": (("criterion", "sparsity", "phase", "init"), loss),
            "jaccard": (("pair", "sparsity", "init"), jac),
            "eigenvalue": ("init", eigen),
            "prediction_error": ("init", rel_error),
            "window_error": ("init", window_error),
        },
        coords=coords,
        attrs=attrs,
    )


def write_pruning(trajectory: str | Path, out: str | Path, opts: PruneOptions) -> xr.Dataset:
    """Check the options against the store, prune, and write the prune store."""
    check_sparsities(opts.sparsities)
    claim_output(out, "prune", inputs=[trajectory])
    ds = open_trajectory(trajectory)
    check_options(
        opts,
        [int(s) for s in ds["step"].values],
        label=lambda k: f"option --{k.replace('_', '-')} (store {trajectory})",
    )
    result = prune(ds, opts)
    write_dataset(result, out, role="prune")
    return result


def _pair_jaccard(ds: xr.Dataset, a: str, b: str, sparsity: float) -> float:
    """Mean Jaccard of the masks of methods a and b (stored for one order of each pair)."""
    if a == b:
        return 1.0
    pair = f"{a}:{b}" if f"{a}:{b}" in ds.pair.values else f"{b}:{a}"
    return float(ds.jaccard.sel(pair=pair, sparsity=sparsity).mean("init"))


def table(paths: list[str | Path]) -> pd.DataFrame:
    """One row per (condition, seed, method, sparsity): accuracies and Jaccard, mean over inits."""
    rows = []
    for p in map(Path, paths):
        ds = open_store(p, "prune")
        if "jaccard" not in ds:
            raise StoreError(f"prune store {p} has no 'jaccard' variable: not a prune store")
        a = ds.attrs
        for method in ds.criterion.values:
            for s in ds.sparsity.values:
                acc = ds.accuracy.sel(criterion=method, sparsity=s).mean("init")
                row = {
                    "condition": a.get("condition", p.parent.name),
                    "seed": a.get("seed", -1),
                    "method": method,
                    "sparsity": float(s),
                    "accuracy_before": float(acc.sel(phase="before")),
                    "accuracy_after": float(acc.sel(phase="after")),
                    "accuracy_unpruned": a["accuracy_final"],
                }
                for other in ds.criterion.values:
                    row[f"jaccard_{other}"] = _pair_jaccard(ds, str(method), str(other), s)
                row["prediction_error"] = float(ds.prediction_error.mean())
                row["window_error"] = float(ds.window_error.mean())
                rows.append(row)
    return pd.DataFrame(rows)


def plot(paths: list[str | Path], out: str | Path) -> None:
    """Accuracy against sparsity per method (before: dashed, after fine-tuning: solid), Jaccard."""
    from conjugacy.report.style import colours, panels, save

    stores = [open_store(p, "prune") for p in paths]
    conditions = list(dict.fromkeys(str(s.attrs.get("condition", "")) for s in stores))
    colour = colours(list(METHODS) + [f"{a}:{b}" for a, b in PAIRS])
    fig, axes = panels(len(conditions) + 1)
    for col, cond in enumerate(conditions):
        mine = [s for s in stores if str(s.attrs.get("condition", "")) == cond]
        acc = xr.concat([s.accuracy for s in mine], "seed").mean(("seed", "init"))
        ax = axes[col]
        for method in METHODS:
            for phase, ls in (("before", "--"), ("after", "-")):
                line = acc.sel(criterion=method, phase=phase)
                ax.plot(
                    line.sparsity,
                    line,
                    ls,
                    marker="o",
                    ms=3,
                    color=colour[method],
                    label=f"{method} ({phase})",
                )
        ax.axhline(np.mean([s.attrs["accuracy_final"] for s in mine]), color="k", lw=0.8)
        ax.set_xlabel("sparsity (fraction of weights pruned)")
        ax.set_ylabel(f"accuracy ({mine[0].attrs['evaluated_on']})")
        ax.set_title(f"{cond}: {len(mine)} seeds x {mine[0].sizes['init']} inits", fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for cond, ls in zip(conditions, ("-", "--", ":", "-."), strict=False):
        mine = [s for s in stores if str(s.attrs.get("condition", "")) == cond]
        jac = xr.concat([s.jaccard for s in mine], "seed").mean(("seed", "init"))
        for pair in jac.pair.values:
            ax.plot(
                jac.sparsity,
                jac.sel(pair=pair),
                ls,
                marker="o",
                ms=3,
                color=colour[str(pair)],
                label=f"{cond} {pair}",
            )
    ax.set_xlabel("sparsity")
    ax.set_ylabel("Jaccard overlap of kept weights")
    ax.legend(fontsize=6)
    fig.tight_layout()
    save(fig, out)


def report(paths: list[str | Path], out_table: str | Path, figure: str | Path) -> pd.DataFrame:
    """Write the pruning table (CSV) and figure of every prune store."""
    frame = table(paths)
    for target in (out_table, figure):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out_table, index=False)
    plot(paths, figure)
    return frame
