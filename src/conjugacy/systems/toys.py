"""The optimizer toys of Ghai, Lu & Hazan (2022) on f(x) = sum_i tan(x_i), d = 2.

Online mirror descent with the log-barrier regulariser and online gradient
descent on x = exp(u) are conjugate; the bisection method is the
non-conjugate control. All initial conditions of a seed advance together as
one (inits, 2) float64 array.

OGD's initial conditions are either its own grid in u (`start: grid`, the
paper's: uniform in u, so geometric in x) or OMD's (`start: omd`): the grid is
then in x and is jittered and boxed exactly as an omd condition with the same
seed, grid, jitter and domain does, and u0 = log x0, so that the two
conditions' orbits correspond through x = exp(u).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def loss(x: np.ndarray) -> np.ndarray:
    """f(x) = sum_i tan(x_i), per initial condition."""
    return np.tan(x).sum(axis=-1)


def grid_points(grid: dict[str, Any]) -> np.ndarray:
    """(points^2, 2) grid over [low, high]^2, first coordinate varying fastest."""
    axis = np.linspace(grid["low"], grid["high"], grid["points"])
    first, second = np.meshgrid(axis, axis)
    return np.stack([first.ravel(), second.ravel()], axis=1)


def jittered_grid(grid: dict[str, Any], jitter: float, rng: np.random.Generator) -> np.ndarray:
    """The grid, moved by jitter * spacing * U(-1, 1) per coordinate (exact when jitter is 0)."""
    points = grid_points(grid)
    spacing = (grid["high"] - grid["low"]) / max(grid["points"] - 1, 1)
    return points + jitter * spacing * rng.uniform(-1.0, 1.0, size=points.shape)


def boxed_grid(
    grid: dict[str, Any], jitter: float, rng: np.random.Generator, low: float, high: float
) -> np.ndarray:
    """The jittered grid clipped to the box [low, high]^2: a seed's initial conditions."""
    return np.clip(jittered_grid(grid, jitter, rng), low, high)


class Toy:
    """One toy optimizer over all its initial conditions; `x` is its own iterate.

    `x0` holds the initial conditions in OMD's coordinates x (for OGD, whose
    iterate is u, exactly the OMD points it starts from with `start: omd`, else
    exp(u0); for bisection the first midpoints).
    """

    def __init__(self, cond: dict[str, Any], seed: int) -> None:
        self.cond = cond
        jitter = cond["jitter"] if seed > 0 else 0.0
        rng = np.random.default_rng(seed)
        system = cond["system"]
        if system == "bisection":
            self.a = jittered_grid(cond["grid_a"], jitter, rng)
            self.b = jittered_grid(cond["grid_b"], jitter, rng)
            self.x = (self.a + self.b) / 2
            self.x0 = self.x.copy()
        elif system == "omd":
            self.low, self.high = cond["domain"]
            self.x = boxed_grid(cond["grid"], jitter, rng, self.low, self.high)
            self.x0 = self.x.copy()
        else:  # ogd, on u = log x and the box log(K)
            low, high = cond["domain"]
            self.low, self.high = np.log(low), np.log(high)
            if cond.get("start", "grid") == "omd":
                # The very draws of the omd condition: same rng, grid, jitter, box in x.
                self.x0 = boxed_grid(cond["grid"], jitter, rng, low, high)
                self.x = np.log(self.x0)
            else:
                self.x = boxed_grid(cond["grid"], jitter, rng, self.low, self.high)
                self.x0 = np.exp(self.x)
        self.inits = self.x.shape[0]

    def snapshot(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The iterate x (the toys' only tensor), (inits, dim); OGD's u seen through exp with
        `recorded_in: x`."""
        if self.cond.get("recorded_in") == "x":
            return {"x": np.exp(self.x)}
        return {"x": self.x.copy()}

    def state(self) -> dict[str, np.ndarray]:
        """Everything the next steps depend on, for a checkpoint."""
        return {k: getattr(self, k).copy() for k in ("x", "a", "b") if hasattr(self, k)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            setattr(self, k, v.copy())

    def loss(self) -> np.ndarray:
        """The objective at the current iterate (OGD's iterate is u, the objective f(exp u))."""
        system = self.cond["system"]
        if system == "ogd":
            return loss(np.exp(self.x))
        if system == "bisection":
            return np.abs(loss(self.x))
        return loss(self.x)

    def step(self) -> np.ndarray:
        """One update of every initial condition; returns the loss before it."""
        before = self.loss()
        lr = self.cond.get("lr")
        system = self.cond["system"]
        if system == "omd":
            # Mirror step for R(x) = -sum log x: grad R(y) = grad R(x) - lr * sec^2(x).
            y = 1.0 / (1.0 / self.x + lr / np.cos(self.x) ** 2)
            # The Bregman projection onto a box is separable: it is the clip.
            self.x = np.clip(y, self.low, self.high)
        elif system == "ogd":
            x = np.exp(self.x)
            self.x = np.clip(self.x - lr * x / np.cos(x) ** 2, self.low, self.high)
        else:
            fz = loss(self.x)
            negative, positive = fz < 0, fz > 0
            self.a = np.where(negative[:, None], self.x, self.a)
            self.b = np.where(positive[:, None], self.x, self.b)
            self.x = (self.a + self.b) / 2
        return before
