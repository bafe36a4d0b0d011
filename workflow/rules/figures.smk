rule figures:
    """Spectra, distance heatmap, W distributions and loss curves."""
    input:
        spectra=all_spectra(),
        trajectories=all_trajectories(),
        distances=f"{RESULTS}/distances.zarr",
        verdicts=f"{RESULTS}/conjugacy.csv",
    output:
        spectra=report(
            f"{RESULTS}/figures/spectra.png",
            caption="../report/spectra.rst",
            category="Figures",
        ),
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
        loss=report(
            f"{RESULTS}/figures/loss.png",
            caption="../report/loss.rst",
            category="Figures",
        ),
        # save() writes a PDF beside every PNG, for papers.
        pdfs=[
            f"{RESULTS}/figures/{name}.pdf"
            for name in ("spectra", "distances", "w_distributions", "loss")
        ],
    log:
        f"{RESULTS}/logs/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures.tsv"
    conda:
        ENV
    threads: 1
    params:
        comparison=lambda wildcards, input: Path(input.verdicts).parent,
        outdir=lambda wildcards, output: Path(output.spectra).parent,
        code=stage_code("figures"),
    shell:
        CONJUGACY
        + " figures --spectra {input.spectra} --trajectories {input.trajectories}"
        " --comparison {params.comparison} -o {params.outdir} 2> {log}"
