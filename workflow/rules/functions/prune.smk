# Input functions and settings of the prune stage (rules in ../prune.smk).


def prune_stores():
    """Prune store of every seed of every condition named in the `prune` section."""
    names = CONFIG["prune"]["conditions"] if "prune" in CONFIG else []
    return [f"{RESULTS}/prune/{c}/seed{s}.zarr" for c in names for s in seeds(c)]


def prune_outputs():
    if "prune" not in CONFIG:
        return []
    return [f"{RESULTS}/prune.csv", f"{RESULTS}/figures/prune.png"]


def prune_settings():
    """The `prune` section for `conjugacy prune --settings` (one JSON word)."""
    section = CONFIG.get("prune", {})
    return shell_json({k: v for k, v in section.items() if k != "conditions"})
