"""Training jobs in their process: inputs checked, GPU claimed, each trained under its MLflow run.

What every training kind's ``run`` calls (:mod:`afdistill.kinds`), and ``afdistill train`` by hand. Several
jobs that read the same batches and teacher train as one pack (:func:`afdistill.engine.train_pack`); one job
is a pack of one. Under torchrun (``gpus_per_job: N``, launched by the pipeline's rule) each rank uses the GPU
of its local rank, and rank 0 alone records the runs and writes the jobs' files (:mod:`afdistill.distributed`).
"""

from __future__ import annotations

from dataclasses import replace
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
    (outcome,) = train_jobs([job], threads, log, log_file, after, [artifact])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def train_jobs(
    jobs: list, threads: int, log, log_file: str | None = None, after: After | None = None, artifacts=None
) -> list[dict | Exception]:
    """Train planned jobs of one pack (same data, teacher, seed and batches) in this process; returns each
    one's metrics record, or the error that ended it while the others trained on."""
    from .engine import Member

    first = jobs[0]
    members = [
        Member(job.spec, Path(job.folder), artifact, identity=job.fingerprint)
        for job, artifact in zip(jobs, artifacts or [None] * len(jobs))
    ]
    return _train(
        members,
        first.inputs["data"].folder,
        first.inputs["teacher"].path("model.pt") if "teacher" in first.inputs else None,
        threads,
        log,
        rows=[job.settings.get("row") for job in jobs],
        jobs_per_gpu=first.settings.get("jobs_per_gpu"),
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
) -> dict:
    """Train a checked spec under an MLflow run (``afdistill train``); returns its metrics record. ``artifact``
    is what its method's pre-stage produced (links, pretrained heads), already read."""
    from .engine import Member

    member = Member(spec, Path(out_dir), artifact, identity=identity)
    (outcome,) = _train([member], data_dir, teacher_checkpoint, threads, log, rows=[None])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _train(
    members: list,
    data_dir: str,
    teacher_checkpoint: str | None,
    threads: int,
    log,
    rows: list[str | None],
    jobs_per_gpu: int | None = None,
    log_file: str | None = None,
    after: After | None = None,
) -> list[dict | Exception]:
    from . import distributed, tracking
    from .engine import NullTracker, train_pack
    from .methods import method_class

    for member in members:
        spec = member.spec
        stage = method_class(spec.method).capabilities(spec.method_params).pre_stage
        if stage and member.artifact is None:
            raise ValueError(
                f"{spec.title}: method {spec.method!r} reads the {stage} stage's output, and none was given"
            )
        if spec.teacher and not teacher_checkpoint:
            raise ValueError(f"{spec.title}: method {spec.method!r} needs a teacher checkpoint")

    rank = distributed.from_environment().rank
    if members[0].spec.device != "cpu" and not distributed.from_environment().active:
        from .gpu import claim

        gpu = claim(log=log, per_gpu=jobs_per_gpu)
        if gpu is not None:
            log(
                f"[{members[0].spec.title}] using GPU {gpu}"
                + (f" with {len(members) - 1} more jobs" if len(members) > 1 else "")
            )
    import torch

    if threads:
        torch.set_num_threads(threads)

    members = [
        replace(m, tracker=tracking.for_job(m.spec, job_id=m.identity, row=row) if rank == 0 else NullTracker())
        for m, row in zip(members, rows)
    ]
    try:
        outcomes = train_pack(members, data_dir, teacher_checkpoint, log)
    except KeyboardInterrupt:
        for member in members:
            member.tracker.finish("KILLED")
        raise
    except BaseException:
        for member in members:
            member.tracker.finish("FAILED")
        raise
    records: list[dict | Exception] = []
    for member, outcome in zip(members, outcomes):
        if isinstance(outcome, Exception):
            member.tracker.finish("FAILED")
            records.append(outcome)
            continue
        if rank == 0:
            try:
                _close(member, outcome, after, log_file)
            except Exception as error:
                member.tracker.finish("FAILED")
                if len(members) == 1:
                    raise
                records.append(error)
                continue
        top1 = outcome.record.get("test_top1")
        log(f"[{member.spec.title}] done" + (f": test top-1 {top1:.4f}" if top1 is not None else ""))
        records.append(outcome.record)
    return records


def _close(member, result, after: After | None, log_file: str | None) -> None:
    """A finished job's last files and artifacts, then its run is closed."""
    out = member.out_dir
    if after is not None:
        after(result, out, member.tracker)
    member.tracker.log_artifact(out / "metrics.json")
    if log_file and Path(log_file).is_file():  # the job's output so far: all of it but these last lines
        member.tracker.log_artifact(log_file)
    member.tracker.finish("FINISHED")
