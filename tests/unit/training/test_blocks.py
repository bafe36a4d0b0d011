"""A block of seeds in one process: each seed's store as if trained alone, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import assert_stores_identical

import conjugacy.systems.data as data
from conjugacy import config
from conjugacy.cli import main
from conjugacy.config import ConfigError, training_json
from conjugacy.stores.contract import open_trajectory
from conjugacy.systems import fcn
from conjugacy.training.train import train, train_block


def resolved(**cond) -> dict:
    cond.setdefault("koopman", {"delays": 1})
    return config.resolve({"experiment": "t", "conditions": {"c": cond}})["conditions"]["c"]


FCN = {"system": "fcn", "hidden": 4, "steps": 20, "inits": 2, "batch_size": 30}
FCN_BIAS = {**FCN, "bias": True, "record_every": 3, "record": ["fc1.weight", "fc2.bias"]}
FCN_ADAM = {**FCN, "optimizer": "adam"}  # not stacked: one seed after another
OMD = {"system": "omd", "steps": 15}


@pytest.mark.parametrize(
    "cond", [FCN, FCN_BIAS, FCN_ADAM, OMD], ids=["fcn", "fcn-bias", "fcn-adam", "omd"]
)
def test_each_seed_of_a_block_is_bitwise_its_store_trained_alone(tmp_path, cond):
    block_as_alone(resolved(**cond), [3, 0, 7], tmp_path)


def block_as_alone(cond: dict, seeds: list[int], tmp_path) -> list:
    """Train `seeds` alone and as one block; each seed's two stores bitwise equal. The block's."""
    alone = [train(cond, s, tmp_path / f"alone{s}.zarr", "t", "c", False) for s in seeds]
    block = train_block(cond, seeds, [tmp_path / f"block{s}.zarr" for s in seeds], "t", "c", False)
    for a, b in zip(alone, block, strict=True):
        assert_stores_identical(a, b)
    return block


def stacked_steps(monkeypatch) -> list[int]:
    """The seeds of each stacked SGD step the test's trainings take."""
    seen = []
    step = fcn.sgd_steps

    def counted(p, x, y, lr):
        seen.append(y.shape[0])
        return step(p, x, y, lr)

    monkeypatch.setattr(fcn, "sgd_steps", counted)
    return seen


def test_an_fcn_block_steps_its_seeds_as_one_computation(tmp_path, monkeypatch):
    seen = stacked_steps(monkeypatch)
    cond = resolved(**FCN)
    train_block(cond, [0, 1, 2], [tmp_path / f"{s}.zarr" for s in range(3)], progress=False)
    assert seen == [3] * 20  # 20 steps of the 3 seeds at once, not 60 steps of one
    seen.clear()
    train(cond, 0, tmp_path / "alone.zarr", progress=False)
    assert seen == [1] * 20


def test_only_cpu_fcns_with_written_out_sgd_on_the_same_samples_stack():
    cond = resolved(**FCN)
    systems = [fcn.FCN(cond, s) for s in range(3)]
    assert fcn.stackable(systems) and not fcn.stackable(systems[:1])
    adam = [fcn.FCN(resolved(**FCN_ADAM), s) for s in range(2)]
    assert not fcn.stackable(adam)
    systems[2].device = torch.device("cuda")  # cuBLAS batches: not checked bitwise
    assert not fcn.stackable(systems)
    other = fcn.FCN(cond, 3)
    other.x = other.x + 1  # the same condition on other samples
    assert not fcn.stackable([*systems[:2], other])


def test_a_diverged_seed_of_a_stack_leaves_the_others_as_trained_alone(tmp_path, monkeypatch):
    made = fcn.FCN.__init__

    def init(self, cond, seed, device="cpu"):  # seed 1's nets start with a NaN weight
        made(self, cond, seed, device)
        if seed == 1:
            with torch.no_grad():
                self.params["fc2.weight"][0, 0, 0] = float("nan")

    monkeypatch.setattr(fcn.FCN, "__init__", init)
    block = block_as_alone(resolved(**FCN), [0, 1, 2], tmp_path)
    diverged = open_trajectory(block[1], allow_diverged=True).attrs
    assert diverged["status"] == "diverged" and diverged["diverged_step"] == 0
    assert open_trajectory(block[2]).attrs["status"] == "complete"


def test_a_stopped_block_resumes_each_seed_from_its_checkpoint(tmp_path, monkeypatch):
    cond = resolved(**FCN, checkpoint_every=5, checkpoint_seconds=0)
    seeds = [0, 1, 2, 3]
    alone = [train(cond, s, tmp_path / f"alone{s}.zarr", "t", "c", False) for s in seeds]
    outs = [tmp_path / f"block{s}.zarr" for s in seeds]

    def stop(self):  # a wall-time limit during the 13th stacked step
        raise KeyboardInterrupt

    calls = stacked_steps(monkeypatch)
    step = fcn.SeedStack.step
    monkeypatch.setattr(
        fcn.SeedStack, "step", lambda self: stop(self) if len(calls) == 12 else step(self)
    )
    with pytest.raises(KeyboardInterrupt):
        train_block(cond, seeds[:2], outs[:2], "t", "c", False)
    assert all(out.with_name(out.name + ".partial").is_dir() for out in outs[:2])
    calls.clear()
    monkeypatch.setattr(fcn.SeedStack, "step", step)
    train_block(cond, seeds, outs, "t", "c", False)  # 0, 1 resume at step 10; 2, 3 start
    assert calls == [1] * 10 * 2 + [2] * 20
    for a, b in zip(alone, outs, strict=True):
        assert_stores_identical(a, b)


def test_a_block_with_checkpoints_elsewhere_makes_its_output_folder(tmp_path):
    """The stores are built in the checkpoint folders and moved to outputs in a folder that
    did not exist yet (the error was raised only after the whole training)."""
    cond = resolved(**FCN)
    outs = [tmp_path / "new" / "folder" / f"seed{s}.zarr" for s in (0, 1)]
    work = [tmp_path / "checkpoints" / f"seed{s}" for s in (0, 1)]
    train_block(cond, [0, 1], outs, "t", "c", False, work)
    assert all(open_trajectory(out).attrs["status"] == "complete" for out in outs)


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


def test_the_training_jobs_allocator_settings_change_no_bit(tmp_path):
    """`conjugacy train` shares one malloc arena and keeps freed memory (a stacked block's
    steps then reuse their temporaries); a fresh process without the settings trains the
    same stores bit for bit."""
    spec = training_json(resolved(**{**FCN, "steps": 60}))
    outs = {k: [str(tmp_path / f"{k}{s}.zarr") for s in (0, 1)] for k in ("cli", "plain")}
    cli = [sys.executable, "-m", "conjugacy", "train", "--spec", spec, "--quiet"]
    cli += ["--experiment", "t", "--condition", "c"]
    run = subprocess.run([*cli, "--seed", "0", "1", "-o", *outs["cli"]], capture_output=True)
    assert run.returncode == 0, run.stderr[-2000:]
    plain = (
        "import json, sys; from conjugacy.training.train import train_block; "
        f"train_block(json.loads({spec!r}), [0, 1], {outs['plain']!r}, 't', 'c', False); "
        "from conjugacy import memory; assert not memory._keep_freed.cache_info().currsize"
    )
    run = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    for a, b in zip(outs["cli"], outs["plain"], strict=True):
        assert_stores_identical(a, b)


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
