"""The teacher kind: a teacher pretrained with cross-entropy, or a published checkpoint evaluated."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..grid import GridError
from ..spec import JobSpec
from . import data
from .kind import Kind, check_batch_split

if TYPE_CHECKING:
    from ..grid import Grid
    from ..jobs import Job, Plan

KIND = Kind(
    "teacher",
    "train_teacher",
    "teachers",
    "{results}/teachers/{dataset}/{teacher}",
    ("model.pt", "metrics.json"),
    True,
    ("device", "runtime", "train", "architectures", "teachers", "pairs"),
    "Pretrain a teacher with cross-entropy (or evaluate a published checkpoint named in the grid).",
    __name__,
)


def spec(grid: Grid, arch: str) -> JobSpec:
    if arch not in grid.teachers():
        raise GridError(f"{grid.source}: {arch} is not a teacher of grid {grid.name!r}")
    checkpoint = grid.teacher_checkpoints.get(arch)
    # A published checkpoint is evaluated, not trained; weights of another task (init) are fine-tuned.
    schedule = replace(grid.teacher_schedule, epochs=0) if checkpoint else grid.teacher_schedule
    return JobSpec(
        kind="teacher",
        grid=grid.name,
        dataset=grid.dataset,
        arch=arch,
        method="vanilla",
        run="teacher",
        seed=grid.teacher_seed,
        schedule=schedule,
        device=grid.device,
        checkpoint=checkpoint or grid.teacher_init.get(arch),
        new_classifier=arch in grid.teacher_init,
        runtime=grid.runtime,
        model_options=grid.architectures.get(arch, {}),
    )


def check(grid: Grid) -> None:
    check_batch_split(grid, "train", grid.schedule)
    check_batch_split(grid, "teachers.train", grid.teacher_schedule)


def expand(plan: Plan) -> None:
    grid, inputs = plan.grid, {"data": data.of(plan)}
    for arch in grid.teachers():
        plan.add_training(KIND, spec(grid, arch), inputs, dataset=grid.dataset, teacher=arch)


def run(job: Job, threads: int, log, log_file: str | None = None) -> None:
    from ..training import train_job

    train_job(job, threads, log, log_file)


def of(plan: Plan, arch: str) -> Job:
    return plan.by_wildcards(KIND.name, {"dataset": plan.grid.dataset, "teacher": arch})
