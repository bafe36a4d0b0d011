"""Calibration of the verdict on simulated experiments whose answer is known.

Each experiment has two conditions, A and B, with the same number of seeds;
a seed is a few trajectories (its inits) of a small system, with observation
noise. Every seed goes through `conjugacy.spectrum` (the Koopman stage's
decomposition), the two conditions through `conjugacy.compare` (the compare
stage's verdict table, one pair: the Holm correction changes nothing), with
the default verdict options (alpha 0.05, max_ratio 1.5, 2000 bootstrap
resamples) except the permutations (`--permutations`, default 999: the p of
the random test has the floor 1/1000; with 5 + 5 seeds the test is exact,
252 splits, floor 2/252).

Families (each seed: new initial conditions, new observation map, new noise):

- conjugate
  - `linear-maps`: one linear system (eigenvalues 0.95 e^{+-0.3i},
    0.85 e^{+-0.9i}); A observes the state through a random orthogonal map,
    B through a random invertible map (singular values log-uniform in
    [0.5, 2]).
  - `nonlinear-coords`: A observes Q x, B observes Q h(x), h(x) = x + 0.1 x^3
    elementwise (a diffeomorphism), Q random orthogonal; 20 delays, rank 40,
    keep the 4 modes of most energy.
  - `omd-ogd`: the optimizer toys (conjugacy.systems.toys): OMD on
    f(x) = sum tan(x_i) and OGD started at u0 = log x0 of the same jittered
    grid (`start: omd`), both observed in x (OGD's iterate through
    x = exp(u)); 20 delays, full rank, keep 4.
- not conjugate (both conditions through random orthogonal maps)
  - `decay`: B's slow decay rate 0.95 -> 0.95 + delta (`--delta`, 0.01).
  - `rotation`: B's slow rotation rate 0.3 -> 0.31 rad per step.
  - `extra-mode`: B has an extra eigenvalue pair 0.9 e^{+-1.5i}; both are
    observed in 6 dimensions (A's 4-dimensional state through 6 x 4
    orthonormal columns).
- `power`: the decay family at each of `--deltas` (delta 0 is a conjugate pair
  with identical designs on both sides).
- diagnostics (`--diagnostic-experiments` each): the nonlinear-coordinates
  family without keep (2 delays, rank 4), OMD and OGD with OGD observed in
  its own coordinate u = log x (as the workflow records it), with keep
  (`omd-ogd, OGD in u`) and without (4 delays, full rank, as
  config/experiments/omd_ogd.yaml), and the decay family (not conjugate) at
  the nonlinear families' settings, with keep 4 and with keep 6 (more modes
  than the system has).

- shared (`--shared-experiments` each, default 0): the linear system through one fixed
  orthogonal map for every seed and both conditions (observables in one space, as
  sgot needs): `shared-decay` at each of `--deltas` (conjugate at delta 0) and
  `shared-rotation` (0.3 -> 0.31).

`--methods` measures, on the same simulated seeds: `plain` (W of every mode),
`stable` (W of the modes whose spread over `--spread-resamples` init resamples
is at most `--max-spread`), `residual` (W of the modes whose residual is at
most `--max-residual`) and `sgot` (the spectral-Grassmann distance,
`--sgot-eta`); rows carry the method, and `--families` picks families by name
in every group.

Linear families: 4 inits x 50 steps, x0 ~ N(0, I), no delays, full rank.
Toys: 9 inits (a 3 x 3 grid in [0.1, 0.9]^2, jitter 0.5), 60 steps, lr 0.01.
Observation noise: N(0, (0.01 RMS)^2) per value, RMS that of the seed's clean
observed values.

Seeds are nested: an experiment simulates max(--seeds) seeds per condition and
the verdict at n seeds uses the first n, so the experiments of one seed count
are independent of each other, those of two seed counts are not.

Writes under --out: experiments.csv (one row per family, delta, seed count
and experiment: ratio, p, interval, verdict), summary.csv (rates with exact
95% binomial intervals, the power curve), auroc.csv (AUROC of the ratio),
summary.md (their tables), run.json (the settings and wall times) and
spectra.npz (every seed's eigenvalues: `--recompare` redoes the verdicts from
them with the current compare stage, without simulating again). The
tables and the run of docs/calibration.md (about 32 min on 2 loaded cores):

    python benchmarks/calibration.py --experiments 200 --seeds 5 10 25 --out build/calibration
    python benchmarks/calibration.py --out build/calibration --summarize  # tables again
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest, mannwhitneyu

import conjugacy
from conjugacy.config.validation import defaults
from conjugacy.systems.toys import Toy

ALPHA = defaults("compare")["alpha"]
SEED = 20261129  # the default --seed
PERMUTATIONS = 999  # the default --permutations
INITS = 4  # trajectories (inits) per seed of the linear families
STEPS = 50  # snapshots per trajectory
NOISE = 0.01  # observation noise sd, relative to the RMS of the clean observed values
BASE = ((0.95, 0.3), (0.85, 0.9))  # (modulus, angle) of each eigenvalue pair
EXTRA = (0.9, 1.5)  # the pair the extra-mode family adds
ROTATION = 0.01  # the rotation family's change of the slow angle (rad per step; base 0.3)
CUBIC = 0.1  # h(x) = x + CUBIC x^3
# Nonlinearly related coordinates: enough delays and rank to resolve the harmonics the change
# of coordinates adds, then the 4 modes of most energy (`keep`, docs/calibration.md).
WARPED_KOOPMAN = {"delays": 20, "rank": 40, "keep": 4}
TOY_KOOPMAN = {"delays": 20, "rank": "full", "keep": 4}
PLAIN_WARPED = {"delays": 2, "rank": 4}  # without keep: the diagnostics
PLAIN_TOY = {"delays": 4, "rank": "full"}  # as config/experiments/omd_ogd.yaml
TOY_STEPS = 60
TOY_LR = 0.01
TOY_GRID = {"low": 0.1, "high": 0.9, "points": 3}  # 9 initial conditions in x

VERDICTS = ("not conjugate", "conjugate", "inconclusive")
Simulate = Callable[[np.random.Generator], np.ndarray]  # one seed: (init, step, values)


@dataclass
class Family:
    name: str
    conjugate: bool
    a: Simulate
    b: Simulate
    koopman: dict[str, Any] = field(default_factory=dict)  # spectrum options of both sides
    delta: float = float("nan")
    group: str = "main"  # main, power (the decay family over --deltas) or diagnostic


def system(pairs: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Block-diagonal real matrix with eigenvalues r e^{+-i theta} per (r, theta)."""
    a = np.zeros((2 * len(pairs),) * 2)
    for k, (r, theta) in enumerate(pairs):
        c, s = math.cos(theta), math.sin(theta)
        a[2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = r * np.array([[c, -s], [s, c]])
    return a


def simulate(a: np.ndarray, rng: np.random.Generator, inits: int = INITS) -> np.ndarray:
    """(inits, STEPS, d) states x_{t+1} = A x_t from x_0 ~ N(0, I)."""
    x = rng.standard_normal((inits, a.shape[0]))
    out = np.empty((inits, STEPS, a.shape[0]))
    for t in range(STEPS):
        out[:, t] = x
        x = x @ a.T
    return out


def orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A random (rows, cols) map with orthonormal columns (Haar)."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def invertible(d: int, rng: np.random.Generator) -> np.ndarray:
    """Q1 diag(s) Q2 with s log-uniform in [0.5, 2] (condition number at most 4)."""
    s = np.exp(rng.uniform(math.log(0.5), math.log(2.0), d))
    return orthogonal(d, d, rng) * s @ orthogonal(d, d, rng)


def noisy(clean: np.ndarray, rng: np.random.Generator, noise: float = NOISE) -> np.ndarray:
    """clean + N(0, (noise * RMS(clean))^2) per entry."""
    rms = float(np.sqrt(np.mean(clean**2)))
    return clean + noise * rms * rng.standard_normal(clean.shape)


def linear(pairs, observed: int | None = None, how: str = "orthogonal") -> Simulate:
    """A seed of the linear system `pairs` seen through a fresh random linear map."""
    a = system(pairs)
    dim = a.shape[0]

    def run(rng: np.random.Generator) -> np.ndarray:
        x = simulate(a, rng)
        m = invertible(dim, rng) if how == "invertible" else orthogonal(observed or dim, dim, rng)
        return noisy(x @ m.T, rng)

    return run


def warped(cubic: float) -> Simulate:
    """A seed of the base system seen as Q h(x), h(x) = x + cubic x^3 elementwise."""
    a = system(BASE)

    def run(rng: np.random.Generator) -> np.ndarray:
        x = simulate(a, rng)
        q = orthogonal(a.shape[0], a.shape[0], rng)
        return noisy((x + cubic * x**3) @ q.T, rng)

    return run


SHARED_MAP = 7  # seed of the one observation map every seed of the shared families uses


def shared(pairs) -> Simulate:
    """A seed of the linear system `pairs` through one fixed orthogonal map (the same for
    every seed and both conditions): the observables share a space, as sgot needs."""
    a = system(pairs)
    m = orthogonal(a.shape[0], a.shape[0], np.random.default_rng(SHARED_MAP))

    def run(rng: np.random.Generator) -> np.ndarray:
        return noisy(simulate(a, rng) @ m.T, rng)

    return run


def shared_families(deltas: list[float]) -> list[Family]:
    """Conditions observed through one fixed map: the decay rate 0.95 -> 0.95 + delta
    (conjugate at delta 0) and the slow rotation 0.3 -> 0.31."""
    out = []
    for d in deltas:
        changed = ((BASE[0][0] + d, BASE[0][1]), BASE[1])
        out.append(Family("shared-decay", d == 0, shared(BASE), shared(changed), delta=d))
    rotated = ((BASE[0][0], BASE[0][1] + ROTATION), BASE[1])
    out.append(Family("shared-rotation", False, shared(BASE), shared(rotated)))
    for fam in out:
        fam.group = "shared"
    return out


def toy(system_name: str, observe: Callable[[np.ndarray], np.ndarray] | None = None) -> Simulate:
    """A seed of an optimizer toy from its jittered grid in x (`start: omd`): its iterate (OMD's
    x, OGD's u = log x) as the workflow records it, or `observe` of it."""
    cond = {"system": system_name, "lr": TOY_LR, "jitter": 0.5, "grid": TOY_GRID}
    cond |= {"domain": [0.01, 1.0], "start": "omd"}

    def run(rng: np.random.Generator) -> np.ndarray:
        t = Toy(cond, int(rng.integers(1, 2**31)))  # seed > 0: a jittered grid
        out = np.empty((t.inits, TOY_STEPS, 2))
        for k in range(TOY_STEPS):
            out[:, k] = t.x
            t.step()
        return noisy(out if observe is None else observe(out), rng)

    return run


def decay(delta: float, group: str = "main") -> Family:
    """B's slow decay rate 0.95 -> 0.95 + delta (conjugate when delta is 0)."""
    changed = ((BASE[0][0] + delta, BASE[0][1]), BASE[1])
    name = "decay" if group == "main" else "power"
    return Family(name, delta == 0, linear(BASE), linear(changed), delta=delta, group=group)


def families(delta: float) -> list[Family]:
    """The six main families (the decay family at `delta`)."""
    rotated = ((BASE[0][0], BASE[0][1] + ROTATION), BASE[1])
    return [
        Family("linear-maps", True, linear(BASE), linear(BASE, how="invertible")),
        Family("nonlinear-coords", True, linear(BASE), warped(CUBIC), WARPED_KOOPMAN),
        Family("omd-ogd", True, toy("omd"), toy("ogd", np.exp), TOY_KOOPMAN),
        decay(delta),
        Family("rotation", False, linear(BASE), linear(rotated)),
        Family("extra-mode", False, linear(BASE, observed=6), linear((*BASE, EXTRA))),
    ]


def diagnostics(delta: float) -> list[Family]:
    """What keep changes: the nonlinear families without it, OGD seen in its own coordinate
    u = log x (with and without keep), and the power of the nonlinear families' settings on a
    non-conjugate pair, with keep at the system's 4 modes and above them."""
    changed = ((BASE[0][0] + delta, BASE[0][1]), BASE[1])
    too_many = WARPED_KOOPMAN | {"keep": 6}
    out = [
        Family("nonlinear-coords, no keep", True, linear(BASE), warped(CUBIC), PLAIN_WARPED),
        Family("omd-ogd, OGD in u, no keep", True, toy("omd"), toy("ogd"), PLAIN_TOY),
        Family("omd-ogd, OGD in u", True, toy("omd"), toy("ogd"), TOY_KOOPMAN),
        Family("decay, keep 4", False, linear(BASE), linear(changed), WARPED_KOOPMAN, delta),
        Family("decay, keep 6", False, linear(BASE), linear(changed), too_many, delta),
    ]
    for fam in out:
        fam.group = "diagnostic"
    return out


METHODS = ("plain", "stable", "residual", "sgot")  # W of all / stable / low-residual modes, sgot
QUALITY = {"spread_resamples": 30, "max_spread": 0.01, "max_residual": 0.1, "sgot_eta": 0.5}


def fit(data: np.ndarray, koopman: dict[str, Any], method: str, quality: dict[str, Any]) -> Any:
    """One seed's spectrum by `method`: its eigenvalues (plain), those whose spread over init
    resamples is at most max_spread (stable), those whose residual is at most max_residual
    (residual), or (eigenvalues, modes) for sgot."""
    if method == "plain":
        return conjugacy.spectrum(data, **koopman)
    if method == "stable":
        keys = ("spread_resamples", "max_spread")
        return conjugacy.spectrum(data, **koopman, **{k: quality[k] for k in keys})
    if method == "residual":
        return conjugacy.spectrum(data, **koopman, max_residual=quality["max_residual"])
    from conjugacy.api import _as_dataset
    from conjugacy.koopman.observables import Observable
    from conjugacy.koopman.spectrum import KoopmanOptions, decompose, value_modes

    opts = KoopmanOptions(**koopman)
    obs = Observable([_as_dataset(data)], ["x"], None)
    result, _ = decompose(obs, opts)
    return result.eigenvalues, value_modes(obs, result, opts.delays)


def experiment(
    fam: Family,
    rng: np.random.Generator,
    seeds: list[int],
    options: dict[str, Any],
    methods: tuple[str, ...] = ("plain",),
    quality: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, list[Any]]]]:
    """One experiment: max(seeds) seeds per condition, each method's verdict at each seed
    count on the same simulated seeds; the rows and each method's spectra."""
    most, quality = max(seeds), quality or QUALITY
    spectra: dict[str, dict[str, list[Any]]] = {m: {"A": [], "B": []} for m in methods}
    for _ in range(most):
        for cond, sim in (("A", fam.a), ("B", fam.b)):
            data = sim(rng)
            for m in methods:
                spectra[m][cond].append(fit(data, fam.koopman, m, quality))
    rows = []
    for m in methods:
        extra = {"distance": "sgot", "sgot_eta": quality["sgot_eta"]} if m == "sgot" else {}
        rows += [{"method": m} | r for r in verdicts(spectra[m], seeds, options | extra)]
    return rows, spectra


def verdicts(
    spectra: dict[str, list[Any]], seeds: list[int], options: dict[str, Any]
) -> list[dict[str, Any]]:
    """The compare stage's verdict on the first n spectra of each condition, for each n."""
    rows = []
    for n in seeds:
        table = conjugacy.compare({c: s[:n] for c, s in spectra.items()}, **options)
        row = table.iloc[0]
        rows.append(
            {
                "seeds": n,
                "ratio": float(row["ratio"]),
                "p_value": float(row["p_value"]),
                "ratio_low": float(row["ratio_low"]),
                "ratio_high": float(row["ratio_high"]),
                "w_within": float(row["w_within_mean"]),
                "w_between": float(row["w_between_mean"]),
                "verdict": str(row["verdict"]),
            }
        )
    return rows


def describe(fam: Family, e: int) -> dict[str, Any]:
    """The columns that name an experiment in experiments.csv."""
    return {"group": fam.group, "family": fam.name, "known_conjugate": fam.conjugate,
            "delta": fam.delta, "experiment": e}  # fmt: skip


def run_family(
    fam: Family,
    experiments: int,
    seeds: list[int],
    options: dict[str, Any],
    seed: int,
    log: Callable[[str], None] | None = None,
    methods: tuple[str, ...] = ("plain",),
    quality: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, list[tuple[dict[str, Any], dict[str, list[np.ndarray]]]]]:
    """`experiments` independent experiments of one family: the rows, and each experiment's
    description and spectra.

    Experiment e draws from the stream (seed, family, e): the first k experiments are the
    same whatever else runs and however many follow.
    """
    rows, kept = [], []
    start = time.perf_counter()
    key = zlib.crc32(f"{fam.name}|{fam.delta:g}".encode())
    for e in range(experiments):
        rng = np.random.default_rng([seed, key, e])
        found, spectra = experiment(fam, rng, seeds, options, methods, quality)
        rows += [describe(fam, e) | row for row in found]
        for m in methods:  # sgot's modes are not kept: its verdicts are not recomputable
            if m != "sgot":
                kept.append((describe(fam, e) | {"method": m}, spectra[m]))
        if log and (e + 1) % max(1, experiments // 4) == 0 and e + 1 < experiments:
            log(f"  {fam.name}: {e + 1}/{experiments} in {time.perf_counter() - start:.0f} s")
    return pd.DataFrame(rows), kept


def save_spectra(path: Path, kept: list[tuple[dict[str, Any], dict[str, list[np.ndarray]]]]):
    """Every seed's eigenvalues, as plain arrays (np.load needs no pickle): spectra.npz.

    A family is its name, group and delta (the power curve is one name over several deltas).
    """
    meta: dict[tuple, dict[str, Any]] = {}  # (name, group, delta) -> the family, in order
    cols: dict[str, list] = {k: [] for k in ("experiment", "family", "condition", "seed", "size")}
    values = []
    for d, spectra in kept:
        method = d.get("method", "plain")
        key = (d["family"], d["group"], repr(float(d["delta"])), method)
        family = list(meta).index(key) if key in meta else len(meta)
        meta.setdefault(key, {"name": d["family"], "group": d["group"],
                              "known_conjugate": bool(d["known_conjugate"]),
                              "delta": float(d["delta"]), "method": method})  # fmt: skip
        for c, cond in enumerate(("A", "B")):
            for i, ev in enumerate(spectra[cond]):
                cols["experiment"].append(d["experiment"])
                cols["family"].append(family)
                cols["condition"].append(c)
                cols["seed"].append(i)
                cols["size"].append(ev.size)
                values.append(np.asarray(ev, dtype=np.complex128))
    arrays = {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}
    families = json.dumps(list(meta.values()))
    np.savez_compressed(path, values=np.concatenate(values), families=np.array(families), **arrays)


def load_spectra(path: Path) -> list[tuple[dict[str, Any], dict[str, list[np.ndarray]]]]:
    """What save_spectra wrote, in its order."""
    with np.load(path, allow_pickle=False) as z:
        families = json.loads(str(z["families"]))
        cols = {k: z[k] for k in ("experiment", "family", "condition", "seed", "size")}
        values = z["values"]
    offsets = np.concatenate([[0], np.cumsum(cols["size"])])
    out: dict[tuple[int, int], dict[str, list[np.ndarray]]] = {}
    for r in range(cols["size"].size):
        key = (int(cols["family"][r]), int(cols["experiment"][r]))
        cond = "AB"[int(cols["condition"][r])]
        out.setdefault(key, {"A": [], "B": []})[cond].append(values[offsets[r] : offsets[r + 1]])
    kept = []
    for (f, e), spectra in out.items():
        fam = families[f]
        desc = {"group": fam["group"], "family": fam["name"]}
        desc |= {k: fam[k] for k in ("known_conjugate", "delta")} | {"experiment": e}
        desc["method"] = fam.get("method", "plain")
        kept.append((desc, spectra))
    return kept


def recompare(out: Path, seeds: list[int], options: dict[str, Any]) -> pd.DataFrame:
    """The verdicts again, by the current compare stage, from the spectra a run saved."""
    rows = []
    for desc, spectra in load_spectra(out / "spectra.npz"):
        saved = min(len(s) for s in spectra.values())
        if max(seeds) > saved:
            raise SystemExit(f"--seeds {max(seeds)}: {out / 'spectra.npz'} holds {saved} seeds "
                             f"per condition of {desc['family']}")  # fmt: skip
        rows += [desc | row for row in verdicts(spectra, seeds, options)]
    return pd.DataFrame(rows)


def binomial(k: int, n: int) -> tuple[float, float]:
    """Exact (Clopper-Pearson) 95% interval of a rate k / n."""
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return float(ci.low), float(ci.high)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(ratio of a non-conjugate pair > that of a conjugate pair), ties one half."""
    u = mannwhitneyu(positive, negative, alternative="greater").statistic
    return float(u) / (positive.size * negative.size)


def rates(df: pd.DataFrame) -> pd.DataFrame:
    """Per family, delta and seed count: the rate of each verdict, with its 95% interval."""
    out = []
    if "method" not in df:
        df = df.assign(method="plain")
    keys = ["group", "family", "method", "known_conjugate", "delta", "seeds"]
    for (group, fam, method, conj, delta, n), g in df.groupby(keys, sort=False, dropna=False):
        row = {"group": group, "family": fam, "method": method, "known_conjugate": conj}
        row |= {"delta": delta, "seeds": n}
        row["experiments"] = len(g)
        for v in VERDICTS:
            k = int((g["verdict"] == v).sum())
            low, high = binomial(k, len(g))
            row |= {v: k / len(g), f"{v} low": low, f"{v} high": high}
        k = int((g["p_value"] < ALPHA).sum())  # the permutation test alone (uncorrected p)
        low, high = binomial(k, len(g))
        row |= {"p < alpha": k / len(g), "p < alpha low": low, "p < alpha high": high}
        row["median ratio"] = float(g["ratio"].median())
        out.append(row)
    return pd.DataFrame(out)


def aurocs(df: pd.DataFrame) -> pd.DataFrame:
    """aurocs_of each method's rows; a method other than plain is named after `against`."""
    if "method" not in df:
        return aurocs_of(df)
    out = []
    for method, g in df.groupby("method", sort=False):
        roc = aurocs_of(g)
        if method != "plain":
            roc["against"] = roc["against"] + f" [{method}]"
        out.append(roc)
    return pd.concat(out, ignore_index=True)


def aurocs_of(df: pd.DataFrame) -> pd.DataFrame:
    """AUROC of the ratio per seed count: each non-conjugate main family, and all of them,
    against all conjugate pairs of the main families; each delta > 0 of the power curve
    against delta 0, and against all conjugate pairs of the main families."""
    out = []
    for n, g in df[df["group"] == "main"].groupby("seeds"):
        neg = g.loc[g["known_conjugate"], "ratio"].to_numpy()
        pos = g.loc[~g["known_conjugate"], "ratio"].to_numpy()
        if not (pos.size and neg.size):
            continue
        for fam, h in g[~g["known_conjugate"]].groupby("family", sort=False):
            out.append({"seeds": n, "against": fam, "auroc": auroc(h["ratio"].to_numpy(), neg)})
        out.append({"seeds": n, "against": "all non-conjugate", "auroc": auroc(pos, neg)})
    for n, g in df[df["group"] == "shared"].groupby("seeds"):
        null = g.loc[g["known_conjugate"], "ratio"].to_numpy()
        for (fam, delta), h in g[~g["known_conjugate"]].groupby(["family", "delta"], dropna=False):
            name = fam if np.isnan(delta) else f"{fam}, delta {delta:g}"
            if null.size:
                out.append({"seeds": n, "against": f"{name} vs shared-decay, delta 0",
                            "auroc": auroc(h["ratio"].to_numpy(), null)})  # fmt: skip
    power = df[df["group"] == "power"]
    main_conj = df[(df["group"] == "main") & df["known_conjugate"]]
    for vs, null_rows in (("delta 0", power[power["delta"] == 0]), ("main conjugate", main_conj)):
        for (n, delta), h in power[power["delta"] != 0].groupby(["seeds", "delta"]):
            null = null_rows.loc[null_rows["seeds"] == n, "ratio"].to_numpy()
            if null.size:
                out.append({"seeds": n, "against": f"decay, delta {delta:g} vs {vs}",
                            "auroc": auroc(h["ratio"].to_numpy(), null)})  # fmt: skip
    return pd.DataFrame(out, columns=["seeds", "against", "auroc"])


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def cell(r: pd.Series, v: str) -> str:
    """A rate in %, with its interval."""
    return f"{pct(r[v])} [{pct(r[v + ' low'])}, {pct(r[v + ' high'])}]"


def markdown(summary: pd.DataFrame, roc: pd.DataFrame) -> str:
    """The tables of docs/calibration.md."""
    lines: list[str] = []
    rates_head = "| not conjugate | conjugate | inconclusive | p < alpha | median ratio |"
    groups = (("main", "Verdict rates"), ("diagnostic", "Diagnostics"))
    for group, title in (*groups, ("shared", "One shared observation map")):
        part = summary[summary["group"] == group]
        if not len(part):
            continue
        lines += [f"### {title} (%, exact 95% binomial interval)", ""]
        lines += ["| family | answer | seeds | experiments " + rates_head]
        lines += ["|---|---|---|---|---|---|---|---|---|"]
        for _, r in part.iterrows():
            known = "conjugate" if r["known_conjugate"] else "not conjugate"
            name = r["family"] if pd.isna(r["delta"]) or group != "shared" else (
                f"{r['family']}, delta {r['delta']:g}")  # fmt: skip
            if r.get("method", "plain") != "plain":
                name += f" [{r['method']}]"
            cells = [name, known, str(r["seeds"]), str(r["experiments"])]
            cells += [cell(r, v) for v in (*VERDICTS, "p < alpha")]
            cells.append(f"{r['median ratio']:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    power = summary[summary["group"] == "power"]
    if len(power):
        lines += ["### Power against delta (decay rate 0.95 -> 0.95 + delta; %)", ""]
        lines += [
            "| delta | seeds | experiments " + rates_head,
            "|---|---|---|---|---|---|---|---|",
        ]
        for _, r in power.sort_values(["delta", "seeds"], kind="stable").iterrows():
            method = r.get("method", "plain")
            delta = f"{r['delta']:g}" + ("" if method == "plain" else f" [{method}]")
            cells = [delta, str(r["seeds"]), str(r["experiments"])]
            cells += [cell(r, v) for v in (*VERDICTS, "p < alpha")]
            cells.append(f"{r['median ratio']:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if len(roc):
        counts = sorted(roc["seeds"].unique())
        lines += ["### AUROC of the ratio (non-conjugate vs conjugate pairs)", ""]
        lines += ["| against | " + " | ".join(f"{n} seeds" for n in counts) + " |"]
        lines += ["|---|" + "---|" * len(counts)]
        for against, g in roc.groupby("against", sort=False):
            vals = dict(zip(g["seeds"], g["auroc"], strict=True))
            cells = [f"{vals[n]:.3f}" if n in vals else "" for n in counts]
            lines.append(f"| {against} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def report(df: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Write summary.csv, auroc.csv and summary.md; print the tables and the check against alpha."""
    summary, roc = rates(df), aurocs(df)
    summary.to_csv(out / "summary.csv", index=False)
    roc.to_csv(out / "auroc.csv", index=False)
    text = markdown(summary, roc)
    (out / "summary.md").write_text(text)
    print(text)
    conj = summary[summary["known_conjugate"]]
    if len(conj):
        worst = conj.loc[conj["not conjugate"].idxmax()]
        exceed = conj[conj["not conjugate"] > ALPHA]
        where = ", ".join(
            f"{r.family}{'' if r.group != 'power' else f' delta {r.delta:g}'} at {r.seeds} seeds"
            for r in exceed.itertuples()
        )
        print(
            f"largest false 'not conjugate' rate on a conjugate pair: "
            f"{pct(worst['not conjugate'])}% ({worst['family']}, {worst['seeds']} seeds); "
            + (f"ABOVE alpha = {ALPHA}: {where}" if where else f"all at or below alpha = {ALPHA}")
        )
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", type=int, default=200, help="per family and seed count")
    parser.add_argument("--seeds", type=int, nargs="+", default=[5, 10, 25], help="per condition")
    parser.add_argument("--out", type=Path, default=Path("build/calibration"))
    parser.add_argument("--seed", type=int, default=SEED, help="of every random stream")
    parser.add_argument("--permutations", type=int, default=PERMUTATIONS, help="per test")
    parser.add_argument("--bootstrap", type=int, default=defaults("compare")["bootstrap"])
    parser.add_argument("--delta", type=float, default=0.01, help="of the main decay family")
    parser.add_argument("--deltas", type=float, nargs="*", default=[0, 0.0005, 0.001, 0.002])
    parser.add_argument("--power-experiments", type=int, help="per delta (default --experiments)")
    parser.add_argument("--diagnostic-experiments", type=int, default=100, help="per variant")
    parser.add_argument(
        "--families",
        nargs="*",
        help="only the families of these names, in every group (default all; power, "
        "shared-decay and shared-rotation name the power curve and the shared-map families)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=["plain"],
        help="plain W; stable: W of the modes whose spread over init resamples is at most "
        "--max-spread; residual: W of the modes whose residual is at most --max-residual; "
        "sgot: the spectral-Grassmann distance (each on the same seeds)",
    )
    parser.add_argument("--spread-resamples", type=int, default=QUALITY["spread_resamples"])
    parser.add_argument("--max-spread", type=float, default=QUALITY["max_spread"])
    parser.add_argument("--max-residual", type=float, default=QUALITY["max_residual"])
    parser.add_argument("--sgot-eta", type=float, default=QUALITY["sgot_eta"])
    parser.add_argument(
        "--shared-experiments",
        type=int,
        default=0,
        help="per family of one shared observation map (shared-decay over --deltas, "
        "shared-rotation; default 0: not run)",
    )
    parser.add_argument(
        "--summarize", action="store_true", help="only redo the tables from --out/experiments.csv"
    )
    parser.add_argument(
        "--recompare",
        action="store_true",
        help="only redo the verdicts (current compare code) from --out/spectra.npz, and the tables",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.summarize:
        report(pd.read_csv(args.out / "experiments.csv"), args.out)
        return
    options = {"permutations": args.permutations, "bootstrap": args.bootstrap}
    if args.recompare:
        df = recompare(args.out, args.seeds, options)
        df.to_csv(args.out / "experiments.csv", index=False)
        report(df, args.out)
        return
    power_n = args.experiments if args.power_experiments is None else args.power_experiments
    todo = [(f, args.experiments) for f in families(args.delta)]
    todo += [(decay(d, "power"), power_n) for d in args.deltas]
    todo += [(f, args.diagnostic_experiments) for f in diagnostics(args.delta)]
    todo += [(f, args.shared_experiments) for f in shared_families(args.deltas)]
    if args.families is not None:
        todo = [(f, n) for f, n in todo if f.name in args.families]
    methods = tuple(args.methods)
    quality = {"spread_resamples": args.spread_resamples, "max_spread": args.max_spread,
               "max_residual": args.max_residual, "sgot_eta": args.sgot_eta}  # fmt: skip
    frames, walls, kept = [], {}, []
    begin = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, flush=True)

    for fam, n in todo:
        if n <= 0:
            continue
        name = (
            fam.name if fam.group not in ("power", "shared") else f"{fam.name}, delta {fam.delta:g}"
        )
        t = time.perf_counter()
        frame, spectra = run_family(fam, n, args.seeds, options, args.seed, log, methods, quality)
        frames.append(frame)
        kept += spectra
        walls[name] = round(time.perf_counter() - t, 1)
        log(f"{name}: {n} experiments, {walls[name]:.0f} s")
    df = pd.concat(frames, ignore_index=True)
    df.to_csv(args.out / "experiments.csv", index=False)
    save_spectra(args.out / "spectra.npz", kept)
    total = time.perf_counter() - begin
    settings = vars(args) | {"out": str(args.out), "alpha": ALPHA, "inits": INITS}
    settings |= {"steps": STEPS, "noise": NOISE, "toy_steps": TOY_STEPS, "toy_lr": TOY_LR}
    info = {"settings": settings, "wall_s": walls, "total_wall_s": round(total, 1)}
    info |= {"machine": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    (args.out / "run.json").write_text(json.dumps(info, indent=2, default=str))
    report(df, args.out)
    print(f"total wall time {total:.0f} s")


if __name__ == "__main__":
    main()
