"""Figures (figures.py): what each shows, drawn from a small synthetic experiment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conjugacy.report import figures
from conjugacy.report.figures import annotation, zoom_box
from conjugacy.verdict import compare
from conjugacy.verdict import spectra as spectra_module

NEAR_ONE = np.array([0.99, 0.97 + 0.02j, 0.97 - 0.02j, 0.9])


def spectrum_store(path: Path, eig, condition: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    xr.Dataset(
        {"eigenvalues": ("mode", np.asarray(eig, dtype=np.complex128))},
        attrs={"condition": condition, "seed": seed},
    ).to_zarr(path, zarr_format=3, consolidated=False)


def trajectory_store(path: Path, condition: str, seed: int, rate: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = np.arange(20)
    loss = np.exp(-rate * steps)[None, :] * np.array([[1.0], [1.1]])
    xr.Dataset(
        {
            "w": (("init", "step", "w_dim0"), np.zeros((2, 20, 3), dtype=np.float32)),
            "loss": (("init", "step"), loss),
        },
        coords={"step": steps},
        attrs={"condition": condition, "seed": seed},
    ).to_zarr(path, zarr_format=3, consolidated=False)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> dict:
    """Conditions a and b share a spectrum near 1; c is the same shifted by -0.3."""
    root = tmp_path_factory.mktemp("fig")
    rng = np.random.default_rng(5)
    spectra, trajectories = [], []
    for cond, shift in (("a", 0.0), ("b", 0.0), ("c", -0.3)):
        for seed in range(5):
            eig = NEAR_ONE + shift + 0.005 * rng.standard_normal(4)
            spectra.append(root / "spectra" / cond / f"seed{seed}.zarr")
            spectrum_store(spectra[-1], eig, cond, seed)
            trajectories.append(root / "trajectories" / cond / f"seed{seed}.zarr")
            trajectory_store(trajectories[-1], cond, seed, rate=0.1 + 0.1 * (cond == "c"))
    table = compare.write_verdicts(spectra, root, [("a", "b"), ("b", "c")], permutations=999)
    return {"root": root, "spectra": spectra, "trajectories": trajectories, "table": table}


@pytest.fixture
def captured(monkeypatch) -> list:
    """The figures handed to save(), kept open for inspection."""
    figs: list = []
    monkeypatch.setattr(figures, "save", lambda fig, out: figs.append(fig))
    yield figs
    for fig in figs:
        figures.plt.close(fig)


def test_zoom_box_frames_the_eigenvalues_near_one() -> None:
    x0, x1, y0, y1 = zoom_box(np.concatenate([NEAR_ONE, [-0.5 + 0.5j, 0.1]]))
    near = NEAR_ONE
    assert x0 < near.real.min() and x1 > 1.0  # 1 itself is always in the box
    assert y0 < near.imag.min() and y1 > near.imag.max()
    assert x1 < 1.2 and x0 > 0.8  # the far eigenvalues are not
    assert x1 - x0 == pytest.approx(y1 - y0)  # square, for equal aspect
    assert zoom_box(np.array([0.2, -0.5, 0.99])) is None  # one eigenvalue near 1: no zoom
    x0, x1, _, _ = zoom_box(np.array([1.0, 1.0]))
    assert x1 - x0 >= 1e-3  # a single point still gets a visible box


def test_annotation_shows_the_test_result() -> None:
    row = {"p_value": 0.0101, "correction": "holm", "p_corrected": 0.0303, "ratio": 2.5}
    row["mw_p"] = 1e-5
    assert annotation(row).splitlines() == [
        "p = 0.0101",
        "p (holm) = 0.0303",
        "ratio = 2.5",
        "Mann-Whitney p = 1e-05",
    ]
    # A table written before the corrections: only what it has; untested pairs say n/a.
    assert annotation({"p_value": float("nan")}).splitlines() == ["p = n/a", "ratio = n/a"]


def test_annotation_shows_the_ratio_interval() -> None:
    row = {"p_value": 0.002, "correction": "none", "ratio": 2.5}
    row |= {"ratio_low": 1.81, "ratio_high": 3.9, "ratio_level": 0.9}
    assert annotation(row).splitlines() == ["p = 0.002", "ratio = 2.5", "  90% CI [1.81, 3.9]"]
    # W within 0 in every resample: an infinite ratio and interval, printed as such.
    row |= {"ratio": float("inf"), "ratio_low": float("inf"), "ratio_high": float("inf")}
    assert annotation(row).splitlines()[1:] == ["ratio = inf", "  90% CI [inf, inf]"]
    # An untested pair (NaN interval) or a table without the level.
    row |= {"ratio_low": float("nan")}
    assert annotation(row).splitlines()[1:] == ["ratio = inf"]
    row = {"ratio": 1.0, "ratio_low": 0.9, "ratio_high": 1.2}
    assert annotation(row).splitlines() == ["p = n/a", "ratio = 1", "  CI [0.9, 1.2]"]
    assert figures.ratio_bar(row) is None  # no within mean to put it on the W scale
    row |= {"w_within_mean": 2.0, "w_between_mean": 2.0}
    assert figures.ratio_bar(row) == (2.0, 2.0, 1.8, 2.4)


def test_run_writes_png_and_pdf_of_every_figure(experiment, tmp_path) -> None:
    out = tmp_path / "figures"
    paths = figures.write_figures(
        out, experiment["spectra"], experiment["trajectories"], experiment["root"]
    )
    assert [p.name for p in paths] == list(figures.FIGURES)
    for p in paths:
        assert p.read_bytes()[:4] == b"\x89PNG"
        assert p.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"


def test_each_figure_is_drawn_from_its_own_inputs(experiment, tmp_path, captured) -> None:
    """Spectra and loss need no comparison (the workflow draws them beside it), and back."""
    runs = figures.write_figures(
        tmp_path / "runs", experiment["spectra"], experiment["trajectories"], pairs=[("a", "b")]
    )
    assert [p.name for p in runs] == ["spectra.png", "loss.png"]
    spectra_fig, loss_fig = captured
    assert len(loss_fig.axes) == 2  # a and b share a panel, c has its own
    assert [ax.get_title() for ax in loss_fig.axes] == ["a vs b", "c"]
    verdicts = figures.write_figures(tmp_path / "verdicts", comparison=experiment["root"])
    assert [p.name for p in verdicts] == ["distances.png", "w_distributions.png"]


def test_spectra_figure_has_a_zoom_beside_each_group(experiment, captured) -> None:
    labels, values, _ = spectra_module.load_spectra(experiment["spectra"])
    layout = figures.groups(["a", "b", "c"], [("a", "b"), ("b", "c")])
    assert layout == [["a", "b", "c"]]
    figures.plot_spectra(labels, values, layout, Path("unused.png"))
    (fig,) = captured
    full, zoom = fig.axes[:2]
    assert full.get_xlim()[1] >= 1.15 and full.get_xlim()[0] <= -1.15  # whole unit circle
    x0, x1 = zoom.get_xlim()
    every = np.concatenate(values)
    near = every[np.abs(every - 1) < figures.ZOOM_RADIUS]
    assert x0 < near.real.min() and near.real.max() < x1 and x1 - x0 < 0.5
    # every condition is drawn in both panels, with its number of seeds in the legend
    legend = [t.get_text() for t in full.get_legend().get_texts()]
    assert legend == ["a (5 seeds)", "b (5 seeds)", "c (5 seeds)"]
    assert sum(len(c.get_offsets()) for c in zoom.collections) == every.size


def test_w_figure_annotates_each_pair(experiment, captured) -> None:
    root = experiment["root"]
    distances = xr.open_zarr(root / "distances.zarr", consolidated=False)
    verdicts = pd.read_csv(root / "conjugacy.csv")
    figures.plot_w_distributions(distances, verdicts, Path("unused.png"))
    (fig,) = captured
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["a vs b: conjugate", "b vs c: not conjugate"]
    text = axes[1].texts[0].get_text()
    p_holm = verdicts.p_corrected.iloc[1]
    assert f"p (holm) = {p_holm:.3g}" in text and "ratio = " in text
    low, high = verdicts.ratio_low.iloc[1], verdicts.ratio_high.iloc[1]
    assert f"90% CI [{low:.3g}, {high:.3g}]" in text
    # strip points: 10 within a, 10 within b, 25 between
    strips = [c for c in axes[0].collections if type(c).__name__ == "PathCollection"]
    assert [len(c.get_offsets()) for c in strips] == [10, 10, 25]
    # The interval as an error bar beside the between column: within mean x its ends.
    for ax, row in zip(axes, verdicts.to_dict("records"), strict=True):
        (bars,) = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
        (segment,) = bars.get_segments()
        np.testing.assert_allclose(
            segment[:, 1],
            [row["w_within_mean"] * row["ratio_low"], row["w_within_mean"] * row["ratio_high"]],
        )
        assert segment[0, 0] > 3  # right of the between box
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "mean W within",
            "CI × mean W within",
        ]
        assert ax.get_ylim()[1] > row["w_within_mean"] * row["ratio_high"]


def test_distance_heatmap_has_labelled_axes(experiment, captured) -> None:
    distances = xr.open_zarr(experiment["root"] / "distances.zarr", consolidated=False)
    figures.plot_distances(distances, Path("unused.png"))
    ax = captured[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert ax.get_xticks().tolist() == [2, 7, 12]  # centre of each condition's 5 seeds
    assert "condition" in ax.get_xlabel() and "condition" in ax.get_ylabel()


def test_loss_figure_is_log_scaled_per_group(experiment, captured) -> None:
    figures.plot_loss(experiment["trajectories"], [("a", "b")], Path("unused.png"))
    first, second = captured[0].axes
    assert first.get_yscale() == "log" and len(first.lines) == 10 and len(second.lines) == 5
    np.testing.assert_allclose(second.lines[0].get_ydata(), 1.05 * np.exp(-0.2 * np.arange(20)))


def test_the_figures_of_the_runs_never_import_the_comparisons_scipy(experiment, tmp_path):
    """figures_runs reads the spectra beside the comparison, without its scipy.stats and
    scipy.optimize imports (1 s of every run's last jobs)."""
    paths = [str(p) for p in experiment["spectra"]]
    code = (
        "import sys; from conjugacy.cli import main; "
        f"code = main(['figures', '--spectra', *{paths!r}, '-o', {str(tmp_path)!r}]); "
        "assert code in (0, None), code; "
        "assert not {'scipy.stats', 'scipy.optimize'} & set(sys.modules), 'scipy imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "spectra.png").is_file()
