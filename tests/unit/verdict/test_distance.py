"""Wasserstein-1 distance between eigenvalue sets (distance.py)."""

import numpy as np
import pytest
from scipy.optimize import linprog

from conjugacy.verdict.distance import pairwise, wasserstein


def lp_w1(a, b):
    """W1 between uniform measures on a and b by the transport linear program."""
    n, m = len(a), len(b)
    cost = np.abs(a[:, None] - b[None, :]).ravel()
    rows = np.kron(np.eye(n), np.ones(m))  # sum_j T_ij = 1/n
    cols = np.kron(np.ones(n), np.eye(m))  # sum_i T_ij = 1/m
    eq = np.vstack([rows, cols])
    rhs = np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)])
    return linprog(cost, A_eq=eq, b_eq=rhs, bounds=(0, None), method="highs").fun


def random_set(rng, n):
    return rng.standard_normal(n) + 1j * rng.standard_normal(n)


def test_identical_sets_are_at_zero_in_any_order():
    a = random_set(np.random.default_rng(0), 6)
    assert wasserstein(a, a) == 0.0
    assert wasserstein(a, a[::-1]) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0], [3 + 4j], 5.0),
        ([0, 1], [1 + 1j, 1j], 1.0),  # zip order would give sqrt(2)
        ([0, 1, 2], [2, 0, 1], 0.0),
        ([0], [1, -1], 1.0),
        ([0, 2], [1], 1.0),
        ([0, 0, 3], [0, 3], 0.5),  # 1/6 of mass moves a distance 3
        ([1j], [0, 0, 0, 4j], 1.5),  # (3 * 1 + 3) / 4
    ],
)
def test_hand_computed_values(a, b, expected):
    assert wasserstein(np.array(a), np.array(b)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "m"), [(5, 5), (3, 5), (4, 7)])
def test_agrees_with_transport_lp_and_is_symmetric(n, m):
    rng = np.random.default_rng(n * 10 + m)
    a, b = random_set(rng, n), random_set(rng, m)
    w = wasserstein(a, b)
    assert w == pytest.approx(lp_w1(a, b), rel=1e-9)
    assert wasserstein(b, a) == pytest.approx(w, rel=1e-12)


def test_translation_moves_by_its_modulus():
    rng = np.random.default_rng(1)
    a, c = random_set(rng, 7), 0.3 - 0.4j
    assert wasserstein(a, a + c) == pytest.approx(0.5, rel=1e-12)
    # A repeated set is the same uniform measure: the unequal-size branch must agree.
    assert wasserstein(a, np.concatenate([a, a]) + c) == pytest.approx(0.5, rel=1e-9)


def test_triangle_inequality():
    rng = np.random.default_rng(2)
    a, b, c = random_set(rng, 4), random_set(rng, 6), random_set(rng, 4)
    assert wasserstein(a, c) <= wasserstein(a, b) + wasserstein(b, c) + 1e-12


def test_empty_set_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        wasserstein(np.array([]), np.array([1.0]))


def test_pairwise_is_symmetric_with_zero_diagonal():
    spectra = [np.array([0.0]), np.array([3 + 4j]), np.array([1.0, -1.0]), np.array([0, 6j])]
    w = pairwise(spectra)
    assert w.shape == (4, 4)
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(np.diag(w), 0.0)
    assert w[0, 1] == pytest.approx(5.0)
    assert w[0, 2] == pytest.approx(1.0)
    assert w[0, 3] == pytest.approx(3.0)
    for i in range(4):
        for j in range(4):
            if i != j:
                assert w[i, j] == pytest.approx(wasserstein(spectra[i], spectra[j]))
