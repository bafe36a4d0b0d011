"""Checks of a config that need more than the schema: names, domains, windows, DMD sizes.

Shared by the config resolution and the commands, which check their options
with the same functions before any data is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from conjugacy.config.shapes import DATASET_FILES, recorded_snapshots, tensor_shapes
from conjugacy.config.validation import (
    SHORT,
    ConfigError,
    cached_schema,
    check_values,
    plain,
    short,
    validate,
)

KOOPMAN_KEYS = (
    "observables",
    "delays",
    "rank",
    "window",
    "pca",
    "windows",
    "variant",
    "device",
    "modes",
    "keep",
)  # every key a resolved section has (the opt-in spread_resamples, max_spread and
# max_residual: only when given)


def _section_condition(cfg: dict[str, Any], section: str, i: int, name: str) -> dict[str, Any]:
    """The condition a section (prune, monitor) names at index i, or a ConfigError."""
    cond = cfg["conditions"].get(name)
    if cond is None:
        raise ConfigError(
            f"config key {section}.conditions.{i}: condition {name!r} is not defined; "
            f"expected one of {sorted(cfg['conditions'])}"
        )
    return cond


def check_prune_section(cfg: dict[str, Any]) -> None:
    """Pruned conditions are nets that record every parameter through the DMD window."""
    pr = cfg["prune"]
    for i, name in enumerate(pr["conditions"]):
        label = f"config key prune.conditions.{i}"
        cond = _section_condition(cfg, "prune", i, name)
        if cond["system"] != "fcn":
            raise ConfigError(f"{label}: {name!r} is a {cond['system']}; expected an fcn")
        missing = sorted(set(tensor_shapes(cond)) - set(cond["record"]))
        if missing:
            raise ConfigError(
                f"{label}: pruning rebuilds the nets, so {name!r} must record every "
                f"parameter; add {missing} to its record"
            )
        start, stop = pr["window"]
        inside = [s for s in recorded_snapshots(cond) if start <= s < stop]
        if not start < stop or len(inside) < 3:
            raise ConfigError(
                f"config key prune.window: [{start}, {stop}) holds {len(inside)} recorded "
                f"steps of {name!r} ({cond['steps']} steps); expected [start, stop) with at "
                "least 3"
            )
        if stop > cond["steps"]:
            raise ConfigError(
                f"config key prune.window: stop {stop} is past the {cond['steps']} steps of "
                f"{name!r}; the window must end before training does"
            )


def check_monitor_section(cfg: dict[str, Any]) -> None:
    """Every monitored condition has a whole window and the DMD settings fit it."""
    mon = cfg["monitor"]
    if mon["window"] < mon["delays"] + 2:
        raise ConfigError(
            f"config key monitor.window: {mon['window']} snapshots; {mon['delays']} delays "
            f"need at least {mon['delays'] + 2}"
        )
    for i, name in enumerate(mon["conditions"]):
        cond = _section_condition(cfg, "monitor", i, name)
        steps = recorded_snapshots(cond)
        if mon["window"] > len(steps):
            raise ConfigError(
                f"config key monitor.window: {mon['window']} snapshots, but {name!r} records "
                f"{len(steps)}; expected at most {len(steps)}"
            )
        shapes = tensor_shapes(cond)
        if "record" in cond:
            shapes = {t: shapes[t] for t in cond["record"]}
        check_koopman(
            {k: mon[k] for k in ("observables", "delays", "rank")},
            shapes,
            steps[: mon["window"]],
            cond_inits(cond),
            label=lambda k, name=name: f"config key monitor.{k} ({name})",
        )


def check_sensitivity_section(cfg: dict[str, Any]) -> None:
    """Every delay of the `sensitivity` grid fits every compared condition's recorded window.

    An integer rank above a grid point's problem size is no error: the DMD caps
    it at the numerical rank, as it caps every rank. Your own stores (system
    external) are checked by the stage, before it reads them.
    """
    grid = cfg["sensitivity"]
    for name in dict.fromkeys(c for pair in condition_pairs(cfg) for c in pair):
        cond = cfg["conditions"][name]
        if cond["system"] == "external":
            continue
        shapes = tensor_shapes(cond)
        if "record" in cond:
            shapes = {t: shapes[t] for t in cond["record"]}
        keep = cond["koopman"].get("keep")
        low = [r for r in grid["ranks"] if isinstance(r, int) and keep and r < keep]
        if low:
            raise ConfigError(
                f"config key sensitivity.ranks: rank {low[0]} is below "
                f"conditions.{name}.koopman.keep {keep}; expected ranks >= {keep}"
            )
        for delays in grid["delays"]:
            check_koopman(
                {**cond["koopman"], "delays": delays, "rank": "full"},
                shapes,
                recorded_snapshots(cond),
                cond_inits(cond),
                label=lambda k, name=name: (
                    f"config key sensitivity.delays ({name})"
                    if k == "delays"
                    else f"config key conditions.{name}.koopman.{k}"
                ),
            )


def check_predict_section(cfg: dict[str, Any]) -> None:
    """The predict section names net conditions that record what the jumps need."""
    pred = cfg["predict"]
    for i, name in enumerate(pred["conditions"]):
        label = f"config key predict.conditions.{i}"
        cond = cfg["conditions"].get(name)
        if cond is None:
            raise ConfigError(
                f"{label}: condition {name!r} is not defined; expected one of "
                f"{sorted(cfg['conditions'])}"
            )
        if cond["system"] not in ("fcn", "mlp"):
            raise ConfigError(f"{label}: {name!r} is a {cond['system']}; expected fcn or mlp")
        check_predict(pred, cond, lambda k, name=name: f"config key predict.{k} ({name})")
    acc = pred["accelerate"]
    if acc["window"] > acc["k"] + 1:
        raise ConfigError(
            f"config key predict.accelerate.window: {acc['window']} snapshots, but k = "
            f"{acc['k']} optimizer steps between jumps give at most {acc['k'] + 1}"
        )


def check_predict(pred: dict[str, Any], cond: dict[str, Any], label: Callable[[str], str]) -> None:
    """Check a (start, windows, jumps) schedule against what a condition records.

    Shared by the config check and the `predict` command (before any data is read).
    """
    missing = sorted(set(tensor_shapes(cond)) - set(cond["record"]))
    if missing:
        raise ConfigError(
            f"{label('conditions')}: the jumps need every tensor recorded; add {missing} "
            "to its record"
        )
    if cond["record_every"] != 1:
        raise ConfigError(
            f"{label('conditions')}: record_every is {cond['record_every']}; the jumps need 1"
        )
    for key, low in (("windows", 2), ("jumps", 1)):
        bad = [v for v in pred[key] if v < low]
        if bad:
            raise ConfigError(f"{label(key)}: {bad[0]}; expected integers >= {low}")
    if pred["start"] < 0:
        raise ConfigError(f"{label('start')}: {pred['start']}; expected an integer >= 0")
    need = pred["start"] + max(pred["windows"]) - 1 + max(pred["jumps"])
    if need > cond["steps"]:
        raise ConfigError(
            f"{label('jumps')}: start {pred['start']} + window {max(pred['windows'])} - 1 + "
            f"jump {max(pred['jumps'])} = step {need}, past the {cond['steps']} steps trained; "
            f"expected start + window - 1 + jump <= {cond['steps']}"
        )


def condition_pairs(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """The condition pairs to test: the configured ones, or all pairs."""
    pairs = cfg["compare"].get("pairs")
    if pairs is None:
        names = list(cfg["conditions"])
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    return [(a, b) for a, b in pairs]


def option_label(key: str) -> str:
    """The command-line option of a verdict setting (alpha: --alpha, pairs.0: --pair)."""
    top = key.split(".", 1)[0]
    if not top:
        return "options"
    return f"option --{'pair' if top == 'pairs' else top.replace('_', '-')}"


def check_verdict_options(
    options: dict[str, Any],
    label: Callable[[str], str],
    conditions: Iterable[str] | None = None,
    defined: str = "defined",
) -> None:
    """Check the settings of a verdict: the config's `compare` section or the same options.

    One check for the config (config key compare.*), the `compare` and
    `windows` commands (option --alpha, ...) and compare.run/windows.run:
    alpha, max_ratio, permutations and correction against the bounds of the
    schema's `compare` section, no NaN or infinity, and each pair two
    different condition names, among `conditions` when given. `label(key)`
    names the offending setting (key is e.g. 'alpha' or 'pairs.0').
    """
    check_values(options, label, what="the verdict options")
    root = cached_schema()
    opts = plain(options)
    validate(opts, root["properties"]["compare"], root, [], label)
    names = None if conditions is None else sorted(set(conditions))
    seen: set[frozenset] = set()
    for i, (a, b) in enumerate(opts.get("pairs") or []):
        where = label(f"pairs.{i}")
        for side in (a, b):
            if names is not None and side not in names:
                raise ConfigError(
                    f"{where}: condition {side!r} is not {defined}; expected one of {names}"
                )
        if a == b:
            raise ConfigError(f"{where}: condition {a!r} is paired with itself")
        if frozenset((a, b)) in seen:
            raise ConfigError(f"{where}: {a!r} and {b!r} are paired twice; expected each pair once")
        seen.add(frozenset((a, b)))


def external_paths(cond: dict[str, Any], seed: int) -> list[str]:
    """The trajectory store(s) of one seed of an `external` condition (pooled when several)."""
    patterns = cond["trajectories"]
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    return [pattern.replace("{seed}", str(seed)) for pattern in patterns]


def check_condition(name: str, cond: dict[str, Any]) -> None:
    """Checks that need more than types: names, domains, and sizes of the DMD problem.

    An `external` condition's sizes are its stores': the workflow checks them
    (koopman.spectrum.check_external) before any job.
    """
    key = f"conditions.{name}"
    if cond["system"] == "external":
        return
    for grid_key in ("grid", "grid_a", "grid_b"):
        grid = cond.get(grid_key)
        if grid is not None and not grid["low"] < grid["high"]:
            raise ConfigError(
                f"config key {key}.{grid_key}: low ({grid['low']}) must be below high "
                f"({grid['high']})"
            )
    if "domain" in cond:
        low, high = cond["domain"]
        if not low < high:
            raise ConfigError(f"config key {key}.domain: expected [low, high] with low < high")
    if cond.get("device") == "cuda" and cond.get("gpus") == 0:
        raise ConfigError(f"config key {key}.gpus: device cuda needs at least 1 GPU, got 0")
    if cond["system"] in ("fcn", "cnn"):
        _check_data_dir(cond, key)
    if cond["system"] == "transformer":
        _check_transformer(cond, key)
    shapes = tensor_shapes(cond)
    if cond["system"] in ("fcn", "mlp", "transformer", "cnn"):
        for tensor in cond["record"]:
            if tensor not in shapes:
                raise ConfigError(
                    f"config key {key}.record: the model has no tensor {short(tensor)}; "
                    f"available: {sorted(shapes)}"
                )
        recorded = {t: shapes[t] for t in cond["record"]}
    else:
        recorded = shapes
    check_koopman(
        cond["koopman"],
        recorded,
        recorded_snapshots(cond),
        cond_inits(cond),
        label=lambda k: f"config key {key}.koopman.{k}",
    )
    if cond["koopman"].get("windows"):
        cond["koopman"]["windows"] = {"start": 0, **cond["koopman"]["windows"]}
        check_windows(
            cond["koopman"],
            recorded,
            recorded_snapshots(cond),
            cond_inits(cond),
            label=lambda k: f"config key {key}.koopman.{k}",
        )


def window_bounds(windows: dict[str, int]) -> list[tuple[int, int]]:
    """[start, stop) of each of the successive windows of a `koopman.windows` setting."""
    start, length = windows.get("start", 0), windows["length"]
    return [(start + k * length, start + (k + 1) * length) for k in range(windows["count"])]


def check_windows(
    kcfg: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    steps: list[int],
    inits: int,
    label: Callable[[str], str],
) -> None:
    """Every window of `kcfg['windows']` lies in the recorded steps and fits the DMD settings."""
    for k, (start, stop) in enumerate(window_bounds(kcfg["windows"])):
        if stop - 1 > steps[-1]:
            raise ConfigError(
                f"{label('windows')}: window {k} is [{start}, {stop}) but training records "
                f"steps up to {steps[-1]}; expected start + count * length <= {steps[-1] + 1}"
            )
        check_koopman(
            {**kcfg, "window": [start, stop]},
            shapes,
            steps,
            inits,
            label=lambda key, w=f"window {k}: [{start}, {stop})": f"{label(key)} ({w})",
        )


def _check_data_dir(cond: dict[str, Any], key: str) -> None:
    """A dataset read from files needs a data_dir that has them."""
    files = DATASET_FILES.get(cond["dataset"])
    if files is None:
        return
    data_dir = cond.get("data_dir")
    expected = f"expected a folder with {' and '.join(files)} (each may be .gz)"
    if not data_dir:
        raise ConfigError(
            f"config key {key}.data_dir: dataset {cond['dataset']} needs it; {expected}"
        )
    folder = Path(data_dir)
    shown = str(folder) if len(str(folder)) <= 3 * SHORT else short(str(folder))
    for name in files:
        try:
            found = (folder / name).is_file() or (folder / f"{name}.gz").is_file()
        except OSError:  # a name too long for the file system, say
            found = False
        if not found:
            raise ConfigError(f"config key {key}.data_dir: {shown} has no {name}; {expected}")


def _check_transformer(cond: dict[str, Any], key: str) -> None:
    """Head size and the constrained-norm run's settings."""
    if cond["d_model"] % cond["n_heads"]:
        raise ConfigError(
            f"config key {key}.n_heads: {cond['n_heads']} heads do not divide "
            f"d_model {cond['d_model']}; expected a divisor of it"
        )
    if cond["constrain_norm"] and cond["weight_decay"]:
        raise ConfigError(
            f"config key {key}.weight_decay: {cond['weight_decay']} with constrain_norm; "
            "expected 0 (the norm is held fixed, weight decay would fight the rescaling)"
        )


def cond_inits(cond: dict[str, Any]) -> int:
    """Number of trajectories (initial conditions) one seed of a condition records."""
    if cond["system"] in ("fcn", "mlp", "transformer", "cnn"):
        return cond["inits"]
    grid = cond.get("grid") or cond["grid_a"]
    return grid["points"] ** 2


def check_koopman(
    kcfg: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    steps: list[int],
    inits: int,
    label: Callable[[str], str],
) -> None:
    """Check Koopman settings against the recorded tensors, steps and inits.

    Shared by the config check and the `koopman` command, so a bad option
    fails before any data is read; `label(key)` names the offending setting.
    """
    observables = kcfg.get("observables") or sorted(shapes)
    for obs in observables:
        if obs not in shapes:
            raise ConfigError(
                f"{label('observables')}: no recorded tensor {short(obs)}; "
                f"available: {sorted(shapes)}"
            )
    window = kcfg.get("window")
    if window is not None:
        start, stop = window
        if not 0 <= start < stop:
            raise ConfigError(
                f"{label('window')}: [{start}, {stop}); expected [start, stop) with "
                "0 <= start < stop"
            )
        if steps and stop - 1 > steps[-1]:
            raise ConfigError(
                f"{label('window')}: [{start}, {stop}) ends past the last recorded step "
                f"{steps[-1]}; expected stop <= {steps[-1] + 1}"
            )
        steps = [s for s in steps if start <= s < stop]
    n_snap = len(steps)
    delays = kcfg.get("delays", 0)
    if delays + 2 > n_snap:
        raise ConfigError(
            f"{label('delays')}: {delays} delays need at least {delays + 2} snapshots, "
            f"but the window holds {n_snap}; expected delays <= {max(n_snap - 2, 0)}"
        )
    dim = sum(math.prod(shapes[o]) for o in observables)
    pca = kcfg.get("pca")
    if pca is not None and pca < 1:
        raise ConfigError(f"{label('pca')}: {pca} components; expected at least 1")
    if pca is not None:
        limit = min(dim, inits * n_snap)
        if pca > limit:
            raise ConfigError(
                f"{label('pca')}: {pca} components, but the observables have {dim} values "
                f"and {inits * n_snap} snapshots; expected at most {limit}"
            )
        dim = pca
    lifted = dim * (delays + 1)
    pairs = inits * (n_snap - delays - 1)
    rank = kcfg.get("rank", "full")
    if isinstance(rank, float) and not 0.0 < rank < 1.0:
        raise ConfigError(
            f"{label('rank')}: {rank} is not an energy fraction; expected a number in (0, 1) "
            "(e.g. 0.99), a positive integer, 'full' or 'gd'"
        )
    if isinstance(rank, str) and rank not in ("full", "gd"):
        raise ConfigError(
            f"{label('rank')}: unknown rule {rank!r}; expected a positive integer, 'full', "
            "'gd' or an energy fraction in (0, 1)"
        )
    if isinstance(rank, int) and rank > min(lifted, pairs):
        which = (
            f"the lifted dimension {lifted} ({dim} values x (delays {delays} + 1))"
            if lifted <= pairs
            else f"the number of snapshot pairs {pairs}"
        )
        raise ConfigError(
            f"{label('rank')}: {rank} is larger than {which}; "
            f"expected at most {min(lifted, pairs)} or 'full'"
        )
    keep = kcfg.get("keep")
    bound = rank if isinstance(rank, int) else min(lifted, pairs)  # an integer rank fits, above
    if keep is not None and keep > bound:
        raise ConfigError(
            f"{label('keep')}: {keep} modes, but the rank allows at most {bound}; "
            f"expected keep <= {bound}"
        )
    if kcfg.get("max_spread") is not None and not kcfg.get("spread_resamples"):
        raise ConfigError(
            f"{label('max_spread')}: {kcfg['max_spread']} needs the spread of each "
            "eigenvalue; expected spread_resamples as well (e.g. 100)"
        )
    max_residual = kcfg.get("max_residual")
    if max_residual is not None and (
        isinstance(max_residual, bool)
        or not isinstance(max_residual, (int, float))
        or not max_residual > 0
    ):
        raise ConfigError(
            f"{label('max_residual')}: {max_residual!r}; expected a number > 0 (a residual "
            "||C'_i - mu_i C_i|| / ||C_i||, e.g. 0.05)"
        )


# Condition keys that do not change its trajectories (the seed is a wildcard;
# `gpus` is what the job requests, `device` decides where it computes).
