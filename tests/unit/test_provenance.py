"""Stage code hashes come from what each stage imports: an edit reruns exactly its stages."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from conjugacy import provenance

PACKAGE = REPO / "src" / "conjugacy"


def runtime_modules(entries: tuple[str, ...]) -> set[str]:
    """The package's modules Python really loads when it imports a stage's entry modules."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(entries)!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'conjugacy')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("stage", sorted(provenance.STAGE_ENTRIES))
def test_every_module_a_stage_imports_is_hashed(stage):
    """Python's own import is the oracle: the computed set holds all it loads (and lazy imports)."""
    computed = provenance.stage_modules(stage)
    loaded = runtime_modules(provenance.STAGE_ENTRIES[stage])
    assert loaded <= computed, sorted(loaded - computed)


def ast_imports(path) -> set[str]:
    """The package's modules a file imports, as Python's parser reads its import statements."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "conjugacy" and provenance.module_file(n)}
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_the_import_pattern_finds_every_import_the_parser_finds(path):
    assert ast_imports(path) <= provenance.imports_of(path)


def test_the_import_pattern_reads_every_form_of_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import os, conjugacy.config as c  # a comment\n"
        "def f():\n"
        "    from conjugacy.koopman import (\n"
        "        dmd,  # the solver\n"
        "        spectrum as s,\n"
        "    )\n"
        "    from conjugacy.stores.contract import open_store\n"
        "x = 'import conjugacy.memory'  # not at a line's start: not an import\n"
    )
    assert provenance.imports_of(source) == {
        "conjugacy.config",
        "conjugacy.koopman",
        "conjugacy.koopman.dmd",
        "conjugacy.koopman.spectrum",
        "conjugacy.stores.contract",
    }


def edited_copy(tmp_path, module: str):
    """A copy of the package with one module's source changed (a comment appended)."""
    package = tmp_path / "conjugacy"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    path = provenance.module_file(module, package)
    path.write_text(path.read_text() + "\n# edited\n")
    return package


@pytest.mark.parametrize(
    ("module", "changed", "unchanged"),
    [
        ("conjugacy.koopman.backend", {"koopman", "monitor"}, {"train", "compare"}),
        ("conjugacy.report.style", {"figures", "windows", "monitor"}, {"train", "koopman"}),
        ("conjugacy.systems.fcn", {"train", "prune", "predict"}, {"koopman", "compare"}),
        ("conjugacy.config.checks", {"train", "koopman", "compare", "summary"}, set()),
        # the spectra figure reads spectra through verdict.spectra, not the comparison
        ("conjugacy.verdict.stats", {"compare", "windows"}, {"train", "koopman", "figures"}),
        ("conjugacy.verdict.spectra", {"compare", "figures"}, {"train", "koopman"}),
    ],
)
def test_an_edit_changes_the_hash_of_exactly_the_stages_that_import_it(
    tmp_path, module, changed, unchanged
):
    package = edited_copy(tmp_path, module)
    differs = {
        stage
        for stage in provenance.STAGE_ENTRIES
        if provenance.code_hash(stage, package) != provenance.code_hash(stage, PACKAGE)
    }
    importers = {s for s in provenance.STAGE_ENTRIES if module in provenance.stage_modules(s)}
    assert differs == importers
    assert changed <= differs and not unchanged & differs


def test_the_cli_is_in_no_stage_hash():
    """Editing option parsing reruns nothing: the stages' results do not depend on it."""
    for stage in provenance.STAGE_ENTRIES:
        assert "conjugacy.cli" not in provenance.stage_modules(stage)
