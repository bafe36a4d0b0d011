"""Buffer per-step snapshots and write them to the trajectory store in blocks.

One write per block of steps keeps the number of writes small (each zarr
write has a fixed cost of milliseconds, more than a training step of a small
net), and memory at two blocks whatever the length of training: a block is
as many whole chunks of steps as fit in BUFFER_BYTES. Blocks are
written by a background thread while training goes on (double buffering:
the training thread fills one block while the other is written), so
recording costs a copy per step, not a chunk write. A write that fails
(disk full) is raised again, as is, in the training thread at its next
record, flush or close; `flush` and `close` return only once everything
handed over is on disk (checkpoints rely on it).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping

import numpy as np

from conjugacy.stores.contract import STEP_BLOCK, TrajectoryWriter

Buffers = tuple[dict[str, np.ndarray], np.ndarray]
BUFFER_BYTES = 32 << 20  # per buffer; at least one chunk of steps is buffered


def block_steps(writer: TrajectoryWriter, dtype: str) -> int:
    """Snapshots per write: whole chunks of the store's STEP_BLOCK steps, within BUFFER_BYTES."""
    step_block = STEP_BLOCK
    values = sum(int(np.prod(shape, dtype=np.int64)) for shape in writer.tensors.values())
    per_step = writer.inits * (values * np.dtype(dtype).itemsize + 8)  # + the float64 loss
    chunks = max(1, BUFFER_BYTES // (per_step * step_block))
    return min(chunks * step_block, writer.n_steps)


def write_queued(recorder) -> None:
    """A recorder's writer thread: write the queued (start, k, buffers) blocks in order.

    After a failure it only hands the buffers back (`_free`): the training
    thread raises `recorder.error` at its next call. A None job ends it.
    Shared by the trainer's Recorder and conjugacy.record's ModelRecorder.
    """
    while (job := recorder._jobs.get()) is not None:
        start, k, buffers = job
        try:
            if recorder.error is None:
                recorder._write(start, k, buffers)
        except BaseException as exc:  # noqa: BLE001 - raised again in the training thread
            recorder.error = exc
        finally:
            recorder._free.put(buffers)
            recorder._jobs.task_done()
    recorder._jobs.task_done()


class Recorder:
    """Collects snapshots of the recorded tensors and writes full blocks.

    `background=False` writes each block in the calling thread (the same
    bytes on disk, only slower).
    """

    def __init__(
        self,
        writer: TrajectoryWriter,
        inits: int,
        dtype: str,
        block: int,
        start: int = 0,
        background: bool = True,
    ) -> None:
        self.writer = writer
        self.block = block
        self.start = start  # store index of the first buffered snapshot (> 0 on resume)
        self.filled = 0
        self.error: BaseException | None = None
        self._free: queue.Queue[Buffers] = queue.Queue()
        for _ in range(2 if background else 1):
            self._free.put(
                (
                    {
                        name: np.empty((inits, block, *shape), dtype=dtype)
                        for name, shape in writer.tensors.items()
                    },
                    np.empty((inits, block), dtype=np.float64),
                )
            )
        self._current: Buffers | None = None
        self._jobs: queue.Queue[tuple[int, int, Buffers] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._work, name="recorder", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        write_queued(self)

    def _write(self, start: int, k: int, buffers: Buffers) -> None:
        tensors, loss = buffers
        self.writer.write(start, {n: b[:, :k] for n, b in tensors.items()}, loss[:, :k])

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def record(self, tensors: Mapping[str, np.ndarray], loss: np.ndarray) -> None:
        """Buffer one snapshot: tensors[name] is (inits, *shape), loss is (inits,)."""
        self._raise()
        if self._current is None:
            self._current = self._free.get()  # waits only if the writer is a block behind
        buffers, losses = self._current
        for name, buf in buffers.items():
            buf[:, self.filled] = tensors[name]
        losses[:, self.filled] = loss
        self.filled += 1
        if self.filled == self.block:
            self._hand_over()

    def _hand_over(self) -> None:
        """Queue the buffered block (also a partial last one) for writing."""
        if self.filled == 0:
            return
        job = (self.start, self.filled, self._current)
        self._current = None
        self.start += self.filled
        self.filled = 0
        if self._thread is None:
            try:
                self._write(*job)
            finally:
                self._free.put(job[2])
        else:
            self._jobs.put(job)

    def flush(self) -> None:
        """Write what is buffered and wait until every block is on disk."""
        self._raise()
        self._hand_over()
        if self._thread is not None:
            self._jobs.join()
        self._raise()

    def stop(self) -> None:
        """End the writer thread after the blocks already queued (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def close(self, status: str = "complete", **extra) -> None:
        """Flush the last block, stop the writer and seal the store with `status`."""
        try:
            self.flush()
        finally:
            self.stop()
        if status == "complete" and self.start != self.writer.n_steps:
            raise RuntimeError(f"recorded {self.start} of {self.writer.n_steps} snapshots")
        self.writer.close(status, **extra)
