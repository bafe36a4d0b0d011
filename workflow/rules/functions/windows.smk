# Input functions and settings of the windows stage (rules in ../windows.smk).


WINDOW_TABLES = [
    f"{RESULTS}/windows/{name}"
    for name in ("windows_successive.csv", "windows_transitions.csv", "windows_all.csv")
]


WINDOW_FIGURES = [
    f"{RESULTS}/figures/{name}.png"
    for name in ("windows_successive", "windows_heatmap")
]


def windowed():
    """Conditions whose Koopman settings ask for successive windows (koopman.windows)."""
    return [c for c in CONDITIONS if CONDITIONS[c]["koopman"].get("windows")]


def window_spectrum(condition, seed, k):
    return f"{RESULTS}/spectra/{condition}/seed{seed}/window{k}.zarr"


def all_window_spectra():
    return [
        window_spectrum(c, s, k)
        for c in windowed()
        for s in seeds(c)
        for k in range(CONDITIONS[c]["koopman"]["windows"]["count"])
    ]


def window_outputs():
    """The windows stage's tables and figures, when some condition has windows."""
    return [*WINDOW_TABLES, *WINDOW_FIGURES] if windowed() else []


def koopman_window_settings(wildcards):
    """The condition's `koopman` section with `window` set to its window k (one JSON word)."""
    k = CONDITIONS[wildcards.condition]["koopman"]
    start, stop = window_bounds(k["windows"])[int(wildcards.window)]
    own = {key: value for key, value in k.items() if key != "windows"}
    return shell_json({**own, "window": [start, stop]})
