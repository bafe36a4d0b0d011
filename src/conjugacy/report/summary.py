"""Stage 5: results/<experiment>/summary.md, what one run of an experiment found and cost.

The verdict table (from conjugacy.csv), the settings each condition ran with
(from the resolved config, so what is printed is what ran) and the wall time
(from the `benchmark:` files Snakemake writes for every job).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from conjugacy.stores.contract import StoreError

# Keys shown in their own column, or not at all (bookkeeping that does not change results).
OWN_COLUMNS = ("system", "steps", "lr", "seeds", "koopman")
HIDDEN = ("checkpoint_every", "checkpoint_seconds", "device", "gpus", "data_dir")


def read_benchmarks(folder: str | Path) -> pd.DataFrame:
    """One row per job benchmark TSV under folder: job, stage, seconds, CPU seconds, start, end.

    Snakemake writes a benchmark when its job ends and records no clock time,
    so a job's end is the file's modification time and its start that minus
    its seconds. Stage is the first folder or file name under `folder` (train,
    koopman, compare, ...).
    """
    folder = Path(folder)
    rows = []
    for path in sorted(folder.rglob("*.tsv")) if folder.is_dir() else []:
        try:
            table = pd.read_csv(path, sep="\t")
            seconds = float(table["s"].iloc[-1])
            cpu = float(table["cpu_time"].iloc[-1]) if "cpu_time" in table else math.nan
        except (KeyError, IndexError, ValueError, pd.errors.ParserError) as exc:
            raise StoreError(f"benchmark {path}: not a Snakemake benchmark table ({exc})") from None
        rel = path.relative_to(folder).with_suffix("")
        end = path.stat().st_mtime
        rows.append(
            {
                "job": rel.as_posix(),
                "stage": rel.parts[0],
                "s": seconds,
                "cpu_s": cpu,
                "start": end - seconds,
                "end": end,
            }
        )
    return pd.DataFrame(rows, columns=["job", "stage", "s", "cpu_s", "start", "end"])


def wall_time(bench: pd.DataFrame) -> dict[str, float]:
    """Sum of the jobs' wall times, and the span from the first job's start to the last's end."""
    if bench.empty:
        return {"jobs": 0, "sum_s": 0.0, "span_s": 0.0}
    return {
        "jobs": len(bench),
        "sum_s": float(bench["s"].sum()),
        "span_s": float(bench["end"].max() - bench["start"].min()),
    }


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table; `|` inside cells is escaped."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def seed_list(seeds: list[int]) -> str:
    """0-9 (10) for a contiguous range, else the list."""
    seeds = sorted(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]} ({len(seeds)})"
    return ", ".join(map(str, seeds))


def _number(value: Any, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if isinstance(value, int | float | np.number) else str(value)


def _mean_sd(mean: Any, sd: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return _number(mean)
    return f"{_number(mean)} ± {_number(sd, '.2g')}"


def _interval(low: Any, high: Any) -> str:
    if low is None or high is None:
        return "-"
    return f"[{_number(low)}, {_number(high)}]"


def _level(verdicts: pd.DataFrame) -> str:
    """'90% ' when every pair's interval has that level, else ''."""
    if "ratio_level" not in verdicts:
        return ""
    levels = set(verdicts["ratio_level"].dropna())
    return f"{levels.pop():.0%} " if len(levels) == 1 else ""


def verdict_section(verdicts: pd.DataFrame) -> str:
    """The verdict table; columns a table written before they existed lacks are shown as -.

    The ratio's interval is the cluster bootstrap over seeds the verdict
    reads (conjugate: at or below the margin; not conjugate: above it and p
    corrected below alpha).
    """
    header = [
        "pair",
        "W between (mean ± sd)",
        "W within (mean ± sd)",
        "ratio",
        f"ratio {_level(verdicts)}interval",
        "p",
        "p corrected",
        "Mann-Whitney p",
        "verdict",
    ]
    rows = []
    for row in verdicts.to_dict("records"):
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        rows.append(
            [
                f"{row['condition_a']} vs {row['condition_b']}",
                _mean_sd(row.get("w_between_mean"), row.get("w_between_sd")),
                _mean_sd(row.get("w_within_mean"), row.get("w_within_sd")),
                _number(row.get("ratio")),
                _interval(row.get("ratio_low"), row.get("ratio_high")),
                _number(row.get("p_value")),
                _number(row.get("p_corrected")),
                _number(row.get("mw_p")),
                f"**{row['verdict']}**",
            ]
        )
    out = [markdown_table(header, rows)]
    for row in verdicts.to_dict("records"):
        if isinstance(row.get("excluded"), str) and row["excluded"]:
            out.append(f"\nLeft out of {row['condition_a']} vs {row['condition_b']}: ")
            out[-1] += row["excluded"]
    return "\n".join(out)


def _setting(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_setting(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_setting, value)) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def settings_section(cfg: dict[str, Any]) -> str:
    """One row per condition: system, steps, lr, seeds, the other training keys, Koopman options."""
    rows = []
    for name, cond in cfg["conditions"].items():
        k = cond.get("koopman", {})
        koopman = ", ".join(f"{key} {_setting(v)}" for key, v in k.items() if v is not None)
        others = ", ".join(
            f"{key} {_setting(v)}"
            for key, v in cond.items()
            if key not in OWN_COLUMNS and key not in HIDDEN and v is not None
        )
        rows.append(
            [
                name,
                cond.get("system", "-"),
                cond.get("steps", "-"),
                cond.get("lr", "-"),
                seed_list(cond.get("seeds", cfg.get("seeds", []))),
                others or "-",
                koopman or "-",
            ]
        )
    header = ["condition", "system", "steps", "lr", "seeds", "training", "koopman"]
    c = cfg.get("compare", {})
    test = ", ".join(
        f"{key} {c[key]}"
        for key in (
            "alpha",
            "max_ratio",
            "permutations",
            "correction",
            "bootstrap",
            "bootstrap_seed",
        )
        if key in c
    )
    return markdown_table(header, rows) + (f"\n\nTest: {test}." if test else "")


def wall_time_section(bench: pd.DataFrame) -> str:
    """Per stage and in all: jobs, summed job time, longest job, CPU time; and the span."""
    if bench.empty:
        return "No job benchmarks were found."
    rows = []
    for stage, jobs in bench.groupby("stage", sort=False):
        rows.append(
            [
                stage,
                len(jobs),
                duration(jobs["s"].sum()),
                duration(jobs["s"].max()),
                duration(jobs["cpu_s"].sum()) if jobs["cpu_s"].notna().any() else "-",
            ]
        )
    total = wall_time(bench)
    rows.append(
        [
            "**all**",
            total["jobs"],
            duration(total["sum_s"]),
            duration(bench["s"].max()),
            duration(bench["cpu_s"].sum()) if bench["cpu_s"].notna().any() else "-",
        ]
    )
    table = markdown_table(["stage", "jobs", "sum of job times", "longest job", "CPU time"], rows)
    return (
        f"{table}\n\nSpan from the first job's start to the last job's end: "
        f"**{duration(total['span_s'])}** (Snakemake's own start-up not included; after a "
        "partial rerun it spans the earlier run's jobs too). Job times are wall-clock: "
        "on a machine shared with other work they exceed the CPU time."
    )


def external_section(cfg: dict[str, Any]) -> str:
    """Conditions whose runs you recorded yourself: where their stores are, and what the
    first seed's store says of itself (its own attributes; this workflow trained nothing)."""
    from conjugacy.config import external_paths
    from conjugacy.stores.contract import open_store

    rows = []
    for name, cond in cfg["conditions"].items():
        if cond.get("system") != "external":
            continue
        first = external_paths(cond, cond["seeds"][0])
        attrs = open_store(first[0], "trajectory").attrs
        own = ", ".join(
            f"{key} {_setting(value)}"
            for key, value in attrs.items()
            if key not in ("integrity", "versions", "role", "status")
        )
        patterns = cond["trajectories"]
        rows.append([name, _setting(patterns), own or "-"])
    if not rows:
        return ""
    header = ["condition", "trajectory stores", "attributes of the first seed's store"]
    return "\n".join(["## Your own runs", "", markdown_table(header, rows), "", ""])


def sensitivity_section(table: pd.DataFrame | None) -> str:
    """When the sensitivity stage ran: is each pair's verdict the same across its grid?"""
    if table is None:
        return ""
    from conjugacy.report.sensitivity import stability_section

    body = stability_section(table)
    return "\n".join(["## Sensitivity to the Koopman settings", "", body, "", ""])


def render(
    cfg: dict[str, Any],
    verdicts: pd.DataFrame,
    bench: pd.DataFrame,
    sensitivity: pd.DataFrame | None = None,
) -> str:
    """The whole summary.md."""
    name = cfg.get("experiment", "?")
    return "\n".join(
        [
            f"# Experiment `{name}`",
            "",
            "## Verdicts",
            "",
            verdict_section(verdicts),
            "",
            sensitivity_section(sensitivity) + "## Settings",
            "",
            settings_section(cfg),
            "",
            external_section(cfg) + "## Wall time",
            "",
            wall_time_section(bench),
            "",
        ]
    )


def write_summary(
    cfg: dict[str, Any],
    verdicts: str | Path,
    benchmarks: str | Path,
    output: str | Path,
    sensitivity: str | Path | None = None,
) -> Path:
    """Write summary.md from the resolved config, conjugacy.csv and the benchmarks folder
    (and sensitivity.csv, when given)."""
    if "conditions" not in cfg:
        raise StoreError("the config given to summary has no 'conditions' (not a resolved config)")
    table = pd.read_csv(verdicts)
    missing = {"condition_a", "condition_b", "verdict"} - set(table.columns)
    if missing:
        raise StoreError(f"verdict table {verdicts} lacks the columns {sorted(missing)}")
    grid = None
    if sensitivity is not None:
        from conjugacy.report.sensitivity import read_table

        grid = read_table(sensitivity)
    text = render(cfg, table, read_benchmarks(benchmarks), grid)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text(text)
    partial.replace(output)
    return output
