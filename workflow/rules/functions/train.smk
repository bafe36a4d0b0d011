# Input functions and settings of the train stage (rules in ../train.smk).


def train_spec(wildcards):
    """The condition's training settings as a shell word: a changed value reruns training."""
    return shlex.quote(training_json(CONDITIONS[wildcards.condition]))


def train_gpus(wildcards):
    """GPUs a training job requests: the condition's `gpus`, else 1 for device cuda, else 0."""
    cond = CONDITIONS[wildcards.condition]
    return cond.get("gpus", 1 if cond.get("device") == "cuda" else 0)


def train_group(wildcards):
    """Cluster job group of a training job: GPU and CPU jobs are bundled apart."""
    return "train_gpu" if train_gpus(wildcards) else "train"


def seeds_per_job(condition):
    """Seeds one training or Koopman job of a condition runs: its own, else the experiment's."""
    return CONDITIONS[condition].get("seeds_per_job", CONFIG["seeds_per_job"])


def seed_blocks(condition):
    """Fixed blocks of the sorted seeds: block k = sorted_seeds[k*B:(k+1)*B]."""
    ordered, size = sorted(seeds(condition)), seeds_per_job(condition)
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def block_label(block):
    """A block's name in log and benchmark paths: seed3, or seed0-4 (first-last)."""
    return f"seed{block[0]}" if len(block) == 1 else f"seed{block[0]}-{block[-1]}"


def train_blocks():
    """(condition, seeds, block number) of every training job; external conditions train none."""
    return [
        (condition, block, k)
        for condition, cond in CONDITIONS.items()
        if cond["system"] != "external"
        for k, block in enumerate(seed_blocks(condition))
    ]


# Relative work of one seed's spectrum per condition, from the config alone.
SPECTRUM_WORK = {c: spectrum_work(cond) for c, cond in CONDITIONS.items()}


def block_priority(condition, block, stage):
    """Priority of a block's job: spectra before training, the most spectrum work first.

    A finished training block's spectra start before the next training, and
    among the blocks of one stage those with the most spectrum work (seeds x
    work of one spectrum) start first: the longest chains begin first and the
    run ends on the smallest spectra, not on the largest running alone on one
    core. Companions (long single runs) come before both.
    """
    most = max(SPECTRUM_WORK[c] * len(b) for c, b, _ in koopman_blocks()) or 1.0
    share = SPECTRUM_WORK[condition] * len(block) / most
    return {"train": 1, "koopman": 2}[stage] + share
