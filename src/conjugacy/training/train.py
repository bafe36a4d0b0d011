"""Stage 1: train one (condition, seed) with all its inits and record the trajectory.

`train_block` trains a block of seeds of one condition in one process.

The store is built in a working directory outside the declared output
(Snakemake deletes a declared output before a job runs), next to a
checkpoint of the training state taken every `checkpoint_every` steps
(arrays and JSON, never a pickle). A job killed or out of wall time resumes
from its last checkpoint, and only a finished store is moved to the output
path, so a partial store never stands where a complete one is expected.
Training stops at the first non-finite loss or recorded parameter and seals
the store as `diverged`. The output and the working directory are checked
before any work: neither may hold anything this project did not write.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from conjugacy.config import ConfigError, training_config, training_json
from conjugacy.config.shapes import recorded_snapshots, tensor_shapes
from conjugacy.stores.contract import TrajectoryWriter, claim_output
from conjugacy.training import checkpoint
from conjugacy.training.checkpoint import STORE
from conjugacy.training.recorder import Recorder, block_steps

log = logging.getLogger(__name__)


def make_system(cond: dict[str, Any], seed: int):
    """The batched system of a condition: a toy optimizer or a stack of nets."""
    if cond["system"] in ("fcn", "mlp", "cnn", "transformer"):
        import torch

        from conjugacy.systems.determinism import deterministic_torch
        from conjugacy.systems.fcn import FCN

        if cond["device"] == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "device: cuda is set but torch finds no CUDA device "
                f"(torch {torch.__version__}); set device: cpu or run where a GPU is visible"
            )
        deterministic_torch()
        if cond["system"] == "cnn":
            from conjugacy.systems.cnn import CNN

            return CNN(cond, seed, device=cond["device"]), "float32"
        if cond["system"] == "transformer":
            from conjugacy.systems.transformer import Transformer

            return Transformer(cond, seed, device=cond["device"]), "float32"
        if cond["system"] == "mlp":
            from conjugacy.systems.mlp import MLP

            return MLP(cond, seed, device=cond["device"]), "float32"
        return FCN(cond, seed, device=cond["device"]), "float32"
    from conjugacy.systems.toys import Toy

    return Toy(cond, seed), "float64"


def working_dir(out: Path, checkpoint_dir: str | Path | None) -> Path:
    """Where the store is built and checkpoints kept: given, or beside the output."""
    return Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".partial")


def first_bad(loss: np.ndarray, snapshot: dict[str, np.ndarray] | None) -> str | None:
    """Why a step is not finite (loss or a recorded tensor), or None.

    A sum is finite only if every term is (or, rarely, overflows), so one
    reduction per tensor clears the usual case; elements are checked only then.
    """
    if not np.isfinite(loss).all():
        return "non-finite loss"
    for name, values in (snapshot or {}).items():
        with np.errstate(over="ignore", invalid="ignore"):
            total = values.sum(dtype=np.float64)
        if not np.isfinite(total) and not np.isfinite(values).all():
            return f"non-finite {name}"
    return None


@dataclass(frozen=True)
class Schedule:
    """Which updates a training runs, records and checkpoints."""

    start: int  # the first update: 0, or where a checkpoint left off
    total: int  # updates in all (cond["steps"])
    every: int  # a snapshot every `every` updates (cond["record_every"])
    checkpoint_every: int  # 0: never (cond["checkpoint_every"])

    def checkpoint_after(self, t: int) -> bool:
        """Whether the state after update t is checkpointed (never after the last one)."""
        return (
            bool(self.checkpoint_every) and t < self.total and (t + 1) % self.checkpoint_every == 0
        )


def _run(
    system,
    recorder: Recorder,
    schedule: Schedule,
    save: Callable[[int], None],
    label: str,
    progress: bool,
) -> None:
    """The training loop: step, record, stop at divergence, `save(next update)` when scheduled."""
    record = list(recorder.writer.tensors)
    steps = range(schedule.start, schedule.total + 1)
    for t in tqdm(steps, disable=not progress, mininterval=2.0, desc="train"):
        snap = system.snapshot(record) if t % schedule.every == 0 else None
        loss = system.step() if t < schedule.total else system.loss()
        if snap is not None:
            recorder.record(snap, loss)
        reason = first_bad(loss, snap)
        if reason is not None:
            log.warning("%s diverged at step %d: %s", label, t, reason)
            recorder.close("diverged", diverged_step=t, diverged_reason=reason)
            return
        if schedule.checkpoint_after(t):
            recorder.flush()
            save(t + 1)
    recorder.close()


def train(
    cond: dict[str, Any],
    seed: int,
    out: str | Path,
    experiment: str = "",
    condition: str = "",
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
) -> Path:
    """Run every init of one seed for cond['steps'] updates; the store ends up at `out`."""
    out = Path(out)
    work = working_dir(out, checkpoint_dir)
    claim_output(out, "trajectory", inputs=[work])
    checkpoint.claim(work)
    system, dtype = make_system(cond, seed)
    shapes = tensor_shapes(cond)
    record = cond.get("record", sorted(shapes))
    steps = recorded_snapshots(cond)
    key = f"{training_json(cond)}|seed={seed}"
    state = checkpoint.load(work, key)
    start = 0
    if state is None:
        checkpoint.clear(work)
    else:
        system.load_state(state["system"])
        start = state["next_step"]
        log.info("resuming %s seed %d from its checkpoint at step %d", condition, seed, start)
    attrs = {
        "experiment": experiment,
        "condition": condition,
        "seed": seed,
        "config": training_config(cond),
    }
    writer = TrajectoryWriter(
        work / STORE,
        {n: shapes[n] for n in record},
        steps,
        system.inits,
        dtype,
        attrs,
        resume=state is not None,
    )
    recorder = Recorder(
        writer, system.inits, dtype, block_steps(writer, dtype), bisect.bisect_left(steps, start)
    )
    schedule = Schedule(start, cond["steps"], cond["record_every"], cond["checkpoint_every"])
    log.info(
        "training %s seed %d: %d inits, %d steps", condition, seed, system.inits, schedule.total
    )

    def save(next_step: int) -> None:
        checkpoint.save(work, key, next_step, system.state())

    try:
        _run(system, recorder, schedule, save, f"{condition} seed {seed}", progress)
    finally:
        recorder.stop()  # a failed step must not leave the writer thread waiting
    if out.exists():  # a trajectory store of ours (claim_output checked it)
        shutil.rmtree(claim_output(out, "trajectory"))
    os.replace(work / STORE, out)
    checkpoint.release(work)
    return out


def train_block(
    cond: dict[str, Any],
    seeds: list[int],
    outs: list[str | Path],
    experiment: str = "",
    condition: str = "",
    progress: bool = True,
    checkpoint_dirs: list[str | Path | None] | None = None,
) -> list[Path]:
    """Train a block of seeds of one condition in this process, one after another.

    Each seed runs exactly as `train` alone would (its own system, generator,
    checkpoints and store), so its store is the same bit for bit; the block
    shares only what a process start costs: the imports (torch) and the
    dataset (cached by `load_dataset`). Every output and working directory is
    claimed before the first seed trains. A failed seed stops the block.
    """
    outs = [Path(out) for out in outs]
    dirs = list(checkpoint_dirs) if checkpoint_dirs else [None] * len(seeds)
    if not len(seeds) == len(outs) == len(dirs):
        raise ConfigError(
            f"a block of {len(seeds)} seeds needs as many outputs ({len(outs)} given) "
            f"and checkpoint directories ({len(dirs)} given)"
        )
    if len(set(seeds)) != len(seeds) or len(set(outs)) != len(outs):
        raise ConfigError(f"a block lists a seed or an output twice: seeds {seeds}")
    for out, work in zip(outs, dirs, strict=True):  # before any work
        claim_output(out, "trajectory", inputs=[working_dir(out, work)])
    from conjugacy.systems.data import cached_datasets

    with cached_datasets():
        return [
            train(cond, seed, out, experiment, condition, progress, work)
            for seed, out, work in zip(seeds, outs, dirs, strict=True)
        ]
