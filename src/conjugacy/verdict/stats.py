"""The conjugacy verdict: is the between-condition W within a margin of the seed-to-seed W?

The effect is the ratio mean(W between) / mean(W within). Its confidence
interval comes from a cluster bootstrap over seeds (`bootstrap_ratio`): the
seeds of each condition are resampled with replacement and both means are
recomputed from the W matrix, so the seed, not the distance, is the unit of
replication. The verdict is an equivalence test, two one-sided tests (TOST)
on log(ratio) against log(max_ratio): "conjugate" when the (1 - 2 alpha)
interval lies at or below the margin, "not conjugate" when it lies above the
margin and the permutation test rejects after the correction, "inconclusive"
otherwise (`decide`).

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
from statistics import NormalDist

import numpy as np
from scipy.stats import mannwhitneyu

CORRECTIONS = ("holm", "bonferroni", "none")
# Seeds per condition the ratio's interval needs: with 2, one within distance per condition
# and a bootstrap distribution of a few points (a 90% interval then covers far too little).
MIN_INTERVAL_SEEDS = 3


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
    ratio_low: float = float("nan")  # cluster-bootstrap interval of the ratio, lower end
    ratio_high: float = float("nan")  # upper end
    ratio_level: float = float("nan")  # its coverage, 1 - 2 alpha


SPLIT_BLOCK = 1 << 22  # pair memberships evaluated at a time (bytes of bools)


def _split_stats(d: np.ndarray, iu: tuple[np.ndarray, np.ndarray], in_a: np.ndarray) -> np.ndarray:
    """Mean W between the groups minus mean W within, for each row of `in_a` (splits x seeds).

    d = W[iu], iu the pairs i < j. All splits of a block at once: the test's
    9999 splits cost one pass of array operations instead of 9999 Python calls.
    """
    same = in_a[:, iu[0]] == in_a[:, iu[1]]
    n_same = same.sum(axis=1)
    sum_same = same.astype(np.float64) @ d
    within = sum_same / n_same
    between = (d.sum() - sum_same) / (d.size - n_same)
    return between - within


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
    iu = np.triu_indices(n, k=1)
    d = w[iu]
    observed = np.arange(n) < n_a
    t_obs = float(_split_stats(d, iu, observed[None, :])[0])
    exact = math.comb(n, n_a) <= permutations
    rng = np.random.default_rng(seed)
    splits = _splits(n_a, n, permutations, rng)
    block = max(1, SPLIT_BLOCK // max(d.size, 1))
    chunks = iter(lambda: list(itertools.islice(splits, block)), [])
    stats = np.concatenate([_split_stats(d, iu, np.array(chunk)) for chunk in chunks])
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


def decide(p: float, low: float, high: float, alpha: float, max_ratio: float) -> str:
    """The verdict of two one-sided tests (TOST) on log(ratio) against log(max_ratio).

    [low, high] is the (1 - 2 alpha) bootstrap interval of the ratio, so
    `high <= max_ratio` rejects "ratio > max_ratio" at level alpha (one-sided)
    and `low > max_ratio` rejects "ratio <= max_ratio". "conjugate": the
    interval lies at or below the margin (an equivalence shown, even when a
    small difference is significant). "not conjugate": the interval lies above
    the margin and the permutation test rejects (p < alpha; p corrected across
    the pairs when there is a correction). Anything else (an interval across
    the margin, a large ratio the permutation test cannot confirm, no interval)
    is "inconclusive". The log does not move the decision (the percentile
    interval of log(ratio) is the log of the ratio's), it is the scale on
    which the interval is read: symmetric for ratios r and 1/r.
    """
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if high <= max_ratio:
        return "conjugate"
    if low > max_ratio and p < alpha:
        return "not conjugate"
    return "inconclusive"


def ratio_of_means(between: float, within: float) -> float:
    """mean W between / mean W within; 1 when both are 0 (identical spectra), inf if only within."""
    if within == 0:
        return 1.0 if between == 0 else math.inf
    return between / within


def _ratios(between: np.ndarray, within: np.ndarray) -> np.ndarray:
    """ratio_of_means, elementwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = between / within
    zero = within == 0
    out[zero] = np.where(between[zero] == 0, 1.0, math.inf)
    return out


def bootstrap_ratios(
    w: np.ndarray, n_a: int, resamples: int = 2000, seed: int = 0, paired: bool = False
) -> np.ndarray:
    """The ratio of means in `resamples` cluster-bootstrap resamples of the seeds.

    The n_a seeds of A (the first rows of `w`) are drawn n_a times with
    replacement, those of B n_b times, and both means are recomputed from W.
    Between: the mean over all n_a * n_b pairs of drawn seeds (a seed drawn
    twice counts twice). Within: the mean over the pairs of draws of one
    condition that are *different seeds*; two draws of the same seed are not a
    pair (their self-distance, 0, says nothing about the seed-to-seed spread
    and would pull the within mean down by about 1/n, inflating the ratio),
    so a distinct pair (i, j) drawn m_i and m_j times weighs m_i * m_j. A
    resample in which both conditions drew a single seed has no within pair
    and is drawn again (its chance is n_a^(1 - n_a) * n_b^(1 - n_b): 1/4 with
    2 + 2 seeds, 1/81 with 3 + 3). `paired`: A and B are the same seeds
    (successive windows of one run), drawn together: B's draws are A's.
    Returns the ratios in the order drawn; a fixed seed gives the same ones.
    """
    n = w.shape[0]
    n_b = n - n_a
    if min(n_a, n_b) < 1 or max(n_a, n_b) < 2 or (paired and n_a != n_b):
        raise ValueError(f"no bootstrap for {n_a} + {n_b} seeds (paired: {paired})")
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    got = 0
    while got < resamples:
        size = resamples - got
        c_a = rng.multinomial(n_a, np.full(n_a, 1 / n_a), size=size)
        c_b = c_a if paired else rng.multinomial(n_b, np.full(n_b, 1 / n_b), size=size)
        ratios = resampled_ratios(w, n_a, c_a, c_b)
        ok = ~np.isnan(ratios)
        out.append(ratios[ok])
        got += int(ok.sum())
    return np.concatenate(out)[:resamples]


def resampled_ratios(w: np.ndarray, n_a: int, c_a: np.ndarray, c_b: np.ndarray) -> np.ndarray:
    """Ratio of means of resamples given by draw counts: c_a[r, i] = draws of A's seed i.

    NaN where no within pair exists (each condition drew one seed only). See
    bootstrap_ratios for the means; the diagonal of `w` is taken as 0.
    """
    w = np.array(w, dtype=np.float64)
    np.fill_diagonal(w, 0.0)
    n_b = w.shape[0] - n_a
    c_a, c_b = np.atleast_2d(c_a).astype(np.float64), np.atleast_2d(c_b).astype(np.float64)
    w_aa, w_bb, w_ab = w[:n_a, :n_a], w[n_a:, n_a:], w[:n_a, n_a:]
    between = np.einsum("ri,ij,rj->r", c_a, w_ab, c_b) / (n_a * n_b)
    # m W m^T counts each distinct pair twice, and each same-seed pair with weight m_i^2 * 0.
    within = np.einsum("ri,ij,rj->r", c_a, w_aa, c_a) + np.einsum("ri,ij,rj->r", c_b, w_bb, c_b)
    pairs = n_a**2 - (c_a**2).sum(axis=1) + n_b**2 - (c_b**2).sum(axis=1)  # twice the count
    out = np.full(between.shape, np.nan)
    ok = pairs > 0
    out[ok] = _ratios(between[ok], within[ok] / pairs[ok])
    return out


def interval_tail(level: float, seeds: int) -> float:
    """Tail probability of each end of the interval: (1 - level) / 2, widened for few seeds.

    The bootstrap sees the spread of n seeds as that of their empirical
    distribution, whose variance is (n - 1) / n of the unbiased one: the plain
    percentile interval is too narrow when n is small. The ends are therefore
    taken at Phi(-sqrt(n / (n - 1)) z), z the normal quantile of the nominal
    level (the "expanded percentile" interval, without the t quantile, which
    overcorrects): n = 3 moves the 5% tails of a 90% interval to 2.2%, n = 10
    to 4.1%. `seeds` is the smaller condition's number of seeds.
    """
    if seeds < 2:
        raise ValueError(f"no interval from {seeds} seed(s)")
    normal = NormalDist()
    z = normal.inv_cdf(1 - (1 - level) / 2)
    return normal.cdf(-math.sqrt(seeds / (seeds - 1)) * z)


def ratio_interval(
    w: np.ndarray,
    n_a: int,
    level: float,
    resamples: int = 2000,
    seed: int = 0,
    paired: bool = False,
) -> tuple[float, float]:
    """Interval of the ratio of means at nominal `level` (e.g. 0.9), from bootstrap_ratios.

    The ends are order statistics of the resampled ratios (the inverted
    empirical CDF at interval_tail and 1 - interval_tail, with n the smaller
    condition's seeds), never interpolated, so an infinite ratio (W within 0
    in a resample) stays infinite.
    """
    ratios = bootstrap_ratios(w, n_a, resamples, seed, paired)
    tail = interval_tail(level, min(n_a, w.shape[0] - n_a))
    low, high = np.quantile(ratios, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


def verdict(
    w: np.ndarray,
    n_a: int,
    alpha: float,
    max_ratio: float,
    permutations: int = 9999,
    bootstrap: int = 2000,
    bootstrap_seed: int = 0,
    paired: bool = False,
) -> Verdict:
    """Summaries and verdict for conditions A (first n_a spectra) and B (the rest), uncorrected.

    The ratio's interval has nominal coverage 1 - 2 alpha (see decide and
    interval_tail); `bootstrap` resamples with seed `bootstrap_seed`, `paired`
    as in bootstrap_ratios. With fewer than 2 seeds on a side there is no
    permutation test, with fewer than MIN_INTERVAL_SEEDS no interval: either
    way the verdict is inconclusive.
    """
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
    level = 1 - 2 * alpha
    low = high = p = p_min = float("nan")
    if min(n_a, n_b) >= 2:
        p, p_min = permutation_p(w, n_a, permutations)
    if min(n_a, n_b) >= MIN_INTERVAL_SEEDS:
        low, high = ratio_interval(w, n_a, level, bootstrap, bootstrap_seed, paired)
    call = decide(p, low, high, alpha, max_ratio)
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
        ratio_low=low,
        ratio_high=high,
        ratio_level=level,
    )


def corrected(
    verdicts: list[Verdict], alpha: float, max_ratio: float, correction: str = "holm"
) -> list[Verdict]:
    """The verdicts of one experiment's pairs, decided on p-values corrected across them.

    Only "not conjugate" uses p, so only it depends on the correction; the
    interval is each pair's own. A pair's smallest attainable corrected p is
    its p_min put in place of its p among the family's observed p-values
    (reported: "not conjugate" is out of reach when it is not below alpha).
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
        call = decide(float(p_adj[i]), v.ratio_low, v.ratio_high, alpha, max_ratio)
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
