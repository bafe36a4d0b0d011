"""How far the workflow is from its compute floor: process starts, imports, scheduling.

For an experiment config (default config/experiments/fcn_width_quick.yaml;
--full adds fcn_width.yaml, about 6 min a run), in one run of this script:

- workflow: `snakemake --cores 2 --configfile CONFIG` in a fresh copy of the
  project (the files tests/conftest.py `copy_project` copies), wall time, for
  each B of --seeds-per-job: a number gives every condition blocks of B seeds
  (1 is the old structure: one training and one Koopman job per seed),
  `config` keeps the blocks the config sets (its conditions may set their own);
- floor: the same trainings and decompositions back to back inside one Python
  process per core (2 processes with OMP_NUM_THREADS=1, each taking every
  other (condition, seed): per condition its seeds trained as one block, as
  a training job trains its block, then their spectra), wall time; each
  process also times every block and spectrum it computes (a seed's
  training time is its share of its block).

With --slurm the workflow goes through a running SLURM cluster instead
(profiles/slurm and the test cluster's site profile tests/slurm/site; the
floor stays local): `bash benchmarks/slurm_overhead.sh --workflow-overhead`
starts the test cluster of tests/slurm and runs this with --slurm. The SLURM
jobs submitted (bundles included) are counted from their logs.

Reports wall(workflow) / wall(floor) per B, and per job the seconds a job's
benchmark (Snakemake's `s`) spends beyond the compute of its seeds (the floor's
time for the same seeds): process start, imports, dataset load, store checks.
The workflow's wall time also holds compare, figures and summary, which the
floor leaves out (their own jobs' seconds are printed too). Both run the
experiment's core sections only (CORE: no sensitivity, predict, prune,
monitor, companion or windows: extra work the floor does not do). Prints Markdown;
--repeat N gives medians of N runs (the order of the runs alternates).

    python benchmarks/workflow_overhead.py [--full] [--seeds-per-job 1 5 config] [--repeat 1]
        [--config config/experiments/OTHER.yaml] [--slurm]
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

REPO = Path(__file__).resolve().parents[1]
PROJECT_PARTS = ("Snakefile", "workflow", "src", "config", "envs", "profiles")
CORES = 2
SLURM = ["--workflow-profile", "profiles/slurm", "--profile", str(REPO / "tests/slurm/site")]


def copy_project(root: Path) -> Path:
    """The workflow and library copied to `root`, as tests/conftest.py does."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_PARTS:
        src = REPO / name
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(src, root / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy(src, root / name)
    return root


def env() -> dict[str, str]:
    """This interpreter's `python` (and snakemake) first on PATH; the library of the copy."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path}


def read_benchmarks(results: Path) -> dict[str, list[tuple[str, float]]]:
    """{stage: [(job, seconds)]} from the benchmark TSVs of a run."""
    out: dict[str, list[tuple[str, float]]] = {}
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        rel = path.relative_to(results / "benchmarks")
        lines = path.read_text().splitlines()
        seconds = float(lines[-1].split("\t")[0])
        out.setdefault(rel.parts[0], []).append((rel.with_suffix("").as_posix(), seconds))
    return out


# The sections that make the trainings, the spectra and the verdicts; the
# optional stages (sensitivity, predict, prune, monitor, companion, windows)
# add decompositions and trainings that the floor does not run: left out.
CORE = ("experiment", "seeds", "seeds_per_job", "koopman", "compare", "conditions")


def core_config(config: Path, out: Path, seeds_per_job: int | None = None) -> Path:
    """The experiment without its optional stages, written to `out`; with `seeds_per_job`,
    every condition in blocks of that many seeds (the conditions' own block sizes dropped)."""
    import yaml

    raw = yaml.safe_load((REPO / config).read_text())
    cfg = {k: v for k, v in raw.items() if k in CORE}
    if seeds_per_job is not None:
        cfg["seeds_per_job"] = seeds_per_job
    for cond in cfg["conditions"].values():
        if seeds_per_job is not None:
            cond.pop("seeds_per_job", None)
        cond.pop("companion", None)
        if isinstance(cond.get("koopman"), dict):
            cond["koopman"].pop("windows", None)
    cfg.get("koopman", {}).pop("windows", None)
    out.write_text(yaml.safe_dump(cfg))
    return out


def run_workflow(config: Path, seeds_per_job: int | None, slurm: bool = False) -> dict:
    """Wall time of the whole workflow in a fresh copy, and its jobs' benchmark seconds
    (`seeds_per_job` None: the blocks the config sets)."""
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        root = copy_project(Path(tmp) / "project")
        config = core_config(config, root / "bench.yaml", seeds_per_job)
        args = ["snakemake", *(SLURM if slurm else ["--cores", str(CORES)])]
        args += ["--configfile", str(config), "--quiet", "all"]
        start, epoch = time.perf_counter(), time.time()
        run = subprocess.run(args, cwd=root, env=env(), capture_output=True, text=True)
        wall = time.perf_counter() - start
        if run.returncode:
            sys.exit(f"workflow failed:\n{run.stderr[-4000:]}")
        experiment = next((root / "results").iterdir())
        logs = root / ".snakemake" / "slurm_logs"
        submitted = sum(1 for _ in logs.rglob("*.log")) if logs.is_dir() else 0
        # When the last spectrum was sealed: the stages the floor also runs were done.
        sealed = max(f.stat().st_mtime for f in (experiment / "spectra").rglob("*") if f.is_file())
        return {"wall": wall, "jobs": read_benchmarks(experiment), "slurm_jobs": submitted,
                "spectra_done": sealed - epoch}  # fmt: skip


def floor_worker(config: str, part: int, parts: int, out: str) -> None:
    """One process of the floor: every `parts`-th (condition, seed); per condition, its seeds
    trained as one block (as a training job trains its block), then their spectra."""
    t0 = time.perf_counter()
    import torch

    from conjugacy.config import load, option_label
    from conjugacy.config.validation import settings as config_settings
    from conjugacy.koopman.spectrum import KoopmanOptions, write_spectrum
    from conjugacy.memory import settle_allocator
    from conjugacy.systems.data import cached_datasets
    from conjugacy.training.train import train_block

    torch.set_num_threads(1)
    settle_allocator()  # the allocator settings of `conjugacy train` and `koopman`
    cfg = load(config)
    runs = [(c, s) for c in cfg["conditions"] for s in sorted(cfg["conditions"][c]["seeds"])]
    mine = runs[part::parts]
    times = {"imports": time.perf_counter() - t0, "train": {}, "koopman": {}}
    work = Path(out).parent / f"floor{part}"
    with cached_datasets():
        for name, cond in cfg["conditions"].items():
            seeds = [seed for c, seed in mine if c == name]
            if not seeds:
                continue
            t = time.perf_counter()
            outs = [work / f"{name}-{seed}.zarr" for seed in seeds]
            stores = train_block(cond, seeds, outs, cfg["experiment"], name, False)
            share = (time.perf_counter() - t) / len(seeds)  # a seed's share of its block
            times["train"].update({f"{name}/{seed}": share for seed in seeds})
            given = {k: v for k, v in cond["koopman"].items() if k != "windows"}
            opts = KoopmanOptions.from_settings(config_settings("koopman", given, option_label))
            for seed, store in zip(seeds, stores, strict=True):
                t = time.perf_counter()
                label = {"condition": name, "seed": seed}
                write_spectrum(store, work / f"{name}-{seed}.spec.zarr", opts, True, label=label)
                times["koopman"][f"{name}/{seed}"] = time.perf_counter() - t
    Path(out).write_text(json.dumps(times))


def run_floor(config: Path) -> dict:
    """Wall time of CORES floor processes at once, and their per-run compute seconds."""
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    pyenv = {**env(), **threads, "PYTHONPATH": str(REPO / "src")}
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        config = core_config(config, Path(tmp) / "bench.yaml")
        outs = [Path(tmp) / f"times{i}.json" for i in range(CORES)]
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--floor-worker",
                    str(config),
                    str(i),
                    str(CORES),
                    str(out),
                ],
                env=pyenv,
                cwd=REPO,
            )  # fmt: skip
            for i, out in enumerate(outs)
        ]
        if any(p.wait() for p in procs):
            sys.exit("a floor process failed")
        wall = time.perf_counter() - start
        times = [json.loads(out.read_text()) for out in outs]
    merged = {
        stage: {k: v for t in times for k, v in t[stage].items()} for stage in ("train", "koopman")
    }
    return {"wall": wall, "imports": [t["imports"] for t in times], **merged}


def seeds_of(job: str) -> tuple[str, list[int]]:
    """(condition, seeds) of a benchmark name: train/<condition>/seed3 or .../seed0-4."""
    _, condition, label = job.split("/")
    first, _, last = label.removeprefix("seed").partition("-")
    return condition, [int(first)] if not last else list(range(int(first), int(last) + 1))


def overhead(run: dict, floor: dict, stage: str) -> tuple[int, float, float]:
    """(jobs, median job seconds, median job seconds minus the floor's for its seeds)."""
    jobs = run["jobs"].get(stage, [])
    extra = []
    for job, seconds in jobs:
        condition, block = seeds_of(job)
        compute = sum(floor[stage].get(f"{condition}/{s}", 0.0) for s in block)
        extra.append(seconds - compute)
    if not jobs:
        return 0, float("nan"), float("nan")
    return len(jobs), statistics.median(s for _, s in jobs), statistics.median(extra)


def check_slurm() -> None:
    """Exit with a one-line reason unless a SLURM cluster answers."""
    if not shutil.which("sbatch"):
        sys.exit(
            "--slurm: no sbatch on PATH (bash benchmarks/slurm_overhead.sh --workflow-overhead)"
        )
    probe = subprocess.run(["sinfo", "-h"], capture_output=True, text=True)
    if probe.returncode or not probe.stdout.strip():
        sys.exit(
            "--slurm: no SLURM cluster answers sinfo; `bash benchmarks/slurm_overhead.sh "
            "--workflow-overhead` starts the test cluster and runs this with --slurm"
        )


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def block_size(value: str) -> int | str:
    """A --seeds-per-job value: a positive number of seeds, or `config`."""
    if value == "config":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a positive integer nor 'config'")
    return int(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="also fcn_width.yaml (about 6 min a run)")
    p.add_argument(
        "--seeds-per-job",
        type=block_size,
        nargs="+",
        default=[1, 5],
        help="seeds per job of every condition, or `config`: the blocks the config sets",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each; medians are reported")
    p.add_argument("--config", type=Path, nargs="+", help="other configs (relative to the repo)")
    p.add_argument(
        "--slurm",
        action="store_true",
        help="the workflow through a running SLURM cluster (profiles/slurm, tests/slurm/site)",
    )
    p.add_argument("--floor-worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.floor_worker:
        config, part, parts, out = args.floor_worker
        floor_worker(config, int(part), int(parts), out)
        return
    configs = [Path("config/experiments/fcn_width_quick.yaml")]
    if args.full:
        configs.append(Path("config/experiments/fcn_width.yaml"))
    configs = args.config or configs
    if args.slurm:
        check_slurm()
    where = "through SLURM (profiles/slurm)" if args.slurm else f"--cores {CORES}"
    print(f"workflow {where}; load average before: {load_average()} ({os.cpu_count()} CPUs)\n")
    for config in configs:
        walls: dict[str, list[float]] = {}
        spectra_done: dict[str, list[float]] = {}
        last: dict[str, dict] = {}
        for r in range(args.repeat):
            order = [("floor", None)] + [(f"B={b}", b) for b in args.seeds_per_job]
            for name, b in order if r % 2 == 0 else order[::-1]:
                if b is None:
                    result = run_floor(config)
                else:
                    blocks = None if b == "config" else b
                    result = run_workflow(config, blocks, args.slurm)
                walls.setdefault(name, []).append(result["wall"])
                if b is not None:
                    spectra_done.setdefault(name, []).append(result["spectra_done"])
                last[name] = result
                print(f"  {config.name} {name} run {r + 1}: {result['wall']:.1f} s "
                      f"(load {load_average()})", flush=True)  # fmt: skip
        floor = statistics.median(walls["floor"])
        print(f"\n### {config}\n")
        runs = ", ".join(f"{w:.1f}" for w in walls["floor"])
        imports = ", ".join(f"{t:.1f}" for t in last["floor"]["imports"])
        train_s, koopman_s = (sum(last["floor"][st].values()) for st in ("train", "koopman"))
        print(
            f"floor (train + spectrum of every seed, {CORES} processes): median {floor:.1f} s "
            f"of {len(walls['floor'])} ({runs}); imports per process {imports} s; "
            f"compute summed over processes: train {train_s:.1f} s, spectra {koopman_s:.1f} s\n"
        )
        print(
            "| seeds_per_job | workflow wall, s (median) | runs | ratio to floor "
            "| last spectrum at, s (ratio) | train jobs | s/job | s/job beyond compute "
            "| koopman jobs | s/job | s/job beyond compute | other jobs, s | SLURM jobs |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for b in args.seeds_per_job:
            name = f"B={b}"
            wall = statistics.median(walls[name])
            tr = overhead(last[name], last["floor"], "train")
            ko = overhead(last[name], last["floor"], "koopman")
            other = sum(s for st, jobs in last[name]["jobs"].items()
                        if st not in ("train", "koopman") for _, s in jobs)  # fmt: skip
            done = statistics.median(spectra_done[name])
            print(f"| {b} | {wall:.1f} | {', '.join(f'{w:.1f}' for w in walls[name])} "
                  f"| {wall / floor:.2f} | {done:.1f} ({done / floor:.2f}) "
                  f"| {tr[0]} | {tr[1]:.2f} | {tr[2]:.2f} "
                  f"| {ko[0]} | {ko[1]:.2f} | {ko[2]:.2f} | {other:.1f} "
                  f"| {last[name]['slurm_jobs']} |")  # fmt: skip
        print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
