"""The `conjugacy` command line: one subcommand per pipeline stage.

Each subcommand works on its own; the workflow's rules are thin calls of them.
Errors in input (config, options, stores) print one line naming the culprit
and exit with status 2, before any expensive work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from conjugacy.config import ConfigError, option_label
from conjugacy.config.validation import defaults
from conjugacy.config.validation import settings as config_settings
from conjugacy.stores.readahead import DEPTH

log = logging.getLogger("conjugacy")


def _int_at_least(minimum: int):
    """argparse type: an integer >= minimum, with a message naming the bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive = _int_at_least(1)
_nonneg = _int_at_least(0)


def _seed(text: str) -> int:
    """argparse type: a seed, 0 <= seed < 2**32 (what every random generator here takes)."""
    value = _nonneg(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed below 2**32, got {text[:40]!r}")
    return value


def _rank(text: str) -> int | float | str:
    """A rank rule: a positive integer, 'full', 'gd', or an energy fraction in (0, 1)."""
    if text in ("full", "gd"):
        return text
    expected = (
        "expected a positive integer or 'full' (or 'gd', or an energy fraction in (0, 1)), "
        f"got {text!r}"
    )
    if "." in text or "e" in text.lower():
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(expected) from None
        if not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(expected)
        return value
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(expected) from None


def _bytes(text: str) -> int:
    """argparse type: a memory size such as 8G, 512M or 2000000000 (bytes)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    scale = units.get(text[-1:].upper(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a size such as 8G or 512M, got {text!r}")
    return int(value)


def _name(text: str) -> str:
    """argparse type: a condition or experiment name (a folder name of results)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", text):
        raise argparse.ArgumentTypeError(
            f"expected letters, digits, '_' and '-' starting with a letter or digit, "
            f"got {text[:40]!r}"
        )
    return text


def _spec(text: str) -> dict:
    """The JSON --spec the workflow passes, held to the config's bounds (finite numbers)."""
    from conjugacy.config import check_values

    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"option --spec: not valid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise ConfigError("option --spec: expected a JSON object")
    check_values(spec, lambda key: f"option --spec key {key or '<top level>'}", "--spec")
    return spec


def _window(text: str) -> tuple[int, int]:
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START:STOP (optimizer steps), got {text!r}"
        ) from None
    return start, stop


def _pair(text: str) -> tuple[str, ...]:
    """CONDITION_A:CONDITION_B, split; config.check_verdict_options checks the names (one line)."""
    return tuple(text.split(":"))


def cmd_train(args: argparse.Namespace) -> None:
    from conjugacy import config
    from conjugacy.training.train import train_block

    if args.spec is not None:
        cond = _spec(args.spec)
        experiment = args.experiment or ""
    else:
        cfg = config.load(args.config)
        if args.condition not in cfg["conditions"]:
            raise ConfigError(
                f"--condition {args.condition!r} is not in {args.config}; "
                f"expected one of {sorted(cfg['conditions'])}"
            )
        cond = cfg["conditions"][args.condition]
        experiment = cfg["experiment"]
    dirs = args.checkpoint_dir
    if len(args.output) != len(args.seed) or (dirs and len(dirs) != len(args.seed)):
        raise ConfigError(
            f"--seed lists {len(args.seed)} seeds: give as many -o outputs "
            f"({len(args.output)} given) and --checkpoint-dir folders ({len(dirs or [])} given)"
        )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from conjugacy.memory import settle_allocator

    settle_allocator()
    train_block(
        cond,
        args.seed,
        args.output,
        experiment,
        args.condition,
        progress=not args.quiet,
        checkpoint_dirs=dirs,
    )


def _outputs(args: argparse.Namespace, what: str) -> list[tuple[list[Path], Path, int | None]]:
    """(stores, output, seed) of each result: all stores pooled into one output, or with
    --each the stores split evenly, in order, over the outputs (one per --seed)."""
    outs, stores, seeds = args.output, args.trajectory, args.seed or [None] * len(args.output)
    if not args.each and len(outs) > 1:
        raise ConfigError(f"{len(outs)} outputs (-o) pool one {what}: give one, or --each")
    if len(stores) % len(outs) or len(seeds) != len(outs):
        raise ConfigError(
            f"--each: {len(stores)} trajectory stores and {len(seeds)} --seed labels do not "
            f"split evenly over {len(outs)} outputs (-o)"
        )
    per = len(stores) // len(outs)  # consecutive stores pooled into each result
    return [
        (stores[i * per : (i + 1) * per] if args.each else stores, out, seed)
        for i, (out, seed) in enumerate(zip(outs, seeds, strict=True))
    ]


def cmd_koopman(args: argparse.Namespace) -> None:
    from conjugacy.koopman.spectrum import KoopmanOptions, write_spectrum
    from conjugacy.memory import settle_allocator

    settle_allocator()

    names = ("delays", "rank", "window", "pca", "variant", "device", "modes", "keep")
    keys = {k: k for k in (*names, "spread_resamples", "max_spread", "max_residual")}
    given = {**args.settings, **_given(args, {**keys, "observables": "observable"})}
    settings = config_settings("koopman", given, option_label)
    opts = KoopmanOptions.from_settings(settings, readahead=args.readahead)
    for stores, out, seed in _outputs(args, "spectrum"):
        label = {"condition": args.condition, "seed": seed}
        spectrum = write_spectrum(
            stores,
            out,
            opts,
            skip_diverged=args.skip_diverged,
            max_memory=args.max_memory,
            label={k: v for k, v in label.items() if v is not None},
        )
        log.info("wrote %s: %d eigenvalues", out, spectrum.sizes["mode"])


def cmd_compare(args: argparse.Namespace) -> None:
    from conjugacy.verdict.compare import write_verdicts

    settings = _verdict_settings(args)
    table = write_verdicts(args.spectra, args.output, labels_given=args.label, **settings)
    log.info("verdicts:\n%s", table.to_string(index=False))


def cmd_figures(args: argparse.Namespace) -> None:
    from conjugacy.report.figures import write_figures

    if not (args.spectra or args.trajectories or args.comparison):
        raise ConfigError("options --spectra, --trajectories, --comparison: give at least one")
    pairs = args.pair or None
    figures = write_figures(args.output, args.spectra, args.trajectories, args.comparison, pairs)
    for path in figures:
        log.info("wrote %s", path)


def cmd_summary(args: argparse.Namespace) -> None:
    from conjugacy import config
    from conjugacy.report.summary import write_summary

    cfg = _spec(args.spec) if args.spec is not None else config.load(args.config)
    out = write_summary(cfg, args.verdicts, args.benchmarks, args.output, args.sensitivity)
    log.info("wrote %s", out)


def cmd_companion(args: argparse.Namespace) -> None:
    from conjugacy import config
    from conjugacy.training.companion import run_companion

    if args.spec is not None:
        cond = _spec(args.spec)
    else:
        cfg = config.load(args.config)
        cond = cfg["conditions"].get(args.condition)
        if cond is None:
            raise ConfigError(
                f"--condition {args.condition!r} is not in {args.config}; "
                f"expected one of {sorted(cfg['conditions'])}"
            )
    if cond.get("system") != "transformer" or not cond.get("companion"):
        raise ConfigError(
            f"condition {args.condition!r}: a companion needs system transformer and a "
            "companion block"
        )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    table = run_companion(cond, args.output, args.condition, progress=not args.quiet)
    last = table.iloc[-1]
    log.info(
        "%s step %d: train accuracy %.3f, test accuracy %.3f",
        args.condition,
        last.step,
        last.train_accuracy,
        last.test_accuracy,
    )


def cmd_accuracy(args: argparse.Namespace) -> None:
    from conjugacy.report.accuracy import plot_accuracy

    log.info("wrote %s", plot_accuracy(args.tables, args.output))


def cmd_windows(args: argparse.Namespace) -> None:
    from conjugacy.report.windows import write_window_figures
    from conjugacy.verdict.windows import STORE, write_windows

    settings = _verdict_settings(args)
    settings.pop("pairs", None)  # windows compare each condition with itself over time
    table = write_windows(args.spectra, args.output, **settings)
    write_window_figures(args.output / STORE, args.figures or args.output)
    log.info("successive windows:\n%s", table.to_string(index=False))


def _condition(args: argparse.Namespace) -> tuple[dict, dict]:
    """(condition, config) of --spec JSON (what the workflow passes; config {}) or of
    --config FILE --condition NAME."""
    from conjugacy import config

    if args.spec is not None:
        return _spec(args.spec), {}
    cfg = config.load(args.config)
    if args.condition not in cfg["conditions"]:
        raise ConfigError(
            f"--condition {args.condition!r} is not in {args.config}; "
            f"expected one of {sorted(cfg['conditions'])}"
        )
    return cfg["conditions"][args.condition], cfg


def cmd_predict(args: argparse.Namespace) -> None:
    import pandas as pd

    from conjugacy.beyond.predict import PredictOptions, table, write_predictions

    cond, cfg = _condition(args)
    section = {
        k: v for k, v in cfg.get("predict", {}).items() if k not in ("conditions", "accelerate")
    }
    keys = ("start", "windows", "jumps", "methods", "rank")
    given = {**section, **args.settings, **_given(args, {k: k for k in keys})}
    given.pop("accelerate", None)
    given.pop("conditions", None)
    opts = PredictOptions.from_settings(config_settings("predict", given, option_label))
    result = write_predictions(args.trajectory, args.output, cond, opts, args.condition)
    with pd.option_context("display.width", 200):
        log.info("predictions:\n%s", table([result]).round(4).to_string(index=False))


def _lr(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        lr = float(value)
    except ValueError:
        lr = -1.0
    if name not in ("sgd", "adam") or not lr > 0:
        raise argparse.ArgumentTypeError(f"expected sgd=LR or adam=LR with LR > 0, got {text!r}")
    return name, lr


def cmd_accelerate(args: argparse.Namespace) -> None:
    from conjugacy.beyond.accelerate import write_accelerated

    cond, cfg = _condition(args)
    section = cfg.get("predict", {}).get("accelerate", {})
    keys = ("steps", "k", "window", "jump", "eval_every", "guard")
    given = {**section, **args.settings, **_given(args, {k: k for k in keys})}
    if args.optimizer:
        given["optimizers"] = dict(args.optimizer)
    acc = config_settings("accelerate", given, option_label)
    if cond.get("system") not in ("fcn", "mlp"):
        raise ConfigError(f"condition {args.condition!r}: expected system fcn or mlp")
    if acc["window"] > acc["k"] + 1:
        raise ConfigError(
            f"option --window: {acc['window']} snapshots, but --k {acc['k']} optimizer steps "
            f"between jumps give at most {acc['k'] + 1}"
        )
    write_accelerated(cond, args.seed, acc, args.output, args.condition)


def cmd_predict_summary(args: argparse.Namespace) -> None:
    from conjugacy.beyond.predict import summarize

    for path in summarize(args.predictions, args.accelerated or [], args.output):
        log.info("wrote %s", path)


def _fractions(text: str) -> list[float]:
    """argparse type: comma-separated numbers (the sparsities; their range is checked later)."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions such as 0.5,0.9, got {text!r}"
        ) from None


def cmd_prune(args: argparse.Namespace) -> None:
    from conjugacy.beyond.prune import PruneOptions, write_pruning

    keys = ("window", "rank", "sparsities", "finetune_steps", "finetune_lr")
    given = {**args.settings, **_given(args, {k: k for k in keys})}
    given.pop("conditions", None)  # the workflow's business: which conditions are pruned
    opts = PruneOptions.from_settings(config_settings("prune", given, option_label))
    result = write_pruning(args.trajectory, args.output, opts)
    log.info(
        "wrote %s: Jaccard koopman vs final magnitude %s",
        args.output,
        result.jaccard.sel(pair="koopman:magnitude_final").mean("init").values.round(3),
    )


def cmd_prune_report(args: argparse.Namespace) -> None:
    from conjugacy.beyond.prune import report

    report(args.stores, args.output, args.figure)
    log.info("wrote %s and %s", args.output, args.figure)


def cmd_monitor(args: argparse.Namespace) -> None:
    from conjugacy.beyond.monitor import MonitorOptions, write_monitor

    keys = ("window", "stride", "delays", "rank", "leading", "radius", "consecutive")
    keys += ("unstable", "patience", "min_delta")
    flags = {**{k: k for k in keys}, "observables": "observable"}
    given = {**args.settings, **_given(args, flags)}
    given.pop("conditions", None)  # the workflow's business: which conditions are monitored
    opts = MonitorOptions.from_settings(config_settings("monitor", given, option_label))
    write_monitor(args.trajectory, args.output, opts)


def cmd_monitor_report(args: argparse.Namespace) -> None:
    from conjugacy.beyond.monitor import report

    table = report(args.stores, args.output, args.figure)
    log.info("monitor:\n%s", table.to_string(index=False))


def cmd_verify(args: argparse.Namespace) -> int:
    import pandas as pd

    from conjugacy.stores.verify import verify

    cfg = None
    if args.config is not None:
        from conjugacy import config

        cfg = config.load(args.config)
    table = verify(args.results, cfg)
    if table.empty:
        print(f"no stores under {args.results}", file=sys.stderr)
        return 1
    with pd.option_context("display.max_colwidth", 200, "display.width", 250):
        print(table.to_string(index=False))
    bad = table[table.problem != ""]
    print(f"{len(table) - len(bad)} of {len(table)} stores are whole", file=sys.stderr)
    return 1 if len(bad) else 0


def _config_source(p: argparse.ArgumentParser, spec_help: str) -> None:
    """--config FILE or --spec JSON (what the workflow passes), exactly one."""
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", type=Path, help="experiment config (YAML)")
    group.add_argument("--spec", help=spec_help)


def _verdict_options(p: argparse.ArgumentParser, across: str) -> None:
    """The verdict settings (config section `compare`): --settings JSON, then these flags.

    Defaults and bounds are the schema's; config.check_verdict_options checks them.
    """
    d = defaults("compare")
    _settings_option(p, "compare")
    p.add_argument("--alpha", type=float, help=f"significance level (default {d['alpha']})")
    p.add_argument(
        "--max-ratio",
        type=float,
        help=f"equivalence margin on W between / W within (default {d['max_ratio']})",
    )
    p.add_argument(
        "--permutations",
        type=int,
        help=f"random label permutations (default {d['permutations']})",
    )
    p.add_argument(
        "--correction",
        help=f"multiple-comparison correction of the p-values across {across} "
        f"(default {d['correction']})",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        help="cluster-bootstrap resamples of the seeds for the interval of the ratio "
        f"(default {d['bootstrap']})",
    )
    p.add_argument(
        "--bootstrap-seed",
        type=int,
        help=f"seed of the bootstrap draws (default {d['bootstrap_seed']})",
    )


def _verdict_settings(args: argparse.Namespace) -> dict:
    """The verdict settings given: --settings, overridden by the flags typed; checked."""
    from conjugacy.config import check_verdict_options

    keys = ("alpha", "max_ratio", "permutations", "correction", "bootstrap", "bootstrap_seed")
    keys += tuple(k for k in ("distance", "sgot_eta") if hasattr(args, k))  # compare's own
    given = {**args.settings, **_given(args, {k: k for k in keys})}
    if getattr(args, "pair", None) is not None:
        given["pairs"] = [list(pair) for pair in args.pair]
    check_verdict_options(given, option_label)  # before any store is read
    return given


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train", help="train one (condition, seed), or a block of seeds, and record trajectories"
    )
    _config_source(t, "resolved condition config as JSON (what the workflow passes)")
    t.add_argument("--condition", required=True, help="condition name")
    t.add_argument(
        "--seed",
        type=_seed,
        nargs="+",
        required=True,
        help="seed(s): several are trained one after another in this process",
    )
    t.add_argument("--experiment", help="experiment name recorded with --spec")
    t.add_argument(
        "-o",
        "--output",
        type=Path,
        nargs="+",
        required=True,
        help="trajectory store(s) to write, one per --seed",
    )
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--checkpoint-dir",
        type=Path,
        nargs="+",
        help="where each store is built and checkpoints kept, one per --seed "
        "(default: OUTPUT.partial)",
    )
    t.set_defaults(func=cmd_train)


def _settings_option(p: argparse.ArgumentParser, section: str) -> None:
    """--settings JSON: the resolved config section the workflow passes; flags override it."""
    p.add_argument(
        "--settings",
        type=_spec,
        default={},
        help=f"the config's `{section}` settings as JSON (the workflow passes them); "
        "options given on the command line override them; schema defaults fill the rest",
    )


def _given(args: argparse.Namespace, keys: dict[str, str]) -> dict:
    """Settings typed on the command line: {setting: value} of the flags given (dest by key)."""
    return {
        key: getattr(args, dest) for key, dest in keys.items() if getattr(args, dest) is not None
    }


def _store_outputs(p: argparse.ArgumentParser, what: str) -> None:
    """Trajectory stores in, one output pooled from them or, with --each, one per group."""
    p.add_argument(
        "trajectory",
        type=Path,
        nargs="+",
        help="trajectory store(s); several are pooled as the inits of one DMD (see --each)",
    )
    p.add_argument("-o", "--output", type=Path, nargs="+", required=True, help=f"{what} to write")
    p.add_argument(
        "--each",
        action="store_true",
        help="one output per -o, one after another in this process: the stores are split "
        "into as many equal consecutive groups as outputs (each group pooled)",
    )
    p.add_argument("--condition", type=_name, help=f"label the {what} with this condition")
    p.add_argument(
        "--seed", type=_seed, nargs="+", help=f"label the {what} with this seed (one per output)"
    )


def _add_koopman(sub) -> None:
    d = defaults("koopman")
    k = sub.add_parser("koopman", help="Koopman eigenvalues of a trajectory store by DMD")
    _store_outputs(k, "spectrum store")
    _settings_option(k, "koopman")
    k.add_argument(
        "--observable", action="extend", nargs="+", help="recorded tensors to use (default: all)"
    )
    k.add_argument("--delays", type=_nonneg, help=f"time delays n (default {d['delays']})")
    k.add_argument(
        "--rank",
        type=_rank,
        help="truncation rank k, 'full' (numerical rank), 'gd' (Gavish-Donoho threshold) "
        f"or an energy fraction such as 0.99 (default {d['rank']})",
    )
    k.add_argument("--window", type=_window, help="START:STOP optimizer steps [start, stop)")
    k.add_argument("--pca", type=_positive, help="project on this many principal components first")
    k.add_argument(
        "--keep",
        type=_positive,
        help="compare only this many modes, those of most energy (default: every mode)",
    )
    k.add_argument(
        "--spread-resamples",
        type=_int_at_least(2),
        help="refit to this many resamples of the inits and store each eigenvalue's spread",
    )
    k.add_argument(
        "--max-spread",
        type=float,
        help="drop modes whose spread exceeds this (needs --spread-resamples; before --keep)",
    )
    k.add_argument(
        "--max-residual",
        type=float,
        help="drop modes whose residual ||C'_i - mu_i C_i|| / ||C_i|| exceeds this (before --keep)",
    )
    k.add_argument(
        "--variant",
        choices=("exact", "tls", "fb"),
        help="exact, total-least-squares (tls) or forward-backward (fb) DMD "
        f"(default {d['variant']})",
    )
    k.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="where the accumulation runs: cpu (numpy) or cuda (torch, float64) "
        f"(default {d['device']})",
    )
    k.add_argument(
        "--modes",
        action="store_true",
        default=None,
        help="also write the DMD modes (chunked array 'modes')",
    )
    k.add_argument(
        "--readahead",
        type=_nonneg,
        default=DEPTH,
        help=f"blocks read ahead in threads while computing (0: none; default {DEPTH})",
    )
    k.add_argument(
        "--max-memory",
        type=_bytes,
        help="stop before reading when the decomposition would need more (e.g. 8G; "
        "default: the machine's memory)",
    )
    k.add_argument(
        "--skip-diverged",
        action="store_true",
        help="for a diverged trajectory, write an 'excluded' spectrum instead of failing",
    )
    k.set_defaults(func=cmd_koopman)


def _add_compare(sub) -> None:
    c = sub.add_parser("compare", help="W between spectra and conjugacy verdicts")
    c.add_argument(
        "spectra",
        nargs="+",
        type=Path,
        help="spectrum stores (<condition>/seed<N>.zarr) or eigenvalue files (.npy, or .csv "
        "with columns real and imag)",
    )
    c.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    c.add_argument("--pair", type=_pair, action="append", help="A:B condition pair (repeat)")
    c.add_argument(
        "--label",
        type=_name,
        action="append",
        help="condition of each .npy/.csv input, in order (default: its folder's name)",
    )
    _verdict_options(c, "the pairs")
    c.add_argument(
        "--distance",
        choices=("w1", "sgot"),
        help="w1 between eigenvalue sets (default), or sgot, the spectral-Grassmann "
        "distance between eigenpairs (spectrum stores with modes of one shared space)",
    )
    c.add_argument(
        "--sgot-eta", type=float, help="weight of the eigenvalue term of sgot (default 0.5)"
    )
    c.set_defaults(func=cmd_compare)


def _add_figures(sub) -> None:
    f = sub.add_parser(
        "figures",
        help="figures from the stage outputs: each figure whose inputs are given",
    )
    f.add_argument("--spectra", nargs="+", type=Path, help="spectrum stores: spectra.png")
    f.add_argument("--trajectories", nargs="+", type=Path, help="trajectory stores: loss.png")
    f.add_argument(
        "--comparison",
        type=Path,
        help="compare stage's folder: distances.png and w_distributions.png",
    )
    f.add_argument(
        "--pair",
        type=_pair,
        action="append",
        help="A:B conditions drawn in one panel (repeat; default: the comparison's pairs)",
    )
    f.add_argument("-o", "--output", type=Path, required=True, help="figure folder")
    f.set_defaults(func=cmd_figures)


def _add_summary(sub) -> None:
    s = sub.add_parser("summary", help="summary.md: verdicts, settings and wall time")
    _config_source(s, "resolved config as JSON (what the workflow passes)")
    s.add_argument("--verdicts", type=Path, required=True, help="the compare stage's conjugacy.csv")
    s.add_argument(
        "--benchmarks", type=Path, required=True, help="folder of the jobs' benchmark TSVs"
    )
    s.add_argument("-o", "--output", type=Path, required=True, help="markdown file to write")
    s.add_argument(
        "--sensitivity",
        type=Path,
        help="the sensitivity stage's sensitivity.csv: say whether each verdict is stable",
    )
    s.set_defaults(func=cmd_summary)


def _add_companion(sub) -> None:
    cp = sub.add_parser("companion", help="long single-init Transformer run: accuracy curves")
    _config_source(cp, "resolved condition config as JSON")
    cp.add_argument("--condition", required=True, help="condition name")
    cp.add_argument("-o", "--output", type=Path, required=True, help="CSV table to write")
    cp.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    cp.add_argument("--quiet", action="store_true", help="no progress bar")
    cp.set_defaults(func=cmd_companion)


def _add_accuracy(sub) -> None:
    a = sub.add_parser("accuracy", help="accuracy figure from companion tables")
    a.add_argument("tables", nargs="+", type=Path, help="companion CSVs (named CONDITION.csv)")
    a.add_argument("-o", "--output", type=Path, required=True, help="PNG to write (and PDF)")
    a.set_defaults(func=cmd_accuracy)


def _add_windows(sub) -> None:
    w = sub.add_parser("windows", help="W between the spectra of successive training windows")
    w.add_argument("spectra", nargs="+", type=Path, help="window spectra (koopman --window)")
    w.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    w.add_argument("--figures", type=Path, help="figure folder (default: the output folder)")
    _verdict_options(w, "a condition's transitions")
    w.set_defaults(func=cmd_windows)


def _add_predict(sub) -> None:
    pr = sub.add_parser("predict", help="Koopman jumps ahead of a trajectory vs the optimizer")
    pr.add_argument("trajectory", type=Path, help="trajectory store recording every tensor")
    _config_source(pr, "resolved condition config as JSON")
    pr.add_argument("--condition", required=True, help="condition name")
    pr.add_argument("-o", "--output", type=Path, required=True, help="prediction store to write")
    _settings_option(pr, "predict")
    pr.add_argument("--start", type=_nonneg, help="first step of every fit window")
    pr.add_argument("--windows", type=_int_at_least(2), nargs="+", help="snapshots per fit")
    pr.add_argument("--jumps", type=_positive, nargs="+", help="steps predicted ahead")
    pr.add_argument("--methods", nargs="+", choices=["node", "global", "fixed_point"])
    pr.add_argument("--rank", type=_rank, help="global DMD truncation rank or 'full'")
    pr.set_defaults(func=cmd_predict)


def _add_accelerate(sub) -> None:
    ac = sub.add_parser("accelerate", help="plain vs Koopman-accelerated training curves")
    _config_source(ac, "resolved condition config as JSON")
    ac.add_argument("--condition", required=True, help="condition name")
    ac.add_argument("--seed", type=_seed, default=0)
    ac.add_argument("-o", "--output", type=Path, required=True, help="curve store to write")
    _settings_option(ac, "predict.accelerate")
    ac.add_argument("--steps", type=_positive, help="effective optimizer steps of every run")
    ac.add_argument("--k", type=_positive, help="optimizer steps between jumps")
    ac.add_argument("--window", type=_int_at_least(2), help="snapshots of each fit")
    ac.add_argument("--jump", type=_positive, help="steps of each jump")
    ac.add_argument("--eval-every", type=_positive, help="effective steps between evaluations")
    ac.add_argument("--optimizer", type=_lr, action="append", help="NAME=LR, sgd or adam (repeat)")
    ac.add_argument(
        "--no-guard",
        action="store_false",
        dest="guard",
        default=None,
        help="take every jump, even one that raises the loss",
    )
    ac.set_defaults(func=cmd_accelerate)


def _add_predict_summary(sub) -> None:
    ps = sub.add_parser("predict-summary", help="tables and figures of predict and accelerate")
    ps.add_argument("--predictions", nargs="+", type=Path, required=True)
    ps.add_argument("--accelerated", nargs="*", type=Path)
    ps.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    ps.set_defaults(func=cmd_predict_summary)


def _add_prune(sub) -> None:
    d = defaults("prune")
    pr = sub.add_parser("prune", help="Koopman magnitude pruning vs magnitude pruning of a net")
    pr.add_argument("trajectory", type=Path, help="fcn trajectory store recording every parameter")
    pr.add_argument("-o", "--output", type=Path, required=True, help="prune store to write")
    _settings_option(pr, "prune")
    window = ":".join(map(str, d["window"]))
    pr.add_argument(
        "--window", type=_window, help=f"START:STOP steps of the DMD (default {window})"
    )
    pr.add_argument(
        "--rank", type=_rank, help=f"DMD truncation rank or 'full' (default {d['rank']})"
    )
    pr.add_argument("--sparsities", type=_fractions, help="e.g. 0.5,0.9")
    pr.add_argument("--finetune-steps", type=_nonneg, help=f"default {d['finetune_steps']}")
    pr.add_argument("--finetune-lr", type=float, help="default: the condition's learning rate")
    pr.set_defaults(func=cmd_prune)


def _add_prune_report(sub) -> None:
    prr = sub.add_parser("prune-report", help="pruning table (CSV) and figure from prune stores")
    prr.add_argument("stores", nargs="+", type=Path)
    prr.add_argument("-o", "--output", type=Path, required=True, help="CSV table to write")
    prr.add_argument("--figure", type=Path, required=True, help="PNG figure to write")
    prr.set_defaults(func=cmd_prune_report)


def _add_monitor(sub) -> None:
    mo = sub.add_parser("monitor", help="sliding-window DMD convergence monitor of a trajectory")
    mo.add_argument("trajectory", type=Path)
    mo.add_argument("-o", "--output", type=Path, required=True, help="monitor store to write")
    _settings_option(mo, "monitor")
    mo.add_argument(
        "--observable", action="extend", nargs="+", help="recorded tensors (default: all)"
    )
    mo.add_argument("--window", type=_positive, help="snapshots per window")
    mo.add_argument("--stride", type=_positive, help="snapshots between windows")
    mo.add_argument("--delays", type=_nonneg)
    mo.add_argument("--rank", type=_rank)
    mo.add_argument("--leading", type=_positive, help="eigenvalues that must near 1")
    mo.add_argument("--radius", type=float, help="cluster radius around 1")
    mo.add_argument("--consecutive", type=_positive, help="windows in a row")
    mo.add_argument("--unstable", type=float, help="spectral radius alarm level")
    mo.add_argument("--patience", type=_positive, help="validation-loss patience")
    mo.add_argument("--min-delta", type=float, help="relative improvement")
    mo.set_defaults(func=cmd_monitor)


def _add_monitor_report(sub) -> None:
    mor = sub.add_parser("monitor-report", help="monitor table (CSV) and figure from stores")
    mor.add_argument("stores", nargs="+", type=Path)
    mor.add_argument("-o", "--output", type=Path, required=True, help="CSV table to write")
    mor.add_argument("--figure", type=Path, required=True, help="PNG figure to write")
    mor.set_defaults(func=cmd_monitor_report)


def _add_verify(sub) -> None:
    v = sub.add_parser("verify", help="check every store of an experiment (reads every chunk)")
    v.add_argument("results", type=Path, help="results/<experiment>")
    v.add_argument(
        "--config", type=Path, help="the experiment's config: also report the stores it lacks"
    )
    v.set_defaults(func=cmd_verify)


def cmd_sensitivity(args: argparse.Namespace) -> None:
    from conjugacy.beyond.sensitivity import write_sensitivity
    from conjugacy.koopman.spectrum import KoopmanOptions
    from conjugacy.memory import settle_allocator

    settle_allocator()
    given = {**args.settings, **_given(args, {"delays": "delays", "ranks": "ranks"})}
    grid = config_settings("sensitivity", given, option_label)
    for key in ("delays", "ranks"):
        if key not in grid:
            raise ConfigError(f"option --{key}: the grid needs it (or --settings with {key!r})")
    koopman = config_settings(
        "koopman", args.koopman, lambda key: f"option --koopman key {key or '<top level>'}"
    )
    opts = KoopmanOptions.from_settings({**koopman, "modes": False}, readahead=args.readahead)
    for stores, out, seed in _outputs(args, "grid"):
        label = {"condition": args.condition, "seed": seed}
        write_sensitivity(
            stores,
            out,
            opts,
            grid["delays"],
            grid["ranks"],
            skip_diverged=args.skip_diverged,
            max_memory=args.max_memory,
            label={k: v for k, v in label.items() if v is not None},
        )
        log.info("wrote %s: delays %s x ranks %s", out, grid["delays"], grid["ranks"])


def cmd_sensitivity_report(args: argparse.Namespace) -> None:
    from conjugacy.beyond.sensitivity import report
    from conjugacy.config import check_verdict_options

    given = {**args.settings, **({"pairs": args.pair} if args.pair is not None else {})}
    settings = config_settings("compare", given, option_label)
    check_verdict_options(settings, option_label)  # before any store is read
    table = report(args.stores, args.output, args.figure, settings)
    shown = ["delays", "rank", "condition_a", "condition_b", "ratio", "verdict"]
    log.info("sensitivity:\n%s", table[shown].to_string(index=False))


def _add_sensitivity(sub) -> None:
    se = sub.add_parser(
        "sensitivity", help="Koopman eigenvalues at every (delays, rank) of a grid, one pass"
    )
    _store_outputs(se, "grid store")
    _settings_option(se, "sensitivity")
    se.add_argument(
        "--koopman",
        type=_spec,
        default={},
        help="the condition's `koopman` settings as JSON (the grid replaces delays and rank); "
        "schema defaults fill the rest",
    )
    se.add_argument("--delays", type=_nonneg, nargs="+", help="time delays of the grid")
    se.add_argument(
        "--ranks", type=_rank, nargs="+", help="ranks of the grid: integers, full, gd, 0.99"
    )
    se.add_argument(
        "--readahead",
        type=_nonneg,
        default=DEPTH,
        help=f"blocks read ahead in threads while computing (0: none; default {DEPTH})",
    )
    se.add_argument(
        "--max-memory",
        type=_bytes,
        help="stop before reading when the grid would need more (default: the machine's memory)",
    )
    se.add_argument(
        "--skip-diverged",
        action="store_true",
        help="for a diverged trajectory, write an 'excluded' store instead of failing",
    )
    se.set_defaults(func=cmd_sensitivity)


def _add_sensitivity_report(sub) -> None:
    sr = sub.add_parser(
        "sensitivity-report", help="verdicts at every grid point: sensitivity.csv and heatmap"
    )
    sr.add_argument("stores", nargs="+", type=Path, help="grid stores of `conjugacy sensitivity`")
    sr.add_argument("-o", "--output", type=Path, required=True, help="CSV table to write")
    sr.add_argument("--figure", type=Path, required=True, help="PNG heatmap to write")
    _settings_option(sr, "compare")
    sr.add_argument("--pair", type=_pair, action="append", help="A:B condition pair (repeat)")
    sr.set_defaults(func=cmd_sensitivity_report)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conjugacy", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _add_train,
        _add_koopman,
        _add_compare,
        _add_figures,
        _add_summary,
        _add_companion,
        _add_accuracy,
        _add_windows,
        _add_predict,
        _add_accelerate,
        _add_predict_summary,
        _add_prune,
        _add_prune_report,
        _add_monitor,
        _add_monitor_report,
        _add_verify,
        _add_sensitivity,
        _add_sensitivity_report,
    ):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from conjugacy.stores.contract import StoreError

    try:
        return args.func(args) or 0
    except (ConfigError, StoreError) as exc:
        one_line = " ".join(str(exc).split())
        print(f"conjugacy {args.command}: error: {one_line}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only or missing directory
        where = exc.filename or getattr(args, "output", None) or "a file"
        reason = exc.strerror or str(exc)
        message = f"cannot write or read {where}: {reason}"
        print(f"conjugacy {args.command}: error: {message}", file=sys.stderr)
        return 2


def run() -> NoReturn:
    """The `conjugacy` program: `main`, then an exit without the interpreter's teardown.

    Tearing down an interpreter that imported torch takes about half a second
    (its objects are collected and freed one by one; 0.1-0.2 s with only
    xarray, zarr or matplotlib), paid by every job of the workflow. When a
    command returns, everything it wrote is closed, so the program flushes
    its streams and logging and ends. An exception still ends it the usual way.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
