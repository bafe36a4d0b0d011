# Input functions and settings of the predict stage (rules in ../predict.smk).


def predict_conditions():
    """Conditions named in the `predict` section (Koopman training)."""
    return CONFIG["predict"]["conditions"] if "predict" in CONFIG else []


def predict_stores():
    """Prediction store of every seed of every condition of the `predict` section."""
    return [
        f"{RESULTS}/predict/{c}/seed{s}.zarr"
        for c in predict_conditions()
        for s in seeds(c)
    ]


def accelerate_stores():
    """Accelerated-training curves of every condition of the `predict` section (first seed)."""
    return [f"{RESULTS}/accelerate/{c}.zarr" for c in predict_conditions()]


def predict_outputs():
    if "predict" not in CONFIG:
        return []
    names = (
        "predict.csv",
        "accelerate.csv",
        "figures/predict.png",
        "figures/accelerate.png",
    )
    return [f"{RESULTS}/{n}" for n in names]


def predict_settings():
    """The `predict` schedule for `conjugacy predict --settings` (one JSON word)."""
    section = CONFIG.get("predict", {})
    own = ("start", "windows", "jumps", "methods", "rank")
    return shell_json({k: v for k, v in section.items() if k in own})


def accelerate_settings():
    """The `predict.accelerate` settings for `conjugacy accelerate --settings` (one JSON word)."""
    return shell_json(CONFIG.get("predict", {}).get("accelerate", {}))
