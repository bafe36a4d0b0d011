rule companion:
    """A long single-init run of a Transformer condition: train/test loss and accuracy."""
    output:
        f"{RESULTS}/companion/{{condition}}.csv",
    log:
        f"{RESULTS}/logs/companion/{{condition}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/companion/{{condition}}.tsv"
    priority: 3  # a long single run: before the blocks (block_priority)
    group:
        train_group
    conda:
        ENV
    threads: 1
    resources:
        gpu=train_gpus,
        mem_mb=2000,
    params:
        spec=companion_spec,
        code=stage_code("companion"),
    shell:
        CONJUGACY_ON_GPUS
        + " companion --spec {params.spec} --condition {wildcards.condition}"
        " --threads {threads} --quiet -o {output} 2> {log}"


rule accuracy:
    """Train and test accuracy of the companions: which condition groks."""
    input:
        expand(
            f"{RESULTS}/companion/{{condition}}.csv", condition=companion_conditions()
        ),
    output:
        report(
            f"{RESULTS}/figures/accuracy.png",
            caption="../report/accuracy.rst",
            category="Figures",
        ),
    log:
        f"{RESULTS}/logs/accuracy.log",
    conda:
        ENV
    threads: 1
    params:
        code=stage_code("accuracy"),
    shell:
        CONJUGACY + " accuracy {input} -o {output} 2> {log}"
