"""The links kind: a link-finding AFD run per pair whose runs read pre-trained links (``linking: pretrained``).

It writes the converged attention (student x teacher candidates) and a heatmap like the AFD paper's
Figure 3 (:mod:`afdistill.links`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..grid import GridError, Pair, merge_params
from ..spec import JobSpec
from . import data, teacher
from .kind import Kind, check_batch_split, check_fit

if TYPE_CHECKING:
    from ..grid import Grid
    from ..jobs import Job, Plan

KIND = Kind(
    "links",
    "find_links",
    "links",
    "{results}/links/{dataset}/{teacher}/{student}",
    ("model.pt", "metrics.json", "links.json", "links.csv", "links.png"),
    True,
    ("device", "runtime", "train", "architectures", "links", "pairs"),
    "A link-finding AFD run; writes its converged attention (S x T) and a heatmap like the paper's Figure 3.",
    __name__,
)

#: the method that learns the links (AFD's attention); the grid's ``links.params`` are its hyper-parameters
METHOD = "afd"


def pairs(grid: Grid) -> list[Pair]:
    """Pairs that need a link-finding run (some run of the grid reads its links)."""
    return [p for p in grid.pairs if any(grid.run_needs(run) == KIND.name for run in p.runs)]


def params(grid: Grid, pair: Pair) -> dict:
    """The link-finding run's hyper-parameters on ``pair``: ``links.params``, the pair's ``methods.links`` over."""
    return merge_params(grid.links_params, pair.overrides.get("links"))


def spec(grid: Grid, teacher_arch: str, student: str) -> JobSpec:
    pair = grid.pair(teacher_arch, student)
    return JobSpec(
        kind="links",
        grid=grid.name,
        dataset=grid.dataset,
        arch=student,
        method=METHOD,
        run="links",
        seed=grid.links_seed,
        schedule=grid.links_schedule,
        method_params=params(grid, pair),
        teacher=teacher_arch,
        device=grid.device,
        runtime=grid.runtime,
        model_options=grid.architectures.get(student, {}),
        teacher_options=grid.architectures.get(teacher_arch, {}),
    )


def _check_params(values: dict, where: str) -> None:
    from ..methods import check_method_params

    try:
        check_method_params(METHOD, values, where)
    except ValueError as error:
        raise GridError(str(error)) from None
    if values.get("linking", "afd") != "afd":
        raise GridError(
            f"{where}.linking: {values['linking']!r} is not allowed; the links run learns its links "
            f"(linking: afd) for the runs with linking: pretrained to read; a run with fixed links "
            f"is a methods entry"
        )


def check(grid: Grid) -> None:
    """``links.params`` and each pair's ``methods.links`` as AFD's hyper-parameters, AFD's fit on every pair
    that needs links, and the runs reading them choose the same candidate blocks."""
    from ..methods import method_class, method_defaults
    from ..methods.afd import AFD

    _check_params(grid.links_params, "links.params")
    for index, pair in enumerate(grid.pairs):
        if "links" in pair.overrides:
            _check_params(params(grid, pair), f"pairs[{index}].methods.links")
    if not pairs(grid):
        return
    check_batch_split(grid, "links.train", grid.links_schedule)
    for pair in pairs(grid):
        links = params(grid, pair)
        check_fit(
            grid,
            METHOD,
            links,
            "links.params",
            student=pair.student,
            teacher=pair.teacher,
            batch_size=grid.links_schedule.batch_size,
        )
        links = {**method_defaults(METHOD), **links}
        for name in pair.runs:
            if grid.run_needs(name) != KIND.name:
                continue
            method, own = grid.runs[name].method, grid.run_params(pair, name)
            reader = getattr(method_class(method), "pre_stage_part", None)
            if reader is not None:  # a combination: the part that reads the links
                _, method, own = reader(own)
            own = {**method_defaults(method), **own}
            for key in AFD.link_params:
                if own.get(key) != links.get(key):
                    raise GridError(
                        f"methods.{grid.runs[name].group}.{key}: {own.get(key)!r} on "
                        f"{pair.teacher} -> {pair.student}, but the links run it reads uses "
                        f"{links.get(key)!r}; a run with pre-trained links shares "
                        f"{', '.join(AFD.link_params)} with links.params"
                    )


def expand(plan: Plan) -> None:
    grid = plan.grid
    for pair in pairs(grid):
        inputs = {"data": data.of(plan), "teacher": teacher.of(plan, pair.teacher)}
        plan.add_training(
            KIND,
            spec(grid, pair.teacher, pair.student),
            inputs,
            dataset=grid.dataset,
            teacher=pair.teacher,
            student=pair.student,
        )


def of(plan: Plan, teacher_arch: str, student: str) -> Job:
    return plan.by_wildcards(KIND.name, {"dataset": plan.grid.dataset, "teacher": teacher_arch, "student": student})


def read(path: str, spec: JobSpec):
    """A links job's output, as the student that reads it needs it."""
    from ..links import read as read_links

    return read_links(path, spec.teacher, spec.arch)


OUTPUT = "links.json"  # what a reading job's method loads (:func:`read`)


def run(job: Job, threads: int, log, log_file: str | None = None) -> None:
    from .. import links as links_files
    from ..training import train_job

    def write_links(result, out, tracker) -> None:
        links_files.write(result, out)
        for name in links_files.FILES:
            tracker.log_artifact(out / name)

    train_job(job, threads, log, log_file, after=write_links)
