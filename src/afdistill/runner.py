"""Running one job of a plan: what ``afdistill run <folder>`` does, and so what every pipeline rule does.

Each kind of :data:`afdistill.jobs.KINDS` has one action here. Every input is
checked before the expensive part starts (the grid was validated when the
plan was built; files are read through :mod:`afdistill.files`, which names
the file), and the job's fingerprint marker is written last, only after
everything else of the job is in place.
"""
from __future__ import annotations

import os

from pathlib import Path
from typing import Any, Callable

from .jobs import Job, Plan, write_marker
from .spec import JobSpec


class StaleJob(ValueError):
    """The grid or the code changed between planning a job and running it."""


def run(plan: Plan, folder: str, fingerprint: str | None = None, threads: int = 0, log=print,
        log_file: str | None = None) -> Job:
    try:
        job = plan.find(folder)
    except KeyError:
        folders = [job.folder for job in plan.jobs]
        raise ValueError(f"{folder} is not a job of grid {plan.grid.name!r} ({plan.grid.source}); "
                         f"its {len(folders)} jobs include {', '.join(folders[:3])}, ...") from None
    if fingerprint is not None and fingerprint != job.fingerprint:
        raise StaleJob(f"{folder}: the grid or the code changed since this job was planned (fingerprint "
                       f"{fingerprint}, now {job.fingerprint}); run snakemake again to plan it anew")
    ACTIONS[job.kind.name](plan, job, threads, log, log_file)
    if os.environ.get("RANK", "0") == "0":  # in a data-parallel job, rank 0 alone marks it done
        write_marker(job)
    return job


def prepare_data(plan: Plan, job: Job, threads: int, log, log_file: str | None = None) -> None:
    from .data import prepare

    grid = plan.grid
    meta = prepare(grid.dataset, job.folder, root=grid.data_root, download=grid.download,
                   verify_checksums=grid.verify_checksums, skip_corrupt=grid.skip_corrupt)
    log(f"prepared {grid.dataset}: {meta['n_train']} train / {meta['n_test']} test images in {job.folder}")


def _artifact_path(job: Job) -> str | None:
    if "links" in job.inputs:
        return job.inputs["links"].path("links.json")
    if "heads" in job.inputs:
        return job.inputs["heads"].path("model.pt")
    return None


def train_job(plan: Plan, job: Job, threads: int, log, log_file: str | None = None) -> None:
    gpus = plan.grid.gpus_per_job
    if gpus > 1 and "WORLD_SIZE" not in os.environ and _on_cuda(job.spec.device):
        _launch_data_parallel(job, gpus, log)
        return
    teacher = job.inputs["teacher"].path("model.pt") if "teacher" in job.inputs else None
    execute_training(job.spec, job.inputs["data"].folder, job.folder, teacher, _artifact_path(job), threads, log,
                     identity=job.fingerprint, jobs_per_gpu=plan.grid.jobs_per_gpu, row=_row_label(plan, job),
                     log_file=log_file)


def _row_label(plan: Plan, job: Job) -> str | None:
    """The table row a student fills, as the report prints it (a swept run's values beside its label)."""
    run = plan.grid.runs.get(job.spec.run) if job.spec.kind == "student" else None
    return run.row if run is not None else None


def _on_cuda(device: str) -> bool:
    from .gpu import visible_gpus

    return device == "cuda" or (device == "auto" and bool(visible_gpus()))


def _launch_data_parallel(job: Job, gpus: int, log) -> None:
    """The same command again, as ``gpus`` ranks under torchrun, on GPUs this job holds (SLURM's allocation,
    or ``gpus`` GPUs locked here); the ranks train, rank 0 writes (afdistill.distributed)."""
    import subprocess
    import sys

    from .gpu import claim

    held = claim(log=log, count=gpus)
    log(f"[{job.spec.title}] {gpus} processes under torchrun on GPUs {held or os.environ.get('CUDA_VISIBLE_DEVICES')}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "afdistill", *sys.argv[1:]]
    code = subprocess.run(command).returncode
    if code:
        raise RuntimeError(f"{job.folder}: the data-parallel job exited with status {code} (its log above)")


def build_report(plan: Plan, job: Job, threads: int, log, log_file: str | None = None) -> None:
    from .report import build

    inputs = [upstream.path("metrics.json") for upstream in job.inputs.values()]
    inputs += [upstream.path("links.json") for upstream in job.inputs.values() if upstream.kind.name == "links"]
    result = build(plan.grid, inputs, job.folder)
    _activation_figure(plan, Path(job.folder) / "figures", log)
    log(f"report for grid {plan.grid.name!r}: {len(result['metrics'])} cells -> {job.folder}/table.md")
    from . import tracking

    tracking.log_grid_report(plan.grid.name, job.folder)


def _activation_figure(plan: Plan, figures: Path, log) -> None:
    """The paper's Figure 4 for the first pair whose students include ATT, L2T or AFD runs (first seed each):
    ``figures/activation_maps_<teacher>_<student>.png``."""
    import json

    import torch

    from . import activation_maps
    from .data import DeviceData
    from .engine import load_network
    from .streaming import open_prepared

    students = [job for job in plan.of_kind("student") if job.spec.teacher and job.spec.method in activation_maps.METHODS]
    if not students:
        return
    teacher_arch, student_arch = students[0].spec.teacher, students[0].spec.arch
    chosen: dict[str, Job] = {}
    for job in students:  # per method type, its first run's lowest seed on this pair
        if (job.spec.teacher, job.spec.arch) == (teacher_arch, student_arch):
            best = chosen.get(job.spec.method)
            if best is None or (job.spec.run, job.spec.seed) < (best.spec.run, best.spec.seed):
                chosen[job.spec.method] = job
    data = open_prepared(plan.of_kind("data")[0].folder, "cpu")
    if not isinstance(data, DeviceData):
        log("activation maps: not drawn for a streamed dataset")
        return
    images = data.normalize(data.test.images[:3])
    teacher_job = students[0].inputs["teacher"]
    teacher = load_network(teacher_job.path("model.pt"), teacher_arch, None, torch.device("cpu"),
                           students[0].spec.teacher_options)
    teacher_maps = activation_maps.attention_maps(teacher, images)
    teacher_block_stage = activation_maps.stage_of_blocks(teacher, images)
    rows = [("Teacher", teacher_maps, None)]
    for method in activation_maps.METHODS:
        job = chosen.get(method)
        if job is None:
            continue
        student = load_network(job.path("model.pt"), student_arch, data.num_classes, torch.device("cpu"),
                               job.spec.model_options)
        maps = activation_maps.attention_maps(student, images)
        summaries = json.loads(Path(job.path("metrics.json")).read_text())["summaries"]
        linked = activation_maps.links(method, summaries[-1] if summaries else {}, len(teacher_maps), len(maps),
                                       teacher_block_stage, activation_maps.stage_of_blocks(student, images))
        rows.append((activation_maps.METHODS[method], maps, linked))
    shown = data.test.images[:3].float()
    shown = ((shown - shown.amin((1, 2, 3), keepdim=True))
             / (shown.amax((1, 2, 3), keepdim=True) - shown.amin((1, 2, 3), keepdim=True)).clamp_min(1e-12))
    path = figures / f"activation_maps_{teacher_arch}_{student_arch}.png"
    activation_maps.plot(rows, shown.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).numpy() if shown.shape[1] == 1
                         else shown.permute(0, 2, 3, 1).numpy(),
                         f"{teacher_arch} -> {student_arch} ({plan.grid.dataset}): AT maps of the stage outputs",
                         path)
    log(f"activation maps -> {path}")


#: kind -> action(plan, job, threads, log, log_file): the job's output goes to ``log`` and ends up in ``log_file``
ACTIONS: dict[str, Callable[[Plan, Job, int, Any, str | None], None]] = {
    "data": prepare_data, "teacher": train_job, "links": train_job, "heads": train_job, "student": train_job,
    "report": build_report,
}


def load_artifact(stage: str, path: str, spec: JobSpec):
    """What a method's pre-stage produced: a links record, or the state of the heads pretrained on the teacher."""
    from .files import load_torch

    if stage == "links":
        from .links import read

        return read(path, spec.teacher, spec.arch)
    state = load_torch(path, f"the heads pretrained on {spec.teacher}",
                       fix=f"rerun the heads stage for {spec.teacher}")
    if not isinstance(state, dict) or state.get("arch") != spec.teacher:
        raise ValueError(f"{path} holds heads pretrained on {state.get('arch') if isinstance(state, dict) else '?'}, "
                         f"not on {spec.teacher}")
    return state["method"]


def execute_training(spec: JobSpec, data_dir: str, out_dir: str, teacher_checkpoint: str | None,
                     artifact_path: str | None, threads: int = 0, log=print, identity: str | None = None,
                     jobs_per_gpu: int | None = None, row: str | None = None, log_file: str | None = None) -> dict:
    """Check the job's inputs, then train it under an MLflow run; returns its metrics record."""
    from .methods import check_method_params, method_class

    check_method_params(spec.method, spec.method_params, f"{spec.title}: method_params")
    stage = method_class(spec.method).pre_stage(spec.method_params)
    if stage and not artifact_path:
        what = {"links": "the links stage's links.json", "heads": "the heads stage's model.pt"}[stage]
        raise ValueError(f"{spec.title}: method {spec.method!r} needs --artifact ({what})")
    if spec.teacher and not teacher_checkpoint:
        raise ValueError(f"{spec.title}: method {spec.method!r} needs --teacher-checkpoint")
    artifact = load_artifact(stage, artifact_path, spec) if stage else None

    # Under torchrun (a data-parallel job) each rank uses the GPU of its local rank, and rank 0 alone
    # records the run and writes the job's files (afdistill.distributed).
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if spec.device != "cpu" and world_size == 1:
        from .gpu import claim

        gpu = claim(log=log, per_gpu=jobs_per_gpu)
        if gpu is not None:
            log(f"[{spec.title}] using GPU {gpu}")
    import torch

    if threads:
        torch.set_num_threads(threads)

    from . import tracking
    from .engine import NullTracker, train

    tracker = tracking.for_job(spec, job_id=identity, row=row) if rank == 0 else NullTracker()
    try:
        result = train(spec, data_dir, out_dir, teacher_checkpoint=teacher_checkpoint, artifact=artifact,
                       tracker=tracker, log=log, identity=identity)
        out = Path(out_dir)
        if rank != 0:
            return result.record
        if spec.kind == "links":
            from . import links as links_module

            links_module.write(result, out)
            for name in links_module.FILES:
                tracker.log_artifact(out / name)
        elif result.record["summaries"] and "attention" in result.record["summaries"][-1]:
            _log_attention_heatmap(result, out, tracker)
        tracker.log_artifact(out / "metrics.json")
        if spec.arch is None:  # a method's own networks (MHGD's heads): no images -> logits model to log
            tracker.log_artifact(out / "model.pt")
        if log_file and Path(log_file).is_file():  # the job's output so far: all of it but these last lines
            tracker.log_artifact(log_file)
        tracker.finish("FINISHED")
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    top1 = result.record.get("test_top1")
    log(f"[{spec.title}] done" + (f": test top-1 {top1:.4f}" if top1 is not None else ""))
    return result.record


def _log_attention_heatmap(result, out: Path, tracker) -> None:
    """AFD students also keep a picture of their last epoch's mean links."""
    import numpy as np

    from .figures import plot_links

    spec = result.record["spec"]
    matrix = np.asarray(result.record["summaries"][-1]["attention"]).T
    path = out / "attention.png"
    plot_links([("last epoch (train mean)", matrix)], f"{spec['teacher']} -> {spec['arch']} {spec['run']}", path,
               teacher_names=result.record["summaries"][-1].get("teacher_names"),
               student_names=result.record["summaries"][-1].get("student_names"))
    tracker.log_artifact(path)
