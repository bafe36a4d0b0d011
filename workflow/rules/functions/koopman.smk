# Input functions and settings of the koopman stage (rules in ../koopman.smk).
from types import SimpleNamespace


def store_mb(path):
    """Size of a Zarr store (a directory) in MB.

    A store that does not exist yet raises FileNotFoundError naming it, which
    tells Snakemake to evaluate the resource again once the input exists.
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such Zarr store", str(path))
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def koopman_mem_mb(wildcards, input, attempt):
    """Memory of a Koopman job: 1 GB plus twice its trajectory stores, times the attempt."""
    return attempt * (1000 + 2 * round(sum(store_mb(path) for path in input)))


def koopman_gpus(wildcards):
    """GPUs a Koopman job requests: 1 when its accumulation runs on cuda, else 0."""
    return (
        1 if CONDITIONS[wildcards.condition]["koopman"].get("device") == "cuda" else 0
    )


def koopman_settings(wildcards):
    """The condition's `koopman` section for `conjugacy koopman --settings` (one JSON word)."""
    k = CONDITIONS[wildcards.condition]["koopman"]
    return shell_json({key: value for key, value in k.items() if key != "windows"})


def koopman_input(wildcards):
    """The trajectory store(s) a spectrum is computed from."""
    return trajectories(wildcards.condition, int(wildcards.seed))


def stores_fingerprint(wildcards, input):
    """Sizes and times of every file of the input stores of your own runs (system external).

    Snakemake compares only a directory's own time, which a rewritten Zarr
    store need not change: this param reruns the spectrum of a store that
    changed. The workflow's own stores are outputs of its rules: "".
    """
    if CONDITIONS[wildcards.condition]["system"] != "external":
        return ""
    digest = hashlib.sha256()
    for store in input:
        for path in sorted(Path(store).rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def koopman_blocks():
    """(condition, seeds, block number) of every Koopman job: the blocks of seed_blocks."""
    return [
        (condition, block, k)
        for condition in CONDITIONS
        for k, block in enumerate(seed_blocks(condition))
    ]


def koopman_block_input(wildcards, block):
    """The stores of a block's spectra, seed after seed (each seed's koopman_input, pooled)."""
    counts = set()
    stores = []
    for seed in block:
        own = koopman_input(
            SimpleNamespace(condition=wildcards.condition, seed=str(seed))
        )
        counts.add(len(own))
        stores += own
    if len(counts) > 1:  # koopman --each splits the stores evenly over the outputs
        raise WorkflowError(
            f"condition {wildcards.condition}: its seeds have different numbers of stores"
        )
    return stores


def koopman_block_mem_mb(input, seeds, attempt):
    """Memory of a Koopman block job: 1 GB plus twice its largest seed's stores, per attempt.

    The seeds' spectra are computed one after another: the largest one counts.
    """
    sizes = [store_mb(path) for path in input]
    per = len(sizes) // seeds
    largest = max(sum(sizes[i * per : (i + 1) * per]) for i in range(seeds))
    return attempt * (1000 + 2 * round(largest))
