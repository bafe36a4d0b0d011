rule train:
    """Train every init of one (condition, seed) as one batch and record the trajectory."""
    output:
        directory(f"{RESULTS}/trajectories/{{condition}}/seed{{seed}}.zarr"),
    log:
        f"{RESULTS}/logs/train/{{condition}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{condition}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=train_gpus,
        mem_mb=2000,
    params:
        spec=train_spec,
        experiment=CONFIG["experiment"],
        code=stage_code("train"),
    shell:
        CONJUGACY + " train --spec {params.spec} --experiment {params.experiment}"
        " --condition {wildcards.condition} --seed {wildcards.seed} --threads {threads}"
        " -o {output} 2> {log}"
