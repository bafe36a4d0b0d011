"""Stage 4: figures of spectra, distances, W distributions and training loss (report.style)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from conjugacy.report.style import apply_style, colours, panels, save  # noqa: E402
from conjugacy.stores.contract import open_store, open_trajectory  # noqa: E402

FIGURES = ("spectra.png", "distances.png", "w_distributions.png", "loss.png")


# The zoom inset of a spectrum shows the eigenvalues within this distance of 1.
ZOOM_RADIUS = 0.25


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


def zoom_box(points: np.ndarray, radius: float = ZOOM_RADIUS) -> tuple[float, ...] | None:
    """(x0, x1, y0, y1) around the eigenvalues within `radius` of 1, and 1 itself.

    None when fewer than two eigenvalues lie there (nothing to resolve). The
    box is padded by 10% and never narrower than 1e-3, so a tight cluster
    still shows its spread.
    """
    near = points[np.abs(points - 1) < radius]
    if near.size < 2:
        return None
    xs = np.append(near.real, 1.0)
    ys = np.append(near.imag, 0.0)
    half = max(np.ptp(xs), np.ptp(ys), 1e-3) / 2 * 1.1
    cx, cy = (xs.max() + xs.min()) / 2, (ys.max() + ys.min()) / 2
    return cx - half, cx + half, cy - half, cy + half


def plot_spectra(labels, spectra, layout: list[list[str]], out: Path) -> None:
    """Eigenvalues on the complex plane with the unit circle, and beside it a zoom near 1.

    One pair of panels per group of compared conditions; the zoom (where net
    spectra crowd) is linked to its box on the full plane.
    """
    colour = colours([c for g in layout for c in g])
    apply_style()
    fig, axes = plt.subplots(1, 2 * len(layout), figsize=(8.4 * len(layout), 4.4), squeeze=False)
    theta = np.linspace(0, 2 * np.pi, 720)
    for col, group in enumerate(layout):
        ax, zoom = axes[0, 2 * col], axes[0, 2 * col + 1]
        points = {
            cond: np.concatenate(
                [s for (c, _), s in zip(labels, spectra, strict=True) if c == cond] or [[]]
            ).astype(np.complex128)
            for cond in group
        }
        every = np.concatenate(list(points.values()))
        box = zoom_box(every)
        for target in (ax, zoom):
            target.plot(np.cos(theta), np.sin(theta), color="0.35", lw=0.8, ls="--", zorder=1)
            target.axhline(0, color="0.6", lw=0.5, zorder=0)
            for cond, ev in points.items():
                n_seeds = sum(1 for c, _ in labels if c == cond)
                target.scatter(
                    ev.real,
                    ev.imag,
                    s=12,
                    alpha=0.55,
                    color=colour[cond],
                    edgecolors="none",
                    label=f"{cond} ({n_seeds} seeds)",
                    zorder=2,
                )
            target.set_aspect("equal")
            target.set_xlabel("Re λ")
            target.set_ylabel("Im λ")
        lim = max(1.15, 1.05 * float(np.abs(every).max(initial=0)))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.legend(loc="upper left", markerscale=1.5)
        ax.set_title(" vs ".join(group))
        if box is None:
            zoom.set_axis_off()
            zoom.text(0.5, 0.5, f"no two eigenvalues within {ZOOM_RADIUS} of 1", ha="center")
            continue
        x0, x1, y0, y1 = box
        zoom.set_xlim(x0, x1)
        zoom.set_ylim(y0, y1)
        zoom.set_title(f"zoom near λ = 1 (|λ − 1| < {ZOOM_RADIUS})")
        ax.indicate_inset_zoom(zoom, edgecolor="0.3", alpha=0.8)
    fig.suptitle("Koopman eigenvalues (all seeds)")
    fig.tight_layout()
    save(fig, out)


def plot_distances(distances: xr.Dataset, out: Path) -> None:
    """log10 W between every two spectra, ordered by condition then seed, conditions framed."""
    w = distances["w"].stack(a=("condition_a", "seed_a"), b=("condition_b", "seed_b"))
    keep_a = ~np.isnan(w.values).all(axis=1)
    keep_b = ~np.isnan(w.values).all(axis=0)
    mat = w.values[np.ix_(keep_a, keep_b)]
    names = [c for c, _ in np.asarray(w["a"].values)[keep_a]]
    n = len(names)
    size = min(9.0, 4.5 + 0.03 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    with np.errstate(divide="ignore"):
        img = ax.imshow(
            np.log10(np.where(mat > 0, mat, np.nan)), cmap="viridis", interpolation="nearest"
        )
    fig.colorbar(img, ax=ax, label="log10 W", shrink=0.8)
    starts = [i for i, c in enumerate(names) if i == 0 or names[i - 1] != c]
    ends = [*starts[1:], n]
    centres = [(s + e - 1) / 2 for s, e in zip(starts, ends, strict=True)]
    ax.set_xticks(centres, [names[i] for i in starts], rotation=30, ha="right")
    ax.set_yticks(centres, [names[i] for i in starts])
    for s in starts[1:]:
        ax.axhline(s - 0.5, color="white", lw=1.2)
        ax.axvline(s - 0.5, color="white", lw=1.2)
    ax.grid(False)
    ax.set_xlabel("spectrum b (condition, seeds in order)")
    ax.set_ylabel("spectrum a (condition, seeds in order)")
    ax.set_title("W between Koopman spectra (diagonal: W = 0)")
    fig.tight_layout()
    save(fig, out)


def _fmt_p(value: float) -> str:
    """3 significant digits; inf as inf (a ratio with W within 0), n/a for no value."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.3g}"


def _finite_or_inf(value) -> bool:
    return isinstance(value, int | float | np.number) and not math.isnan(value)


def interval_text(row: dict) -> str | None:
    """'90% CI [0.91, 1.3]' of the ratio; None when the table has no interval for the pair."""
    low, high = row.get("ratio_low"), row.get("ratio_high")
    if not (_finite_or_inf(low) and _finite_or_inf(high)):
        return None
    level = row.get("ratio_level")
    name = f"{level:.0%} CI" if _finite_or_inf(level) and 0 < level < 1 else "CI"
    return f"{name} [{_fmt_p(low)}, {_fmt_p(high)}]"


def annotation(row: dict) -> str:
    """The test result of one pair, as printed on its W panel (older tables lack some columns)."""
    nan = float("nan")
    correction = row.get("correction") or "none"
    lines = [f"p = {_fmt_p(row.get('p_value', nan))}"]
    if correction != "none":
        lines.append(f"p ({correction}) = {_fmt_p(row.get('p_corrected', nan))}")
    lines.append(f"ratio = {_fmt_p(row.get('ratio', nan))}")
    interval = interval_text(row)
    if interval is not None:
        lines.append(f"  {interval}")
    if math.isfinite(row.get("mw_p", nan)):
        lines.append(f"Mann-Whitney p = {_fmt_p(row['mw_p'])}")
    return "\n".join(lines)


def ratio_bar(row: dict) -> tuple[float, float, float, float] | None:
    """(within mean, between mean, low, high) of the interval drawn on the between column.

    The ratio interval on the W scale: low and high are the pooled W within
    mean times the interval's ends, around the between mean (within mean
    times the ratio). None when the table lacks any of them, or has no interval.
    """
    within, between = row.get("w_within_mean"), row.get("w_between_mean")
    low, high = row.get("ratio_low"), row.get("ratio_high")
    values = (within, between, low, high)
    if not all(_finite_or_inf(v) for v in values) or not math.isfinite(within):
        return None
    return within, between, within * low, within * high


def plot_w_distributions(distances: xr.Dataset, verdicts: pd.DataFrame, out: Path) -> None:
    """Within-condition vs between-condition W for every tested pair, with the test result.

    Beside the between column, an error bar shows the bootstrap interval of
    the ratio on the W scale (pooled W within mean times its ends, the dotted
    line being that within mean): the between mean the interval allows.
    """
    n = max(len(verdicts), 1)
    fig, axes = panels(n, size=3.8)
    w = distances["w"]
    conds = list(w["condition_a"].values)
    colour = colours(conds)
    rng = np.random.default_rng(0)  # jitter of the strip plot only

    def upper(a: str, b: str) -> np.ndarray:
        if a not in conds or b not in conds:  # every seed of it was excluded
            return np.zeros(0)
        m = w.sel(condition_a=a, condition_b=b).values
        if a == b:
            m = m[np.triu_indices_from(m, k=1)]
        return m[~np.isnan(m)].ravel()

    for ax, row in zip(axes, verdicts.to_dict("records"), strict=False):
        a, b = row["condition_a"], row["condition_b"]
        data = [upper(a, a), upper(b, b), upper(a, b)]
        tints = [colour.get(a, "k"), colour.get(b, "k"), "0.25"]
        ax.boxplot(
            [d if d.size else [np.nan] for d in data],
            widths=0.55,
            showfliers=False,
            medianprops={"color": "k"},
        )
        for i, (d, tint) in enumerate(zip(data, tints, strict=True), start=1):
            x = i + rng.uniform(-0.18, 0.18, d.size)
            ax.scatter(x, d, s=7, alpha=0.45, color=tint, edgecolors="none", zorder=3)
        ax.set_xticks(
            [1, 2, 3],
            [
                f"{a}\nwithin\n(n={data[0].size})",
                f"{b}\nwithin\n(n={data[1].size})",
                f"between\n\n(n={data[2].size})",
            ],
        )
        ax.set_ylabel("W (Wasserstein-1 between spectra)")
        top = max((float(d.max()) for d in data if d.size), default=0.0)
        bar = ratio_bar(row)
        if bar is not None and math.isfinite(bar[3]):
            top = max(top, bar[3])
        # Headroom above the data for the test result, so it hides no point.
        ax.set_ylim(0, 1.45 * top if top > 0 else 1.0)
        if bar is not None:
            within, between, low, high = bar
            high = min(high, ax.get_ylim()[1])  # an infinite end runs to the top
            ax.axhline(within, color="0.45", lw=0.8, ls=":", zorder=2, label="mean W within")
            ax.errorbar(
                [3.38],
                [between],
                yerr=[[max(between - low, 0.0)], [max(high - between, 0.0)]],
                fmt="D",
                ms=3.5,
                color="k",
                capsize=3,
                lw=1.2,
                zorder=4,
                label="CI × mean W within",
            )
            ax.legend(loc="upper right", fontsize=6, frameon=True, framealpha=0.9)
        ax.set_title(f"{a} vs {b}: {row['verdict']}", fontweight="bold")
        ax.text(
            0.02,
            0.98,
            annotation(row),
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=7,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.9},
        )
    fig.tight_layout()
    save(fig, out)


def read_losses(trajectories: list[Path]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(condition, steps, loss mean over inits) of every trajectory store that records a loss."""
    runs = []
    for path in trajectories:
        ds = open_trajectory(path, allow_diverged=True)
        if "loss" in ds:
            cond = str(ds.attrs.get("condition") or Path(path).parent.name)
            runs.append((cond, ds["step"].values, ds["loss"].values.mean(axis=0)))
    return runs


def plot_loss(trajectories: list[Path], pairs: list[tuple[str, str]], out: Path) -> None:
    """Training loss (mean over inits) per seed, one colour per condition, log scale.

    Conditions joined by `pairs` share a panel, as in the spectra figure.
    """
    runs = read_losses(trajectories)
    layout = groups(list(dict.fromkeys(cond for cond, _, _ in runs)), pairs)
    colour = colours([c for g in layout for c in g])
    panel_of = {c: i for i, g in enumerate(layout) for c in g}
    fig, axes = panels(max(len(layout), 1))
    seen: set[str] = set()
    positive = [True] * len(layout)
    for cond, steps, loss in runs:
        ax = axes[panel_of[cond]]
        positive[panel_of[cond]] &= bool(np.all(loss[np.isfinite(loss)] > 0))
        ax.plot(
            steps,
            loss,
            color=colour[cond],
            lw=0.9,
            alpha=0.6,
            label=None if cond in seen else cond,
        )
        seen.add(cond)
    if not runs:  # e.g. your own stores without a loss
        axes[0].set_title("no training loss recorded")
    for ax, group, pos in zip(axes, layout, positive, strict=False):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (mean over inits)")
        ax.set_title(" vs ".join(group))
        if ax.lines:
            if pos:
                ax.set_yscale("log")
            ax.legend()
    fig.tight_layout()
    save(fig, out)


def write_figures(
    outdir: str | Path,
    spectra: list[str | Path] | None = None,
    trajectories: list[str | Path] | None = None,
    comparison: str | Path | None = None,
    pairs: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Draw every figure the given stage outputs allow; comparison is the compare stage's folder.

    Spectra draw spectra.png, trajectories loss.png, the comparison
    distances.png and w_distributions.png: the workflow draws the first two
    while the comparison is still running. Conditions share a panel when a
    pair joins them: `pairs`, else the comparison's pairs.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if comparison is not None:
        distances = open_store(Path(comparison) / "distances.zarr", "distances")
        verdicts = pd.read_csv(Path(comparison) / "conjugacy.csv")
        if pairs is None:
            pairs = list(zip(verdicts.condition_a, verdicts.condition_b, strict=True))
        written += [outdir / "distances.png", outdir / "w_distributions.png"]
        plot_distances(distances, written[-2])
        plot_w_distributions(distances, verdicts, written[-1])
    pairs = pairs or []
    if spectra:
        from conjugacy.verdict.spectra import load_spectra

        labels, values, _ = load_spectra(spectra)
        conditions = list(dict.fromkeys(c for c, _ in labels))
        written.append(outdir / "spectra.png")
        plot_spectra(labels, values, groups(conditions, pairs), written[-1])
    if trajectories:
        written.append(outdir / "loss.png")
        plot_loss([Path(p) for p in trajectories], pairs, written[-1])
    return sorted(written, key=lambda path: FIGURES.index(path.name))
