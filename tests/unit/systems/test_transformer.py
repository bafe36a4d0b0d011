"""The modular-addition data, the batched one-layer Transformer and its companion run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO

from conjugacy import config
from conjugacy.report.accuracy import plot_accuracy
from conjugacy.stores.contract import open_trajectory
from conjugacy.systems.modular import modular_addition, split
from conjugacy.systems.transformer import Transformer, forward, global_norms
from conjugacy.training.companion import run_companion
from conjugacy.training.train import train

TINY = {"p": 7, "d_model": 8, "n_heads": 2, "d_mlp": 16, "inits": 3}


def resolved(**cond) -> dict:
    """One resolved transformer condition (defaults filled), tiny unless told otherwise."""
    cond = {"system": "transformer", **TINY, "koopman": {"delays": 0}, **cond}
    return config.resolve({"experiment": "t", "conditions": {"c": cond}})["conditions"]["c"]


def params_np(model: Transformer) -> dict[str, np.ndarray]:
    return {n: t.detach().numpy().copy() for n, t in model.params.items()}


def reference_logits(p: dict[str, torch.Tensor], x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The full causal Transformer of Nanda et al., one model, every position; logits at '='."""
    resid = p["embed.W_E"].T[x] + p["pos_embed.W_pos"]  # b t d
    q = torch.einsum("btd,hed->bhte", resid, p["blocks.0.attn.W_Q"])
    k = torch.einsum("btd,hed->bhte", resid, p["blocks.0.attn.W_K"])
    v = torch.einsum("btd,hed->bhte", resid, p["blocks.0.attn.W_V"])
    scores = torch.einsum("bhte,bhse->bhts", q, k) / math.sqrt(q.shape[-1])
    mask = torch.triu(torch.ones(3, 3, dtype=torch.bool), diagonal=1)
    attn = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
    z = torch.einsum("bhts,bhse->bthe", attn, v).flatten(2)
    resid = resid + z @ p["blocks.0.attn.W_O"].T
    hidden = torch.relu(resid @ p["blocks.0.mlp.W_in"].T + p["blocks.0.mlp.b_in"])
    resid = resid + hidden @ p["blocks.0.mlp.W_out"].T + p["blocks.0.mlp.b_out"]
    return (resid @ p["unembed.W_U"])[:, -1]


# ---------------------------------------------------------------- data


def test_labels_are_the_sum_mod_p():
    x, y = modular_addition(113)
    assert x.shape == (113 * 113, 3) and (x[:, 2] == 113).all()
    np.testing.assert_array_equal(y, (x[:, 0] + x[:, 1]) % 113)
    assert len({(a, b) for a, b, _ in x}) == 113 * 113


def test_split_sizes_and_disjointness():
    (xa, ya), (xb, yb) = split(113, 0.3, seed=0)
    assert len(ya) == 3830 and len(yb) == 113 * 113 - 3830  # floor(0.3 * 12769)
    pairs_a = {tuple(r) for r in xa[:, :2]}
    pairs_b = {tuple(r) for r in xb[:, :2]}
    assert not pairs_a & pairs_b and len(pairs_a | pairs_b) == 113 * 113
    np.testing.assert_array_equal(ya, (xa[:, 0] + xa[:, 1]) % 113)
    again = split(113, 0.3, seed=0)[0][0]
    np.testing.assert_array_equal(xa, again)
    assert not np.array_equal(xa, split(113, 0.3, seed=1)[0][0])


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.001])
def test_split_refuses_empty_sides(fraction):
    with pytest.raises(ValueError, match="fraction"):
        split(7, fraction, seed=0)


# ---------------------------------------------------------------- the model


def test_shapes_match_nanda_names():
    cond = resolved(**{**TINY, "p": 113, "d_model": 128, "n_heads": 4, "d_mlp": 512, "inits": 1})
    model = Transformer(cond, seed=0)
    assert model.params["blocks.0.mlp.W_out"].shape == (1, 128, 512)
    assert model.params["embed.W_E"].shape == (1, 128, 114)
    assert model.params["unembed.W_U"].shape == (1, 128, 113)
    assert model.params["blocks.0.attn.W_Q"].shape == (1, 4, 32, 128)
    assert len(model.y) == 3830 and len(model.y_test) == 113 * 113 - 3830


def test_forward_equals_full_causal_model():
    """Evaluating only the last position gives the logits of the full causal Transformer."""
    cond = resolved()
    model = Transformer(cond, seed=2)
    with torch.no_grad():
        got = forward(model.params, model.x, cond["n_heads"])
        assert got.shape == (3, len(model.y), 7)
        for i in range(3):
            one = {n: t[i].double() for n, t in model.params.items()}
            want = reference_logits(one, model.x, cond["n_heads"])
            torch.testing.assert_close(got[i].double(), want, rtol=1e-5, atol=1e-5)


def test_deterministic_and_perturbed_inits():
    cond = resolved()
    a, b = Transformer(cond, seed=5), Transformer(cond, seed=5)
    pa = params_np(a)
    for name, value in params_np(b).items():
        np.testing.assert_array_equal(pa[name], value)
    w = pa["blocks.0.mlp.W_in"]
    ratio = w[1:] / w[0]
    assert np.abs(ratio - 1).max() <= 1e-3 + 1e-6 and np.abs(ratio - 1).max() > 1e-4
    for _ in range(3):
        np.testing.assert_array_equal(a.step(), b.step())
    for name, value in params_np(b).items():
        np.testing.assert_array_equal(params_np(a)[name], value)
    other = params_np(Transformer(cond, seed=6))["blocks.0.mlp.W_out"]
    assert not np.array_equal(other, pa["blocks.0.mlp.W_out"])


@pytest.mark.parametrize("constrained", [False, True])
def test_batched_inits_equal_separate_models(constrained):
    extra = {"weight_decay": 0.0, "init_scale": 0.8, "constrain_norm": True} if constrained else {}
    cond = resolved(**extra)
    batched = Transformer(cond, seed=1)
    start = params_np(batched)
    singles = []
    for i in range(3):
        single = Transformer({**cond, "inits": 1}, seed=1)
        with torch.no_grad():
            for name, tensor in single.params.items():
                tensor.copy_(torch.from_numpy(start[name][i : i + 1]))
        if constrained:
            single.norms = global_norms(single.params)
        singles.append(single)
    for _ in range(12):  # past the 10-step warm-up
        losses = batched.step()
        for i, single in enumerate(singles):
            np.testing.assert_allclose(single.step()[0], losses[i], rtol=1e-5)
    end = params_np(batched)
    for i, single in enumerate(singles):
        for name, value in params_np(single).items():
            np.testing.assert_allclose(value[0], end[name][i], rtol=1e-4, atol=1e-6)


def test_constrained_norm_is_kept_and_scaled():
    free = Transformer(resolved(weight_decay=0.0), seed=3)
    cond = resolved(weight_decay=0.0, init_scale=0.8, constrain_norm=True)
    held = Transformer(cond, seed=3)
    n0 = global_norms(held.params).numpy()
    np.testing.assert_allclose(n0, 0.8 * global_norms(free.params).numpy(), rtol=1e-6)
    for _ in range(15):
        held.step()
        free.step()
        np.testing.assert_allclose(global_norms(held.params).numpy(), n0, rtol=1e-6)
    drift = np.abs(global_norms(free.params).numpy() / (n0 / 0.8) - 1)
    assert drift.min() > 1e-4  # without the constraint the norm moves


def test_weight_decay_is_decoupled():
    """One AdamW step: with decay minus without is -lr_0 * wd * p_0 (lr_0 = lr / warmup)."""
    decayed = Transformer(resolved(weight_decay=1.0), seed=4)
    plain = Transformer(resolved(weight_decay=0.0), seed=4)
    p0 = params_np(decayed)
    decayed.step()
    plain.step()
    lr0 = 1e-3 / 10
    for name, value in params_np(decayed).items():
        diff = value.astype(np.float64) - params_np(plain)[name]
        np.testing.assert_allclose(diff, -lr0 * 1.0 * p0[name], atol=2e-7)
    assert np.abs(params_np(decayed)["embed.W_E"] - params_np(plain)["embed.W_E"]).max() > 1e-6


def test_resume_from_state_is_bitwise():
    cond = resolved(weight_decay=0.0, init_scale=0.8, constrain_norm=True)
    whole = Transformer(cond, seed=0)
    for _ in range(6):
        whole.step()
    first = Transformer(cond, seed=0)
    for _ in range(3):
        first.step()
    resumed = Transformer(cond, seed=0)
    resumed.load_state(first.state())
    for _ in range(3):
        resumed.step()
    for name, value in params_np(whole).items():
        np.testing.assert_array_equal(params_np(resumed)[name], value)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("cond", "match"),
    [
        ({"n_heads": 3}, "n_heads: 3 heads do not divide d_model 8"),
        ({"constrain_norm": True}, "weight_decay: 1.0 with constrain_norm"),
        ({"record": ["blocks.0.mlp.W_up"]}, "record: the model has no tensor 'blocks.0.mlp.W_up'"),
        ({"train_fraction": 1.5}, "train_fraction"),
        (
            {"koopman": {"pca": 200, "delays": 0}},
            "pca: 200 components, but the observables have 128",
        ),
    ],
)
def test_bad_transformer_config(cond, match):
    with pytest.raises(config.ConfigError, match=match):
        resolved(**cond)


def test_shipped_configs_resolve():
    for name in ("grokking", "grokking_quick"):
        cfg = config.load(REPO / f"config/experiments/{name}.yaml")
        g, c = cfg["conditions"]["grokking"], cfg["conditions"]["constrained"]
        assert g["weight_decay"] == 1.0 and c["weight_decay"] == 0.0 and c["constrain_norm"]
        assert c["init_scale"] == 0.8 and g["record"] == ["blocks.0.mlp.W_out"]
        want = {"observables": ["blocks.0.mlp.W_out"], "delays": 32, "rank": 10, "pca": 10}
        assert {k: g["koopman"][k] for k in want} == want
        # the companion is not a training setting: changing it does not rerun training
        assert "companion" not in config.training_config(g)


# ---------------------------------------------------------------- stores and companion


def test_train_writes_w_out_trajectory(tmp_path):
    cond = resolved(steps=4, checkpoint_every=2, checkpoint_seconds=0)
    out = train(cond, 0, tmp_path / "t.zarr", progress=False, condition="g")
    ds = open_trajectory(out)
    w = ds["blocks.0.mlp.W_out"]
    assert w.shape == (3, 5, 8, 16) and w.dtype == np.float32
    assert list(ds.data_vars) == ["blocks.0.mlp.W_out", "loss"] or set(ds.data_vars) == {
        "blocks.0.mlp.W_out",
        "loss",
    }
    start = Transformer(cond, seed=0).params["blocks.0.mlp.W_out"].detach().numpy()
    np.testing.assert_array_equal(w.values[:, 0], start)
    assert ds.attrs["status"] == "complete" and np.isfinite(ds["loss"].values).all()


def test_companion_table_and_figure(tmp_path):
    cond = resolved(
        weight_decay=0.0,
        init_scale=0.8,
        constrain_norm=True,
        companion={"steps": 12, "eval_every": 5},
    )
    table = run_companion(cond, tmp_path / "constrained.csv", progress=False)
    assert list(table.step) == [0, 5, 10, 12]
    assert table[["train_accuracy", "test_accuracy"]].stack().between(0, 1).all()
    np.testing.assert_allclose(table.norm, table.norm.iloc[0], rtol=1e-6)
    back = pd.read_csv(tmp_path / "constrained.csv")
    np.testing.assert_allclose(back.train_loss, table.train_loss)
    # the first row is the untrained model of the companion's seed
    model = Transformer({**cond, "inits": 1}, seed=0)
    assert table.train_loss.iloc[0] == pytest.approx(float(model.loss()[0]), rel=1e-9)
    png = plot_accuracy([tmp_path / "constrained.csv"], tmp_path / "accuracy.png")
    assert png.stat().st_size > 1000 and png.with_suffix(".pdf").is_file()
    (tmp_path / "bad.csv").write_text("step,loss\n0,1\n")
    with pytest.raises(ValueError, match="lacks columns"):
        plot_accuracy([tmp_path / "bad.csv"], tmp_path / "x.png")
