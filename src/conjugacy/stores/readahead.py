"""Read ahead: run the next block reads in threads while the caller computes on this one.

Reading a block (zarr chunk I/O, checksum, decompression, the float64 copy)
releases the GIL in the places that cost time, as does BLAS, so one or two
reader threads overlap the reads with the arithmetic. At most `depth` blocks
wait in memory besides the one being used.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

DEPTH = 1  # blocks read ahead by default (2 gained nothing on 2 idle cores, cost a block)


def prefetch(tasks: Iterable[Callable[[], T]], depth: int = DEPTH) -> Iterator[T]:
    """Results of `tasks` in order, with up to `depth` of the next ones running in threads.

    depth 0 runs each task when its result is asked for (no threads). An
    exception in a task is raised where its result is consumed.
    """
    if depth <= 0:
        for task in tasks:
            yield task()
        return
    pending: deque[Future[T]] = deque()
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="readahead") as pool:
        try:
            for task in tasks:
                pending.append(pool.submit(task))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # consumer stopped early or failed: drop queued reads
                future.cancel()
