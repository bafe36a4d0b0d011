# Input functions and settings of the companion stage (rules in ../companion.smk).


def companion_conditions():
    """Conditions with a long-run companion (Transformer train/test accuracy)."""
    return [c for c, cond in CONDITIONS.items() if cond.get("companion")]


def companion_outputs():
    """The accuracy figure, when some condition has a companion."""
    return [f"{RESULTS}/figures/accuracy.png"] if companion_conditions() else []


def companion_spec(wildcards):
    """Training settings plus the companion block as a shell word (its cache key)."""
    cond = CONDITIONS[wildcards.condition]
    return shell_json({**training_config(cond), "companion": cond.get("companion")})
