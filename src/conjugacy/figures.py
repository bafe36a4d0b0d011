"""Stage 4: figures of spectra, distances, W distributions and training loss."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from conjugacy.compare import load_spectra  # noqa: E402
from conjugacy.store import open_store, open_trajectory  # noqa: E402

FIGURES = ("spectra.png", "distances.png", "w_distributions.png", "loss.png")


def groups(conditions: list[str], pairs: list[tuple[str, str]]) -> list[list[str]]:
    """Conditions joined by compared pairs (connected components), in config order."""
    parent = {c: c for c in conditions}

    def find(c: str) -> str:
        while parent[c] != c:
            c = parent[c]
        return c

    for a, b in pairs:
        if a in parent and b in parent:
            parent[find(a)] = find(b)
    out: dict[str, list[str]] = {}
    for c in conditions:
        out.setdefault(find(c), []).append(c)
    return list(out.values())


def colours(conditions: list[str]) -> dict[str, tuple]:
    """One colour per condition, the same in every figure of the project."""
    cmap = plt.get_cmap("tab10")
    return {c: cmap(i % 10) for i, c in enumerate(conditions)}


def panels(n: int, size: float = 4.2):
    """A row of n square axes, the project's panel size."""
    fig, axes = plt.subplots(1, n, figsize=(size * n, size), squeeze=False)
    return fig, axes[0]


def save(fig, out: str | Path) -> None:
    """Write the figure as PNG (for the report) and PDF beside it (for papers), then close it."""
    out = Path(out)
    fig.savefig(out, dpi=110)
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)


def plot_spectra(labels, spectra, layout: list[list[str]], out: Path) -> None:
    """Eigenvalues on the complex plane with the unit circle (top) and zoomed in (bottom)."""
    colour = colours([c for g in layout for c in g])
    fig, axes = plt.subplots(2, len(layout), figsize=(4.2 * len(layout), 8.4), squeeze=False)
    theta = np.linspace(0, 2 * np.pi, 400)
    for col, group in enumerate(layout):
        points = {
            cond: np.concatenate(
                [s for (c, _), s in zip(labels, spectra, strict=True) if c == cond]
            )
            for cond in group
        }
        for ax in axes[:, col]:
            ax.plot(np.cos(theta), np.sin(theta), "k--", lw=0.8)
            for cond, ev in points.items():
                ax.scatter(ev.real, ev.imag, s=14, alpha=0.6, color=colour[cond], label=cond)
            ax.set_xlabel("Re λ")
            ax.set_ylabel("Im λ")
        axes[0, col].set_aspect("equal")
        axes[0, col].legend(fontsize=8, loc="lower left")
        every = np.concatenate(list(points.values()))
        pad = 0.05 * max(np.ptp(every.real), np.ptp(every.imag), 1e-3)
        axes[1, col].set_xlim(every.real.min() - pad, every.real.max() + pad)
        axes[1, col].set_ylim(every.imag.min() - pad, every.imag.max() + pad)
        axes[1, col].set_title("zoomed", fontsize=9)
    fig.suptitle("Koopman eigenvalues (all seeds)")
    fig.tight_layout()
    save(fig, out)


def plot_distances(distances: xr.Dataset, out: Path) -> None:
    """log10 W between every two spectra, grouped by condition."""
    w = distances["w"].stack(a=("condition_a", "seed_a"), b=("condition_b", "seed_b"))
    keep_a = ~np.isnan(w.values).all(axis=1)
    keep_b = ~np.isnan(w.values).all(axis=0)
    mat = w.values[np.ix_(keep_a, keep_b)]
    names = [c for c, _ in np.asarray(w["a"].values)[keep_a]]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    with np.errstate(divide="ignore"):
        img = ax.imshow(np.log10(np.where(mat > 0, mat, np.nan)), cmap="viridis")
    fig.colorbar(img, ax=ax, label="log10 W")
    starts = [i for i, c in enumerate(names) if i == 0 or names[i - 1] != c]
    ax.set_xticks(starts, [names[i] for i in starts], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(starts, [names[i] for i in starts], fontsize=8)
    ax.set_title("W between spectra (condition, seed)")
    fig.tight_layout()
    save(fig, out)


def plot_w_distributions(distances: xr.Dataset, verdicts: pd.DataFrame, out: Path) -> None:
    """Within-condition vs between-condition W for every tested pair, with the verdict."""
    n = max(len(verdicts), 1)
    fig, axes = panels(n, size=3.6)
    w = distances["w"]

    def upper(a: str, b: str) -> np.ndarray:
        present = set(w["condition_a"].values)
        if a not in present or b not in present:  # every seed of it was excluded
            return np.zeros(0)
        m = w.sel(condition_a=a, condition_b=b).values
        if a == b:
            m = m[np.triu_indices_from(m, k=1)]
        return m[~np.isnan(m)].ravel()

    for ax, row in zip(axes, verdicts.itertuples(), strict=False):
        a, b = row.condition_a, row.condition_b
        data = [upper(a, a), upper(b, b), upper(a, b)]
        ax.boxplot(data, showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.scatter(np.full(d.size, i), d, s=8, alpha=0.5, color="k")
        ax.set_xticks([1, 2, 3], [f"{a}\nwithin", f"{b}\nwithin", "between"], fontsize=8)
        ax.set_ylabel("W")
        ax.set_title(f"{row.verdict} (p = {row.p_value:.3g})", fontsize=9)
    fig.tight_layout()
    save(fig, out)


def plot_loss(trajectories: list[Path], layout: list[list[str]], out: Path) -> None:
    """Training loss (mean over inits) per seed, one colour per condition."""
    colour = colours([c for g in layout for c in g])
    panel_of = {c: i for i, g in enumerate(layout) for c in g}
    fig, axes = panels(len(layout))
    seen: set[str] = set()
    for path in trajectories:
        ds = open_trajectory(path, allow_diverged=True)
        cond = str(ds.attrs.get("condition") or Path(path).parent.name)
        if cond not in panel_of or "loss" not in ds:
            continue
        ax = axes[panel_of[cond]]
        loss = ds["loss"].values.mean(axis=0)
        ax.plot(
            ds["step"].values,
            loss,
            color=colour[cond],
            lw=1,
            alpha=0.7,
            label=None if cond in seen else cond,
        )
        seen.add(cond)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (mean over inits)")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, out)


def run(
    spectra: list[str | Path],
    trajectories: list[str | Path],
    comparison: str | Path,
    outdir: str | Path,
) -> list[Path]:
    """Draw every figure from the stage outputs; comparison is the compare stage's folder."""
    comparison, outdir = Path(comparison), Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    labels, values, _ = load_spectra(spectra)
    distances = open_store(comparison / "distances.zarr", "distances")
    verdicts = pd.read_csv(comparison / "conjugacy.csv")
    conditions = list(dict.fromkeys(c for c, _ in labels))
    layout = groups(conditions, list(zip(verdicts.condition_a, verdicts.condition_b, strict=True)))
    paths = [outdir / name for name in FIGURES]
    plot_spectra(labels, values, layout, paths[0])
    plot_distances(distances, paths[1])
    plot_w_distributions(distances, verdicts, paths[2])
    plot_loss([Path(p) for p in trajectories], layout, paths[3])
    return paths
