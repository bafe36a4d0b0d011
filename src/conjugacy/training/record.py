"""Record the parameter trajectory of any torch.nn.Module: `conjugacy.record`.

    with conjugacy.record("runs/sgd/seed0.zarr", model, tensors=["fc2.weight"]) as rec:
        for batch in loader:
            ...; opt.step()
            rec.step(loss=loss)  # the snapshot after the update

The store follows the trajectory contract (stores/contract.py): one variable
per recorded tensor with dims (init, step, <name>_dim0, ...), `loss`
(init, step), the `step` coordinate (optimizer steps: the model as it is when
the recorder starts is step `start`, 0 by default, and the snapshot passed
with the n-th `rec.step()` after it is step start + n), provenance
attributes, CRC32C checksums, sealed last by `close` (or the end of the
`with` block). Half-precision tensors are stored as float32, integers as
float64.

The number of steps need not be known: the store grows along `step` one
block of snapshots at a time (`steps=` pre-allocates it). The training
thread only copies each snapshot into a host buffer (pinned, with
non-blocking copies, for CUDA tensors); full blocks are written by a
background thread, which waits for the copies (a CUDA event), never the
training thread. After each block, the number of snapshots on disk per init
(`recorded`) is written: that is what `resume=True` continues from after a
crash.
"""

from __future__ import annotations

import bisect
import fnmatch
import json
import logging
import math
import queue
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from conjugacy.stores.contract import (
    CHECKSUM,
    STEP_BLOCK,
    WRITE_EVERY_CHUNK,
    StoreError,
    chunk_shape,
    claim_output,
    dim_names,
    package_versions,
    seal,
    store_role,
)
from conjugacy.training.recorder import write_queued

log = logging.getLogger(__name__)

BUFFER_BYTES = 32 << 20  # host memory per block buffer (two of them); at least STEP_BLOCK steps
COORD_CHUNK = 4096  # steps per chunk of the `step` coordinate
RESERVED = ("loss", "step", "init")  # names a recorded tensor cannot have
# Attributes the recorder writes; a user's `attrs` may not set them.
OWN_ATTRS = (
    "role",
    "status",
    "integrity",
    "versions",
    "every",
    "recorded",
    "diverged",
    "diverged_step",
    "diverged_reason",
    "model",
    "source_dtypes",
    "writer",
)
WRITER = "conjugacy.record"


class RecordError(ValueError):
    """A recorder cannot start or go on (bad name, store mismatch, skipped step); one line."""


# --- which tensors --------------------------------------------------------------------------


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose names the user knows: inside DDP/DataParallel and torch.compile."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def model_names(model: torch.nn.Module) -> list[str]:
    """Every parameter and buffer name, in the model's order (tied tensors under each name)."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in model.named_buffers(remove_duplicate=False)]
    return list(dict.fromkeys(names))


def select(model: torch.nn.Module, tensors: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Names of the recorded tensors: exact names or fnmatch globs; None: every parameter."""
    if tensors is None:
        return [n for n, _ in model.named_parameters()]
    patterns = [tensors] if isinstance(tensors, str) else list(tensors)
    if not patterns:
        raise RecordError("record: tensors=[] names nothing to record")
    names = model_names(model)
    known = set(names)
    chosen: list[str] = []
    for pattern in patterns:
        found = [pattern] if pattern in known else fnmatch.filter(names, pattern)
        if not found:
            raise RecordError(
                f"record: {pattern!r} matches no parameter or buffer of "
                f"{type(model).__name__}; its names: {', '.join(names) or '(none)'}"
            )
        chosen += found
    chosen = list(dict.fromkeys(chosen))
    bad = [n for n in chosen if n in RESERVED]
    if bad:
        raise RecordError(f"record: a tensor named {bad[0]!r} clashes with the store's {bad[0]!r}")
    return chosen


def stored_dtype(dtype: torch.dtype, name: str) -> np.dtype:
    """float32 for floats up to 32 bits (bf16/fp16 exactly), float64 for float64 and integers."""
    if dtype.is_complex:
        raise RecordError(f"record: {name!r} is {dtype}; only real tensors can be recorded")
    if dtype.is_floating_point and dtype.itemsize <= 4:
        return np.dtype("float32")
    return np.dtype("float64")


def writes_here(rank: int | None) -> bool:
    """Whether this process writes: always without torch.distributed, else on `rank` (0)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return True
    return dist.get_rank() == (0 if rank is None else rank)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor (FSDP2, tensor parallel) is gathered (a collective)."""
    gather = getattr(tensor, "full_tensor", None)
    return (gather() if callable(gather) else tensor).detach()


# --- the store ------------------------------------------------------------------------------


@dataclass
class Spec:
    """A recorded tensor: shape and stored dtype."""

    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass
class Progress:
    """What the store holds: snapshots per init, the steps, first divergence per init."""

    recorded: dict[int, int] = field(default_factory=dict)
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    diverged: dict[int, list] = field(default_factory=dict)  # init -> [step, reason]


class GrowingStore:
    """A trajectory store one run (one init) fills, growing along `step` block by block."""

    def __init__(self, path: Path, group: zarr.Group, specs: dict[str, Spec], init: int) -> None:
        self.path = path
        self.group = group
        self.specs = specs
        self.init = init
        # Every block is data, even one equal to the fill value (config is not stored).
        self.arrays = {
            name: group[name].with_config(WRITE_EVERY_CHUNK) for name in [*specs, "loss", "step"]
        }
        self.length = self.arrays["loss"].shape[1]
        attrs = group.attrs
        self.progress = Progress(
            recorded={int(k): int(v) for k, v in attrs.get("recorded", {}).items()},
            diverged={int(k): list(v) for k, v in attrs.get("diverged", {}).items()},
        )
        n = max(self.progress.recorded.values(), default=0)
        self.progress.steps = np.asarray(self.arrays["step"][:n], dtype=np.int64)

    @classmethod
    def open(
        cls,
        path: Path,
        specs: dict[str, Spec],
        init: int | None,
        every: int,
        attrs: dict[str, Any],
        resume: bool,
    ) -> GrowingStore:
        """Create the store, or reopen ours (resume, or init >= 1 joining a shared store).

        A new (not resumed) run of init None or 0 starts the store anew, so a
        loop over inits run again never pools runs of an earlier invocation.
        """
        claim_output(path, "trajectory")
        ours = (path / "zarr.json").is_file() and store_role(path) == "trajectory"
        if ours and (resume or (init or 0) > 0):
            group = zarr.open_group(path, mode="r+", zarr_format=3)
            cls.check_match(path, group, specs, every)
            store = cls(path, group, specs, init or 0)
            store.reopen(attrs, fresh=not resume)
            return store
        if path.exists():  # an empty folder, or a store of ours this run replaces
            shutil.rmtree(path)
        group = cls.create(path, specs, (init or 0) + 1, 0, every, attrs)
        return cls(path, group, specs, init or 0)

    @staticmethod
    def create(
        path: Path,
        specs: dict[str, Spec],
        inits: int,
        length: int,
        every: int,
        attrs: dict[str, Any],
    ) -> zarr.Group:
        group = zarr.open_group(path, mode="w", zarr_format=3)
        for name, spec in specs.items():
            group.create_array(
                name,
                shape=(inits, length, *spec.shape),
                chunks=chunk_shape(1, spec.shape, STEP_BLOCK),
                dtype=spec.dtype,
                fill_value=np.nan,
                compressors=CHECKSUM,
                dimension_names=dim_names(name, len(spec.shape)),
                config=WRITE_EVERY_CHUNK,
            )
        group.create_array(
            "loss",
            shape=(inits, length),
            chunks=(1, STEP_BLOCK),
            dtype="float64",
            fill_value=np.nan,
            compressors=CHECKSUM,
            dimension_names=("init", "step"),
            config=WRITE_EVERY_CHUNK,
        )
        group.create_array(
            "step",
            shape=(length,),
            chunks=(COORD_CHUNK,),
            dtype="int64",
            fill_value=-1,
            compressors=CHECKSUM,
            dimension_names=("step",),
            config=WRITE_EVERY_CHUNK,
        )
        init = group.create_array(
            "init",
            shape=(inits,),
            chunks=(COORD_CHUNK,),
            dtype="int64",
            compressors=CHECKSUM,
            dimension_names=("init",),
            config=WRITE_EVERY_CHUNK,
        )
        init[:] = np.arange(inits)
        group.update_attributes(
            {
                **attrs,
                "role": "trajectory",
                "status": "incomplete",
                "versions": package_versions(),
                "every": every,
                "writer": WRITER,
                "recorded": {},
                "diverged": {},
            }
        )
        return group

    @staticmethod
    def check_match(path: Path, group: zarr.Group, specs: dict[str, Spec], every: int) -> None:
        """A store reopened must hold exactly these tensors, as this recorder writes them."""
        attrs = group.attrs
        if attrs.get("writer") != WRITER:
            raise RecordError(
                f"record: {path} is a trajectory store written by `conjugacy train`, not by "
                "conjugacy.record; it cannot be resumed or shared (choose another path)"
            )
        held = sorted(n for n, _ in group.arrays() if n not in RESERVED)
        if held != sorted(specs):
            raise RecordError(
                f"record: {path} holds the tensors {held}, this recorder records "
                f"{sorted(specs)}; resume or share a store only with the same tensors (or "
                "remove it)"
            )
        for name, spec in specs.items():
            arr = group[name]
            if tuple(arr.shape[2:]) != spec.shape or np.dtype(arr.dtype) != spec.dtype:
                raise RecordError(
                    f"record: {path}: {name!r} is {tuple(arr.shape[2:])} {arr.dtype} in the "
                    f"store, {spec.shape} {spec.dtype} in the model (or remove the store)"
                )
        if attrs.get("every") != every:
            raise RecordError(
                f"record: {path} was recorded every {attrs.get('every')} steps, this recorder "
                f"records every {every}; use the same `every` (or remove the store)"
            )

    def reopen(self, attrs: dict[str, Any], fresh: bool) -> None:
        """Mark the store incomplete again (unsealed) and make room for this init."""
        inits = self.arrays["loss"].shape[0]
        if self.init >= inits:
            for arr in self.arrays.values():
                if arr.ndim >= 2:
                    arr.resize((self.init + 1, *arr.shape[1:]))
            coord = self.group["init"].with_config(WRITE_EVERY_CHUNK)
            coord.resize((self.init + 1,))
            coord[:] = np.arange(self.init + 1)
        if fresh:
            self.progress.recorded[self.init] = 0
        current = dict(self.group.attrs)
        current.pop("integrity", None)
        self.group.attrs.put({**current, **attrs, "status": "incomplete"})

    def others(self) -> np.ndarray:
        """The steps that other inits of a shared store fixed (this run must record them)."""
        n = max((v for k, v in self.progress.recorded.items() if k != self.init), default=0)
        return self.progress.steps[:n]

    def mine(self) -> np.ndarray:
        """Steps of this init's snapshots already on disk."""
        return self.progress.steps[: self.progress.recorded.get(self.init, 0)]

    def reserve(self, length: int) -> None:
        """Pre-allocate the step dimension (steps= known in advance)."""
        if length > self.length:
            self.resize(length)

    def resize(self, length: int) -> None:
        for arr in self.arrays.values():
            if arr.ndim == 1:
                arr.resize((length,))
            else:
                arr.resize((arr.shape[0], length, *arr.shape[2:]))
        self.length = length

    def write(
        self,
        start: int,
        tensors: dict[str, np.ndarray],
        loss: np.ndarray,
        steps: np.ndarray,
        diverged: list | None,
    ) -> None:
        """Write snapshots [start, start + k) of this init, then record that they are there."""
        end = start + len(steps)
        if end > self.length:
            self.resize(end)
        for name, block in tensors.items():
            self.arrays[name][self.init, start:end] = block
        self.arrays["loss"][self.init, start:end] = loss
        self.arrays["step"][start:end] = steps
        progress = self.progress
        if len(progress.steps) < end:
            progress.steps = np.concatenate([progress.steps[:start], steps])
        else:
            progress.steps[start:end] = steps
        progress.recorded[self.init] = end
        if diverged is not None and self.init not in progress.diverged:
            progress.diverged[self.init] = diverged
        self.commit()

    def truncate(self, index: int) -> None:
        """This init holds index snapshots (the rest is written again after a resume)."""
        self.progress.recorded[self.init] = index
        if self.init in self.progress.diverged and self.progress.diverged[self.init][0] >= (
            int(self.progress.steps[index]) if index < len(self.progress.steps) else math.inf
        ):
            del self.progress.diverged[self.init]
        self.commit()

    def commit(self) -> None:
        """The progress attributes: the commit point of every block (one metadata write)."""
        p = self.progress
        self.group.update_attributes(
            {
                "recorded": {str(k): v for k, v in sorted(p.recorded.items())},
                "diverged": {str(k): v for k, v in sorted(p.diverged.items())},
            }
        )

    def seal(self) -> str:
        """Cut the store to the snapshots recorded and seal it; returns the status."""
        p = self.progress
        inits = self.arrays["loss"].shape[0]
        length = max(p.recorded.values(), default=0)
        if length != self.length:
            self.resize(length)
        short = [i for i in range(inits) if p.recorded.get(i, 0) < length]
        extra: dict[str, Any] = {}
        if length == 0 or short:
            status = "incomplete"
            what = ", ".join(f"init {i} has {p.recorded.get(i, 0)}" for i in short)
            log.warning(
                "%s: left incomplete (%s of %d snapshots): record the missing inits or steps "
                "(resume=True) before using it",
                self.path,
                what or "no snapshot",
                length,
            )
        elif p.diverged:
            status = "diverged"
            init, (step, reason) = min(p.diverged.items(), key=lambda item: item[1][0])
            where = f" (init {init})" if inits > 1 else ""
            extra = {"diverged_step": step, "diverged_reason": reason + where}
        else:
            status = "complete"
        seal(self.group, status, **extra)
        return status


def first_bad_row(name: str, block: np.ndarray) -> int | None:
    """Index of the first snapshot of a block with a non-finite value, if any."""
    rows = block.reshape(block.shape[0], -1)
    with np.errstate(over="ignore", invalid="ignore"):
        sums = rows.sum(axis=1)  # a finite sum: every term is finite (else overflow: look closer)
    for i in np.flatnonzero(~np.isfinite(sums)):
        if not np.isfinite(rows[i]).all():
            return int(i)
    return None


# --- the recorder ---------------------------------------------------------------------------


BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # same-size raw views


def raw(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bits as a numpy view (numpy has no bfloat16)."""
    return tensor.view(BITS[tensor.element_size()]).numpy()


@dataclass
class Block:
    """Host buffers for a block of snapshots: one per tensor in its own dtype, loss, steps."""

    tensors: dict[str, torch.Tensor]
    loss: torch.Tensor
    steps: np.ndarray
    pinned: bool = False  # page-locked: copies from a GPU into it are asynchronous
    devices: set = field(default_factory=set)  # GPUs with copies into the block in flight
    events: list = field(default_factory=list)  # CUDA events after the block's copies

    def __post_init__(self) -> None:
        self.bits = {name: raw(buf) for name, buf in self.tensors.items()}
        self.losses = self.loss.numpy()


class ModelRecorder:
    """Records tensors of a model after optimizer steps; see `record` for the arguments."""

    def __init__(
        self,
        path: str | Path,
        model: torch.nn.Module,
        tensors: str | list[str] | tuple[str, ...] | None = None,
        *,
        every: int = 1,
        init: int | None = None,
        steps: int | None = None,
        start: int | None = None,
        attrs: dict[str, Any] | None = None,
        resume: bool = False,
        rank: int | None = None,
    ) -> None:
        for key, value, low in (("every", every, 1), ("init", init, 0), ("steps", steps, 0)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise RecordError(f"record: {key}={value!r}; expected an integer >= {low}")
        if start is not None and not isinstance(start, int):
            raise RecordError(f"record: start={start!r}; expected an integer step")
        self.path = Path(path)
        self.every = every
        self.model = unwrap(model)
        self.names = select(self.model, tensors)
        self._where = {}
        for name in self.names:
            owner, _, attr = name.rpartition(".")
            self._where[name] = (self.model.get_submodule(owner) if owner else self.model, attr)
        live = {name: self._tensor(name) for name in self.names}
        self._gather = [n for n, t in live.items() if callable(getattr(t, "full_tensor", None))]
        self.writing = writes_here(rank)
        self.closed = False
        self.error: BaseException | None = None
        self.store: GrowingStore | None = None
        self.last_step: int | None = None  # step of the latest snapshot
        self._index = 0  # store index of the next snapshot
        self._thread: threading.Thread | None = None
        if not self.writing:
            if self._gather and resume and start is None:
                raise RecordError(
                    "record: sharded (DTensor) tensors are gathered on every rank; with "
                    "resume=True pass start= (the step training resumes at) on every rank"
                )
            self._last = 0 if start is None else start
            if self._gather and self._last % every == 0:
                self._snapshot(self._last, None)  # the writing rank gathers now too
            return
        specs = {n: Spec(tuple(t.shape), stored_dtype(t.dtype, n)) for n, t in live.items()}
        own = self._own_attrs(attrs or {}, live)
        self.store = GrowingStore.open(self.path, specs, init, every, own, resume)
        self._last, self._index, take_now = self._resume_point(start)
        self._known = self.store.others()  # steps other inits of a shared store fixed
        if steps is not None:
            first = int(self.store.mine()[0]) if self._index else self._first_step()
            self.store.reserve(max(self._index, (steps - first) // every + 1))
        self._start_writer(live, steps)
        if take_now:
            self._snapshot(self._last, None)

    # set-up

    def _tensor(self, name: str) -> torch.Tensor:
        module, attr = self._where[name]
        return getattr(module, attr)

    def _own_attrs(self, attrs: dict[str, Any], live: dict[str, torch.Tensor]) -> dict[str, Any]:
        clash = sorted(set(attrs) & set(OWN_ATTRS))
        if clash:
            raise RecordError(f"record: attrs may not set {clash} (the recorder writes them)")
        try:
            json.dumps(attrs)
        except (TypeError, ValueError) as exc:
            raise RecordError(
                f"record: attrs must be JSON (numbers, strings, lists, dicts): {exc}"
            ) from None
        return {
            **attrs,
            "model": type(self.model).__qualname__,
            "source_dtypes": {n: str(t.dtype).removeprefix("torch.") for n, t in live.items()},
        }

    def _first_step(self) -> int:
        """Step of the first snapshot of a new run: `start` itself or the next multiple."""
        return -(-self._last // self.every) * self.every

    def _resume_point(self, start: int | None) -> tuple[int, int, bool]:
        """(last step seen, store index of the next snapshot, snapshot the model now?)."""
        assert self.store is not None
        mine = self.store.mine()
        every = self.every
        if len(mine) == 0:
            step = 0 if start is None else start
            self.store.truncate(0)
            self.last_step = None
            return step, 0, step % every == 0
        if start is None:  # go on right after the last snapshot on disk
            self.last_step = int(mine[-1])
            return int(mine[-1]), len(mine), False
        index = bisect.bisect_right(mine.tolist(), start)  # the snapshots up to `start` stay
        take_now = start % every == 0
        if index:
            kept = int(mine[index - 1])
            if kept == start // every * every:
                take_now = False  # the snapshot of `start` (or the last before it) is on disk
            elif not (take_now and kept == start - every):
                raise RecordError(
                    f"record: {self.path} holds snapshots up to step {kept}, training resumes "
                    f"at step {start}: the snapshot of step {kept + every} is lost; resume from "
                    f"a checkpoint at step <= {kept + every - 1} (call rec.flush() before "
                    "saving each checkpoint so the store never lags it)"
                )
        self.store.truncate(index)
        self.last_step = int(mine[index - 1]) if index else None
        return start, index, take_now

    def _start_writer(self, live: dict[str, torch.Tensor], steps: int | None) -> None:
        per_step = 16 + sum(t.numel() * t.element_size() for t in live.values())
        chunks = max(1, BUFFER_BYTES // (per_step * STEP_BLOCK))
        self.block = chunks * STEP_BLOCK
        if steps is not None:
            self.block = max(1, min(self.block, (steps - self._last) // self.every + 1))
        cuda = any(t.is_cuda for t in live.values()) and torch.cuda.is_available()
        self._free: queue.Queue[Block] = queue.Queue()
        for _ in range(2):
            self._free.put(
                Block(
                    {
                        n: torch.empty((self.block, *t.shape), dtype=t.dtype, pin_memory=cuda)
                        for n, t in live.items()
                    },
                    torch.empty(self.block, dtype=torch.float64, pin_memory=cuda),
                    np.zeros(self.block, np.int64),
                    pinned=cuda,
                )
            )
        self._current: Block | None = None
        self._filled = 0
        # The first block after a resume ends at a chunk boundary, so later ones are whole chunks.
        aligned = self.block % STEP_BLOCK == 0
        self._room = self.block - self._index % STEP_BLOCK if aligned else self.block
        self._jobs: queue.Queue[tuple[int, int, Block] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="conjugacy-record", daemon=True)
        self._thread.start()

    # training thread

    @property
    def next_step(self) -> int:
        """The optimizer step the next `step()` call stands for."""
        return self._last + 1

    def step(self, loss: Any = None, *, step: int | None = None) -> None:
        """Call after each optimizer step: snapshot the tensors if the step is a multiple of every.

        `loss` (None, a float or a 0-d tensor) is stored with the snapshot;
        `step` is the optimizer step just taken (default: one more than the
        last). A step that skips a snapshot is an error.
        """
        self._check()
        if not self.writing and not self._gather:
            return  # another rank writes
        if step is None:
            step = self._last + 1
        elif step <= self._last:
            raise RecordError(f"record: step {step} after step {self._last}; steps must increase")
        due = (self._last // self.every + 1) * self.every
        if step > due:
            raise RecordError(
                f"record: step {step} follows step {self._last}, so the snapshot of step {due} "
                "was never taken: call rec.step() after every optimizer step"
            )
        self._last = step
        if step % self.every == 0:
            self._snapshot(step, loss)

    def _snapshot(self, step: int, loss: Any) -> None:
        values = {n: full(self._tensor(n)) if n in self._gather else None for n in self.names}
        if not self.writing:
            return  # a DTensor was gathered: every rank takes part
        if self._current is None:
            self._current = self._free.get()  # waits only if the writer is a block behind
            self._current.events.clear()
            self._current.devices.clear()
        known = self._known
        index = self._index + self._filled
        if index < len(known) and known[index] != step:
            raise RecordError(
                f"record: {self.path}: snapshot {index} of init {self.store.init} is step "
                f"{step}, the store's other inits have step {int(known[index])} there; runs that "
                "share a store record the same steps"
            )
        block, row = self._current, self._filled
        for name in self.names:
            src = values[name]
            if src is None:
                src = self._tensor(name).detach()
            if src.device.type == "cpu" and src.dtype == block.tensors[name].dtype:
                # A plain memcpy in this thread: torch's copy_ would wake its thread pool.
                np.copyto(block.bits[name][row : row + 1], raw(src))
            else:  # from a GPU: queued on its stream, into pinned memory
                self._device_copy(block, block.tensors[name][row], src)
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise RecordError(f"record: loss has {loss.numel()} values; expected one")
            src = loss.detach().reshape(())
            if src.device.type == "cpu":
                block.losses[row] = src.item()
            else:
                self._device_copy(block, block.loss[row], src.to(torch.float64))
        else:
            block.losses[row] = math.nan if loss is None else float(loss)
        block.steps[row] = step
        self._filled += 1
        self.last_step = step
        if self._filled == self._room:
            self._hand_over()

    @staticmethod
    def _device_copy(block: Block, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Copy from an accelerator: queued on its stream when the block is pinned."""
        queued = src.is_cuda and block.pinned
        dst.copy_(src, non_blocking=queued)
        if queued:
            block.devices.add(src.device)

    def _hand_over(self) -> None:
        if self._filled == 0:
            return
        block = self._current
        for device in block.devices:  # the writer waits for the copies, not this thread
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            block.events.append(event)
        self._jobs.put((self._index, self._filled, block))
        self._index += self._filled
        self._current, self._filled, self._room = None, 0, self.block

    def _check(self) -> None:
        if self.closed:
            raise RecordError(f"record: the recorder of {self.path} is closed")
        if self.error is not None:
            raise self.error

    # writer thread

    def _work(self) -> None:
        write_queued(self)

    def _write(self, start: int, k: int, block: Block) -> None:
        for event in block.events:
            event.synchronize()
        arrays, diverged = {}, None
        for name, buf in block.tensors.items():
            part = buf[:k]
            if part.dtype not in (torch.float32, torch.float64):
                dtype = (
                    torch.float32 if self.store.specs[name].dtype == np.float32 else torch.float64
                )
                part = part.to(dtype)
            arrays[name] = part.numpy()
            bad = first_bad_row(name, arrays[name])
            if bad is not None and (diverged is None or bad < diverged[0]):
                diverged = [bad, f"non-finite {name}"]
        if diverged is not None:
            diverged[0] = int(block.steps[diverged[0]])
        self.store.write(start, arrays, block.loss[:k].numpy(), block.steps[:k].copy(), diverged)

    # ending

    def flush(self) -> None:
        """Write every snapshot taken so far; returns once they are on disk (and resumable)."""
        self._check()
        if not self.writing:
            return
        self._hand_over()
        self._jobs.join()
        self._check()

    def _stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def close(self) -> str | None:
        """Write what is left and seal the store; returns its status (None off the writing rank).

        `complete`, or `diverged` (a recorded value was not finite; the step
        and tensor are in `diverged_step` and `diverged_reason`), or
        `incomplete` (another init of a shared store lacks snapshots).
        """
        if self.closed:
            return None
        try:
            self.flush()
        finally:
            self._stop()
            self.closed = True
        return self.store.seal() if self.store is not None else None

    def abort(self) -> None:
        """Write what is buffered but leave the store unsealed (resumable; readers refuse it)."""
        if self.closed:
            return
        try:
            if self.writing and self.error is None:
                self._hand_over()
                self._jobs.join()
        finally:
            self._stop()
            self.closed = True

    def __enter__(self) -> ModelRecorder:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def record(
    path: str | Path,
    model: torch.nn.Module,
    tensors: str | list[str] | tuple[str, ...] | None = None,
    *,
    every: int = 1,
    init: int | None = None,
    steps: int | None = None,
    start: int | None = None,
    attrs: dict[str, Any] | None = None,
    resume: bool = False,
    rank: int | None = None,
) -> ModelRecorder:
    """Record tensors of `model` into a trajectory store at `path`; call `rec.step()` per update.

    tensors: parameter or buffer names, exact or fnmatch globs
        ("blocks.*.mlp.W_out"); None records every parameter. A name that
        matches nothing stops here, listing the model's names.
    every: snapshot every `every`-th optimizer step (steps that are multiples of it).
    init: this run's index along the store's `init` dimension: several runs
        (of one seed) share a store, one after another; init 0 (not resumed)
        starts it anew, the others join it. None: the store is this run's
        alone (an old store of ours at `path` is replaced).
    steps: the optimizer step training will end at, if known (pre-allocates);
        the store grows past it and is cut to what was recorded.
    start: the optimizer step the model is at now (default 0, or with
        `resume` the last step on disk). The model is snapshotted now when
        `start` is a multiple of `every`.
    attrs: JSON provenance attributes of your own (seed, config, ...); the
        package versions are added.
    resume: continue the store at `path` after a crash: with `start`, training
        resumes at that step (snapshots after it are written again; a lost
        snapshot is an error); without, right after the last snapshot on disk
        (`rec.last_step`). A path with no store starts a new one.
    rank: under torch.distributed, the rank that writes (default 0); the
        others only count steps (and take part in gathering DTensors).

    Use it as a context manager (sealed at the end; an exception leaves the
    store unsealed for `resume`), or call `close()`.
    """
    return ModelRecorder(
        path,
        model,
        tensors,
        every=every,
        init=init,
        steps=steps,
        start=start,
        attrs=attrs,
        resume=resume,
        rank=rank,
    )


__all__ = ["ModelRecorder", "RecordError", "StoreError", "record"]
