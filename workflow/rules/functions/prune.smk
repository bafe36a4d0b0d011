# Input functions and settings of the prune stage (rules in ../prune.smk).


def prune_stores():
    """Prune store of every seed of every condition named in the `prune` section."""
    names = CONFIG["prune"]["conditions"] if "prune" in CONFIG else []
    return [f"{RESULTS}/prune/{c}/seed{s}.zarr" for c in names for s in seeds(c)]


def prune_outputs():
    if "prune" not in CONFIG:
        return []
    return [f"{RESULTS}/prune.csv", f"{RESULTS}/figures/prune.png"]


def prune_args():
    """The `prune` section as `conjugacy prune` options."""
    if "prune" not in CONFIG:
        return ""
    p = CONFIG["prune"]
    args = [
        f"--window {p['window'][0]}:{p['window'][1]}",
        f"--rank {p['rank']}",
        "--sparsities " + ",".join(str(s) for s in p["sparsities"]),
        f"--finetune-steps {p['finetune_steps']}",
    ]
    if p["finetune_lr"] is not None:
        args.append(f"--finetune-lr {p['finetune_lr']}")
    return " ".join(args)
