"""The conjugacy verdict: is the between-condition W larger than the seed-to-seed W?

Distances between spectra are not independent observations, so the test
permutes seed labels: the spectra of conditions A and B are pooled and
re-split into groups of the original sizes, and the statistic
mean(W between groups) - mean(W within groups) is recomputed for every split
(exactly when the splits are few, else for a seeded random sample).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Verdict:
    n_between: int
    w_between_mean: float
    w_between_sd: float
    n_within: int
    w_within_mean: float
    w_within_sd: float
    p_value: float
    verdict: str


def _split_stat(w: np.ndarray, in_a: np.ndarray) -> float:
    """mean W between the two groups minus mean W within them (pairs i < j)."""
    iu = np.triu_indices(len(in_a), k=1)
    same = in_a[iu[0]] == in_a[iu[1]]
    d = w[iu]
    return float(d[~same].mean() - d[same].mean())


def _splits(n_a: int, n: int, permutations: int, rng: np.random.Generator):
    """Group-A memberships to test: all C(n, n_a) when few, else random ones."""
    if math.comb(n, n_a) <= permutations:
        for members in itertools.combinations(range(n), n_a):
            mask = np.zeros(n, dtype=bool)
            mask[list(members)] = True
            yield mask
        return
    for _ in range(permutations):
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, n_a, replace=False)] = True
        yield mask


def permutation_p(
    w: np.ndarray, n_a: int, permutations: int = 9999, seed: int = 0
) -> tuple[float, float]:
    """One-sided p-value of 'between > within', and the smallest p the test can give.

    `w` is the W matrix of the pooled spectra, A's first. Exact enumeration
    counts the observed split itself; the random version uses (1 + k)/(1 + R).
    """
    n = w.shape[0]
    observed = np.arange(n) < n_a
    t_obs = _split_stat(w, observed)
    exact = math.comb(n, n_a) <= permutations
    rng = np.random.default_rng(seed)
    stats = np.array([_split_stat(w, m) for m in _splits(n_a, n, permutations, rng)])
    hits = int(np.count_nonzero(stats >= t_obs - 1e-12 * max(abs(t_obs), 1e-300)))
    if exact:
        # Swapping the groups gives the same split when the sizes are equal.
        twins = 2 if 2 * n_a == n else 1
        return hits / len(stats), twins / len(stats)
    return (1 + hits) / (1 + len(stats)), 1 / (1 + len(stats))


def decide(p: float, p_min: float, ratio: float, alpha: float, max_ratio: float) -> str:
    """Conjugate when W between is comparable to W within; not when clearly above.

    "Clearly above" needs both a significant test (p < alpha) and a relevant
    size (ratio of means > max_ratio, an equivalence margin), since with many
    seeds a tiny systematic difference becomes significant. "Comparable"
    needs no significant difference, a ratio within the margin, and a test
    that could have rejected (smallest attainable p < alpha). Anything else
    (significant but small, large but not significant, too few seeds) is
    inconclusive.
    """
    if p < alpha and ratio > max_ratio:
        return "not conjugate"
    if p >= alpha and ratio <= max_ratio and p_min < alpha:
        return "conjugate"
    return "inconclusive"


def verdict(
    w: np.ndarray, n_a: int, alpha: float, max_ratio: float, permutations: int = 9999
) -> Verdict:
    """Summaries and verdict for conditions A (first n_a spectra) and B (the rest)."""
    n = w.shape[0]
    n_b = n - n_a
    in_a = np.arange(n) < n_a
    iu = np.triu_indices(n, k=1)
    same = in_a[iu[0]] == in_a[iu[1]]
    between, within = w[iu][~same], w[iu][same]

    def sd(x: np.ndarray) -> float:
        return float(x.std(ddof=1)) if x.size > 1 else float("nan")

    if n_a < 2 or n_b < 2:
        p, call = float("nan"), "inconclusive"
    else:
        p, p_min = permutation_p(w, n_a, permutations)
        call = decide(p, p_min, between.mean() / within.mean(), alpha, max_ratio)
    return Verdict(
        n_between=int(between.size),
        w_between_mean=float(between.mean()) if between.size else float("nan"),
        w_between_sd=sd(between),
        n_within=int(within.size),
        w_within_mean=float(within.mean()) if within.size else float("nan"),
        w_within_sd=sd(within),
        p_value=p,
        verdict=call,
    )
