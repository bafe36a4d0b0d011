"""The package's layers: imports go one way, so a newcomer can read the pipeline bottom up.

config < stores < systems < (training | koopman) < verdict < report < beyond < cli.
A module may import its own package and any lower layer; training and
koopman never import each other; nothing imports snakemake. Imports inside
functions count too (read from the source with ast).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "src" / "conjugacy"
LAYERS = {
    "provenance": 0,  # standard library only: the Snakefile imports it
    "memory": 0,  # standard library only: allocator settings a stage's process makes
    "config": 1,
    "stores": 2,
    "systems": 3,
    "training": 4,
    "koopman": 4,
    "verdict": 5,
    "integrations": 5,  # callbacks for other training loops, over training.record
    "report": 6,
    "beyond": 7,
    "cli": 8,
    "api": 8,  # the public Python API: the functions behind `conjugacy.spectrum`, ...
    "__main__": 9,
    "__init__": 9,  # the public API: lazy imports of any layer
}


def unit(module_path: Path, package: Path = PACKAGE) -> str:
    """The layer unit of a source file: its subpackage, or the top-level module's name."""
    rel = module_path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in a file, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        here = unit(path, package)
        for line, module in imports(path):
            where = f"{path.relative_to(package)}:{line} imports {module}"
            if module.split(".")[0] == "snakemake":
                out.append(f"{where}: the library never imports snakemake")
            parts = module.split(".")
            if parts[0] != "conjugacy" or len(parts) < 2:
                continue
            there = parts[1]
            if there == here:
                continue
            if there not in LAYERS:
                out.append(f"{where}: unknown layer {there}")
            elif LAYERS[there] > LAYERS[here]:
                out.append(f"{where}: {here} (layer {LAYERS[here]}) imports a higher layer")
            elif LAYERS[there] == LAYERS[here]:
                out.append(f"{where}: {here} and {there} share a layer and stay apart")
    return out


def test_every_package_is_a_known_layer():
    found = {unit(p) for p in PACKAGE.rglob("*.py")}
    assert found <= set(LAYERS), sorted(found - set(LAYERS))


def test_imports_go_one_way():
    assert violations() == []


@pytest.mark.parametrize(
    ("file", "line", "message"),
    [
        ("config/x.py", "from conjugacy.stores.contract import seal", "imports a higher layer"),
        ("koopman/x.py", "from conjugacy.training.train import train", "share a layer"),
        ("verdict/x.py", "import snakemake", "never imports snakemake"),
        ("stores/x.py", "def f():\n    from conjugacy.report import style", "higher layer"),
    ],
)
def test_a_violation_is_found(tmp_path, file, line, message):
    """The check itself: a planted upward import (even inside a function) is reported."""
    package = tmp_path / "conjugacy"
    (package / file).parent.mkdir(parents=True)
    (package / file).write_text(line + "\n")
    found = violations(package)
    assert len(found) == 1 and message in found[0], found
