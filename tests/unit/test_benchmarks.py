"""The benchmark scripts run, at tiny sizes, and their tables say what they should.

`make bench` is run by hand, not by CI: without these a renamed module or
option breaks a benchmark unnoticed. No timing is asserted; the accuracy
columns are (each script checks its answers against known ones).
Benchmarks whose peers are not installed by `make install` (PyDMD, DSA) run
without the peer; workflow_overhead.py and slurm_overhead.sh take minutes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def run(script: str, *args: str) -> list[dict[str, str]]:
    """Run benchmarks/<script> and return the rows of every Markdown table it printed."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    separator = [set("".join(c)) <= {"-"} for c in cells]
    rows, header = [], None
    for i, row in enumerate(cells):
        if separator[i]:
            continue
        if i + 1 < len(cells) and separator[i + 1]:  # a table's header: its separator follows
            header = row
        else:
            rows.append(dict(zip(header, row, strict=True)))
    return rows


def test_training():
    rows = run(
        "training.py",
        *("--steps", "50", "100", "--throughput-steps", "10", "--repeats", "1"),
        *("--systems-scale", "0.05"),
    )
    gaps = [float(r["max rel. weight gap"]) for r in rows if "max rel. weight gap" in r]
    assert len(gaps) == 3 and max(gaps) < 1e-5  # batched = the per-model loop, to rounding
    recorded = {(r["steps"], r["recording"]) for r in rows if "recording" in r and "steps" in r}
    assert recorded == {(s, k) for s in ("50", "100") for k in ("off", "background", "synchronous")}
    systems = {(r["condition"], r["device"]) for r in rows if "speed-up over cpu" in r}
    assert systems == {("fcn_h40", "cpu"), ("resnet20", "cpu"), ("grokking", "cpu")}


def test_eigensolve():
    rows = run("eigensolve.py", "--n", "300", "--repeats", "1", "--kind", "delay")
    assert {r["solver"] for r in rows} == {"tridiagonal", "dsyevr", "arpack", "lanczos"}
    lanczos = next(r for r in rows if r["solver"] == "lanczos")
    assert float(lanczos["eigenvalue error"]) < 1e-12


def test_dmd_engine():
    (row,) = run("dmd_engine.py", "--params", "2000", "--steps", "100", "--inits", "2",
                 "--delays", "1")  # fmt: skip
    assert float(row["max eigenvalue gap"]) < 1e-9  # ours against the reference scripts' DMD


def test_recorder(tmp_path):
    rows = run("recorder.py", "--steps", "50", "--repeats", "1", "--tmp", str(tmp_path))
    assert {"plain", "recorded"} <= {r.get("run") for r in rows}
    assert "fixed cost per store" in {r.get("measure") for r in rows}


def test_koopman_without_pydmd(tmp_path):
    (row,) = run("koopman_vs_pydmd.py", "--params", "20000", "--repeats", "1",
                 "--only", "ours", "floor", "--tmp", str(tmp_path))  # fmt: skip
    assert float(row["ours max eig err"]) < 1e-5  # float32 store: its rounding, not ours
