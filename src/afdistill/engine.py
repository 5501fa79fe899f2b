"""The training engine: one loop for every job that trains something.

Read it top to bottom in :func:`train`: build the networks the spec names
(the trained one, the frozen one), the method and the optimiser; resume from
the job's checkpoint; then :func:`train_one_epoch` (one :func:`train_step` per
batch), :func:`evaluate` and :func:`save_checkpoint` per epoch. Everything that decides the result is in
the :class:`~afdistill.spec.JobSpec`; the seed fixes initialisation, data
order and augmentation (each epoch draws from its own generator seeded by
``(seed, epoch)``), so an interrupted job that resumes from its last
checkpoint continues exactly where an uninterrupted one would be. The data
source (``streaming.open_prepared``: a ``DeviceData`` held on the device, or a
``StreamingData`` decoded by worker processes) is where a loader plugs in.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from . import distributed
from .data import DeviceData
from .fused import FusedStudents, fusable
from .graphs import GraphedStep
from .heap import keep_freed_memory
from .methods import Batch, Context, Method, View, build_method, dry_run, method_class
from .models import Features, classifier, classifier_name, create_model
from .models.fold import fold_batch_norm
from .spec import JobSpec, Runtime, Schedule
from .streaming import open_prepared

CHECKPOINT = "checkpoint.pt"  # resumable state, rewritten atomically after every epoch; the last one is kept
MODEL = "model.pt"  # final weights, {"model": state_dict, ...} like RepDistiller's checkpoints
METRICS = "metrics.json"


class Tracker(Protocol):
    """Where a job reports to (MLflow in the pipeline, ``afdistill.tracking``); the engine knows nothing more of it.

    ``log_metrics`` may be called again for an epoch a killed attempt already
    logged; the tracker keeps one value per epoch.
    """

    def start(self, resume_run_id: str | None) -> str | None: ...
    def log_runtime(self, resolved: dict[str, Any]) -> None: ...
    def log_input(self, name: str, source: str | Path, images, labels, context: str) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_model(self, model: nn.Module, example: torch.Tensor, name: str) -> Any: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def finish(self, status: str) -> None: ...


class NullTracker:
    def start(self, resume_run_id):
        return resume_run_id

    def log_runtime(self, resolved):
        pass

    def log_input(self, name, source, images, labels, context):
        pass

    def log_metrics(self, metrics, step):
        pass

    def log_model(self, model, example, name):
        pass

    def log_artifact(self, path):
        pass

    def finish(self, status):
        pass


def pick_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device: cuda was asked for, but torch sees no CUDA device on this machine; use device: auto or cpu"
        )
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_network(
    path: str | Path,
    arch: str,
    num_classes: int | None,
    device: torch.device,
    options: dict[str, Any] | None = None,
    new_classifier: bool = False,
) -> nn.Module:
    """Load a checkpoint with ``strict=True``: ours, RepDistiller's ``{'model': ...}`` or a bare state dict.

    ``num_classes`` None: as many as the checkpoint's classifier has (a teacher trained on another task,
    such as torchvision's ImageNet ResNet34 in the transfer grids). ``new_classifier``: every weight but the
    classifier's, which starts fresh for ``num_classes`` (fine-tuning on a new task). ``options``
    (``create_model``'s) change how the network trains, never its parameters' names."""
    from . import weights

    state = weights.read(path, arch, fix=weights.GIVEN)
    if num_classes is None:
        num_classes = weights.classes_of(state, path, arch, options)
    model = create_model(arch, num_classes, **(options or {}))
    weights.match(state, path, arch, num_classes, options, new_classifier, network=model)
    if new_classifier:
        head = classifier_name(arch, **(options or {})) + "."
        state = {key: value for key, value in state.items() if not key.startswith(head)}
    model.load_state_dict(state, strict=not new_classifier)
    return model.to(device)


def num_classes_of(model: nn.Module) -> int:
    return classifier(model)[1].out_features


@dataclass(frozen=True)
class Resolved:
    """What ``Runtime`` settings mean on this device, for this method."""

    bf16: bool
    channels_last: bool
    compile: str | None
    deterministic: bool = True
    cuda_graphs: bool = False
    keep_freed_memory: bool = False
    fuse: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "precision": "bf16" if self.bf16 else "fp32",
            "channels_last": self.channels_last,
            "compile": self.compile or "none",
            "deterministic": self.deterministic,
            "cuda_graphs": self.cuda_graphs,
            "keep_freed_memory": self.keep_freed_memory,
            "fuse": self.fuse,
        }


def resolve_runtime(
    runtime: Runtime, device: torch.device, method: str = "vanilla", params: dict[str, Any] | None = None
) -> Resolved:
    cuda = device.type == "cuda"
    if runtime.precision == "auto":
        if cuda:
            bf16 = torch.cuda.get_device_capability(device)[0] >= 8
        else:
            bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    else:
        bf16 = runtime.precision == "bf16"
    channels_last = True if runtime.channels_last == "auto" else bool(runtime.channels_last)
    graph_safe = method_class(method).capabilities(params or {}).cuda_graphs
    if runtime.cuda_graphs is True and not cuda:
        raise ValueError("runtime.cuda_graphs: true needs a CUDA device; use auto or false on CPU")
    if runtime.cuda_graphs is True and not graph_safe:
        raise ValueError(f"runtime.cuda_graphs: method {method!r} cannot run as a CUDA graph; use auto or false")
    graphs = cuda and graph_safe and runtime.cuda_graphs is not False
    # Compiling is opt-in: an eager CUDA step at batch 64 ran 6% slower compiled (AFD resnet56 -> resnet20 on an
    # H100, benchmarks/results/), a replayed graph already removes the launch cost compiling would cut, and
    # compiled networks inside a graph make kernels depend on what the process compiled before.
    mode = "none" if runtime.compile == "auto" else runtime.compile
    # On CUDA the host allocates little per step; on CPU every activation is a fresh heap block.
    keep = not cuda if runtime.keep_freed_memory == "auto" else bool(runtime.keep_freed_memory)
    return Resolved(
        bf16=bf16,
        channels_last=channels_last,
        compile=None if mode == "none" else mode,
        deterministic=runtime.deterministic,
        cuda_graphs=graphs,
        keep_freed_memory=keep,
        fuse=runtime.fuse,
    )


def set_cuda_determinism(deterministic: bool) -> None:
    """Deterministic CUDA kernels (same seed, same metrics), or cuDNN autotuning (faster, not reproducible).

    cuBLAS reads its workspace setting when it first starts, so this runs
    before the job's first matrix product; an op with no deterministic CUDA
    kernel then raises instead of silently varying.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)


def compiled(model: nn.Module, mode: str | None) -> nn.Module:
    """``torch.compile`` the network, falling back to eager execution if compilation fails."""
    if mode is None:
        return model
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    return cast(nn.Module, torch.compile(model, mode=mode))  # an OptimizedModule, called like the network


#: the random streams of an epoch: its batches (order and augmentation), and MLKD's strong view of them
BATCHES, STRONG_VIEW = 0, 1


def seed_for(seed: int, epoch: int, stream: int = BATCHES) -> int:
    """Independent, reproducible stream per (seed, epoch, stream)."""
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729 + 17) % (2**63 - 1)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: DeviceData,
    split: str = "test",
    runtime: Resolved | None = None,
    forward: nn.Module | None = None,
) -> dict[str, float]:
    model.eval()
    forward = model if forward is None else forward
    runtime = runtime or Resolved(bf16=False, channels_last=False, compile=None)
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    correct1 = correct5 = total = 0
    for images, labels in data.eval_batches(split):
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=runtime.bf16):
            logits = forward(images.contiguous(memory_format=layout))
        top = logits.topk(min(5, data.num_classes), dim=1).indices
        hits = top.eq(labels.unsqueeze(1))
        correct1 += hits[:, :1].sum()
        correct5 += hits.sum()
        total += len(labels)
    return {"top1": float(correct1) / total, "top5": float(correct5) / total}


class TrainingDiverged(RuntimeError):
    """A loss turned non-finite; nothing of the epoch is kept and no result is written."""


def _atomic_save(obj: Any, path: Path) -> None:
    from .files import atomic_write

    atomic_write(path, lambda handle: torch.save(obj, handle))


def _atomic_write_json(record: dict, path: Path) -> None:
    from .files import atomic_write

    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))


def _owns_terminal() -> bool:
    """A bar only for the terminal's foreground job: jobs started with ``&`` (or by a scheduler) print lines,
    so two jobs in one terminal never overwrite each other's bars."""
    try:
        return sys.stderr.isatty() and os.tcgetpgrp(sys.stderr.fileno()) == os.getpgrp()
    except OSError:
        return False


def _progress(iterable, total: int, description: str):
    if not _owns_terminal():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)


@dataclass
class Result:
    record: dict[str, Any]  # what metrics.json holds
    model: nn.Module | None  # the trained network (None: only the method's modules trained)
    method: nn.Module
    teacher: nn.Module | None
    data: DeviceData


@dataclass
class Networks:
    """What a job trains and what it only reads, built from the spec's roles."""

    student: nn.Module | None  # trained with the method's modules (None: the method's modules alone)
    teacher: nn.Module | None  # frozen, in eval mode


def build_networks(
    spec: JobSpec, data: DeviceData, device: torch.device, teacher_checkpoint: str | Path | None
) -> Networks:
    student = None
    if spec.arch is not None and spec.checkpoint:
        # A published network evaluated as it is keeps its own classifier (its accuracy is undefined on a
        # dataset of other classes); one trained further needs the dataset's classes or a new classifier.
        evaluated = spec.schedule.epochs == 0 and not spec.new_classifier
        student = load_network(
            spec.checkpoint,
            spec.arch,
            None if evaluated else data.num_classes,
            device,
            spec.model_options,
            new_classifier=spec.new_classifier,
        )
    elif spec.arch is not None:
        student = create_model(spec.arch, data.num_classes, **spec.model_options).to(device)
    teacher = None
    if spec.teacher is not None:
        # Its classes are its checkpoint's: a teacher from another task (transfer) lends only its features.
        teacher = load_network(
            _required(teacher_checkpoint, spec), spec.teacher, None, device, spec.teacher_options
        ).eval()
        teacher.requires_grad_(False)
    return Networks(student, teacher)


def train(
    spec: JobSpec,
    data_dir: str | Path,
    out_dir: str | Path,
    teacher_checkpoint: str | Path | None = None,
    artifact: Any = None,
    tracker: Tracker | None = None,
    log=print,
    identity: str | None = None,
) -> Result:
    """Run one job to completion, resuming if ``out_dir`` holds its checkpoint: a pack of one
    (:func:`train_pack`).

    The spec's roles decide what trains (``arch``, from ``checkpoint`` if
    given) and what is read frozen (``teacher``, from ``teacher_checkpoint``);
    ``artifact`` is what the method's pre-stage produced. A job whose final
    checkpoint is already in ``out_dir`` is recognised, not retrained: its
    results are written again from it and its tracker run is reused.
    ``identity`` (the pipeline passes the job's fingerprint, which also covers
    the code and the inputs) decides whether a checkpoint is this job's; by
    default the spec alone does.

    The tracker is started (or re-opened, on resume) here and fed every
    epoch; finishing it is the caller's, who may still log artifacts.
    """
    member = Member(spec, Path(out_dir), artifact, tracker or NullTracker(), identity)
    (outcome,) = train_pack([member], data_dir, teacher_checkpoint, log)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@dataclass
class Member:
    """One job of a pack: its spec, its folder, what its method's pre-stage produced, where it reports, and
    what identifies its checkpoint (``identity``, default: the spec)."""

    spec: JobSpec
    out_dir: Path
    artifact: Any = None
    tracker: Tracker = field(default_factory=NullTracker)
    identity: str | None = None


def pack_key(spec: JobSpec) -> tuple:
    """What the jobs of one pack share: the same batches (dataset, seed, batch size), the same frozen teacher
    and the same device and runtime settings. Their methods, learning rates and epoch counts may differ; a
    strong view (MLKD) is drawn from a stream of its own (:data:`STRONG_VIEW`), so it changes no other member's
    batches."""
    return (
        spec.dataset,
        spec.seed,
        spec.schedule.batch_size,
        spec.teacher,
        json.dumps(spec.teacher_options, sort_keys=True),
        spec.device,
        json.dumps(asdict(spec.runtime), sort_keys=True),
    )


def train_pack(
    members: list[Member], data_dir: str | Path, teacher_checkpoint: str | Path | None = None, log=print
) -> list[Result | Exception]:
    """Train jobs that read the same batches and the same frozen teacher (one :func:`pack_key`) in one process:
    one data stream and, for a pack of several, one teacher forward per batch for all of them
    (:class:`SharedForward`). Each member keeps its own student, method, optimiser, global random stream,
    checkpoint, tracker run and files, so its results are those of the same job trained alone: each is built
    exactly as it would be alone (its seed, then its networks, teacher included, then its method), and its
    steps draw from its own copy of torch's global generator. A member that fails is reported in its slot of
    the returned list while the others train on; a pack of one raises."""
    keys = {pack_key(member.spec) for member in members}
    if len(keys) > 1:
        raise ValueError(
            "these jobs cannot train as one pack (their batches, teacher or runtime differ): "
            + ", ".join(member.spec.title for member in members)
        )
    device, group, runtimes = _start([member.spec for member in members])
    if not group.is_main:
        members, log = [replace(member, tracker=NullTracker()) for member in members], _silent
    data = open_prepared(data_dir, device)  # held on the device, or streamed from disk (ImageNet)
    students = [
        _prepare(member, runtime, data, data_dir, device, group, teacher_checkpoint, log, shares_teacher=index > 0)
        for index, (member, runtime) in enumerate(zip(members, runtimes))
    ]
    shared = None
    if len(students) > 1:
        shared = SharedForward(students[0].teacher_forward, runtimes[0].bf16) if members[0].spec.teacher else None
        log(
            f"pack of {len(students)} {'students' if members[0].spec.kind == 'student' else 'jobs'} on the same batches"
            + (", one teacher forward per batch for all" if shared else "")
            + ": "
            + ", ".join(member.spec.title for member in members)
        )
        fused = _fuse(students)
        if fused:
            log(
                f"fused (runtime.fuse): {len(fused)} of them run as one network per architecture: "
                + ", ".join(student.spec.title for student in students if id(student) in fused)
            )
    for student in students:
        student.run_step = _step_of(student, group, shared)

    # ---- the loop
    layout = torch.channels_last if runtimes[0].channels_last else torch.contiguous_format
    last = max(member.spec.schedule.epochs for member in members)
    for epoch in range(min(student.progress.epoch for student in students) + 1, last + 1):
        active = [s for s in students if s.outcome is None and s.progress.epoch < epoch <= s.spec.schedule.epochs]
        if not active:
            continue
        epoch_metrics = train_one_epoch(epoch, active, data, layout, device, group, shared)
        for student, metrics in zip(active, epoch_metrics):
            if metrics is not None:
                _contain(student, len(students), log, _end_epoch, student, epoch, metrics, data, group)
        distributed.barrier(group)  # no rank runs ahead of the last checkpoint
    distributed.stop(group)  # no collective operation follows

    teacher_top1: list[float | None] = []  # the teacher's accuracy, evaluated once for the pack
    outcomes: list[Result | Exception] = []
    for student in students:
        if student.outcome is None:
            _contain(student, len(students), log, _finish, student, data, device, group, teacher_top1)
        outcomes.append(cast("Result | Exception", student.outcome))
    return outcomes


def _start(specs: list[JobSpec]) -> tuple[torch.device, distributed.Group, list[Resolved]]:
    """The jobs' device, their data-parallel group (under torchrun: one rank of it, ``afdistill.distributed``;
    rank 0 alone writes and logs) and what each one's runtime settings mean there; CUDA set up accordingly."""
    device = pick_device(specs[0].device)
    group = distributed.start(device.type)
    device = distributed.device_for(group, device)
    if group.active and specs[0].schedule.batch_size % group.world_size:
        raise ValueError(
            f"{specs[0].title}: batch_size {specs[0].schedule.batch_size} does not split over "
            f"{group.world_size} processes; use a multiple of {group.world_size}"
        )
    runtimes = [resolve_runtime(spec.runtime, device, spec.method, spec.method_params) for spec in specs]
    if group.active or len(specs) > 1:
        # gradients are all-reduced between the graph's kernels, or the teacher's forward is shared between
        # steps: no CUDA graph
        runtimes = [replace(runtime, cuda_graphs=False) for runtime in runtimes]
    if group.active:  # DDP's hooks read each student's own backward pass: no fused students
        runtimes = [replace(runtime, fuse=False) for runtime in runtimes]
    if device.type == "cuda":
        set_cuda_determinism(runtimes[0].deterministic)
    if runtimes[0].keep_freed_memory:
        keep_freed_memory()
    return device, group, runtimes


@dataclass
class Student:
    """A member of a pack as it trains."""

    member: Member
    runtime: Resolved
    state: Trainable
    teacher: nn.Module | None
    student_forward: Any  # under DistributedDataParallel in a data-parallel job
    teacher_forward: Any
    method_forward: Any  # the method, under DistributedDataParallel in a data-parallel job (if it trains modules)
    trainable: list[nn.Parameter]
    progress: Progress
    identity: str
    random_state: torch.Tensor  # torch's global generator as this job alone would have it
    started: float = 0.0
    first_epoch: int = 1
    run_step: Any = None
    outcome: Result | Exception | None = None  # None while it trains
    log: Any = print

    @property
    def spec(self) -> JobSpec:
        return self.member.spec

    @contextmanager
    def random_stream(self, packed: bool):
        """Torch's global generator as this job alone would have it (dropout, a method's global draws)."""
        if not packed:
            yield
            return
        saved = torch.get_rng_state()
        torch.set_rng_state(self.random_state)
        try:
            yield
        finally:
            self.random_state = torch.get_rng_state()
            torch.set_rng_state(saved)


def _prepare(
    member: Member,
    runtime: Resolved,
    data: DeviceData,
    data_dir: str | Path,
    device: torch.device,
    group: distributed.Group,
    teacher_checkpoint: str | Path | None,
    log,
    shares_teacher: bool,
) -> Student:
    """One job's networks, method and optimiser, built as the job alone builds them, resumed from its checkpoint
    and its tracker run started. ``shares_teacher``: the pack runs another member's teacher forward for it."""
    spec = member.spec
    member.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    networks = build_networks(spec, data, device, teacher_checkpoint)
    student, teacher = networks.student, networks.teacher
    method = _build_method(spec, data, networks, member.artifact, device)
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    student_forward, teacher_forward = _forwards(networks, layout, runtime.compile, fold_teacher=not shares_teacher)
    # DDP averages the gradients in its backward hooks; wrapped before resuming, so that its start-up broadcast
    # copies rank 0's initial weights, which every rank has already (same seed)
    student_forward = distributed.data_parallel(group, student_forward, device)
    method_forward = distributed.data_parallel(group, method, device, every_step=False)
    trainable = (list(student.parameters()) if student is not None else []) + list(method.trainable_parameters())
    schedule = spec.schedule
    optimizer = torch.optim.SGD(
        trainable,
        lr=schedule.lr,
        momentum=schedule.momentum,
        weight_decay=schedule.weight_decay,
        nesterov=schedule.nesterov,
    )
    state = Trainable(student, method, optimizer)
    identity = member.identity or spec.to_json()
    random_state = torch.get_rng_state()

    # ---- resume
    progress = load_checkpoint(member.out_dir / CHECKPOINT, spec, identity, state, device, log)
    _start_tracking(member.tracker, progress, spec, data, data_dir, device, group, runtime)
    if progress.complete:
        log(f"[{spec.title}] already complete in {member.out_dir}; writing its results again from {CHECKPOINT}")
    else:
        log(
            f"[{spec.title}] on {device.type}"
            + (f" x {group.world_size} processes" if group.active else "")
            + ": "
            + ", ".join(f"{k} {v}" for k, v in runtime.record().items())
        )
    return Student(
        member,
        runtime,
        state,
        teacher,
        student_forward,
        teacher_forward,
        method_forward,
        trainable,
        progress,
        identity,
        random_state,
        started=time.monotonic(),
        first_epoch=progress.epoch + 1,
        log=log,
    )


def _step_of(student: Student, group: distributed.Group, shared: SharedForward | None):
    """The student's training step: :func:`train_step` with its networks, method and optimiser (replayed as a
    CUDA graph where its runtime says so); in a pack, the teacher's forward is the pack's."""
    step = partial(
        train_step,
        method=student.state.method,
        method_forward=student.method_forward,
        student=student.state.student,
        student_forward=student.student_forward,
        teacher_forward=shared if shared is not None else student.teacher_forward,
        optimizer=student.state.optimizer,
        trainable=student.trainable,
        bf16=student.runtime.bf16,
        group=group,
    )
    return GraphedStep(step, student.state.optimizer) if student.runtime.cuda_graphs else step


class SharedForward:
    """The frozen teacher's forward, computed once per batch for every student of a pack.

    :meth:`compute` runs it on the batch (and its strong view); a student's step then calls it like the teacher's
    forward and gets the stored features of the same images. :meth:`clear` drops them after the batch."""

    def __init__(self, forward, bf16: bool):
        self.forward = forward
        self.bf16 = bf16
        self.stored: dict[tuple, Features] = {}

    def compute(self, *batches: torch.Tensor) -> None:
        for images in batches:
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
                with torch.inference_mode():
                    self.stored[_key(images)] = self.forward(images, with_features=True)

    def __call__(self, images: torch.Tensor, with_features: bool = True) -> Features:
        found = self.stored.get(_key(images))
        if found is None:  # not a batch of this step: a method's own input (none today)
            return self.forward(images, with_features=with_features)
        return found

    def clear(self) -> None:
        self.stored.clear()


def _key(images: torch.Tensor) -> tuple:
    """The same images, seen through ``detach()`` or not."""
    return (images.data_ptr(), tuple(images.shape), images.stride(), images.dtype)


def _contain(student: Student, pack_size: int, log, work, *args) -> None:
    """Run a member's part; in a pack of several, a failure ends that member alone (reported in its outcome)."""
    if pack_size == 1:
        work(*args)
        return
    try:
        work(*args)
    except Exception as error:
        student.outcome = error
        log(f"[{student.spec.title}] failed: {error}; the pack's other students go on")


def _end_epoch(student: Student, epoch: int, metrics: dict[str, float], data: DeviceData, group) -> None:
    """After a member's epoch: its BatchNorm statistics agreed over the ranks, its test accuracy, its history and
    tracker, its log line and its checkpoint."""
    spec, state, progress = student.spec, student.state, student.progress
    distributed.average_buffers(group, state.student)
    if state.student is not None:
        forward = distributed.unwrapped(student.student_forward)
        test = evaluate(state.student, data, runtime=student.runtime, forward=forward)
        metrics.update(test_top1=test["top1"], test_top5=test["top5"])
    _check_finite(spec, epoch, metrics)
    summary = state.method.epoch_summary()
    progress.history.append(metrics)
    progress.summaries.append({k: v.tolist() if torch.is_tensor(v) else v for k, v in summary.items()})
    progress.epoch = epoch
    student.member.tracker.log_metrics(metrics, step=epoch)
    elapsed = time.monotonic() - student.started
    remaining = elapsed / (epoch - student.first_epoch + 1) * (spec.schedule.epochs - epoch)
    student.log(_epoch_line(spec, epoch, metrics, elapsed, remaining))
    if group.is_main:
        complete = epoch == spec.schedule.epochs
        save_checkpoint(student.member.out_dir / CHECKPOINT, spec, student.identity, state, progress, complete)


def _build_method(spec: JobSpec, data: DeviceData, networks: Networks, artifact: Any, device: torch.device) -> Method:
    """The job's method, built on dry-run features of both networks (for their shapes)."""
    student, teacher = networks.student, networks.teacher
    sample = data.normalize(data.train.images[:2])
    context = Context(
        student=student,
        teacher=teacher,
        student_sample=dry_run(student, sample) if student is not None else None,
        teacher_sample=dry_run(teacher, sample) if teacher is not None else None,
        num_classes=data.num_classes,
        train_labels=data.train.labels,
        batch_size=spec.schedule.batch_size,
        seed=spec.seed,
        artifact=artifact,
    )
    method = build_method(spec.method, spec.method_params, context).to(device)
    if method.caps.strong_view and not hasattr(data, "strong_batch"):
        raise ValueError(
            f"{spec.title}: method {spec.method!r} trains on a second, strongly augmented view, which "
            f"the streamed dataset {spec.dataset!r} does not provide; set strong_view: false"
        )
    return method


def _forwards(
    networks: Networks, layout: torch.memory_format, compile_mode: str | None, fold_teacher: bool = True
) -> tuple[Any, Any]:
    """The forward passes the step runs, in ``layout``: the student's, and the frozen teacher's with its batch
    norms folded into its convolutions (same results up to rounding); compiled if asked. Without
    ``fold_teacher`` (a pack runs another member's), no teacher forward."""
    student_forward = teacher_forward = None
    if networks.student is not None:
        networks.student.to(memory_format=layout)
        student_forward = compiled(networks.student, compile_mode)
    if networks.teacher is not None:
        networks.teacher.to(memory_format=layout)
    if networks.teacher is not None and fold_teacher:
        teacher_forward = compiled(fold_batch_norm(networks.teacher).to(memory_format=layout), compile_mode)
    return student_forward, teacher_forward


def _start_tracking(
    tracker: Tracker,
    progress: Progress,
    spec: JobSpec,
    data: DeviceData,
    data_dir: str | Path,
    device: torch.device,
    group: distributed.Group,
    runtime: Resolved,
) -> None:
    """Start (or, resuming, re-open) the job's tracker run; a new run records the runtime and its inputs."""
    resumed = progress.run_id is not None
    progress.run_id = tracker.start(progress.run_id)
    tracker.log_runtime({"device": device.type, "world_size": group.world_size, **runtime.record()})
    if not resumed and isinstance(data, DeviceData):  # a streamed set is named by its files, not hashed whole
        for split, context in (("train", "train"), ("test", "eval")):
            arrays = getattr(data, split)
            tracker.log_input(
                spec.dataset,
                Path(data_dir) / f"{split}.npz",
                arrays.images.cpu().numpy(),
                arrays.labels.cpu().numpy(),
                context,
            )


def forward_both(
    images: torch.Tensor, student_forward, teacher_forward, bf16: bool
) -> tuple[Features | None, Features | None]:
    """Both networks' features of a batch (the teacher's without autograd), in fp32. No cast cache in the
    autocast: inside a CUDA graph it would hold casts of the previous step's weights."""
    teacher_out = student_out = None
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        if teacher_forward is not None:
            with torch.inference_mode():
                teacher_out = teacher_forward(images, with_features=True)
        if student_forward is not None:
            student_out = student_forward(images, with_features=True)
    if bf16:  # the networks ran in bfloat16; every loss is computed in fp32
        student_out = student_out.float() if student_out is not None else None
        teacher_out = teacher_out.float() if teacher_out is not None else None
    return student_out, teacher_out


def train_step(
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *strong_images: torch.Tensor,
    method: Method,
    method_forward,
    student: nn.Module | None,
    student_forward,
    teacher_forward,
    optimizer: torch.optim.Optimizer,
    trainable: list[nn.Parameter],
    bf16: bool,
    group: distributed.Group,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One optimisation step on a batch (and its strong view, for methods whose capabilities say
    ``strong_view``): :func:`compute_gradients`, then :func:`apply_gradients`. Returns the weighted loss terms
    and the student's logits, detached, so that nothing keeps this step's autograd graph alive into the next one.

    Only tensors are positional: ``GraphedStep`` replays ``partial(train_step, method=..., ...)``."""
    terms, logits, batch, teacher_out = compute_gradients(
        images,
        labels,
        indices,
        *strong_images,
        method=method,
        method_forward=method_forward,
        student_forward=student_forward,
        teacher_forward=teacher_forward,
        optimizer=optimizer,
        bf16=bf16,
    )
    apply_gradients(
        batch, teacher_out, method=method, student=student, optimizer=optimizer, trainable=trainable, group=group
    )
    return terms, logits


def compute_gradients(
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *strong_images: torch.Tensor,
    method: Method,
    method_forward,
    student_forward,
    teacher_forward,
    optimizer: torch.optim.Optimizer,
    bf16: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, Batch, Features | None]:
    """The first half of a step: both networks' forward passes (``student_forward``, ``teacher_forward``;
    bfloat16 autocast with ``bf16``), the method's terms (``method_forward``: the method, or the method under
    DDP), the optimiser's gradients cleared and the method's backward. Returns the terms and logits (detached),
    and the batch and teacher features the second half reads.

    In a data-parallel job DDP's hooks average the gradients during the backward pass; a method that sets them
    itself steps without its hooks (they are averaged in :func:`apply_gradients`). The strong view's pass runs
    the network itself: DDP takes one forward pass per backward, and both passes' gradients meet in the
    parameters before its hooks read them."""
    if method.caps.needs_input_grad:
        images.requires_grad_(True)
    with distributed.no_sync(student_forward, method_forward) if method.caps.sets_gradients else nullcontext():
        student_out, teacher_out = forward_both(images, student_forward, teacher_forward, bf16)
        strong = (
            View(
                strong_images[0],
                *forward_both(strong_images[0], distributed.unwrapped(student_forward), teacher_forward, bf16),
            )
            if strong_images
            else None
        )
        batch = Batch(images, labels, indices, strong)
        terms = method_forward(student_out, teacher_out, batch)
        optimizer.zero_grad(set_to_none=True)
        method.backward(terms)
    logits = student_out.logits.detach() if student_out is not None else None
    return {name: value.detach() for name, value in terms.items()}, logits, batch, teacher_out


def apply_gradients(
    batch: Batch,
    teacher_out: Features | None,
    method: Method,
    student: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    trainable: list[nn.Parameter],
    group: distributed.Group,
) -> None:
    """The second half of a step: the gradients of ``trainable`` averaged over ``group`` where DDP did not (a
    method that sets them itself), the optimiser's step, the method's ``after_step``."""
    if method.caps.sets_gradients:
        distributed.average_gradients(group, trainable)
    optimizer.step()
    method.after_step(batch, student, teacher_out, optimizer)


def _check_finite(spec: JobSpec, epoch: int, metrics: dict[str, float]) -> None:
    """Refuse an epoch whose mean loss terms are not all finite (nothing of it is kept)."""
    not_finite = sorted(k for k, v in metrics.items() if k.startswith("loss_") and not math.isfinite(v))
    if not_finite:
        raise TrainingDiverged(
            f"{spec.title}: method {spec.method!r} diverged in epoch {epoch}: {', '.join(not_finite)} = "
            f"{metrics[not_finite[0]]}; check its hyper-parameters {spec.method_params} and the learning rate "
            f"({metrics['lr']}). No result was written; the checkpoint of epoch {epoch - 1} is kept."
        )


def _epoch_line(spec: JobSpec, epoch: int, metrics: dict[str, float], elapsed: float, remaining: float) -> str:
    """The epoch's line in the job's log."""
    return (
        f"[{spec.title}] epoch {epoch}/{spec.schedule.epochs} lr {metrics['lr']:.4g} "
        f"loss {metrics['loss_total']:.4f}"
        + (f" train {metrics['train_top1']:.4f} test {metrics['test_top1']:.4f}" if "test_top1" in metrics else "")
        + f" | {metrics['images_per_s']:.0f} img/s | {_clock(elapsed)} elapsed, ETA {_clock(remaining)}"
    )


def _silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


@dataclass
class Trainable:
    """What a checkpoint holds the state of."""

    student: nn.Module | None
    method: Method
    optimizer: torch.optim.Optimizer


@dataclass
class Progress:
    epoch: int = 0
    history: list = field(default_factory=list)
    summaries: list = field(default_factory=list)
    run_id: str | None = None
    complete: bool = False


def set_epoch_lr(optimizer: torch.optim.Optimizer, schedule: Schedule, epoch: int) -> None:
    """The learning rate of 1-based ``epoch``; with ``restart_momentum``, at a decay epoch the momentum buffers are
    cleared in place (a CUDA graph keeps reading them), which steps exactly as a newly built SGD would: its first
    step sets the buffer to the gradient, and 0.9 x 0 + gradient is the same."""
    for param_group in optimizer.param_groups:
        param_group["lr"] = schedule.lr_at(epoch)
    if schedule.restart_momentum and epoch in schedule.lr_decay_epochs:
        for buffers in optimizer.state.values():
            if buffers.get("momentum_buffer") is not None:
                buffers["momentum_buffer"].zero_()


@dataclass
class Tally:
    """A student's running sums over an epoch, kept on the device: no sync per step."""

    sums: dict[str, Any] = field(default_factory=dict)
    correct1: Any = 0
    correct5: Any = 0
    seen: int = 0
    seconds: float = 0.0  # its own steps' time (a pack apportions the rest)

    def add(self, terms: dict[str, torch.Tensor], logits: torch.Tensor | None, labels: torch.Tensor, classes: int):
        with torch.no_grad():
            n = len(labels)
            for name, value in {"total": sum(terms.values()), **terms}.items():
                self.sums[name] = self.sums.get(name, 0) + value * n
            if logits is not None:
                top = logits.topk(min(5, classes), dim=1).indices.eq(labels.unsqueeze(1))
                self.correct1 = self.correct1 + top[:, :1].sum()
                self.correct5 = self.correct5 + top.sum()
            self.seen += n


def train_one_epoch(
    epoch: int,
    students: list[Student],
    data: DeviceData,
    layout,
    device: torch.device,
    group: distributed.Group = distributed.Group(),
    shared: SharedForward | None = None,
) -> list[dict[str, float] | None]:
    """One pass over the shuffled, augmented training set, every student of the pack stepping on each batch in
    turn; returns each one's mean loss terms and accuracy for the epoch (None for one that failed in it).

    In a data-parallel job every rank draws the same global batches and trains on its slice of each; the
    returned figures are over all ranks."""
    packed = len(students) > 1
    spec = students[0].spec  # the pack's batches: its members share seed and batch size
    for student in students:
        set_epoch_lr(student.state.optimizer, student.spec.schedule, epoch)
        if student.state.student is not None:
            student.state.student.train()
        student.state.method.train()
        with student.random_stream(packed):
            student.state.method.begin_epoch(epoch)
    generator = torch.Generator(device=device).manual_seed(seed_for(spec.seed, epoch))
    # MLKD's second view of each batch: its own stream, so the batches are the same with it or without it
    strong_view = any(student.state.method.caps.strong_view for student in students)
    strong_generator = torch.Generator(device=device).manual_seed(seed_for(spec.seed, epoch, STRONG_VIEW))
    tallies = [Tally() for _ in students]
    started = time.perf_counter()
    batches = data.train_batches(spec.schedule.batch_size, generator)
    total = data.num_train_batches(spec.schedule.batch_size)
    title = spec.title if not packed else f"pack of {len(students)} ({spec.title}, ...)"
    fused_of = _fuse(students) if packed else {}  # a fused student's group, by id(student)
    fused_groups = list({id(fused): fused for fused in fused_of.values()}.values())
    for images, labels, indices in _progress(batches, total, f"{title} epoch {epoch}"):
        strong = (data.strong_batch(indices, strong_generator),) if strong_view else ()
        images, labels, indices, *strong_views = distributed.shard(group, images, labels, indices, *strong)
        images = images.contiguous(memory_format=layout)
        strong_views = [view.contiguous(memory_format=layout) for view in strong_views]
        if shared is not None:
            shared.compute(images, *strong_views)
        for fused in fused_groups:
            fused.compute(images, students[0].runtime.bf16)
        waiting = []  # fused students: gradients at their features taken, their networks' still to come
        for student, tally in zip(students, tallies):
            if student.outcome is not None:
                continue
            step_started = time.perf_counter()
            # A step that needs the input's gradient marks its images as requiring one: in a pack, its own view of
            # the batch (same storage, so the shared teacher features still match), not the others'.
            inputs = images.detach() if packed and student.state.method.caps.needs_input_grad else images
            if id(student) in fused_of:
                done = _attempt(
                    student, packed, epoch, _fused_half, student, fused_of[id(student)], shared, inputs, labels, indices
                )
                if done is not None:
                    waiting.append((student, done[2:]))
            else:
                views = strong_views if student.state.method.caps.strong_view else []
                done = _attempt(student, packed, epoch, student.run_step, inputs, labels, indices, *views)
            if done is not None:
                tally.add(done[0], done[1], labels, data.num_classes)
                tally.seconds += time.perf_counter() - step_started
        for fused in fused_groups:  # every fused student's network gradients, in one pass
            try:
                fused.backward()
            except Exception as error:
                if not packed:
                    raise
                for student, _ in waiting:
                    if fused_of[id(student)] is fused:
                        student.outcome = error
        for student, (batch, teacher_out) in waiting:
            if student.outcome is None:
                _attempt(student, packed, epoch, _apply_of, student, batch, teacher_out, group)
        if shared is not None:
            shared.clear()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - started
    alive = [tally for student, tally in zip(students, tallies) if student.outcome is None]
    # what no single step took (the batches' preparation, the shared teacher forward) is shared equally
    common = max(wall - sum(tally.seconds for tally in alive), 0.0) / max(len(alive), 1)
    return [
        _epoch_metrics(student, tally, epoch, tally.seconds + common if packed else wall, device, group, data)
        if student.outcome is None
        else None
        for student, tally in zip(students, tallies)
    ]


def _attempt(student: Student, packed: bool, epoch: int, work, *args):
    """A member's part of a step, on its own random stream; in a pack, a failure ends that member alone (``None``
    returned, the failure kept as its outcome)."""
    try:
        with student.random_stream(packed):
            return work(*args)
    except FloatingPointError as error:  # a method's own check inside the step (L2T's meta-gradient)
        diverged = TrainingDiverged(
            f"{student.spec.title}: {error}. No result was written; the checkpoint of epoch {epoch - 1} is kept."
        )
        if not packed:
            raise diverged from None
        student.outcome = diverged
    except Exception as error:
        if not packed:
            raise
        student.outcome = error
    return None


def _fuse(students: list[Student]) -> dict[int, FusedStudents]:
    """The pack's students that run as one network (``runtime.fuse``), each one's group by ``id(student)``: one
    group per architecture and options, of the students whose method's step allows it, two or more."""
    groups: dict[str, list[Student]] = {}
    for student in students:
        caps = student.state.method.caps
        if student.runtime.fuse and student.state.student is not None and caps.fuses and not caps.strong_view:
            key = json.dumps([student.spec.arch, student.spec.model_options], sort_keys=True)
            groups.setdefault(key, []).append(student)
    fused = {}
    for members in groups.values():
        networks = [cast(nn.Module, member.state.student) for member in members]
        if len(networks) > 1 and fusable(networks):
            together = FusedStudents(networks)
            fused.update({id(member): together for member in members})
    return fused


def _fused_half(student: Student, fused: FusedStudents, shared: SharedForward | None, images, labels, indices):
    """A fused student's first half-step: its method's terms and backward on its features of the fused pass."""
    network = cast(nn.Module, student.state.student)
    return compute_gradients(
        images,
        labels,
        indices,
        method=student.state.method,
        method_forward=student.method_forward,
        student_forward=lambda images, with_features=True: fused.features_of(network),
        teacher_forward=shared if shared is not None else student.teacher_forward,
        optimizer=student.state.optimizer,
        bf16=student.runtime.bf16,
    )


def _apply_of(student: Student, batch: Batch, teacher_out: Features | None, group: distributed.Group) -> None:
    apply_gradients(
        batch,
        teacher_out,
        method=student.state.method,
        student=student.state.student,
        optimizer=student.state.optimizer,
        trainable=student.trainable,
        group=group,
    )


def _epoch_metrics(
    student: Student, tally: Tally, epoch: int, seconds: float, device: torch.device, group, data: DeviceData
) -> dict[str, float]:
    sums, correct1, correct5, seen = tally.sums, tally.correct1, tally.correct5, tally.seen
    if group.active:  # sums over the ranks: one all-reduce of every running sum and count
        names = list(sums)
        together = distributed.total(
            group,
            torch.stack(
                [torch.as_tensor(sums[name], dtype=torch.float64, device=device) for name in names]
                + [
                    torch.as_tensor(correct1, dtype=torch.float64, device=device),
                    torch.as_tensor(correct5, dtype=torch.float64, device=device),
                    torch.tensor(float(seen), dtype=torch.float64, device=device),
                ]
            ),
        )
        sums = dict(zip(names, together[: len(names)]))
        correct1, correct5, seen = together[-3], together[-2], int(together[-1])
    metrics = {f"loss_{name}": float(total) / seen for name, total in sums.items()}
    if student.state.student is not None:
        metrics.update(train_top1=float(correct1) / seen, train_top5=float(correct5) / seen)
    metrics.update(lr=student.spec.schedule.lr_at(epoch), images_per_s=seen / seconds, epoch_seconds=seconds)
    return metrics


def save_checkpoint(
    path: Path, spec: JobSpec, identity: str, state: Trainable, progress: Progress, complete: bool
) -> None:
    """After every epoch; the last one is kept (``complete``) so a finished job is recognised, never retrained."""
    _atomic_save(
        {
            "spec": spec.to_dict(),
            "identity": identity,
            "epoch": progress.epoch,
            "complete": complete,
            "model": state.student.state_dict() if state.student is not None else None,
            "method": state.method.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "history": progress.history,
            "summaries": progress.summaries,
            "run_id": progress.run_id,
        },
        path,
    )


def load_checkpoint(path: Path, spec: JobSpec, identity: str, state: Trainable, device: torch.device, log) -> Progress:
    """Restore ``state`` from this job's checkpoint. One that cannot be read, or that another spec wrote,
    is moved aside (kept under a new name) and the job starts from scratch."""
    from .files import FileProblem, load_torch, move_aside

    if not path.exists():
        return Progress()
    try:
        saved = load_torch(path, "the job's resume checkpoint", device)
        if not isinstance(saved, dict) or "spec" not in saved:
            raise FileProblem(f"{path} is not a checkpoint of this project")
    except FileProblem as problem:
        kept = move_aside(path, "corrupt")
        log(f"[{spec.title}] warning: {problem}; moved it to {kept.name} and starting from scratch")
        return Progress()
    if saved["spec"] != spec.to_dict() or saved.get("identity") != identity:
        changed = sorted(k for k in spec.to_dict() if saved["spec"].get(k) != spec.to_dict()[k])
        what = f"different {', '.join(changed)}" if changed else "different code or inputs"
        kept = move_aside(path, "other-job")
        log(
            f"[{spec.title}] warning: {path} was written by a job with {what}; "
            f"moved it to {kept.name} and starting from scratch"
        )
        return Progress()
    if state.student is not None:
        state.student.load_state_dict(saved["model"])
    state.method.load_state_dict(saved["method"])
    state.optimizer.load_state_dict(saved["optimizer"])
    progress = Progress(
        saved["epoch"], saved["history"], saved["summaries"], saved["run_id"], bool(saved.get("complete"))
    )
    if not progress.complete:
        log(f"[{spec.title}] resuming after epoch {saved['epoch']} from {path}")
    return progress


def _finish(
    student: Student, data: DeviceData, device: torch.device, group: distributed.Group, teacher_top1: list
) -> None:
    """Write model.pt and metrics.json (metrics.json last: its presence means the job's result is whole);
    in a data-parallel job, rank 0 alone writes. ``teacher_top1`` holds the teacher's accuracy once a member
    of the pack has evaluated it."""
    spec, state, progress, runtime = student.spec, student.state, student.progress, student.runtime
    out_dir, tracker, teacher = student.member.out_dir, student.member.tracker, student.teacher
    if not progress.complete and (spec.schedule.epochs == 0 or progress.epoch < spec.schedule.epochs):
        progress.epoch = spec.schedule.epochs
        if group.is_main:
            save_checkpoint(out_dir / CHECKPOINT, spec, student.identity, state, progress, complete=True)
    model, history = state.student, progress.history
    record: dict[str, Any] = {
        "spec": spec.to_dict(),
        "run_id": progress.run_id,
        "epochs": spec.schedule.epochs,
        "device": device.type,
        "world_size": group.world_size,
        "runtime": runtime.record(),
        "history": history,
        "summaries": progress.summaries,
    }
    if model is not None and num_classes_of(model) != data.num_classes:
        # A network of another task (ImageNet's ResNet34 beside a transfer set): no accuracy to report.
        record.update(
            test_top1=None,
            test_top5=None,
            num_classes=num_classes_of(model),
            note=f"{num_classes_of(model)}-class network on a {data.num_classes}-class dataset: accuracy undefined",
        )
    elif model is not None:
        final = (
            {"top1": history[-1]["test_top1"], "top5": history[-1]["test_top5"]}
            if history
            else evaluate(model, data, runtime=runtime)
        )
        record.update(test_top1=final["top1"], test_top5=final["top5"])
        finals = {"final_test_top1": final["top1"], "final_test_top5": final["top5"]}
        if history:  # the best epoch's too: papers report either, the report prints both
            best = max(range(len(history)), key=lambda index: history[index]["test_top1"])
            finals.update(final_test_top1_best=history[best]["test_top1"], final_best_epoch=best + 1)
        tracker.log_metrics(finals, step=spec.schedule.epochs)
    if teacher is not None:
        if not teacher_top1:
            same_task = num_classes_of(teacher) == data.num_classes
            teacher_top1.append(evaluate(teacher, data, runtime=runtime)["top1"] if same_task else None)
        record["teacher_test_top1"] = teacher_top1[0]
    result = Result(record=record, model=model, method=state.method, teacher=teacher, data=data)
    if group.is_main:
        _atomic_save(
            {
                "model": model.state_dict() if model is not None else None,
                "method": state.method.state_dict(),
                "arch": spec.arch or spec.teacher,
                "num_classes": num_classes_of(model) if model is not None else data.num_classes,
                "spec": spec.to_dict(),
            },
            out_dir / MODEL,
        )
        _atomic_write_json(record, out_dir / METRICS)
        if model is not None:
            tracker.log_model(model, data.normalize(data.train.images[:2]), name=spec.kind)
    student.outcome = result


def _required(path: str | Path | None, spec: JobSpec) -> str | Path:
    if path is None:
        raise ValueError(f"{spec.title}: method {spec.method!r} needs a teacher checkpoint")
    return path
