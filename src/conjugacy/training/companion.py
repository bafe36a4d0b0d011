"""The long-run companion of a Transformer condition: does it grok?

The Koopman comparison looks at the first steps only; the companion trains
one init of one seed for many steps and records train and test loss and
accuracy every `eval_every` steps (and after the last), so the accuracy
figure shows which condition generalises late (grokking) and which does not.

The companion is a picture, not part of the test: its length (`steps`),
evaluation interval (`eval_every`; `eval_early` adds steps 1, 2, 4, ... for
the log-step figure) and precision (`dtype`) are its own settings.
`dtype: float32` trains exactly as the recorded trajectories do (float32
parameters and arithmetic, the log-softmax in float64);
`dtype: float64` makes parameters, optimizer state and arithmetic float64, a
check that the picture is no float32 artefact, at about twice the CPU time.
Almost all of a step's time is the full-batch forward and backward pass; an
evaluation (train and test forward) costs about as much as a step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from conjugacy.config import ConfigError

log = logging.getLogger(__name__)

COLUMNS = ("step", "train_loss", "test_loss", "train_accuracy", "test_accuracy", "norm")
DTYPES = ("float32", "float64")


def eval_steps(steps: int, every: int, early: bool = False) -> list[int]:
    """The steps a companion evaluates: 0, every, 2 every, ... and the last step.

    With `early`, also 1, 2, 4, 8, ... below `every`: the figure's step axis is
    logarithmic, and these few points draw the first steps.
    """
    doubling = {2**k for k in range(every.bit_length()) if 2**k < every} if early else set()
    return sorted({*range(0, steps + 1, every), steps, *(t for t in doubling if t <= steps)})


def companion_settings(cond: dict[str, Any], condition: str = "") -> dict[str, Any]:
    """steps, eval_every, eval_early, seed and dtype of a condition's companion, checked."""
    comp = cond.get("companion")
    if not comp:
        raise ConfigError(f"condition {condition!r} has no companion settings")
    steps, every = comp.get("steps", 3000), comp.get("eval_every", 50)
    seed, dtype, early = comp.get("seed", 0), comp.get("dtype", "float32"), comp.get("eval_early")
    for key, value in (("steps", steps), ("eval_every", every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"companion.{key}: expected an integer >= 1, got {value!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"companion.dtype: expected one of {list(DTYPES)}, got {dtype!r}")
    if early is not None and not isinstance(early, bool):
        raise ConfigError(f"companion.eval_early: expected true or false, got {early!r}")
    return {
        "steps": steps,
        "eval_every": every,
        "eval_early": bool(early),
        "seed": seed,
        "dtype": dtype,
    }


def companion_model(cond: dict[str, Any], seed: int, dtype: str = "float32"):
    """The companion's one-init Transformer of `seed`, its parameters in `dtype`.

    The float32 model is exactly init 0 of the seed's trajectory system; the
    float64 one starts from the same values, widened.
    """
    import torch

    from conjugacy.systems.determinism import deterministic_torch
    from conjugacy.systems.transformer import Transformer

    deterministic_torch()
    model = Transformer({**cond, "inits": 1}, seed, device=cond["device"])
    if dtype == "float64":
        with torch.no_grad():  # the optimizer holds these tensors and has no state yet
            for tensor in model.params.values():
                tensor.data = tensor.data.double()
    return model


def run_companion(
    cond: dict[str, Any], out: str | Path, condition: str = "", progress: bool = True
) -> pd.DataFrame:
    """Train one init for companion.steps full-batch steps; write the curves as CSV."""
    settings = companion_settings(cond, condition)
    steps, seed, dtype = settings["steps"], settings["seed"], settings["dtype"]
    from conjugacy.systems.transformer import global_norms

    model = companion_model(cond, seed, dtype)
    evaluated = set(eval_steps(steps, settings["eval_every"], settings["eval_early"]))
    rows = []
    log.info("companion %s seed %d: %d steps in %s", condition, seed, steps, dtype)
    for t in tqdm(range(steps + 1), disable=not progress, mininterval=5.0, desc="companion"):
        if t in evaluated:
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
