# One rule per job kind, one target rule per kind, all derived from afdistill.kinds.KINDS.
# A rule's output is the fingerprint marker its job writes last; the job's other files (listed
# in KINDS) sit beside it. A job reruns exactly when its marker is missing: its inputs,
# parameters or code changed (so did its fingerprint), or its outputs were deleted. Keeping
# the other files undeclared also means Snakemake never deletes a finished job's results
# before a rerun, so a job that completed just before a kill is recognised, not retrained.
import hashlib
import json
import re

# In `snakemake --report`: the results table as HTML (shown inline) and as CSV (to download), the measured
# timings, the AFD paper's ablation cells where the grid has its ablation tables, and the figures; each file
# with its own caption and labels (the report lists a category's files as a table of their labels).
FIGURE_PAIR_KINDS = {  # figures/<kind>_<teacher>_<student>.png -> its label in the report
    "curves": "Learning curves",
    "links": "AFD link strengths (link-finding run)",
    "activation_maps": "Figure 4: activation maps",
}
FIGURE_GRID_KINDS = {  # figures/<kind>.png, one for the whole grid (a row, panel or line per pair)
    "attention_epochs": "Figure 3: attention during training",
    "beta_sensitivity": "Figure 5: accuracy against beta",
    "manual_vs_attention": "Figure 6: manual vs attention links",
}
_KINDS_OF_PAIR, _KINDS_OF_GRID = "|".join(FIGURE_PAIR_KINDS), "|".join(FIGURE_GRID_KINDS)
_TEACHERS = "|".join(dict.fromkeys(re.escape(pair.teacher) for pair in GRID.pairs))
_STUDENTS = "|".join(dict.fromkeys(re.escape(pair.student) for pair in GRID.pairs))
# report(directory(...), patterns=...): each pattern's wildcards name a figure (and its pair) for its caption
# (figures.rst reads snakemake.wildcards), its labels and its subcategory.
FIGURE_PATTERNS = [
    f"{{figure,{_KINDS_OF_PAIR}}}_{{teacher,{_TEACHERS}}}_{{student,{_STUDENTS}}}.png",
    f"{{figure,{_KINDS_OF_GRID}}}.png",
    # any other figure the report job draws: listed under its file name, with a generic caption
    f"{{name,(?!(?:{_KINDS_OF_PAIR})_(?:{_TEACHERS})_(?:{_STUDENTS})\\.png$|(?:{_KINDS_OF_GRID})\\.png$)[^/]+}}.png",
]


def _figure_group(wildcards):
    """The report's subcategory of a figure: its pair, or the figures drawn across the grid's pairs."""
    if getattr(wildcards, "teacher", None):
        return f"{wildcards.teacher} → {wildcards.student}"
    return "All pairs" if getattr(wildcards, "figure", None) else "Other figures"


def _figure_labels(wildcards):
    figure = getattr(wildcards, "figure", None)
    if figure in FIGURE_PAIR_KINDS:
        return {"figure": FIGURE_PAIR_KINDS[figure], "pair": f"{wildcards.teacher} → {wildcards.student}"}
    if figure in FIGURE_GRID_KINDS:
        return {"figure": FIGURE_GRID_KINDS[figure], "pair": "all pairs"}
    return {"figure": f"{wildcards.name}.png", "pair": ""}


# A file is shown where the report kind writes it (KINDS["report"].files), so timings.md appears once the
# report job writes it; ablations.csv (only a header in a grid without report.paper_matrices) only where
# the grid has the AFD paper's ablation tables.
REPORT_FLAGS = {
    "table.html": dict(caption="../report/table_html.rst", category="Tables", labels={"table": "Results (HTML)"}),
    "table.csv": dict(caption="../report/table_csv.rst", category="Tables", labels={"table": "Results (CSV)"}),
    "timings.md": dict(caption="../report/timings.rst", category="Timings",
                       labels={"table": "Training time per epoch, relative to KD"}),
    "figures": dict(caption="../report/figures.rst", category="Figures", subcategory=_figure_group,
                    labels=_figure_labels, patterns=FIGURE_PATTERNS),
}
if GRID.paper_matrices:
    REPORT_FLAGS["ablations.csv"] = dict(caption="../report/ablations_csv.rst", category="Tables",
                                         labels={"table": "AFD paper's ablation tables, cells (CSV)"})


def output_pattern(kind):
    """The rule's outputs: the marker, plus the files a one-job kind (the report) shows in the HTML report."""
    folder = kind.folder.format(results=PLAN.results, reports=PLAN.reports,
                                **{name: f"{{{name}}}" for name in kind.wildcards})
    if kind.wildcards:
        # a job that trains in a pack is the pack rule's output, not this rule's (one rule per file)
        packed = sorted(job.fingerprint for job in PLAN.of_kind(kind.name) if job.fingerprint in PACKED)
        pattern = (f"(?!{'|'.join(packed)})" if packed else "") + "[0-9a-f]{16}"
        return folder, {"marker": f"{folder}/fingerprint-{{fingerprint,{pattern}}}.json"}
    (job,) = PLAN.of_kind(kind.name)
    outputs = {"marker": job.marker}
    for name, flags in REPORT_FLAGS.items():
        if name in kind.files:
            path = f"{folder}/{name}"
            outputs[name.replace(".", "_")] = report(path if "." in name else directory(path), **flags)
    return folder, outputs


def _builds_report_only(argv):
    """Whether this Snakemake command only builds the HTML report (`--report`), running no job."""
    asks = any(arg in ("--report", "--reporter") or arg.startswith(("--report=", "--reporter=")) for arg in argv)
    return asks and "--report-after-run" not in argv


# The report's rule graph draws one node per rule and level of the job graph, and a kind's jobs sit at
# different levels where they read different kinds (the plain student reads the data alone, KD a teacher, MHGD
# pretrained heads, AFD with pre-trained links a link-finding run): `distill` would be drawn three times.
# When Snakemake only builds the report (no job runs, nothing is compared with the jobs' recorded inputs),
# each job reads what any job of its kind reads, so every kind is one level and one node, with the edges of
# `snakemake --rulegraph`.
REPORT_ONLY = not workflow.remote_exec and _builds_report_only(sys.argv)


def rule_inputs(kind):
    if not REPORT_ONLY:
        return upstream_markers(kind.name)
    return sorted({upstream.marker for job in PLAN.of_kind(kind.name) for upstream in job.inputs.values()})


def launcher(kind):
    """How a job of this kind starts: ``afdistill``, or, for a training job over N GPUs, N ranks under torchrun
    (as torchvision's references start them) on N GPUs this job holds (afdistill with-gpus: a SLURM job's
    allocation, or N GPUs of this machine locked for the job's life)."""
    if not kind.trains or GPUS_PER_JOB <= 1:
        return "afdistill"
    return (f"afdistill with-gpus {GPUS_PER_JOB} "
            f"torchrun --standalone --nproc-per-node {GPUS_PER_JOB} -m afdistill")


def rule_priority(kind, pack=None):
    """Jobs of earlier kinds first when several are ready: a teacher before the students that need no teacher, so
    that the jobs waiting for it start as early as they can. Of one kind's packs, the costliest first: the
    longest does not start last (common.smk's balance assumes it)."""
    by_cost = sorted(PACKS, key=pack_cost)  # (a stable sort: ties keep the plan's order)
    rank = 1 + next(i for i, other in enumerate(by_cost) if other is pack) if pack is not None else 0
    return (len(KINDS) - list(KINDS).index(kind.name)) * 1000 + rank


for kind in KINDS.values():
    if not PLAN.of_kind(kind.name):
        continue  # this grid has no such job (no method reads links, say)
    folder, outputs = output_pattern(kind)

    rule:
        name:
            kind.rule
        input:
            rule_inputs(kind),
        output:
            **outputs,
        log:
            f"logs/{folder}.{{fingerprint}}.log" if kind.wildcards else f"logs/{folder}.log",
        params:
            folder=lambda wildcards, output: os.path.dirname(output.marker),
            job=job_of(kind.name),
        threads: THREADS_PER_JOB if kind.trains else 1
        resources:
            gpu=GPUS_PER_JOB if kind.trains else 0,
        priority: rule_priority(kind)
        shell:
            launcher(kind) + " run {params.folder} --job {params.job:q} --threads {threads} --log-file {log} > {log} 2>&1"

    rule:
        name:
            kind.target
        input:
            [job.marker for job in PLAN.of_kind(kind.name)],


def pack_name(pack):
    """A pack's rule: named by what its members share and who they are (the same in every Snakemake process of
    the run: a SLURM job's own Snakemake forms the same packs, unsplit, from the same missing markers)."""
    key = json.dumps([pack[0].kind.code.pack_key(pack[0]), sorted(job.folder for job in pack)], default=str)
    return f"{pack[0].kind.rule}_pack_{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# One rule per pack (common.smk's PACKS): its outputs are its members' markers; it takes one GPU slot and
# one SLURM job, as one job does, and its members' folders, files and MLflow runs are theirs alone.
for pack in PACKS:
    kind = pack[0].kind

    rule:
        name:
            pack_name(pack)
        input:
            sorted({upstream.marker for job in pack for upstream in job.inputs.values()}),
        output:
            [job.marker for job in pack],
        log:
            f"logs/packs/{pack_name(pack)}.log",
        params:
            folders=[job.folder for job in pack],
            jobs=[part for job in pack for part in ("--job", job.to_json())],
        threads: THREADS_PER_JOB
        resources:
            gpu=GPUS_PER_JOB,
        priority: rule_priority(kind, pack)
        shell:
            launcher(kind) + " run {params.folders:q} {params.jobs:q} --threads {threads} --log-file {log} > {log} 2>&1"
