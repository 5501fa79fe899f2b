"""The report kind: the grid's tables, figures, DVC metrics and plots, from its jobs' metrics files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import code
from . import data
from .kind import Kind

if TYPE_CHECKING:
    import numpy as np

    from ..grid import Grid
    from ..jobs import Job, Plan

KIND = Kind(
    "report",
    "make_report",
    "report",
    "{reports}",
    ("table.md", "table.csv", "ablations.csv", "table.html", "timings.md", "metrics", "curves", "figures"),
    False,
    ("grid", "dataset", "seeds", "pairs", "methods", "report"),
    "The grid's tables (Markdown, CSV, HTML; the ablation tables' cells in ablations.csv), the measured "
    "timings apart (timings.md), DVC metrics (a file per cell) and plots (curves/), and figures, from the "
    "jobs' metrics files.",
    __name__,
)

#: the kinds whose jobs the report reads
REPORTED = ("teacher", "links", "student")


def check(grid: Grid) -> None:
    """The report section (paper tables, ablation matrices) is checked by the grid's parse."""


def expand(plan: Plan) -> None:
    reported = [job for kind in REPORTED for job in plan.of_kind(kind)]
    plan.add(
        KIND,
        {},
        {job.folder: job for job in reported},
        code.closure(["afdistill.report", __name__]),
        payload={"grid": plan.grid.config},
        settings={"source": plan.grid.source, "data": data.of(plan).folder},
    )


def run(job: Job, threads: int, log, log_file: str | None = None) -> None:
    from .. import tracking
    from ..grid import Grid
    from ..report import build

    grid = Grid(job.payload["grid"], source=job.settings["source"])  # checked when the pipeline planned it
    inputs = [upstream.path("metrics.json") for upstream in job.inputs.values()]
    inputs += [upstream.path("links.json") for upstream in job.inputs.values() if upstream.kind.name == "links"]
    result = build(grid, inputs, job.folder)
    _activation_figure(job, grid.dataset, Path(job.folder) / "figures", log)
    log(f"report for grid {grid.name!r}: {len(result['metrics'])} cells -> {job.folder}/table.md")
    tracking.log_grid_report(grid.name, job.folder)


def _activation_figure(job: Job, dataset: str, figures: Path, log) -> None:
    """The paper's Figure 4 for the first pair whose students include ATT, L2T or AFD runs (first seed each):
    ``figures/activation_maps_<teacher>_<student>.png``."""
    import torch

    from .. import activation_maps
    from ..data import DeviceData
    from ..engine import load_network
    from ..streaming import open_prepared

    records = {
        folder: json.loads(Path(upstream.path("metrics.json")).read_text())
        for folder, upstream in job.inputs.items()
        if upstream.kind.name in ("teacher", "student")
    }
    students = [
        (folder, r)
        for folder, r in records.items()
        if r["spec"]["kind"] == "student" and r["spec"]["teacher"] and r["spec"]["method"] in activation_maps.METHODS
    ]
    if not students:
        return
    first = students[0][1]["spec"]
    teacher_arch, student_arch = first["teacher"], first["arch"]
    chosen: dict[str, tuple[str, dict]] = {}
    for folder, record in students:  # per method type, its first run's lowest seed on this pair
        spec = record["spec"]
        if (spec["teacher"], spec["arch"]) == (teacher_arch, student_arch):
            best = chosen.get(spec["method"])
            if best is None or (spec["run"], spec["seed"]) < (best[1]["spec"]["run"], best[1]["spec"]["seed"]):
                chosen[spec["method"]] = (folder, record)
    prepared = open_prepared(job.settings["data"], "cpu")
    if not isinstance(prepared, DeviceData):
        log("activation maps: not drawn for a streamed dataset")
        return
    images = prepared.normalize(prepared.test.images[:3])
    teacher_folder = next(
        folder for folder, r in records.items() if r["spec"]["kind"] == "teacher" and r["spec"]["arch"] == teacher_arch
    )
    teacher = load_network(
        f"{teacher_folder}/model.pt", teacher_arch, None, torch.device("cpu"), first["teacher_options"]
    )
    teacher_maps = activation_maps.attention_maps(teacher, images)
    teacher_block_stage = activation_maps.stage_of_blocks(teacher, images)
    rows: list[tuple[str, list[np.ndarray], list[int] | None]] = [("Teacher", teacher_maps, None)]
    for method in activation_maps.METHODS:
        if method not in chosen:
            continue
        folder, record = chosen[method]
        student = load_network(
            f"{folder}/model.pt",
            student_arch,
            prepared.num_classes,
            torch.device("cpu"),
            record["spec"]["model_options"],
        )
        maps = activation_maps.attention_maps(student, images)
        summaries = record["summaries"]
        linked = activation_maps.links(
            method,
            summaries[-1] if summaries else {},
            len(teacher_maps),
            len(maps),
            teacher_block_stage,
            activation_maps.stage_of_blocks(student, images),
        )
        rows.append((activation_maps.METHODS[method], maps, linked))
    shown = prepared.test.images[:3].float()
    shown = (shown - shown.amin((1, 2, 3), keepdim=True)) / (
        shown.amax((1, 2, 3), keepdim=True) - shown.amin((1, 2, 3), keepdim=True)
    ).clamp_min(1e-12)
    path = figures / f"activation_maps_{teacher_arch}_{student_arch}.png"
    activation_maps.plot(
        rows,
        shown.permute(0, 2, 3, 1).expand(-1, -1, -1, 3).numpy()
        if shown.shape[1] == 1
        else shown.permute(0, 2, 3, 1).numpy(),
        f"{teacher_arch} -> {student_arch} ({dataset}): AT maps of the stage outputs",
        path,
    )
    log(f"activation maps -> {path}")
