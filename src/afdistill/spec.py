"""What one training job is: the hyper-parameters that decide its result, as one JSON-able record."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

KINDS = ("teacher", "student", "links", "heads")  # the training job kinds (afdistill.jobs declares them)


def option(default: Any, doc: str, **schema: Any):
    """A dataclass field that also declares its JSON-schema constraints and description.

    ``afdistill.grid`` validates grid values against these declarations and
    generates the Snakemake config schema from them: each key is declared here
    once.
    """
    factory = {"default_factory": lambda: default} if isinstance(default, (list, dict)) else {"default": default}
    return field(metadata={"description": doc, **schema}, **factory)


@dataclass(frozen=True)
class Schedule:
    """SGD with step decay; the defaults are the AFD paper's CIFAR-100 settings."""

    epochs: int = option(240, "training epochs", type="integer", minimum=1)
    batch_size: int = option(64, "images per step (BatchNorm needs two or more)", type="integer", minimum=2)
    lr: float = option(0.05, "initial learning rate", type="number", exclusiveMinimum=0)
    momentum: float = option(0.9, "SGD momentum", type="number", minimum=0, exclusiveMaximum=1)
    weight_decay: float = option(5e-4, "L2 weight decay", type="number", minimum=0)
    lr_decay_epochs: tuple[int, ...] = option(
        (150, 180, 210),
        "epochs at whose start the learning rate decays",
        type="array",
        items={"type": "integer", "minimum": 1},
    )
    lr_decay_rate: float = option(
        0.1, "factor applied at each decay epoch", type="number", exclusiveMinimum=0, maximum=1
    )
    nesterov: bool = option(False, "Nesterov momentum", type="boolean")
    restart_momentum: bool = option(
        False,
        "clear SGD's momentum at each decay epoch, as a new optimiser would "
        "(szagoruyko/attention-transfer builds one at each decay)",
        type="boolean",
    )
    lr_schedule: str = option(
        "step",
        "step: x lr_decay_rate at each of lr_decay_epochs; cosine: lr (1 + cos(pi e / "
        "epochs)) / 2 in epoch e (L2T-ww's transfer protocol)",
        type="string",
        enum=["step", "cosine"],
    )

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch``.

        ``step``: the official AFD code decays *at the start* of each listed
        epoch (``if epoch in schedule``), so epoch 150 already runs at 0.005;
        RepDistiller decays one epoch later (``epoch > milestone``). We follow AFD.
        ``cosine``: L2T-ww's ``CosineAnnealingLR(T_max=epochs)``, stepped before
        each epoch's training, so epoch e runs at its e-th value (the last at 0).
        """
        if self.lr_schedule == "cosine":
            return self.lr * (1 + math.cos(math.pi * epoch / self.epochs)) / 2
        steps = sum(1 for milestone in self.lr_decay_epochs if epoch >= milestone)
        return self.lr * self.lr_decay_rate**steps


PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("auto", "none", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Runtime:
    """How the engine runs the networks; ``auto`` picks what is fast on the device at hand.

    ``precision``: ``bf16`` runs the networks under bfloat16 autocast (losses stay
    in fp32); ``auto`` uses it where the hardware has bf16 matrix units (CUDA
    compute capability 8.0+, CPUs with AVX512-BF16/AMX), fp32 elsewhere.
    ``channels_last``: NHWC memory layout for convolutions (``auto``: on).
    ``compile``: a ``torch.compile`` mode for the networks (``reduce-overhead``
    adds CUDA graphs of the networks alone); ``auto`` is ``none``: compiling
    costs a minute per job, made an eager CUDA step of these small networks
    slower at batch 64, and inside a CUDA graph (below) trades exact
    reproducibility for speed, which is for the user to choose.
    ``deterministic``: on CUDA, deterministic cuDNN/cuBLAS kernels and
    ``torch.use_deterministic_algorithms``, so a seed reproduces a run's
    metrics exactly; ``false`` lets cuDNN autotune (``cudnn.benchmark``, as
    the official code does), faster but not bit-reproducible. CPU kernels are
    deterministic either way.
    ``cuda_graphs``: capture the whole training step (teacher and student
    passes, loss, backward, optimiser step) as one CUDA graph and replay it
    for every full batch, removing the per-kernel launch cost that dominates
    small CIFAR networks at batch 64; ``auto`` does so on CUDA for methods
    whose step qualifies (``Capabilities.cuda_graphs``); other steps run eagerly.
    It changes no result. Naming a ``compile`` mode as well puts compiled
    networks inside the graph (about 20% faster on an H100 for AFD
    resnet56 -> resnet20), but their kernels then depend on what the process
    compiled before, so two jobs in one process may differ in the last bits.
    ``keep_freed_memory``: keep freed memory in the process heap for the next
    step instead of returning it to the OS (``afdistill.heap``); ``auto``: on
    CPU jobs, where page faults on fresh activations were a large share of
    the step. Process-wide and lasting: a later ``false`` in the same process
    does not undo it.
    ``fuse``: in a pack, the students of one architecture whose methods allow it
    (``Capabilities.fuses``) run their forward and backward passes as one
    network (``afdistill.fused``: ``torch.func.vmap`` over their stacked
    weights, as grouped kernels), one launch per layer for all of them instead
    of one each. For small networks on a GPU, where launches dominate. The
    results equal the unfused ones up to rounding (grouped kernels sum in
    another order); on a CPU it is slower.
    """

    precision: str = option("auto", "bf16 autocast where the hardware has bf16 units, else fp32", enum=list(PRECISIONS))
    channels_last: str | bool = option("auto", "NHWC layout for convolutions (auto: on)", enum=["auto", True, False])
    compile: str = option("auto", "a torch.compile mode (auto: none)", enum=list(COMPILE_MODES))
    deterministic: bool = option(True, "deterministic CUDA kernels: a seed reproduces a run's metrics", type="boolean")
    cuda_graphs: str | bool = option(
        "auto", "replay each training step as one CUDA graph where the method allows it", enum=["auto", True, False]
    )
    keep_freed_memory: str | bool = option(
        "auto", "keep freed heap memory for the next step (auto: on CPU)", enum=["auto", True, False]
    )
    fuse: bool = option(False, "run a pack's students of one architecture as one network", type="boolean")


@dataclass(frozen=True)
class JobSpec:
    """Everything that decides a training job's result.

    The engine reads only the roles: ``arch`` is the network it trains (none
    for a job that trains only a method's own modules, MHGD's heads),
    ``teacher`` the frozen network it reads (none for teachers and the plain
    student), ``checkpoint`` weights the trained network starts from (a
    published teacher, evaluated with ``epochs: 0``; with ``new_classifier``,
    ImageNet weights fine-tuned on another task, the classifier initialised
    afresh). ``kind`` names the job
    for people and trackers; the engine never branches on it.
    """

    kind: str  # teacher | student | links | heads
    grid: str  # the experiment grid (MLflow experiment name)
    dataset: str
    arch: str | None  # the trained network
    method: str  # registered method type
    run: str  # the grid's name for this method configuration (a table row)
    seed: int
    schedule: Schedule = field(default_factory=Schedule)
    method_params: dict[str, Any] = field(default_factory=dict)
    runtime: Runtime = field(default_factory=Runtime)
    teacher: str | None = None  # the frozen network's architecture
    device: str = "auto"  # auto | cpu | cuda
    checkpoint: str | None = None  # weights the trained network starts from
    new_classifier: bool = False  # the checkpoint is of another task: its classifier starts fresh (fine-tuning)
    model_options: dict[str, Any] = field(default_factory=dict)  # create_model options of the trained network
    teacher_options: dict[str, Any] = field(default_factory=dict)  # create_model options of the frozen one

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["schedule"]["lr_decay_epochs"] = list(self.schedule.lr_decay_epochs)
        return record

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "JobSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(record) - known
        if unknown:
            raise ValueError(f"job spec: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        record = dict(record)
        schedule = dict(record.get("schedule", {}))
        if "lr_decay_epochs" in schedule:
            schedule["lr_decay_epochs"] = tuple(schedule["lr_decay_epochs"])
        record["schedule"] = Schedule(**schedule)
        record["runtime"] = Runtime(**record.get("runtime", {}))
        if record["kind"] not in KINDS:
            raise ValueError(f"job spec: kind {record['kind']!r} is not one of {KINDS}")
        return cls(**record)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        return cls.from_dict(json.loads(text))

    @property
    def title(self) -> str:
        """The job in its log lines and as its MLflow run's name: what differs first (the grid's run name for a
        student), then seed, then the pair."""
        if self.kind == "teacher":
            return f"teacher {self.arch}"
        if self.kind == "heads":
            return f"{self.method} heads on {self.teacher}"
        pair = f"{self.teacher}->{self.arch}" if self.teacher else self.arch
        return f"links {pair}" if self.kind == "links" else f"{self.run} s{self.seed} {pair}"
