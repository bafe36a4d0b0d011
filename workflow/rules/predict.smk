# Koopman training (optional: runs when the config has a `predict` section).


localrules:
    predict_summary,


rule predict:
    """Node-Koopman and global-DMD jumps ahead of one trajectory against the optimizer."""
    input:
        f"{RESULTS}/trajectories/{{condition}}/seed{{seed}}.zarr",
    output:
        directory(f"{RESULTS}/predict/{{condition}}/seed{{seed}}.zarr"),
    log:
        f"{RESULTS}/logs/predict/{{condition}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{condition}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
    params:
        spec=train_spec,
        settings=predict_settings(),
        code=stage_code("predict"),
    shell:
        CONJUGACY
        + " predict {input} --spec {params.spec} --condition {wildcards.condition}"
        " --settings {params.settings} -o {output} 2> {log}"


rule accelerate:
    """Plain and Koopman-accelerated training (SGD, Adam) of one condition, its first seed."""
    output:
        directory(f"{RESULTS}/accelerate/{{condition}}.zarr"),
    log:
        f"{RESULTS}/logs/accelerate/{{condition}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/accelerate/{{condition}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
    params:
        spec=train_spec,
        seed=lambda wildcards: seeds(wildcards.condition)[0],
        settings=accelerate_settings(),
        code=stage_code("accelerate"),
    shell:
        CONJUGACY
        + " accelerate --spec {params.spec} --condition {wildcards.condition}"
        " --seed {params.seed} --settings {params.settings} -o {output} 2> {log}"


rule predict_summary:
    """Tables and figures of the predictions and of the accelerated training."""
    input:
        predictions=predict_stores(),
        accelerated=accelerate_stores(),
    output:
        table=report(
            f"{RESULTS}/predict.csv",
            caption="../report/predict_table.rst",
            category="Koopman training",
        ),
        curves=report(
            f"{RESULTS}/accelerate.csv",
            caption="../report/accelerate_table.rst",
            category="Koopman training",
        ),
        figure=report(
            f"{RESULTS}/figures/predict.png",
            caption="../report/predict.rst",
            category="Koopman training",
        ),
        accelerated=report(
            f"{RESULTS}/figures/accelerate.png",
            caption="../report/predict_accelerate.rst",
            category="Koopman training",
        ),
    log:
        f"{RESULTS}/logs/predict_summary.log",
    conda:
        ENV
    threads: 1
    params:
        outdir=lambda wildcards, output: Path(output.table).parent,
        code=stage_code("predict_summary"),
    shell:
        CONJUGACY + " predict-summary --predictions {input.predictions}"
        " --accelerated {input.accelerated} -o {params.outdir} 2> {log}"
