rule train:
    """Train every init of one (condition, seed) as one batch and record the trajectory."""
    output:
        directory(f"{RESULTS}/trajectories/{{condition}}/seed{{seed}}.zarr"),
    log:
        f"{RESULTS}/logs/train/{{condition}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{condition}}/seed{{seed}}.tsv"
    # On a cluster, jobs of a group are bundled into fewer submissions
    # (--group-components); GPU and CPU jobs are bundled apart.
    group:
        train_group
    conda:
        ENV
    threads: 1
    resources:
        gpu=train_gpus,
        mem_mb=2000,
    params:
        spec=train_spec,
        experiment=CONFIG["experiment"],
        # Outside the declared output, which Snakemake deletes before a job runs.
        checkpoints=lambda wildcards: checkpoint_dir(
            wildcards.condition, wildcards.seed
        ),
        code=stage_code("train"),
    shell:
        CONJUGACY_ON_GPUS
        + " train --spec {params.spec} --experiment {params.experiment}"
        " --condition {wildcards.condition} --seed {wildcards.seed} --threads {threads}"
        " --checkpoint-dir {params.checkpoints} -o {output} 2> {log}"
