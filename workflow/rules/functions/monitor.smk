# Input functions and settings of the monitor stage (rules in ../monitor.smk).


def monitor_stores():
    """Monitor store of every seed of every condition named in the `monitor` section."""
    names = CONFIG["monitor"]["conditions"] if "monitor" in CONFIG else []
    return [f"{RESULTS}/monitor/{c}/seed{s}.zarr" for c in names for s in seeds(c)]


def monitor_outputs():
    if "monitor" not in CONFIG:
        return []
    return [f"{RESULTS}/monitor.csv", f"{RESULTS}/figures/monitor.png"]


def monitor_settings():
    """The `monitor` section for `conjugacy monitor --settings` (one JSON word)."""
    section = CONFIG.get("monitor", {})
    return shell_json({k: v for k, v in section.items() if k != "conditions"})
