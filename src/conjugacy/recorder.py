"""Buffer per-step snapshots and write them to the trajectory store in blocks.

One write per block of steps keeps the number of chunk writes (and files)
small, and memory at one block whatever the length of training.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from conjugacy.store import TrajectoryWriter


class Recorder:
    """Collects snapshots of the recorded tensors and flushes full blocks."""

    def __init__(
        self, writer: TrajectoryWriter, inits: int, dtype: str, block: int, start: int = 0
    ) -> None:
        self.writer = writer
        self.block = block
        self.buffers = {
            name: np.empty((inits, block, *shape), dtype=dtype)
            for name, shape in writer.tensors.items()
        }
        self.loss = np.empty((inits, block), dtype=np.float64)
        self.start = start  # store index of the first buffered snapshot (> 0 on resume)
        self.filled = 0

    def record(self, tensors: Mapping[str, np.ndarray], loss: np.ndarray) -> None:
        """Buffer one snapshot: tensors[name] is (inits, *shape), loss is (inits,)."""
        for name, buf in self.buffers.items():
            buf[:, self.filled] = tensors[name]
        self.loss[:, self.filled] = loss
        self.filled += 1
        if self.filled == self.block:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered (also a partial last block)."""
        if self.filled == 0:
            return
        k = self.filled
        self.writer.write(
            self.start, {n: b[:, :k] for n, b in self.buffers.items()}, self.loss[:, :k]
        )
        self.start += k
        self.filled = 0

    def close(self) -> None:
        """Flush the last block and mark the store complete."""
        self.flush()
        if self.start != self.writer.n_steps:
            raise RuntimeError(f"recorded {self.start} of {self.writer.n_steps} snapshots")
        self.writer.close()
