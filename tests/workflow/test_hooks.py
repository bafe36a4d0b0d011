"""The end-of-run hooks (workflow/rules/hooks.smk): Snakemake exits when its last job is done.

Snakemake's scheduler arms a one-second timer on each pass of its loop, and
Python waits for the last one at exit. The hooks cancel them; these runs
count the timers still pending when Snakemake's `main` returns.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, job_env

# Snakemake's command line in this process, then its exit status and how many
# of the scheduler's re-evaluation timers are still waiting to fire.
PENDING = """
import sys, threading
from snakemake.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code or 0
pending = [
    t for t in threading.enumerate()
    if isinstance(t, threading.Timer) and not t.finished.is_set()
    and "_schedule_reevalutation" in t.function.__qualname__
]
print(status, len(pending))
"""


def run_toy(tmp_path: Path, hooks: bool, job_fails: bool) -> tuple[int, int]:
    """(exit status, pending timers) of a one-job workflow, with or without the hooks."""
    include = f"include: {str(REPO / 'workflow/rules/hooks.smk')!r}\n" if hooks else ""
    shell = "touch {output}" + ("; exit 1" if job_fails else "")
    (tmp_path / "Snakefile").write_text(
        f"{include}rule a:\n    output: 'a.txt'\n    shell: {shell!r}\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", PENDING, "--cores", "1", "-q", "-d", str(tmp_path)],
        cwd=tmp_path,
        env=job_env(),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    status, pending = run.stdout.split()[-2:]
    return int(status), int(pending)


@pytest.mark.parametrize("job_fails", [False, True], ids=["success", "error"])
def test_the_hooks_cancel_the_scheduler_timers(tmp_path, job_fails):
    status, pending = run_toy(tmp_path, hooks=True, job_fails=job_fails)
    assert (status != 0) == job_fails
    assert pending == 0


def test_without_the_hooks_a_scheduler_timer_is_still_pending(tmp_path):
    """The control: what the hooks are for is there, and this test sees it."""
    status, pending = run_toy(tmp_path, hooks=False, job_fails=False)
    assert status == 0 and pending >= 1


def test_the_workflow_includes_the_hooks():
    includes = [
        line.split(":", 1)[1].strip().strip('"')
        for line in (REPO / "Snakefile").read_text().splitlines()
        if line.startswith("include:")
    ]
    assert "workflow/rules/hooks.smk" in includes
