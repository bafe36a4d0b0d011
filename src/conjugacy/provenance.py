"""Hashes of each stage's library code, so the workflow reruns a stage when its code changes.

Snakemake's "code" trigger covers only a rule's own shell text; a rule
carries `code_hash(stage)` in its params, and a changed hash reruns it and
everything downstream. The files of a stage are computed, never listed by
hand: its entry modules and every module of the package they import,
transitively (imports inside functions included, read from the source with
`ast`), with the `__init__.py` of every package on the way. Standard
library only: the Snakefile imports it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
NAME = "conjugacy"

# The module(s) whose functions a stage's command calls.
STAGE_ENTRIES: dict[str, tuple[str, ...]] = {
    "train": ("conjugacy.training.train",),
    "companion": ("conjugacy.training.companion",),
    "koopman": ("conjugacy.koopman.spectrum",),
    "compare": ("conjugacy.verdict.compare",),
    "figures": ("conjugacy.report.figures",),
    "windows": ("conjugacy.verdict.windows", "conjugacy.report.windows"),
    "summary": ("conjugacy.report.summary",),
    "accuracy": ("conjugacy.report.accuracy",),
    "predict": ("conjugacy.beyond.predict",),
    "accelerate": ("conjugacy.beyond.accelerate",),
    "predict_summary": ("conjugacy.beyond.predict",),
    "prune": ("conjugacy.beyond.prune",),
    "monitor": ("conjugacy.beyond.monitor",),
    "sensitivity": ("conjugacy.beyond.sensitivity",),
}


def module_file(module: str, package: Path = PACKAGE) -> Path | None:
    """The source file of a module of the package (a module or a package's __init__)."""
    parts = module.split(".")[1:]
    base = package.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _parents(module: str) -> list[str]:
    """The packages a module's import runs first: conjugacy, conjugacy.a, ..."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(path: Path, package: Path = PACKAGE) -> set[str]:
    """Modules of the package that a source file imports, anywhere in it."""
    stat = path.stat()
    return set(_imports_of(path, package, stat.st_mtime_ns, stat.st_size))


@functools.cache  # the stages share most modules: each file is parsed once per version
def _imports_of(path: Path, package: Path, mtime_ns: int, size: int) -> frozenset[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from conjugacy.a import b`: b is a module or a name defined in conjugacy.a
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            if name.split(".")[0] == NAME and module_file(name, package) is not None:
                found.add(name)
    return frozenset(found)


def stage_modules(stage: str, package: Path = PACKAGE) -> set[str]:
    """Every module of the package a stage's entry modules import, transitively."""
    todo = list(STAGE_ENTRIES[stage])
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_file(module, package)
        if path is None:
            raise ValueError(f"stage {stage!r}: no module {module} under {package}")
        seen.add(module)
        todo.extend(_parents(module))
        todo.extend(imports_of(path, package))
    return seen


def stage_files(stage: str, package: Path = PACKAGE) -> list[Path]:
    """The source files whose content decides a stage's output, in a fixed order."""
    files = {module_file(m, package) for m in stage_modules(stage, package)}
    return sorted(f for f in files if f is not None)


def code_hash(stage: str, package: str | Path = PACKAGE) -> str:
    """Short SHA-256 over the stage's source files (paths and contents) under `package`.

    The workflow passes the package its jobs run (its checkout's src/conjugacy),
    which need not be the one this module was imported from.
    """
    package = Path(package)
    digest = hashlib.sha256()
    for path in stage_files(stage, package):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
