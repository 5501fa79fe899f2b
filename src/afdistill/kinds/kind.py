"""What declares a job kind (see :mod:`afdistill.kinds`)."""

from __future__ import annotations

import importlib
import string
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Kind:
    name: str
    rule: str  # Snakemake rule that runs one job of this kind
    target: str  # Snakemake target rule and DVC stage running all jobs of this kind
    folder: str  # where a job writes, with the kind's wildcards in braces (and {results}, {reports})
    files: tuple[str, ...]  # what a job writes there, besides its fingerprint marker
    trains: bool  # a training job: takes a GPU slot when the grid runs on CUDA
    grid_keys: tuple[str, ...]  # grid keys its jobs read: DVC lists them as the stage's params
    doc: str
    module: str  # the module that expands, checks and runs its jobs

    @property
    def wildcards(self) -> list[str]:
        return [
            name
            for _, name, _, _ in string.Formatter().parse(self.folder)
            if name and name not in ("results", "reports")
        ]

    @property
    def code(self) -> ModuleType:
        return importlib.import_module(self.module)


def check_batch_split(grid, where: str, schedule) -> None:
    """A data-parallel job (``gpus_per_job: N``) splits each batch into N equal slices: refuse one that cannot."""
    from ..grid import GridError

    if grid.gpus_per_job > 1 and schedule.batch_size % grid.gpus_per_job:
        raise GridError(
            f"{where}.batch_size: {schedule.batch_size} does not split over gpus_per_job: "
            f"{grid.gpus_per_job} processes (each takes an equal slice of the global batch); use a "
            f"multiple of {grid.gpus_per_job}"
        )


def check_fit(
    grid, method: str, params: dict, where: str, *, student: str | None, teacher: str | None, batch_size: int | None
) -> None:
    """A method's hyper-parameters against the shapes of its networks and the dataset's size
    (:func:`afdistill.methods.check_method_fit`), as a grid error."""
    from ..data import DATASETS
    from ..grid import GridError
    from ..methods import check_method_fit

    info = DATASETS[grid.dataset]
    options = {
        f"{role}_options": grid.architectures.get(arch, {}) if arch else None
        for role, arch in (("student", student), ("teacher", teacher))
    }
    try:
        check_method_fit(
            method,
            params,
            where,
            student=student,
            teacher=teacher,
            batch_size=batch_size,
            num_classes=info.num_classes,
            image_size=info.image_size,
            n_train=info.n_train,
            **options,
        )
    except ValueError as error:
        raise GridError(str(error)) from None
