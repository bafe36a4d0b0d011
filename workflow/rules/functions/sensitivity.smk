# Input functions and settings of the sensitivity stage (rules in ../sensitivity.smk).
from conjugacy.config.checks import check_sensitivity_section

SENSITIVITY_TABLE = f"{RESULTS}/sensitivity.csv"
SENSITIVITY_FIGURE = f"{RESULTS}/figures/sensitivity.png"

if "sensitivity" in CONFIG:  # every delay of the grid fits every compared condition
    try:
        check_sensitivity_section(CONFIG)
    except ConfigError as exc:
        raise WorkflowError(f"invalid config: {exc}") from None


def sensitivity_conditions():
    """The conditions of the compared pairs, in the config's order."""
    paired = {c for pair in condition_pairs(CONFIG) for c in pair}
    return [c for c in CONDITIONS if c in paired]


def sensitivity_store(condition, seed):
    return f"{RESULTS}/sensitivity/{condition}/seed{seed}.zarr"


def sensitivity_blocks():
    """(condition, seeds, block number) of every grid job: the Koopman jobs' blocks of the
    compared conditions (none without the section)."""
    if "sensitivity" not in CONFIG:
        return []
    paired = sensitivity_conditions()
    return [block for block in koopman_blocks() if block[0] in paired]


def sensitivity_stores():
    """Grid store of every seed of every compared condition (none without the section)."""
    return [
        sensitivity_store(c, s) for c, block, _ in sensitivity_blocks() for s in block
    ]


def sensitivity_outputs():
    if "sensitivity" not in CONFIG:
        return []
    return [SENSITIVITY_TABLE, SENSITIVITY_FIGURE]


def sensitivity_grid():
    """The `sensitivity` section for `conjugacy sensitivity --settings` (one JSON word)."""
    return shell_json(CONFIG.get("sensitivity", {}))


def sensitivity_compare():
    """The `compare` section, pairs resolved, for `conjugacy sensitivity-report --settings`."""
    pairs = [list(pair) for pair in condition_pairs(CONFIG)]
    return shell_json({**CONFIG["compare"], "pairs": pairs})


def sensitivity_summary_option():
    """`--sensitivity TABLE` for the summary when the stage runs, else nothing."""
    return f"--sensitivity {SENSITIVITY_TABLE}" if "sensitivity" in CONFIG else ""
