# Input functions and settings of the monitor stage (rules in ../monitor.smk).


def monitor_stores():
    """Monitor store of every seed of every condition named in the `monitor` section."""
    names = CONFIG["monitor"]["conditions"] if "monitor" in CONFIG else []
    return [f"{RESULTS}/monitor/{c}/seed{s}.zarr" for c in names for s in seeds(c)]


def monitor_outputs():
    if "monitor" not in CONFIG:
        return []
    return [f"{RESULTS}/monitor.csv", f"{RESULTS}/figures/monitor.png"]


def monitor_args():
    """The `monitor` section as `conjugacy monitor` options."""
    if "monitor" not in CONFIG:
        return ""
    m = CONFIG["monitor"]
    keys = ("window", "stride", "delays", "rank", "leading", "radius", "consecutive")
    args = [f"--{k} {m[k]}" for k in keys]
    args += [f"--unstable {m['unstable']}", f"--patience {m['patience']}"]
    args.append(f"--min-delta {m['min_delta']}")
    args += [f"--observable {shlex.quote(o)}" for o in m["observables"] or []]
    return " ".join(args)
