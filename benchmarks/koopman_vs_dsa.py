"""`conjugacy koopman` vs DSA's DMD, side by side in one run.

DSA (`dsa-metric`, Ostrow et al., "Beyond geometry: comparing the temporal
structure of computation in neural circuits with dynamical similarity
analysis") fits a delay-embedded (HAVOK) DMD per system in torch and
compares the eigenvalues of the fitted matrices by a Wasserstein distance,
the closest published peer of this project's Koopman stage.

The data: a linear system of known eigenvalues (five conjugate pairs, rank
10), its 10-dimensional state mapped into V values by a random map with
orthonormal rows, no noise, written as float64 with the project's
TrajectoryWriter (the layout training writes), INITS inits of STEPS steps
each from random starts. Two sizes: the fcn_width size (10 x 1000 x 400,
the pooled fc2.weight of one seed) and a wide one (10 x 100 x 65 536). On each
store, each method in its own fresh process under /usr/bin/time, so that its
peak RSS is its own:

- ours: `python -m conjugacy koopman STORE -o SPECTRUM --delays 8 --rank 10`;
- DSA: the store loaded in memory as a (inits, steps, values) array, the inits
  as DSA's trials, `DSA.DMD(data, n_delays=9, rank=10, device="cpu").fit()`
  and the eigenvalues of the fitted `A_v` (what DSA's SimilarityTransformDist
  compares). DSA's `n_delays` counts the copies of the state (1: no
  embedding), ours `--delays` the copies added, so both lift into the same
  9 x V dimensions.

Wall time is the whole process (interpreter start, imports and, for DSA,
loading the store included); CPU time (user + system) is beside it. The
eigenvalue error is the largest distance between computed and true
eigenvalues after an optimal matching. A method that refuses or fails is
reported with the first line of its error, its time and peak memory until
then. Prints a Markdown table; --out writes every number as JSON.

    python benchmarks/koopman_vs_dsa.py --out dsa.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from koopman_vs_pydmd import max_error  # benchmarks/ is on sys.path when run as a script

DELAYS = 8  # ours: copies added; DSA's n_delays = DELAYS + 1 copies in all
RANK = 10
# (modulus, angle) of the five conjugate pairs: slow enough that 1000 steps keep every
# mode far above rounding (0.99^1000 = 4e-5).
PAIRS = ((0.999, 0.05), (0.998, 0.15), (0.997, 0.4), (0.995, 0.8), (0.99, 1.5))
CASES = {"fcn_width": (10, 1000, 400), "wide": (10, 100, 65_536)}  # inits, steps, values
METHODS = ("ours", "dsa")


def true_eigenvalues() -> np.ndarray:
    return np.array([m * np.exp(s * 1j * a) for m, a in PAIRS for s in (1, -1)])


def trajectories(inits: int, steps: int, values: int, seed: int = 0) -> np.ndarray:
    """(inits, steps, values) float64: the real-form system from random starts, mapped to V."""
    r = 2 * len(PAIRS)
    a = np.zeros((r, r))
    for i, (m, t) in enumerate(PAIRS):
        a[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = m * np.array(
            [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        )
    rng = np.random.default_rng(seed)
    z = np.empty((inits, steps, r))
    z[:, 0] = rng.uniform(0.5, 1.0, (inits, r)) * rng.choice([-1, 1], (inits, r))
    for t in range(1, steps):
        z[:, t] = z[:, t - 1] @ a.T
    lift, _ = np.linalg.qr(rng.standard_normal((values, r)))  # orthonormal columns
    return z @ lift.T


def make_store(path: Path, data: np.ndarray) -> None:
    from conjugacy.stores.contract import TrajectoryWriter

    inits, steps, values = data.shape
    attrs = {"experiment": "bench", "condition": "synthetic", "seed": 0}
    writer = TrajectoryWriter(path, {"w": (values,)}, list(range(steps)), inits, "float64", attrs)
    writer.write(0, {"w": data}, np.zeros((inits, steps)))
    writer.close()


def dsa_child(store: Path, out: Path) -> None:
    """Body of the `--child` process: DSA's DMD on the store in memory; eigenvalues or error."""
    import torch
    import zarr
    from DSA import DMD

    data = np.asarray(zarr.open_array(store / "w", mode="r")[:])
    try:
        dmd = DMD(data, n_delays=DELAYS + 1, rank=RANK, device="cpu")
        dmd.fit()
        eig = torch.linalg.eig(dmd.A_v).eigenvalues.cpu().numpy()
    except Exception as exc:  # a refusal is a result: its message is recorded
        first = (str(exc).strip().splitlines() or [""])[0].strip()
        out.write_text(json.dumps({"error": f"{type(exc).__name__}: {first}"}))
        return
    out.write_text(json.dumps({"eig": [[z.real, z.imag] for z in eig.tolist()]}))


def run_one(method: str, store: Path, work: Path) -> dict:
    """Wall and CPU seconds, peak RSS (MiB), and eigenvalues or error of one fresh process."""
    out = work / f"{method}.json"
    out.unlink(missing_ok=True)
    spectrum = work / "spectrum.zarr"
    shutil.rmtree(spectrum, ignore_errors=True)
    if method == "ours":
        cmd = [sys.executable, "-m", "conjugacy", "koopman", str(store), "-o", str(spectrum)]
        cmd += ["--delays", str(DELAYS), "--rank", str(RANK)]
    else:
        cmd = [sys.executable, __file__, "--child", method, str(store), str(out)]
    # Through /usr/bin/time: Linux carries ru_maxrss across exec, so a child forked straight
    # from this process would report at least this process's RSS.
    rss = work / "maxrss.txt"
    cmd = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss), *cmd]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    kib, user, system = rss.read_text().split()[-3:]
    res = {"s": seconds, "cpu": float(user) + float(system), "mib": int(kib) / 1024}
    res["load"] = os.getloadavg()[0]  # 1-minute load average of the machine after the run
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        res["error"] = f"exit {proc.returncode}: {lines[-1] if lines else 'no message'}"
    elif method == "ours":
        from conjugacy.stores.contract import open_spectrum

        res["eig"] = np.asarray(open_spectrum(spectrum)["eigenvalues"].values)
    else:
        got = json.loads(out.read_text())
        if "error" in got:
            res["error"] = got["error"]
        else:
            res["eig"] = np.array([complex(re, im) for re, im in got["eig"]])
    return res


def dsa_needs(inits: int, steps: int, values: int) -> dict:
    """What DSA's fit holds at its peak, from its code, and its shape requirement.

    The array loaded (float64) and DSA's copy of it, the delay embedding H
    (float32, inits x (steps - DELAYS) x (DELAYS + 1) * values), and
    torch.linalg.svd(H.T, full_matrices=False): a column-major copy of H.T
    and U the same size. With several trials DSA reshapes V into H's shape,
    so it needs inits x (steps - DELAYS) >= (DELAYS + 1) x values.
    """
    rows, lifted = inits * (steps - DELAYS), (DELAYS + 1) * values
    gib = (2 * inits * steps * values * 8 + 3 * rows * lifted * 4) / 2**30
    return {"gib": gib, "samples": rows, "lifted": lifted, "fits": rows >= lifted}


def bench(case: str, tmp: Path) -> dict:
    inits, steps, values = CASES[case]
    start = time.perf_counter()
    store = tmp / f"{case}.zarr"
    make_store(store, trajectories(inits, steps, values))
    print(
        f"# {case}: store written in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    truth = true_eigenvalues()
    runs = {}
    for m in METHODS:
        res = run_one(m, store, tmp)
        eig = res.pop("eig", None)
        res["err"] = max_error(eig, truth) if eig is not None else float("nan")
        res["eig"] = [] if eig is None else [[z.real, z.imag] for z in eig.tolist()]
        runs[m] = res
        brief = {k: v for k, v in res.items() if k != "eig"}
        print(f"#   {case} {m}: {json.dumps(brief)}", file=sys.stderr, flush=True)
    shutil.rmtree(store, ignore_errors=True)
    return {
        "case": case,
        "inits": inits,
        "steps": steps,
        "values": values,
        "runs": runs,
        "dsa_needs": dsa_needs(inits, steps, values),
    }


def table(results: list[dict]) -> str:
    head = ["case", "inits x steps x values", "method", "wall s", "CPU s", "peak MiB"]
    head += ["max eig err", "outcome"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for res in results:
        shape = f"{res['inits']} x {res['steps']} x {res['values']}"
        for m, r in res["runs"].items():
            err = f"{r['err']:.1e}" if "error" not in r else ""
            outcome = r.get("error", "ok")
            cells = [res["case"], shape, m, f"{r['s']:.2f}", f"{r['cpu']:.2f}", f"{r['mib']:.0f}"]
            rows.append("| " + " | ".join([*cells, err, outcome]) + " |")
        ours, dsa = res["runs"]["ours"], res["runs"]["dsa"]
        if "error" not in ours and "error" not in dsa:
            notes.append(
                f"- {res['case']}: DSA / ours {dsa['s'] / ours['s']:.1f}x the wall time, "
                f"{dsa['cpu'] / ours['cpu']:.1f}x the CPU time, "
                f"{dsa['mib'] / ours['mib']:.1f}x the peak memory"
            )
        elif "error" in dsa:
            need = res["dsa_needs"]
            notes.append(
                f"- {res['case']}: DSA failed after {dsa['s']:.1f} s at {dsa['mib']:.0f} MiB; "
                f"its fit holds about {need['gib']:.1f} GiB (from its code) and needs inits x "
                f"(steps - {DELAYS}) = {need['samples']} >= {DELAYS + 1} x values = "
                f"{need['lifted']}"
            )
    return "\n".join(rows + [""] + notes)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        dsa_child(Path(sys.argv[3]), Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--tmp", type=Path, default=None, help="where the stores go")
    ap.add_argument("--out", type=Path, help="write every number as JSON here")
    args = ap.parse_args()
    from importlib.metadata import version

    versions = {p: version(p) for p in ("dsa-metric", "torch", "numpy", "conjugacy")}
    before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="conjugacy-dsa-") as tmp:
        results = [bench(case, Path(tmp)) for case in args.cases]
    after = os.getloadavg()
    print(table(results))
    print(
        f"\nLoad average (1, 5, 15 min) before: {before[0]:.1f} {before[1]:.1f} {before[2]:.1f}, "
        f"after: {after[0]:.1f} {after[1]:.1f} {after[2]:.1f}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    if args.out:
        meta = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": f"{platform.node()} {os.cpu_count()} CPUs",
            "load_before": before,
            "load_after": after,
            "versions": versions,
            "delays": DELAYS,
            "rank": RANK,
            "true_eigenvalues": [[z.real, z.imag] for z in true_eigenvalues().tolist()],
        }
        args.out.write_text(json.dumps({**meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
