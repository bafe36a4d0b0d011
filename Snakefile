# conjugacy: are two ways of training a model dynamically equivalent?
# train -> trajectories (Zarr) -> Koopman spectra -> distances and verdicts -> figures
from snakemake.utils import min_version

min_version("9.20")


# The default experiment, unless --configfile names another: a named config
# replaces it rather than merging into it (--config KEY=VALUE still overrides).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/koopman.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/windows.smk"
include: "workflow/rules/summary.smk"
include: "workflow/rules/companion.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/monitor.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/sensitivity.smk"
include: "workflow/rules/hooks.smk"


localrules:
    all,
    compare,
    figures_runs,
    figures_verdicts,
    windows,
    summary,
    accuracy,


rule all:
    input:
        final_outputs(),
