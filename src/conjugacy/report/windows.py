"""Figures of the windows stage: W between successive windows, and between all windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from conjugacy.report.style import colours, panels, save
from conjugacy.stores.contract import open_store

FIGURES = ("windows_successive.png", "windows_heatmap.png")


def plot_successive(ds: xr.Dataset, out: Path) -> None:
    """W between successive windows against the window index: each seed thin, the mean thick."""
    conds = [str(c) for c in ds["condition"].values]
    col = colours(conds)
    fig, axes = panels(1, size=5.0)
    ax = axes[0]
    starts = ds["window_start"].values
    x = ds["transition"].values + 1
    for c in conds:
        w = ds["successive"].sel(condition=c).values  # (transition, seed)
        ax.plot(x, w, color=col[c], alpha=0.3, lw=0.8)
        ax.plot(x, w.mean(axis=1), color=col[c], lw=2.2, marker="o", label=f"{c} (mean over seeds)")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{k}\n{starts[k]}" for k in x], fontsize=8)
    ax.set_xlabel("window k (first step)")
    ax.set_ylabel("W(window k-1, window k)")
    ax.set_title("W between successive windows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, out)


def plot_heatmap(ds: xr.Dataset, out: Path) -> None:
    """log10 W between every two windows (same seed, mean over seeds), one panel per condition."""
    conds = [str(c) for c in ds["condition"].values]
    fig, axes = panels(len(conds), size=4.6)
    bounds = zip(ds["window_start"].values, ds["window_stop"].values, strict=True)
    labels = [f"{a}-{b}" for a, b in bounds]
    for ax, c in zip(axes, conds, strict=True):
        w = ds["w"].sel(condition=c).values
        same_seed = np.einsum("aibi->abi", w).mean(axis=2)
        with np.errstate(divide="ignore"):
            img = ax.imshow(np.log10(np.where(same_seed > 0, same_seed, np.nan)), cmap="viridis")
        fig.colorbar(img, ax=ax, label="log10 W", fraction=0.046)
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.set_xlabel("window (optimizer steps)")
        ax.set_ylabel("window (optimizer steps)")
        ax.set_title(f"{c}: W between windows")
    fig.tight_layout()
    save(fig, out)


def write_window_figures(distances: str | Path, figures: str | Path) -> list[Path]:
    """Both figures from the windows stage's distance store (windows.zarr)."""
    ds = open_store(distances, "windows").load()
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    paths = [figures / name for name in FIGURES]
    plot_successive(ds, paths[0])
    plot_heatmap(ds, paths[1])
    return paths
