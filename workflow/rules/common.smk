# Configuration: one grid file (params/*.yaml), validated before any job starts, and the plan of its jobs.
import os
import sys

import yaml
from snakemake.utils import min_version

from afdistill import tracking
from afdistill.gpu import visible_gpus
from afdistill.grid import NO_TEACHER, Grid, GridError
from afdistill.jobs import Plan, balance, pack_cost, packs, preflight
from afdistill.kinds import KINDS
from afdistill.watch import GridWatch

min_version("9.0")

# The grid is params/default.yaml, or the one file `--configfile` names. It is read alone, never merged
# into the default grid (Snakemake's `configfile:` would merge), and must name itself with `grid:`.
_configfiles = [os.path.relpath(path) for path in workflow.config_settings.configfiles]
if len(_configfiles) > 1:
    raise WorkflowError(f"give one grid file with --configfile, not {len(_configfiles)}: {', '.join(_configfiles)}")
GRID_FILE = _configfiles[0] if _configfiles else "params/default.yaml"
with open(GRID_FILE) as _handle:
    _grid_config = yaml.safe_load(_handle) or {}
# `--config key=value` overrides a grid key (the SLURM profile sets device=cuda); jobs get the same overrides.
# A value is read as YAML, as `afdistill --set` reads it: Snakemake leaves `pack=false` the string "false".
OVERRIDES = {key: yaml.safe_load(value) if isinstance(value, str) else value
             for key, value in workflow.config_settings.config.items()}
_grid_config.update(OVERRIDES)
if "pack" in _grid_config:  # `--config pack=false`: short for the grid's runtime.pack
    _grid_config["runtime"] = {**(_grid_config.get("runtime") or {}), "pack": _grid_config.pop("pack")}
# The grid is checked here, once, before any job: parsed against its declaration (afdistill.grid.SCHEMA, from
# which workflow/schemas/config.schema.yaml is generated), then each job kind's checks as the plan is made.
# Every job gets its planned, checked record on its command line and never reads the grid again.
GRID = Grid(_grid_config, source=GRID_FILE)
PLAN = Plan(GRID)
WATCH = GridWatch(PLAN, interval=float(os.environ.get("AFDISTILL_PROGRESS_INTERVAL", 60)))
config["grid"] = GRID.name  # for the HTML report's caption

# A training job takes one GPU slot when it will run on CUDA; the default profile caps
# `gpu` at 1 and `--resources gpu=N` raises it. With `jobs_per_gpu: k` each GPU has k
# slots (`--resources gpu=<GPUs x k>`); k is not in any job's fingerprint, so changing it
# reruns nothing.
ON_GPU = GRID.device == "cuda" or (GRID.device == "auto" and bool(visible_gpus()))
# `gpus_per_job: N` (grid): each training job runs as N data-parallel processes under torchrun, which its
# rule starts (jobs.smk).
GPUS_PER_JOB = GRID.gpus_per_job if ON_GPU else 0
# On CPU every training job is one torch thread, so `--cores N` runs N jobs at once; on CUDA two per GPU.
THREADS_PER_JOB = 2 * GPUS_PER_JOB if ON_GPU else 1


wildcard_constraints:
    dataset=GRID.dataset,
    teacher="|".join(GRID.teachers() + [NO_TEACHER]),
    student="|".join(dict.fromkeys(pair.student for pair in GRID.pairs)),
    run="|".join(GRID.runs),
    seed=r"\d+",
    fingerprint="[0-9a-f]{16}",


def upstream_markers(kind):
    """Input function of a kind's rule: the markers of the jobs that the job with these wildcards reads."""
    return lambda wildcards: [upstream.marker for upstream in PLAN.by_wildcards(kind, wildcards).inputs.values()]


def job_of(kind):
    """The job with these wildcards as its process receives it (afdistill.jobs.Job.to_json)."""
    return lambda wildcards: PLAN.by_wildcards(kind, wildcards).to_json()


def _submits_to_slurm(argv):
    """Whether this Snakemake command submits to SLURM (through profiles/slurm or `--executor slurm`)."""
    pairs = list(zip(argv, argv[1:]))
    return any(flag in ("--profile", "--executor", "-e") and "slurm" in value for flag, value in pairs) or any(
        arg.startswith(("--profile=", "--executor=")) and "slurm" in arg for arg in argv)


if not workflow.remote_exec and _submits_to_slurm(sys.argv) and "--workflow-profile" not in sys.argv:
    # Snakemake merges the workflow profile (profiles/default, for local runs) into every run, and its
    # gpu=1 would let the whole cluster run one GPU job at a time; a profile cannot turn that off.
    raise WorkflowError("a SLURM run must not load profiles/default (its gpu=1 caps the cluster at one GPU job "
                        "at a time): add --workflow-profile none, e.g. snakemake --profile profiles/slurm "
                        "--workflow-profile none")

def _dry_run(argv):
    return workflow.dryrun or any(a in ("--dry-run", "--dryrun") or (a[:1] == "-" and a[1:2] != "-" and "n" in a)
                                  for a in argv[1:])


if not workflow.remote_exec:
    # Before any job: the raw archive is there, and, where jobs run on this machine, it can run them. A dry
    # run (listing the jobs before downloading anything) only warns.
    try:
        preflight(PLAN, jobs_run_here=not _submits_to_slurm(sys.argv))
    except GridError as _error:
        if not _dry_run(sys.argv):
            raise WorkflowError(str(_error)) from None
        print(f"warning: {_error} (a run that is not a dry run stops here)", file=sys.stderr)

if not workflow.remote_exec:
    # A marker whose job lost some of its files (deleted by hand) no longer stands for a finished job.
    for _job in PLAN.unmark_incomplete():
        print(f"{_job.folder}: some of its files are missing; it will run again", file=sys.stderr)


def pending_packs():
    """With runtime.pack (the default): the packs of two or more jobs still to run (their markers missing as
    Snakemake starts), each trained in one process (afdistill.engine.train_pack). A pack is formed of what is
    outdated only, so a changed method retrains its own students, never their finished pack-mates."""
    if not GRID.pack:
        return []
    pending = [job for job in PLAN.jobs if not os.path.exists(job.marker)]
    grouped = packs(pending)
    if not ON_GPU and not workflow.remote_exec and not _submits_to_slurm(sys.argv):
        # On this machine's CPU cores, one pack holding most of the grid would leave the other cores idle: split
        # packs over the jobs that run at once (each part computes the teacher's forward once).
        grouped = balance(grouped, max(1, (workflow.cores or 1) // THREADS_PER_JOB))
    return [pack for pack in grouped if len(pack) > 1]


PACKS = pending_packs()
PACKED = {job.fingerprint for pack in PACKS for job in pack}


onstart:
    # MLflow's tracking server on ./mlflow.db for this invocation (unless MLFLOW_TRACKING_URI names one): one
    # writer for every job, artifacts under ./mlartifacts (tracking.serve). The jobs inherit its URI and the
    # grid's parent run, which holds this invocation's job runs and the report.
    global MLFLOW_SERVER
    MLFLOW_SERVER = tracking.serve(os.getcwd(), public=_submits_to_slurm(sys.argv))
    tracking.start_grid(GRID.name, grid_file=GRID_FILE, config=_grid_config)
    # The grid's progress (jobs done, running, time left) on this terminal, beside Snakemake's job lines.
    WATCH.start()


onsuccess:
    WATCH.stop()
    tracking.finish_grid("FINISHED")
    tracking.stop(globals().get("MLFLOW_SERVER"))


onerror:
    WATCH.stop()
    try:
        tracking.finish_grid("FAILED")
    finally:
        tracking.stop(globals().get("MLFLOW_SERVER"))
