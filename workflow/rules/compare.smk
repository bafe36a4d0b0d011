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
    params:
        options=compare_args(),
        outdir=RESULTS,
        code=code_hash("compare"),
    log:
        f"{RESULTS}/logs/compare.log",
    threads: 1
    shell:
        CONJUGACY + " compare {input} -o {params.outdir} {params.options} 2> {log}"
