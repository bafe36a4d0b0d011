"""The long-run companion of a Transformer condition: does it grok?

The Koopman comparison looks at the first steps only; the companion trains
one init of one seed for many steps and records train and test loss and
accuracy every `eval_every` steps, so the accuracy figure shows which
condition generalises late (grokking) and which does not.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from conjugacy.figures import colours, panels, save

log = logging.getLogger(__name__)

COLUMNS = ("step", "train_loss", "test_loss", "train_accuracy", "test_accuracy", "norm")


def run_companion(
    cond: dict[str, Any], out: str | Path, condition: str = "", progress: bool = True
) -> pd.DataFrame:
    """Train one init for companion.steps full-batch steps; write the curves as CSV."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    from conjugacy.systems.transformer import Transformer, global_norms

    comp = cond.get("companion")
    if not comp:
        raise ValueError(f"condition {condition!r} has no companion settings")
    torch.use_deterministic_algorithms(True)
    model = Transformer({**cond, "inits": 1}, comp["seed"], device=cond["device"])
    rows = []
    steps, every = comp["steps"], comp["eval_every"]
    log.info("companion %s seed %d: %d steps", condition, comp["seed"], steps)
    for t in tqdm(range(steps + 1), disable=not progress, mininterval=5.0, desc="companion"):
        if t % every == 0 or t == steps:
            metrics = {k: float(v[0]) for k, v in model.evaluate().items()}
            norm = float(global_norms(model.params)[0])
            rows.append({"step": t, **metrics, "norm": norm})
        if t < steps:
            model.step()
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)  # a killed job leaves no partial table where a whole one belongs
    return table


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
