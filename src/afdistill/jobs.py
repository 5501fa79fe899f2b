"""The pipeline's job kinds, declared once, and the jobs a grid expands to.

Snakemake's rules and targets (``workflow/rules/jobs.smk``), the DVC
pipelines (``afdistill dvc``) and the report's inputs are all derived from
:data:`KINDS` and :class:`Plan`; nothing else lists a kind's folder, files or
inputs.

Every job has a **fingerprint**: a hash of what decides its result (its spec,
or the dataset for data and the grid for the report), of the code it runs
(``afdistill.code``: the modules its computation imports) and of the
fingerprints of the jobs it reads. A finished job writes
``fingerprint-<hash>.json`` into its folder last. Snakemake asks for that
file, so a job whose inputs, parameters or code changed is simply missing and
runs, from tracked content alone: no timestamps, no ``.snakemake/`` metadata
(which a fresh clone or a DVC experiment's workspace does not have).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import code
from .grid import NO_TEACHER, Grid
from .spec import JobSpec

MARKER = "fingerprint-{fingerprint}.json"


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

    @property
    def wildcards(self) -> list[str]:
        import string

        return [name for _, name, _, _ in string.Formatter().parse(self.folder)
                if name and name not in ("results", "reports")]


#: In pipeline order. A kind's jobs read only jobs of earlier kinds.
KINDS: dict[str, Kind] = {kind.name: kind for kind in [
    Kind("data", "prepare_data", "data", "data/{dataset}", ("meta.json",), False,  # and the dataset's own files
         ("dataset", "data"),
         "Prepared dataset (uint8 arrays + meta.json), the input of every training job."),
    Kind("teacher", "train_teacher", "teachers", "{results}/teachers/{dataset}/{teacher}", ("model.pt", "metrics.json"),
         True, ("device", "runtime", "train", "architectures", "teachers", "pairs"),
         "Pretrain a teacher with cross-entropy (or evaluate a published checkpoint named in the grid)."),
    Kind("links", "find_links", "links", "{results}/links/{dataset}/{teacher}/{student}",
         ("model.pt", "metrics.json", "links.json", "links.csv", "links.png"), True,
         ("device", "runtime", "train", "architectures", "links", "pairs"),
         "A link-finding AFD run; writes its converged attention (S x T) and a heatmap like the paper's Figure 3."),
    Kind("heads", "pretrain_heads", "heads", "{results}/heads/{dataset}/{teacher}/{run}", ("model.pt", "metrics.json"),
         True, ("device", "runtime", "train", "heads", "methods", "pairs"),
         "Train a method's own network on the frozen teacher before distillation (MHGD's multi-head attention)."),
    Kind("student", "distill", "students", "{results}/students/{dataset}/{teacher}/{student}/{run}/seed{seed}",
         ("model.pt", "metrics.json"), True, ("device", "runtime", "seeds", "train", "architectures", "pairs",
                                              "methods"),
         "Train one student with one method and seed: a cell entry of the table."),
    Kind("report", "make_report", "report", "{reports}",
         ("table.md", "table.csv", "ablations.csv", "table.html", "timings.md", "metrics", "curves", "figures"), False,
         ("grid", "dataset", "seeds", "pairs", "methods", "report"),
         "The grid's tables (Markdown, CSV, HTML; the ablation tables' cells in ablations.csv), the measured "
         "timings apart (timings.md), DVC metrics (a file per cell) and plots (curves/), and figures, from the "
         "jobs' metrics files."),
]}


@dataclass(frozen=True, eq=False)
class Job:
    kind: Kind
    wildcards: dict[str, str]
    folder: str
    inputs: dict[str, "Job"]  # role -> the job whose outputs this one reads
    modules: tuple[str, ...]  # the package modules that compute it
    spec: JobSpec | None = None  # training jobs
    payload: dict[str, Any] = field(default_factory=dict)  # what else decides the result (data, report)

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """What the fingerprint hashes; written into the marker so a person can see what ran."""
        return {"kind": self.kind.name, "folder": self.folder,
                "spec": self.spec.to_dict() if self.spec else None, "payload": self.payload,
                "code": code.fingerprint(list(self.modules)),
                "inputs": {role: job.fingerprint for role, job in sorted(self.inputs.items())}}

    @property
    def marker(self) -> str:
        return f"{self.folder}/" + MARKER.format(fingerprint=self.fingerprint)

    def outputs(self) -> list[str]:
        return [f"{self.folder}/{name}" for name in self.kind.files] + [self.marker]

    def path(self, name: str) -> str:
        return f"{self.folder}/{name}"


def _sha256(path: str) -> str | None:
    file = Path(path)
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None


class Plan:
    """Every job of one grid, with its inputs and fingerprint."""

    def __init__(self, grid: Grid, results: str | None = None, reports: str | None = None):
        from .methods import method_class
        from .models.registry import model_factory

        self.grid = grid
        self.results = results or f"results/{grid.name}"
        self.reports = reports or f"reports/{grid.name}"
        self.jobs: list[Job] = []
        engine = code.closure(["afdistill.engine"])

        def training(kind: str, spec: JobSpec, inputs: dict[str, Job], **wildcards) -> Job:
            methods = method_class(spec.method).methods_used(spec.method_params)
            named = [code.defining_module(method_class(name)) for name in methods]
            named += [code.defining_module(model_factory(arch)) for arch in (spec.arch, spec.teacher) if arch]
            modules = code.closure(engine + named + (["afdistill.links"] if kind == "links" else []))
            payload = {"checkpoint_sha256": _sha256(spec.checkpoint)} if spec.checkpoint else {}
            return self._add(kind, wildcards, inputs, modules, spec, payload)

        data = self._add("data", {"dataset": grid.dataset}, {}, code.closure(["afdistill.data"]),
                         payload={"dataset": grid.dataset})
        teachers = {arch: training("teacher", grid.teacher_spec(arch), {"data": data}, dataset=grid.dataset,
                                   teacher=arch) for arch in grid.teachers()}
        links = {(p.teacher, p.student): training("links", grid.links_spec(p.teacher, p.student),
                                                  {"data": data, "teacher": teachers[p.teacher]},
                                                  dataset=grid.dataset, teacher=p.teacher, student=p.student)
                 for p in grid.link_pairs()}
        heads = {(teacher, run): training("heads", grid.heads_spec(teacher, run),
                                          {"data": data, "teacher": teachers[teacher]},
                                          dataset=grid.dataset, teacher=teacher, run=run)
                 for teacher, run in grid.heads_jobs()}
        students = []
        for teacher, student, run, seed in grid.student_jobs():
            inputs = {"data": data}
            if teacher != NO_TEACHER:
                inputs["teacher"] = teachers[teacher]
            stage = grid.run_needs(run)
            if stage == "links":
                inputs["links"] = links[(teacher, student)]
            elif stage == "heads":
                inputs["heads"] = heads[(teacher, run)]
            students.append(training("student", grid.student_spec(teacher, student, run, seed), inputs,
                                     dataset=grid.dataset, teacher=teacher, student=student, run=run,
                                     seed=str(seed)))
        reported = [*teachers.values(), *links.values(), *students]
        self._add("report", {}, {job.folder: job for job in reported}, code.closure(["afdistill.report"]),
                  payload={"grid": grid.config})

    def _add(self, kind: str, wildcards: dict[str, Any], inputs: dict[str, Job], modules: list[str],
             spec: JobSpec | None = None, payload: dict | None = None) -> Job:
        wildcards = {k: str(v) for k, v in wildcards.items()}
        folder = KINDS[kind].folder.format(results=self.results, reports=self.reports, **wildcards)
        job = Job(KINDS[kind], wildcards, folder, inputs, tuple(modules), spec, payload or {})
        self.jobs.append(job)
        return job

    def of_kind(self, kind: str) -> list[Job]:
        return [job for job in self.jobs if job.kind.name == kind]

    def find(self, folder: str) -> Job:
        folder = folder.rstrip("/")
        for job in self.jobs:
            if job.folder == folder:
                return job
        raise KeyError(folder)

    def by_wildcards(self, kind: str, wildcards: dict[str, str]) -> Job:
        wanted = {k: str(v) for k, v in wildcards.items() if k in KINDS[kind].wildcards}
        for job in self.of_kind(kind):
            if job.wildcards == wanted:
                return job
        raise KeyError(f"no {kind} job with {wanted}")

    def unmark_incomplete(self) -> list[Job]:
        """Remove the marker of every job some of whose files are missing; returns those jobs."""
        broken = [job for job in self.jobs if Path(job.marker).is_file()
                  and not all(Path(job.path(name)).exists() for name in job.kind.files)]
        for job in broken:
            Path(job.marker).unlink()
        return broken

    def stage_output(self, kind: str) -> str:
        """The folder holding every job of a kind (a DVC stage's output): its folder up to the first wildcard
        other than the grid's dataset."""
        folder = KINDS[kind].folder.format(results=self.results, reports=self.reports, dataset=self.grid.dataset,
                                           **{name: "\0" for name in KINDS[kind].wildcards if name != "dataset"})
        return folder.split("\0", 1)[0].rstrip("/")

    def code_files(self, kind: str) -> list[str]:
        """Source files of every job of a kind: a DVC stage's code dependencies."""
        return code.files(sorted({m for job in self.of_kind(kind) for m in job.modules}))


def write_marker(job: Job) -> None:
    """The last thing a job writes: its fingerprint record (earlier markers in the folder are removed)."""
    from .files import atomic_write

    folder = Path(job.folder)
    for old in folder.glob(MARKER.format(fingerprint="*")):
        if old.name != Path(job.marker).name:
            old.unlink()
    text = json.dumps({"fingerprint": job.fingerprint, **job.record()}, indent=2, sort_keys=True) + "\n"
    atomic_write(job.marker, lambda handle: handle.write(text.encode()))


def preflight(plan: Plan, jobs_run_here: bool) -> None:
    """What the grid check cannot see from the grid alone, before any job: the image archive the data stage
    will read is where the grid says (unless that stage is done), and, where the jobs run on this machine, that
    it can run them (``Grid.check_machine``). ``afdistill check`` and the Snakefile both call it."""
    from .archives import STORAGE, ArchiveError, check_present
    from .grid import GridError

    grid = plan.grid
    if jobs_run_here:
        grid.check_machine()
    (data,) = plan.of_kind("data")
    if grid.dataset in STORAGE and not Path(data.marker).exists():
        try:
            check_present(grid.dataset, grid.data_root)
        except ArchiveError as error:
            raise GridError(f"{grid.source}: data.root: {error}") from None
