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
