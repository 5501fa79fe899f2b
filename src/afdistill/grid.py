"""Experiment grids (``params/*.yaml``): validation, and the jobs a grid expands to.

The grid file is the one place where an experiment is described; the
Snakemake rules, ``dvc.yaml`` and the report all read it through this module.
Every problem is reported before any job starts, naming the key and what is
allowed there.

Keys (see ``params/default.yaml`` for a commented example)::

    grid: default              # names the MLflow experiment and results/<grid>, reports/<grid>
    dataset: digits            # digits | cifar10 | cifar100
    data: {root: data/raw, download: false, verify_checksums: true}
    device: auto               # auto | cpu | cuda
    runtime: {precision: auto, channels_last: auto, compile: auto, deterministic: true, cuda_graphs: auto,
              keep_freed_memory: auto}   # spec.Runtime
    jobs_per_gpu: 1            # training jobs sharing one GPU (a pipeline option; results do not depend on it)
    seeds: [0, 1]              # one student job per seed
    train: {epochs: 240, ...}  # the schedule of every training job (spec.Schedule)
    teachers: {seed: 0, train: {...overrides}, checkpoints: {arch: path}}
    links: {seed: 0, train: {...overrides}, params: {...afd params}}
    heads: {seed: 0, train: {...overrides}}   # networks pretrained on the teacher (MHGD)
    pairs:                     # teacher -> student columns of the table
      - {teacher: resnet56, student: resnet20, methods: {afd: {beta: 100}}, train: {lr: 0.01}, runs: [kd, afd]}
    methods:                   # rows of the table: name -> hyper-parameters
      kd: {alpha: 0.9, temperature: 4}
      at_kd: {method: at, alpha: 0.9, label: AT+KD}
      afd: {beta: 200, sweep: {beta: [30, 50, 100, 200]}}
    report: {paper_table: afd_table1, metric: accuracy}
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .data import DATASETS
from .methods import check_method_params, list_methods, method_class
from .models import list_models
from .spec import COMPILE_MODES, PRECISIONS, JobSpec, Runtime, Schedule

DEVICES = ("auto", "cpu", "cuda")
METRICS = ("accuracy", "error")
TOP_KEYS = ("grid", "dataset", "data", "device", "runtime", "jobs_per_gpu", "seeds", "train", "teachers", "links",
            "heads", "pairs", "methods", "report")
# Networks a method pretrains on the teacher (MHGD's attention network) train, unless the grid says
# otherwise, with the grid's schedule for 20 epochs at a fixed learning rate (MHGD supplementary).
HEADS_TRAIN = {"epochs": 20, "lr_decay_epochs": []}
NO_TEACHER = "none"  # the teacher path segment of students trained without one


class GridError(ValueError):
    """A grid file problem; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Run:
    """One row of the table: a method type with its hyper-parameters."""

    name: str
    method: str
    params: dict[str, Any]
    label: str
    group: str  # the methods-entry this run came from (sweeps expand one entry into several runs)
    sweep: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    overrides: dict[str, dict[str, Any]]
    schedule: Schedule
    runs: tuple[str, ...]  # the rows this column has (all of the grid's runs unless the pair lists some)


def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


def _schedule(base: Schedule, overrides: Any, where: str) -> Schedule:
    if overrides is None:
        return base
    if not isinstance(overrides, dict):
        raise GridError(f"{where}: expected a mapping of schedule keys, got {overrides!r}")
    allowed = {f.name: f for f in fields(Schedule)}
    values = {f.name: getattr(base, f.name) for f in fields(Schedule)}
    for key, value in overrides.items():
        if key not in allowed:
            raise GridError(f"{where}.{key}: unknown schedule key; allowed: {_allowed(allowed)}")
        if key == "nesterov":
            if not isinstance(value, bool):
                raise GridError(f"{where}.{key}: expected true or false, got {value!r}")
        elif key == "lr_decay_epochs":
            if not isinstance(value, list) or not all(isinstance(v, int) and v > 0 for v in value):
                raise GridError(f"{where}.{key}: expected a list of positive epoch numbers, got {value!r}")
            value = tuple(value)
        elif key in ("epochs", "batch_size"):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "epochs" else 1):
                raise GridError(f"{where}.{key}: expected a {'non-negative' if key == 'epochs' else 'positive'} "
                                f"integer, got {value!r}")
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise GridError(f"{where}.{key}: expected a non-negative number, got {value!r}")
        values[key] = value
    return Schedule(**values)


def _mapping(config: dict, key: str, where: str) -> dict:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise GridError(f"{where}{key}: expected a mapping, got {value!r}")
    return value


class Grid:
    def __init__(self, config: dict[str, Any], source: str = "config"):
        self.source = source
        self.config = config
        try:
            self._parse(config)
        except GridError as error:
            raise GridError(f"{source}: {error}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "Grid":
        path = Path(path)
        if not path.is_file():
            raise GridError(f"grid file {path} does not exist")
        return cls(yaml.safe_load(path.read_text()) or {}, source=str(path))

    # ------------------------------------------------------------ parsing

    def _parse(self, config: dict[str, Any]) -> None:
        if not isinstance(config, dict):
            raise GridError("expected a mapping at the top level")
        unknown = sorted(set(config) - set(TOP_KEYS))
        if unknown:
            raise GridError(f"{unknown[0]}: unknown key; allowed: {_allowed(TOP_KEYS)}")
        for key in ("grid", "dataset", "pairs", "methods"):
            if key not in config:
                raise GridError(f"{key}: missing (required keys: grid, dataset, pairs, methods)")

        self.name = config["grid"]
        if not isinstance(self.name, str) or not self.name.replace("_", "").replace("-", "").isalnum():
            raise GridError(f"grid: expected a name of letters, digits, '-' and '_', got {self.name!r}")
        self.dataset = config["dataset"]
        if self.dataset not in DATASETS:
            raise GridError(f"dataset: unknown dataset {self.dataset!r}; allowed: {_allowed(sorted(DATASETS))}")

        data = _mapping(config, "data", "")
        for key in data:
            if key not in ("root", "download", "verify_checksums"):
                raise GridError(f"data.{key}: unknown key; allowed: root, download, verify_checksums")
        self.data_root = str(data.get("root", "data/raw"))
        self.download = bool(data.get("download", False))
        self.verify_checksums = bool(data.get("verify_checksums", True))

        self.device = config.get("device", "auto")
        if self.device not in DEVICES:
            raise GridError(f"device: {self.device!r} is not allowed; allowed: {_allowed(DEVICES)}")

        self.runtime = self._parse_runtime(config.get("runtime"))
        self.jobs_per_gpu = config.get("jobs_per_gpu", 1)
        if not isinstance(self.jobs_per_gpu, int) or isinstance(self.jobs_per_gpu, bool) or self.jobs_per_gpu < 1:
            raise GridError(f"jobs_per_gpu: expected a positive integer, got {self.jobs_per_gpu!r}")

        seeds = config.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
            raise GridError(f"seeds: expected a non-empty list of non-negative integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise GridError(f"seeds: {seeds!r} repeats a seed")
        self.seeds = seeds

        self.schedule = _schedule(Schedule(), config.get("train"), "train")

        teachers = _mapping(config, "teachers", "")
        for key in teachers:
            if key not in ("seed", "train", "checkpoints"):
                raise GridError(f"teachers.{key}: unknown key; allowed: seed, train, checkpoints")
        self.teacher_seed = teachers.get("seed", 0)
        self.teacher_schedule = _schedule(self.schedule, teachers.get("train"), "teachers.train")
        self.teacher_checkpoints = dict(teachers.get("checkpoints") or {})
        for arch in self.teacher_checkpoints:
            self._check_arch(arch, f"teachers.checkpoints.{arch}")

        self.runs = self._parse_methods(config["methods"])
        self.pairs = self._parse_pairs(config["pairs"])

        links = _mapping(config, "links", "")
        for key in links:
            if key not in ("seed", "train", "params"):
                raise GridError(f"links.{key}: unknown key; allowed: seed, train, params")
        self.links_seed = links.get("seed", 0)
        self.links_schedule = _schedule(self.schedule, links.get("train"), "links.train")
        self.links_params = dict(links.get("params") or {})
        self._check_params("afd", self.links_params, "links.params")

        heads = _mapping(config, "heads", "")
        for key in heads:
            if key not in ("seed", "train"):
                raise GridError(f"heads.{key}: unknown key; allowed: seed, train")
        self.heads_seed = heads.get("seed", 0)
        self.heads_schedule = _schedule(_schedule(self.schedule, HEADS_TRAIN, "heads.train"), heads.get("train"),
                                        "heads.train")

        report = _mapping(config, "report", "")
        for key in report:
            if key not in ("paper_table", "metric"):
                raise GridError(f"report.{key}: unknown key; allowed: paper_table, metric")
        self.metric = report.get("metric", "accuracy")
        if self.metric not in METRICS:
            raise GridError(f"report.metric: {self.metric!r} is not allowed; allowed: {_allowed(METRICS)}")
        self.paper_table = report.get("paper_table")
        if self.paper_table is not None:
            from .paper import PAPER_TABLES

            if self.paper_table not in PAPER_TABLES:
                raise GridError(f"report.paper_table: unknown table {self.paper_table!r}; "
                                f"allowed: {_allowed(sorted(PAPER_TABLES))}")

    def _parse_runtime(self, runtime: Any) -> Runtime:
        runtime = runtime or {}
        if not isinstance(runtime, dict):
            raise GridError(f"runtime: expected a mapping, got {runtime!r}")
        allowed = {"precision": PRECISIONS, "channels_last": ("auto", True, False), "compile": COMPILE_MODES,
                   "deterministic": (True, False), "cuda_graphs": ("auto", True, False),
                   "keep_freed_memory": ("auto", True, False)}
        kinds = {"precision": str, "channels_last": (str, bool), "compile": str, "deterministic": bool,
                 "cuda_graphs": (str, bool), "keep_freed_memory": (str, bool)}
        for key, value in runtime.items():
            if key not in allowed:
                raise GridError(f"runtime.{key}: unknown key; allowed: {_allowed(allowed)}")
            if not isinstance(value, kinds[key]) or value not in allowed[key]:
                raise GridError(f"runtime.{key}: {value!r} is not allowed; allowed: {_allowed(allowed[key])}")
        return Runtime(**runtime)

    def _check_arch(self, arch: Any, where: str) -> None:
        if arch not in list_models():
            raise GridError(f"{where}: unknown architecture {arch!r}; allowed: {_allowed(list_models())}")

    def _check_params(self, method: str, params: dict, where: str) -> None:
        try:
            check_method_params(method, params, where)
        except ValueError as error:
            raise GridError(str(error)) from None

    def _parse_methods(self, methods: Any) -> dict[str, Run]:
        if not isinstance(methods, dict) or not methods:
            raise GridError("methods: expected a non-empty mapping of run name -> hyper-parameters")
        runs: dict[str, Run] = {}
        for key, entry in methods.items():
            where = f"methods.{key}"
            if not isinstance(key, str) or not key.replace("_", "").isalnum():
                raise GridError(f"{where}: run names use letters, digits and '_' only")
            entry = dict(entry or {})
            method = entry.pop("method", key)
            if method not in list_methods():
                raise GridError(f"{where}.method: unknown method {method!r}; allowed: {_allowed(list_methods())}"
                                if "method" in (methods[key] or {}) else
                                f"{where}: unknown method {key!r} (name the type with `method:`); "
                                f"allowed: {_allowed(list_methods())}")
            label = str(entry.pop("label", method_class(method).label))
            sweep = entry.pop("sweep", None) or {}
            self._check_params(method, entry, where)
            if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
                raise GridError(f"{where}.sweep: expected a mapping of parameter -> non-empty list of values")
            for name, values in sweep.items():
                for value in values:
                    self._check_params(method, {name: value}, f"{where}.sweep")
            if not sweep:
                runs[key] = Run(key, method, entry, label, key)
                continue
            names = list(sweep)
            for combination in itertools.product(*(sweep[n] for n in names)):
                variant = dict(zip(names, combination))
                suffix = "_".join(f"{n}{v}".replace(".", "p").replace("-", "m") for n, v in variant.items())
                name = f"{key}_{suffix}"
                runs[name] = Run(name, method, {**entry, **variant}, label, key, variant)
        return runs

    def _parse_pairs(self, pairs: Any) -> list[Pair]:
        if not isinstance(pairs, list) or not pairs:
            raise GridError("pairs: expected a non-empty list of {teacher, student} entries")
        parsed, seen = [], set()
        for index, entry in enumerate(pairs):
            where = f"pairs[{index}]"
            if not isinstance(entry, dict):
                raise GridError(f"{where}: expected a mapping with teacher and student")
            for key in entry:
                if key not in ("teacher", "student", "methods", "train", "runs"):
                    raise GridError(f"{where}.{key}: unknown key; allowed: teacher, student, methods, train, runs")
            runs = entry.get("runs")
            if runs is not None:
                if not isinstance(runs, list) or not runs:
                    raise GridError(f"{where}.runs: expected a non-empty list of run names")
                groups = {run.group for run in self.runs.values()}
                for run in runs:
                    if run not in self.runs and run not in groups:
                        raise GridError(f"{where}.runs: no run {run!r}; allowed: {_allowed(self.runs)}")
                # a methods entry stands for all the runs its sweep expands to
                runs = [name for name, run in self.runs.items() if name in runs or run.group in runs]
            for role in ("teacher", "student"):
                if role not in entry:
                    raise GridError(f"{where}.{role}: missing")
                self._check_arch(entry[role], f"{where}.{role}")
            overrides = dict(entry.get("methods") or {})
            for group, params in overrides.items():
                if group == "links":
                    self._check_params("afd", params or {}, f"{where}.methods.links")
                    continue
                members = [run for run in self.runs.values() if run.group == group]
                if not members:
                    raise GridError(f"{where}.methods.{group}: no such entry under methods; "
                                    f"allowed: {_allowed(list(dict.fromkeys(r.group for r in self.runs.values())) + ['links'])}")
                self._check_params(members[0].method, params or {}, f"{where}.methods.{group}")
                swept = set(members[0].sweep) & set(params or {})
                if swept:
                    raise GridError(f"{where}.methods.{group}.{sorted(swept)[0]}: this parameter is swept under "
                                    f"methods.{group}.sweep; override it there or drop the sweep")
            pair = (entry["teacher"], entry["student"])
            if pair in seen:
                raise GridError(f"{where}: the pair {pair[0]} -> {pair[1]} is listed twice")
            seen.add(pair)
            schedule = _schedule(self.schedule, entry.get("train"), f"{where}.train")
            parsed.append(Pair(entry["teacher"], entry["student"], overrides, schedule, tuple(runs or self.runs)))
        return parsed

    # ------------------------------------------------------------ jobs

    def pair(self, teacher: str, student: str) -> Pair:
        for pair in self.pairs:
            if (pair.teacher, pair.student) == (teacher, student):
                return pair
        raise GridError(f"{self.source}: {teacher} -> {student} is not a pair of grid {self.name!r}")

    def teachers(self) -> list[str]:
        return list(dict.fromkeys(pair.teacher for pair in self.pairs))

    def run_needs(self, run: str) -> str | None:
        """The pre-stage a run consumes (``"links"`` or ``"heads"``), if any."""
        return method_class(self.runs[run].method).needs_artifact

    def heads_jobs(self) -> list[tuple[str, str]]:
        """(teacher, run) of every network a method pretrains on a teacher."""
        jobs = [(p.teacher, run) for p in self.pairs for run in p.runs if self.run_needs(run) == "heads"]
        return list(dict.fromkeys(jobs))

    def link_pairs(self) -> list[Pair]:
        """Pairs that need a link-finding run (some run of the grid consumes its links)."""
        return [p for p in self.pairs if any(self.run_needs(run) == "links" for run in p.runs)]

    def student_jobs(self) -> list[tuple[str, str, str, int]]:
        """(teacher, student, run, seed) of every student job. Methods that use no teacher (the plain
        student) train once per student architecture, under the teacher name ``none``."""
        jobs = [(self.teacher_of(p.teacher, run), p.student, run, seed)
                for p in self.pairs for run in p.runs for seed in self.seeds]
        return list(dict.fromkeys(jobs))

    def teacher_of(self, teacher: str, run: str) -> str:
        return teacher if method_class(self.runs[run].method).needs_teacher else NO_TEACHER

    def teacher_spec(self, arch: str) -> JobSpec:
        if arch not in self.teachers():
            raise GridError(f"{self.source}: {arch} is not a teacher of grid {self.name!r}")
        checkpoint = self.teacher_checkpoints.get(arch)
        # A published checkpoint is evaluated, not trained.
        schedule = replace(self.teacher_schedule, epochs=0) if checkpoint else self.teacher_schedule
        return JobSpec(kind="teacher", grid=self.name, dataset=self.dataset, arch=arch, method="vanilla",
                       run="teacher", seed=self.teacher_seed, schedule=schedule, device=self.device,
                       checkpoint=checkpoint, runtime=self.runtime)

    def student_spec(self, teacher: str, student: str, run: str, seed: int) -> JobSpec:
        if run not in self.runs:
            raise GridError(f"{self.source}: no run {run!r}; allowed: {_allowed(self.runs)}")
        spec = self.runs[run]
        if teacher == NO_TEACHER:
            if method_class(spec.method).needs_teacher:
                raise GridError(f"{self.source}: run {run!r} needs a teacher")
            pairs = [p for p in self.pairs if p.student == student]
            if not pairs:
                raise GridError(f"{self.source}: {student} is not a student of grid {self.name!r}")
            overrides, schedule = {}, pairs[0].schedule
        else:
            pair = self.pair(teacher, student)
            if run not in pair.runs:
                raise GridError(f"{self.source}: run {run!r} is not listed for {teacher} -> {student}")
            overrides, schedule = pair.overrides.get(spec.group) or {}, pair.schedule
        params = {**spec.params, **overrides}
        return JobSpec(kind="student", grid=self.name, dataset=self.dataset, arch=student, method=spec.method,
                       run=run, seed=int(seed), schedule=schedule, method_params=params,
                       teacher=None if teacher == NO_TEACHER else teacher, device=self.device, runtime=self.runtime)

    def heads_spec(self, teacher: str, run: str) -> JobSpec:
        if (teacher, run) not in self.heads_jobs():
            raise GridError(f"{self.source}: no heads are pretrained for {teacher} and run {run!r}")
        method = method_class(self.runs[run].method)
        params = {k: v for k, v in self.runs[run].params.items() if k in method.heads_params}
        return JobSpec(kind="heads", grid=self.name, dataset=self.dataset, arch=None, teacher=teacher,
                       method=method.heads_method, run=run, seed=self.heads_seed, schedule=self.heads_schedule,
                       method_params=params, device=self.device, runtime=self.runtime)

    def links_spec(self, teacher: str, student: str) -> JobSpec:
        pair = self.pair(teacher, student)
        params = {**self.links_params, **(pair.overrides.get("links") or {})}
        return JobSpec(kind="links", grid=self.name, dataset=self.dataset, arch=student, method="afd", run="links",
                       seed=self.links_seed, schedule=self.links_schedule, method_params=params, teacher=teacher,
                       device=self.device, runtime=self.runtime)

    def artifact(self, teacher: str, student: str, run: str) -> tuple[str, str] | None:
        """(stage, job directory relative to results/<grid>) of the pre-stage a student job reads."""
        needs = self.run_needs(run)
        if needs == "links":
            return needs, f"links/{self.dataset}/{teacher}/{student}"
        if needs == "heads":
            return needs, f"heads/{self.dataset}/{teacher}/{run}"
        return None
