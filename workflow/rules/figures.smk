rule figures_runs:
    """Spectra and loss curves: drawn beside the comparison, from the stores alone."""
    input:
        spectra=all_spectra(),
        trajectories=all_trajectories(),
    output:
        spectra=report(
            f"{RESULTS}/figures/spectra.png",
            caption="../report/spectra.rst",
            category="Figures",
        ),
        loss=report(
            f"{RESULTS}/figures/loss.png",
            caption="../report/loss.rst",
            category="Figures",
        ),
        # save() writes a PDF beside every PNG, for papers.
        pdfs=[f"{RESULTS}/figures/{name}.pdf" for name in ("spectra", "loss")],
    log:
        f"{RESULTS}/logs/figures_runs.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures_runs.tsv"
    conda:
        ENV
    threads: 1
    params:
        # Conditions of a compared pair share a panel.
        pairs=" ".join(
            f"--pair {shlex.quote(f'{a}:{b}')}" for a, b in condition_pairs(CONFIG)
        ),
        outdir=lambda wildcards, output: Path(output.spectra).parent,
        code=stage_code("figures"),
    shell:
        CONJUGACY
        + " figures --spectra {input.spectra} --trajectories {input.trajectories}"
        " {params.pairs} -o {params.outdir} 2> {log}"


rule figures_verdicts:
    """Distance heatmap and W distributions with each pair's test result."""
    input:
        distances=f"{RESULTS}/distances.zarr",
        verdicts=f"{RESULTS}/conjugacy.csv",
    output:
        distances=report(
            f"{RESULTS}/figures/distances.png",
            caption="../report/distances.rst",
            category="Figures",
        ),
        w=report(
            f"{RESULTS}/figures/w_distributions.png",
            caption="../report/w_distributions.rst",
            category="Figures",
        ),
        pdfs=[
            f"{RESULTS}/figures/{name}.pdf"
            for name in ("distances", "w_distributions")
        ],
    log:
        f"{RESULTS}/logs/figures_verdicts.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures_verdicts.tsv"
    conda:
        ENV
    threads: 1
    params:
        comparison=lambda wildcards, input: Path(input.verdicts).parent,
        outdir=lambda wildcards, output: Path(output.distances).parent,
        code=stage_code("figures"),
    shell:
        CONJUGACY
        + " figures --comparison {params.comparison} -o {params.outdir} 2> {log}"
