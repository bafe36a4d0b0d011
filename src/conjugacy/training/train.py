"""Stage 1: train one (condition, seed) with all its inits and record the trajectory.

`train_block` trains a block of seeds of one condition in one process.

The store is built in a working directory outside the declared output
(Snakemake deletes a declared output before a job runs), next to a
checkpoint of the training state taken every `checkpoint_every` steps, once
`checkpoint_seconds` have passed since the last one (arrays and JSON, never
a pickle). A job killed or out of wall time resumes
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    checkpoint_seconds: float  # since the last checkpoint (cond["checkpoint_seconds"])

    def checkpoint_after(self, t: int, since: float) -> bool:
        """Whether the state after update t is checkpointed, the last checkpoint (or the
        start) having been at `since` (time.monotonic): never after the last update. The
        clock is read only at a due step."""
        return (
            bool(self.checkpoint_every)
            and t < self.total
            and (t + 1) % self.checkpoint_every == 0
            and time.monotonic() - since >= self.checkpoint_seconds
        )


class Seeds(Protocol):
    """Seeds stepped together: one system (`OneSeed`) or a stack of them (`SeedStack`).
    Each method answers one item per seed, in order."""

    def step(self) -> list[np.ndarray]: ...

    def loss(self) -> list[np.ndarray]: ...

    def snapshot(self, names: list[str]) -> list[dict[str, np.ndarray]]: ...


class OneSeed:
    """A system trained on its own, with the interface of a stack of seeds (`SeedStack`)."""

    def __init__(self, system) -> None:
        self.system = system

    def step(self) -> list[np.ndarray]:
        return [self.system.step()]

    def loss(self) -> list[np.ndarray]:
        return [self.system.loss()]

    def snapshot(self, names: list[str]) -> list[dict[str, np.ndarray]]:
        return [self.system.snapshot(names)]


@dataclass(eq=False)
class SeedRun:
    """One seed's training being recorded: its system, recorder, checkpoint and output."""

    out: Path
    work: Path
    key: str  # what its checkpoints must match
    system: Any
    recorder: Recorder
    schedule: Schedule
    label: str

    def save(self, next_step: int) -> None:
        checkpoint.save(self.work, self.key, next_step, self.system.state())


def _run(seeds: Seeds, runs: list[SeedRun], progress: bool) -> None:
    """The training loop of seeds stepped together (`seeds`: OneSeed or a SeedStack).

    Step, record, seal a seed's store at its divergence (the other seeds go
    on), checkpoint every seed still training when scheduled.
    """
    schedule = runs[0].schedule
    last_checkpoint = time.monotonic()
    record = list(runs[0].recorder.writer.tensors)
    live = list(range(len(runs)))
    steps = range(schedule.start, schedule.total + 1)
    for t in tqdm(steps, disable=not progress, mininterval=2.0, desc="train"):
        snaps = seeds.snapshot(record) if t % schedule.every == 0 else [None] * len(runs)
        losses = seeds.step() if t < schedule.total else seeds.loss()
        for i in list(live):
            run, snap = runs[i], snaps[i]
            if snap is not None:
                run.recorder.record(snap, losses[i])
            reason = first_bad(losses[i], snap)
            if reason is not None:
                log.warning("%s diverged at step %d: %s", run.label, t, reason)
                run.recorder.close("diverged", diverged_step=t, diverged_reason=reason)
                live.remove(i)
        if not live:
            return
        if schedule.checkpoint_after(t, last_checkpoint):
            for i in live:
                runs[i].recorder.flush()
                runs[i].save(t + 1)
            last_checkpoint = time.monotonic()
    for i in live:
        runs[i].recorder.close()


def start_seed(
    cond: dict[str, Any],
    seed: int,
    out: Path,
    experiment: str,
    condition: str,
    checkpoint_dir: str | Path | None,
) -> SeedRun:
    """Claim a seed's output and working folder, resume its checkpoint if any, open its store."""
    work = working_dir(out, checkpoint_dir)
    claim_output(out, "trajectory", inputs=[work])
    checkpoint.claim(work)
    out.parent.mkdir(parents=True, exist_ok=True)  # the finished store moves there
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
    schedule = Schedule(
        start,
        cond["steps"],
        cond["record_every"],
        cond["checkpoint_every"],
        cond["checkpoint_seconds"],
    )
    label = f"{condition} seed {seed}"
    return SeedRun(out, work, key, system, recorder, schedule, label)


def finish_seed(run: SeedRun) -> Path:
    """Move a seed's finished store to its output and drop its checkpoint."""
    if run.out.exists():  # a trajectory store of ours (claim_output checked it)
        shutil.rmtree(claim_output(run.out, "trajectory"))
    os.replace(run.work / STORE, run.out)
    checkpoint.release(run.work)
    return run.out


def train_runs(seeds: Seeds, runs: list[SeedRun], progress: bool) -> list[Path]:
    """Train `runs` stepped together by `seeds`; their stores end up at their outputs."""
    for run in runs:
        log.info("training %s: %d inits, %d steps", run.label, run.system.inits, run.schedule.total)
    try:
        _run(seeds, runs, progress)
    finally:
        for run in runs:  # a failed step must not leave a writer thread waiting
            run.recorder.stop()
    return [finish_seed(run) for run in runs]


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
    run = start_seed(cond, seed, Path(out), experiment, condition, checkpoint_dir)
    return train_runs(OneSeed(run.system), [run], progress)[0]


def train_block(
    cond: dict[str, Any],
    seeds: list[int],
    outs: list[str | Path],
    experiment: str = "",
    condition: str = "",
    progress: bool = True,
    checkpoint_dirs: list[str | Path | None] | None = None,
) -> list[Path]:
    """Train a block of seeds of one condition in this process.

    Each seed's store is the same bit for bit as `train` alone makes it (its
    own system, generator, checkpoints and store). Plain FCNs with SGD train
    the block's fresh seeds as one computation (`SeedStack`: a step of
    seeds x inits nets at once, per-net arithmetic unchanged); a seed that
    resumes from a checkpoint trains on its own; other systems train one seed
    after another. The block also shares what a process start costs: the
    imports (torch) and the dataset (cached by `load_dataset`). Every output
    and working directory is claimed before the first seed trains. A failed
    seed stops the block.
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

    jobs = list(zip(seeds, outs, dirs, strict=True))
    with cached_datasets():
        if cond["system"] == "fcn" and len(jobs) > 1:
            return _train_stacked(cond, jobs, experiment, condition, progress)
        return [
            train(cond, seed, out, experiment, condition, progress, work)
            for seed, out, work in jobs
        ]


def _train_stacked(
    cond: dict[str, Any],
    jobs: list[tuple[int, Path, str | Path | None]],
    experiment: str,
    condition: str,
    progress: bool,
) -> list[Path]:
    """A block of FCN seeds: the fresh ones stacked when SeedStack takes them, the rest alone."""
    from conjugacy.systems.fcn import SeedStack, stackable

    runs = [start_seed(cond, seed, out, experiment, condition, work) for seed, out, work in jobs]
    try:
        fresh = [run for run in runs if run.schedule.start == 0]
        alone = [run for run in runs if run.schedule.start > 0]
        if not stackable([run.system for run in fresh]):
            fresh, alone = [], runs
        for run in alone:
            train_runs(OneSeed(run.system), [run], progress)
        if fresh:
            train_runs(SeedStack([run.system for run in fresh]), fresh, progress)
    finally:
        for run in runs:
            run.recorder.stop()
    return [run.out for run in runs]
