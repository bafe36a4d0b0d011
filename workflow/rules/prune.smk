# Koopman magnitude pruning (optional: runs when the config has a `prune` section).


localrules:
    prune_report,


rule prune:
    """Koopman magnitude pruning of one (condition, seed) against magnitude pruning."""
    input:
        f"{RESULTS}/trajectories/{{condition}}/seed{{seed}}.zarr",
    output:
        directory(f"{RESULTS}/prune/{{condition}}/seed{{seed}}.zarr"),
    log:
        f"{RESULTS}/logs/prune/{{condition}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/prune/{{condition}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
    params:
        settings=prune_settings(),
        code=stage_code("prune"),
    shell:
        f"{CONJUGACY} prune {{input}} -o {{output}} --settings {{params.settings}} 2> {{log}}"


rule prune_report:
    """Accuracy-vs-sparsity and mask-overlap table and figure of every pruned run."""
    input:
        prune_stores(),
    output:
        table=report(
            f"{RESULTS}/prune.csv",
            caption="../report/prune_table.rst",
            category="Pruning",
        ),
        figure=report(
            f"{RESULTS}/figures/prune.png",
            caption="../report/prune.rst",
            category="Pruning",
        ),
    log:
        f"{RESULTS}/logs/prune_report.log",
    conda:
        ENV
    threads: 1
    params:
        code=stage_code("prune"),
    shell:
        CONJUGACY
        + " prune-report {input} -o {output.table} --figure {output.figure} 2> {log}"
