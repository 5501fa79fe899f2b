"""The student kind: one student trained with one method and seed, a cell entry of the table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..grid import NO_TEACHER, GridError, local_weights
from ..spec import JobSpec
from . import data, heads, links, teacher
from .kind import Kind, check_batch_split, check_fit

if TYPE_CHECKING:
    from ..grid import Grid
    from ..jobs import Job, Plan

KIND = Kind(
    "student",
    "distill",
    "students",
    "{results}/students/{dataset}/{teacher}/{student}/{run}/seed{seed}",
    ("model.pt", "metrics.json"),
    True,
    ("device", "runtime", "seeds", "train", "architectures", "pairs", "methods"),
    "Train one student with one method and seed: a cell entry of the table.",
    __name__,
)

#: the kinds whose output a student's method may read (its pre-stage): kind name -> module
PRE_STAGES = {links.KIND.name: links, heads.KIND.name: heads}


def needs_teacher(grid: Grid, run: str) -> bool:
    from ..methods import method_class

    entry = grid.runs[run]
    return method_class(entry.method).capabilities(entry.params).needs_teacher


def teacher_of(grid: Grid, teacher_arch: str, run: str) -> str:
    """The teacher path segment of a run's jobs: ``none`` for a method that trains without one."""
    return teacher_arch if needs_teacher(grid, run) else NO_TEACHER


def jobs(grid: Grid) -> list[tuple[str, str, str, int]]:
    """(teacher, student, run, seed) of every student job. Methods that use no teacher (the plain
    student) train once per student architecture, under the teacher name ``none``."""
    found = [
        (teacher_of(grid, p.teacher, run), p.student, run, seed)
        for p in grid.pairs
        for run in p.runs
        for seed in grid.runs[run].seeds
    ]
    return list(dict.fromkeys(found))


def spec(grid: Grid, teacher_arch: str, student: str, run: str, seed: int) -> JobSpec:
    if run not in grid.runs:
        raise GridError(f"{grid.source}: no run {run!r}; allowed: {', '.join(grid.runs)}")
    entry = grid.runs[run]
    if teacher_arch == NO_TEACHER:
        if needs_teacher(grid, run):
            raise GridError(f"{grid.source}: run {run!r} needs a teacher")
        pairs = [p for p in grid.pairs if p.student == student]
        if not pairs:
            raise GridError(f"{grid.source}: {student} is not a student of grid {grid.name!r}")
        params, schedule = entry.params, grid.run_schedule(pairs[0], run)
    else:
        pair = grid.pair(teacher_arch, student)
        if run not in pair.runs:
            raise GridError(f"{grid.source}: run {run!r} is not listed for {teacher_arch} -> {student}")
        params, schedule = grid.run_params(pair, run), grid.run_schedule(pair, run)
    return JobSpec(
        kind="student",
        grid=grid.name,
        dataset=grid.dataset,
        arch=student,
        method=entry.method,
        run=run,
        seed=int(seed),
        schedule=schedule,
        method_params=params,
        teacher=None if teacher_arch == NO_TEACHER else teacher_arch,
        device=grid.device,
        runtime=grid.runtime,
        model_options=grid.architectures.get(student, {}),
        checkpoint=local_weights(entry.init, f"methods.{entry.group}.init") if entry.init else None,
        new_classifier=entry.init is not None,
        teacher_options={} if teacher_arch == NO_TEACHER else grid.architectures.get(teacher_arch, {}),
    )


def check(grid: Grid) -> None:
    """Every run on every pair it trains on: its batch splits over the job's GPUs, and its method fits the
    pair's networks and the dataset (hint layers, negatives, stage widths)."""
    for index, pair in enumerate(grid.pairs):
        for name in pair.runs:
            check_batch_split(grid, f"pairs[{index}] ({grid.runs[name].group}) train", grid.run_schedule(pair, name))
    for pair in grid.pairs:
        for name in pair.runs:
            where = f"methods.{name}" + (f" (pair {pair.teacher} -> {pair.student})" if len(grid.pairs) > 1 else "")
            check_fit(
                grid,
                grid.runs[name].method,
                grid.run_params(pair, name),
                where,
                student=pair.student,
                teacher=pair.teacher if needs_teacher(grid, name) else None,
                batch_size=grid.run_schedule(pair, name).batch_size,
            )


def expand(plan: Plan) -> None:
    grid = plan.grid
    for teacher_arch, student, run, seed in jobs(grid):
        inputs = {"data": data.of(plan)}
        if teacher_arch != NO_TEACHER:
            inputs["teacher"] = teacher.of(plan, teacher_arch)
        stage = grid.run_needs(run)
        if stage == links.KIND.name:
            inputs[stage] = links.of(plan, teacher_arch, student)
        elif stage == heads.KIND.name:
            inputs[stage] = heads.of(plan, teacher_arch, run)
        plan.add_training(
            KIND,
            spec(grid, teacher_arch, student, run, seed),
            inputs,
            settings={"row": grid.runs[run].row},
            dataset=grid.dataset,
            teacher=teacher_arch,
            student=student,
            run=run,
            seed=str(seed),
        )


def pack_key(job: Job) -> tuple:
    """Students with equal keys train as one pack (:func:`afdistill.engine.train_pack`): they read the same
    prepared data and teacher, and the same batches in the same order (seed, batch size, a strong view or not)."""
    from ..engine import pack_key as batches_and_teacher

    teacher_job = job.inputs.get("teacher")
    assert job.spec is not None  # a student is a training job
    return (job.inputs["data"].folder, teacher_job.folder if teacher_job else None, batches_and_teacher(job.spec))


def run(job: Job, threads: int, log, log_file: str | None = None) -> None:
    from ..training import train_job

    train_job(job, threads, log, log_file, after=log_attention, artifact=_artifact(job))


def run_pack(jobs: list[Job], threads: int, log, log_file: str | None = None) -> list:
    """Train students of one pack together; each one's metrics record, or the error that ended it."""
    from ..training import train_jobs

    return train_jobs(jobs, threads, log, log_file, after=log_attention, artifacts=[_artifact(job) for job in jobs])


def _artifact(job: Job):
    """What the job's method's pre-stage produced (links, pretrained heads), read; None without one."""
    stage = next((role for role in job.inputs if role in PRE_STAGES), None)
    return PRE_STAGES[stage].read(job.inputs[stage].path(PRE_STAGES[stage].OUTPUT), job.spec) if stage else None


def log_attention(result, out, tracker) -> None:
    """AFD students also keep a picture of their last epoch's mean links."""
    import numpy as np

    from ..figures import plot_links
    from ..methods.afd import AttentionRecord

    summaries = result.record["summaries"]
    last = AttentionRecord.of(summaries[-1] if summaries else None)
    if last is None or last.attention is None:
        return
    spec = result.record["spec"]
    path = out / "attention.png"
    plot_links(
        [("last epoch (train mean)", np.asarray(last.attention).T)],
        f"{spec['teacher']} -> {spec['arch']} {spec['run']}",
        path,
        teacher_names=last.teacher_names,
        student_names=last.student_names,
    )
    tracker.log_artifact(path)
