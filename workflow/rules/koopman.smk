# One Koopman job per block of seeds of a condition (the blocks of train.smk:
# seeds_per_job of the sorted seeds), one rule per block: each seed its own
# spectrum, one after another in one process (koopman --each).
for _condition, _block, _name in koopman_blocks():

    rule:
        """Koopman eigenvalues of each trajectory of a block by pooled exact DMD (one pass each)."""
        name:
            f"koopman_{_condition}_block{_name}"
        input:
            lambda wildcards, block=_block: koopman_block_input(wildcards, block),
        output:
            [directory(spectrum("{condition}", seed)) for seed in _block],
        log:
            f"{RESULTS}/logs/koopman/{{condition}}/{block_label(_block)}.log",
        benchmark:
            f"{RESULTS}/benchmarks/koopman/{{condition}}/{block_label(_block)}.tsv"
        wildcard_constraints:
            condition=_condition,
        priority: block_priority(_condition, _block, "koopman")
        group:
            "koopman"
        conda:
            ENV
        threads: 1
        resources:
            gpu=koopman_gpus,
            mem_mb=lambda wildcards, input, attempt, n=len(
                _block
            ): koopman_block_mem_mb(input, n, attempt),
            runtime=lambda wildcards, attempt, n=len(_block): 15 * n * attempt,
        params:
            settings=koopman_settings,
            stores=stores_fingerprint,
            seeds=" ".join(str(seed) for seed in _block),
            code=stage_code("koopman"),
        shell:
            CONJUGACY_ON_GPUS
            + " koopman {input} --each -o {output} --settings {params.settings}"
            " --skip-diverged --condition {wildcards.condition} --seed {params.seeds}"
            " 2> {log}"
