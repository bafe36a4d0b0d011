"""Hashes of each stage's library code, so the workflow reruns a stage when its code changes.

Snakemake's "code" trigger covers only a rule's own shell text; a rule
carries `code_hash(stage)` in its params, and a changed hash reruns it and
everything downstream. The files of a stage are computed, never listed by
hand: its entry modules and every module of the package they import,
transitively (imports inside functions included, found in the source by a
pattern over its import statements), with the `__init__.py` of every
package on the way. Standard library only: the Snakefile imports it.
"""

from __future__ import annotations

import functools
import hashlib
import re
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


# An import statement at the start of a line, at any indentation: `from conjugacy.a import
# b, c` (names possibly in parentheses over several lines) or `import conjugacy.a, x as y`
# (not one after `;` or continued by a backslash: formatted code has neither). A line of a
# docstring that reads like one counts too: a file too many in a hash. A test checks that
# it finds every import Python's parser finds in every module; it takes a twelfth of the
# time of parsing every file (Snakemake's start-up).
IMPORT = re.compile(
    rf"^[ \t]*from[ \t]+({NAME}[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)"
    r"|^[ \t]*import[ \t]+([^\n;]*)",
    re.MULTILINE,
)


def _names(text: str) -> list[str]:
    """`a as b, c` (comments and parentheses dropped) -> [a, c]."""
    text = re.sub(r"#[^\n]*", "", text).replace("\\\n", " ").strip("() \t\n")
    return [item.split()[0] for item in text.split(",") if item.strip()]


@functools.cache  # the stages share most modules: each file is read once per version
def _imports_of(path: Path, package: Path, mtime_ns: int, size: int) -> frozenset[str]:
    found: set[str] = set()
    for match in IMPORT.finditer(path.read_text()):
        module, imported, plain = match.groups()
        if module:  # `from conjugacy.a import b`: b is a module or a name in conjugacy.a
            names = [module, *(f"{module}.{name}" for name in _names(imported))]
        else:
            names = _names(plain)
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
