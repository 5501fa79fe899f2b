# Configuration: one grid file (params/*.yaml), validated before any job starts.
import json
import os

from snakemake.utils import min_version, validate

from afdistill.gpu import visible_gpus
from afdistill.grid import NO_TEACHER, Grid

min_version("9.0")

# `--configfile params/<grid>.yaml` replaces the default grid rather than being
# merged into it (a `configfile:` directive would merge the two).
if "grid" not in config:

    configfile: "params/default.yaml"


validate(config, "../schemas/config.schema.yaml")
GRID = Grid(config, source="config")

RESULTS = f"results/{GRID.name}"
REPORTS = f"reports/{GRID.name}"
DATA = "data/{dataset}"

# A training job takes one GPU slot when it will run on CUDA; the default profile caps
# `gpu` at 1 and `--resources gpu=N` raises it. With `jobs_per_gpu: k` each GPU has k
# slots (`--resources gpu=<GPUs x k>`); the jobs read k from the environment, so changing
# it reruns nothing.
ON_GPU = GRID.device == "cuda" or (GRID.device == "auto" and bool(visible_gpus()))
GPUS_PER_JOB = 1 if ON_GPU else 0
os.environ["AFDISTILL_JOBS_PER_GPU"] = str(GRID.jobs_per_gpu)
# On CPU every training job is one torch thread, so `--cores N` runs N jobs at once.
THREADS_PER_JOB = 2 if ON_GPU else 1


wildcard_constraints:
    dataset=GRID.dataset,
    teacher="|".join(GRID.teachers() + [NO_TEACHER]),
    student="|".join(dict.fromkeys(pair.student for pair in GRID.pairs)),
    run="|".join(GRID.runs),
    seed=r"\d+",


def data_files(dataset):
    return {name: f"data/{dataset}/{name}" for name in ("train.npz", "test.npz", "meta.json")}


def teacher_model(teacher, dataset=GRID.dataset):
    return f"{RESULTS}/teachers/{dataset}/{teacher}/model.pt"


def links_file(teacher, student, dataset=GRID.dataset):
    return f"{RESULTS}/links/{dataset}/{teacher}/{student}/links.json"


def student_dir(teacher, student, run, seed, dataset=GRID.dataset):
    return f"{RESULTS}/students/{dataset}/{teacher}/{student}/{run}/seed{seed}"


def student_inputs(wildcards):
    """Data always; the teacher for methods that use one; the output of the method's pre-stage, if any
    (AFD links for afd_pretrained, the pretrained attention network for MHGD)."""
    inputs = data_files(wildcards.dataset)
    if wildcards.teacher != NO_TEACHER:
        inputs["teacher"] = teacher_model(wildcards.teacher, wildcards.dataset)
    artifact = GRID.artifact(wildcards.teacher, wildcards.student, wildcards.run)
    if artifact is not None:
        stage, job_dir = artifact
        inputs["artifact"] = f"{RESULTS}/{job_dir}/" + ("links.json" if stage == "links" else "model.pt")
    return inputs


def optional_flag(flag, key):
    """`--flag <input.key>` when the job has that input."""
    return lambda wildcards, input: f"{flag} {input[key]}" if key in input.keys() else ""


ALL_TEACHER_METRICS = [f"{RESULTS}/teachers/{GRID.dataset}/{t}/metrics.json" for t in GRID.teachers()]
ALL_LINKS = [links_file(p.teacher, p.student) for p in GRID.link_pairs()]
ALL_HEADS = [f"{RESULTS}/heads/{GRID.dataset}/{teacher}/{run}/model.pt" for teacher, run in GRID.heads_jobs()]
ALL_STUDENT_METRICS = [
    f"{student_dir(teacher, student, run, seed)}/metrics.json" for teacher, student, run, seed in GRID.student_jobs()
]


onstart:
    # Create the MLflow database and experiment once, before concurrent jobs race to.
    shell(f"afdistill init-tracking --experiment {GRID.name}")
