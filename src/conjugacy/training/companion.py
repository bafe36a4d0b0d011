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
