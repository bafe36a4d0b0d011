# conjugacy: are two ways of training a model dynamically equivalent?
# train -> trajectories (Zarr) -> Koopman spectra -> distances and verdicts -> figures
from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/koopman.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/figures.smk"


localrules:
    all,
    compare,
    figures,


rule all:
    input:
        final_outputs(),
