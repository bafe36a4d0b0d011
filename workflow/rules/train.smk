rule train:
    """Train every init of one (condition, seed) as one batch and record the trajectory."""
    output:
        directory(f"{RESULTS}/trajectories/{{condition}}/seed{{seed}}.zarr"),
    params:
        spec=train_spec,
        experiment=CONFIG["experiment"],
        code=code_hash("train"),
    log:
        f"{RESULTS}/logs/train/{{condition}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{condition}}/seed{{seed}}.tsv"
    threads: 1
    resources:
        gpu=train_gpus,
        mem_mb=2000,
    shell:
        CONJUGACY + " train --spec {params.spec} --experiment {params.experiment}"
        " --condition {wildcards.condition} --seed {wildcards.seed} --threads {threads}"
        " -o {output} 2> {log}"
