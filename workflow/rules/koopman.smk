rule koopman:
    """Koopman eigenvalues of one trajectory by pooled exact DMD (one pass over the store)."""
    input:
        koopman_input,
    output:
        directory(f"{RESULTS}/spectra/{{condition}}/seed{{seed}}.zarr"),
    log:
        f"{RESULTS}/logs/koopman/{{condition}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/koopman/{{condition}}/seed{{seed}}.tsv"
    group:
        "koopman"
    conda:
        ENV
    threads: 1
    resources:
        gpu=koopman_gpus,
        mem_mb=koopman_mem_mb,
    params:
        settings=koopman_settings,
        stores=stores_fingerprint,
        code=stage_code("koopman"),
    shell:
        CONJUGACY_ON_GPUS
        + " koopman {input} -o {output} --settings {params.settings} --skip-diverged"
        " --condition {wildcards.condition} --seed {wildcards.seed}"
        " 2> {log}"
