# Config validation and every input function and path helper of the workflow.
import errno
import shlex
import sys
from pathlib import Path

# The workflow and its jobs use the library of this checkout (so the code
# hashes below describe the code that runs), with the `python` on PATH: the
# activated venv, or the rule's conda env under --sdm conda.
SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))

from conjugacy.config import ConfigError, condition_pairs, resolve, training_json
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


def final_outputs():
    return [f"{RESULTS}/conjugacy.csv", f"{RESULTS}/distances.csv", *FIGURES]


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


def koopman_args(wildcards):
    """The condition's Koopman settings as `conjugacy koopman` options."""
    k = CONDITIONS[wildcards.condition]["koopman"]
    args = [f"--delays {k['delays']}", f"--rank {k['rank']}"]
    args += [f"--observable {shlex.quote(o)}" for o in k["observables"] or []]
    if k["window"]:
        args.append(f"--window {k['window'][0]}:{k['window'][1]}")
    if k["pca"]:
        args.append(f"--pca {k['pca']}")
    return " ".join(args)


def compare_args():
    c = CONFIG["compare"]
    args = [
        f"--pair {shlex.quote(a)}:{shlex.quote(b)}" for a, b in condition_pairs(CONFIG)
    ]
    args += [
        f"--alpha {c['alpha']}",
        f"--max-ratio {c['max_ratio']}",
        f"--permutations {c['permutations']}",
    ]
    return " ".join(args)
