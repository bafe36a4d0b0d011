"""What `conjugacy compare` reads: spectrum stores by their folders, eigenvalue files, labels."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import xarray as xr

from conjugacy.cli import main
from conjugacy.stores.contract import write_dataset

CENTRE = np.array([0.9, 0.5 + 0.3j, 0.5 - 0.3j])


def spectra_of(rng, shift: float, n: int = 5) -> list[np.ndarray]:
    return [CENTRE + shift + 0.02 * rng.normal(size=3) for _ in range(n)]


def test_stores_are_labelled_by_their_folder_not_their_attributes(tmp_path):
    """A store's seed<N>.zarr in <condition>/ names it, whatever the trajectory's attrs said."""
    rng = np.random.default_rng(0)
    paths = []
    for folder, shift in (("sgd_a", 0.0), ("sgd_b", 0.3)):
        for seed, values in enumerate(spectra_of(rng, shift)):
            ds = xr.Dataset(
                {"eigenvalues": ("mode", values)}, attrs={"condition": "sgd", "seed": 0}
            )
            paths.append(tmp_path / folder / f"seed{seed}.zarr")
            write_dataset(ds, paths[-1], role="spectrum")
    assert main(["compare", *map(str, paths), "-o", str(tmp_path / "out")]) == 0
    row = pd.read_csv(tmp_path / "out" / "conjugacy.csv").iloc[0]
    assert (row.condition_a, row.condition_b) == ("sgd_a", "sgd_b")
    assert row.n_between == 25 and row.verdict == "not conjugate"


def test_eigenvalue_files_with_labels_or_folders_give_the_stores_verdict(tmp_path):
    rng = np.random.default_rng(1)
    a, b = spectra_of(rng, 0.0), spectra_of(rng, 0.3)
    files = []
    for i, values in enumerate(a):  # .npy, labelled on the command line
        files.append(tmp_path / "raw" / f"run{i}.npy")
        files[-1].parent.mkdir(exist_ok=True)
        np.save(files[-1], values)
    for i, values in enumerate(b):  # .csv in a folder named after the condition
        files.append(tmp_path / "adam" / f"seed{i}.csv")
        files[-1].parent.mkdir(exist_ok=True)
        pd.DataFrame({"real": values.real, "imag": values.imag}).to_csv(files[-1], index=False)
    labels = [arg for _ in a for arg in ("--label", "sgd")] + [
        arg for _ in b for arg in ("--label", "adam")
    ]
    out = tmp_path / "out"
    assert main(["compare", *map(str, files), *labels, "-o", str(out)]) == 0
    from_files = pd.read_csv(out / "conjugacy.csv").iloc[0]
    stores = []
    for cond, values in (("sgd", a), ("adam", b)):
        for i, v in enumerate(values):
            stores.append(tmp_path / "stores" / cond / f"seed{i}.zarr")
            write_dataset(xr.Dataset({"eigenvalues": ("mode", v)}), stores[-1], role="spectrum")
    assert main(["compare", *map(str, stores), "-o", str(tmp_path / "out2")]) == 0
    from_stores = pd.read_csv(tmp_path / "out2" / "conjugacy.csv").iloc[0]
    for column in ("ratio", "p_value", "ratio_low", "ratio_high", "verdict"):
        assert from_files[column] == from_stores[column], column


def test_a_pair_naming_another_condition_lists_those_found(tmp_path, capsys):
    rng = np.random.default_rng(2)
    paths = []
    for cond, shift in (("a", 0.0), ("b", 0.1)):
        for seed, values in enumerate(spectra_of(rng, shift, 3)):
            paths.append(tmp_path / cond / f"seed{seed}.npy")
            paths[-1].parent.mkdir(exist_ok=True)
            np.save(paths[-1], values)
    assert main(["compare", *map(str, paths), "--pair", "a:c", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'c'" in err and "['a', 'b']" in err and len(err.strip().splitlines()) == 1


def test_one_condition_warns_that_there_is_nothing_to_compare(tmp_path, caplog):
    rng = np.random.default_rng(3)
    paths = []
    for seed, values in enumerate(spectra_of(rng, 0.0, 3)):
        paths.append(tmp_path / "only" / f"seed{seed}.npy")
        paths[-1].parent.mkdir(exist_ok=True)
        np.save(paths[-1], values)
    with caplog.at_level(logging.WARNING):
        assert main(["compare", *map(str, paths), "-o", str(tmp_path / "o")]) == 0
    assert "nothing to compare" in caplog.text and "only" in caplog.text


def test_a_pickled_npy_file_is_refused_and_runs_nothing(tmp_path, capsys):
    bad = tmp_path / "a" / "seed0.npy"
    bad.parent.mkdir()
    np.save(bad, np.array([object()], dtype=object), allow_pickle=True)
    good = tmp_path / "b" / "seed0.npy"
    good.parent.mkdir()
    np.save(good, CENTRE)
    assert main(["compare", str(bad), str(good), "-o", str(tmp_path / "o")]) == 2
    assert "cannot be read" in capsys.readouterr().err
