"""A small MLP regression task: in -> h -> 1 (tanh), mean squared error, N inits as one batch.

A smooth stand-in for the classifier nets, for Koopman training: a fixed
teacher net (the same for every seed) labels Gaussian inputs plus noise, so
the data do not depend on the seed and the loss floor is the noise variance.
Everything but the data and the loss is the FCN's (batched inits, optimizer,
mini-batch order, checkpoint state).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from conjugacy.config.shapes import tensor_shapes
from conjugacy.systems.fcn import FCN, base_init, outputs64, stack_inits, two_layer

TEACHER_SEED = 20201206  # fixed: every seed and condition sees the same task


def regression_data(inputs: int, samples: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """(x (samples, inputs), y (samples,)) float32: y = teacher(x) + noise * N(0, 1)."""
    rng = np.random.default_rng(TEACHER_SEED)
    x = rng.standard_normal((samples, inputs))
    w1 = rng.standard_normal((32, inputs)) / np.sqrt(inputs)
    w2 = rng.standard_normal(32) / np.sqrt(32)
    y = np.tanh(x @ w1.T) @ w2
    y = (y - y.mean()) / y.std() + noise * rng.standard_normal(samples)
    return x.astype(np.float32), y.astype(np.float32)


def evaluate(
    params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(mean squared error, R^2) of stacked regression nets on (x, y), in float64.

    The loss the nets train on, without an update; R^2 = 1 - MSE / Var(y).
    Results have the parameters' leading axes.
    """
    y = np.asarray(y, np.float64)
    mse = ((outputs64(params, x, np.tanh)[..., 0] - y) ** 2).mean(axis=-1)
    return mse, 1.0 - mse / y.var()


class MLP(FCN):
    """N regression nets of one seed: init 0 the base init, inits 1..N-1 perturbed copies."""

    def __init__(self, cond: dict[str, Any], seed: int, device: str = "cpu") -> None:
        self.cond = cond
        self.inits = cond["inits"]
        self.device = torch.device(device)
        gen = torch.Generator().manual_seed(seed)
        base = base_init(tensor_shapes(cond), gen)
        eps = cond["init_perturbation"]
        self.params = stack_inits(base, self.inits, eps, gen, self.device)
        x, y = regression_data(cond["inputs"], cond["samples"], cond["noise"])
        self.x = torch.from_numpy(x).to(self.device)
        self.y = torch.from_numpy(y).to(self.device)
        self.rng = np.random.default_rng([seed, 1])
        self.order = np.empty(0, dtype=np.int64)

    def outputs(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Predictions (inits, batch) of the nets with these (stacked) parameters."""
        return two_layer(params, x, torch.tanh)[..., 0]

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((self.outputs(self.params, x) - y) ** 2).mean(dim=1)
