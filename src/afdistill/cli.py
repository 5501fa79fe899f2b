"""Command-line interface: what the Snakemake rules call, and what a person can call by hand.

afdistill check --grid params/default.yaml            # validate a grid, count its jobs
afdistill jobs --grid params/default.yaml              # every job folder, with its state
afdistill run --grid params/default.yaml results/default/students/digits/resnet20/resnet8/afd/seed0
afdistill dvc --grid params/default.yaml              # (re)write the grid's DVC pipeline
afdistill schema                                       # (re)write the grid schema Snakemake validates
afdistill prepare --dataset digits --out data/digits
afdistill list
afdistill combine reports/transfer_cub200 reports/transfer_mit67 --out reports/transfer   # Table 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def _print(*args) -> None:
    print(*args, flush=True)


def _set(config: dict, assignment: str) -> None:
    """Apply ``key.sub=value`` (the value read as YAML) to a grid config."""
    key, separator, value = assignment.partition("=")
    if not separator or not key:
        raise SystemExit(f"error: --set expects KEY=VALUE, got {assignment!r}")
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SystemExit(f"error: --set {assignment}: {part} is not a mapping in the grid")
    node[last] = yaml.safe_load(value)


def _load_grid(args):
    from .grid import Grid, GridError

    if not getattr(args, "grid", None):
        raise SystemExit("error: give --grid FILE")
    path = Path(args.grid)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    for assignment in getattr(args, "set", None) or []:
        _set(config, assignment)
    return Grid(config, source=str(path))


def _plan(args):
    """The grid's plan: the grid parsed and every kind's checks passed (the edge: nothing is checked again)."""
    from .jobs import Plan

    return Plan(_load_grid(args))


SCHEMA_FILE = Path("workflow/schemas/config.schema.yaml")


def cmd_combine(args) -> None:
    from .report import combine

    lines = combine(args.reports, args.out, args.title)
    _print("\n".join(lines))
    _print(f"{args.out}/table.md, {args.out}/table.csv: written")


def cmd_schema(args) -> None:
    from .grid import schema_yaml

    text = schema_yaml()
    current = SCHEMA_FILE.read_text() if SCHEMA_FILE.is_file() else None
    if args.check:
        if current != text:
            raise SystemExit(f"error: {SCHEMA_FILE} is out of date; run `afdistill schema`")
    elif current != text:
        SCHEMA_FILE.write_text(text)
    _print(f"{SCHEMA_FILE}: {'up to date' if current == text else 'written' if not args.check else 'stale'}")


def cmd_prepare(args) -> None:
    from .data import prepare

    meta = prepare(
        args.dataset,
        args.out,
        root=args.root,
        download=args.download,
        verify_checksums=not args.no_verify,
        stored_shorter_side=args.stored_shorter_side,
        skip_corrupt=args.skip_corrupt,
    )
    _print(f"prepared {args.dataset}: {meta['n_train']} train / {meta['n_test']} test images in {args.out}")


def cmd_train(args) -> None:
    from .kinds.student import PRE_STAGES
    from .methods import check_method_params, method_class
    from .spec import JobSpec
    from .training import execute_training

    # The spec as JSON, or the path of a JSON file holding it (shorter commands).
    spec = JobSpec.from_json(args.spec if args.spec.lstrip().startswith("{") else Path(args.spec).read_text())
    check_method_params(spec.method, spec.method_params, f"{spec.title}: method_params")
    stage = method_class(spec.method).capabilities(spec.method_params).pre_stage
    if stage and not args.artifact:
        what = f"the {stage} stage's {PRE_STAGES[stage].OUTPUT}"
        raise ValueError(f"{spec.title}: method {spec.method!r} needs --artifact ({what})")
    artifact = PRE_STAGES[stage].read(args.artifact, spec) if stage else None
    execute_training(spec, args.data, args.out, args.teacher_checkpoint, artifact, args.threads, _print)


def cmd_run(args) -> None:
    from .jobs import Job
    from .runner import find, run_pack

    if args.job_json:
        jobs = [Job.from_json(text) for text in args.job_json]
        folders = [folder.rstrip("/") for folder in args.folder]
        if folders and folders != [job.folder for job in jobs]:
            raise ValueError(
                f"afdistill run {' '.join(args.folder)}: --job names the jobs in "
                f"{', '.join(job.folder for job in jobs)}, not these folders"
            )
    elif args.grid and args.folder:
        plan = _plan(args)
        jobs = [find(plan, folder, fingerprint=args.fingerprint) for folder in args.folder]
    else:
        raise SystemExit("error: give the job's folder with --grid FILE (`afdistill jobs` lists them)")
    run_pack(jobs, threads=args.threads, log=_print, log_file=args.log_file)
    for job in jobs:
        _print(f"{job.folder}: done ({job.fingerprint})")
    wall = _process_seconds()
    if wall is not None:  # what benchmarks/overhead.py reads from the jobs' logs
        _print(f"process wall time: {wall:.2f} s for {len(jobs)} job(s)")


def _process_seconds() -> float | None:
    """Seconds since this process started, the interpreter's start-up included (Linux's /proc; else None)."""
    import os

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cmd_with_gpus(args) -> None:
    """Hold ``count`` GPUs of this machine for the command's life (under SLURM, its allocation), then run it."""
    import os
    import subprocess

    from .gpu import claim

    held = claim(log=_print, count=args.count)
    _print(f"GPUs {held or os.environ.get('CUDA_VISIBLE_DEVICES')}: {' '.join(args.command)}")
    code = subprocess.run(args.command).returncode
    if code:
        raise SystemExit(code)


def cmd_jobs(args) -> None:
    from .watch import survey

    current = survey(_plan(args))
    for job in current.plan.jobs:
        if args.kind and job.kind.name != args.kind:
            continue
        _print(f"{job.kind.name:8} {current.states[job.folder]:22} {job.folder}")
    _print(current.line())
    _print(current.cost())


def cmd_dvc(args) -> None:
    from .dvc import pipeline_path, write_pipeline

    plan = _plan(args)
    grid = plan.grid
    changed = write_pipeline(plan, args.grid, check=args.check)
    path = pipeline_path(grid)
    if args.check and changed:
        raise SystemExit(f"error: {path} is out of date with {args.grid}; run `afdistill dvc --grid {args.grid}`")
    _print(f"{path}: {'written' if changed else 'up to date'}")


def cmd_init_tracking(args) -> None:
    from . import tracking

    experiment = tracking.init(args.experiment)
    name = tracking.experiment_name(args.experiment)
    _print(f"MLflow experiment {name!r} ({experiment}) at {tracking.tracking_uri()}")


def cmd_check(args) -> None:
    from .jobs import preflight
    from .kinds import KINDS

    plan = _plan(args)
    preflight(plan, jobs_run_here=not args.elsewhere)
    counts = ", ".join(f"{len(plan.of_kind(kind))} {kind}" for kind in KINDS)
    _print(f"grid {plan.grid.name!r} is valid: {len(plan.jobs)} jobs ({counts})")
    from .watch import survey

    _print(survey(plan).cost())


def cmd_list(args) -> None:
    from .data import DATASETS
    from .methods import describe_method, list_methods
    from .models import list_models, model_options

    _print("architectures: " + ", ".join(list_models()))
    for arch in list_models():
        if model_options(arch):
            _print(f"  {arch} options: " + ", ".join(f"{k}={v!r}" for k, v in model_options(arch).items()))
    _print("datasets: " + ", ".join(sorted(DATASETS)))
    _print("methods (hyper-parameter, default, allowed values):")
    for name in list_methods():
        rows = describe_method(name)
        _print(f"  {name}:" + ("" if rows else " (no hyper-parameters)"))
        width = max((len(param) for param, _, _ in rows), default=0)
        for param, default, allowed in rows:
            _print(f"    {param:<{width}}  {default!r:<8}  {allowed}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="afdistill", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def with_grid(command):
        command.add_argument("--grid", required=True, help="the grid file (params/*.yaml)")
        command.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a grid key (dotted path, YAML value), as Snakemake's --config does",
        )
        return command

    run = commands.add_parser(
        "run", help="run one job of a grid, named by its folder; several jobs of one pack train together"
    )
    run.add_argument(
        "folder",
        nargs="*",
        help="the job's folder, e.g. results/default/teachers/digits/resnet20 (`afdistill jobs` lists them); "
        "students (or heads) that read the same data, teacher and batches (`afdistill jobs` shows their pack) "
        "may be named together and train as one pack",
    )
    run.add_argument("--grid", help="the grid file (params/*.yaml) the job belongs to")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a grid key (dotted path, YAML value), as Snakemake's --config does",
    )
    run.add_argument("--fingerprint", help="refuse to run if the job's fingerprint is no longer this one")
    run.add_argument(
        "--job",
        dest="job_json",
        action="append",
        help="the job as the pipeline planned it (JSON; what the rules pass); once per job of a pack",
    )
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    run.add_argument("--log-file", help="the file this job's output goes to (the rule's log): kept with its MLflow run")
    run.set_defaults(func=cmd_run)

    gpus = commands.add_parser(
        "with-gpus",
        help="hold N GPUs of this machine while a command runs (the rule of a "
        "multi-GPU job: afdistill with-gpus N torchrun ...)",
    )
    gpus.add_argument("count", type=int)
    gpus.add_argument("command", nargs=argparse.REMAINDER)
    gpus.set_defaults(func=cmd_with_gpus)

    jobs = with_grid(commands.add_parser("jobs", help="list a grid's jobs with their state (done, running, to run)"))
    jobs.add_argument("--kind", help="only jobs of this kind")
    jobs.set_defaults(func=cmd_jobs)

    check = with_grid(commands.add_parser("check", help="validate a grid file and count its jobs"))
    check.add_argument(
        "--elsewhere",
        action="store_true",
        help="the jobs run on other machines (a cluster): skip the checks of this machine's devices",
    )
    check.set_defaults(func=cmd_check)

    dvc = with_grid(commands.add_parser("dvc", help="write the grid's DVC pipeline (dvc.yaml or pipelines/<grid>/)"))
    dvc.add_argument("--check", action="store_true", help="fail if the pipeline file is out of date; write nothing")
    dvc.set_defaults(func=cmd_dvc)

    schema = commands.add_parser("schema", help="write the grid schema Snakemake validates against (from the code)")
    schema.add_argument("--check", action="store_true", help="fail if the schema file is out of date")
    schema.set_defaults(func=cmd_schema)

    prepare = commands.add_parser("prepare", help="prepare a dataset into the on-disk training format")
    prepare.add_argument("--dataset", required=True)
    prepare.add_argument("--out", required=True)
    prepare.add_argument("--root", default="data/raw", help="where the dataset's archive is unpacked (or goes)")
    prepare.add_argument("--download", action="store_true", help="download CIFAR if it is not under --root")
    prepare.add_argument("--no-verify", action="store_true", help="skip the CIFAR files' md5 check")
    prepare.add_argument(
        "--stored-shorter-side",
        type=int,
        metavar="N",
        help="streamed sets: store a JPEG copy with its shorter side at most N (faster to decode)",
    )
    prepare.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="image archives: leave out images that do not decode (listed in corrupt_images.tsv)",
    )
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train one job from its spec (JSON), outside any grid")
    train.add_argument("--spec", required=True, help="the job (afdistill.spec.JobSpec) as JSON, or a JSON file")
    train.add_argument("--data", required=True, help="a prepared dataset directory")
    train.add_argument("--out", required=True, help="the job's output directory")
    train.add_argument("--teacher-checkpoint")
    train.add_argument(
        "--artifact",
        help="the method's pre-stage output: links.json (afd_pretrained) or the heads stage's model.pt (mhgd)",
    )
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    train.set_defaults(func=cmd_train)

    init = commands.add_parser(
        "init-tracking",
        help="create the MLflow database and a grid's experiment, "
        "its artifacts relative to ./mlartifacts as the pipeline's server makes them",
    )
    init.add_argument("--experiment", required=True)
    init.set_defaults(func=cmd_init_tracking)

    combine = commands.add_parser(
        "combine",
        help="one table from several grids' reports, a column per grid "
        "(the AFD paper's Table 3 from the four transfer grids)",
    )
    combine.add_argument("reports", nargs="+", help="report folders, e.g. reports/transfer_cub200")
    combine.add_argument("--out", required=True, help="where table.md and table.csv go")
    combine.add_argument("--title", default="Combined reports")
    combine.set_defaults(func=cmd_combine)

    commands.add_parser("list", help="architectures, datasets and methods").set_defaults(func=cmd_list)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        _print("interrupted; rerun the same command to resume from the last checkpoint")
        sys.exit(130)
    except Exception as error:
        from .archives import ArchiveError
        from .data import DataError
        from .engine import TrainingDiverged
        from .files import FileProblem
        from .grid import GridError
        from .models import UnknownNameError
        from .report import ReportError

        if isinstance(
            error,
            (
                GridError,
                DataError,
                UnknownNameError,
                ReportError,
                ValueError,
                FileNotFoundError,
                FileProblem,
                TrainingDiverged,
                ArchiveError,
            ),
        ):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
