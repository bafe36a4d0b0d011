# Config loading and validation, shared paths, and the includes of each stage's functions.
import errno
import functools
import hashlib
import json
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
    external_paths,
    resolve,
    training_config,
    training_json,
    window_bounds,
)
from conjugacy.config.work import spectrum_work
from conjugacy.provenance import code_hash

try:
    CONFIG = resolve(config)
    EXTERNAL = [
        c for c, cond in CONFIG["conditions"].items() if cond["system"] == "external"
    ]
    if EXTERNAL:  # the stores of your own runs: checked before any job
        from conjugacy.koopman.spectrum import check_external

        for name in EXTERNAL:
            check_external(name, CONFIG["conditions"][name])
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


def shell_json(value):
    """A setting or a config section as one shell word of canonical JSON (a rule's param)."""
    return shlex.quote(json.dumps(value, sort_keys=True, separators=(",", ":")))


@functools.cache  # one hash per stage and parse: every block rule of a stage asks
def stage_code(stage):
    """Hash of the library code of a stage, as a param: edited code reruns the stage."""
    return code_hash(stage, SRC / "conjugacy")


def seeds(condition):
    return CONDITIONS[condition]["seeds"]


def runs():
    """Every (condition, seed) of the experiment."""
    return [(c, s) for c in CONDITIONS for s in seeds(c)]


def trajectories(condition, seed):
    """The trajectory store(s) of one run: your own (system external) or the train stage's."""
    cond = CONDITIONS[condition]
    if cond["system"] == "external":
        return external_paths(cond, seed)
    return [trajectory(condition, seed)]


def trajectory(condition, seed):
    return f"{RESULTS}/trajectories/{condition}/seed{seed}.zarr"


def spectrum(condition, seed):
    return f"{RESULTS}/spectra/{condition}/seed{seed}.zarr"


def checkpoint_dir(condition, seed):
    """Working store and checkpoints of one training: a restarted job resumes from here."""
    return f"{RESULTS}/checkpoints/{condition}/seed{seed}"


def all_trajectories():
    return [path for c, s in runs() for path in trajectories(c, s)]


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
        *sensitivity_outputs(),
    ]


# Each stage's input functions and settings, before the rules that use them.
include: "functions/train.smk"
include: "functions/compare.smk"
include: "functions/koopman.smk"
include: "functions/windows.smk"
include: "functions/companion.smk"
include: "functions/prune.smk"
include: "functions/monitor.smk"
include: "functions/predict.smk"
include: "functions/sensitivity.smk"
