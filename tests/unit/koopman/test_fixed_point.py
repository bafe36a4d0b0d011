"""The one fixed-point rule (dmd.fixed_point) through dmd_dense, on systems with a known limit."""

from __future__ import annotations

import numpy as np
import pytest

from conjugacy.koopman.dmd import dmd_dense, fixed_point

D = 5


def contraction(rng: np.random.Generator) -> np.ndarray:
    """A non-normal D x D matrix with eigenvalues 0.9 e^{+-0.3i}, 0.8, 0.6, 0.4."""
    block = np.zeros((D, D))
    block[:2, :2] = 0.9 * np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    block[2:, 2:] = np.diag([0.8, 0.6, 0.4])
    p = rng.standard_normal((D, D)) + 2 * np.eye(D)
    return p @ block @ np.linalg.inv(p)


def affine_orbits(a: np.ndarray, c: np.ndarray, starts: np.ndarray, steps: int) -> np.ndarray:
    """z_t = [x_t; 1] of x_{t+1} = A x_t + c from each start: (inits, steps, D + 1)."""
    out = np.empty((len(starts), steps, D + 1))
    x = starts.copy()
    for t in range(steps):
        out[:, t] = np.hstack([x, np.ones((len(x), 1))])
        x = x @ a.T + c
    return out


def fit(orbits: np.ndarray, x0: np.ndarray):
    """dmd_dense of the pooled pairs of (inits, steps, D) orbits, amplitudes of x0 (D, k)."""
    x = orbits[:, :-1].reshape(-1, orbits.shape[2]).T
    y = orbits[:, 1:].reshape(-1, orbits.shape[2]).T
    result = dmd_dense(x, y, x0, "full")
    return result.mode_matrix(result.y_basis), result.eigenvalues, result.amplitudes


@pytest.fixture
def affine():
    rng = np.random.default_rng(3)
    a, c = contraction(rng), rng.standard_normal(D)
    return a, c, np.linalg.solve(np.eye(D) - a, c)


def test_affine_fixed_point_is_the_solution_of_the_fixed_point_equation(affine):
    a, c, expected = affine
    z = affine_orbits(a, c, np.random.default_rng(0).standard_normal((1, D)), 30)
    modes, mu, b = fit(z, z[0, :1].T)
    state, eigenvalue = fixed_point(modes, mu, b[:, 0])
    assert eigenvalue == pytest.approx(1.0, abs=1e-10)
    assert state[-1] == pytest.approx(1.0, abs=1e-10)  # the constant entry: phi_k b_k's is 1
    np.testing.assert_allclose(state[:-1], expected, atol=1e-9)
    # the orbit's last snapshot is still far from it: the rule extrapolates
    assert np.abs(z[0, -1, :-1] - expected).max() > 1e-3
    # the one rule is the affine normalisation (the mode over its constant entry) here
    k = int(np.argmin(np.abs(mu - 1)))
    np.testing.assert_allclose(state, (modes[:, k] / modes[-1, k]).real, atol=1e-9)


def test_amplitudes_of_any_snapshot_and_of_several_inits(affine):
    """mu_k = 1: phi_k b_k is the same from every snapshot of every orbit; (r, inits) works."""
    a, c, expected = affine
    z = affine_orbits(a, c, np.random.default_rng(1).standard_normal((3, D)), 25)
    snapshots = np.stack([z[0, 0], z[1, 7], z[2, 20]], axis=1)  # (D + 1, 3)
    modes, mu, b = fit(z, snapshots)
    state, _ = fixed_point(modes, mu, b)
    assert state.shape == (D + 1, 3)
    np.testing.assert_allclose(state[:-1], np.repeat(expected[:, None], 3, axis=1), atol=1e-9)


def test_linear_system_without_a_constant_keeps_its_unit_mode():
    """x_{t+1} = A x_t with eigenvalues 1, -1.02, ...: the part of x0 along the unit mode.

    The eigenvalue nearest 1 is not the largest in modulus here (-1.02 grows).
    """
    rng = np.random.default_rng(4)
    p = rng.standard_normal((D, D)) + 2 * np.eye(D)
    a = p @ np.diag([1.0, 0.85, 0.7, -1.02, 0.3]) @ np.linalg.inv(p)
    x = np.empty((1, 30, D))
    x[0, 0] = rng.standard_normal(D)
    for t in range(29):
        x[0, t + 1] = a @ x[0, t]
    modes, mu, b = fit(x, x[0, :1].T)
    state, eigenvalue = fixed_point(modes, mu, b[:, 0])
    assert eigenvalue == pytest.approx(1.0, abs=1e-10)
    expected = p[:, 0] * np.linalg.solve(p, x[0, 0])[0]  # spectral projector onto eigenvalue 1
    np.testing.assert_allclose(state, expected, atol=1e-9)
    assert np.abs(x[0, -1] - expected).max() > 1e-2
