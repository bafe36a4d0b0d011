"""The cluster bootstrap of the ratio and the equivalence verdict (stats.py), known answers."""

import itertools

import numpy as np
import pytest

from conjugacy.verdict.compare import VERDICT_COLUMNS, verdict_table
from conjugacy.verdict.stats import (
    MIN_INTERVAL_SEEDS,
    bootstrap_ratios,
    corrected,
    interval_tail,
    ratio_interval,
    resampled_ratios,
    verdict,
)


def two_level(n_a, n_b, within, between):
    """W with every within distance `within` and every between distance `between`."""
    group = np.arange(n_a + n_b) < n_a
    w = np.where(group[:, None] == group[None, :], within, between).astype(float)
    np.fill_diagonal(w, 0.0)
    return w


def random_distances(rng, n):
    pts = rng.standard_normal((n, 3))
    return np.linalg.norm(pts[:, None] - pts[None, :], axis=-1)


def brute_ratio(w, n_a, draws_a, draws_b):
    """The ratio of one resample from its drawn seed indices, by the definition."""
    between = [w[i, j] for i in draws_a for j in draws_b]
    within = [
        w[i, j]
        for draws in (draws_a, draws_b)
        for i, j in itertools.combinations(draws, 2)
        if i != j  # two draws of one seed are not a pair
    ]
    return np.mean(between) / np.mean(within)


# --- the resampled means ----------------------------------------------------------------------


def test_resampled_ratio_matches_the_definition_on_drawn_indices():
    rng = np.random.default_rng(3)
    n_a, n_b = 4, 5
    w = random_distances(rng, n_a + n_b)
    for _ in range(50):
        draws_a = rng.integers(0, n_a, n_a)
        draws_b = n_a + rng.integers(0, n_b, n_b)
        counts_a = np.bincount(draws_a, minlength=n_a)
        counts_b = np.bincount(draws_b - n_a, minlength=n_b)
        got = resampled_ratios(w, n_a, counts_a, counts_b)
        assert got.shape == (1,)
        assert got[0] == pytest.approx(brute_ratio(w, n_a, draws_a, draws_b), rel=1e-12)


def test_a_seed_drawn_twice_adds_no_zero_to_the_within_mean():
    """All W equal: every resample's ratio is 1, whatever the duplicates."""
    w = two_level(3, 3, 1.0, 1.0)
    # A draws seed 0 three times (no pair), B draws 3, 3, 4: one distinct pair twice.
    assert resampled_ratios(w, 3, [3, 0, 0], [2, 1, 0])[0] == 1.0
    # Counting the same-seed draws as pairs at distance 0 would give 9/9 / (2/4).
    ratios = bootstrap_ratios(w, 3, resamples=500, seed=1)
    assert np.all(ratios == 1.0)


def test_no_within_pair_is_nan_and_is_drawn_again():
    w = two_level(2, 2, 1.0, 3.0)
    assert np.isnan(resampled_ratios(w, 2, [2, 0], [0, 2])[0])
    # With 2 + 2 seeds a quarter of the resamples have no within pair: all are replaced.
    ratios = bootstrap_ratios(w, 2, resamples=400, seed=0)
    assert ratios.size == 400 and not np.isnan(ratios).any()
    assert np.all(ratios == 3.0)
    with pytest.raises(ValueError, match="1 \\+ 1 seeds"):
        bootstrap_ratios(two_level(1, 1, 1.0, 1.0), 1)


def test_zero_within_gives_infinite_ratios_and_zero_w_gives_one():
    assert np.all(np.isinf(bootstrap_ratios(two_level(3, 3, 0.0, 1.0), 3, 200)))
    assert np.all(bootstrap_ratios(np.zeros((6, 6)), 3, 200) == 1.0)
    assert ratio_interval(two_level(3, 3, 0.0, 1.0), 3, 0.9, 200) == (np.inf, np.inf)


# --- the interval -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n_a", "n_b"), [(3, 3), (3, 5), (6, 4)])
@pytest.mark.parametrize(("within", "between"), [(0.2, 0.3), (1.0, 1.0), (2.0, 0.5)])
def test_interval_collapses_to_the_ratio_when_w_takes_two_values(n_a, n_b, within, between):
    low, high = ratio_interval(two_level(n_a, n_b, within, between), n_a, 0.9, 300)
    assert low == pytest.approx(between / within, rel=1e-12)
    assert high == pytest.approx(between / within, rel=1e-12)


def test_interval_holds_the_ratio_and_narrows_with_seeds():
    rng = np.random.default_rng(8)
    widths = []
    for n in (4, 8, 16):
        w = random_distances(rng, 2 * n)
        v = verdict(w, n, alpha=0.05, max_ratio=1.5, permutations=99)
        assert v.ratio_low < v.ratio < v.ratio_high
        assert v.ratio_level == pytest.approx(0.9)
        widths.append(np.log(v.ratio_high / v.ratio_low))
    assert widths[0] > widths[1] > widths[2]


def test_interval_ends_are_order_statistics_at_the_widened_tails():
    """5 + 7 seeds: the tails of a 90% interval are Phi(-sqrt(5/4) z_0.95) = 3.3%, not 5%."""
    w = random_distances(np.random.default_rng(9), 12)
    tail = interval_tail(0.9, 5)
    assert tail == pytest.approx(0.03296, abs=1e-4)
    ratios = np.sort(bootstrap_ratios(w, 5, 2000, 0))
    # inverted CDF: the smallest ratio with at least 2000 * tail ratios at or below it
    assert ratio_interval(w, 5, 0.9, 2000, 0) == (
        ratios[int(np.ceil(2000 * tail)) - 1],
        ratios[int(np.ceil(2000 * (1 - tail))) - 1],
    )


@pytest.mark.parametrize(("seeds", "tail"), [(3, 0.0220), (4, 0.0288), (10, 0.0415), (1000, 0.05)])
def test_interval_tail_widens_for_few_seeds(seeds, tail):
    assert interval_tail(0.9, seeds) == pytest.approx(tail, abs=2e-4)
    assert interval_tail(0.95, seeds) < interval_tail(0.9, seeds) < 0.05
    with pytest.raises(ValueError, match="1 seed"):
        interval_tail(0.9, 1)


def test_interval_level_follows_alpha():
    w = random_distances(np.random.default_rng(2), 12)
    wide = verdict(w, 6, alpha=0.025, max_ratio=1.5, permutations=99)
    narrow = verdict(w, 6, alpha=0.10, max_ratio=1.5, permutations=99)
    assert wide.ratio_level == pytest.approx(0.95) and narrow.ratio_level == pytest.approx(0.8)
    assert wide.ratio_low <= narrow.ratio_low and narrow.ratio_high <= wide.ratio_high
    assert (wide.ratio_low, wide.ratio_high) == ratio_interval(w, 6, 0.95, 2000, 0)


def test_interval_is_reproducible_with_its_seed():
    w = random_distances(np.random.default_rng(4), 10)
    first = bootstrap_ratios(w, 5, 300, seed=7)
    np.testing.assert_array_equal(first, bootstrap_ratios(w, 5, 300, seed=7))
    assert not np.array_equal(first, bootstrap_ratios(w, 5, 300, seed=8))
    assert ratio_interval(w, 5, 0.9, 300, 7) == ratio_interval(w, 5, 0.9, 300, 7)
    assert ratio_interval(w, 5, 0.9, 300, 7) != ratio_interval(w, 5, 0.9, 300, 8)


def test_monte_carlo_error_of_the_ends_is_small_at_the_default_count():
    """Over 20 bootstrap seeds, each end of the 90% interval moves by < 3% of the width."""
    w = random_distances(np.random.default_rng(6), 10)
    ends = np.array([ratio_interval(w, 5, 0.9, 2000, s) for s in range(20)])
    width = ends[:, 1].mean() - ends[:, 0].mean()
    assert np.all(ends.std(axis=0, ddof=1) < 0.03 * width)


def test_paired_draws_take_both_windows_of_a_seed():
    """Window k + 1 equal to window k, seed by seed: W(k_s, k+1_s) = 0, the rest = W within.

    Paired, a resample drawing m_s of seed s has between = (n^2 - sum m_s^2) / n^2 of
    within, so ratio <= (n - 1) / n; unpaired draws, blind to the pairing, go beyond.
    """
    n = 3
    spread = random_distances(np.random.default_rng(1), n)
    w = np.block([[spread, spread], [spread, spread]])
    counts = np.array([[1, 1, 1], [2, 1, 0], [3, 0, 0]])
    expected = (n**2 - (counts**2).sum(axis=1)) / n**2
    expected[2] = np.nan  # one seed drawn: no within pair
    np.testing.assert_allclose(resampled_ratios(w, n, counts, counts), expected)
    paired = bootstrap_ratios(w, n, 500, paired=True)
    assert paired.max() <= (n - 1) / n + 1e-12
    assert bootstrap_ratios(w, n, 500).max() > 1.0
    with pytest.raises(ValueError, match="paired"):
        bootstrap_ratios(np.zeros((5, 5)), 2, paired=True)


# --- the verdict: equivalence test --------------------------------------------------------------


def test_ratio_exactly_on_the_margin_is_conjugate():
    """All between W 1.5, all within W 1: the interval is [1.5, 1.5], touching the margin.

    The permutation test rejects (the groups are perfectly separated), so the old rule said
    "significant, ratio not above the margin: inconclusive"; the equivalence test says the
    ratio is at most the margin: conjugate. A margin a hair below it: inconclusive, not
    "not conjugate" (the interval is not above 1.5 by more than nothing).
    """
    w = two_level(5, 5, 1.0, 1.5)
    v = verdict(w, 5, alpha=0.05, max_ratio=1.5)
    assert (v.ratio_low, v.ratio_high) == (1.5, 1.5)
    assert v.p_value == pytest.approx(2 / 252)
    assert v.verdict == "conjugate"
    below = verdict(w, 5, alpha=0.05, max_ratio=np.nextafter(1.5, 1))
    assert below.verdict == "not conjugate"
    above = verdict(two_level(5, 5, 1.0, np.nextafter(1.5, 2)), 5, alpha=0.05, max_ratio=1.5)
    assert above.verdict == "not conjugate"


@pytest.mark.parametrize(("n_a", "n_b"), [(1, 4), (2, 4), (4, 2), (2, 2)])
def test_fewer_than_three_seeds_have_no_interval(n_a, n_b):
    """All W equal would give [1, 1]; with 2 seeds on a side no interval is computed at all."""
    assert MIN_INTERVAL_SEEDS == 3
    v = verdict(two_level(n_a, n_b, 1.0, 1.0), n_a, alpha=0.05, max_ratio=1.5)
    assert np.isnan(v.ratio_low) and np.isnan(v.ratio_high) and v.verdict == "inconclusive"
    assert np.isnan(v.p_value) == (min(n_a, n_b) < 2)  # the permutation test needs 2


def lopsided(rng, n, shift, dim=6, noise=1.0):
    """W of points in R^dim: condition B shifted by `shift` along one axis."""
    pts = noise * rng.standard_normal((2 * n, dim))
    pts[n:, 0] += shift
    return np.linalg.norm(pts[:, None] - pts[None, :], axis=-1)


@pytest.mark.parametrize("seed", range(4))
def test_simulated_conjugate_and_not_conjugate_pairs(seed):
    """10 + 10 seeds of points in R^6: no shift is conjugate, a shift of 8 sd is not."""
    rng = np.random.default_rng(seed)
    same = verdict(lopsided(rng, 10, 0.0), 10, alpha=0.05, max_ratio=1.5, permutations=999)
    assert same.ratio_high <= 1.5 and same.verdict == "conjugate"
    far = verdict(lopsided(rng, 10, 8.0), 10, alpha=0.05, max_ratio=1.5, permutations=999)
    assert far.ratio_low > 1.5 and far.p_value < 0.01 and far.verdict == "not conjugate"


def test_simulated_small_shift_is_inconclusive_then_conjugate():
    """A real but small difference (population ratio 1.24): significant with many seeds,
    yet equivalent. Few seeds: the interval straddles the margin; many: it lies below.
    """
    rng = np.random.default_rng(0)
    few = verdict(lopsided(rng, 4, 2.5), 4, alpha=0.05, max_ratio=1.5, permutations=999)
    assert few.ratio_low < 1.5 < few.ratio_high and few.verdict == "inconclusive"
    many = verdict(lopsided(rng, 40, 2.5), 40, alpha=0.05, max_ratio=1.5, permutations=999)
    assert 1.1 < many.ratio < 1.4 and many.p_value < 0.01
    assert many.ratio_high <= 1.5 and many.verdict == "conjugate"


def test_correction_moves_not_conjugate_only():
    """Holm over three pairs: the separated 3 + 4 pair loses 'not conjugate'; equivalence stays."""
    far = verdict(two_level(3, 4, 0.1, 100.0), 3, alpha=0.05, max_ratio=1.5)
    near = verdict(two_level(3, 4, 1.0, 1.2), 3, alpha=0.05, max_ratio=1.5)
    assert far.verdict == "not conjugate" and near.verdict == "conjugate"
    out = corrected([far, far, near], 0.05, 1.5, "holm")
    assert [v.verdict for v in out] == ["inconclusive", "inconclusive", "conjugate"]
    assert [v.ratio_low for v in out] == [far.ratio_low, far.ratio_low, near.ratio_low]


def test_table_has_the_interval_columns_last_and_one_seed_for_every_pair():
    labels = [(c, s) for c in ("a", "b", "c") for s in range(4)]
    rng = np.random.default_rng(5)
    pts = rng.standard_normal((12, 4))
    pts[8:, 0] += 10
    w = np.linalg.norm(pts[:, None] - pts[None, :], axis=-1)
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    table = verdict_table(labels, w, pairs, 0.05, 1.5, 999, correction="none")
    assert VERDICT_COLUMNS[-3:] == ["ratio_low", "ratio_high", "ratio_level"]
    assert list(table.columns) == VERDICT_COLUMNS
    # Each pair's interval is its own bootstrap from the same seed: the same as alone.
    alone = verdict(w[4:, 4:], 4, 0.05, 1.5, 999)
    assert (table.ratio_low[2], table.ratio_high[2]) == (alone.ratio_low, alone.ratio_high)
    again = verdict_table(labels, w, pairs, 0.05, 1.5, 999, correction="none")
    assert table.equals(again)
    other = verdict_table(labels, w, pairs, 0.05, 1.5, 999, correction="none", bootstrap_seed=1)
    assert not table.ratio_high.equals(other.ratio_high)
    assert table.ratio_low.equals(table.ratio_low.clip(upper=table.ratio))
