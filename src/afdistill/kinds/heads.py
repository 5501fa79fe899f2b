"""The heads kind: a method's own network trained on the frozen teacher before distillation (MHGD's
multi-head attention network, FT's paraphraser), one per teacher and run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..grid import GridError, schedule_over
from ..spec import JobSpec, Schedule
from . import data, teacher
from .kind import Kind, check_batch_split, check_fit

if TYPE_CHECKING:
    from ..grid import Grid
    from ..jobs import Job, Plan

KIND = Kind(
    "heads",
    "pretrain_heads",
    "heads",
    "{results}/heads/{dataset}/{teacher}/{run}",
    ("model.pt", "metrics.json"),
    True,
    ("device", "runtime", "train", "heads", "methods", "pairs"),
    "Train a method's own network on the frozen teacher before distillation (MHGD's multi-head attention).",
    __name__,
)


def jobs(grid: Grid) -> list[tuple[str, str]]:
    """(teacher, run) of every network a method pretrains on a teacher."""
    found = [(p.teacher, run) for p in grid.pairs for run in p.runs if grid.run_needs(run) == KIND.name]
    return list(dict.fromkeys(found))


def schedule(grid: Grid, run: str) -> Schedule:
    """The schedule of the network run ``run`` pretrains on its teacher: the grid's, with its method's
    pre-stage recipe (its capabilities' ``heads.train``: MHGD's attention network 20 epochs at a fixed lr, FT's
    paraphraser RepDistiller's 30 at 0.01), the grid's ``heads.train`` and the entry's own ``heads_train:`` over it."""
    entry = grid.runs[run]
    over = schedule_over(grid.schedule, dict(_heads(grid, run).train), f"{entry.method}.heads_train")
    over = schedule_over(over, grid.heads_train, "heads.train")
    return schedule_over(over, grid.runs[run].heads_train, f"methods.{grid.runs[run].group}.heads_train")


def _heads(grid: Grid, run: str):
    """The network a run pretrains on its teacher (:class:`afdistill.methods.Heads`)."""
    from ..methods import method_class

    entry = grid.runs[run]
    return method_class(entry.method).capabilities(entry.params).heads


def _method(grid: Grid, run: str) -> tuple[str, dict]:
    """The type of the network a run pretrains, and the run's hyper-parameters it shares."""
    heads = _heads(grid, run)
    return heads.method, {k: v for k, v in grid.runs[run].params.items() if k in heads.shared_params}


def spec(grid: Grid, teacher_arch: str, run: str) -> JobSpec:
    if (teacher_arch, run) not in jobs(grid):
        raise GridError(f"{grid.source}: no heads are pretrained for {teacher_arch} and run {run!r}")
    method, params = _method(grid, run)
    return JobSpec(
        kind="heads",
        grid=grid.name,
        dataset=grid.dataset,
        arch=None,
        teacher=teacher_arch,
        method=method,
        run=run,
        seed=grid.heads_seed,
        schedule=schedule(grid, run),
        method_params=params,
        device=grid.device,
        runtime=grid.runtime,
        teacher_options=grid.architectures.get(teacher_arch, {}),
    )


def check(grid: Grid) -> None:
    for teacher_arch, run in jobs(grid):
        check_batch_split(grid, f"heads ({run}) train", schedule(grid, run))
        method, params = _method(grid, run)
        check_fit(
            grid,
            method,
            params,
            f"methods.{run} (its heads on {teacher_arch})",
            student=None,
            teacher=teacher_arch,
            batch_size=schedule(grid, run).batch_size,
        )


def expand(plan: Plan) -> None:
    grid = plan.grid
    for teacher_arch, run in jobs(grid):
        inputs = {"data": data.of(plan), "teacher": teacher.of(plan, teacher_arch)}
        plan.add_training(
            KIND, spec(grid, teacher_arch, run), inputs, dataset=grid.dataset, teacher=teacher_arch, run=run
        )


def of(plan: Plan, teacher_arch: str, run: str) -> Job:
    return plan.by_wildcards(KIND.name, {"dataset": plan.grid.dataset, "teacher": teacher_arch, "run": run})


OUTPUT = "model.pt"  # what a reading job's method loads (:func:`read`)


def read(path: str, spec: JobSpec):
    """The state of the heads pretrained on the teacher, as the student that reads them needs it."""
    from ..files import load_torch

    state = load_torch(path, f"the heads pretrained on {spec.teacher}", fix=f"rerun the heads stage for {spec.teacher}")
    if not isinstance(state, dict) or state.get("arch") != spec.teacher:
        raise ValueError(
            f"{path} holds heads pretrained on {state.get('arch') if isinstance(state, dict) else '?'}, "
            f"not on {spec.teacher}"
        )
    return state["method"]


def pack_key(job: Job) -> tuple:
    """Heads with equal keys train as one pack, as students do (:func:`afdistill.kinds.student.pack_key`): MHGD's
    attention network and FT's paraphraser on one teacher read its features of the same batches once."""
    from ..engine import pack_key as batches_and_teacher

    assert job.spec is not None  # a heads job is a training job
    return (job.inputs["data"].folder, job.inputs["teacher"].folder, batches_and_teacher(job.spec))


def run(job: Job, threads: int, log, log_file: str | None = None) -> None:
    from ..training import train_job

    train_job(job, threads, log, log_file, after=_log_heads)


def run_pack(jobs: list[Job], threads: int, log, log_file: str | None = None) -> list:
    """Train heads of one pack together; each one's metrics record, or the error that ended it."""
    from ..training import train_jobs

    return train_jobs(jobs, threads, log, log_file, after=_log_heads)


def _log_heads(result, out, tracker) -> None:
    """A method's own networks map features, not images to logits: their file is the run's model artifact."""
    tracker.log_artifact(out / "model.pt")
