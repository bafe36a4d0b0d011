# Sensitivity of the verdicts to the Koopman settings (optional: runs when the
# config has a `sensitivity` section): every compared run's eigenvalues at each
# (delays, rank) of the grid, then W and the verdicts at each grid point.


localrules:
    sensitivity_report,


# One grid job per block of seeds of a compared condition (the koopman stage's
# blocks: seeds_per_job of the sorted seeds), each seed its own grid store, one
# after another in one process (sensitivity --each).
for _condition, _block, _name in sensitivity_blocks():

    rule:
        """Eigenvalues of each run of a block at every (delays, rank) of the grid."""
        name:
            f"sensitivity_{_condition}_block{_name}"
        input:
            lambda wildcards, block=_block: koopman_block_input(wildcards, block),
        output:
            [directory(sensitivity_store("{condition}", seed)) for seed in _block],
        log:
            f"{RESULTS}/logs/sensitivity/{{condition}}/{block_label(_block)}.log",
        benchmark:
            f"{RESULTS}/benchmarks/sensitivity/{{condition}}/{block_label(_block)}.tsv"
        wildcard_constraints:
            condition=_condition,
        conda:
            ENV
        threads: 1
        resources:
            gpu=koopman_gpus,
            mem_mb=lambda wildcards, input, attempt, n=len(
                _block
            ): koopman_block_mem_mb(input, n, attempt),
        params:
            grid=sensitivity_grid(),
            koopman=koopman_settings,
            stores=stores_fingerprint,
            seeds=" ".join(str(seed) for seed in _block),
            code=stage_code("sensitivity"),
        shell:
            CONJUGACY_ON_GPUS
            + " sensitivity {input} --each -o {output} --settings {params.grid}"
            " --koopman {params.koopman} --skip-diverged"
            " --condition {wildcards.condition} --seed {params.seeds} 2> {log}"


rule sensitivity_report:
    """The verdict of every pair at every grid point: sensitivity.csv and its heatmap."""
    input:
        sensitivity_stores(),
    output:
        table=report(
            SENSITIVITY_TABLE,
            caption="../report/sensitivity_table.rst",
            category="Sensitivity",
        ),
        figure=report(
            SENSITIVITY_FIGURE,
            caption="../report/sensitivity.rst",
            category="Sensitivity",
        ),
    log:
        f"{RESULTS}/logs/sensitivity_report.log",
    benchmark:
        f"{RESULTS}/benchmarks/sensitivity_report.tsv"
    conda:
        ENV
    threads: 1
    params:
        settings=sensitivity_compare(),
        code=stage_code("sensitivity"),
    shell:
        CONJUGACY
        + " sensitivity-report {input} -o {output.table} --figure {output.figure}"
        " --settings {params.settings} 2> {log}"
