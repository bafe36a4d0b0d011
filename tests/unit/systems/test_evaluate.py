"""The systems' one evaluation (fcn.evaluate, mlp.evaluate) and the public next_batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conjugacy.config import resolve
from conjugacy.systems import fcn, mlp


def hand_nets() -> dict[str, np.ndarray]:
    """Two 2 -> 2 -> 3 ReLU nets with bias, differing only in fc2.bias."""
    w1, b1 = np.array([[1.0, 0.0], [0.0, -1.0]]), np.array([0.0, 1.0])
    w2 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    return {
        "fc1.weight": np.stack([w1, w1]),
        "fc1.bias": np.stack([b1, b1]),
        "fc2.weight": np.stack([w2, w2]),
        "fc2.bias": np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 5.0]]),
    }


X = np.array([[1.0, 2.0], [-1.0, 0.0]])
Y = np.array([0, 2])


def test_classifier_by_hand():
    """Hidden ReLU [1, 0] and [0, 1]; logits [1, 0, 0], [0, 1, 0] (net 0), [1, 0, 6], [0, 1, 6]."""
    loss, accuracy = fcn.evaluate(hand_nets(), X, Y)
    e = math.e
    expected = [
        (math.log(e + 2) - 1 + math.log(e + 2)) / 2,
        (math.log(e + 1 + e**6) - 1 + math.log(1 + e + e**6) - 6) / 2,
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-14)
    assert accuracy.tolist() == [0.5, 0.5]  # net 0: sample 0 right; net 1: sample 1 right
    assert loss.dtype == np.float64


def test_leading_axes_and_float32_weights():
    """(step, init) leading axes give each net's numbers; float32 weights are read exactly."""
    nets = hand_nets()
    rng = np.random.default_rng(0)
    steps = {
        n: np.stack([v, v + 0.1 * rng.standard_normal(v.shape), v[::-1]]) for n, v in nets.items()
    }
    loss, accuracy = fcn.evaluate(steps, X, Y)
    assert loss.shape == accuracy.shape == (3, 2)
    for t in range(3):
        one = fcn.evaluate({n: v[t] for n, v in steps.items()}, X, Y)
        np.testing.assert_allclose(loss[t], one[0], rtol=1e-15)
        np.testing.assert_array_equal(accuracy[t], one[1])
    single = {n: v.astype(np.float32) for n, v in steps.items()}
    exact = {n: v.astype(np.float64) for n, v in single.items()}
    np.testing.assert_array_equal(fcn.evaluate(single, X, Y)[0], fcn.evaluate(exact, X, Y)[0])


def test_classifier_matches_torch_cross_entropy():
    rng = np.random.default_rng(0)
    params = {
        "fc1.weight": rng.standard_normal((2, 5, 6)),
        "fc1.bias": rng.standard_normal((2, 5)),
        "fc2.weight": rng.standard_normal((2, 3, 5)),
        "fc2.bias": rng.standard_normal((2, 3)),
    }
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 3, 7)
    loss, acc = fcn.evaluate(params, x, y)
    for i in range(2):
        t = {k: torch.from_numpy(v[i]) for k, v in params.items()}
        h = torch.relu(torch.from_numpy(x) @ t["fc1.weight"].T + t["fc1.bias"])
        logits = h @ t["fc2.weight"].T + t["fc2.bias"]
        ref = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
        assert loss[i] == pytest.approx(float(ref), rel=1e-12)
        assert acc[i] == pytest.approx(float((logits.argmax(1).numpy() == y).mean()))


def test_regression_by_hand():
    """tanh net 1 -> 1 -> 1: outputs 2 tanh(x) + 0.5 = [0.5, 1.5] against y = [0, 2]."""
    params = {
        "fc1.weight": np.array([[[1.0]]]),
        "fc1.bias": np.array([[0.0]]),
        "fc2.weight": np.array([[[2.0]]]),
        "fc2.bias": np.array([[0.5]]),
    }
    x = np.array([[0.0], [math.atanh(0.5)]])
    mse, r2 = mlp.evaluate(params, x, np.array([0.0, 2.0]))
    assert mse.tolist() == pytest.approx([0.25], rel=1e-14)
    assert r2.tolist() == pytest.approx([0.75], rel=1e-14)  # Var(y) = 1


@pytest.mark.parametrize("system", ["fcn", "mlp"])
def test_evaluation_is_the_training_loss(system):
    """The one evaluation equals the system's own (float32 torch) loss on the whole dataset."""
    from conjugacy.training.train import make_system

    cond = {"system": system, "hidden": 3, "bias": True, "inits": 2}
    if system == "mlp":
        cond |= {"inputs": 4, "samples": 64}
    cond = resolve({"experiment": "t", "conditions": {"c": cond}})["conditions"]["c"]
    net, _ = make_system(cond, 0)
    evaluate = fcn.evaluate if system == "fcn" else mlp.evaluate
    loss, score = evaluate(net.snapshot(), net.x.numpy(), net.y.numpy())
    with torch.no_grad():
        expected = net._losses(net.x, net.y).double().numpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert loss.shape == score.shape == (2,)
    assert not np.array_equal(loss[0], loss[1])  # two different inits


def test_next_batch_is_the_batch_a_step_draws():
    """next_batch draws from the order a step draws from: the same batches, in turn."""
    from conjugacy.training.train import make_system

    cond = {"system": "fcn", "hidden": 3, "inits": 1, "batch_size": 40}
    cond = resolve({"experiment": "t", "conditions": {"c": cond}})["conditions"]["c"]
    a, _ = make_system(cond, 0)
    b, _ = make_system(cond, 0)
    for _ in range(3):
        xa, ya = a.next_batch()
        xb, yb = b._next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(a.order) == len(b.order) and len(xa) == 40
