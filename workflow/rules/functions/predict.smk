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


def predict_args():
    """The `predict` section's schedule as `conjugacy predict` options."""
    if "predict" not in CONFIG:
        return ""
    p = CONFIG["predict"]
    args = [f"--start {p['start']}", f"--rank {p['rank']}"]
    for key in ("windows", "jumps", "methods"):
        args.append(f"--{key} " + " ".join(str(v) for v in p[key]))
    return " ".join(args)


def accelerate_args():
    """The `predict.accelerate` settings as `conjugacy accelerate` options."""
    if "predict" not in CONFIG:
        return ""
    a = CONFIG["predict"]["accelerate"]
    args = [
        f"--{k.replace('_', '-')} {a[k]}"
        for k in ("steps", "k", "window", "jump", "eval_every")
    ]
    args += [f"--optimizer {name}={lr}" for name, lr in a["optimizers"].items()]
    if not a["guard"]:
        args.append("--no-guard")
    return " ".join(args)
