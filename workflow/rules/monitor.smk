# Spectral convergence monitor (optional: runs when the config has a `monitor` section).


localrules:
    monitor_report,


rule monitor:
    """Sliding-window DMD metrics, convergence and instability flags of one trajectory."""
    input:
        f"{RESULTS}/trajectories/{{condition}}/seed{{seed}}.zarr",
    output:
        directory(f"{RESULTS}/monitor/{{condition}}/seed{{seed}}.zarr"),
    log:
        f"{RESULTS}/logs/monitor/{{condition}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/monitor/{{condition}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        gpu=0,
    params:
        settings=monitor_settings(),
        code=stage_code("monitor"),
    shell:
        f"{CONJUGACY} monitor {{input}} -o {{output}} --settings {{params.settings}} 2> {{log}}"


rule monitor_report:
    """Flagged convergence step against the validation plateau, and the monitor figure."""
    input:
        monitor_stores(),
    output:
        table=report(
            f"{RESULTS}/monitor.csv",
            caption="../report/monitor_table.rst",
            category="Convergence monitor",
        ),
        figure=report(
            f"{RESULTS}/figures/monitor.png",
            caption="../report/monitor.rst",
            category="Convergence monitor",
        ),
    log:
        f"{RESULTS}/logs/monitor_report.log",
    conda:
        ENV
    threads: 1
    params:
        code=stage_code("monitor"),
    shell:
        CONJUGACY
        + " monitor-report {input} -o {output.table} --figure {output.figure} 2> {log}"
