"""The conjugacy verdict: is the between-condition W larger than the seed-to-seed W?

Distances between spectra are not independent observations, so the test
permutes seed labels: the spectra of conditions A and B are pooled and
re-split into groups of the original sizes, and the statistic
mean(W between groups) - mean(W within groups) is recomputed for every split
(exactly when the splits are few, else for a seeded random sample).
The p-values of the pairs of one experiment are corrected for multiple
comparisons (Holm by default) before the verdict. A Mann-Whitney U test of
between- against within-distances is reported beside it as a cross-check; it
treats the distances as independent (they are not: each seed enters many), so
it is too liberal to decide anything.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import mannwhitneyu

CORRECTIONS = ("holm", "bonferroni", "none")


@dataclass
class Verdict:
    n_between: int
    w_between_mean: float
    w_between_sd: float
    n_within: int
    w_within_mean: float
    w_within_sd: float
    p_value: float  # permutation p of this pair alone
    verdict: str
    ratio: float = float("nan")  # effect size: mean W between / mean W within
    p_min: float = float("nan")  # smallest p the permutation test can give
    correction: str = "none"
    p_corrected: float = float("nan")  # p_value after the correction across pairs
    p_min_corrected: float = float("nan")  # p_min, corrected as p_value would be
    mw_u: float = float("nan")  # Mann-Whitney U of between vs within W
    mw_p: float = float("nan")  # its one-sided p (between > within)


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
    Ties with the observed statistic count as at least as extreme.
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


def mann_whitney(between: np.ndarray, within: np.ndarray) -> tuple[float, float]:
    """U statistic and one-sided p of 'between W tend to exceed within W'; NaN if one is empty.

    U / (n_between * n_within) is the probability that a between-distance
    exceeds a within-distance (ties count one half). All values tied gives p = 1.
    """
    if between.size == 0 or within.size == 0:
        return float("nan"), float("nan")
    if np.ptp(np.concatenate([between, within])) == 0:
        return between.size * within.size / 2, 1.0
    res = mannwhitneyu(between, within, alternative="greater")
    return float(res.statistic), float(res.pvalue)


def adjust(p: list[float] | np.ndarray, correction: str) -> np.ndarray:
    """p-values corrected for the family of tests; NaN entries (no test) are not counted.

    holm: step-down, p_(i) -> max over j <= i of (m - j + 1) p_(j), capped at 1;
    bonferroni: m p, capped at 1; none: unchanged. Both control the
    family-wise error rate at alpha; Holm is uniformly more powerful.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; expected one of {CORRECTIONS}")
    p = np.asarray(p, dtype=float)
    out = p.copy()
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0 or correction == "none":
        return out
    if correction == "bonferroni":
        out[tested] = np.minimum(1.0, m * p[tested])
        return out
    order = tested[np.argsort(p[tested], kind="stable")]
    steps = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(1.0, steps)
    return out


def decide(p: float, p_min: float, ratio: float, alpha: float, max_ratio: float) -> str:
    """Conjugate when W between is comparable to W within; not when clearly above.

    "Clearly above" needs both a significant test (p < alpha) and a relevant
    size (ratio of means > max_ratio, an equivalence margin), since with many
    seeds a tiny systematic difference becomes significant. "Comparable"
    needs no significant difference, a ratio within the margin, and a test
    that could have rejected (smallest attainable p < alpha). Anything else
    (significant but small, large but not significant, too few seeds) is
    inconclusive. With a correction, p and p_min are the corrected values.
    """
    if p < alpha and ratio > max_ratio:
        return "not conjugate"
    if p >= alpha and ratio <= max_ratio and p_min < alpha:
        return "conjugate"
    return "inconclusive"


def ratio_of_means(between: float, within: float) -> float:
    """mean W between / mean W within; 1 when both are 0 (identical spectra), inf if only within."""
    if within == 0:
        return 1.0 if between == 0 else math.inf
    return between / within


def verdict(
    w: np.ndarray, n_a: int, alpha: float, max_ratio: float, permutations: int = 9999
) -> Verdict:
    """Summaries and verdict for conditions A (first n_a spectra) and B (the rest), uncorrected."""
    n = w.shape[0]
    n_b = n - n_a
    in_a = np.arange(n) < n_a
    iu = np.triu_indices(n, k=1)
    same = in_a[iu[0]] == in_a[iu[1]]
    between, within = w[iu][~same], w[iu][same]

    def mean(x: np.ndarray) -> float:
        return float(x.mean(dtype=np.float64)) if x.size else float("nan")

    def sd(x: np.ndarray) -> float:
        return float(x.std(ddof=1, dtype=np.float64)) if x.size > 1 else float("nan")

    ratio = ratio_of_means(mean(between), mean(within))
    if n_a < 2 or n_b < 2:
        p, p_min, call = float("nan"), float("nan"), "inconclusive"
    else:
        p, p_min = permutation_p(w, n_a, permutations)
        call = decide(p, p_min, ratio, alpha, max_ratio)
    mw_u, mw_p = mann_whitney(between, within)
    return Verdict(
        n_between=int(between.size),
        w_between_mean=mean(between),
        w_between_sd=sd(between),
        n_within=int(within.size),
        w_within_mean=mean(within),
        w_within_sd=sd(within),
        p_value=p,
        verdict=call,
        ratio=ratio,
        p_min=p_min,
        correction="none",
        p_corrected=p,
        p_min_corrected=p_min,
        mw_u=mw_u,
        mw_p=mw_p,
    )


def corrected(
    verdicts: list[Verdict], alpha: float, max_ratio: float, correction: str = "holm"
) -> list[Verdict]:
    """The verdicts of one experiment's pairs, decided on p-values corrected across them.

    A pair's smallest attainable corrected p is its p_min put in place of its
    p among the family's observed p-values: "conjugate" needs that below
    alpha, i.e. a test that could have rejected even after the correction.
    Pairs without a test (fewer than 2 seeds on a side) stay inconclusive and
    are not counted in the family.
    """
    p = np.array([v.p_value for v in verdicts], dtype=float)
    p_adj = adjust(p, correction)
    out = []
    for i, v in enumerate(verdicts):
        if np.isnan(p[i]):
            out.append(replace(v, correction=correction, verdict="inconclusive"))
            continue
        best = p.copy()
        best[i] = v.p_min
        p_min_adj = float(adjust(best, correction)[i])
        call = decide(float(p_adj[i]), p_min_adj, v.ratio, alpha, max_ratio)
        out.append(
            replace(
                v,
                correction=correction,
                p_corrected=float(p_adj[i]),
                p_min_corrected=p_min_adj,
                verdict=call,
            )
        )
    return out
