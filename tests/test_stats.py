"""Permutation test and verdict (stats.py)."""

import itertools
import math

import numpy as np
import pytest

from conjugacy.stats import decide, permutation_p, verdict


def line_distances(points):
    points = np.asarray(points, dtype=float)
    return np.abs(points[:, None] - points[None, :])


def separated(n_a, n_b):
    """Distances of points on a line: group A near 0, group B near 100."""
    return line_distances(np.concatenate([np.arange(n_a) * 0.1, 100 + np.arange(n_b) * 0.1]))


def random_distances(rng, n):
    w = rng.random((n, n))
    w = w + w.T
    np.fill_diagonal(w, 0.0)
    return w


def brute_stat(w, group_a):
    between, within = [], []
    for i, j in itertools.combinations(range(len(w)), 2):
        (within if (i in group_a) == (j in group_a) else between).append(w[i, j])
    return np.mean(between) - np.mean(within)


# --- permutation_p ---------------------------------------------------------------------------


def test_exact_p_of_clearly_separated_groups():
    p, p_min = permutation_p(separated(5, 5), 5)
    # Only the observed split and its swap reach the observed statistic.
    assert p == pytest.approx(2 / 252)
    assert p_min == pytest.approx(2 / 252)


def test_exact_p_min_with_unequal_group_sizes():
    p, p_min = permutation_p(separated(3, 5), 3)
    assert p == pytest.approx(1 / math.comb(8, 3))
    assert p_min == pytest.approx(1 / 56)


def test_equal_distances_give_p_one():
    w = np.ones((10, 10)) - np.eye(10)
    p, _ = permutation_p(w, 5)
    assert p == 1.0


def test_between_below_within_gives_p_one():
    group = np.arange(8) < 4
    w = np.where(group[:, None] == group[None, :], 1.0, 0.1)
    np.fill_diagonal(w, 0.0)
    assert permutation_p(w, 4)[0] == 1.0


def test_exact_p_matches_brute_force_enumeration():
    w = random_distances(np.random.default_rng(0), 8)
    t_obs = brute_stat(w, set(range(4)))
    splits = [set(c) for c in itertools.combinations(range(8), 4)]
    expected = np.mean([brute_stat(w, s) >= t_obs - 1e-12 for s in splits])
    p, p_min = permutation_p(w, 4)
    assert 1 / 70 < expected < 1  # a non-trivial case
    assert p == pytest.approx(expected)
    assert p_min == pytest.approx(2 / 70)


def test_random_branch_bounds_and_reproducibility():
    assert math.comb(20, 10) > 99
    p, p_min = permutation_p(separated(10, 10), 10, permutations=99, seed=3)
    assert p == pytest.approx(1 / 100)
    assert p_min == pytest.approx(1 / 100)
    w = random_distances(np.random.default_rng(1), 20)
    p, p_min = permutation_p(w, 10, permutations=99, seed=3)
    assert 1 / 100 <= p <= 1
    assert p_min == pytest.approx(1 / 100)
    assert round(p * 100) == pytest.approx(p * 100)  # (1 + k) / 100
    assert permutation_p(w, 10, permutations=99, seed=3)[0] == p


# --- decide ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "p_min", "ratio", "expected"),
    [
        (0.01, 0.008, 2.0, "not conjugate"),  # significant and large
        (0.01, 0.008, 1.2, "inconclusive"),  # significant but within the margin
        (0.50, 0.008, 1.2, "conjugate"),  # comparable, and the test could have rejected
        (0.50, 0.008, 2.0, "inconclusive"),  # large but not significant
        (0.50, 0.100, 1.2, "inconclusive"),  # too few seeds to reject
        (0.05, 0.008, 1.5, "conjugate"),  # boundaries: p == alpha, ratio == max_ratio
        (0.04, 0.008, 1.5, "inconclusive"),  # significant, ratio at the margin
        (0.50, 0.050, 1.0, "inconclusive"),  # p_min == alpha cannot reject
    ],
)
def test_decide_branches(p, p_min, ratio, expected):
    assert decide(p, p_min, ratio, alpha=0.05, max_ratio=1.5) == expected


# --- verdict ---------------------------------------------------------------------------------


def test_verdict_counts_means_and_sds():
    n_a, n_b = 3, 4
    w = random_distances(np.random.default_rng(2), n_a + n_b)
    between = [w[i, j] for i in range(n_a) for j in range(n_a, n_a + n_b)]
    within = [w[i, j] for i, j in itertools.combinations(range(n_a), 2)]
    within += [w[i, j] for i, j in itertools.combinations(range(n_a, n_a + n_b), 2)]
    v = verdict(w, n_a, alpha=0.05, max_ratio=1.5)
    assert v.n_between == n_a * n_b == len(between)
    assert v.n_within == math.comb(n_a, 2) + math.comb(n_b, 2) == len(within)
    assert v.w_between_mean == pytest.approx(np.mean(between))
    assert v.w_between_sd == pytest.approx(np.std(between, ddof=1))
    assert v.w_within_mean == pytest.approx(np.mean(within))
    assert v.w_within_sd == pytest.approx(np.std(within, ddof=1))
    assert v.p_value == pytest.approx(permutation_p(w, n_a)[0])


@pytest.mark.parametrize(("n_a", "n_b"), [(1, 3), (3, 1), (1, 1)])
def test_verdict_with_fewer_than_two_seeds_is_inconclusive(n_a, n_b):
    v = verdict(separated(n_a, n_b), n_a, alpha=0.05, max_ratio=1.5)
    assert v.verdict == "inconclusive"
    assert np.isnan(v.p_value)
    assert v.n_between == n_a * n_b
    assert v.n_within == math.comb(n_a, 2) + math.comb(n_b, 2)
    if v.n_within == 0:
        assert np.isnan(v.w_within_mean) and np.isnan(v.w_within_sd)


def test_verdict_calls():
    separated_call = verdict(separated(5, 5), 5, alpha=0.05, max_ratio=1.5)
    assert separated_call.verdict == "not conjugate"
    assert separated_call.p_value == pytest.approx(2 / 252)
    same = np.ones((10, 10)) - np.eye(10)
    assert verdict(same, 5, alpha=0.05, max_ratio=1.5).verdict == "conjugate"
    # 3 + 3 seeds: the smallest attainable p is 2/20 = 0.1, so no call is possible.
    assert verdict(np.ones((6, 6)) - np.eye(6), 3, 0.05, 1.5).verdict == "inconclusive"
