"""Observables of a trajectory store: selected tensors, flattened, over a step window.

The store is never loaded whole: the Gram route reads it one block of
parameters at a time (every step of those parameters), the covariance route
one block of steps at a time (every parameter, with `delays + 1` steps of
overlap). Blocks hold at most `budget` values, in the stored dtype, and are
read ahead in threads (`readahead` reads) while the caller computes.

A chunk is decoded whole however little of it is asked for, so parameter
blocks are read by span: the blocks that lie in the same chunks (chunks
larger than a block, as other programs write them: 80 MB for 1 init x 200
steps x 100 000 float32 values) are read with one read of their whole
chunks, and handed out one by one as views of it. Each chunk is then decoded
once, and the blocks, hence the results, are bitwise those of reading the
blocks one by one. A span
holds at most SPAN_BLOCKS x `budget` values (or one block): a chunk column
larger than that is read in several spans, each decoding its chunks again.
Memory: the reads hold at most `readahead` + 2 spans at a time (the one
being used, the next one read ahead, the one after it being read).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import xarray as xr

from conjugacy.stores.contract import StoreError, read
from conjugacy.stores.readahead import DEPTH, prefetch

BUDGET = 1 << 23  # values per block (64 MiB as float64, the dtype of every product)
SPAN_BLOCKS = 8  # blocks' worth of values one read may span (256 MiB of float32 by default)


class Observable:
    """Selected tensors of trajectory stores, flattened per snapshot, within a window.

    Several stores (same tensors and steps) are pooled: their inits are read
    side by side, store after store, as the inits of one trajectory.
    """

    def __init__(
        self,
        ds: xr.Dataset | list[xr.Dataset],
        names: list[str],
        window: tuple[int, int] | None = None,
        readahead: int = DEPTH,
        budget: int = BUDGET,
    ) -> None:
        self.stores = list(ds) if isinstance(ds, list | tuple) else [ds]
        ds = self.ds = self.stores[0]
        self.names = names
        self.readahead = readahead
        self.budget = budget  # values per parameter block when the caller names none
        steps = ds["step"].values
        if window is None:
            self.t0, self.t1 = 0, len(steps)
        else:
            self.t0 = int(np.searchsorted(steps, window[0], side="left"))
            self.t1 = int(np.searchsorted(steps, window[1], side="left"))
        self.steps = steps[self.t0 : self.t1]
        self.inits = sum(d.sizes["init"] for d in self.stores)
        self.sizes = {n: int(np.prod(ds[n].shape[2:], dtype=np.int64)) for n in names}
        self.dim = sum(self.sizes.values())

    @property
    def n_steps(self) -> int:
        return self.t1 - self.t0

    def _read(self, name: str, t0: int, t1: int, rows: slice = slice(None)) -> np.ndarray:
        """(inits, t1 - t0, values) block of one tensor in its stored dtype, rows of its first axis.

        Blocks wait in the read-ahead queue as stored (float32 for nets: half
        the memory of float64); the accumulation converts them piece by piece.
        """
        index = (slice(None), slice(self.t0 + t0, self.t0 + t1))
        if self.ds[name].ndim > 2:
            index += (rows,)
        parts = [read(ds, name, index) for ds in self.stores]
        for ds, part in zip(self.stores, parts, strict=True):
            if not np.isfinite(part).all():
                raise StoreError(
                    f"store {ds.encoding.get('source', '?')}: variable {name!r} has non-finite "
                    f"values in steps {self.steps[t0]}..{self.steps[t1 - 1]} (a missing chunk or "
                    "damaged data)"
                )
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return block.reshape(block.shape[0], block.shape[1], -1)

    def inner(self, name: str) -> int:
        """Values per row of the first tensor axis of `name` (the product of its other axes)."""
        return int(np.prod(self.ds[name].shape[3:], dtype=np.int64))

    def param_ranges(self, budget: int | None = None) -> list[tuple[str, slice, int, int]]:
        """The parameter blocks, in order: (tensor, rows of its first axis, first value, values).

        Values are counted over the concatenated flattened observables, so a
        block's values are [first, first + values). Blocks never straddle two
        chunks of the first store; a chunk larger than a block is cut in equal
        blocks.
        """
        budget = self.budget if budget is None else budget
        per_row_steps = self.inits * self.n_steps
        out, offset = [], 0
        for name in self.names:
            var = self.ds[name]
            if var.ndim == 2:
                out.append((name, slice(None), offset, 1))
                offset += 1
                continue
            inner = self.inner(name)
            rows = max(1, budget // max(1, per_row_steps * inner))
            chunk_rows = (var.encoding.get("chunks") or (None, None, rows))[2]
            if rows >= chunk_rows:
                rows -= rows % chunk_rows  # whole chunks only, so no chunk is read twice
                starts = list(range(0, var.shape[2], rows))
            else:  # a chunk in equal pieces, none straddling two chunks
                pieces = -(-chunk_rows // rows)
                starts = [
                    c0 + (min(chunk_rows, var.shape[2] - c0) * i) // pieces
                    for c0 in range(0, var.shape[2], chunk_rows)
                    for i in range(pieces)
                ]
                starts = sorted(set(starts))
            for r0, r1 in zip(starts, [*starts[1:], var.shape[2]], strict=True):
                out.append((name, slice(r0, r1), offset + r0 * inner, (r1 - r0) * inner))
            offset += var.shape[2] * inner
        return out

    def chunk_rows(self, name: str) -> list[int]:
        """Rows of the first tensor axis per chunk of `name`, in every pooled store."""
        out = []
        for ds in self.stores:
            chunks = ds[name].encoding.get("chunks") or ()
            out.append(int(chunks[2]) if len(chunks) > 2 else 1)  # unknown: any row may start one
        return out

    def param_spans(
        self, budget: int | None = None
    ) -> list[tuple[str, slice, list[tuple[int, int]]]]:
        """The parameter blocks grouped into reads: (tensor, rows read, blocks' value ranges).

        A span's blocks are consecutive blocks of one tensor that share chunks:
        a new span starts where a chunk starts in every pooled store, or where
        the span would exceed SPAN_BLOCKS x budget values. Value ranges are
        [start, stop) within the span's flattened values.
        """
        budget = self.budget if budget is None else budget
        limit = SPAN_BLOCKS * budget
        per_row = self.inits * self.n_steps
        spans: list[tuple[str, slice, list[tuple[int, int]]]] = []
        name, chunks, inner = None, [], 1
        for block_name, rows, _, _ in self.param_ranges(budget):
            if self.ds[block_name].ndim == 2:  # one value per step: its own span
                spans.append((block_name, rows, [(0, 1)]))
                name = None
                continue
            if block_name != name:
                name, chunks = block_name, self.chunk_rows(block_name)
                inner = self.inner(name)
            elif any(rows.start % c for c in chunks) and (
                (rows.stop - spans[-1][1].start) * inner * per_row <= limit
            ):  # a chunk the span reads goes on past this block: extend the span
                r0 = spans[-1][1].start
                spans[-1][2].append(((rows.start - r0) * inner, (rows.stop - r0) * inner))
                spans[-1] = (name, slice(r0, rows.stop), spans[-1][2])
                continue
            spans.append((name, rows, [(0, (rows.stop - rows.start) * inner)]))
        return spans

    def read_bytes(self, budget: int | None = None) -> int:
        """The most bytes a pass's reads hold at once: readahead + 2 of its largest read.

        A read is a span of parameter blocks (param_blocks, in the stored
        dtype: up to SPAN_BLOCKS blocks when chunks are large) or a block of
        steps (step_blocks, `budget` float64 values); the larger bounds both.
        """
        budget = self.budget if budget is None else budget
        per_row = self.inits * self.n_steps
        largest = 8 * budget
        for name, rows, _ in self.param_spans(budget):
            var = self.ds[name]
            values = 1 if var.ndim == 2 else (rows.stop - rows.start) * self.inner(name)
            largest = max(largest, values * per_row * var.dtype.itemsize)
        return (self.readahead + 2) * largest

    def param_blocks(self, budget: int | None = None) -> Iterator[np.ndarray]:
        """Every step of a block of parameters at a time: (inits, n_steps, p), read ahead.

        In the stored dtype: convert to float64 before any product. Blocks
        that share chunks are views of one read (`param_spans`).
        """
        spans = self.param_spans(budget)
        tasks = [partial(self._read, name, 0, self.n_steps, rows) for name, rows, _ in spans]
        return _split(prefetch(tasks, self.readahead), [parts for _, _, parts in spans])

    def _step_block(self, a: int, b: int) -> np.ndarray:
        return np.concatenate([self._read(n, a, b) for n in self.names], axis=2, dtype=np.float64)

    def step_blocks(self, overlap: int, budget: int = BUDGET) -> Iterator[tuple[int, np.ndarray]]:
        """Blocks of consecutive snapshots, all parameters: (start, (inits, L, dim)).

        Successive blocks share `overlap` snapshots, so every window of
        overlap + 1 consecutive snapshots lies whole in exactly one block.
        """
        length = max(overlap + 2, budget // max(1, self.inits * self.dim))
        stride = length - overlap
        spans = []
        for a in range(0, max(self.n_steps - overlap, 1), stride):
            b = min(a + length, self.n_steps)
            spans.append((a, b))
            if b == self.n_steps:
                break
        blocks = prefetch([partial(self._step_block, a, b) for a, b in spans], self.readahead)
        return zip([a for a, _ in spans], blocks, strict=True)


def _split(reads: Iterator[np.ndarray], parts: list[list[tuple[int, int]]]) -> Iterator[np.ndarray]:
    """The blocks of each read span, as views of it, in order."""
    for ranges, span in zip(parts, reads, strict=True):
        if len(ranges) == 1:
            yield span
        else:
            for a, b in ranges:
                yield span[:, :, a:b]
        del span  # not kept while the next span is read


def lift(block: np.ndarray, delays: int) -> np.ndarray:
    """Time-delay embedding of (inits, L, P) snapshots: (inits, L - delays, (delays + 1) * P).

    Column t of an init is [x_t, x_t+1, ..., x_t+delays] stacked (delay-major).
    """
    n, length, p = block.shape
    if delays == 0:
        return block
    windows = np.lib.stride_tricks.sliding_window_view(block, delays + 1, axis=1)
    # windows: (inits, L - delays, P, delays + 1) -> delay-major lifted vectors
    return windows.transpose(0, 1, 3, 2).reshape(n, length - delays, (delays + 1) * p)


def lifted_gram(gram: np.ndarray, inits: int, n_steps: int, delays: int) -> np.ndarray:
    """Gram of delay-embedded snapshots from the plain Gram: a sum of shifted blocks.

    gram is (inits*T, inits*T) over snapshots ordered (init, step); the result
    is (inits, m, inits, m) with m = T - delays. Summed block by block in
    float64 (no prefix sums, which would cancel catastrophically).
    """
    g = gram.reshape(inits, n_steps, inits, n_steps)
    m = n_steps - delays
    out = g[:, :m, :, :m].copy()
    for d in range(1, delays + 1):
        out += g[:, d : d + m, :, d : d + m]
    return out


def lift_gram_inplace(
    gram: np.ndarray, inits: int, n_steps: int, delays: int, budget: int = BUDGET
) -> np.ndarray:
    """`lifted_gram` written over the plain Gram itself: returns a view (inits, m, inits, m).

    No second (inits*T)^2 matrix: rows are done in ascending groups, each
    from a copy of the rows it reads (the group and the `delays` after it,
    not yet overwritten), summed in the same order as `lifted_gram`, so the
    result is bitwise the same.
    """
    g = gram.reshape(inits, n_steps, inits, n_steps)
    m = n_steps - delays
    if delays == 0:
        return g
    rows = max(1, budget // max(1, inits * inits * n_steps) - delays)
    for t0 in range(0, m, rows):
        t1 = min(t0 + rows, m)
        src = g[:, t0 : t1 + delays].copy()
        c = t1 - t0
        g[:, t0:t1, :, :m] = src[:, :c, :, :m]
        for d in range(1, delays + 1):
            g[:, t0:t1, :, :m] += src[:, d : d + c, :, d : d + m]
    return g[:, :m, :, :m]
