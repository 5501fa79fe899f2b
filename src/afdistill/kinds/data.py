"""The data kind: a dataset prepared once (uint8 arrays and ``meta.json``), the input of every training job."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import code
from .kind import Kind

if TYPE_CHECKING:
    from ..grid import Grid
    from ..jobs import Job, Plan

KIND = Kind(
    "data",
    "prepare_data",
    "data",
    "data/{dataset}",
    ("meta.json",),
    False,  # and the dataset's own files
    ("dataset", "data"),
    "Prepared dataset (uint8 arrays + meta.json), the input of every training job.",
    __name__,
)


def check(grid: Grid) -> None:
    """The grid's parse checked the dataset's name and the data section; the archive is checked by
    :func:`afdistill.jobs.preflight`, where the pipeline starts."""


def expand(plan: Plan) -> None:
    grid = plan.grid
    plan.add(
        KIND,
        {"dataset": grid.dataset},
        {},
        code.closure(["afdistill.data"]),
        payload={"dataset": grid.dataset},
        settings={
            "root": grid.data_root,
            "download": grid.download,
            "verify_checksums": grid.verify_checksums,
            "skip_corrupt": grid.skip_corrupt,
        },
    )


def of(plan: Plan) -> Job:
    """The grid's one data job."""
    (job,) = plan.of_kind(KIND.name)
    return job


def run(job: Job, threads: int, log, log_file: str | None = None) -> None:
    from ..data import prepare

    dataset, settings = job.payload["dataset"], job.settings
    meta = prepare(
        dataset,
        job.folder,
        root=settings["root"],
        download=settings["download"],
        verify_checksums=settings["verify_checksums"],
        skip_corrupt=settings["skip_corrupt"],
    )
    log(f"prepared {dataset}: {meta['n_train']} train / {meta['n_test']} test images in {job.folder}")
