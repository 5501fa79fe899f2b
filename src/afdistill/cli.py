"""Command-line interface: what the Snakemake rules call, and what a person can call by hand.

    afdistill prepare --dataset digits --out data/digits
    afdistill train --grid params/default.yaml --teacher resnet20 --student resnet8 --run afd --seed 0 \\
        --data data/digits --teacher-checkpoint results/default/teachers/digits/resnet20/model.pt --out /tmp/afd
    afdistill report --grid params/default.yaml --out reports/default results/default/**/metrics.json
    afdistill list
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _print(*args) -> None:
    print(*args, flush=True)


def _load_grid(args):
    from .grid import Grid

    if getattr(args, "config_json", None):
        return Grid(json.loads(args.config_json), source="--config-json")
    if getattr(args, "grid", None):
        return Grid.from_file(args.grid)
    raise SystemExit("error: give --grid FILE (or --config-json)")


def cmd_prepare(args) -> None:
    from .data import prepare

    meta = prepare(args.dataset, args.out, root=args.root, download=args.download,
                   verify_checksums=not args.no_verify)
    _print(f"prepared {args.dataset}: {meta['n_train']} train / {meta['n_test']} test images in {args.out}")


def _spec_from_args(args):
    from .spec import JobSpec

    if args.spec:
        return JobSpec.from_json(args.spec)
    grid = _load_grid(args)
    if args.kind == "teacher":
        return grid.teacher_spec(args.teacher)
    if args.kind == "links":
        return grid.links_spec(args.teacher, args.student)
    if args.kind == "heads":
        return grid.heads_spec(args.teacher, args.run)
    if None in (args.student, args.run, args.seed):
        raise SystemExit("error: a student job needs --teacher, --student, --run and --seed")
    return grid.student_spec(args.teacher, args.student, args.run, args.seed)


def cmd_train(args) -> None:
    spec = _spec_from_args(args)
    # Validate everything cheap before touching CUDA, data or MLflow.
    from .methods import check_method_params, method_class

    check_method_params(spec.method, spec.method_params, f"{spec.title}: method_params")
    method = method_class(spec.method)
    if method.needs_artifact and not args.artifact:
        what = {"links": "the links stage's links.json", "heads": "the heads stage's model.pt"}[method.needs_artifact]
        raise SystemExit(f"error: {spec.title}: method {spec.method!r} needs --artifact ({what})")
    if (method.needs_teacher or spec.kind == "heads") and not args.teacher_checkpoint:
        raise SystemExit(f"error: {spec.title}: method {spec.method!r} needs --teacher-checkpoint")
    artifact = _load_artifact(method.needs_artifact, args.artifact, spec) if method.needs_artifact else None

    if spec.device != "cpu":
        from .gpu import claim

        gpu = claim(log=_print)
        if gpu is not None:
            _print(f"[{spec.title}] using GPU {gpu}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from . import tracking
    from .engine import train

    tracker = tracking.for_job(spec)
    try:
        result = train(spec, args.data, args.out, teacher_checkpoint=args.teacher_checkpoint, artifact=artifact,
                       tracker=tracker, log=_print)
        out = Path(args.out)
        if spec.kind == "links":
            from . import links as links_module

            links_module.write(result, out)
            for name in links_module.FILES:
                tracker.log_artifact(out / name)
        elif result.record["summaries"] and "attention" in result.record["summaries"][-1]:
            _log_attention_heatmap(result, out, tracker)
        tracker.log_artifact(out / "metrics.json")
        tracker.finish("FINISHED")
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    _print(f"[{spec.title}] done: test top-1 {result.record['test_top1']:.4f}")


def _load_artifact(stage: str, path: str, spec):
    if stage == "links":
        from .links import read

        return read(path, spec.teacher, spec.arch)
    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; run the heads stage for {spec.teacher} first")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("arch") != spec.teacher:
        raise ValueError(f"{path} holds heads pretrained on {state.get('arch')}, not on {spec.teacher}")
    return state["method"]


def _log_attention_heatmap(result, out: Path, tracker) -> None:
    """AFD students also keep a picture of their last epoch's mean links."""
    import numpy as np

    from .figures import plot_links

    spec = result.record["spec"]
    matrix = np.asarray(result.record["summaries"][-1]["attention"]).T
    path = out / "attention.png"
    plot_links([("last epoch (train mean)", matrix)], f"{spec['teacher']} -> {spec['arch']} {spec['run']}", path)
    tracker.log_artifact(path)


def cmd_report(args) -> None:
    from .report import build

    grid = _load_grid(args)
    result = build(grid, args.inputs, args.out)
    _print(f"report for grid {grid.name!r}: {len(result['metrics'])} cells -> {args.out}/table.md")


def cmd_init_tracking(args) -> None:
    from . import tracking

    experiment = tracking.init(args.experiment)
    _print(f"MLflow experiment {args.experiment!r} ({experiment}) at {tracking.tracking_uri()}")


def cmd_check(args) -> None:
    grid = _load_grid(args)
    _print(f"grid {grid.name!r} is valid: {len(grid.teachers())} teachers, {len(grid.link_pairs())} link runs, "
           f"{len(grid.heads_jobs())} heads runs, {len(grid.student_jobs())} student jobs")


def cmd_list(args) -> None:
    from .data import DATASETS
    from .methods import list_methods, method_defaults
    from .models import list_models

    _print("architectures: " + ", ".join(list_models()))
    _print("datasets: " + ", ".join(sorted(DATASETS)))
    _print("methods:")
    for name in list_methods():
        _print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in method_defaults(name).items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="afdistill", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="prepare a dataset into the on-disk training format")
    prepare.add_argument("--dataset", required=True)
    prepare.add_argument("--out", required=True)
    prepare.add_argument("--root", default="data/raw", help="where the CIFAR python archives are (or go)")
    prepare.add_argument("--download", action="store_true", help="download CIFAR if it is not under --root")
    prepare.add_argument("--no-verify", action="store_true", help="skip the CIFAR files' md5 check")
    prepare.set_defaults(func=cmd_prepare)

    train = commands.add_parser("train", help="train a teacher, a student, or a link-finding AFD run")
    train.add_argument("--spec", help="the job as JSON (what the pipeline passes)")
    train.add_argument("--grid", help="or: a grid file, with --kind/--teacher/--student/--run/--seed")
    train.add_argument("--config-json", help=argparse.SUPPRESS)
    train.add_argument("--kind", choices=["teacher", "student", "links", "heads"], default="student")
    train.add_argument("--teacher")
    train.add_argument("--student")
    train.add_argument("--run")
    train.add_argument("--seed", type=int)
    train.add_argument("--data", required=True, help="a prepared dataset directory")
    train.add_argument("--out", required=True, help="the job's output directory")
    train.add_argument("--teacher-checkpoint")
    train.add_argument("--artifact", help="the method's pre-stage output: links.json (afd_pretrained) or the "
                                          "heads stage's model.pt (mhgd)")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    train.set_defaults(func=cmd_train)

    report = commands.add_parser("report", help="tables and figures of a grid")
    report.add_argument("--grid")
    report.add_argument("--config-json")
    report.add_argument("--out", required=True)
    report.add_argument("inputs", nargs="+", help="metrics.json and links.json files of the grid's jobs")
    report.set_defaults(func=cmd_report)

    init = commands.add_parser("init-tracking", help="create the MLflow database and experiment")
    init.add_argument("--experiment", required=True)
    init.set_defaults(func=cmd_init_tracking)

    check = commands.add_parser("check", help="validate a grid file")
    check.add_argument("--grid")
    check.add_argument("--config-json")
    check.set_defaults(func=cmd_check)

    commands.add_parser("list", help="architectures, datasets and methods").set_defaults(func=cmd_list)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        _print("interrupted; rerun the same command to resume from the last checkpoint")
        sys.exit(130)
    except Exception as error:
        from .data import DataError
        from .engine import ResumeError
        from .grid import GridError
        from .models import UnknownNameError
        from .report import ReportError

        if isinstance(error, (GridError, DataError, ResumeError, UnknownNameError, ReportError, ValueError,
                               FileNotFoundError)):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
