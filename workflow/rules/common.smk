# Config validation and every input function and path helper of the workflow.
import errno
import json
import re
import shlex
import sys
from pathlib import Path

# The workflow and its jobs use the library of this checkout (so the code
# hashes below describe the code that runs), with the `python` on PATH: the
# activated venv, or the rule's conda env under --sdm conda.
SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))

from conjugacy.config import (
    ConfigError,
    condition_pairs,
    resolve,
    training_config,
    training_json,
    window_bounds,
)
from conjugacy.provenance import code_hash

try:
    CONFIG = resolve(config)
except ConfigError as exc:
    raise WorkflowError(f"invalid config: {exc}") from None

CONDITIONS = CONFIG["conditions"]
RESULTS = f"results/{CONFIG['experiment']}"
ENV = "../../envs/conjugacy.yaml"
# One BLAS/torch thread per declared job thread: parallelism comes from jobs.
JOB_ENV = (
    "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
    f" PYTHONPATH={shlex.quote(str(SRC))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"
)
CONJUGACY = f"{JOB_ENV} python -m conjugacy"
# Training sees only the GPUs it holds: gpu_slot.py sets CUDA_VISIBLE_DEVICES
# to {resources.gpu} devices that no other job holds (none for CPU jobs).
GPU_SLOT = shlex.quote(str(Path(workflow.basedir) / "workflow/scripts/gpu_slot.py"))
CONJUGACY_ON_GPUS = f"{JOB_ENV} python {GPU_SLOT} {{resources.gpu}} python -m conjugacy"


wildcard_constraints:
    condition="|".join(CONDITIONS),
    seed=r"\d+",


def stage_code(stage):
    """Hash of the library code of a stage, as a param: edited code reruns the stage."""
    return code_hash(stage, SRC / "conjugacy")


def seeds(condition):
    return CONDITIONS[condition]["seeds"]


def runs():
    """Every (condition, seed) of the experiment."""
    return [(c, s) for c in CONDITIONS for s in seeds(c)]


def trajectory(condition, seed):
    return f"{RESULTS}/trajectories/{condition}/seed{seed}.zarr"


def spectrum(condition, seed):
    return f"{RESULTS}/spectra/{condition}/seed{seed}.zarr"


def checkpoint_dir(condition, seed):
    """Working store and checkpoints of one training: a restarted job resumes from here."""
    return f"{RESULTS}/checkpoints/{condition}/seed{seed}"


def all_trajectories():
    return [trajectory(c, s) for c, s in runs()]


def all_spectra():
    return [spectrum(c, s) for c, s in runs()]


FIGURES = [
    f"{RESULTS}/figures/{name}.png"
    for name in ("spectra", "distances", "w_distributions", "loss")
]


SUMMARY = f"{RESULTS}/summary.md"


def final_outputs():
    return [
        f"{RESULTS}/conjugacy.csv",
        f"{RESULTS}/distances.csv",
        *FIGURES,
        SUMMARY,
        *companion_outputs(),
        *window_outputs(),
        *prune_outputs(),
        *monitor_outputs(),
        *predict_outputs(),
    ]


def prune_stores():
    """Prune store of every seed of every condition named in the `prune` section."""
    names = CONFIG["prune"]["conditions"] if "prune" in CONFIG else []
    return [f"{RESULTS}/prune/{c}/seed{s}.zarr" for c in names for s in seeds(c)]


def prune_outputs():
    if "prune" not in CONFIG:
        return []
    return [f"{RESULTS}/prune.csv", f"{RESULTS}/figures/prune.png"]


def prune_args():
    """The `prune` section as `conjugacy prune` options."""
    if "prune" not in CONFIG:
        return ""
    p = CONFIG["prune"]
    args = [
        f"--window {p['window'][0]}:{p['window'][1]}",
        f"--rank {p['rank']}",
        "--sparsities " + ",".join(str(s) for s in p["sparsities"]),
        f"--finetune-steps {p['finetune_steps']}",
    ]
    if p["finetune_lr"] is not None:
        args.append(f"--finetune-lr {p['finetune_lr']}")
    return " ".join(args)


def predict_conditions():
    """Conditions named in the `predict` section (Koopman training)."""
    return CONFIG["predict"]["conditions"] if "predict" in CONFIG else []


def predict_stores():
    """Prediction store of every seed of every condition of the `predict` section."""
    return [
        f"{RESULTS}/predict/{c}/seed{s}.zarr"
        for c in predict_conditions()
        for s in seeds(c)
    ]


def accelerate_stores():
    """Accelerated-training curves of every condition of the `predict` section (first seed)."""
    return [f"{RESULTS}/accelerate/{c}.zarr" for c in predict_conditions()]


def predict_outputs():
    if "predict" not in CONFIG:
        return []
    names = (
        "predict.csv",
        "accelerate.csv",
        "figures/predict.png",
        "figures/accelerate.png",
    )
    return [f"{RESULTS}/{n}" for n in names]


def predict_args():
    """The `predict` section's schedule as `conjugacy predict` options."""
    if "predict" not in CONFIG:
        return ""
    p = CONFIG["predict"]
    args = [f"--start {p['start']}", f"--rank {p['rank']}"]
    for key in ("windows", "jumps", "methods"):
        args.append(f"--{key} " + " ".join(str(v) for v in p[key]))
    return " ".join(args)


def accelerate_args():
    """The `predict.accelerate` settings as `conjugacy accelerate` options."""
    if "predict" not in CONFIG:
        return ""
    a = CONFIG["predict"]["accelerate"]
    args = [
        f"--{k.replace('_', '-')} {a[k]}"
        for k in ("steps", "k", "window", "jump", "eval_every")
    ]
    args += [f"--optimizer {name}={lr}" for name, lr in a["optimizers"].items()]
    if not a["guard"]:
        args.append("--no-guard")
    return " ".join(args)


def monitor_stores():
    """Monitor store of every seed of every condition named in the `monitor` section."""
    names = CONFIG["monitor"]["conditions"] if "monitor" in CONFIG else []
    return [f"{RESULTS}/monitor/{c}/seed{s}.zarr" for c in names for s in seeds(c)]


def monitor_outputs():
    if "monitor" not in CONFIG:
        return []
    return [f"{RESULTS}/monitor.csv", f"{RESULTS}/figures/monitor.png"]


def monitor_args():
    """The `monitor` section as `conjugacy monitor` options."""
    if "monitor" not in CONFIG:
        return ""
    m = CONFIG["monitor"]
    keys = ("window", "stride", "delays", "rank", "leading", "radius", "consecutive")
    args = [f"--{k} {m[k]}" for k in keys]
    args += [f"--unstable {m['unstable']}", f"--patience {m['patience']}"]
    args.append(f"--min-delta {m['min_delta']}")
    args += [f"--observable {shlex.quote(o)}" for o in m["observables"] or []]
    return " ".join(args)


def companion_conditions():
    """Conditions with a long-run companion (Transformer train/test accuracy)."""
    return [c for c, cond in CONDITIONS.items() if cond.get("companion")]


def companion_outputs():
    """The accuracy figure, when some condition has a companion."""
    return [f"{RESULTS}/figures/accuracy.png"] if companion_conditions() else []


def companion_spec(wildcards):
    """Training settings plus the companion block as a shell word (its cache key)."""
    cond = CONDITIONS[wildcards.condition]
    spec = {**training_config(cond), "companion": cond.get("companion")}
    return shlex.quote(json.dumps(spec, sort_keys=True, separators=(",", ":")))


def train_spec(wildcards):
    """The condition's training settings as a shell word: a changed value reruns training."""
    return shlex.quote(training_json(CONDITIONS[wildcards.condition]))


def train_gpus(wildcards):
    """GPUs a training job requests: the condition's `gpus`, else 1 for device cuda, else 0."""
    cond = CONDITIONS[wildcards.condition]
    return cond.get("gpus", 1 if cond.get("device") == "cuda" else 0)


def train_group(wildcards):
    """Cluster job group of a training job: GPU and CPU jobs are bundled apart."""
    return "train_gpu" if train_gpus(wildcards) else "train"


def store_mb(path):
    """Size of a Zarr store (a directory) in MB.

    A store that does not exist yet raises FileNotFoundError naming it, which
    tells Snakemake to evaluate the resource again once the input exists.
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such Zarr store", str(path))
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def koopman_mem_mb(wildcards, input, attempt):
    """Memory of a Koopman job: 1 GB plus twice its trajectory store, times the attempt."""
    return attempt * (1000 + 2 * round(store_mb(input[0])))


def koopman_gpus(wildcards):
    """GPUs a Koopman job requests: 1 when its accumulation runs on cuda, else 0."""
    return (
        1 if CONDITIONS[wildcards.condition]["koopman"].get("device") == "cuda" else 0
    )


def koopman_args(wildcards):
    """The condition's Koopman settings as `conjugacy koopman` options."""
    k = CONDITIONS[wildcards.condition]["koopman"]
    args = [f"--delays {k['delays']}", f"--rank {k['rank']}"]
    args += [f"--observable {shlex.quote(o)}" for o in k["observables"] or []]
    if k["window"]:
        args.append(f"--window {k['window'][0]}:{k['window'][1]}")
    if k["pca"]:
        args.append(f"--pca {k['pca']}")
    if k.get("variant", "exact") != "exact":
        args.append(f"--variant {k['variant']}")
    if k.get("device", "cpu") != "cpu":
        args.append(f"--device {k['device']}")
    if k.get("modes"):
        args.append("--modes")
    return " ".join(args)


def windowed():
    """Conditions whose Koopman settings ask for successive windows (koopman.windows)."""
    return [c for c in CONDITIONS if CONDITIONS[c]["koopman"].get("windows")]


def window_spectrum(condition, seed, k):
    return f"{RESULTS}/spectra/{condition}/seed{seed}/window{k}.zarr"


def all_window_spectra():
    return [
        window_spectrum(c, s, k)
        for c in windowed()
        for s in seeds(c)
        for k in range(CONDITIONS[c]["koopman"]["windows"]["count"])
    ]


WINDOW_TABLES = [
    f"{RESULTS}/windows/{name}"
    for name in ("windows_successive.csv", "windows_transitions.csv", "windows_all.csv")
]
WINDOW_FIGURES = [
    f"{RESULTS}/figures/{name}.png"
    for name in ("windows_successive", "windows_heatmap")
]


def window_outputs():
    """The windows stage's tables and figures, when some condition has windows."""
    return [*WINDOW_TABLES, *WINDOW_FIGURES] if windowed() else []


def koopman_window_args(wildcards):
    """The condition's Koopman options, with --window set to its window k."""
    k = CONDITIONS[wildcards.condition]["koopman"]
    start, stop = window_bounds(k["windows"])[int(wildcards.window)]
    plain = re.sub(r"--window \d+:\d+", "", koopman_args(wildcards)).strip()
    return f"{plain} --window {start}:{stop}"


def windows_args():
    """The compare settings (alpha, margin, permutations, correction) for the windows stage."""
    c = CONFIG["compare"]
    return (
        f"--alpha {c['alpha']} --max-ratio {c['max_ratio']}"
        f" --permutations {c['permutations']} --correction {c.get('correction', 'holm')}"
    )


def compare_args():
    c = CONFIG["compare"]
    args = [
        f"--pair {shlex.quote(a)}:{shlex.quote(b)}" for a, b in condition_pairs(CONFIG)
    ]
    args += [
        f"--alpha {c['alpha']}",
        f"--max-ratio {c['max_ratio']}",
        f"--permutations {c['permutations']}",
        f"--correction {c['correction']}",
    ]
    return " ".join(args)
