"""The leading-eigenvector solve of the Koopman stage: block Lanczos vs the dense routes.

`conjugacy.koopman.dmd.leading_eigh` with an integer rank r (the bound
`most`) takes the leading r eigenpairs of the n x n covariance (or Gram)
matrix. Timed here, on the same matrix, interleaved, each case `--repeats`
times (medians):

- tridiagonal: the former default, kept as `leading_eigh(..., every=True)`:
  LAPACK dsytrd (O(n^3)), every eigenvalue, r eigenvectors back-transformed;
- dsyevr: `scipy.linalg.eigh(m, subset_by_index=...)` (the reference for the
  errors: r eigenpairs by the same tridiagonalisation);
- arpack: `scipy.sparse.linalg.eigsh(k=r, tol=0)`, matrix-vector products by
  dsymv (single-vector Lanczos; misses copies of a repeated eigenvalue, see
  --degenerate);
- lanczos: the new default, `leading_eigh(m, pick, most=r)` (block Lanczos,
  `krylov_eigh`; the comment line before each case gives its block steps).

Matrices (`--kind`): `delay` is X X^T of a delay-embedded multichannel
signal (p = 50 channels, n / 50 - 1 delays, n + 50 pairs) like a training
trajectory: a large static offset (the initial weights), 6 decaying and 4
damped oscillating modes, noise 1e-3; `slow` is X X^T of data with a large
static offset and singular values decaying only as 1 / i (a hard case for any
Krylov method: small relative gaps). The error is the largest difference
from dsyevr's eigenvalues relative to the largest; `subspace` is
|(I - V_dsyevr V_dsyevr^T) V|_2, the sine of the largest angle between the
two eigenvector subspaces.
CPU time (user, one BLAS thread by default) depends less on the machine's
load than wall time; both are printed.

    python benchmarks/eigensolve.py --n 1000 2000 3250 5000 --rank 10 --repeats 3
    python benchmarks/eigensolve.py --degenerate
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

from conjugacy.koopman.dmd import KRYLOV_EXTRA, leading_eigh


def delay_covariance(n: int, seed: int = 0, channels: int = 50) -> np.ndarray:
    """X X^T of a delay-embedded smooth signal with a static offset (n = channels * (d + 1))."""
    if n % channels:
        raise SystemExit(f"--n {n}: a multiple of {channels} (channels x (delays + 1))")
    rng = np.random.default_rng(seed)
    lags = n // channels
    steps = n + 50 + lags - 1
    t = np.arange(steps)[:, None]
    signal = np.broadcast_to(3.0 * rng.standard_normal(channels), (steps, channels)).copy()
    for rate in rng.uniform(0.995, 0.9995, 6):  # decaying modes, like a loss converging
        signal += rate**t * rng.standard_normal(channels)
    for rate, freq in zip(rng.uniform(0.999, 0.9999, 4), rng.uniform(0.01, 0.3, 4), strict=True):
        phase = rng.uniform(0, 2 * np.pi, channels)
        signal += 0.3 * rate**t * np.cos(freq * t + phase)
    signal += 1e-3 * rng.standard_normal((steps, channels))
    windows = np.lib.stride_tricks.sliding_window_view(signal, lags, axis=0)  # (pairs, p, lags)
    x = np.ascontiguousarray(windows.transpose(0, 2, 1).reshape(-1, n))  # (pairs, n) delay-major
    return x.T @ x


def slow_covariance(n: int, seed: int = 0) -> np.ndarray:
    """X X^T, X (n x n + 50): singular values 1 / i under a static offset 30 times the first."""
    rng = np.random.default_rng(seed)
    pairs = n + 50
    u = np.linalg.qr(rng.standard_normal((n, n)))[0]
    x = (u / np.arange(1, n + 1)) @ rng.standard_normal((n, pairs)) / np.sqrt(pairs)
    offset = rng.standard_normal((n, 1))
    x += 30.0 * offset / np.linalg.norm(offset) / np.sqrt(pairs)
    return x @ x.T


def tridiagonal(m: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    lam, vec = leading_eigh(m, lambda _: r, most=r, every=True)
    return lam[:r], vec


def dsyevr(m: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    n = m.shape[0]
    lam, vec = scipy.linalg.eigh(m, subset_by_index=(n - r, n - 1), driver="evr")
    return lam[::-1], vec[:, ::-1]


def arpack(m: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    n = m.shape[0]
    f = m.T if m.flags.c_contiguous else m  # Fortran order for dsymv

    def matvec(v: np.ndarray) -> np.ndarray:
        return blas.dsymv(1.0, f, v.ravel(), lower=1)

    op = scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    lam, vec = scipy.sparse.linalg.eigsh(op, k=r, which="LA", v0=np.ones(n), tol=0)
    return lam[::-1], vec[:, ::-1]


def lanczos(m: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    return leading_eigh(m, lambda _: r, most=r)


SOLVERS = {"tridiagonal": tridiagonal, "dsyevr": dsyevr, "arpack": arpack, "lanczos": lanczos}


def block_steps(m: np.ndarray, r: int) -> int:
    """Block products m @ Q_j krylov_eigh takes (0: it gave up for the dense route)."""
    import conjugacy.koopman.dmd as dmd

    calls = []
    real = dmd._extend

    def counting(q, v):
        calls.append(v.shape[1])
        return real(q, v)

    dmd._extend = counting
    try:
        found = dmd.krylov_eigh(m, r)
    finally:
        dmd._extend = real
    return len(calls) if found is not None else 0


def run_case(n: int, kind: str, r: int, repeats: int, solvers: list[str]) -> None:
    t0 = time.perf_counter()
    m = delay_covariance(n) if kind == "delay" else slow_covariance(n)
    made = time.perf_counter() - t0
    ref_lam, ref_vec = dsyevr(m, r)
    wall: dict[str, list[float]] = {s: [] for s in solvers}
    cpu: dict[str, list[float]] = {s: [] for s in solvers}
    out = {}
    for _ in range(repeats):
        for name in solvers:
            w0, c0 = time.perf_counter(), time.process_time()
            out[name] = SOLVERS[name](m, r)
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    gaps = ref_lam[r - 1] / ref_lam[0], dsyevr(m, r + 1)[0][r] / ref_lam[r - 1]
    steps = block_steps(m, r)
    print(
        f"<!-- n {n} {kind}: matrix built in {made:.1f} s; lambda_r / lambda_1 = {gaps[0]:.1e}, "
        f"lambda_r+1 / lambda_r = {gaps[1]:.3f}; {steps} block steps of {r + KRYLOV_EXTRA} -->"
    )
    for name in solvers:
        lam, vec = out[name]
        err = np.abs(lam[:r] - ref_lam).max() / ref_lam[0]
        v = vec[:, :r]
        angle = np.linalg.norm(v - ref_vec @ (ref_vec.T @ v), ord=2)
        print(
            f"| {n} | {kind} | {r} | {name} | {np.median(wall[name]):.3f} | "
            f"{np.median(cpu[name]):.3f} | {err:.1e} | {angle:.1e} |"
        )


def degenerate(r: int = 8) -> None:
    """A 6-fold eigenvalue across position r: what each solver returns for the leading r."""
    rng = np.random.default_rng(1)
    n = 600
    lam = np.concatenate([[100.0, 50.0], [10.0] * 6, [5.0, 4.0], np.logspace(0, -8, n - 10)])
    u = np.linalg.qr(rng.standard_normal((n, n)))[0]
    m = (u * lam) @ u.T
    m = (m + m.T) / 2
    print(f"true leading {r}: {lam[:r]}")
    for name in ("arpack", "lanczos", "dsyevr"):
        print(f"{name}: {np.round(SOLVERS[name](m, r)[0][:r], 10)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 3250, 5000])
    ap.add_argument("--kind", nargs="+", default=["delay", "slow"], choices=["delay", "slow"])
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads")
    ap.add_argument("--degenerate", action="store_true", help="only the repeated-eigenvalue case")
    args = ap.parse_args()
    with threadpool_limits(args.threads):
        if args.degenerate:
            degenerate()
            return
        print("| n | matrix | r | solver | wall s | CPU s | eigenvalue error | subspace |")
        print("|---|---|---|---|---|---|---|---|")
        for n in args.n:
            for kind in args.kind:
                run_case(n, kind, args.rank, args.repeats, args.solvers)


if __name__ == "__main__":
    main()
