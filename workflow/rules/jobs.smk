# One rule per job kind, one target rule per kind, all derived from afdistill.jobs.KINDS.
# A rule's output is the fingerprint marker its job writes last; the job's other files (listed
# in KINDS) sit beside it. A job reruns exactly when its marker is missing: its inputs,
# parameters or code changed (so did its fingerprint), or its outputs were deleted. Keeping
# the other files undeclared also means Snakemake never deletes a finished job's results
# before a rerun, so a job that completed just before a kill is recognised, not retrained.

# In `snakemake --report`: the table as HTML (shown inline) and as CSV (to download), and the figures.
REPORT_FLAGS = {
    "table.html": dict(caption="../report/table.rst", category="Tables"),
    "table.csv": dict(caption="../report/table.rst", category="Tables"),
    "ablations.csv": dict(caption="../report/table.rst", category="Tables"),
    "figures": dict(caption="../report/figures.rst", category="Figures", patterns=["{name}.png"]),
}


def output_pattern(kind):
    """The rule's outputs: the marker, plus the files a one-job kind (the report) shows in the HTML report."""
    folder = kind.folder.format(results=PLAN.results, reports=PLAN.reports,
                                **{name: f"{{{name}}}" for name in kind.wildcards})
    if kind.wildcards:
        return folder, {"marker": f"{folder}/fingerprint-{{fingerprint}}.json"}
    (job,) = PLAN.of_kind(kind.name)
    outputs = {"marker": job.marker}
    for name, flags in REPORT_FLAGS.items():
        if name in kind.files:
            path = f"{folder}/{name}"
            outputs[name.replace(".", "_")] = report(path if "." in name else directory(path), **flags)
    return folder, outputs


for kind in KINDS.values():
    if not PLAN.of_kind(kind.name):
        continue  # this grid has no such job (no method reads links, say)
    folder, outputs = output_pattern(kind)

    rule:
        name:
            kind.rule
        input:
            upstream_markers(kind.name),
        output:
            **outputs,
        log:
            f"logs/{folder}.{{fingerprint}}.log" if kind.wildcards else f"logs/{folder}.log",
        params:
            folder=lambda wildcards, output: os.path.dirname(output.marker),
            fingerprint=fingerprint_of(kind.name),
        threads: THREADS_PER_JOB if kind.trains else 1
        resources:
            gpu=GPUS_PER_JOB if kind.trains else 0,
        shell:
            f"afdistill run {GRID_ARGS} {{params.folder}} --fingerprint {{params.fingerprint}}"
            " --threads {threads} > {log} 2>&1"

    rule:
        name:
            kind.target
        input:
            [job.marker for job in PLAN.of_kind(kind.name)],
