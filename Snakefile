# Teacher pretraining -> AFD link extraction (and MHGD's attention-network pretraining)
# -> student distillation -> report.
# The experiment grid is params/default.yaml unless `--configfile params/<grid>.yaml` is given.


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        f"{REPORTS}/table.md",


include: "workflow/rules/data.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/links.smk"
include: "workflow/rules/heads.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/report.smk"


rule data:
    """Target: the grid's prepared dataset."""
    input:
        data_files(GRID.dataset).values(),


rule teachers:
    """Target: every teacher of the grid."""
    input:
        ALL_TEACHER_METRICS,


rule links:
    """Target: every link-finding run of the grid."""
    input:
        ALL_LINKS,


rule heads:
    """Target: every network a method pretrains on a teacher."""
    input:
        ALL_HEADS,


rule students:
    """Target: every student job of the grid."""
    input:
        ALL_STUDENT_METRICS,
