"""Spectral convergence monitor: linear systems with known eigenvalues and a known switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import net_config

from conjugacy import config
from conjugacy.beyond.monitor import (
    MonitorOptions,
    first_run,
    plateau_step,
    summary,
    window_metrics,
    write_monitor,
)
from conjugacy.cli import main
from conjugacy.stores.contract import TrajectoryWriter, open_store

D = 4


def block_matrix(blocks: list[tuple[float, float]], rng: np.random.Generator) -> np.ndarray:
    """Real D x D matrix with eigenvalues r e^{+-i theta} per (r, theta) block (theta 0: one r).

    Conjugated by a random orthogonal matrix, so no coordinate is special.
    """
    b = np.zeros((D, D))
    i = 0
    for r, theta in blocks:
        if theta == 0:
            b[i, i] = r
            i += 1
        else:
            c, s = r * np.cos(theta), r * np.sin(theta)
            b[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
            i += 2
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    return q @ b @ q.T


def simulate(matrices: list[tuple[int, np.ndarray]], steps: int, inits: int = 3) -> np.ndarray:
    """(inits, steps + 1, D): x_{t+1} = A x_t, A the last matrix whose start step is <= t."""
    rng = np.random.default_rng(1)
    x = np.empty((inits, steps + 1, D))
    x[:, 0] = rng.standard_normal((inits, D))
    for t in range(steps):
        a = [m for start, m in matrices if start <= t][-1]
        x[:, t + 1] = x[:, t] @ a.T
    return x


def store(path, x: np.ndarray):
    inits, n, _ = x.shape
    w = TrajectoryWriter(path, {"x": (D,)}, list(range(n)), inits, "float64", {"condition": "lin"})
    w.write(0, {"x": x}, np.ones((inits, n)))
    w.close()
    return path


OPTS = dict(window=20, stride=10, rank="full", leading=3, radius=0.05, consecutive=2)


def test_window_metrics_hand_computed():
    m = window_metrics(np.array([0.5, 1.0 + 0.02j, 1.0 - 0.02j, 0.97]), leading=3, radius=0.025)
    assert m["leading_distance"] == pytest.approx(0.03)  # |0.97 - 1| among the 3 largest
    assert m["spectral_radius"] == pytest.approx(abs(1.0 + 0.02j))
    assert m["near_one"] == 2


def test_first_run_and_plateau():
    assert first_run(np.array([0, 1, 1, 0, 1, 1, 1], bool), 3) == 6
    assert first_run(np.array([1, 0, 1], bool), 2) == -1
    steps = np.arange(10)
    loss = np.array([5, 4, 3, 2.5, 2.5, 2.49999, 2.5, 2.5, 2.5, 2.5])
    assert plateau_step(steps, loss, patience=3, min_delta=1e-3) == 3
    assert plateau_step(steps, np.linspace(5, 1, 10), patience=3, min_delta=1e-3) == -1


def test_contracting_system_converges_at_the_expected_window(tmp_path):
    rng = np.random.default_rng(0)
    a = block_matrix([(0.995, 0.01), (0.99, 0), (0.98, 0)], rng)
    path = store(tmp_path / "c.zarr", simulate([(0, a)], 100))
    result = write_monitor(path, tmp_path / "m.zarr", MonitorOptions(**OPTS))
    ev = result.eigenvalues.values[0]
    expected = [0.995 * np.exp(0.01j), 0.995 * np.exp(-0.01j), 0.99, 0.98]
    assert np.sort_complex(ev[~np.isnan(ev)]) == pytest.approx(np.sort_complex(expected), abs=1e-9)
    assert result.clustered.values.all() and not result.unstable.values.any()
    # two windows in a row: flagged at the end of the second window, snapshot 10 + 19
    assert result.attrs["converged_step"] == 29
    assert result.attrs["first_unstable_step"] == -1
    assert result.spectral_radius.values == pytest.approx(0.995, abs=1e-9)


def test_expanding_system_is_flagged_unstable(tmp_path):
    rng = np.random.default_rng(0)
    a = block_matrix([(1.1, 0.3), (0.9, 0), (0.5, 0)], rng)
    path = store(tmp_path / "e.zarr", simulate([(0, a)], 60))
    result = write_monitor(path, tmp_path / "m.zarr", MonitorOptions(**OPTS))
    assert result.unstable.values.all()
    assert result.attrs["first_unstable_step"] == 19  # the end of the first window
    assert result.attrs["converged_step"] == -1
    assert result.spectral_radius.values == pytest.approx(1.1, abs=1e-8)


def test_switch_point_is_found(tmp_path):
    """Rotations far from 1 until step 60, then slow contraction: flagged at 60 + 10 + 19."""
    rng = np.random.default_rng(2)
    fast = block_matrix([(1.0, np.pi / 3), (0.99, 2 * np.pi / 3)], rng)
    slow = block_matrix([(0.995, 0.01), (0.99, 0), (0.98, 0)], rng)
    path = store(tmp_path / "s.zarr", simulate([(0, fast), (60, slow)], 150))
    result = write_monitor(path, tmp_path / "m.zarr", MonitorOptions(**OPTS))
    starts = result.window_start.values
    clustered = result.clustered.values
    assert not clustered[starts + 20 <= 60].any()  # windows wholly before the switch
    assert clustered[starts >= 60].all()  # windows wholly after it
    assert result.attrs["converged_step"] == 89
    assert result.near_one.values[starts >= 60] == pytest.approx(4)
    table = summary([tmp_path / "m.zarr"])
    assert table.converged_step.tolist() == [89]


def test_monitor_of_a_trained_net_uses_held_out_loss(tmp_path):
    """Held-out losses, window eigenvalues and metrics equal a torch/numpy recomputation."""
    import pandas as pd
    from scipy.optimize import linear_sum_assignment

    from conjugacy.systems.data import load_dataset, split_holdout
    from conjugacy.training.train import train

    cfg = config.resolve(net_config(holdout=0.2))
    traj = train(cfg["conditions"]["net"], 0, tmp_path / "t.zarr", "t", "net", progress=False)
    out = tmp_path / "m.zarr"
    argv = [str(traj), "-o", str(out), "--window", "20", "--stride", "20", "--rank", "5"]
    assert main(["monitor", *argv]) == 0
    ds = open_store(out, "monitor")
    assert ds.attrs["loss_kind"] == "validation loss"
    assert ds.sizes["window"] == 3 and ds.sizes["step"] == 61
    store = open_store(traj, "trajectory")
    w1, w2 = (
        torch.from_numpy(store[n].values.astype(np.float64)) for n in ("fc1.weight", "fc2.weight")
    )
    (x_train, y_train), (x_held, y_held) = split_holdout(*load_dataset("digits"), 0.2)

    def nll(x, y):  # (init, step) cross-entropy of the recorded nets
        logits = torch.relu(torch.from_numpy(x).double() @ w1.transpose(-1, -2)) @ w2.transpose(
            -1, -2
        )
        target = torch.from_numpy(y).expand(*logits.shape[:2], -1)
        ce = torch.nn.functional.cross_entropy(logits.permute(0, 3, 1, 2), target, reduction="none")
        return ce.mean(-1).numpy()

    held = nll(x_held, y_held)
    np.testing.assert_allclose(ds.loss.values, held, rtol=1e-12)
    assert np.abs(nll(x_train, y_train) - held).max() > 1e-3  # not the training loss
    assert held.mean(0)[-1] < held.mean(0)[0]  # training lowers held-out loss
    # Each window: a dense exact DMD (rank 5) of both inits' snapshots, pooled.
    snaps = np.concatenate([w1.numpy().reshape(2, 61, -1), w2.numpy().reshape(2, 61, -1)], axis=2)
    last = None
    for k, start in enumerate(ds.window_start.values):
        z = snaps[:, start : start + 20]
        x, y = z[:, :-1].reshape(-1, z.shape[2]).T, z[:, 1:].reshape(-1, z.shape[2]).T
        u, s, vh = np.linalg.svd(x, full_matrices=False)
        mu = np.linalg.eigvals(u[:, :5].T @ y @ vh[:5].T / s[:5])
        got = ds.eigenvalues.values[k]
        cost = np.abs(got[:, None] - mu[None, :])
        assert cost[linear_sum_assignment(cost)].max() < 1e-9
        leading = mu[np.argsort(-np.abs(mu))[:3]]
        assert ds.leading_distance.values[k] == pytest.approx(np.abs(leading - 1).max(), abs=1e-9)
        assert ds.spectral_radius.values[k] == pytest.approx(np.abs(mu).max(), abs=1e-9)
        assert ds.near_one.values[k] == np.count_nonzero(np.abs(mu - 1) <= 0.05)
        assert ds.window_end.values[k] == start + 19
        last = (np.abs(leading - 1).max(), np.abs(mu).max())
    csv, png = tmp_path / "m.csv", tmp_path / "m.png"
    assert main(["monitor-report", str(out), "-o", str(csv), "--figure", str(png)]) == 0
    (row,) = pd.read_csv(csv).itertuples()
    assert (row.condition, row.seed, row.windows, row.loss_kind) == ("net", 0, 3, "validation loss")
    assert (row.final_leading_distance, row.final_spectral_radius) == pytest.approx(last, abs=1e-9)
    assert row.converged_step == ds.attrs["converged_step"]
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"conditions": ["nope"]}, "monitor.conditions.0: condition 'nope' is not defined"),
        ({"conditions": ["net"], "window": 100}, "monitor.window: 100 snapshots, but 'net'"),
        ({"conditions": ["net"], "window": 5, "delays": 4}, "monitor.window: 5 snapshots"),
        ({"conditions": ["net"], "observables": ["fc9.weight"]}, "monitor.observables"),
    ],
)
def test_bad_monitor_config(tmp_path, section, message):
    raw = {**net_config(), "monitor": section}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match=message):
        config.load(path)
