"""`conjugacy koopman` vs PyDMD vs a read-only pass, side by side in one run.

The data: a linear system with known eigenvalues (four conjugate pairs and
one real eigenvalue, plus the eigenvalue 1 of a large static offset like
initial weights: rank 10) lifted into P dimensions by a random, nearly
orthonormal map, plus small noise, T snapshots, written chunk by chunk with
the project's TrajectoryWriter (the layout training writes). On that store,
each in its own fresh process under /usr/bin/time, so that its peak RSS is
its own:

- ours: `python -m conjugacy koopman STORE -o SPECTRUM --rank 10`;
- PyDMD: `DMD(svd_rank=10, exact=True)` on the snapshots loaded in memory;
- floor: a read-only pass over every chunk of the store (decode and checksum).

`--layouts` adds the same values in other chunk layouts, as stores written by
other programs have them (`xarray.Dataset.to_zarr`, one chunk per
`--large-values` parameters holding every step: 80 MB of float32 at T = 200
and the default 100 000), each measured by every method in the same run:

- own: training's layout (TrajectoryWriter: 64 steps x 2^21 values per
  chunk, CRC32C checksums, no compression);
- large: chunks of (1 init, T steps, --large-values), CRC32C only (the same
  bytes per value as own: only the chunk shape differs);
- large-zstd: the same chunks with zarr's default codec (zstd level 0), what
  `to_zarr` writes when told nothing;
- own-zstd: own's chunk shape with zstd, the reference for large-zstd.

Wall time is the whole process (interpreter start and imports included, the
same for all three); CPU time (user + system) is reported beside it, as it
depends less on what else runs on the machine. The eigenvalue error is the largest distance between
matched computed and true eigenvalues. Prints Markdown tables of medians.

    python benchmarks/koopman_vs_pydmd.py --params 200000 2000000 --repeats 3
    python benchmarks/koopman_vs_pydmd.py --params 20000000 --only ours floor --repeats 1
    python benchmarks/koopman_vs_pydmd.py --params 2000000 --only ours floor --chunk-values 524288
    python benchmarks/koopman_vs_pydmd.py --params 500000 2000000 --layouts own large large-zstd \
        --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

STEPS = 200
RANK = 10
# (modulus, angle) of the conjugate pairs, and the real eigenvalues besides the offset's 1.
PAIRS = ((0.995, 0.05), (0.98, 0.2), (0.96, 0.5), (0.93, 1.0))
REALS = (0.9,)
SIGNAL = 0.1  # per-entry scale of the dynamics
OFFSET = 1.0  # per-entry scale of the static part: ten times the dynamics
NOISE = 1e-5  # per-entry noise
BLOCK = 1 << 16  # parameters generated and written at a time
METHODS = ("ours", "pydmd", "floor")
LAYOUTS = ("own", "large", "large-zstd", "own-zstd")
LARGE_VALUES = 100_000  # parameters per chunk of the large layouts (x T steps x 1 init)


def true_eigenvalues() -> np.ndarray:
    pairs = [m * np.exp(s * 1j * a) for m, a in PAIRS for s in (1, -1)]
    return np.array([*pairs, *REALS, 1.0], dtype=np.complex128)


def latent(steps: int, seed: int) -> np.ndarray:
    """(steps, 9) trajectory of the real-form linear system from a random start."""
    blocks = [m * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) for m, a in PAIRS]
    r = 2 * len(PAIRS) + len(REALS)
    a = np.zeros((r, r))
    for i, b in enumerate(blocks):
        a[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = b
    for j, lam in enumerate(REALS):
        a[2 * len(PAIRS) + j, 2 * len(PAIRS) + j] = lam
    x = np.random.default_rng([seed, 0]).uniform(0.5, 1.0, r)
    out = np.empty((steps, r))
    for t in range(steps):
        out[t] = x
        x = a @ x
    return out


def make_store(path: Path, params: int, steps: int = STEPS, seed: int = 0) -> None:
    """Write the synthetic trajectory, BLOCK parameters at a time (memory O(steps x BLOCK))."""
    from conjugacy.stores.contract import TrajectoryWriter

    z = latent(steps, seed)
    attrs = {"experiment": "bench", "condition": "synthetic", "seed": seed}
    writer = TrajectoryWriter(path, {"w": (params,)}, list(range(steps)), 1, "float32", attrs)
    arr = writer.group["w"]
    # One block of noise, rolled differently for each block of parameters: drawing 4e9
    # normals for P = 2e7 would take longer than the benchmark itself.
    noise = NOISE * np.random.default_rng([seed, 2]).standard_normal((steps, BLOCK))
    for i, p0 in enumerate(range(0, params, BLOCK)):
        p1 = min(params, p0 + BLOCK)
        rng = np.random.default_rng([seed, 1, i])
        # Columns of N(0, 1/P) are orthonormal up to O(1/sqrt(P)); scaled per entry to SIGNAL.
        lift = rng.standard_normal((z.shape[1], p1 - p0)) * SIGNAL
        block = z @ lift
        block += OFFSET * rng.standard_normal(p1 - p0)
        block += np.roll(noise, 7919 * i, axis=1)[:, : p1 - p0]
        arr[:, :, p0:p1] = block.astype(np.float32)[None]
    writer.write(0, {}, np.zeros((1, steps)))
    writer.close()


def relayout(own: Path, path: Path, layout: str, large_values: int) -> None:
    """The values of the `own` store rewritten by xarray's to_zarr in another chunk layout.

    Appended along the parameter axis one chunk column at a time (memory
    O(T x chunk column)); the chunks are those of LAYOUTS' description.
    """
    import xarray as xr
    import zarr

    from conjugacy.stores.contract import CHECKSUM

    src = zarr.open_array(own / "w", mode="r")
    inits, steps, params = src.shape
    if layout.startswith("large"):
        width = min(large_values, params)
        chunks = (inits, steps, width)
    else:
        width = src.chunks[2]
        chunks = src.chunks
    encoding = {"chunks": chunks}
    if not layout.endswith("zstd"):
        encoding["compressors"] = CHECKSUM
    coords = {"init": np.arange(inits), "step": np.arange(steps)}
    for p0 in range(0, params, width):
        block = src[:, :, p0 : p0 + width]
        ds = xr.Dataset({"w": (("init", "step", "w_dim0"), block)}, coords=coords)
        if p0 == 0:
            ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3, encoding={"w": encoding})
        else:
            ds.to_zarr(path, append_dim="w_dim0", consolidated=False)


def snapshots(path: Path) -> np.ndarray:
    """The (P, T) snapshot matrix in memory, float64: what a PyDMD user hands to fit()."""
    import zarr

    arr = zarr.open_array(path / "w", mode="r")
    return np.ascontiguousarray(arr[0].T, dtype=np.float64)


def read_pass(path: Path) -> float:
    """Decode every chunk of the store once, block of chunk columns by block; sum to use it."""
    import zarr

    arr = zarr.open_array(path / "w", mode="r")
    width = 4 * arr.chunks[2]
    total = 0.0
    for p0 in range(0, arr.shape[2], width):
        total += float(arr[:, :, p0 : p0 + width].sum(dtype=np.float64))
    return total


def child(method: str, store: Path, out: Path) -> None:
    """Body of the `--child` process: one method, eigenvalues to out (.npy)."""
    if method == "pydmd":
        from pydmd import DMD

        dmd = DMD(svd_rank=RANK, exact=True)
        dmd.fit(snapshots(store))
        np.save(out, np.asarray(dmd.eigs))
    elif method == "floor":
        read_pass(store)
        np.save(out, np.zeros(0, dtype=np.complex128))
    else:
        raise ValueError(f"unknown method {method!r}")


def run_one(
    method: str, store: Path, work: Path, device: str | None, threads: int | None = None
) -> dict:
    """Wall seconds, peak RSS (MiB) and eigenvalues of one method in a fresh process."""
    out = work / f"{method}.npy"
    if method == "ours":
        spectrum = work / "spectrum.zarr"
        shutil.rmtree(spectrum, ignore_errors=True)
        cmd = [sys.executable, "-m", "conjugacy", "koopman", str(store), "-o", str(spectrum)]
        cmd += ["--rank", str(RANK), *(["--device", device] if device else [])]
    else:
        cmd = [sys.executable, __file__, "--child", method, str(store), str(out)]
    # Through /usr/bin/time: Linux carries ru_maxrss across exec, so a child forked straight
    # from this (larger) process would report at least this process's RSS.
    rss = work / "maxrss.txt"
    cmd = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss), *cmd]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:  # BLAS threads of every method (the workflow runs its jobs with 1)
        env |= {
            k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        }
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    if method == "ours":
        from conjugacy.stores.contract import open_spectrum

        eig = np.asarray(open_spectrum(spectrum)["eigenvalues"].values)
    else:
        eig = np.load(out)
    kib, user, system = rss.read_text().split()[-3:]
    cpu = float(user) + float(system)
    load = os.getloadavg()[0]  # 1-minute load average of the machine after the run
    return {"s": seconds, "cpu": cpu, "mib": int(kib) / 1024, "load": load, "eig": eig}


def max_error(eig: np.ndarray, truth: np.ndarray) -> float:
    """Largest distance between matched eigenvalues (NaN if the counts differ)."""
    if len(eig) != len(truth):
        return float("nan")
    cost = np.abs(eig[:, None] - truth[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max())


def bench(
    params: int,
    repeats: int,
    methods: list[str],
    tmp: Path,
    device: str | None,
    layouts: list[str],
    large_values: int,
    threads: int | None = None,
) -> list[dict]:
    """One result per layout: medians of `repeats` runs of every method on its store."""
    own = tmp / f"synthetic-{params}.zarr"
    stores, sizes = {}, {}
    for layout in layouts:
        start = time.perf_counter()
        if not own.exists():
            make_store(own, params)
        stores[layout] = own if layout == "own" else tmp / f"synthetic-{params}-{layout}.zarr"
        if layout != "own":
            relayout(own, stores[layout], layout, large_values)
        files = stores[layout].rglob("*")
        sizes[layout] = sum(f.stat().st_size for f in files if f.is_file()) / 2**30
        print(
            f"# P={params} {layout}: store {sizes[layout]:.2f} GiB written in "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    truth = true_eigenvalues()
    runs: dict[str, dict[str, list[dict]]] = {x: {m: [] for m in methods} for x in layouts}
    for r in range(repeats):  # interleaved, so that every method sees the same page cache
        for layout in layouts:
            for m in methods:
                res = run_one(m, stores[layout], tmp, device, threads)
                eig = res.pop("eig")
                res["err"] = max_error(eig, truth) if m != "floor" else float("nan")
                runs[layout][m].append(res)
                print(f"#   run {r} {layout} {m}: {json.dumps(res)}", file=sys.stderr, flush=True)
    for store in {*stores.values(), own}:
        shutil.rmtree(store, ignore_errors=True)
    out = []
    for layout in layouts:
        med = {
            m: {k: statistics.median(x[k] for x in rs) for k in ("s", "cpu", "mib", "err")}
            for m, rs in runs[layout].items()
        }
        out.append(
            {
                "params": params,
                "layout": layout,
                "gib": sizes[layout],
                "repeats": repeats,
                "median": med,
                "runs": runs[layout],
            }
        )
    return out


def table(results: list[dict]) -> str:
    methods = list(results[0]["median"])
    head = ["P", "layout", "store GiB", "runs"]
    for m in methods:
        head += [f"{m} s", f"{m} CPU s", f"{m} MiB"]
        head += [f"{m} max eig err"] if m != "floor" else []
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        cells = [f"{res['params']:.0e}", res["layout"], f"{res['gib']:.2f}", str(res["repeats"])]
        for m in methods:
            med = res["median"][m]
            cells += [f"{med['s']:.2f}", f"{med['cpu']:.2f}", f"{med['mib']:.0f}"]
            if m != "floor":
                cells.append(f"{med['err']:.1e}")
        rows.append("| " + " | ".join(cells) + " |")
    ratios = []
    by = {(res["params"], res["layout"]): res for res in results}
    for res in results:
        med = res["median"]
        parts = []
        refs = ["own", "own-zstd"] if res["layout"] == "large-zstd" else ["own"]
        for ref in [by.get((res["params"], x)) for x in refs]:
            if "ours" in med and ref is not None and ref is not res:
                mine, theirs = med["ours"], ref["median"]["ours"]
                parts.append(
                    f"ours {mine['s'] / theirs['s']:.2f}x the wall time on {ref['layout']} "
                    f"({mine['cpu'] / theirs['cpu']:.2f}x its CPU time)"
                )
        if "ours" in med and "pydmd" in med:
            parts.append(f"{med['pydmd']['s'] / med['ours']['s']:.1f}x faster than PyDMD")
            parts.append(f"{med['pydmd']['cpu'] / med['ours']['cpu']:.1f}x less CPU time")
            parts.append(f"{med['pydmd']['mib'] / med['ours']['mib']:.1f}x less peak memory")
        if "ours" in med and "floor" in med:
            parts.append(f"{med['ours']['s'] / med['floor']['s']:.2f}x the read-only pass")
            parts.append(f"{med['ours']['cpu'] / med['floor']['cpu']:.2f}x its CPU time")
        if parts:
            ratios.append(f"- P = {res['params']:.0e}, {res['layout']}: " + ", ".join(parts))
    return "\n".join(rows + [""] + ratios)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, nargs="+", default=[200_000, 2_000_000])
    ap.add_argument("--repeats", type=int, nargs="+", default=[3], help="per P (last repeats)")
    ap.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--tmp", type=Path, default=None, help="where the stores go (big at 2e7)")
    ap.add_argument("--device", help="passed to `conjugacy koopman --device` (e.g. cuda)")
    ap.add_argument(
        "--threads",
        type=int,
        help="BLAS threads of every method (default: the libraries' own, one per core)",
    )
    ap.add_argument(
        "--layouts",
        nargs="+",
        choices=LAYOUTS,
        default=["own"],
        help="chunk layouts of the same values, each measured in the same run (see above)",
    )
    ap.add_argument(
        "--large-values",
        type=int,
        default=LARGE_VALUES,
        help="parameters per chunk of the large layouts (chunks hold every step)",
    )
    ap.add_argument(
        "--chunk-values",
        type=int,
        help="values per chunk of the synthetic stores (default: training's store.CHUNK_VALUES)",
    )
    args = ap.parse_args()
    if args.chunk_values:
        import conjugacy.stores.contract

        conjugacy.stores.contract.CHUNK_VALUES = args.chunk_values
    results = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="conjugacy-bench-") as tmp:
        for i, params in enumerate(args.params):
            repeats = args.repeats[min(i, len(args.repeats) - 1)]
            results += bench(
                params,
                repeats,
                args.only,
                Path(tmp),
                args.device,
                args.layouts,
                args.large_values,
                args.threads,
            )
    print(table(results))
    loads = [x["load"] for res in results for rs in res["runs"].values() for x in rs]
    print(f"\n1-minute load average after each run: {min(loads):.1f} to {max(loads):.1f}")
    for res in results:  # every run, for the record
        for m, rs in res["runs"].items():
            cells = ", ".join(
                f"{x['s']:.2f} s / {x['cpu']:.2f} CPU s / {x['mib']:.0f} MiB" for x in rs
            )
            print(f"- P = {res['params']:.0e} {res['layout']} {m}: {cells}")


if __name__ == "__main__":
    main()
