"""The accuracy figure of the long-run companions (grokking or not)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from conjugacy.report.style import colours, panels, save
from conjugacy.training.companion import COLUMNS


def load_curves(paths: list[str | Path]) -> dict[str, pd.DataFrame]:
    """Companion tables by condition (the file name), checked for their columns."""
    curves = {}
    for path in map(Path, paths):
        table = pd.read_csv(path)
        missing = sorted(set(COLUMNS) - set(table.columns))
        if missing:
            raise ValueError(f"{path}: not a companion table, it lacks columns {missing}")
        curves[path.stem] = table
    return curves


def plot_accuracy(paths: list[str | Path], out: str | Path) -> Path:
    """Train (dashed) and test (solid) accuracy and loss against step, one colour per condition."""
    curves = load_curves(paths)
    colour = colours(list(curves))
    fig, (acc_ax, loss_ax) = panels(2, size=4.6)
    for cond, table in curves.items():
        step = table["step"].clip(lower=1)  # log axis: the init is drawn at step 1
        for split, style in (("train", "--"), ("test", "-")):
            kw = {"color": colour[cond], "ls": style, "label": f"{cond} {split}"}
            acc_ax.plot(step, table[f"{split}_accuracy"], **kw)
            loss_ax.plot(step, table[f"{split}_loss"], **kw)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(-0.02, 1.02)
    loss_ax.set_ylabel("cross-entropy loss")
    loss_ax.set_yscale("log")
    for ax in (acc_ax, loss_ax):
        ax.set_xscale("log")
        ax.set_xlabel("optimizer step")
    acc_ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("Long-run companions: train (dashed) and test (solid)")
    fig.tight_layout()
    out = Path(out)
    save(fig, out)
    return out
