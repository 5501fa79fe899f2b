"""What a distillation method is, and the registry that names them.

A method is an ``nn.Module`` whose trainable parts (regressors, embedding
heads, attention networks) are its submodules; the engine optimises them
together with the student by the same SGD optimiser, as the reference code
does. Its ``forward`` returns the *weighted* loss terms whose sum the student
minimises:

    total = gamma * CE + alpha * KD + beta * <method term>

``gamma`` and ``alpha`` (Hinton's KD at ``temperature``) are handled here so
every method can add KD on top, as the AFD paper does for all baselines ("KD
is applied to all baselines").

The engine's loop calls, per batch: ``forward``, ``backward`` (plain
``loss.backward()`` unless a method shapes its gradients, like MHGD's
clipping), the optimiser step, then ``after_step`` (L2T's meta-update), and
``begin_epoch`` before each epoch; on CUDA the per-batch calls run as one
replayed CUDA graph for methods that set ``cuda_graphs``. Methods that need
the input gradient (AT's
gradient-based variant) set ``needs_input_grad``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Iterator  # noqa: F401  (Annotated: methods declare ranges with it)

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from ..models.registry import UnknownNameError


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric hyper-parameter, declared in the constructor's signature::

        def __init__(self, context, temperature: Annotated[float, Range(gt=0)] = 4.0, ...)

    ``integer``: whole numbers only. Bounds left as None are open.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    integer: bool = False

    def describe(self) -> str:
        parts = [f"{op} {bound:g}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if bound is not None]
        return ("an integer" if self.integer else "a number") + (" " + " and ".join(parts) if parts else "")


@dataclass(frozen=True)
class Choice:
    """The valid values of a categorical hyper-parameter: ``mapping: Annotated[str, Choice("sum", "max")] = "sum"``."""

    values: tuple

    def __init__(self, *values):
        object.__setattr__(self, "values", tuple(values))

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclass
class Batch:
    images: Tensor
    labels: Tensor
    indices: Tensor  # positions in the training set (CRD's memory bank uses them)


@dataclass
class Context:
    """What a method may need to build itself, besides its hyper-parameters."""

    student: nn.Module
    teacher: nn.Module | None
    student_sample: Features  # features of a dry-run batch, for shapes
    teacher_sample: Features | None
    num_classes: int
    train_labels: Tensor  # labels of the training set, on the training device (CRD samples negatives by class)
    batch_size: int
    seed: int = 0  # the job's seed, for methods that draw random numbers during training
    artifact: Any = None  # what the method's pre-stage produced (AFD links, MHGD's attention network)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al.: KL(teacher || student) at temperature T, scaled by T^2, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="sum") * temperature**2 / student_logits.shape[0]


class Method(nn.Module):
    """Cross-entropy plus optional KD; subclasses add their term in :meth:`distill`."""

    needs_teacher = True
    #: the row label in reports (the paper's name for the method)
    label = "?"
    #: the pipeline stage whose output this method reads: "links" (AFD links) or "heads" (a network
    #: pretrained on the teacher, MHGD), if any
    needs_artifact: str | None = None
    #: (``pre_stage`` below reads it; a method whose pre-stage depends on its hyper-parameters overrides that)
    #: for needs_artifact == "heads": the method type that pretrains them, and which of this
    #: method's hyper-parameters it shares
    heads_method: str | None = None
    heads_params: tuple[str, ...] = ()
    #: the engine makes the input images require grad before the student's forward pass
    needs_input_grad = False
    #: the step (forward, backward, after_step) may be captured and replayed as a CUDA graph
    #: (``afdistill.graphs``): no host synchronisation, no random numbers, and any state kept across
    #: steps updated in place in tensors. Opt-in, since a method that breaks this would silently
    #: train on stale values.
    cuda_graphs = False

    def __init__(self, context: Context, gamma: float = 1.0, alpha: float = 0.0, temperature: float = 4.0):
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.epoch = 0

    @classmethod
    def pre_stage(cls, params: dict[str, Any]) -> str | None:
        """The pipeline stage whose output a run with these hyper-parameters reads ("links", "heads"), if any."""
        return cls.needs_artifact

    def forward(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        terms = {"ce": self.gamma * F.cross_entropy(student.logits, batch.labels)}
        if self.alpha:
            terms["kd"] = self.alpha * self.kd_term(student.logits, teacher.logits)
        terms.update(self.distill(student, teacher, batch))
        return terms

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        return {}

    # -- hook for the logit modifiers of methods/logits.py (logit standardisation, CTKD's temperature) --
    def kd_term(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Hinton's KD term, unweighted; :class:`~afdistill.methods.logits.LogitMethod` overrides it."""
        return kd_loss(student_logits, teacher_logits, self.temperature)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the engine's optimiser updates together with the student."""
        return (p for p in self.parameters() if p.requires_grad)

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def backward(self, terms: dict[str, Tensor]) -> None:
        sum(terms.values()).backward()

    def after_step(self, batch: Batch, student: nn.Module, teacher: Features | None,
                   optimizer: torch.optim.Optimizer) -> None:
        pass

    def epoch_summary(self) -> dict[str, Any]:
        """Method-specific records of the epoch just trained (e.g. AFD's mean attention)."""
        return {}


_METHODS: dict[str, type[Method]] = {}


def register_method(name: str):
    def decorate(cls: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.method_name = name
        _METHODS[name] = cls
        return cls

    return decorate


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> type[Method]:
    if name not in _METHODS:
        raise UnknownNameError(f"unknown method {name!r}; allowed: {', '.join(list_methods())}")
    return _METHODS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """Hyper-parameters a method takes, with their defaults (from its constructor's signature)."""
    defaults: dict[str, Any] = {}
    for cls in method_class(name).__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, context
        for parameter in parameters:
            if parameter.default is not inspect.Parameter.empty:
                defaults.setdefault(parameter.name, parameter.default)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break  # this constructor does not forward further keywords to its base
    return defaults


def check_method_params(name: str, params: dict[str, Any], where: str) -> None:
    """Raise a ValueError naming the key and the allowed keys/types if ``params`` do not fit method ``name``."""
    defaults = method_defaults(name)
    for key, value in params.items():
        if key not in defaults:
            raise ValueError(f"{where}.{key}: method {name!r} has no parameter {key!r}; "
                             f"allowed: {', '.join(sorted(defaults))}")
        default = defaults[key]
        if default is None or value is None:
            continue
        expected = float if isinstance(default, float) else type(default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float else isinstance(value, expected)
        if not ok:
            raise ValueError(f"{where}.{key}: expected {expected.__name__} (like the default {default!r}), got {value!r}")


def build_method(name: str, params: dict[str, Any], context: Context) -> Method:
    check_method_params(name, params, f"methods.{name}")
    return method_class(name)(context, **params)


def select(features: list[Tensor], indices: list[int]) -> list[Tensor]:
    return [features[i] for i in indices]


def repdistiller_taps(features: Features) -> list[Tensor]:
    """RepDistiller's feature list ``[stem, stage 1, ..., last stage, pooled]`` (its ``feat`` indices)."""
    return [features.stem, *features.stages, features.pooled]


@torch.no_grad()
def dry_run(model: nn.Module, images: Tensor) -> Features:
    was_training = model.training
    model.eval()
    features = model(images, with_features=True)
    model.train(was_training)
    return features
