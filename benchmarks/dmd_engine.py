"""Koopman stage vs the reference scripts' DMD, side by side in one run.

The reference (Redman et al.'s public code) stacks the delay-embedded
snapshots of all inits in memory and takes a dense SVD. Our stage reads the
trajectory store once, block by block, and accumulates one float64 matrix.
Both run on the same store, each in a forked child so that its peak memory
(ru_maxrss above the child's starting RSS) is its own. Prints a Markdown
row per case; copy them into benchmarks/RESULTS.md.

    python benchmarks/dmd_engine.py [--params 20000] [--steps 200] [--inits 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy.optimize import linear_sum_assignment


def make_store(path: Path, params: int, steps: int, inits: int, seed: int = 0) -> None:
    """A float32 trajectory store of a noisy linear system lifted into `params` dims."""
    rng = np.random.default_rng(seed)
    r = 12
    lam = np.concatenate([rng.uniform(0.5, 0.999, r // 2)] * 2)
    a = np.diag(lam)
    lift = rng.standard_normal((params, r)).astype(np.float32)
    offset = rng.standard_normal(params).astype(np.float32)  # a large static part, like weights
    group = zarr.open_group(path, mode="w", zarr_format=3)
    w = group.create_array(
        "w",
        shape=(inits, steps, params),
        chunks=(inits, 64, min(params, 1 << 15)),
        dtype="float32",
        dimension_names=("init", "step", "w_dim0"),
    )
    for i in range(inits):
        x = rng.standard_normal(r)
        traj = np.empty((steps, r))
        for t in range(steps):
            traj[t] = x
            x = a @ x
        w[i] = (traj @ lift.T + offset).astype(np.float32)
    s = group.create_array("step", shape=(steps,), dtype="int64", dimension_names=("step",))
    s[:] = np.arange(steps)
    group.attrs["status"] = "complete"


def ours(path: Path, delays: int, rank: int) -> np.ndarray:
    from conjugacy.koopman.observables import Observable
    from conjugacy.koopman.spectrum import KoopmanOptions, decompose
    from conjugacy.stores.contract import open_trajectory

    obs = Observable(open_trajectory(path), ["w"])
    return decompose(obs, KoopmanOptions(delays=delays, rank=rank))[0].eigenvalues


def reference(path: Path, delays: int, rank: int) -> np.ndarray:
    """The reference scripts' route: time_delay + data_matrices + dmd, all in memory."""
    data = zarr.open_array(Path(path) / "w", mode="r")[:].astype(np.float64)
    n, t, p = data.shape
    m = t - delays
    lifted = np.concatenate([data[:, d : d + m] for d in range(delays + 1)], axis=2)
    x = np.concatenate([lifted[i, :-1] for i in range(n)]).T
    y = np.concatenate([lifted[i, 1:] for i in range(n)]).T
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    u, s, v = u[:, :rank], s[:rank], vh[:rank].T
    return np.linalg.eigvals((u.T @ y @ v) / s)


def _child(fn, args, queue) -> None:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    eig = fn(*args)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    queue.put((seconds, peak / 1024, eig))


def measure(fn, *args) -> tuple[float, float, np.ndarray]:
    """(seconds, peak MiB above start, eigenvalues) of fn(*args) in a forked child."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def max_matched_gap(a: np.ndarray, b: np.ndarray) -> float:
    cost = np.abs(a[:, None] - b[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--inits", type=int, default=10)
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--delays", type=int, nargs="+", default=[0, 4])
    args = ap.parse_args()
    print(
        "| P | inits x steps | delays | ours s | reference s | speed-up | ours MiB "
        "| reference MiB | memory ratio | max eigenvalue gap |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traj.zarr"
        make_store(path, args.params, args.steps, args.inits)
        for delays in args.delays:
            t_ours, m_ours, e_ours = measure(ours, path, delays, args.rank)
            t_ref, m_ref, e_ref = measure(reference, path, delays, args.rank)
            print(
                f"| {args.params} | {args.inits} x {args.steps} | {delays} | {t_ours:.2f} "
                f"| {t_ref:.2f} | {t_ref / t_ours:.1f}x | {m_ours:.0f} | {m_ref:.0f} "
                f"| {m_ref / max(m_ours, 1):.1f}x | {max_matched_gap(e_ours, e_ref):.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
