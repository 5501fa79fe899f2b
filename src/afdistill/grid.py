"""Experiment grids (``params/*.yaml``): the configuration, parsed and checked once.

The grid file is the one place where an experiment is described; the
job kinds (``afdistill.kinds``) turn it into jobs, and ``dvc.yaml`` and the
report read it through this module. Its structure is declared once, in :data:`SCHEMA`
(the schedule and runtime keys come from ``spec.Schedule`` and
``spec.Runtime``, each declared there with its range); the Snakemake config
schema (``workflow/schemas/config.schema.yaml``) is generated from it
(``afdistill schema``). Every problem is reported before any job starts,
naming the key and what is allowed there. ``params/default.yaml`` is a
commented example of every key.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .data import DATASETS
from .methods import check_method_params, list_methods, method_class, method_defaults
from .models import list_models
from .spec import Runtime, Schedule

NO_TEACHER = "none"  # the teacher path segment of students trained without one


def _section(cls, **more: dict) -> dict:
    """The JSON schema of a spec dataclass (Schedule, Runtime), from its fields' declarations; ``more``: keys of
    the grid's section that are not the spec's (they change how jobs run, never their results)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {**{f.name: dict(f.metadata) for f in fields(cls)}, **more},
    }


#: runtime.pack: not in any job's spec or fingerprint, so switching it reruns nothing
PACK = {
    "type": "boolean",
    "default": True,
    "description": "train the students that read the same teacher, data and batches in one process, one "
    "teacher forward per batch for all (afdistill.engine.train_pack); false: one process per job. "
    "Snakemake: --config pack=false",
}


SCHEDULE = _section(Schedule)
PARAMS = {"type": ["object", "null"], "description": "method hyper-parameters (checked against the method)"}
SEED = {"type": "integer", "minimum": 0}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "description": "An experiment grid (params/*.yaml). Generated from afdistill.grid.SCHEMA by `afdistill schema`; "
    "names (datasets, architectures, methods, hyper-parameters) are checked against the package's "
    "registries by afdistill.grid.Grid.",
    "type": "object",
    "additionalProperties": False,
    "required": ["grid", "dataset", "pairs", "methods"],
    "properties": {
        "grid": {
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]+$",
            "description": "the grid's name: MLflow experiment, results/<grid>, reports/<grid>",
        },
        "dataset": {"type": "string", "enum": sorted(DATASETS)},
        "data": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "root": {"type": "string", "description": "where the raw archives are (or go)"},
                "download": {"type": "boolean", "description": "let the data stage download the archive"},
                "verify_checksums": {"type": "boolean"},
                "skip_corrupt": {
                    "type": "boolean",
                    "description": "image archives: leave images that do not decode out "
                    "(listed in corrupt_images.tsv, counted in meta.json) instead of refusing the data",
                },
            },
        },
        "device": {"type": "string", "enum": ["auto", "cpu", "cuda"]},
        "runtime": _section(Runtime, pack=PACK),
        "jobs_per_gpu": {"type": "integer", "minimum": 1, "description": "training jobs that share one GPU"},
        "gpus_per_job": {
            "type": "integer",
            "minimum": 1,
            "description": "GPUs of each training job on CUDA: data-parallel processes under torchrun",
        },
        "architectures": {
            "type": "object",
            "additionalProperties": {"type": "object"},
            "description": "architecture -> options of the networks trained with it "
            "(`afdistill list` shows each architecture's)",
        },
        "seeds": {"type": "array", "minItems": 1, "items": SEED, "description": "one student job per seed"},
        "train": SCHEDULE,
        "teachers": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "seed": SEED,
                "train": SCHEDULE,
                "checkpoints": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "architecture -> published weights to evaluate instead of training: a "
                    "file, or torchvision's by name (torchvision:<Enum>.<member>)",
                },
                "published": {
                    "type": "string",
                    "description": "a published teacher set (afdistill.published) that "
                    "gives every other teacher's checkpoint, fetched once, checksummed",
                },
                "init": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "architecture -> weights of another task the teacher is fine-tuned from "
                    "(its classifier new)",
                },
            },
        },
        "links": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"seed": SEED, "train": SCHEDULE, "params": PARAMS},
        },
        "heads": {"type": "object", "additionalProperties": False, "properties": {"seed": SEED, "train": SCHEDULE}},
        "pairs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["teacher", "student"],
                "properties": {
                    "teacher": {"type": "string"},
                    "student": {"type": "string"},
                    "methods": {
                        "type": "object",
                        "additionalProperties": PARAMS,
                        "description": "per-pair overrides of methods entries (and `links`); an entry's "
                        "`train:` changes that run's schedule on this pair",
                    },
                    "train": SCHEDULE,
                    "runs": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                },
            },
        },
        "methods": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": PARAMS,
            "description": "table rows: run name -> hyper-parameters (`method:` names the type, `label:` "
            "the row, `sweep:` values to try, `seeds:` the run's own seeds, `init:` "
            "weights of another task the student starts from, its classifier new, `train:` the "
            "run's own schedule keys over its pair's, where its official recipe differs, "
            "`heads_train:` those of the network it pretrains on its teacher)",
        },
        "report": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "paper_table": {"type": ["string", "null"]},
                "paper_matrices": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "the AFD paper's ablation tables to write (afdistill.paper.PAPER_MATRICES)",
                },
                "metric": {"type": "string", "enum": ["accuracy", "error"]},
            },
        },
    },
}


def schema_yaml() -> str:
    return "# Generated by `afdistill schema` from afdistill.grid.SCHEMA; do not edit.\n" + yaml.safe_dump(
        SCHEMA, sort_keys=False, width=120
    )


def _describe(rule: dict) -> str:
    if "enum" in rule:
        return "one of " + ", ".join(str(v) for v in rule["enum"])
    kind: Any = rule.get("type")  # a JSON-schema type name, or None
    parts = [
        {
            "integer": "an integer",
            "number": "a number",
            "boolean": "true or false",
            "string": "a string",
            "array": "a list",
            "object": "a mapping",
        }.get(kind, str(kind))
    ]
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in rule:
            parts.append(f"{word} {rule[key]}")
    if kind == "array" and "items" in rule:
        parts.append("of " + _describe(rule["items"]))
    return " ".join(parts)


def _check(value: Any, rule: dict, where: str) -> None:
    """Validate one value against a (subset of) JSON-schema rule, naming the key and what is allowed."""
    if "enum" in rule:
        if not any(value == allowed and type(value) is type(allowed) for allowed in rule["enum"]):
            raise GridError(f"{where}: {value!r} is not allowed; allowed: {', '.join(str(v) for v in rule['enum'])}")
        return
    kind: Any = rule.get("type")  # a JSON-schema type name, or None
    ok = {
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, (list, tuple)),
        "object": isinstance(value, dict),
    }.get(kind, True)
    if not ok or (
        kind in ("integer", "number")
        and (
            ("minimum" in rule and value < rule["minimum"])
            or ("maximum" in rule and value > rule["maximum"])
            or ("exclusiveMinimum" in rule and value <= rule["exclusiveMinimum"])
            or ("exclusiveMaximum" in rule and value >= rule["exclusiveMaximum"])
        )
    ):
        raise GridError(f"{where}: {value!r} is not allowed; expected {_describe(rule)}")
    if kind == "array" and "items" in rule:
        for index, item in enumerate(value):
            _check(item, rule["items"], f"{where}[{index}]")


def _known_keys(mapping: dict, rule: dict, where: str) -> None:
    allowed = rule["properties"]
    for key in mapping:
        if key not in allowed:
            raise GridError(f"{where}{key}: unknown key; allowed: {', '.join(allowed)}")


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
    seeds: tuple[int, ...] = (0,)  # one student job per seed: the grid's `seeds`, unless the entry lists its own
    init: str | None = None  # weights of another task the student starts from, classifier anew (fine-tuning)
    #: the run's own schedule keys (``train:`` in its entry), over its pair's schedule: an official recipe that
    #: trains this method longer, at another learning rate or batch size than the pair's other rows
    train: dict[str, Any] = field(default_factory=dict)
    #: the schedule keys of the network this run pretrains on its teacher (``heads_train:``), over the grid's
    heads_train: dict[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        """The swept values of this run (``beta=30``), empty for a run that is not part of a sweep."""
        return ", ".join(f"{key}={value}" for key, value in self.sweep.items())

    @property
    def row(self) -> str:
        """The run as the report's tables name it: its label, a swept run's values beside in brackets."""
        return f"{self.label} [{self.variant}]" if self.sweep else self.label


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    overrides: dict[str, dict[str, Any]]  # methods entry -> hyper-parameters on this pair
    schedule: Schedule
    runs: tuple[str, ...]  # the rows this column has (all of the grid's runs unless the pair lists some)
    #: methods entry -> its schedule keys on this pair (``pairs[i].methods.<entry>.train``), over the run's own
    run_train: dict[str, dict[str, Any]] = field(default_factory=dict)


def _weights(
    path: str, arch: str, where: str, num_classes: int | None, options: dict, new_classifier: bool = False
) -> int:
    """Check a weights file the grid names before any job: it exists, it is a safe PyTorch file
    (``weights_only``), and its tensors fit ``arch`` (built on the meta device; the file's tensors stay on disk).
    Returns its classifier's classes. ``num_classes`` None: as many as the file has (a published teacher)."""
    from . import published, weights
    from .files import FileProblem

    try:
        if published.is_named(path):
            path = str(published.fetch(path, where))
    except published.FetchError as problem:
        raise GridError(str(problem)) from None
    if not Path(path).is_file():
        raise GridError(
            f"{where}: {path} does not exist (relative paths start at the repository root); name "
            f"torchvision's weights instead (torchvision:<Enum>.<member>, fetched once), or see the "
            f"grid file's header for where to get published weights"
        )
    try:
        state = weights.read(path, arch, mmap=True)
        classes = weights.classes_of(state, path, arch, options)
        weights.match(state, path, arch, num_classes or classes, options, new_classifier)
    except FileProblem as problem:
        raise GridError(f"{where}: {problem}") from None
    return classes


def local_weights(reference: str, where: str) -> str:
    """The file a weights reference stands for here (a named one's place under data/weights/)."""
    from . import published

    try:
        return published.local_path(reference, where)
    except published.FetchError as problem:
        raise GridError(str(problem)) from None


def _buildable(arch: str, options: dict, where: str) -> None:
    """The architecture's own rules on its options (a factory raises ValueError naming the option), checked by
    building it on the meta device (no memory, no initialisation)."""
    import torch

    from .models import create_model

    try:
        with torch.device("meta"):
            create_model(arch, 10, **options)
    except ValueError as error:
        raise GridError(f"{where}.{error}" if str(error).split(":")[0] in options else f"{where}: {error}") from None


def _sweep_variants(sweep: Any, entry: dict, where: str) -> list[dict[str, Any]]:
    """Every combination of a ``sweep:`` mapping's values, after checking that each value is a plain number,
    string or boolean (it becomes part of a folder name), that no list repeats a value (30 and 30.0 train the
    same run twice) and that the entry does not also set a swept key (which value would win?)."""
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise GridError(f"{where}: expected a mapping of parameter -> non-empty list of values")
    for name, values in sweep.items():
        if name in entry:
            raise GridError(
                f"{where}.{name}: the entry also sets {name}: {entry[name]!r}, which every swept run "
                f"replaces; drop it from the entry"
            )
        for value in values:
            if not isinstance(value, (int, float, str, bool)) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise GridError(
                    f"{where}.{name}: {value!r} is not allowed; a swept value is a finite number, a "
                    f"string or true/false (it names the run's folder); write a methods entry per value "
                    f"for anything else"
                )
            if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
                raise GridError(
                    f"{where}.{name}: {value!r} is not allowed in a sweep; a swept string uses letters, "
                    f"digits, '_', '.' and '-' (it names the run's folder)"
                )
        names = [_name_part(name, value) for value in values]
        repeated = sorted({values[i] for i, n in enumerate(names) if names.index(n) != i}, key=str)
        if repeated:
            raise GridError(
                f"{where}.{name}: {values!r} repeats {repeated[0]!r} (as the same run: "
                f"{_name_part(name, repeated[0])}); list each value once"
            )
    return [dict(zip(sweep, combination)) for combination in itertools.product(*sweep.values())]


def _name_part(name: str, value: Any) -> str:
    """``beta200``, ``beta0p5``, ``betam1``, ``beta1e20``: a swept value in a run (folder) name, letters, digits
    and '_' only; equal numbers give equal names (30 and 30.0 both ``beta30``)."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, float)):
        text = repr(int(value)) if float(value).is_integer() and abs(value) < 1e16 else repr(float(value))
    else:
        text = str(value)
    return f"{name}{text}".replace(".", "p").replace("-", "m").replace("+", "")


def _show(variant: dict) -> str:
    return ", ".join(f"{k}: {v!r}" for k, v in variant.items())


def merge_params(params: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """A run's hyper-parameters with a pair's override of them; a combined run's ``parts`` merge part by part
    (``parts: {afd: {beta: 50}}`` changes AFD's beta and keeps every other part and setting)."""
    merged = {**params, **(override or {})}
    if isinstance(params.get("parts"), dict) and isinstance((override or {}).get("parts"), dict):
        assert override is not None  # it has parts
        merged["parts"] = {
            name: {**(params["parts"].get(name) or {}), **(part or {})}
            for name, part in {**params["parts"], **override["parts"]}.items()
        }
    return merged


def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


def schedule_over(base: Schedule, overrides: Any, where: str) -> Schedule:
    if overrides is None:
        return base
    if not isinstance(overrides, dict):
        raise GridError(f"{where}: expected a mapping of schedule keys, got {overrides!r}")
    _known_keys(overrides, SCHEDULE, f"{where}.")
    for key, value in overrides.items():
        _check(value, SCHEDULE["properties"][key], f"{where}.{key}")
    changes: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}  # checked above
    schedule = replace(base, **changes)
    late = [epoch for epoch in schedule.lr_decay_epochs if epoch > schedule.epochs]
    if late:
        raise GridError(
            f"{where}.lr_decay_epochs: {list(schedule.lr_decay_epochs)} decays after the last epoch "
            f"({schedule.epochs}) at {late}; list epochs from 1 to {schedule.epochs}"
        )
    return schedule


class Grid:
    def __init__(self, config: dict[str, Any], source: str = "config"):
        """Parse and check ``config``; what needs the jobs (a method's fit to its networks) the plan checks
        (:class:`afdistill.jobs.Plan`)."""
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
        _known_keys(config, SCHEMA, "")
        for key in SCHEMA["required"]:
            if key not in config:
                raise GridError(f"{key}: missing (required keys: {', '.join(SCHEMA['required'])})")
        top = SCHEMA["properties"]
        for key in ("grid", "device", "jobs_per_gpu", "gpus_per_job", "seeds"):
            if key in config:
                _check(config[key], top[key], key)
        self.name = config["grid"]
        if not re.fullmatch(top["grid"]["pattern"].strip("^$"), self.name):
            raise GridError(f"grid: expected a name of letters, digits, '-' and '_', got {self.name!r}")
        self.dataset = config["dataset"]
        if self.dataset not in DATASETS:
            raise GridError(f"dataset: unknown dataset {self.dataset!r}; allowed: {_allowed(sorted(DATASETS))}")

        data = self._section(config, "data")
        self.data_root = str(data.get("root", "data/raw"))
        self.download = bool(data.get("download", False))
        self.verify_checksums = bool(data.get("verify_checksums", True))
        self.skip_corrupt = bool(data.get("skip_corrupt", False))
        self.device = config.get("device", "auto")
        self.runtime, self.pack = self._parse_runtime(config.get("runtime"))
        self.jobs_per_gpu = config.get("jobs_per_gpu", 1)
        self.gpus_per_job = config.get("gpus_per_job", 1)
        if self.jobs_per_gpu > 1 and self.gpus_per_job > 1:
            raise GridError(
                f"jobs_per_gpu: {self.jobs_per_gpu} with gpus_per_job: {self.gpus_per_job}; a job "
                f"either shares a GPU or spans several, not both: set one of them to 1"
            )
        self.seeds = list(self._parse_seeds(config.get("seeds", [0]), "seeds"))
        if self.runtime.cuda_graphs is True and self.device == "cpu":
            raise GridError("runtime.cuda_graphs: true needs CUDA, and device is cpu; use auto or false")

        self.schedule = schedule_over(Schedule(), config.get("train"), "train")
        self.architectures = self._parse_architectures(config.get("architectures"))

        teachers = self._section(config, "teachers")
        self.teacher_seed = teachers.get("seed", 0)
        self.teacher_schedule = schedule_over(self.schedule, teachers.get("train"), "teachers.train")
        # Named weights (afdistill.published) are checked, and fetched where missing, by _weights below; the
        # jobs read their files at the local paths.
        self.teacher_checkpoint_names = dict(teachers.get("checkpoints") or {})
        self.teacher_init_names = dict(teachers.get("init") or {})
        self.published_teachers = teachers.get("published")

        links = self._section(config, "links")
        self.links_seed = links.get("seed", 0)
        self.links_schedule = schedule_over(self.schedule, links.get("train"), "links.train")
        self.links_params = links.get("params") or {}
        if not isinstance(self.links_params, dict):
            raise GridError(f"links.params: expected a mapping of AFD hyper-parameters, got {self.links_params!r}")

        self.runs = self._parse_methods(config["methods"])
        self.pairs = self._parse_pairs(config["pairs"])
        if self.published_teachers is not None:
            self._add_published_teachers(self.published_teachers, "teachers.published")
        self.teacher_checkpoints = {
            arch: local_weights(ref, f"teachers.checkpoints.{arch}")
            for arch, ref in self.teacher_checkpoint_names.items()
        }
        self.teacher_init = {
            arch: local_weights(ref, f"teachers.init.{arch}") for arch, ref in self.teacher_init_names.items()
        }
        for arch, path in self.teacher_init_names.items():
            where = f"teachers.init.{arch}"
            self._check_arch(arch, where)
            if arch not in self.teachers() or arch in self.teacher_checkpoint_names:
                raise GridError(
                    f"{where}: {arch} is not a teacher of any pair, or is listed under "
                    f"teachers.checkpoints too (evaluated as published, not fine-tuned); teachers: "
                    f"{_allowed(self.teachers())}"
                )
            _weights(
                path,
                arch,
                where,
                DATASETS[self.dataset].num_classes,
                self.architectures.get(arch, {}),
                new_classifier=True,
            )
        self.teacher_classes: dict[str, int] = {}
        for arch, path in self.teacher_checkpoint_names.items():
            where = f"teachers.checkpoints.{arch}"
            self._check_arch(arch, where)
            if arch not in self.teachers():
                raise GridError(f"{where}: {arch} is not a teacher of any pair; teachers: {_allowed(self.teachers())}")
            self.teacher_classes[arch] = _weights(path, arch, where, None, self.architectures.get(arch, {}))
        self._check_student_init()
        self._check_cross_task_teachers()
        self._check_views()

        heads = self._section(config, "heads")
        self.heads_seed = heads.get("seed", 0)
        self.heads_train = heads.get("train") or {}
        schedule_over(self.schedule, self.heads_train, "heads.train")

        report = self._section(config, "report")
        self.metric = report.get("metric", "accuracy")
        self.paper_table = report.get("paper_table")
        if self.paper_table is not None:
            from .paper import PAPER_TABLES

            if self.paper_table not in PAPER_TABLES:
                raise GridError(
                    f"report.paper_table: unknown table {self.paper_table!r}; allowed: {_allowed(sorted(PAPER_TABLES))}"
                )
        from .paper import PAPER_MATRICES

        self.paper_matrices = list(report.get("paper_matrices") or [])
        for index, name in enumerate(self.paper_matrices):
            if name not in PAPER_MATRICES:
                raise GridError(
                    f"report.paper_matrices[{index}]: unknown table {name!r}; "
                    f"allowed: {_allowed(sorted(PAPER_MATRICES))}"
                )
            matrix = PAPER_MATRICES[name]
            pair = next((p for p in self.pairs if (p.teacher, p.student) == matrix.pair), None)
            if matrix.dataset != self.dataset or pair is None:
                raise GridError(
                    f"report.paper_matrices[{index}]: {name} is on {matrix.dataset} "
                    f"{matrix.pair[0]} -> {matrix.pair[1]}, which this grid does not train"
                )
            missing = sorted(set(matrix.runs.values()) - set(pair.runs))
            if missing:
                raise GridError(
                    f"report.paper_matrices[{index}]: {name} needs the runs {', '.join(missing)} "
                    f"on {pair.teacher} -> {pair.student}, which the grid does not train there"
                )

    def check_machine(self) -> None:
        """Refuse, before any job, what this machine cannot run: CUDA asked for where there is none, more GPUs per
        job than it has, CUDA graphs on CPU. The pipeline calls it where jobs run here (not for a SLURM
        submission from a login node: the cluster's nodes decide there)."""
        from .gpu import visible_gpus

        gpus = len(visible_gpus())
        if self.device == "cuda" and not gpus:
            raise GridError(
                f"{self.source}: device: cuda, but this machine has no CUDA GPU (none visible); use "
                f"device: auto (CUDA where there is one, else the CPU) or cpu, or submit to a cluster "
                f"(profiles/slurm)"
            )
        on_cuda = self.device == "cuda" or (self.device == "auto" and gpus > 0)
        if self.gpus_per_job > 1 and not on_cuda:
            raise GridError(
                f"{self.source}: gpus_per_job: {self.gpus_per_job}, but the jobs run on the CPU here "
                f"(device: {self.device}, no CUDA GPU visible); set gpus_per_job: 1, or run where "
                f"there are GPUs"
            )
        if on_cuda and self.gpus_per_job > gpus:
            raise GridError(
                f"{self.source}: gpus_per_job: {self.gpus_per_job}, but this machine has {gpus} GPU(s); "
                f"expected at most {gpus}"
            )
        if self.runtime.cuda_graphs is True and not on_cuda:
            raise GridError(
                f"{self.source}: runtime.cuda_graphs: true needs CUDA, and the jobs run on the CPU here "
                f"(device: {self.device}); use auto (CUDA graphs wherever they can run) or false"
            )

    def _check_student_init(self) -> None:
        """A run's ``init:`` weights, against every student architecture the run trains."""
        classes = DATASETS[self.dataset].num_classes
        checked = set()
        for pair in self.pairs:
            for name in pair.runs:
                run = self.runs[name]
                if run.init is None or (run.init, pair.student) in checked:
                    continue
                checked.add((run.init, pair.student))
                _weights(
                    run.init,
                    pair.student,
                    f"methods.{run.group}.init",
                    classes,
                    self.architectures.get(pair.student, {}),
                    new_classifier=True,
                )

    def _add_published_teachers(self, name: Any, where: str) -> None:
        """``teachers.published: <set>``: every teacher not given otherwise, from the set, fetched once."""
        from . import published

        teachers = [
            arch
            for arch in self.teachers()
            if arch not in self.teacher_checkpoint_names and arch not in self.teacher_init_names
        ]
        try:
            if not isinstance(name, str):
                raise published.FetchError(
                    f"{where}: expected the name of a published teacher set, got {name!r}; "
                    f"known: {', '.join(published.TEACHER_SETS)}"
                )
            paths = published.teacher_paths(name, teachers, where)
            if teachers:
                published.fetch_teacher_set(name, teachers, where)
        except published.FetchError as problem:
            raise GridError(str(problem)) from None
        self.teacher_checkpoint_names.update(paths)

    def _check_cross_task_teachers(self) -> None:
        """A published teacher of another task (ImageNet's 1000 classes beside a transfer set) lends its features
        only: runs that read its logits (KD's ``alpha``, logit methods) are refused on its pairs."""
        classes = DATASETS[self.dataset].num_classes
        for arch, path in self.teacher_checkpoints.items():
            own = self.teacher_classes[arch]
            if own == classes:
                continue
            for pair in (p for p in self.pairs if p.teacher == arch):
                for name in pair.runs:
                    run = self.runs[name]
                    cls = method_class(run.method)
                    params = {**method_defaults(run.method), **run.params, **self.run_params(pair, name)}
                    caps = cls.capabilities(params)
                    if caps.reads_teacher_logits or (caps.kd_on_top and params.get("alpha", 0)):
                        why = (
                            "its method reads the teacher's logits"
                            if caps.reads_teacher_logits
                            else f"alpha: {params['alpha']} adds KD on the teacher's logits"
                        )
                        raise GridError(
                            f"methods.{run.group}: {why}, but teacher {arch} ({path}) has {own} "
                            f"classes, not {self.dataset}'s {classes} (a teacher of another task); "
                            f"use a feature method with alpha: 0 on {arch} -> {pair.student}"
                        )

    def _check_views(self) -> None:
        """A second, strongly augmented view (MLKD) needs a dataset held on the device: refused on streamed ones."""
        if DATASETS[self.dataset].storage == "device":
            return
        for run in self.runs.values():
            if method_class(run.method).capabilities({**method_defaults(run.method), **run.params}).strong_view:
                raise GridError(
                    f"methods.{run.group}: trains on a second, strongly augmented view, which the "
                    f"streamed dataset {self.dataset} does not provide; set strong_view: false"
                )

    def _parse_architectures(self, architectures: Any) -> dict[str, dict]:
        from .models.registry import model_options

        architectures = architectures or {}
        if not isinstance(architectures, dict):
            raise GridError(f"architectures: expected a mapping of architecture -> options, got {architectures!r}")
        for arch, options in architectures.items():
            self._check_arch(arch, f"architectures.{arch}")
            allowed = model_options(arch)
            for key, value in (options or {}).items():
                if key not in allowed:
                    raise GridError(
                        f"architectures.{arch}.{key}: unknown option; allowed: "
                        f"{_allowed(allowed) if allowed else f'none ({arch} takes no options)'}"
                    )
                if type(value) is not type(allowed[key]):
                    raise GridError(
                        f"architectures.{arch}.{key}: {value!r} is not allowed; expected "
                        f"{type(allowed[key]).__name__} like the default {allowed[key]!r}"
                    )
            _buildable(arch, options or {}, f"architectures.{arch}")
        return {arch: dict(options or {}) for arch, options in architectures.items()}

    def _section(self, config: dict, key: str) -> dict:
        """A mapping section of the grid, its keys and scalar values checked against :data:`SCHEMA`."""
        value = config.get(key) or {}
        if not isinstance(value, dict):
            raise GridError(f"{key}: expected a mapping, got {value!r}")
        rule = SCHEMA["properties"][key]
        _known_keys(value, rule, f"{key}.")
        for name, item in value.items():
            if (
                rule["properties"][name].get("type") in ("integer", "number", "boolean", "string")
                or "enum" in rule["properties"][name]
            ):
                _check(item, rule["properties"][name], f"{key}.{name}")
        return value

    def _parse_runtime(self, runtime: Any) -> tuple[Runtime, bool]:
        """The jobs' runtime settings, and whether students train in packs."""
        runtime = runtime or {}
        if not isinstance(runtime, dict):
            raise GridError(f"runtime: expected a mapping, got {runtime!r}")
        rule = SCHEMA["properties"]["runtime"]
        _known_keys(runtime, rule, "runtime.")
        for key, value in runtime.items():
            _check(value, rule["properties"][key], f"runtime.{key}")
        pack = runtime.get("pack", PACK["default"])
        if runtime.get("fuse") and not pack:
            raise GridError("runtime.fuse: true runs a pack's students as one network; it needs runtime.pack: true")
        return Runtime(**{key: value for key, value in runtime.items() if key != "pack"}), pack

    def _check_arch(self, arch: Any, where: str) -> None:
        if arch not in list_models():
            raise GridError(f"{where}: unknown architecture {arch!r}; allowed: {_allowed(list_models())}")

    def _check_params(self, method: str, params: dict, where: str) -> None:
        try:
            check_method_params(method, params, where)
        except ValueError as error:
            raise GridError(str(error)) from None

    @staticmethod
    def _parse_seeds(seeds: Any, where: str) -> tuple[int, ...]:
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds)
        ):
            raise GridError(f"{where}: expected a non-empty list of seeds (integers >= 0), got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise GridError(f"{where}: {seeds!r} repeats a seed")
        return tuple(seeds)

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
                raise GridError(
                    f"{where}.method: unknown method {method!r}; allowed: {_allowed(list_methods())}"
                    if "method" in (methods[key] or {})
                    else f"{where}: unknown method {key!r} (name the type with `method:`); "
                    f"allowed: {_allowed(list_methods())}"
                )
            label = str(entry.pop("label", method_class(method).label))
            train = entry.pop("train", None) or {}
            schedule_over(self.schedule, train, f"{where}.train")  # its keys and values; combinations: _parse_pairs
            heads_train = entry.pop("heads_train", None) or {}
            schedule_over(self.schedule, heads_train, f"{where}.heads_train")
            init = entry.pop("init", None)
            if init is not None and not isinstance(init, str):
                raise GridError(
                    f"{where}.init: {init!r} is not allowed; expected the path of a weights file or "
                    f"torchvision weights by name (the student's starting weights, e.g. "
                    f"torchvision:ResNet18_Weights.IMAGENET1K_V1)"
                )
            sweep = entry.pop("sweep", None) or {}
            seeds = self._parse_seeds(entry.pop("seeds", self.seeds), f"{where}.seeds")
            if not sweep:
                self._check_params(method, entry, where)
                runs[key] = Run(
                    key, method, entry, label, key, seeds=seeds, init=init, train=train, heads_train=heads_train
                )
                continue
            for variant in _sweep_variants(sweep, entry, f"{where}.sweep"):
                suffix = "_".join(_name_part(n, v) for n, v in variant.items())
                name = f"{key}_{suffix}"
                if name in runs or name in methods:
                    raise GridError(
                        f"{where}.sweep: the run it generates for {variant} is named {name!r}, like "
                        f"another run of the grid; rename one of the entries"
                    )
                self._check_params(method, {**entry, **variant}, f"{where}.sweep ({_show(variant)})")
                runs[name] = Run(
                    name, method, {**entry, **variant}, label, key, variant, seeds, init, train, heads_train
                )
        return runs

    def _parse_pairs(self, pairs: Any) -> list[Pair]:
        if not isinstance(pairs, list) or not pairs:
            raise GridError("pairs: expected a non-empty list of {teacher, student} entries")
        parsed, seen = [], set()
        for index, entry in enumerate(pairs):
            where = f"pairs[{index}]"
            if not isinstance(entry, dict):
                raise GridError(f"{where}: expected a mapping with teacher and student")
            _known_keys(entry, SCHEMA["properties"]["pairs"]["items"], f"{where}.")
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
            run_train = {}
            for group, params in list(overrides.items()):
                if isinstance(params, dict) and "train" in params:
                    params = dict(params)
                    run_train[group] = params.pop("train") or {}
                    overrides[group] = params
            for group, params in overrides.items():
                if not isinstance(params, (dict, type(None))):
                    raise GridError(f"{where}.methods.{group}: expected a mapping of hyper-parameters, got {params!r}")
                if group == "links":  # the links run's hyper-parameters: afdistill.kinds.links checks them
                    continue
                members = [run for run in self.runs.values() if run.group == group]
                if not members:
                    raise GridError(
                        f"{where}.methods.{group}: no such entry under methods; "
                        f"allowed: {_allowed(list(dict.fromkeys(r.group for r in self.runs.values())) + ['links'])}"
                    )
                swept = set(members[0].sweep) & set(params or {})
                if swept:
                    raise GridError(
                        f"{where}.methods.{group}.{sorted(swept)[0]}: this parameter is swept under "
                        f"methods.{group}.sweep; override it there or drop the sweep"
                    )
                parts = (params or {}).get("parts")
                known = members[0].params.get("parts")
                if isinstance(parts, dict) and isinstance(known, dict) and set(parts) - set(known):
                    raise GridError(
                        f"{where}.methods.{group}.parts.{sorted(set(parts) - set(known))[0]}: no such part "
                        f"of methods.{group}; an override changes the parts it has "
                        f"({_allowed(known)}), part by part"
                    )
                for run in members:
                    self._check_params(run.method, merge_params(run.params, params), f"{where}.methods.{group}")
            names = (entry["teacher"], entry["student"])
            if names in seen:
                raise GridError(f"{where}: the pair {names[0]} -> {names[1]} is listed twice")
            seen.add(names)
            schedule = schedule_over(self.schedule, entry.get("train"), f"{where}.train")
            pair = Pair(entry["teacher"], entry["student"], overrides, schedule, tuple(runs or self.runs), run_train)
            for group, train in run_train.items():
                if group == "links":
                    raise GridError(f"{where}.methods.links.train: the links run's schedule is links.train")
            for name in pair.runs:  # every run's schedule on this pair, checked once here
                self.run_schedule(pair, name, f"{where}.methods.{self.runs[name].group}.train")
            parsed.append(pair)
        return parsed

    # ------------------------------------------------------------ what a run trains with

    def pair(self, teacher: str, student: str) -> Pair:
        for pair in self.pairs:
            if (pair.teacher, pair.student) == (teacher, student):
                return pair
        raise GridError(f"{self.source}: {teacher} -> {student} is not a pair of grid {self.name!r}")

    def run_schedule(self, pair: Pair, run: str, where: str = "train") -> Schedule:
        """The schedule run ``run`` trains with on ``pair``: the pair's, with the run's own ``train:`` keys and the
        pair's ``methods.<entry>.train`` over it."""
        group = self.runs[run].group
        return schedule_over(pair.schedule, {**self.runs[run].train, **pair.run_train.get(group, {})}, where)

    def run_params(self, pair: Pair, run: str) -> dict[str, Any]:
        """The hyper-parameters run ``run`` trains with on ``pair``: its entry's, with the pair's override."""
        return merge_params(self.runs[run].params, pair.overrides.get(self.runs[run].group))

    def teachers(self) -> list[str]:
        return list(dict.fromkeys(pair.teacher for pair in self.pairs))

    def run_needs(self, run: str) -> str | None:
        """The pre-stage a run consumes (``"links"`` or ``"heads"``), if any: the method says, from its params."""
        return method_class(self.runs[run].method).capabilities(self.runs[run].params).pre_stage
