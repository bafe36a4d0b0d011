"""Permutation test and verdict (stats.py)."""

import itertools
import math

import numpy as np
import pytest

from conjugacy import config
from conjugacy.verdict.compare import VERDICT_COLUMNS, verdict_table
from conjugacy.verdict.distance import pairwise
from conjugacy.verdict.stats import adjust, corrected, decide, mann_whitney, permutation_p, verdict


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


def lopsided_distances(n_a, n_b, shift):
    """W of points in R^3 (seeded): group B's first coordinate shifted by `shift`."""
    pts = np.random.default_rng(0).standard_normal((n_a + n_b, 3))
    pts[n_a:, 0] += shift
    return np.linalg.norm(pts[:, None] - pts[None, :], axis=-1)


@pytest.mark.parametrize("shift", [0.0, 0.8])
@pytest.mark.parametrize("seed", [0, 1])
def test_sampled_p_estimates_the_exact_p(shift, seed):
    """The sampled branch's p lies within 4 binomial standard errors of the enumerated p."""
    n_a, n_b, draws = 8, 8, 2000
    w = lopsided_distances(n_a, n_b, shift)
    splits = math.comb(n_a + n_b, n_a)  # 12870: small enough to enumerate
    exact, exact_min = permutation_p(w, n_a, permutations=splits)
    assert exact_min == pytest.approx(2 / splits)  # the exact branch
    sampled, sampled_min = permutation_p(w, n_a, permutations=draws, seed=seed)
    assert sampled_min == pytest.approx(1 / (1 + draws))  # the sampled branch
    assert 0.1 < exact < 0.9  # a p with room to move either way
    # Members drawn with replacement give smaller, unequal groups: p moves by ~10 errors.
    assert abs(sampled - exact) < 4 * math.sqrt(exact * (1 - exact) / draws)


def near_tie_distances(gap):
    """W of 4 points whose split {0, 2} | {1, 3} has a statistic `gap` (relative) below
    the observed {0, 1} | {2, 3}; the third split, {0, 3} | {1, 2}, is far below.

    With 2 + 2 points the statistic is sum(W) / 4 - 3/4 * (sum of the two within-pairs),
    so it is set by the within sums: 2 (observed), 2 + e and 10.
    """
    e = 8 * gap / (3 - gap)  # (t_obs - t) / t_obs = 3 e / (8 + e)
    w = np.zeros((4, 4))
    for (i, j), v in {(0, 1): 1, (2, 3): 1, (0, 2): 1, (1, 3): 1 + e, (0, 3): 5, (1, 2): 5}.items():
        w[i, j] = w[j, i] = v
    return w


@pytest.mark.parametrize(
    ("gap", "tie"), [(1e-14, True), (1e-13, True), (1e-9, False), (1e-7, False)]
)
def test_tie_tolerance_is_rounding_sized(gap, tie):
    """Splits within 1e-12 (relative) of the observed statistic count as ties; 1e-9 apart do not."""
    w = near_tie_distances(gap)
    t_obs = brute_stat(w, {0, 1})
    assert (t_obs - brute_stat(w, {0, 2})) / t_obs == pytest.approx(gap, rel=0.05)
    assert brute_stat(w, {0, 3}) < 0.5 * t_obs
    p, p_min = permutation_p(w, 2)
    # 6 splits, each twinned with its swap: the observed pair, plus the near pair if a tie.
    assert p == pytest.approx(4 / 6 if tie else 2 / 6)
    assert p_min == pytest.approx(2 / 6)


# --- decide ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "low", "high", "expected"),
    [
        (0.01, 1.8, 2.5, "not conjugate"),  # significant, interval above the margin
        (0.50, 0.8, 1.3, "conjugate"),  # interval below the margin
        (0.01, 1.1, 1.4, "conjugate"),  # significant but small: equivalent within the margin
        (0.50, 1.8, 2.5, "inconclusive"),  # large but not significant
        (0.01, 1.2, 1.8, "inconclusive"),  # significant, interval across the margin
        (0.50, 1.2, 1.8, "inconclusive"),  # nothing shown either way
        (0.05, 1.8, 2.5, "inconclusive"),  # p == alpha is not significant, even if large
        (0.0499, 1.8, 2.5, "not conjugate"),  # just below alpha, large: significant
        (0.01, math.inf, math.inf, "not conjugate"),  # W within 0, between > 0
        (float("nan"), 0.8, 1.3, "conjugate"),  # the equivalence needs no permutation p
        (0.01, float("nan"), float("nan"), "inconclusive"),  # no interval
    ],
)
def test_decide_branches(p, low, high, expected):
    assert decide(p, low, high, alpha=0.05, max_ratio=1.5) == expected


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (1.0, 1.5, "conjugate"),  # the upper end on the margin: "at or below"
        (1.0, np.nextafter(1.5, 2), "inconclusive"),  # just above it
        (1.5, 1.5, "conjugate"),  # a point interval on the margin
        (1.5, 2.0, "inconclusive"),  # the lower end on the margin is not above it
        (np.nextafter(1.5, 2), 2.0, "not conjugate"),  # just above it
    ],
)
def test_decide_at_the_margin(low, high, expected):
    """TOST boundaries: high <= margin rejects 'ratio > margin'; low > margin rejects '<='."""
    assert decide(0.001, low, high, alpha=0.05, max_ratio=1.5) == expected


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
    assert separated_call.ratio_low > 100  # A within 0.1-0.4 apart, B 100 away
    same = np.ones((10, 10)) - np.eye(10)
    assert verdict(same, 5, alpha=0.05, max_ratio=1.5).verdict == "conjugate"
    # 3 + 3 seeds: the smallest attainable p is 2/20 = 0.1, "not conjugate" is out of
    # reach; with all W equal the interval is [1, 1], so the equivalence is shown.
    three = verdict(np.ones((6, 6)) - np.eye(6), 3, 0.05, 1.5)
    assert three.p_min == pytest.approx(0.1)
    assert three.verdict == "conjugate"
    # ... and groups 100 apart stay inconclusive: the interval is above, p cannot be below.
    assert verdict(separated(3, 3), 3, 0.05, 1.5).verdict == "inconclusive"


def test_p_equal_to_alpha_is_not_a_rejection():
    """A pair whose exact p equals alpha is not "not conjugate"; just above that alpha it is."""
    w = separated(5, 5)
    p, _ = permutation_p(w, 5)
    assert p == 2 / 252  # the same float as alpha below
    at = verdict(w, 5, alpha=2 / 252, max_ratio=1.5)
    assert at.p_value == at.p_min == 2 / 252 and at.ratio_low > 1.5
    assert at.verdict == "inconclusive"  # not significant at p == alpha; could not reject
    assert verdict(w, 5, alpha=np.nextafter(2 / 252, 1), max_ratio=1.5).verdict == "not conjugate"
    # The same boundary after a correction: Holm over one pair leaves p unchanged.
    (alone,) = corrected([at], 2 / 252, 1.5, "holm")
    assert alone.p_corrected == 2 / 252 and alone.verdict == "inconclusive"


def test_identical_spectra_are_conjugate():
    # All W = 0: every split has statistic 0, p = 1, ratio 0/0 read as 1.
    v = verdict(np.zeros((10, 10)), 5, alpha=0.05, max_ratio=1.5)
    assert v.p_value == 1.0
    assert v.ratio == v.ratio_low == v.ratio_high == 1.0
    assert v.mw_p == 1.0 and v.mw_u == pytest.approx(v.n_between * v.n_within / 2)
    assert v.verdict == "conjugate"


def test_zero_within_and_positive_between_is_infinite_ratio():
    # Two points, five identical copies each: within W = 0, between W = 1.
    v = verdict(line_distances([0] * 5 + [1] * 5), 5, alpha=0.05, max_ratio=1.5)
    assert v.ratio == v.ratio_low == v.ratio_high == math.inf
    assert v.p_value == pytest.approx(2 / 252)
    assert v.verdict == "not conjugate"


def test_ties_count_as_extreme():
    # Distances take only the values 0 and 1: many splits tie the observed statistic.
    w = line_distances([0, 0, 1, 0, 1, 1])  # A = {0, 0, 1}, B = {0, 1, 1}
    p, _ = permutation_p(w, 3)
    t_obs = brute_stat(w, {0, 1, 2})
    splits = [set(c) for c in itertools.combinations(range(6), 3)]
    assert p == pytest.approx(np.mean([brute_stat(w, s) >= t_obs - 1e-12 for s in splits]))
    assert p > 0.05


# --- Mann-Whitney ------------------------------------------------------------------------------


def test_mann_whitney_hand_computed():
    # Between {3, 4} all exceed within {1, 2}: U = 4 (of 2 x 2), exact p = 1 / C(4, 2).
    u, p = mann_whitney(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert u == 4.0
    assert p == pytest.approx(1 / 6)
    # A tie counts one half: between {2} vs within {1, 2} gives U = 1.5.
    assert mann_whitney(np.array([2.0]), np.array([1.0, 2.0]))[0] == 1.5
    assert np.isnan(mann_whitney(np.array([1.0]), np.zeros(0))[1])


def test_verdict_reports_mann_whitney_of_between_vs_within():
    v = verdict(separated(4, 4), 4, alpha=0.05, max_ratio=1.5)
    assert v.mw_u == v.n_between * v.n_within  # every between W exceeds every within W
    assert v.mw_p < 1e-4


# --- multiple comparisons ----------------------------------------------------------------------


def test_holm_bonferroni_none_hand_computed():
    p = [0.01, 0.04, 0.03, np.nan]
    # Holm: sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> running max.
    np.testing.assert_allclose(adjust(p, "holm"), [0.03, 0.06, 0.06, np.nan])
    np.testing.assert_allclose(adjust(p, "bonferroni"), [0.03, 0.12, 0.09, np.nan])
    np.testing.assert_allclose(adjust(p, "none"), p)
    np.testing.assert_allclose(adjust([0.6, 0.5], "holm"), [1.0, 1.0])
    assert adjust([], "holm").size == 0
    with pytest.raises(ValueError, match="sidak"):
        adjust(p, "sidak")


def test_holm_and_bonferroni_are_capped_at_one():
    """Corrected p-values never exceed 1, where m * p (or Holm's step) would."""
    p = [0.9, 0.3, 0.45, np.nan]
    # Bonferroni: 3 p = 2.7, 0.9, 1.35 -> 1, 0.9, 1.
    np.testing.assert_allclose(adjust(p, "bonferroni"), [1.0, 0.9, 1.0, np.nan])
    # Holm: sorted 0.3, 0.45, 0.9 times 3, 2, 1 = 0.9, 0.9, 0.9 -> running max 0.9.
    np.testing.assert_allclose(adjust(p, "holm"), [0.9, 0.9, 0.9, np.nan])
    # Holm's step above 1: 0.4, 0.6 times 2, 1 = 0.8, 0.6 -> 0.8, 0.8; 0.6, 0.7 -> 1.2 -> 1.
    np.testing.assert_allclose(adjust([0.6, 0.4], "holm"), [0.8, 0.8])
    np.testing.assert_allclose(adjust([0.7, 0.6], "holm"), [1.0, 1.0])
    np.testing.assert_allclose(adjust([0.7, 0.6, 0.01], "holm"), [1.0, 1.0, 0.03])
    # Through the verdicts: p = 1 pairs stay at 1 after either correction.
    same = verdict(np.ones((8, 8)) - np.eye(8), 4, alpha=0.05, max_ratio=1.5)
    assert same.p_value == 1.0
    for correction in ("holm", "bonferroni"):
        out = corrected([same, same, same], 0.05, 1.5, correction)
        assert [v.p_corrected for v in out] == [1.0] * 3


def test_holm_never_above_bonferroni():
    p = np.random.default_rng(4).random(7) / 5
    assert np.all(adjust(p, "holm") <= adjust(p, "bonferroni") + 1e-15)
    assert np.all(adjust(p, "holm") >= p)


def test_correction_turns_a_borderline_pair_inconclusive():
    # 3 + 4 seeds well separated: p = p_min = 1/35 < 0.05, but 3 pairs x 1/35 > 0.05.
    single = verdict(separated(3, 4), 3, alpha=0.05, max_ratio=1.5)
    assert single.p_value == pytest.approx(1 / 35) and single.verdict == "not conjugate"
    family = [single, single, single]
    holm = corrected(family, 0.05, 1.5, "holm")
    assert [v.p_corrected for v in holm] == pytest.approx([3 / 35] * 3)
    assert all(v.verdict == "inconclusive" and v.correction == "holm" for v in holm)
    assert [v.verdict for v in corrected(family, 0.05, 1.5, "none")] == ["not conjugate"] * 3


def test_conjugate_does_not_depend_on_the_correction():
    # 4 + 4 identical-distance seeds: p = 1, p_min = 2/70, interval [1, 1].
    same = verdict(np.ones((8, 8)) - np.eye(8), 4, alpha=0.05, max_ratio=1.5)
    assert same.verdict == "conjugate"
    (alone,) = corrected([same], 0.05, 1.5, "holm")
    assert alone.verdict == "conjugate" and alone.p_min_corrected == pytest.approx(2 / 70)
    # With two pairs, Holm's first step needs p < 0.025 < 2/70: "not conjugate" is out of
    # reach (p_min_corrected says so), but the equivalence is the interval's, not p's.
    two = corrected([same, same], 0.05, 1.5, "holm")
    assert [v.p_min_corrected for v in two] == pytest.approx([4 / 70, 4 / 70])
    assert [v.verdict for v in two] == ["conjugate"] * 2


def test_untestable_pairs_are_not_counted_in_the_family():
    one_seed = verdict(separated(1, 3), 1, alpha=0.05, max_ratio=1.5)
    big = verdict(separated(5, 5), 5, alpha=0.05, max_ratio=1.5)
    out = corrected([one_seed, big], 0.05, 1.5, "bonferroni")
    assert out[0].verdict == "inconclusive" and np.isnan(out[0].p_corrected)
    assert out[1].p_corrected == pytest.approx(big.p_value)  # m = 1
    assert out[1].verdict == "not conjugate"


# --- synthetic spectra with a known answer -----------------------------------------------------


def generator_spectrum(rng, shift=0.0):
    """Eigenvalues of a fixed 6x6 linear map (3 conjugate pairs) plus seed noise, shifted."""
    base = np.array([0.95 + 0.1j, 0.95 - 0.1j, 0.8 + 0.3j, 0.8 - 0.3j, 0.5, 0.3])
    return base + shift + 0.01 * (rng.standard_normal(6) + 1j * rng.standard_normal(6))


def synthetic_table(shift, seeds=6, correction="holm"):
    rng = np.random.default_rng(7)
    labels = [(c, s) for c in ("a", "b", "c") for s in range(seeds)]
    spectra = [generator_spectrum(rng, shift if c == "c" else 0.0) for c, _ in labels]
    return verdict_table(
        labels,
        pairwise(spectra),
        [("a", "b"), ("a", "c"), ("b", "c")],
        alpha=0.05,
        max_ratio=1.5,
        permutations=999,
        correction=correction,
    )


def test_same_generator_conjugate_shifted_eigenvalues_not():
    table = synthetic_table(shift=0.1)
    assert list(table.verdict) == ["conjugate", "not conjugate", "not conjugate"]
    assert table.ratio.iloc[0] < 1.5 and table.ratio.iloc[1:].min() > 3
    assert table.ratio_high.iloc[0] <= 1.5 and table.ratio_low.iloc[1:].min() > 1.5
    assert (table.ratio_low <= table.ratio).all() and (table.ratio <= table.ratio_high).all()
    assert (table.ratio_level == 0.9).all()
    assert (table.p_corrected >= table.p_value).all()
    assert table.mw_p.iloc[1:].max() < 1e-6
    assert list(table.columns[: len(VERDICT_COLUMNS)]) == VERDICT_COLUMNS
    assert list(table.columns[:11]) == [  # the original columns keep their place
        "condition_a",
        "condition_b",
        "n_between",
        "w_between_mean",
        "w_between_sd",
        "n_within",
        "w_within_mean",
        "w_within_sd",
        "p_value",
        "verdict",
        "excluded",
    ]


def test_no_shift_no_difference_anywhere():
    table = synthetic_table(shift=0.0)
    assert list(table.verdict) == ["conjugate"] * 3


def test_one_seed_per_condition_is_inconclusive():
    table = synthetic_table(shift=0.5, seeds=1)
    assert list(table.verdict) == ["inconclusive"] * 3
    assert table.p_value.isna().all() and table.n_within.eq(0).all()


def test_correction_is_a_checked_config_key():
    base = {"experiment": "e", "conditions": {"m": {"system": "omd"}}}
    assert config.resolve(base)["compare"]["correction"] == "holm"
    with pytest.raises(config.ConfigError, match="compare.correction"):
        config.resolve({**base, "compare": {"correction": "sidak"}})


@pytest.mark.parametrize("block", [1 << 22, 1000])  # one block; many blocks of a few splits
def test_random_splits_match_a_split_by_split_reference(monkeypatch, block):
    """The splits are evaluated a block at a time: the same p as one split after another."""
    from conjugacy.verdict import stats

    monkeypatch.setattr(stats, "SPLIT_BLOCK", block)
    w = np.round(random_distances(np.random.default_rng(3), 30), 2)  # ties included
    n_a, permutations, seed = 14, 999, 7
    t_obs = brute_stat(w, set(range(n_a)))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(permutations):
        members = set(rng.choice(30, n_a, replace=False).tolist())
        hits += brute_stat(w, members) >= t_obs - 1e-12 * abs(t_obs)
    p, p_min = permutation_p(w, n_a, permutations, seed)
    assert 0.01 < p < 1  # a non-trivial case
    assert p == (1 + hits) / (1 + permutations) and p_min == 1 / (1 + permutations)
