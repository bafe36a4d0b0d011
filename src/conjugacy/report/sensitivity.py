"""Sensitivity to the Koopman settings: is each pair's verdict the same across the grid?

Read from sensitivity.csv (one row per grid point and pair: delays, rank,
condition_a, condition_b, ratio, verdict, ...), written by
beyond.sensitivity: the heatmap of the verdicts and the section of summary.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from conjugacy.stores.contract import StoreError

VERDICTS = ("conjugate", "inconclusive", "not conjugate")
VERDICT_COLOURS = {"conjugate": "#4c9f70", "inconclusive": "#c8c8c8", "not conjugate": "#d1495b"}
NEEDED = {"delays", "rank", "condition_a", "condition_b", "verdict"}


def read_table(path: str | Path) -> pd.DataFrame:
    """sensitivity.csv, with its rank labels kept as text (10, full, 0.99)."""
    table = pd.read_csv(path, dtype={"rank": str})
    missing = NEEDED - set(table.columns)
    if missing:
        raise StoreError(f"sensitivity table {path} lacks the columns {sorted(missing)}")
    return table


def _pairs(table: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table.condition_a, table.condition_b, strict=True)))


def stability(table: pd.DataFrame) -> pd.DataFrame:
    """Per pair: grid points, how many give each verdict, and whether the verdict is stable.

    stable: one verdict at every grid point. contradictory: "conjugate" at some
    points and "not conjugate" at others (a verdict that is not stable but
    never contradicts itself only moves between one verdict and inconclusive).
    """
    rows = []
    for a, b in _pairs(table):
        sub = table[(table.condition_a == a) & (table.condition_b == b)]
        counts = {v: int((sub.verdict == v).sum()) for v in VERDICTS}
        seen = [v for v in VERDICTS if counts[v]]
        main = sub.verdict[sub["main"].astype(bool)] if "main" in sub else pd.Series([])
        rows.append(
            {
                "condition_a": a,
                "condition_b": b,
                "points": len(sub),
                **{v.replace(" ", "_"): counts[v] for v in VERDICTS},
                "stable": len(seen) == 1,
                "contradictory": bool(counts["conjugate"] and counts["not conjugate"]),
                "verdict": seen[0] if len(seen) == 1 else "mixed",
                "main": main.iloc[0] if len(main) else None,
            }
        )
    return pd.DataFrame(rows)


def statement(row: dict) -> str:
    """One pair's stability in words."""
    n = row["points"]
    if row["stable"]:
        return f"**stable**: {row['verdict']} at all {n} grid points"
    parts = ", ".join(
        f"{v} at {row[v.replace(' ', '_')]}" for v in VERDICTS if row[v.replace(" ", "_")]
    )
    if row["contradictory"]:
        return f"**not stable**: {parts} of {n} grid points; the verdict depends on the settings"
    never = "not conjugate" if row["conjugate"] else "conjugate"
    return f"**not stable**: {parts} of {n} grid points (never {never})"


def _grid_values(values: pd.Series) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


def stability_section(table: pd.DataFrame) -> str:
    """The summary's section body: the grid, a row per pair, and one sentence overall."""
    if table.empty:
        return "The sensitivity table is empty."
    summary = stability(table)
    rows = [
        [
            f"{r['condition_a']} vs {r['condition_b']}",
            r["conjugate"],
            r["inconclusive"],
            r["not_conjugate"],
            r["main"] if isinstance(r["main"], str) else "-",
            statement(r),
        ]
        for r in summary.to_dict("records")
    ]
    from conjugacy.report.summary import markdown_table

    header = ["pair", "conjugate", "inconclusive", "not conjugate", "at own settings", "verdict"]
    stable = int(summary.stable.sum())
    overall = (
        "The verdict of every pair is stable across the grid."
        if stable == len(summary)
        else f"The verdict is stable across the grid for {stable} of {len(summary)} pairs."
    )
    return "\n".join(
        [
            f"The verdicts again at every grid point of delays [{_grid_values(table.delays)}] "
            f"x ranks [{_grid_values(table['rank'])}]: each grid point replaces the delays "
            "and rank of both conditions of a pair, their other Koopman settings kept "
            '(`sensitivity.csv`, `figures/sensitivity.png`). "At own settings": the grid '
            "point equal to both conditions' own delays and rank, when the grid has it.",
            "",
            markdown_table(header, rows),
            "",
            overall,
        ]
    )


def heatmap(table: pd.DataFrame, out: str | Path) -> None:
    """One panel per pair: delays x rank coloured by verdict, the ratio written in each cell,
    the conditions' own settings outlined."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    from conjugacy.report.style import panels, save

    pairs = _pairs(table)
    delays = list(dict.fromkeys(int(d) for d in table.delays))
    ranks = list(dict.fromkeys(str(r) for r in table["rank"]))
    size = max(2.6, 0.75 * max(len(ranks), len(delays)) + 1.2)
    fig, axes = panels(max(len(pairs), 1), size=size)
    cmap = ListedColormap([VERDICT_COLOURS[v] for v in VERDICTS])
    for ax, (a, b) in zip(axes, pairs, strict=False):
        sub = table[(table.condition_a == a) & (table.condition_b == b)]
        codes = np.full((len(delays), len(ranks)), np.nan)
        for row in sub.to_dict("records"):
            i, j = delays.index(int(row["delays"])), ranks.index(str(row["rank"]))
            codes[i, j] = VERDICTS.index(row["verdict"]) if row["verdict"] in VERDICTS else np.nan
            ratio = row.get("ratio")
            if ratio is not None and not (isinstance(ratio, float) and math.isnan(ratio)):
                ax.text(j, i, f"{ratio:.3g}", ha="center", va="center", fontsize=8)
            if row.get("main") in (True, "True"):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="k"))
        ax.imshow(codes, cmap=cmap, vmin=-0.5, vmax=2.5, origin="lower", aspect="auto")
        ax.set_xticks(range(len(ranks)), ranks)
        ax.set_yticks(range(len(delays)), [str(d) for d in delays])
        ax.set_xlabel("rank")
        ax.set_ylabel("delays")
        ax.set_title(f"{a} vs {b}")
        ax.grid(False)
    fig.legend(
        handles=[Patch(color=VERDICT_COLOURS[v], label=v) for v in VERDICTS],
        loc="lower center",
        ncol=3,
        bbox_to_anchor=(0.5, -0.04),
    )
    fig.suptitle("Verdict at each Koopman setting (ratio W between / W within in each cell)")
    fig.tight_layout()
    save(fig, out)
