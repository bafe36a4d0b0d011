"""How many seeds each verdict needs: the simulation behind the table in docs/method.md.

Not a test (pytest collects test_*.py only): run it by hand (about 20 min per model),

    python tests/unit/verdict/seeds_table.py --sims 500 --model "6 eigenvalues" --no-mc
    python tests/unit/verdict/seeds_table.py --sims 500 --model "1 eigenvalue"

Model: a seed's spectrum is the fixed set of 6 eigenvalues of
generator_spectrum in test_stats.py, each moved by complex Gaussian seed noise
(sd 0.01 per coordinate); condition B's eigenvalues are all shifted by a real
delta, chosen so that the population ratio E[W between] / E[W within] is
the target (1: conjugate; 1.5: on the default margin; 3: clearly not). The
pessimistic variant has one eigenvalue per spectrum (W is then one distance,
not a mean of 6: a noisier W). For k + k seeds, each simulated experiment
gets the verdict's 90% interval (stats.ratio_interval: alpha 0.05, 2000
resamples, tails widened for k seeds) and, when the interval lies above the
margin, the permutation p (999 random splits when C(2k, k) is larger).
Printed per k: P(conjugate: interval at or below 1.5), P(not conjugate: above
it and p < 0.05), and the same for one pair of 3 (3 p < 0.05: Bonferroni, or
Holm's first step); then the Monte Carlo spread of the interval ends over
bootstrap seeds, for 500 to 5000 resamples.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from conjugacy.verdict.distance import pairwise
from conjugacy.verdict.stats import permutation_p, ratio_interval

BASE6 = np.array([0.95 + 0.1j, 0.95 - 0.1j, 0.8 + 0.3j, 0.8 - 0.3j, 0.5, 0.3])
NOISE = 0.01


def spectra(rng, base, n, delta):
    noise = NOISE * (rng.standard_normal((n, base.size)) + 1j * rng.standard_normal((n, base.size)))
    return base + delta + noise


def w_matrix(rng, base, k, delta):
    pts = np.concatenate([spectra(rng, base, k, 0.0), spectra(rng, base, k, delta)])
    if base.size == 1:
        return np.abs(pts - pts.T)
    return pairwise(list(pts))


def population_ratio(base, delta, draws=10000, seed=1):
    rng = np.random.default_rng(seed)
    a, a2, b = (spectra(rng, base, draws, d) for d in (0.0, 0.0, delta))
    if base.size == 1:
        return float(np.abs(a - b).mean() / np.abs(a - a2).mean())
    within = np.mean([pairwise([x, y])[0, 1] for x, y in zip(a, a2, strict=True)])
    between = np.mean([pairwise([x, y])[0, 1] for x, y in zip(a, b, strict=True)])
    return float(between / within)


def delta_for(base, target):
    """The shift giving the population ratio `target` (bisection)."""
    if target == 1.0:
        return 0.0
    low, high = 0.0, 0.2
    for _ in range(22):
        mid = (low + high) / 2
        low, high = (mid, high) if population_ratio(base, mid) < target else (low, mid)
    return (low + high) / 2


def rates(base, k, delta, sims, margin=1.5, level=0.9, permutations=999, seed=0):
    """P(conjugate), P(not conjugate) for one pair and for one of 3 pairs (Holm's first step)."""
    rng = np.random.default_rng(seed)
    below = above1 = above3 = 0
    for _ in range(sims):
        w = w_matrix(rng, base, k, delta)
        low, high = ratio_interval(w, k, level, 2000, 0)
        below += high <= margin
        if low > margin:
            p = permutation_p(w, k, permutations)[0]
            above1 += p < 0.05
            above3 += 3 * p < 0.05
    return below / sims, above1 / sims, above3 / sims


def monte_carlo_error(base, k, delta, resamples, seeds=40):
    """sd of the interval ends over bootstrap seeds, as a fraction of the interval's width."""
    w = w_matrix(np.random.default_rng(5), base, k, delta)
    ends = np.array([ratio_interval(w, k, 0.9, resamples, s) for s in range(seeds)])
    width = np.subtract(*ends.mean(axis=0)[::-1])
    return ends.std(axis=0, ddof=1) / width, ends.mean(axis=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="the 6-eigenvalue model only")
    parser.add_argument("--model", choices=["6 eigenvalues", "1 eigenvalue"], help="only this")
    parser.add_argument("--no-mc", action="store_true", help="skip the Monte Carlo error")
    args = parser.parse_args()
    print("smallest permutation p for k + k seeds (exact: 2 / C(2k, k); sampled: 1 / 10000)")
    for k in (2, 3, 4, 5, 6, 7, 8, 10):
        c = math.comb(2 * k, k)
        p_min = 2 / c if c <= 9999 else 1 / 10000
        reach = max(0, math.ceil(0.05 / p_min) - 1)
        print(
            f"  k={k:2d}  C={c:6d}  p_min={p_min:.3g}  'not conjugate' reachable for m <= {reach}"
        )
    models = {"6 eigenvalues": BASE6, "1 eigenvalue": BASE6[:1]}
    if args.quick:
        models.pop("1 eigenvalue")
    for name, base in models.items():
        if args.model and name != args.model:
            continue
        print(f"\nmodel: {name} per spectrum", flush=True)
        for target in (1.0, 1.5, 3.0):
            delta = delta_for(base, target)
            print(f"  true ratio {target} (shift {delta:.4g}): P(conjugate), "
                  "P(not conjugate | 1 pair), P(not conjugate | 3 pairs, Holm)")  # fmt: skip
            for k in (3, 4, 5, 6, 8, 10):
                below, above1, above3 = rates(base, k, delta, args.sims)
                print(f"    k={k:2d}: {below:.3f}  {above1:.3f}  {above3:.3f}", flush=True)
    if args.no_mc:
        return
    base = BASE6
    print("\nMonte Carlo sd of the 90% interval ends / interval width (6 eigenvalues, ratio 1)")
    for k in (3, 5, 10):
        for resamples in (500, 1000, 2000, 5000):
            err, ends = monte_carlo_error(base, k, 0.0, resamples)
            print(f"  k={k:2d} B={resamples:5d}: low {err[0]:.4f} high {err[1]:.4f}  ends {ends}")


if __name__ == "__main__":
    main()
