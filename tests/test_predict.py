"""Koopman training: node and global jumps (predict.py), accelerated training, config and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import yaml

from conjugacy import accelerate, predict
from conjugacy.cli import main
from conjugacy.config import ConfigError, resolve
from conjugacy.train import train

ETA = 0.3


def regression(rng: np.random.Generator, n: int = 100, d: int = 3, out: int = 2):
    """Inputs (n, d) with distinct feature scales, targets (n, out) of a noisy linear map."""
    x = rng.standard_normal((n, d)) * np.linspace(1.0, 0.4, d)
    y = x @ rng.standard_normal((d, out)) + 0.5 + 0.1 * rng.standard_normal((n, out))
    return x, y


def gradient_descent(x, y, w, b, steps: int):
    """Full-batch GD on the mean squared error of y = x W^T + b: (steps + 1) snapshots.

    Every neuron's (row of W, entry of b) update is affine in that neuron's own
    weights: z <- (I - 2 eta Z^T Z / n) z + 2 eta Z^T y_j / n with Z = [x, 1].
    """
    ws, bs = [w], [b]
    n = len(x)
    for _ in range(steps):
        err = x @ w.T + b - y
        w = w - ETA * 2 * err.T @ x / n
        b = b - ETA * 2 * err.mean(axis=0)
        ws.append(w)
        bs.append(b)
    return np.stack(ws), np.stack(bs)


def least_squares(x, y):
    z = np.hstack([x, np.ones((len(x), 1))])
    sol = np.linalg.lstsq(z, y, rcond=None)[0]
    return sol[:-1].T, sol[-1]


@pytest.fixture
def trajectory():
    """Two inits of a 3 -> 2 linear regression with bias, trained by GD for 300 steps."""
    rng = np.random.default_rng(0)
    x, y = regression(rng)
    runs = [gradient_descent(x, y, rng.standard_normal((2, 3)), rng.standard_normal(2), 300)]
    runs.append(gradient_descent(x, y, rng.standard_normal((2, 3)), rng.standard_normal(2), 300))
    w = np.stack([r[0] for r in runs], axis=1)  # (steps, inits, 2, 3)
    b = np.stack([r[1] for r in runs], axis=1)  # (steps, inits, 2)
    return {"fc1.weight": w, "fc1.bias": b}, (x, y)


def window_of(traj, start: int, size: int):
    return {n: v[start : start + size] for n, v in traj.items()}


def max_rel(pred, truth):
    return max(
        np.abs(pred[n] - truth[n]).max() / np.abs(truth[n]).max()
        for n in ("fc1.weight", "fc1.bias")
    )


def test_node_operator_is_the_affine_gd_map(trajectory):
    traj, (x, y) = trajectory
    snaps = predict.node_observables(window_of(traj, 0, 8), "fc1")  # (8, inits, 2, 3 + 1 + 1)
    k = predict.node_fit(snaps)
    assert k.shape == (2, 2, 5, 5)
    z = np.hstack([x, np.ones((len(x), 1))])
    for j in range(2):
        expected = np.eye(5)
        expected[:4, :4] -= 2 * ETA * z.T @ z / len(x)
        expected[:4, 4] = 2 * ETA * z.T @ y[:, j] / len(x)
        for i in range(2):
            np.testing.assert_allclose(k[i, j], expected, atol=1e-8)


@pytest.mark.parametrize("jump", [1, 20, 150])
def test_node_and_global_jumps_are_exact_on_linear_regression(trajectory, jump):
    traj, _ = trajectory
    start, window = 5, 10
    snaps = window_of(traj, start, window)
    truth = {n: v[start + window - 1 + jump] for n, v in traj.items()}
    node, _, _ = predict.node_predict(snaps, [jump], predict.EPS)
    assert max_rel(node[jump], truth) < 1e-9
    glob, _, _, _ = predict.global_predict(snaps, [jump], "full", predict.EPS)
    assert max_rel(glob[jump], truth) < 1e-9
    assert glob[jump]["fc1.weight"].shape == (2, 2, 3)


def test_fixed_point_is_the_least_squares_solution(trajectory):
    traj, (x, y) = trajectory
    w_star, b_star = least_squares(x, y)
    _, fixed, _, _ = predict.global_predict(window_of(traj, 0, 12), [1], "full", predict.EPS)
    for i in range(2):
        np.testing.assert_allclose(fixed["fc1.weight"][i], w_star, atol=1e-9)
        np.testing.assert_allclose(fixed["fc1.bias"][i], b_star, atol=1e-9)


def test_window_too_short_degrades(trajectory):
    """A neuron has 5 observables: 6 snapshots (5 pairs) determine K, 3 do not."""
    traj, _ = trajectory
    errors = {}
    for window in (3, 6):
        snaps = window_of(traj, 0, window)
        truth = {n: v[window - 1 + 50] for n, v in traj.items()}
        node, _, _ = predict.node_predict(snaps, [50], predict.EPS)
        errors[window] = max_rel(node[50], truth)
    assert errors[6] < 1e-8
    assert errors[3] > 1e-3


def test_flatten_round_trip():
    rng = np.random.default_rng(1)
    params = {"b": rng.standard_normal((3, 4)), "a": rng.standard_normal((3, 2, 5))}
    flat = predict.flatten(params, 1)
    assert flat.shape == (3, 14)
    back = predict.unflatten(flat, {"a": (2, 5), "b": (4,)})
    for name in params:
        np.testing.assert_array_equal(back[name], params[name])


# ----------------------------------------------------------- config and CLI

MLP = {
    "system": "mlp",
    "inputs": 4,
    "samples": 64,
    "hidden": 4,
    "lr": 0.1,
    "steps": 40,
    "inits": 2,
    "checkpoint_every": 0,
}


def config(**predict_section) -> dict:
    return {
        "experiment": "t",
        "seeds": [0],
        "conditions": {"mlp": dict(MLP)},
        "predict": {"conditions": ["mlp"], "windows": [5, 12], "jumps": [4, 20]} | predict_section,
    }


def test_config_defaults_and_checks():
    cfg = resolve(config())
    assert cfg["predict"]["methods"] == ["node", "global", "fixed_point"]
    assert cfg["predict"]["accelerate"]["k"] == 20
    with pytest.raises(
        ConfigError, match=r"config key predict.jumps \(mlp\).*step 51, past the 40"
    ):
        resolve(config(start=20))
    with pytest.raises(ConfigError, match="predict.conditions.0: condition 'nope'"):
        resolve(config(conditions=["nope"]))
    with pytest.raises(ConfigError, match="predict.windows.0"):
        resolve(config(windows=[1]))
    with pytest.raises(ConfigError, match="predict.accelerate.window"):
        resolve(config(accelerate={"k": 5, "window": 7}))
    cfg = config()
    cfg["conditions"]["mlp"]["record"] = ["fc2.weight"]
    with pytest.raises(ConfigError, match=r"every tensor recorded; add \['fc1.bias'"):
        resolve(cfg)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A trained tiny MLP store and its config file."""
    root = tmp_path_factory.mktemp("mlp")
    cfg_path = root / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config()))
    cond = resolve(config())["conditions"]["mlp"]
    store = train(cond, 0, root / "mlp.zarr", "t", "mlp", progress=False)
    return root, cfg_path, store, cond


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--jumps", "60"], "option --jumps: start 0 + window 12 - 1 + jump 60 = step 71"),
        (["--windows", "1"], "--windows: expected an integer >= 2"),
        (["--start", "-3"], "--start: expected an integer >= 0"),
        (["--condition", "nope"], "--condition 'nope' is not in"),
    ],
)
def test_cli_errors_before_work(mlp_run, capsys, options, message):
    root, cfg_path, store, _ = mlp_run
    out = root / "bad.zarr"
    args = ["predict", str(store), "--config", str(cfg_path), "--condition", "mlp", "-o", str(out)]
    try:
        code = main(args + options)
    except SystemExit as exc:  # argparse refuses the value itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_predict_stage_on_a_trained_mlp(mlp_run):
    root, cfg_path, store, _ = mlp_run
    out = root / "pred.zarr"
    args = ["predict", str(store), "--config", str(cfg_path), "--condition", "mlp", "-o", str(out)]
    assert main(args) == 0
    ds = xr.open_zarr(out, consolidated=False)
    assert dict(ds.loss_pred.sizes) == {"predictor": 3, "window": 2, "jump": 2, "init": 2}
    assert ds.attrs["score"] == "r2" and ds.attrs["status"] == "complete"
    # Jumping 4 steps from 12 snapshots of smooth full-batch GD: close to the optimizer.
    node = ds.rel_error.sel(predictor="node", window=12, jump=4).values
    assert (node < 0.5).all()
    assert np.isfinite(ds.optimizer_s.values).all() and (np.diff(ds.optimizer_s.values) > 0).all()
    tab = predict.table([ds.load()])
    assert len(tab) == 12 and {"gain", "speedup", "rel_error"} <= set(tab.columns)


def test_accelerate_and_summary(mlp_run):
    root, cfg_path, store, cond = mlp_run
    acc = {
        "steps": 40,
        "k": 5,
        "window": 6,
        "jump": 5,
        "optimizers": {"sgd": 0.1},
        "eval_every": 5,
        "guard": False,
    }
    ds = accelerate.run(cond, 0, acc, str(root / "acc.zarr"), "mlp")
    assert list(ds.run.values) == ["sgd", "sgd+koopman"]
    assert ds.attrs["jumps"] == [0, 4]  # cycles of 5 steps + a jump of 5, while they fit in 40
    steps = ds.effective_step.values
    assert np.nanmax(steps, axis=1).tolist() == [40, 40]
    # The accelerated run gets to 40 effective steps with 20 optimizer steps: less CPU time.
    assert np.nanmax(ds.cpu_s.values[1]) < np.nanmax(ds.cpu_s.values[0])
    pred = root / "pred2.zarr"
    main(["predict", str(store), "--config", str(cfg_path), "--condition", "mlp", "-o", str(pred)])
    paths = predict.summarize([pred], [root / "acc.zarr"], root / "summary")
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0


def test_evaluator_matches_the_fcn_loss():
    """Whole-dataset NLL of the classifier equals the system's own loss on all samples."""
    import torch

    from conjugacy.train import make_system

    cond = resolve(
        {
            "experiment": "t",
            "conditions": {"f": {"system": "fcn", "hidden": 3, "bias": True, "inits": 2}},
        }
    )["conditions"]["f"]
    system, _ = make_system(cond, 0)
    loss, acc = predict.Evaluator(system)(system.snapshot())
    with torch.no_grad():
        expected = system._losses(system.x, system.y).double().numpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert ((acc >= 0) & (acc <= 1)).all()
