# Config validation and every input function and path helper of the workflow.
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
CONJUGACY = (
    "OMP_NUM_THREADS={threads} OPENBLAS_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
    f" PYTHONPATH={shlex.quote(str(SRC))}${{{{PYTHONPATH:+:$PYTHONPATH}}}} python -m conjugacy"
)


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
    return 1 if CONDITIONS[wildcards.condition].get("device") == "cuda" else 0


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
