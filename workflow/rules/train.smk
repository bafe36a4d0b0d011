# One training job per block of seeds of a condition (seeds_per_job, fixed
# blocks of the sorted seeds: a new seed reruns only its block), one rule per
# block: a job's outputs are its seeds' stores. The rule's one wildcard,
# {condition}, matches only its own condition.
for _condition, _block, _name in train_blocks():

    rule:
        """Train every init of each seed of a block, one seed after another in one process."""
        name:
            f"train_{_condition}_block{_name}"
        output:
            [directory(trajectory("{condition}", seed)) for seed in _block],
        log:
            f"{RESULTS}/logs/train/{{condition}}/{block_label(_block)}.log",
        benchmark:
            f"{RESULTS}/benchmarks/train/{{condition}}/{block_label(_block)}.tsv"
        wildcard_constraints:
            condition=_condition,
        priority: block_priority(_condition, _block, "train")
        # On a cluster, jobs of a group are bundled into fewer submissions
        # (--group-components); GPU and CPU jobs are bundled apart.
        group:
            train_group
        conda:
            ENV
        threads: 1
        resources:
            gpu=train_gpus,
            mem_mb=lambda wildcards, attempt: 2000 * attempt,
            runtime=lambda wildcards, attempt, n=len(_block): 30 * n * attempt,
            cpus_per_gpu=2,
        params:
            spec=train_spec,
            experiment=CONFIG["experiment"],
            seeds=" ".join(str(seed) for seed in _block),
            # Outside the declared outputs, which Snakemake deletes before a job runs.
            checkpoints=" ".join(
                shlex.quote(checkpoint_dir(_condition, seed)) for seed in _block
            ),
            code=stage_code("train"),
        shell:
            CONJUGACY_ON_GPUS
            + " train --spec {params.spec} --experiment {params.experiment}"
            " --condition {wildcards.condition} --seed {params.seeds} --threads {threads}"
            " --checkpoint-dir {params.checkpoints} -o {output} 2> {log}"
