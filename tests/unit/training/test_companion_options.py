"""The companion's own settings (length, evaluation interval, precision) and the allocator setting.

The companion is a picture, not part of the test: its `dtype` and `eval_every`
change what it costs, not what the analysed trajectories compute.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conjugacy import cli, config
from conjugacy.config import ConfigError
from conjugacy.training.companion import companion_model, eval_steps, run_companion

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = {"p": 13, "d_model": 16, "n_heads": 2, "d_mlp": 32, "train_fraction": 0.5, "lr": 0.01}


def resolved(**cond) -> dict:
    """One resolved transformer condition (defaults filled), small unless told otherwise."""
    cond = {"system": "transformer", **SMALL, "koopman": {"delays": 0}, **cond}
    return config.resolve({"experiment": "t", "conditions": {"g": cond}})["conditions"]["g"]


def test_defaults_keep_the_float32_companion():
    comp = resolved(companion={"steps": 5})["companion"]
    assert comp == {
        "steps": 5,
        "seed": 0,
        "eval_every": 50,
        "eval_early": False,
        "dtype": "float32",
    }


@pytest.mark.parametrize(
    ("steps", "every", "early", "expected"),
    [
        (10, 3, False, [0, 3, 6, 9, 10]),
        (10, 5, False, [0, 5, 10]),
        (10, 10, False, [0, 10]),
        (10, 25, False, [0, 10]),
        (20, 10, True, [0, 1, 2, 4, 8, 10, 20]),
        (5, 25, True, [0, 1, 2, 4, 5]),
    ],
)
def test_eval_every_sets_the_recorded_steps(tmp_path, steps, every, early, expected):
    assert eval_steps(steps, every, early) == expected
    cond = resolved(companion={"steps": steps, "eval_every": every, "eval_early": early})
    table = run_companion(cond, tmp_path / "g.csv", progress=False)
    assert list(table.step) == expected
    # the same model at the same steps: a sparser table is a subset of a denser one
    dense = run_companion(
        resolved(companion={"steps": steps, "eval_every": 1}), tmp_path / "d.csv", progress=False
    )
    picked = dense.set_index("step").loc[expected].reset_index()
    np.testing.assert_array_equal(picked.to_numpy(), table.to_numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_companion_parameters_and_optimizer_state_have_its_dtype(dtype):
    cond = resolved(companion={"steps": 2, "dtype": dtype})
    model = companion_model(cond, seed=0, dtype=dtype)
    model.step()
    want = getattr(torch, dtype)
    assert {t.dtype for t in model.params.values()} == {want}
    state = model.optimizer.state.values()
    assert {s["exp_avg"].dtype for s in state} == {s["exp_avg_sq"].dtype for s in state} == {want}
    # both precisions start from the same float32 init (init 0 of the seed)
    start = companion_model(cond, seed=0)
    widened = companion_model(cond, seed=0, dtype="float64")
    for name, tensor in start.params.items():
        assert torch.equal(tensor.double(), widened.params[name])


@pytest.mark.parametrize("constrain", [False, True])
def test_float32_and_float64_companions_agree_on_a_short_run(tmp_path, constrain):
    extra = {"weight_decay": 0.0, "init_scale": 0.8, "constrain_norm": True} if constrain else {}
    runs = {
        dtype: run_companion(
            resolved(companion={"steps": 40, "eval_every": 10, "dtype": dtype}, **extra),
            tmp_path / f"{dtype}.csv",
            progress=False,
        )
        for dtype in ("float32", "float64")
    }
    f32, f64 = runs["float32"], runs["float64"]
    assert list(f32.step) == list(f64.step) == [0, 10, 20, 30, 40]
    # the run learns something, so agreement is not two flat lines
    assert f32.train_accuracy.iloc[-1] > f32.train_accuracy.iloc[0] + 0.2
    n_train = int(0.5 * 13**2)
    for col in ("train_accuracy", "test_accuracy"):
        # an accuracy differs by at most a couple of examples whose top logits nearly tie
        np.testing.assert_allclose(f32[col], f64[col], atol=2.5 / n_train, err_msg=col)
    np.testing.assert_allclose(f32.train_loss, f64.train_loss, rtol=1e-3)
    np.testing.assert_allclose(f32.norm, f64.norm, rtol=1e-4)
    assert not np.array_equal(f32.train_loss.to_numpy(), f64.train_loss.to_numpy())
    if constrain:  # the norm is held in both precisions
        np.testing.assert_allclose(f64.norm, f64.norm.iloc[0], rtol=1e-12)


def write_cfg(tmp_path, companion) -> str:
    cond = {"system": "transformer", **SMALL, "companion": companion}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"experiment": "t", "conditions": {"g": cond}}))
    return str(path)


@pytest.mark.parametrize(
    ("companion", "expected"),
    [
        ({"steps": 5, "dtype": "float16"}, "config key conditions.g.companion.dtype: 'float16'"),
        ({"steps": 5, "eval_every": 0}, "conditions.g.companion.eval_every: 0 is less than"),
        ({"steps": 0}, "conditions.g.companion.steps: 0 is less than"),
        ({"steps": 5, "eval_early": "yes"}, "conditions.g.companion.eval_early: 'yes'"),
        ({"steps": 5, "every": 2}, "conditions.g.companion"),
    ],
    ids=["dtype float16", "eval_every 0", "steps 0", "eval_early yes", "unknown key"],
)
def test_invalid_companion_settings_exit_2_with_one_line(tmp_path, capsys, companion, expected):
    out = tmp_path / "g.csv"
    args = ["companion", "--config", write_cfg(tmp_path, companion), "--condition", "g"]
    assert cli.main([*args, "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("conjugacy companion: error: ") and "\n" not in err, err
    assert expected in err, err
    assert not out.exists()
    with pytest.raises(ConfigError):
        config.resolve(yaml.safe_load((tmp_path / "c.yaml").read_text()))


@pytest.mark.parametrize(
    ("companion", "expected"),
    [
        ({"steps": 5, "seed": 0, "eval_every": 1, "dtype": "bfloat16"}, "companion.dtype"),
        ({"steps": 5, "seed": 0, "eval_every": 0, "dtype": "float32"}, "companion.eval_every"),
        ({"steps": 5, "eval_every": 1, "eval_early": 1}, "companion.eval_early"),
    ],
)
def test_invalid_spec_companion_exits_2(tmp_path, capsys, companion, expected):
    """The workflow passes a JSON spec, which the schema does not see: the companion checks it."""
    spec = json.dumps({**config.training_config(resolved()), "companion": companion})
    args = ["companion", "--spec", spec, "--condition", "g", "-o", str(tmp_path / "g.csv")]
    assert cli.main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("conjugacy companion: error: ") and expected in err, err


# The allocator setting: no arithmetic changes. A training of 5 full-size inits
# allocates activations of 5 x 3830 x 512 floats (39 MB, above glibc's default
# mmap threshold); its store must be the same bit for bit with and without.
TRAIN = """
import sys
import torch
import conjugacy.systems.transformer as tr
from conjugacy import config
from conjugacy.training.train import train
torch.set_num_threads(1)
if sys.argv[2] == "off":
    tr.keep_freed_memory = lambda: False
cond = config.load(sys.argv[3])["conditions"]["g"]
train(cond, 1, sys.argv[1], progress=False)
print(tr.keep_freed_memory())
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_kept_memory_changes_no_bit_of_a_store(tmp_path):
    cond = {"system": "transformer", "inits": 5, "steps": 2, "koopman": {"delays": 0}}
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({"experiment": "t", "conditions": {"g": cond}}))
    applied = {}
    for mode in ("off", "on"):
        run = subprocess.run(
            [sys.executable, "-c", TRAIN, str(tmp_path / f"{mode}.zarr"), mode, str(cfg)],
            capture_output=True,
            text=True,
            check=True,
        )
        applied[mode] = run.stdout.split()[-1]
    assert applied == {"off": "False", "on": "True"}
    import zarr

    off, on = (zarr.open_group(tmp_path / f"{m}.zarr", mode="r") for m in ("off", "on"))
    names = sorted(name for name, _ in off.arrays())
    assert names == sorted(name for name, _ in on.arrays()) and "blocks.0.mlp.W_out" in names
    for name in names:
        a, b = off[name][...], on[name][...]
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), name
