"""summary.md: verdict table, settings and wall time (summary.py, `conjugacy summary`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from conjugacy import config
from conjugacy.cli import main
from conjugacy.report.summary import duration, read_benchmarks, render, seed_list, wall_time
from conjugacy.stores.contract import StoreError

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"

CFG = {
    "experiment": "demo",
    "seeds": list(range(10)),
    "compare": {"pairs": [["omd", "bisection"], ["small", "big"]], "correction": "bonferroni"},
    "conditions": {
        "omd": {"system": "omd", "lr": 0.01, "steps": 99, "koopman": {"delays": 4}},
        "bisection": {"system": "bisection", "steps": 99, "seeds": [0, 2, 5]},
        "small": {
            "system": "fcn",
            "hidden": 5,
            "steps": 300,
            "koopman": {"delays": 64, "rank": 10},
        },
        "big": {"system": "fcn", "hidden": 40, "steps": 300, "koopman": {"delays": 8, "rank": 10}},
    },
}


def bench(path: Path, seconds: float, cpu: float, end: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:00\t1\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    os.utime(path, (end, end))


@pytest.fixture
def benchmarks(tmp_path: Path) -> Path:
    folder = tmp_path / "benchmarks"
    bench(folder / "train/omd/seed0.tsv", 10.0, 8.0, end=1000.0)  # 990 .. 1000
    bench(folder / "train/omd/seed1.tsv", 20.0, 15.0, end=1005.0)  # 985 .. 1005
    bench(folder / "koopman/omd/seed0.tsv", 4.0, 3.5, end=1010.0)  # 1006 .. 1010
    bench(folder / "compare.tsv", 1.5, 1.0, end=1012.0)  # 1010.5 .. 1012
    return folder


def verdicts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "condition_a": ["omd", "small"],
            "condition_b": ["bisection", "big"],
            "n_between": [30, 100],
            "w_between_mean": [0.72, 0.031],
            "w_between_sd": [0.04, 0.01],
            "n_within": [48, 90],
            "w_within_mean": [0.09, 0.029],
            "w_within_sd": [0.07, 0.01],
            "p_value": [0.0001, 0.4],
            "verdict": ["not conjugate", "conjugate"],
            "excluded": ["", "small/seed3: diverged at step 12"],
            "ratio": [8.0, 1.07],
            "p_min": [0.0001, 0.0001],
            "correction": ["bonferroni"] * 2,
            "p_corrected": [0.0002, 0.8],
            "p_min_corrected": [0.0002, 0.0002],
            "mw_u": [1400.0, 5000.0],
            "mw_p": [1e-9, 0.3],
            "ratio_low": [5.5, 0.93],
            "ratio_high": [11.2, 1.24],
            "ratio_level": [0.9, 0.9],
        }
    )


def test_benchmarks_sum_and_span(benchmarks: Path) -> None:
    table = read_benchmarks(benchmarks)
    assert sorted(table.job) == [
        "compare",
        "koopman/omd/seed0",
        "train/omd/seed0",
        "train/omd/seed1",
    ]
    assert table.set_index("job").stage.to_dict()["train/omd/seed1"] == "train"
    assert table.set_index("job").stage.to_dict()["compare"] == "compare"
    total = wall_time(table)
    assert total["jobs"] == 4
    assert total["sum_s"] == pytest.approx(35.5)
    assert total["span_s"] == pytest.approx(1012.0 - 985.0)  # first start to last end


def test_no_benchmarks_is_zero(tmp_path: Path) -> None:
    assert wall_time(read_benchmarks(tmp_path / "absent")) == {
        "jobs": 0,
        "sum_s": 0.0,
        "span_s": 0.0,
    }


def test_malformed_benchmark_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "train" / "x.tsv"
    bad.parent.mkdir()
    bad.write_text("no\tseconds\n1\t2\n")
    with pytest.raises(StoreError, match="x.tsv"):
        read_benchmarks(tmp_path)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(12.34, "12.3 s"), (59.9, "59.9 s"), (245, "4 min 05 s"), (3725, "1 h 02 min")],
)
def test_duration(seconds, text) -> None:
    assert duration(seconds) == text


def test_seed_list() -> None:
    assert seed_list(list(range(25))) == "0-24 (25)"
    assert seed_list([5, 0, 2]) == "0, 2, 5"
    assert seed_list([3]) == "3"


def test_render_has_verdicts_settings_and_wall_time(benchmarks: Path) -> None:
    text = render(config.resolve(CFG), verdicts(), read_benchmarks(benchmarks))
    lines = text.splitlines()
    assert lines[0] == "# Experiment `demo`"
    row = next(line for line in lines if line.startswith("| omd vs bisection |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["omd vs bisection", "0.72 ± 0.04", "0.09 ± 0.07", "8", "[5.5, 11.2]",
                     "0.0001", "0.0002", "1e-09", "**not conjugate**"]  # fmt: skip
    assert "| ratio | ratio 90% interval | p |" in text
    assert "Left out of small vs big: small/seed3: diverged at step 12" in text
    # Settings: resolved values, per-condition seeds, Koopman options, the test.
    omd = next(line for line in lines if line.startswith("| omd | omd |"))
    assert "| 99 | 0.01 | 0-9 (10) |" in omd and "delays 4" in omd and "rank full" in omd
    assert "jitter 0.5" in omd  # a default filled in by the schema
    assert next(line for line in lines if line.startswith("| bisection |")).count("0, 2, 5") == 1
    small = next(line for line in lines if line.startswith("| small | fcn |"))
    assert "hidden 5" in small and "delays 64, rank 10" in small and "checkpoint_every" not in small
    assert "correction bonferroni" in text
    assert "bootstrap 2000, bootstrap_seed 0." in text  # the interval's settings
    # Wall time: per stage and in all.
    assert "| train | 2 | 30.0 s | 20.0 s | 23.0 s |" in text
    assert "| **all** | 4 | 35.5 s | 20.0 s | 27.5 s |" in text
    assert "**27.0 s**" in text


def test_old_verdict_tables_render_with_dashes(tmp_path: Path) -> None:
    old = verdicts().iloc[:, :11]  # the columns before ratio, corrections and Mann-Whitney
    text = render(config.resolve(CFG), old, read_benchmarks(tmp_path))
    row = next(line for line in text.splitlines() if line.startswith("| omd vs bisection |"))
    assert row.endswith("| - | - | 0.0001 | - | - | **not conjugate** |")
    assert "| ratio | ratio interval | p |" in text  # no level to name
    assert "No job benchmarks were found." in text


def test_cli_writes_summary_from_a_spec(tmp_path: Path, benchmarks: Path) -> None:
    csv = tmp_path / "conjugacy.csv"
    verdicts().to_csv(csv, index=False)
    out = tmp_path / "out" / "summary.md"
    spec = json.dumps(config.resolve(CFG))
    args = ["summary", "--spec", spec, "--verdicts", str(csv), "--benchmarks", str(benchmarks)]
    assert main([*args, "-o", str(out)]) == 0
    assert out.read_text() == render(
        config.resolve(CFG), pd.read_csv(csv), read_benchmarks(benchmarks)
    )
    assert not out.with_name("summary.md.partial").exists()


def test_cli_from_a_config_file(tmp_path: Path) -> None:
    csv = tmp_path / "conjugacy.csv"
    verdicts().to_csv(csv, index=False)
    out = tmp_path / "summary.md"
    cfg_file = REPO / "config" / "experiments" / "omd_ogd.yaml"
    args = ["summary", "--config", str(cfg_file), "--verdicts", str(csv)]
    assert main([*args, "--benchmarks", str(tmp_path / "none"), "-o", str(out)]) == 0
    assert "# Experiment `omd_ogd`" in out.read_text()


def test_cli_errors_name_the_culprit(tmp_path: Path, capsys) -> None:
    csv = tmp_path / "bad.csv"
    pd.DataFrame({"condition_a": ["a"], "condition_b": ["b"]}).to_csv(csv, index=False)
    out = tmp_path / "summary.md"
    spec = json.dumps(config.resolve(CFG))
    args = ["summary", "--spec", spec, "--benchmarks", str(tmp_path), "-o", str(out)]
    assert main([*args, "--verdicts", str(csv)]) == 2
    assert "bad.csv lacks the columns ['verdict']" in capsys.readouterr().err
    assert main([*args, "--verdicts", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert not out.exists()
