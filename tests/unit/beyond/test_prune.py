"""Koopman magnitude pruning: a linear system with a known fixed point, masks, overlaps."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import net_config

from conjugacy import config
from conjugacy.beyond.prune import (
    PruneOptions,
    check_sparsities,
    jaccard,
    koopman_fixed_point,
    magnitude_mask,
    table,
    write_pruning,
)
from conjugacy.cli import main
from conjugacy.stores.contract import open_store


def converging(d: int = 40, steps: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """x_t = x* + sum_i c_i lambda_i^t v_i (a linear system converging to x*): (x, x*)."""
    rng = np.random.default_rng(0)
    fixed = rng.standard_normal(d) * np.linspace(0.1, 3, d)  # distinct magnitudes
    lam = np.array([0.9, 0.7, 0.5 + 0.3j, 0.5 - 0.3j])
    v = rng.standard_normal((d, 3))
    modes = np.column_stack([v[:, 0], v[:, 1], v[:, 2] + 1j * rng.standard_normal(d)])
    modes = np.column_stack([modes, modes[:, 2].conj()])
    t = np.arange(steps)[:, None]
    x = fixed + ((lam[None, :] ** t) @ modes.T).real
    return x, fixed


@pytest.mark.parametrize("rank", ["full", 5])
def test_koopman_prediction_is_the_fixed_point(rank):
    x, fixed = converging()
    predicted, eigenvalue = koopman_fixed_point(x, rank)
    assert eigenvalue == pytest.approx(1.0, abs=1e-9)
    assert predicted == pytest.approx(fixed, abs=1e-8)
    for s in (0.25, 0.5, 0.9):
        assert (magnitude_mask(predicted, s) == magnitude_mask(fixed, s)).all()
    # the last snapshot is still far from the fixed point, and its masks differ
    assert not np.allclose(x[-1], fixed, atol=1e-3)


def test_magnitude_mask_by_hand():
    keep = magnitude_mask(np.array([3.0, -1.0, 2.0, 0.5]), 0.5)
    assert keep.tolist() == [True, False, True, False]
    both = magnitude_mask(np.array([[1.0, -4.0, 2.0], [0.0, 0.0, 5.0]]), 1 / 3)
    assert both.tolist() == [[False, True, True], [False, True, True]]  # ties: first goes
    assert magnitude_mask(np.arange(10.0), 0.7).sum() == 3


def test_jaccard_by_hand():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 1, 0], bool)
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(a, a) == 1.0
    assert jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    stacked = jaccard(np.stack([a, a]), np.stack([b, ~a]))
    assert stacked.tolist() == pytest.approx([1 / 3, 0.0])


@pytest.mark.parametrize(
    ("sparsities", "message"),
    [
        ([], "expected at least one sparsity"),
        ([0.5, 1.0], "1.0 is not a fraction in \\(0, 1\\)"),
        ([0.0], "0.0 is not a fraction"),
        ([0.5, 0.5], "\\[0.5, 0.5\\] repeats a value"),
        (["a"], "'a' is not a fraction"),
    ],
)
def test_bad_sparsities(sparsities, message):
    with pytest.raises(config.ConfigError, match=f"option --sparsities: {message}"):
        check_sparsities(sparsities)


def load(tmp_path, raw: dict) -> dict:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config.load(path)


@pytest.mark.parametrize(
    ("extra", "section", "message"),
    [
        ({}, {"conditions": ["net"], "sparsities": [0.5, 1.2]}, "prune.sparsities.1"),
        ({}, {"conditions": ["net"], "sparsities": [0.5, 0.5]}, "prune.sparsities"),
        ({}, {"conditions": ["x"]}, "prune.conditions.0: condition 'x' is not defined"),
        ({"record": ["fc2.weight"]}, {"conditions": ["net"]}, "add \\['fc1.weight'\\]"),
        ({}, {"conditions": ["net"], "window": [0, 200]}, "prune.window: stop 200 is past"),
        ({}, {"conditions": ["net"], "window": [10, 12]}, "prune.window: \\[10, 12\\) holds 2"),
    ],
)
def test_bad_prune_config(tmp_path, extra, section, message):
    with pytest.raises(config.ConfigError, match=message):
        load(tmp_path, {**net_config(**extra), "prune": section})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conjugacy.training.train import train

    root = tmp_path_factory.mktemp("prune")
    cfg = config.resolve(net_config(holdout=0.2))
    return train(cfg["conditions"]["net"], 0, root / "t.zarr", "t", "net", progress=False)


def held_out_accuracy(w1: np.ndarray, w2: np.ndarray) -> float:
    """Accuracy of the bias-free ReLU net (w1, w2) on the 20% of digits held out, by torch."""
    import torch

    from conjugacy.systems.data import load_dataset, split_holdout

    _, (x, y) = split_holdout(*load_dataset("digits"), 0.2)
    logits = (
        torch.relu(torch.from_numpy(x).double() @ torch.from_numpy(w1).T) @ torch.from_numpy(w2).T
    )
    return float((logits.argmax(1).numpy() == y).mean())


def test_prune_of_a_trained_net(trained, tmp_path):
    """Fixed point, masks, Jaccard and held-out accuracies equal a numpy/torch recomputation."""
    sparsities = [0.5, 0.9]
    opts = PruneOptions(window=(0, 30), rank=5, sparsities=sparsities, finetune_steps=0)
    ds = write_pruning(trained, tmp_path / "p.zarr", opts)
    assert ds.attrs["evaluated_on"] == "validation"
    store = open_store(trained, "trajectory")
    shapes = [store[n].shape[2:] for n in ("fc1.weight", "fc2.weight")]
    weights = np.concatenate(
        [
            store[n].values.astype(np.float64).reshape(2, 61, -1)
            for n in ("fc1.weight", "fc2.weight")
        ],
        axis=2,
    )  # (init, step, 4 x 64 + 10 x 4)

    def accuracy(flat: np.ndarray) -> float:
        w1, w2 = np.split(flat, [int(np.prod(shapes[0]))])
        return held_out_accuracy(w1.reshape(shapes[0]), w2.reshape(shapes[1]))

    for i in range(2):
        # Exact DMD of snapshots 0..29, rank 5: modes Y V S^-1 W / mu, the first snapshot's
        # amplitudes W^-1 U^T z_0; the eigenvalue nearest 1 and its mode times its amplitude.
        z = weights[i, :30]
        u, s, vh = np.linalg.svd(z[:-1].T, full_matrices=False)
        u, s, v = u[:, :5], s[:5], vh[:5].T
        mu, w = np.linalg.eig(u.T @ z[1:].T @ v / s)
        modes = z[1:].T @ v / s @ w / mu
        b = np.linalg.solve(w, u.T @ z[0])
        k = np.argmin(np.abs(mu - 1))
        predicted, final = (modes[:, k] * b[k]).real, weights[i, -1]
        assert ds.eigenvalue.values[i] == pytest.approx(mu[k], abs=1e-10)
        error = np.linalg.norm(predicted - final) / np.linalg.norm(final)
        assert ds.prediction_error.values[i] == pytest.approx(error, rel=1e-8)
        window_error = np.linalg.norm(z[-1] - final) / np.linalg.norm(final)
        assert ds.window_error.values[i] == pytest.approx(window_error, rel=1e-12)
        scores = {"koopman": predicted, "magnitude_window": z[-1], "magnitude_final": final}
        for sparsity in sparsities:
            masks = {}
            for name, score in scores.items():
                keep = np.ones(final.size, bool)
                keep[np.argsort(np.abs(score), kind="stable")[: round(sparsity * final.size)]] = (
                    False
                )
                masks[name] = keep
                got = ds.accuracy.sel(criterion=name, sparsity=sparsity).values[:, i]
                assert got.tolist() == pytest.approx([accuracy(final * keep)] * 2)  # before, after
            for pair in ds.pair.values:
                a, b = (masks[m] for m in str(pair).split(":"))
                expected = (a & b).sum() / (a | b).sum()
                assert ds.jaccard.sel(pair=pair, sparsity=sparsity).values[i] == pytest.approx(
                    expected
                )
    unpruned = [accuracy(weights[i, -1]) for i in range(2)]
    assert ds.attrs["accuracy_final"] == pytest.approx(np.mean(unpruned))
    frame = table([tmp_path / "p.zarr"])
    assert len(frame) == 3 * 2 and (frame.jaccard_koopman[frame.method == "koopman"] == 1).all()
    row = frame[(frame.method == "koopman") & (frame.sparsity == 0.9)].iloc[0]
    assert row.jaccard_magnitude_final == pytest.approx(
        float(ds.jaccard.sel(pair="koopman:magnitude_final", sparsity=0.9).mean())
    )


def test_prune_command_fine_tunes_and_reports(trained, tmp_path):
    out = tmp_path / "p.zarr"
    argv = ["prune", str(trained), "-o", str(out), "--window", "0:30", "--rank", "5"]
    assert main([*argv, "--sparsities", "0.8", "--finetune-steps", "10"]) == 0
    ds = open_store(out, "prune")
    gain = ds.accuracy.sel(phase="after") - ds.accuracy.sel(phase="before")
    assert float(gain.mean()) > 0  # fine-tuning recovers accuracy lost by pruning 80%
    csv, png = tmp_path / "p.csv", tmp_path / "p.png"
    assert main(["prune-report", str(out), "-o", str(csv), "--figure", str(png)]) == 0
    assert png.is_file() and "jaccard_magnitude_final" in csv.read_text()


def test_prune_command_refuses_bad_input(trained, tmp_path, capsys):
    out = tmp_path / "p.zarr"
    assert main(["prune", str(trained), "-o", str(out), "--sparsities", "0.5,1.5"]) == 2
    assert "option --sparsities: 1.5 is greater than or equal to the maximum of 1" in (
        capsys.readouterr().err
    )
    assert main(["prune", str(trained), "-o", str(out), "--window", "0:500"]) == 2
    assert "option --window" in capsys.readouterr().err
    assert not out.exists()


def test_finetune_uses_its_learning_rate():
    """finetune_lr is the SGD step size of the fine-tuning: the same steps as a condition with
    that lr, and not those of the condition's own lr."""
    from conjugacy.beyond.prune import finetune

    cond = config.resolve(net_config())["conditions"]["net"]
    rng = np.random.default_rng(0)
    params = {
        "fc1.weight": rng.normal(0, 0.1, (2, 4, 64)),
        "fc2.weight": rng.normal(0, 0.3, (2, 10, 4)),
    }
    masks = {n: rng.random(v.shape[1:]) > 0.5 for n, v in params.items()}
    given = finetune(cond, 0, params, masks, 5, 0.02)
    as_condition = finetune({**cond, "lr": 0.02}, 0, params, masks, 5, None)
    own = finetune(cond, 0, params, masks, 5, None)
    assert cond["lr"] != 0.02
    for name in params:
        assert np.array_equal(given[name], as_condition[name])
        assert not np.allclose(given[name], own[name])
        assert np.all(given[name][:, ~masks[name]] == 0)  # pruned weights stay at zero
