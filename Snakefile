# Data preparation -> teacher pretraining -> AFD link extraction (and MHGD's attention-network
# pretraining) -> student distillation -> report. The rules are derived from the job kinds
# declared in src/afdistill/kinds/ (a module each); each runs `afdistill run --job <the planned job>`.
# The grid is params/default.yaml unless `--configfile params/<grid>.yaml` names another.


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        [job.marker for job in PLAN.jobs],


include: "workflow/rules/jobs.smk"
