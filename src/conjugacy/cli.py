"""The `conjugacy` command line: one subcommand per pipeline stage.

Each subcommand works on its own; the workflow's rules are thin calls of them.
Errors in input (config, options, stores) print one line naming the culprit
and exit with status 2, before any expensive work.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from conjugacy.config import ConfigError

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


def _rank(text: str) -> int | str:
    if text == "full":
        return text
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'full', got {text!r}"
        ) from None


def _window(text: str) -> tuple[int, int]:
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START:STOP (optimizer steps), got {text!r}"
        ) from None
    return start, stop


def _pair(text: str) -> tuple[str, str]:
    parts = text.split(":")
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected CONDITION_A:CONDITION_B, got {text!r}")
    return parts[0], parts[1]


def cmd_train(args: argparse.Namespace) -> None:
    from conjugacy import config
    from conjugacy.train import train

    if args.spec is not None:
        cond = json.loads(args.spec)
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
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    train(
        cond,
        args.seed,
        args.output,
        experiment,
        args.condition,
        progress=not args.quiet,
        checkpoint_dir=args.checkpoint_dir,
    )


def cmd_koopman(args: argparse.Namespace) -> None:
    from conjugacy.koopman import KoopmanOptions, run

    opts = KoopmanOptions(
        observables=args.observable,
        delays=args.delays,
        rank=args.rank,
        window=args.window,
        pca=args.pca,
    )
    spectrum = run(args.trajectory, args.output, opts, skip_diverged=args.skip_diverged)
    log.info("wrote %s: %d eigenvalues", args.output, spectrum.sizes["mode"])


def cmd_compare(args: argparse.Namespace) -> None:
    from conjugacy.compare import run

    table = run(args.spectra, args.output, args.pair, args.alpha, args.max_ratio, args.permutations)
    log.info("verdicts:\n%s", table.to_string(index=False))


def cmd_figures(args: argparse.Namespace) -> None:
    from conjugacy.figures import run

    for path in run(args.spectra, args.trajectories, args.comparison, args.output):
        log.info("wrote %s", path)


def cmd_verify(args: argparse.Namespace) -> int:
    import pandas as pd

    from conjugacy.verify import verify

    table = verify(args.results)
    if table.empty:
        print(f"no stores under {args.results}", file=sys.stderr)
        return 1
    with pd.option_context("display.max_colwidth", 200, "display.width", 250):
        print(table.to_string(index=False))
    bad = table[table.problem != ""]
    print(f"{len(table) - len(bad)} of {len(table)} stores are whole", file=sys.stderr)
    return 1 if len(bad) else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conjugacy", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one (condition, seed) and record its trajectory")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="experiment config (YAML)")
    src.add_argument("--spec", help="resolved condition config as JSON (what the workflow passes)")
    t.add_argument("--condition", required=True, help="condition name")
    t.add_argument("--seed", type=_nonneg, required=True)
    t.add_argument("--experiment", help="experiment name recorded with --spec")
    t.add_argument("-o", "--output", type=Path, required=True, help="trajectory store to write")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="where the store is built and checkpoints kept (default: OUTPUT.partial)",
    )
    t.set_defaults(func=cmd_train)

    k = sub.add_parser("koopman", help="Koopman eigenvalues of a trajectory store by DMD")
    k.add_argument("trajectory", type=Path)
    k.add_argument("-o", "--output", type=Path, required=True, help="spectrum store to write")
    k.add_argument(
        "--observable", action="extend", nargs="+", help="recorded tensors to use (default: all)"
    )
    k.add_argument("--delays", type=_nonneg, default=0, help="time delays n (default 0)")
    k.add_argument("--rank", type=_rank, default="full", help="truncation rank or 'full'")
    k.add_argument("--window", type=_window, help="START:STOP optimizer steps [start, stop)")
    k.add_argument("--pca", type=_positive, help="project on this many principal components first")
    k.add_argument(
        "--skip-diverged",
        action="store_true",
        help="for a diverged trajectory, write an 'excluded' spectrum instead of failing",
    )
    k.set_defaults(func=cmd_koopman)

    c = sub.add_parser("compare", help="W between spectra and conjugacy verdicts")
    c.add_argument("spectra", nargs="+", type=Path)
    c.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    c.add_argument("--pair", type=_pair, action="append", help="A:B condition pair (repeat)")
    c.add_argument("--alpha", type=float, default=0.05)
    c.add_argument("--max-ratio", type=float, default=1.5)
    c.add_argument("--permutations", type=int, default=9999)
    c.set_defaults(func=cmd_compare)

    f = sub.add_parser("figures", help="figures from the stage outputs")
    f.add_argument("--spectra", nargs="+", type=Path, required=True)
    f.add_argument("--trajectories", nargs="+", type=Path, required=True)
    f.add_argument("--comparison", type=Path, required=True, help="compare stage's folder")
    f.add_argument("-o", "--output", type=Path, required=True, help="figure folder")
    f.set_defaults(func=cmd_figures)

    v = sub.add_parser("verify", help="check every store of an experiment (reads every chunk)")
    v.add_argument("results", type=Path, help="results/<experiment>")
    v.set_defaults(func=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from conjugacy.store import StoreError

    try:
        return args.func(args) or 0
    except (ConfigError, StoreError) as exc:
        print(f"conjugacy {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, read-only or missing directory
        print(f"conjugacy {args.command}: error: cannot write or read: {exc}", file=sys.stderr)
        return 2
