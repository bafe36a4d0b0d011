# Input functions and settings of the koopman stage (rules in ../koopman.smk).


def store_mb(path):
    """Size of a Zarr store (a directory) in MB.

    A store that does not exist yet raises FileNotFoundError naming it, which
    tells Snakemake to evaluate the resource again once the input exists.
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(errno.ENOENT, "no such Zarr store", str(path))
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def koopman_mem_mb(wildcards, input, attempt):
    """Memory of a Koopman job: 1 GB plus twice its trajectory store, times the attempt."""
    return attempt * (1000 + 2 * round(store_mb(input[0])))


def koopman_gpus(wildcards):
    """GPUs a Koopman job requests: 1 when its accumulation runs on cuda, else 0."""
    return (
        1 if CONDITIONS[wildcards.condition]["koopman"].get("device") == "cuda" else 0
    )


def koopman_settings(wildcards):
    """The condition's `koopman` section for `conjugacy koopman --settings` (one JSON word)."""
    k = CONDITIONS[wildcards.condition]["koopman"]
    return shell_json({key: value for key, value in k.items() if key != "windows"})
