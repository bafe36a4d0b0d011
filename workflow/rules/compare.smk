rule compare:
    """W between every two spectra, and a permutation-test verdict per condition pair."""
    input:
        all_spectra(),
    output:
        distances=directory(f"{RESULTS}/distances.zarr"),
        table=f"{RESULTS}/distances.csv",
        verdicts=report(
            f"{RESULTS}/conjugacy.csv",
            caption="../report/conjugacy.rst",
            category="Verdicts",
        ),
    log:
        f"{RESULTS}/logs/compare.log",
    benchmark:
        f"{RESULTS}/benchmarks/compare.tsv"
    conda:
        ENV
    threads: 1
    params:
        settings=compare_settings(),
        outdir=lambda wildcards, output: Path(output.table).parent,
        code=stage_code("compare"),
    shell:
        CONJUGACY
        + " compare {input} -o {params.outdir} --settings {params.settings} 2> {log}"
