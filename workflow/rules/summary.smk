import json


rule summary:
    """summary.md: the verdict table, the settings of each condition and the wall time."""
    input:
        verdicts=f"{RESULTS}/conjugacy.csv",
        # Every other final output: the summary is written last, when every job
        # has written its benchmark.
        others=lambda wildcards: [f for f in final_outputs() if f != SUMMARY],
    output:
        SUMMARY,
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        ENV
    threads: 1
    params:
        # The resolved config as a shell word: a changed setting rewrites the summary.
        spec=lambda wildcards: shell_json(CONFIG),
        benchmarks=f"{RESULTS}/benchmarks",
        sensitivity=sensitivity_summary_option(),
        code=stage_code("summary"),
    shell:
        CONJUGACY + " summary --spec {params.spec} --verdicts {input.verdicts}"
        " --benchmarks {params.benchmarks} {params.sensitivity} -o {output} 2> {log}"
