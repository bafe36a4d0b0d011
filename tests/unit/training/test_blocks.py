"""A block of seeds in one process: each seed's store as if trained alone, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import assert_stores_identical

import conjugacy.systems.data as data
from conjugacy import config
from conjugacy.cli import main
from conjugacy.config import ConfigError, training_json
from conjugacy.training.train import train, train_block


def resolved(**cond) -> dict:
    cond.setdefault("koopman", {"delays": 1})
    return config.resolve({"experiment": "t", "conditions": {"c": cond}})["conditions"]["c"]


FCN = {"system": "fcn", "hidden": 4, "steps": 20, "inits": 2, "batch_size": 30}
OMD = {"system": "omd", "steps": 15}


@pytest.mark.parametrize("cond", [FCN, OMD], ids=["fcn", "omd"])
def test_each_seed_of_a_block_is_bitwise_its_store_trained_alone(tmp_path, cond):
    cond = resolved(**cond)
    seeds = [3, 0, 7]
    alone = [train(cond, s, tmp_path / f"alone{s}.zarr", "t", "c", False) for s in seeds]
    block = train_block(cond, seeds, [tmp_path / f"block{s}.zarr" for s in seeds], "t", "c", False)
    for a, b in zip(alone, block, strict=True):
        assert_stores_identical(a, b)


def test_a_block_reads_its_dataset_once(tmp_path, monkeypatch):
    calls = []
    read = data._read_dataset

    def counted(name, data_dir=None):
        calls.append(name)
        return read(name, data_dir)

    monkeypatch.setattr(data, "_read_dataset", counted)
    cond = resolved(**FCN)
    train_block(cond, [0, 1], [tmp_path / "a.zarr", tmp_path / "b.zarr"], progress=False)
    assert calls == ["digits"]
    train(cond, 2, tmp_path / "c.zarr", progress=False)  # outside a block: no cache
    assert calls == ["digits", "digits"]


def test_cached_dataset_is_a_private_copy():
    with data.cached_datasets():
        x, _ = data.load_dataset("digits")
        x[:] = 0
        again, _ = data.load_dataset("digits")
    assert again.any() and again.flags.writeable


def test_a_block_needs_one_output_per_seed(tmp_path):
    with pytest.raises(ConfigError, match="as many outputs"):
        train_block(resolved(**OMD), [0, 1], [tmp_path / "a.zarr"], progress=False)


def test_a_block_checks_every_output_before_training(tmp_path):
    taken = tmp_path / "b.zarr"
    taken.mkdir()
    (taken / "mine.txt").write_text("not a store")
    outs = [tmp_path / "a.zarr", taken]
    with pytest.raises(Exception, match="b.zarr"):
        train_block(resolved(**OMD), [0, 1], outs, progress=False)
    assert not (tmp_path / "a.zarr").exists()


def test_cli_trains_a_block_and_computes_each_spectrum_like_one_job(tmp_path):
    cond = resolved(**OMD)
    spec = training_json(cond)
    common = ["--spec", spec, "--experiment", "t", "--condition", "c", "--quiet"]
    assert main(["train", *common, "--seed", "0", "-o", str(tmp_path / "one0.zarr")]) == 0
    assert main(["train", *common, "--seed", "1", "-o", str(tmp_path / "one1.zarr")]) == 0
    outs = [str(tmp_path / "blk0.zarr"), str(tmp_path / "blk1.zarr")]
    ckpts = [str(tmp_path / "ck0"), str(tmp_path / "ck1")]
    argv = ["train", *common, "--seed", "0", "1", "-o", *outs, "--checkpoint-dir", *ckpts]
    assert main(argv) == 0
    for seed in (0, 1):
        assert_stores_identical(tmp_path / f"one{seed}.zarr", tmp_path / f"blk{seed}.zarr")

    settings = json.dumps({"delays": 1})
    for seed in (0, 1):
        single = [str(tmp_path / f"one{seed}.zarr"), "-o", str(tmp_path / f"s{seed}.zarr")]
        argv = ["koopman", *single, "--settings", settings, "--condition", "c", "--seed", str(seed)]
        assert main(argv) == 0
    each = [*outs, "--each", "-o", str(tmp_path / "e0.zarr"), str(tmp_path / "e1.zarr")]
    assert (
        main(["koopman", *each, "--settings", settings, "--condition", "c", "--seed", "0", "1"])
        == 0
    )
    for seed in (0, 1):
        assert_stores_identical(tmp_path / f"s{seed}.zarr", tmp_path / f"e{seed}.zarr")


def test_cli_koopman_several_outputs_need_each(tmp_path, capsys):
    argv = ["koopman", str(tmp_path / "a.zarr"), "-o", str(tmp_path / "x"), str(tmp_path / "y")]
    assert main(argv) == 2
    assert "--each" in capsys.readouterr().err
    argv = ["koopman", "a", "b", "c", "--each", "-o", str(tmp_path / "x"), str(tmp_path / "y")]
    assert main(argv) == 2
    assert "split evenly" in capsys.readouterr().err


def test_cli_train_seeds_and_outputs_must_pair(tmp_path, capsys):
    spec = training_json(resolved(**OMD))
    argv = ["train", "--spec", spec, "--condition", "c", "--seed", "0", "1", "-o", "a.zarr"]
    assert main(argv) == 2
    assert "as many -o outputs" in capsys.readouterr().err


def test_seeds_per_job_is_a_positive_integer_per_experiment_or_condition():
    raw = {"experiment": "t", "conditions": {"c": {**OMD, "seeds_per_job": 2}}}
    cfg = config.resolve(raw)
    assert cfg["seeds_per_job"] >= 1 and cfg["conditions"]["c"]["seeds_per_job"] == 2
    for bad in (0, 1.5, "2"):
        with pytest.raises(ConfigError, match="seeds_per_job"):
            config.resolve({**raw, "seeds_per_job": bad})


def test_stages_that_do_not_train_never_import_torch():
    code = (
        "import conjugacy.koopman.spectrum, conjugacy.verdict.compare, "
        "conjugacy.report.figures, conjugacy.report.summary; import sys; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_training_job_never_imports_xarray(tmp_path):
    """Training writes its stores with zarr alone: xarray and pandas are 0.3 s a job."""
    spec = training_json(resolved(**OMD))
    code = (
        "import sys; from conjugacy.cli import main; "
        f"code = main(['train', '--spec', {spec!r}, '--condition', 'c', '--seed', '0', "
        f"'-o', {str(tmp_path / 's.zarr')!r}]); "
        "assert code == 0, code; "
        "assert not {'xarray', 'pandas'} & set(sys.modules), 'xarray imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "s.zarr" / "zarr.json").is_file()
