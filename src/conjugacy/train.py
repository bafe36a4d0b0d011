"""Stage 1: train one (condition, seed) with all its inits and record the trajectory."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from conjugacy.config import ConfigError, training_config
from conjugacy.recorder import Recorder
from conjugacy.store import STEP_BLOCK, TrajectoryWriter
from conjugacy.systems.shapes import recorded_snapshots, tensor_shapes

log = logging.getLogger(__name__)


def make_system(cond: dict[str, Any], seed: int):
    """The batched system of a condition: a toy optimizer or a stack of nets."""
    if cond["system"] == "fcn":
        # cuBLAS is deterministic only with a fixed workspace; set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        import torch

        from conjugacy.systems.fcn import FCN

        if cond["device"] == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "device: cuda is set but torch finds no CUDA device "
                f"(torch {torch.__version__}); set device: cpu or run where a GPU is visible"
            )
        torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        return FCN(cond, seed, device=cond["device"]), "float32"
    from conjugacy.systems.toys import Toy

    return Toy(cond, seed), "float64"


def train(
    cond: dict[str, Any],
    seed: int,
    out: str | Path,
    experiment: str = "",
    condition: str = "",
    progress: bool = True,
) -> Path:
    """Run every init of one seed for cond['steps'] updates and write the store at `out`."""
    system, dtype = make_system(cond, seed)
    shapes = tensor_shapes(cond)
    record = cond.get("record", sorted(shapes))
    steps = recorded_snapshots(cond)
    attrs = {
        "experiment": experiment,
        "condition": condition,
        "seed": seed,
        "config": training_config(cond),
    }
    writer = TrajectoryWriter(
        out, {n: shapes[n] for n in record}, steps, system.inits, dtype, attrs
    )
    recorder = Recorder(writer, system.inits, dtype, block=min(STEP_BLOCK, len(steps)))
    every = cond["record_every"]
    log.info("training %s seed %d: %d inits, %d steps", condition, seed, system.inits, steps[-1])
    for t in tqdm(range(cond["steps"] + 1), disable=not progress, mininterval=2.0, desc="train"):
        snap = system.snapshot() if t % every == 0 else None
        loss = system.step() if t < cond["steps"] else system.loss()
        if snap is not None:
            recorder.record(snap, loss)
    recorder.close()
    return Path(out)
