"""One style for every figure of the project, applied when a figure is made, not on import.

`panels` makes the axes of a figure (and applies the style), `colours` gives
each condition the same colour in every figure, `save` writes PNG for the
report and PDF beside it for papers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Font subsetting of every PDF logs each glyph at INFO: keep the stage logs readable.
logging.getLogger("fontTools").setLevel(logging.WARNING)

STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "legend.frameon": False,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text for papers
}


def apply_style() -> None:
    """Set the project's matplotlib style (idempotent): every figure helper calls it first."""
    plt.rcParams.update(STYLE)


def colours(conditions: list[str]) -> dict[str, tuple]:
    """One colour per condition, the same in every figure of the project."""
    cmap = plt.get_cmap("tab10")
    return {c: cmap(i % 10) for i, c in enumerate(conditions)}


def panels(n: int, size: float = 4.2):
    """A row of n square axes, the project's panel size."""
    apply_style()
    fig, axes = plt.subplots(1, n, figsize=(size * n, size), squeeze=False)
    return fig, axes[0]


def save(fig, out: str | Path) -> None:
    """Write the figure as PNG (for the report) and PDF beside it (for papers), then close it."""
    out = Path(out)
    fig.savefig(out, dpi=110)
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
