"""The jobs a grid expands to, each with its inputs and fingerprint: the plan.

The job kinds are declared in :mod:`afdistill.kinds`, one module each;
Snakemake's rules and targets (``workflow/rules/jobs.smk``), the DVC
pipelines (``afdistill dvc``) and the report's inputs are all derived from
them and from :class:`Plan`.

Every job has a **fingerprint**: a hash of what decides its result (its spec,
or the dataset for data and the grid for the report), of the code it runs
(``afdistill.code``: the modules its computation imports) and of the
fingerprints of the jobs it reads. A finished job writes
``fingerprint-<hash>.json`` into its folder last. Snakemake asks for that
file, so a job whose inputs, parameters or code changed is simply missing and
runs, from tracked content alone: no timestamps, no ``.snakemake/`` metadata
(which a fresh clone or a DVC experiment's workspace does not have).

A job travels to its process as JSON (:meth:`Job.to_json`, :meth:`Job.from_json`):
its planned record, its inputs' folders and its settings, so that the process
runs what was planned and never reads the grid again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import code
from .grid import Grid, GridError
from .kinds import KINDS, Kind
from .spec import JobSpec

MARKER = "fingerprint-{fingerprint}.json"


@dataclass(frozen=True, eq=False)
class Job:
    kind: Kind
    wildcards: dict[str, str]
    folder: str
    inputs: dict[str, "Job"]  # role -> the job whose outputs this one reads
    modules: tuple[str, ...]  # the package modules that compute it
    spec: JobSpec | None = None  # training jobs
    payload: dict[str, Any] = field(default_factory=dict)  # what else decides the result (data, report)
    #: what the job needs to run that does not change its result (where the raw archive is, its row's label,
    #: how many jobs share a GPU): not in the fingerprint
    settings: dict[str, Any] = field(default_factory=dict)
    planned: dict[str, Any] | None = None  # the record as planned, for a job read back from JSON

    @cached_property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.record(), sort_keys=True).encode()).hexdigest()[:16]

    def record(self) -> dict[str, Any]:
        """What the fingerprint hashes; written into the marker so a person can see what ran."""
        if self.planned is not None:
            return self.planned
        return {
            "kind": self.kind.name,
            "folder": self.folder,
            "spec": self.spec.to_dict() if self.spec else None,
            "payload": self.payload,
            "code": code.fingerprint(list(self.modules)),
            "inputs": {role: job.fingerprint for role, job in sorted(self.inputs.items())},
        }

    @property
    def marker(self) -> str:
        return f"{self.folder}/" + MARKER.format(fingerprint=self.fingerprint)

    def outputs(self) -> list[str]:
        return [f"{self.folder}/{name}" for name in self.kind.files] + [self.marker]

    def path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def to_json(self) -> str:
        """The job as its process receives it: planned record, inputs (kind and folder), settings."""
        inputs = {role: [job.kind.name, job.folder] for role, job in self.inputs.items()}
        # Keys in their order, not sorted: a combination's parts train in the grid's order (its fingerprint, a
        # hash of the sorted record, does not see the order).
        return json.dumps({"record": self.record(), "inputs": inputs, "settings": self.settings}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Job":
        """A job as :meth:`to_json` wrote it; its fingerprint and record are the planned ones."""
        try:
            message = json.loads(text)
            record = message["record"]
            kind = KINDS[record["kind"]]
            inputs = {role: cls(KINDS[name], {}, folder, {}, ()) for role, (name, folder) in message["inputs"].items()}
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"--job: not a job as the pipeline writes one ({type(error).__name__}: {error}); "
                f"run a job by its folder instead: afdistill run --grid FILE FOLDER"
            ) from None
        spec = JobSpec.from_dict(record["spec"]) if record["spec"] else None
        return cls(kind, {}, record["folder"], inputs, (), spec, record["payload"], message["settings"], record)


def _sha256(path: str) -> str | None:
    file = Path(path)
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None


class Plan:
    """Every job of one grid, with its inputs and fingerprint: each kind of :data:`afdistill.kinds.KINDS`
    first checks the grid (``check``: what the grid's parse cannot see, such as a method's fit to its
    networks), then adds its jobs (``expand``), in pipeline order."""

    def __init__(self, grid: Grid, results: str | None = None, reports: str | None = None):
        self.grid = grid
        self.results = results or f"results/{grid.name}"
        self.reports = reports or f"reports/{grid.name}"
        self.jobs: list[Job] = []
        for kind in KINDS.values():
            try:
                kind.code.check(grid)
            except GridError as error:
                raise GridError(f"{grid.source}: {error}") from None
        for kind in KINDS.values():
            kind.code.expand(self)

    def add(
        self,
        kind: Kind,
        wildcards: dict[str, Any],
        inputs: dict[str, Job],
        modules: list[str],
        spec: JobSpec | None = None,
        payload: dict | None = None,
        settings: dict | None = None,
    ) -> Job:
        wildcards = {k: str(v) for k, v in wildcards.items()}
        folder = kind.folder.format(results=self.results, reports=self.reports, **wildcards)
        job = Job(kind, wildcards, folder, inputs, tuple(modules), spec, payload or {}, settings or {})
        self.jobs.append(job)
        return job

    def add_training(
        self, kind: Kind, spec: JobSpec, inputs: dict[str, Job], settings: dict | None = None, **wildcards
    ) -> Job:
        """A training job: its code is the engine's, the methods' it names and its networks'."""
        from .methods import method_class
        from .models.registry import model_factory

        methods = method_class(spec.method).capabilities(spec.method_params).methods_used
        named = [code.defining_module(method_class(name)) for name in methods]
        named += [code.defining_module(model_factory(arch)) for arch in (spec.arch, spec.teacher) if arch]
        modules = code.closure(["afdistill.engine"] + named + (["afdistill.links"] if kind.name == "links" else []))
        payload = {"checkpoint_sha256": _sha256(spec.checkpoint)} if spec.checkpoint else {}
        settings = {"jobs_per_gpu": self.grid.jobs_per_gpu, **(settings or {})}
        return self.add(kind, wildcards, inputs, modules, spec, payload, settings)

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
        broken = [
            job
            for job in self.jobs
            if Path(job.marker).is_file() and not all(Path(job.path(name)).exists() for name in job.kind.files)
        ]
        for job in broken:
            Path(job.marker).unlink()
        return broken

    def stage_output(self, kind: str) -> str:
        """The folder holding every job of a kind (a DVC stage's output): its folder up to the first wildcard
        other than the grid's dataset."""
        folder = KINDS[kind].folder.format(
            results=self.results,
            reports=self.reports,
            dataset=self.grid.dataset,
            **{name: "\0" for name in KINDS[kind].wildcards if name != "dataset"},
        )
        return folder.split("\0", 1)[0].rstrip("/")

    def code_files(self, kind: str) -> list[str]:
        """Source files of every job of a kind: a DVC stage's code dependencies."""
        return code.files(sorted({m for job in self.of_kind(kind) for m in job.modules}))


def packs(jobs: list[Job]) -> list[list[Job]]:
    """``jobs`` grouped into the packs that train in one process each (:func:`afdistill.engine.train_pack`),
    in plan order: jobs of a kind that packs (its module's ``pack_key``) with equal keys together, every other
    job alone."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        key_of = getattr(job.kind.code, "pack_key", None)
        key = (job.kind.name, key_of(job)) if key_of is not None else ("alone", job.folder)
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def balance(groups: list[list[Job]], workers: int) -> list[list[Job]]:
    """Packs split so that ``workers`` processes at once share the grid's last wave evenly.

    The packs that read the deepest upstream kind (the students that read the teacher, its links and heads) wait
    for those and are most of a grid's work; earlier packs run beside the teacher's chain and stay whole. The
    wave's packs, largest first, fill the workers in turn, each up to an equal share of the
    wave's cost (McNaughton's wrap-around rule): a pack that overflows a worker's share is split, the members
    that fill it in one part, the rest carried to the next worker, so a wave takes at most ``workers - 1`` more
    processes, each computing the teacher's forward once. The filling members are those that read the fewest
    stages first (costliest first among them): a part of students that read the teacher alone starts as soon as
    it is done, beside its links and heads. A job costs its epochs times its method's ``relative_cost`` and its
    start and finish, measured hints: nothing here has timed the jobs to come."""
    from .kinds import KINDS

    order = list(KINDS)

    def depth(group: list[Job]) -> int:
        return max((order.index(upstream.kind.name) for job in group for upstream in job.inputs.values()), default=-1)

    def fill_order(job: Job) -> tuple:
        return depth([job]), -cost[id(job)]

    packing = [group for group in groups if getattr(group[0].kind.code, "pack_key", None) is not None]
    if workers < 2 or not packing:
        return groups
    deepest = max(map(depth, packing))
    wave = [group for group in packing if depth(group) == deepest]
    cost = {id(job): pack_cost([job]) for group in wave for job in group}  # each job's, computed once

    def total(group: list[Job]) -> float:
        return sum(cost[id(job)] for job in group)

    share = sum(map(total, wave)) / workers
    parts: list[list[Job]] = []
    room = share
    for group in sorted(wave, key=total, reverse=True):
        while len(group) > 1 and total(group) > room * 1.05:  # a few percent over is not worth a process
            head: set[int] = set()
            filled = 0.0
            for job in sorted(group, key=fill_order):
                if filled + cost[id(job)] <= room * 1.05:
                    head.add(id(job))
                    filled += cost[id(job)]
            if not head and room == share:  # its costliest member alone is over a share
                head = {id(group[0])}
            if head:
                parts.append([job for job in group if id(job) in head])  # in plan order
                group = [job for job in group if id(job) not in head]
            room = share
        parts.append(group)
        room -= total(group)
        if room <= 0.05 * share:
            room = share
    return [group for group in groups if not any(group is member for member in wave)] + parts


#: what a job costs beyond its epochs (evaluation, checkpoints, its MLflow run and model), in KD epochs: about 4 on
#: the default grid (1.5 s a job in a pack against 0.41 s for KD's epoch on this project's 2-core machine); next
#: to a paper grid's 240 epochs it is nothing
JOB_START_AND_FINISH = 4.0


def pack_cost(group: list[Job]) -> float:
    """A pack's cost in KD epochs: each job's epochs times its method's ``relative_cost``, and its start and
    finish."""
    from .methods import method_class
    from .models.registry import UnknownNameError

    total = 0.0
    for job in group:
        if job.spec is None:
            continue
        try:
            cost = method_class(job.spec.method).capabilities(job.spec.method_params).relative_cost
        except UnknownNameError:  # a job of a kind whose spec names no method
            cost = 1.0
        total += job.spec.schedule.epochs * cost + JOB_START_AND_FINISH
    return total


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
    from .archives import ArchiveError, check_present
    from .data import DATASETS

    grid = plan.grid
    if jobs_run_here:
        grid.check_machine()
    (data,) = plan.of_kind("data")
    info = DATASETS[grid.dataset]
    if info.archive is not None and not Path(data.marker).exists():
        try:
            check_present(grid.dataset, grid.data_root, info)
        except ArchiveError as error:
            raise GridError(f"{grid.source}: data.root: {error}") from None
