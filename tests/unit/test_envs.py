"""The conda environment of the workflow's rules stays in step with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

ROOT = REPO
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
# PyPI name -> conda-forge name, where they differ
CONDA_NAME = {"torch": "pytorch", "pot": "pot", "matplotlib": "matplotlib-base"}
NOT_IN_ENV = {"snakemake"}  # runs the workflow, not its jobs
NOT_IN_PYPROJECT = {"python"}
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(?:>=\s*([0-9][^,;\s]*))?")


def parse(spec: str) -> tuple[str, str | None]:
    """(lower-case name, minimum version or None) of 'name>=1.2' or 'name=1.2' (conda pin)."""
    match = REQUIREMENT.match(spec)
    assert match, spec
    name, minimum = match.group(1).lower(), match.group(2)
    if minimum is None and re.match(r"^[A-Za-z0-9_.\-]+=[0-9]", spec.strip()):
        minimum = spec.split("=", 1)[1].strip()
    return name, minimum


def project_dependencies() -> dict[str, str | None]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    return dict(parse(d) for d in deps)


def conda_dependencies(path: Path) -> dict[str, str | None]:
    env = yaml.safe_load(path.read_text())
    specs = [d for d in env["dependencies"] if isinstance(d, str)]
    return dict(parse(d) for d in specs)


def test_there_is_an_env():
    assert ROOT / "envs" / "conjugacy.yaml" in ENVS


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_parses(path):
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict)
    assert isinstance(env.get("channels"), list) and env["channels"]
    assert all(isinstance(c, str) for c in env["channels"])
    assert isinstance(env.get("dependencies"), list) and env["dependencies"]
    names = [parse(d)[0] for d in env["dependencies"] if isinstance(d, str)]
    assert len(names) == len(set(names)), "a dependency is listed twice"


def test_parse_requirement():
    assert parse("numpy>=2.0") == ("numpy", "2.0")
    assert parse("POT >= 0.9.5") == ("pot", "0.9.5")
    assert parse("python=3.11") == ("python", "3.11")
    assert parse("tqdm") == ("tqdm", None)


def test_every_runtime_dependency_in_conda_env():
    project = project_dependencies()
    conda = conda_dependencies(ROOT / "envs" / "conjugacy.yaml")
    assert "snakemake" in project  # the exception below is still needed
    for name, minimum in project.items():
        if name in NOT_IN_ENV:
            continue
        conda_name = CONDA_NAME.get(name, name)
        assert conda_name in conda, f"{name} (conda: {conda_name}) missing from envs/conjugacy.yaml"
        assert conda[conda_name] == minimum, (name, minimum, conda[conda_name])


def test_no_conda_dependency_missing_from_pyproject():
    project = project_dependencies()
    to_pypi = {conda: pypi for pypi, conda in CONDA_NAME.items()}
    conda = conda_dependencies(ROOT / "envs" / "conjugacy.yaml")
    assert "python" in conda
    for name in conda:
        if name in NOT_IN_PYPROJECT:
            continue
        assert to_pypi.get(name, name) in project, f"{name} is not in pyproject dependencies"


def test_python_pin_satisfies_requires_python():
    with (ROOT / "pyproject.toml").open("rb") as fh:
        requires = tomllib.load(fh)["project"]["requires-python"]
    floor = tuple(int(v) for v in requires.removeprefix(">=").split("."))
    pin = conda_dependencies(ROOT / "envs" / "conjugacy.yaml")["python"]
    assert pin is not None
    assert tuple(int(v) for v in pin.split(".")[:2]) >= floor
