"""Koopman training: node and global jumps (predict.py), accelerated training, config and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import yaml

from conjugacy.beyond import accelerate, predict
from conjugacy.cli import main
from conjugacy.config import ConfigError, resolve
from conjugacy.training.train import train

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


@pytest.mark.parametrize(("params", "window"), [(20, 6), (7, 15)])
def test_global_fit_reproduces_the_last_snapshot(params, window):
    """Zero steps ahead is the window's last snapshot, on a nonlinear trajectory.

    Few snapshots of many parameters (the last one outside the span of the others) and many
    of few: the amplitudes are the last snapshot's, so Phi b is that snapshot.
    """
    rng = np.random.default_rng(5)
    t = np.arange(window)[:, None] / window
    snaps = np.tanh(rng.standard_normal(params) * 3 * t + rng.standard_normal(params)) + t**2
    fit = predict.global_fit(snaps)
    np.testing.assert_allclose(predict.global_jump(fit, 0), snaps[-1], atol=1e-10)
    one = predict.global_jump(fit, 1)
    assert np.abs(one - snaps[-1]).max() > 1e-3  # and the fit moves on from it


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


# Independent numpy versions of what the stage computes, for the trained-MLP tests below.

NAMES = ("fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight")  # flatten's (sorted) order


def recorded(store) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every recorded tensor as float64 (step, init, *shape), and the recorded loss (init, step)."""
    traj = xr.open_zarr(store, consolidated=False)
    params = {n: np.moveaxis(traj[n].values.astype(np.float64), 1, 0) for n in NAMES}
    return params, traj["loss"].values


def mse(params: dict[str, np.ndarray]) -> np.ndarray:
    """Whole-dataset mean squared error per init of tanh nets with these (init, *shape) weights."""
    from conjugacy.systems.mlp import regression_data

    x, y = (a.astype(np.float64) for a in regression_data(MLP["inputs"], MLP["samples"], 0.1))
    hidden = np.tanh(
        np.einsum("bi,nhi->nbh", x, params["fc1.weight"]) + params["fc1.bias"][:, None]
    )
    out = np.einsum("nbh,noh->nb", hidden, params["fc2.weight"]) + params["fc2.bias"]
    return ((out - y) ** 2).mean(axis=1)


def flat(params: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([params[n].reshape(len(params[n]), -1) for n in NAMES], axis=1)


def numpy_node_jump(snaps: dict[str, np.ndarray], jump: int, rtol: float) -> dict[str, np.ndarray]:
    """Per neuron, K = F' pinv(F) of [weights; bias; 1] over the window, applied `jump` times."""
    out = {}
    for layer in ("fc1", "fc2"):
        w = snaps[f"{layer}.weight"]  # (S, inits, h, fan_in)
        b = snaps[f"{layer}.bias"]  # (S, inits, h)
        pw, pb = np.empty(w.shape[1:]), np.empty(b.shape[1:])
        for i in range(w.shape[1]):
            for j in range(w.shape[2]):
                f = np.column_stack([w[:, i, j], b[:, i, j], np.ones(len(b))]).T  # (d, S)
                pinv = np.linalg.pinv(f[:, :-1], rcond=rtol * max(f.shape[0], f.shape[1] - 1))
                z = np.linalg.matrix_power(f[:, 1:] @ pinv, jump) @ f[:, -1]
                pw[i, j], pb[i, j] = z[:-2], z[-2]
        out[f"{layer}.weight"], out[f"{layer}.bias"] = pw, pb
    return out


def numpy_global_jump(snaps: dict[str, np.ndarray], jump: int, rtol: float):
    """Per init, exact DMD of [all weights; 1] by SVD: prediction and fixed point, (inits, P).

    Modes Phi = Y V S^-1 W / mu; the last snapshot's amplitudes b = W^-1 U_r^T x_last;
    the fixed point Re(phi_k b_k) with mu_k nearest 1.
    """
    series = np.stack(
        [flat({n: v[t] for n, v in snaps.items()}) for t in range(len(snaps[NAMES[0]]))]
    )
    preds, fixed = [], []
    for i in range(series.shape[1]):
        z = np.vstack([series[:, i].T, np.ones(len(series))])
        x, y = z[:, :-1], z[:, 1:]
        u, s, vh = np.linalg.svd(x, full_matrices=False)
        r = int(np.count_nonzero(s > rtol * max(x.shape) * s[0]))
        v, s = vh[:r].T, s[:r]
        mu, w = np.linalg.eig(u[:, :r].T @ y @ v / s)
        modes = y @ v / s @ w / mu
        amp = np.linalg.solve(w, u[:, :r].T @ z[:, -1])
        preds.append((modes @ (mu**jump * amp)).real[:-1])
        k = np.argmin(np.abs(mu - 1))
        fixed.append((modes[:, k] * amp[k]).real[:-1])
    return np.array(preds), np.array(fixed)


def test_predict_stage_on_a_trained_mlp(mlp_run):
    """Errors and losses of each (predictor, window, jump) equal a numpy recomputation.

    The truth is the recorded step start + window - 1 + jump, whose whole-dataset
    loss the recorder also wrote (full-batch GD): off-by-one windows, a wrong
    truth step or a wrong error norm change these numbers.
    """
    root, cfg_path, store, _ = mlp_run
    out = root / "pred.zarr"
    args = ["predict", str(store), "--config", str(cfg_path), "--condition", "mlp", "-o", str(out)]
    assert main(args) == 0
    ds = xr.open_zarr(out, consolidated=False).load()
    assert dict(ds.loss_pred.sizes) == {"predictor": 3, "window": 2, "jump": 2, "init": 2}
    assert ds.attrs["score"] == "r2" and ds.attrs["status"] == "complete"
    params, loss = recorded(store)
    rtol = predict.EPS32  # the store is float32
    for window in (5, 12):
        snaps = {n: v[:window] for n, v in params.items()}  # start 0
        last = window - 1
        np.testing.assert_allclose(ds.loss_last.sel(window=window), loss[:, last], rtol=1e-6)
        for jump in (4, 20):
            truth = {n: v[last + jump] for n, v in params.items()}
            sel = {"window": window, "jump": jump}
            np.testing.assert_allclose(ds.loss_true.sel(**sel), loss[:, last + jump], rtol=1e-6)
            np.testing.assert_allclose(ds.loss_true.sel(**sel), mse(truth), rtol=1e-6)
            moved = np.linalg.norm(flat(truth) - flat({n: v[-1] for n, v in snaps.items()}), axis=1)
            node = numpy_node_jump(snaps, jump, rtol)
            glob, fixed = numpy_global_jump(snaps, jump, rtol)
            for name, pred in (("node", flat(node)), ("global", glob), ("fixed_point", fixed)):
                rel = np.linalg.norm(pred - flat(truth), axis=1) / moved
                got = ds.rel_error.sel(predictor=name, **sel)
                np.testing.assert_allclose(got, rel, rtol=1e-6, err_msg=f"{name} {sel}")
            np.testing.assert_allclose(
                ds.loss_pred.sel(predictor="node", **sel), mse(node), rtol=1e-5
            )
    # 12 snapshots, 4 steps ahead: the global DMD lands near the optimizer (measured 0.005).
    assert float(ds.rel_error.sel(predictor="global", window=12, jump=4).max()) < 0.02
    assert np.isfinite(ds.optimizer_s.values).all() and (np.diff(ds.optimizer_s.values) > 0).all()
    tab = predict.table([ds])
    assert len(tab) == 12 and {"gain", "speedup", "rel_error"} <= set(tab.columns)


def test_accelerate_and_summary(mlp_run):
    """Curves match the recorded run and an independent jump; the CSVs hold the stores' numbers."""
    import pandas as pd

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
    ds = accelerate.write_accelerated(cond, 0, acc, str(root / "acc.zarr"), "mlp")
    assert list(ds.run.values) == ["sgd", "sgd+koopman"]
    assert ds.attrs["jumps"] == [0, 4]  # cycles of 5 steps + a jump of 5, while they fit in 40
    steps = ds.effective_step.values
    assert np.nanmax(steps, axis=1).tolist() == [40, 40]
    params, loss = recorded(store)
    # The plain run is the recorded training (same condition, seed and optimizer).
    plain = ds.sel(run="sgd")
    np.testing.assert_array_equal(plain.effective_step, np.arange(0, 41, 5))
    np.testing.assert_allclose(plain.loss, loss.mean(axis=0)[::5], rtol=1e-6)
    # The first jump: snapshots 0..5 (window 6), 5 steps ahead of step 5, noted at step 10.
    fast = ds.sel(run="sgd+koopman")
    assert fast.effective_step.values[:2].tolist() == [0, 10]
    jumped = numpy_node_jump({n: v[:6] for n, v in params.items()}, 5, predict.EPS32)
    assert float(fast.loss[1]) == pytest.approx(mse(jumped).mean(), rel=1e-5)
    assert float(fast.loss[1]) != pytest.approx(float(plain.loss[2]), rel=1e-3)  # not a plain step
    pred = root / "pred2.zarr"
    main(["predict", str(store), "--config", str(cfg_path), "--condition", "mlp", "-o", str(pred)])
    paths = predict.summarize([pred], [root / "acc.zarr"], root / "summary")
    assert [p.name for p in paths] == [
        "predict.csv",
        "accelerate.csv",
        "predict.png",
        "accelerate.png",
    ]
    tab = pd.read_csv(paths[0])
    stage = xr.open_zarr(pred, consolidated=False).load().mean("init")
    assert len(tab) == 3 * 2 * 2
    for row in tab.itertuples():
        sel = {"window": row.window, "jump": row.jump}
        last, true = (
            float(stage.loss_last.sel(window=row.window)),
            float(stage.loss_true.sel(**sel)),
        )
        got = float(stage.loss_pred.sel(predictor=row.method, **sel))
        assert (row.loss_last, row.loss_true, row.loss_pred) == pytest.approx((last, true, got))
        assert row.gain == pytest.approx((last - got) / (last - true))
    curves = pd.read_csv(paths[1])
    assert curves.groupby("run", sort=False).size().to_dict() == {"sgd": 9, "sgd+koopman": 5}
    for name, curve in curves.groupby("run"):
        kept = ds.sel(run=name).dropna("point")
        np.testing.assert_allclose(curve.loss, kept.loss)
        np.testing.assert_array_equal(curve.effective_step, kept.effective_step)
    for png in paths[2:]:
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_guard_draws_the_next_batch():
    """The guard compares losses on the system's next mini-batch: it passes the current
    weights (equal losses) and refuses weights that raise the loss; each call takes a batch."""
    from conjugacy.training.train import make_system

    cond = {"system": "fcn", "hidden": 3, "bias": True, "inits": 2, "batch_size": 50}
    cond = resolve({"experiment": "t", "conditions": {"f": cond}})["conditions"]["f"]
    system, _ = make_system(cond, 0)
    evaluate = predict.Evaluator(system)
    now = system.snapshot()
    assert accelerate.better(evaluate, system, now)
    left = len(system.order)
    worse = {n: v * 50.0 for n, v in now.items()}
    assert not accelerate.better(evaluate, system, worse)
    assert len(system.order) == left - 50


def test_evaluator_matches_the_fcn_loss():
    """Whole-dataset NLL of the classifier equals the system's own loss on all samples."""
    import torch

    from conjugacy.training.train import make_system

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
