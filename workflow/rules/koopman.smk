rule koopman:
    """Koopman eigenvalues of one trajectory by pooled exact DMD (one pass over the store)."""
    input:
        f"{RESULTS}/trajectories/{{condition}}/seed{{seed}}.zarr",
    output:
        directory(f"{RESULTS}/spectra/{{condition}}/seed{{seed}}.zarr"),
    log:
        f"{RESULTS}/logs/koopman/{{condition}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/koopman/{{condition}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
    params:
        options=koopman_args,
        code=stage_code("koopman"),
    shell:
        CONJUGACY + " koopman {input} -o {output} {params.options} 2> {log}"
