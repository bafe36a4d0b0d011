"""Hashes of each stage's library source, so the workflow reruns a stage when its code changes.

Snakemake's "code" trigger covers only a rule's own shell text; a rule
carries `code_hash(stage)` in its params, and a changed hash reruns it and
everything downstream. Standard library only: the Snakefile imports it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

# Library files whose content decides each stage's output.
STAGE_SOURCES: dict[str, tuple[str, ...]] = {
    "train": ("train.py", "recorder.py", "store.py", "systems"),
    "koopman": (
        "koopman.py",
        "observables.py",
        "dmd.py",
        "backend.py",
        "readahead.py",
        "store.py",
        "config.py",
    ),
    "compare": ("compare.py", "distance.py", "stats.py", "store.py"),
    "figures": ("figures.py", "compare.py", "store.py"),
    "windows": ("windows.py", "distance.py", "stats.py", "store.py", "figures.py"),
    "summary": ("summary.py", "store.py"),
    "companion": ("accuracy.py", "systems"),
    "accuracy": ("accuracy.py", "figures.py"),
    "prune": ("prune.py", "monitor.py", "store.py", "systems", "figures.py"),
    "monitor": (
        "monitor.py",
        "koopman.py",
        "observables.py",
        "dmd.py",
        "store.py",
        "config.py",
        "systems",
        "figures.py",
    ),
    "predict": ("predict.py", "dmd.py", "train.py", "systems", "store.py", "config.py"),
    "accelerate": ("accelerate.py", "predict.py", "dmd.py", "train.py", "systems", "store.py"),
    "predict_summary": ("predict.py", "figures.py", "store.py"),
}


def _files(stage: str, package: Path) -> list[Path]:
    out: list[Path] = []
    for name in STAGE_SOURCES[stage]:
        path = package / name
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def code_hash(stage: str, package: str | Path = PACKAGE) -> str:
    """Short SHA-256 over the stage's source files (paths and contents) under `package`.

    The workflow passes the package its jobs run (its checkout's src/conjugacy),
    which need not be the one this module was imported from.
    """
    package = Path(package)
    digest = hashlib.sha256()
    for path in _files(stage, package):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
