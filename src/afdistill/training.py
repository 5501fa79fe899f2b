"""One training job in its process: inputs checked, GPU claimed, trained under its MLflow run.

What every training kind's ``run`` calls (:mod:`afdistill.kinds`), and ``afdistill train`` by hand.
Under torchrun (``gpus_per_job: N``, launched by the pipeline's rule) each rank uses the GPU of its
local rank, and rank 0 alone records the run and writes the job's files (:mod:`afdistill.distributed`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .spec import JobSpec

#: what a kind does with a finished training result before its run is closed: (result, out folder, tracker)
After = Callable[[Any, Path, Any], None]


def train_job(
    job, threads: int, log, log_file: str | None = None, after: After | None = None, artifact: Any = None
) -> dict:
    """Train a planned job (:class:`afdistill.jobs.Job`) from its inputs' files; ``artifact``: what its method's
    pre-stage produced, read by the kind that knows it (:mod:`afdistill.kinds.student`)."""
    teacher = job.inputs["teacher"].path("model.pt") if "teacher" in job.inputs else None
    return execute_training(
        job.spec,
        job.inputs["data"].folder,
        job.folder,
        teacher,
        artifact,
        threads,
        log,
        identity=job.fingerprint,
        jobs_per_gpu=job.settings.get("jobs_per_gpu"),
        row=job.settings.get("row"),
        log_file=log_file,
        after=after,
    )


def execute_training(
    spec: JobSpec,
    data_dir: str,
    out_dir: str,
    teacher_checkpoint: str | None,
    artifact: Any,
    threads: int = 0,
    log=print,
    identity: str | None = None,
    jobs_per_gpu: int | None = None,
    row: str | None = None,
    log_file: str | None = None,
    after: After | None = None,
) -> dict:
    """Train a checked spec under an MLflow run; returns its metrics record. ``artifact`` is what its method's
    pre-stage produced (links, pretrained heads), already read."""
    from . import distributed
    from .methods import method_class

    stage = method_class(spec.method).capabilities(spec.method_params).pre_stage
    if stage and artifact is None:
        raise ValueError(f"{spec.title}: method {spec.method!r} reads the {stage} stage's output, and none was given")
    if spec.teacher and not teacher_checkpoint:
        raise ValueError(f"{spec.title}: method {spec.method!r} needs a teacher checkpoint")

    rank = distributed.from_environment().rank
    if spec.device != "cpu" and not distributed.from_environment().active:
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
        result = train(
            spec,
            data_dir,
            out_dir,
            teacher_checkpoint=teacher_checkpoint,
            artifact=artifact,
            tracker=tracker,
            log=log,
            identity=identity,
        )
        if rank != 0:
            return result.record
        out = Path(out_dir)
        if after is not None:
            after(result, out, tracker)
        tracker.log_artifact(out / "metrics.json")
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
