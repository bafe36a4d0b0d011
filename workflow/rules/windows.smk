# Successive windows of training (koopman.windows): one spectrum per window and
# seed, then W between successive windows and between all windows. The input
# functions are in common.smk.


rule koopman_window:
    """Koopman eigenvalues of one window of one trajectory (its own spectrum store)."""
    input:
        koopman_input,
    output:
        directory(f"{RESULTS}/spectra/{{condition}}/seed{{seed}}/window{{window}}.zarr"),
    log:
        f"{RESULTS}/logs/koopman/{{condition}}/seed{{seed}}/window{{window}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/koopman/{{condition}}/seed{{seed}}/window{{window}}.tsv"
    wildcard_constraints:
        window=r"\d+",
    group:
        "koopman"
    conda:
        ENV
    threads: 1
    resources:
        gpu=koopman_gpus,
        mem_mb=koopman_mem_mb,
    params:
        settings=koopman_window_settings,
        stores=stores_fingerprint,
        code=stage_code("koopman"),
    shell:
        CONJUGACY_ON_GPUS
        + " koopman {input} -o {output} --settings {params.settings} --skip-diverged"
        " --condition {wildcards.condition} --seed {wildcards.seed}"
        " 2> {log}"


rule windows:
    """W between successive windows (tested seed against seed) and between all windows."""
    input:
        all_window_spectra(),
    output:
        distances=directory(f"{RESULTS}/windows/windows.zarr"),
        successive=WINDOW_TABLES[0],
        transitions=report(
            WINDOW_TABLES[1],
            caption="../report/windows_transitions.rst",
            category="Windows",
        ),
        all=WINDOW_TABLES[2],
        successive_fig=report(
            WINDOW_FIGURES[0],
            caption="../report/windows_successive.rst",
            category="Windows",
        ),
        heatmap=report(
            WINDOW_FIGURES[1],
            caption="../report/windows_heatmap.rst",
            category="Windows",
        ),
    log:
        f"{RESULTS}/logs/windows.log",
    conda:
        ENV
    threads: 1
    params:
        settings=windows_settings(),
        outdir=lambda wildcards, output: Path(output.successive).parent,
        figures=lambda wildcards, output: Path(output.heatmap).parent,
        code=stage_code("windows"),
    shell:
        CONJUGACY + " windows {input} -o {params.outdir} --figures {params.figures}"
        " --settings {params.settings} 2> {log}"
