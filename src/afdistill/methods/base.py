"""What a distillation method is, and the registry that names them.

A method is an ``nn.Module`` whose trainable parts (regressors, embedding
heads, attention networks) are its submodules; the engine optimises them
together with the student by the same SGD optimiser, as the reference code
does. Its ``forward`` returns the *weighted* loss terms whose sum the student
minimises:

    total = gamma * CE + alpha * KD + beta * <method term>

``gamma`` (the cross-entropy's weight) is handled here. ``alpha`` and
``temperature``, Hinton's KD added on top as the AFD paper does for all
baselines ("KD is applied to all baselines"), are the hyper-parameters of the
methods that offer it: each declares them in its own constructor and builds a
:class:`KDOnTop` from them.

What a method needs and allows (a teacher, a pre-stage, the input gradient, a
CUDA graph, a second view, ...) is one :class:`Capabilities` record:
``method_class(name).capabilities(params)`` for a run with these
hyper-parameters, ``method.caps`` for a built method.

The engine's loop calls, per batch: ``forward``, ``backward`` (plain
``loss.backward()`` unless a method shapes its gradients, like MHGD's
clipping), the optimiser step, then ``after_step`` (L2T's meta-update), and
``begin_epoch`` before each epoch; on CUDA the per-batch calls run as one
replayed CUDA graph for methods whose record allows ``cuda_graphs``. Methods
that need the input gradient (AT's gradient-based variant) set
``needs_input_grad``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Iterator, Mapping, Sequence, TypeVar, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features, create_model
from ..models.registry import UnknownNameError

_T = TypeVar("_T")


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
        parts = [
            f"{op} {bound:g}"
            for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if bound is not None
        ]
        return ("an integer" if self.integer else "a number") + (" " + " and ".join(parts) if parts else "")

    def admits(self, value: float) -> bool:
        """Whether a finite number lies in the range (its type is checked by the caller)."""
        return (
            (not self.integer or float(value).is_integer())
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )


@dataclass(frozen=True)
class Choice:
    """The valid values of a categorical hyper-parameter: ``mapping: Annotated[str, Choice("sum", "max")] = "sum"``."""

    values: tuple

    def __init__(self, *values):
        object.__setattr__(self, "values", tuple(values))

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def admits(self, value: Any) -> bool:
        # True is not 1 and 1 is not '1'; an integer stands for the float it equals
        return any(
            value == v and (type(value) is type(v) or (type(value) is int and type(v) is float)) for v in self.values
        )


@dataclass(frozen=True)
class Parameter:
    """One hyper-parameter as a method's constructor declares it: its type, default and valid values."""

    name: str
    default: Any
    kind: type | None  # the value's type (bool, int, float, str, dict, ...); None: any
    optional: bool  # None is allowed (declared ``X | None`` or defaulting to None)
    rule: Range | Choice | None

    def allowed(self) -> str:
        """What may be given, in words: "a number > 0", "an integer >= 1", "one of 'sum', 'max'"."""
        if isinstance(self.rule, Range):
            text = (replace(self.rule, integer=True) if self.kind is int else self.rule).describe()
        elif isinstance(self.rule, Choice):
            text = self.rule.describe()
        else:
            words: dict[type | None, str] = {
                bool: "True or False",
                int: "an integer",
                float: "a number",
                str: "a string",
                dict: "a mapping",
                list: "a list",
                None: "any value",
            }
            text = words.get(self.kind) or f"a {getattr(self.kind, '__name__', self.kind)}"
        return text + (" or None" if self.optional else "")

    def check(self, value: Any, where: str) -> None:
        """Raise a ValueError naming ``where``, the value and what is allowed if ``value`` is not."""
        if value is None and self.optional:
            return
        if not (self._has_kind(value) and (self.rule is None or self.rule.admits(value))):
            note = " (True/False is not a number)" if isinstance(value, bool) and self.kind in (int, float) else ""
            raise ValueError(f"{where}: {value!r} is not allowed; expected {self.allowed()}{note}")

    def _has_kind(self, value: Any) -> bool:
        if value is None:
            return False
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind is float or (self.kind is None and isinstance(self.rule, Range)):
            return numeric and math.isfinite(value)  # ints stand for floats; nan and inf never make sense
        if self.kind is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return self.kind is None or isinstance(value, self.kind)


def _declared_parameter(name: str, annotation: Any, default: Any) -> Parameter:
    """A :class:`Parameter` from an evaluated annotation such as ``Annotated[float, Range(gt=0)]`` or ``int | None``."""
    rule, optional = None, default is None
    for _ in range(2):  # Annotated[X | None, ...] and Annotated[X, ...] | None
        if typing.get_origin(annotation) is Annotated:
            rule = next((m for m in annotation.__metadata__ if isinstance(m, (Range, Choice))), rule)
            annotation = annotation.__origin__
        if typing.get_origin(annotation) in (Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = optional or len(members) < len(typing.get_args(annotation))
            annotation = members[0] if len(members) == 1 else None  # several types: any value
    if annotation is inspect.Parameter.empty:  # undeclared: the default's type
        annotation = None if default is None or default is inspect.Parameter.empty else type(default)
    kind = typing.get_origin(annotation) or annotation  # list[int] -> list
    return Parameter(name, default, kind if isinstance(kind, type) and kind is not Any else None, optional, rule)


@functools.cache
def method_parameters(cls: type) -> dict[str, Parameter]:
    """A method class's hyper-parameters, from its constructor's signature and its bases' (through ``**base``)."""
    found: dict[str, Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        function = vars(klass)["__init__"]
        parameters = list(inspect.signature(function).parameters.values())[2:]  # after self, context
        for parameter in parameters:
            if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) or parameter.name in found:
                continue
            annotation = parameter.annotation
            if isinstance(annotation, str):  # the modules use `from __future__ import annotations`
                try:
                    annotation = eval(annotation, function.__globals__)  # what typing.get_type_hints does
                except Exception as error:
                    raise TypeError(
                        f"{klass.__qualname__}.__init__: the annotation of {parameter.name!r} "
                        f"({annotation}) does not evaluate: {error}"
                    ) from None
            found[parameter.name] = _declared_parameter(parameter.name, annotation, parameter.default)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break  # this constructor does not forward further keywords to its base
    return found


@dataclass
class Batch:
    images: Tensor
    labels: Tensor
    indices: Tensor  # positions in the training set (CRD's memory bank uses them)
    #: the same images under a second, strong augmentation and both networks' features of them, for
    #: methods with ``strong_view`` (MLKD); None otherwise
    strong: View | None = None


@dataclass
class View:
    images: Tensor
    student: Features | None
    teacher: Features | None


@dataclass
class Context:
    """What a method may need to build itself, besides its hyper-parameters."""

    student: nn.Module | None  # the trained network (None: the method trains only its own modules)
    teacher: nn.Module | None  # the frozen network
    student_sample: Features | None  # features of a dry-run batch, for shapes
    teacher_sample: Features | None
    num_classes: int
    # labels of the training set, on the training device (CRD samples negatives by class); None in a fit
    # check (``check_method_fit``), which knows only how many there are
    train_labels: Tensor | None
    batch_size: int | None  # None in a fit check that was not told the schedule's batch size
    seed: int = 0  # the job's seed, for methods that draw random numbers during training
    artifact: Any = None  # what the method's pre-stage produced (AFD links, MHGD's attention network)


@dataclass(frozen=True)
class Heads:
    """A network a method pretrains on the frozen teacher, as a job of its own, before its runs (the "heads"
    pre-stage: MHGD's attention network, FT's paraphraser)."""

    method: str  # the registered method whose job trains it
    shared_params: tuple[str, ...] = ()  # the run's hyper-parameters that job takes too (its network's shape)
    train: Mapping[str, Any] = field(default_factory=dict)  # its recipe: schedule keys over the grid's


@dataclass(frozen=True)
class Capabilities:
    """What a method needs and allows, for given hyper-parameters: the one record the grid, the pipeline, the
    engine and combinations read (:meth:`Method.capabilities`; ``method.caps`` for a built method)."""

    #: it distils from a teacher (the plain student, DML and the teacher-free regularisers do not)
    needs_teacher: bool = True
    #: the pipeline stage whose output the run reads: "links" (AFD's links) or "heads" (:class:`Heads`), if any
    pre_stage: str | None = None
    #: for ``pre_stage == "heads"``: that network's job
    heads: Heads | None = None
    #: the engine makes the input images require grad before the student's forward pass
    needs_input_grad: bool = False
    #: the step (forward, backward, after_step) may be captured and replayed as a CUDA graph
    #: (``afdistill.graphs``): no host synchronisation, no random numbers, and any state kept across
    #: steps updated in place in tensors. Opt-in, since a method that breaks this would silently
    #: train on stale values; never with ``needs_input_grad``.
    cuda_graphs: bool = False
    #: the engine adds a second, strongly augmented view of every batch (``afdistill.augment``) and both
    #: networks' features of it as ``Batch.strong``: one more forward pass of each per step; only datasets
    #: held on the device provide it
    strong_view: bool = False
    #: its step reaches the student only through the features of the engine's forward pass on the batch: no
    #: forward, backward or ``after_step`` of its own through the student's parameters. With ``runtime.fuse``,
    #: the students of one architecture in a pack may then run that pass as one network (``afdistill.fused``).
    #: Opt-in: a method that breaks this would silently miss gradients; never with ``needs_input_grad``.
    fuses: bool = False
    #: its ``backward`` sets the gradients itself (``torch.autograd.grad``, then ``.grad =``: MHGD's and KD-SVD's
    #: clipping) instead of one backward pass through them: in a data-parallel job, DistributedDataParallel's
    #: hooks never see them, so the engine averages them over the processes after it (``afdistill.distributed``)
    sets_gradients: bool = False
    #: its own term reads the teacher's logits, so it needs a teacher of the same classes: logit methods do;
    #: feature methods, which a teacher of another task allows, do not (KD on top is ``kd_on_top``)
    reads_teacher_logits: bool = False
    #: it adds Hinton's KD on top at its own ``alpha`` and ``temperature`` (:class:`KDOnTop`)
    kd_on_top: bool = False
    #: the registered methods a run computes with (its code fingerprint's)
    methods_used: tuple[str, ...] = ()
    #: about how many of KD's training epochs one of its epochs costs on the same pair (measured: the default
    #: grid's reports/default/timings.md at 4e2adac, resnet20 -> resnet8 on a CPU, where it is 1.5 or more).
    #: A scheduling hint only: it splits a machine's packs evenly over its cores (:func:`afdistill.jobs.balance`)
    relative_cost: float = 1.0

    def __post_init__(self):
        if self.pre_stage not in (None, "links", "heads"):
            raise ValueError(f"pre_stage: {self.pre_stage!r}; expected 'links', 'heads' or None")
        if (self.pre_stage == "heads") != (self.heads is not None):
            raise ValueError("a 'heads' pre-stage and its Heads come together")
        if self.cuda_graphs and self.needs_input_grad:
            raise ValueError("a step that makes the input require grad cannot be a CUDA graph")
        if self.fuses and self.sets_gradients:
            raise ValueError("a step that sets the student's gradients itself cannot run its student fused")
        if self.fuses and self.needs_input_grad:
            raise ValueError("a step that makes the input require grad cannot run its student fused with others")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """Hinton et al.: KL(teacher || student) at temperature T, scaled by T^2, averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="sum") * temperature**2 / student_logits.shape[0]


@dataclass(frozen=True)
class KDOnTop:
    """Hinton's KD added on top of a method's own terms, ``alpha * KD(temperature)``: RepDistiller's recipe and
    the AFD paper's for every baseline.

    A method that offers it declares ``alpha`` and ``temperature`` in its own constructor, builds one from
    them (``self.kd = KDOnTop(alpha, temperature)``) and says ``kd_on_top`` in its capabilities;
    :meth:`Method.forward` adds the term as ``kd`` (none at ``alpha`` 0). The unweighted term is the method's
    :meth:`Method.kd_term`, which the logit modifiers (:class:`~afdistill.methods.logits.LogitMethod`) alter.
    """

    alpha: float
    temperature: float

    def __post_init__(self):
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "temperature", float(self.temperature))

    def loss(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Hinton's KD at ``temperature``, unweighted."""
        return kd_loss(student_logits, teacher_logits, self.temperature)


def clip_transfer_gradients(terms: dict[str, Tensor], transfer: str, params: Sequence[Tensor], epoch: int) -> None:
    """Set each parameter's ``.grad`` to its task gradient plus its transfer gradient (``terms[transfer]``) clipped
    to the task gradient's norm x sigmoid(epoch - 1): the "adaptive constraint multi-task learning via gradient
    clipping" of sseung0703/KD_methods_with_TF (op_util.py), which MHGD and KD-SVD train with."""
    main = cast(Tensor, sum(value for name, value in terms.items() if name != transfer))  # a tensor: CE at least
    main_grads = torch.autograd.grad(main, params, retain_graph=True, allow_unused=True)
    transfer_grads = torch.autograd.grad(terms[transfer], params, allow_unused=True)
    ramp = 1.0 / (1.0 + math.exp(-(epoch - 1)))
    ramp = 1.0 if ramp > 1 - 1e-8 else ramp
    for p, g_main, g_transfer in zip(params, main_grads, transfer_grads):
        g_main = torch.zeros_like(p) if g_main is None else g_main
        if g_transfer is not None:
            limit = g_main.norm() * ramp
            g_transfer = g_transfer * (limit / torch.maximum(g_transfer.norm(), limit).clamp(min=1e-12))
            g_main = g_main + g_transfer
        p.grad = g_main


class Method(nn.Module):
    """Cross-entropy, optional KD on top (:class:`KDOnTop`); subclasses add their term in :meth:`distill`."""

    #: the row label in reports (the paper's name for the method)
    label = "?"
    #: the registered name (set by :func:`register_method`; absent on an unregistered class)
    method_name: ClassVar[str]
    #: what the method needs and allows whatever its hyper-parameters; :meth:`capabilities` reads it, and a
    #: method whose hyper-parameters decide some of it overrides that
    declared_capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, context: Context, gamma: Annotated[float, Range(ge=0)] = 1.0):
        super().__init__()
        self.gamma = float(gamma)
        #: Hinton's KD on top, for a method that offers it (built from its own ``alpha`` and ``temperature``)
        self.kd: KDOnTop | None = None
        #: this method's capabilities; a method whose hyper-parameters decide them sets it from its own
        self.caps = type(self).capabilities({})
        self.epoch = 0

    @classmethod
    def check_params(cls, params: dict[str, Any], where: str) -> None:
        """Raise a ValueError naming ``where.key``, the value and what is allowed for a key, type or value
        the constructor does not declare (:func:`method_parameters`). ``params`` may hold any subset of the keys.

        A method whose parameters nest (a combination of methods) overrides this.
        """
        declared = method_parameters(cls)  # type: ignore[arg-type]  # mypy: a class object is Hashable
        for key, value in params.items():
            if key not in declared:
                name = getattr(cls, "method_name", cls.__name__)
                raise ValueError(
                    f"{where}.{key}: method {name!r} has no parameter {key!r}; "
                    f"allowed: {', '.join(sorted(declared)) or 'none (it takes no hyper-parameters)'}"
                )
            declared[key].check(value, f"{where}.{key}")

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        """Raise a ValueError if these hyper-parameters cannot work for these networks and this dataset.

        Called by :func:`check_method_fit` before any job starts, with every
        hyper-parameter (defaults filled in, ranges already checked) and a context
        whose networks and samples have the real architectures' shapes but, as a
        rule, no values (meta tensors; shared between checks: read them, do not
        change them); ``train_labels`` is None, ``n_train`` says how many training
        images there are, ``batch_size`` is the schedule's or None. Check
        cheaply: never build the method itself (memory banks); to reuse a layer's
        own shape rules, build the layer under ``torch.device("meta")``.
        """

    @classmethod
    def capabilities(cls, params: dict[str, Any]) -> Capabilities:
        """What a run with these hyper-parameters (any subset of them; the defaults stand for the rest) needs
        and allows: :attr:`declared_capabilities`, for a method whose hyper-parameters change none of it."""
        name = getattr(cls, "method_name", None)  # (set by register_method)
        return replace(cls.declared_capabilities, methods_used=(name,) if name else ())

    def forward(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        terms = {"ce": self.gamma * F.cross_entropy(student.logits, batch.labels)}
        if self.kd is not None and self.kd.alpha:
            assert teacher is not None  # KD on top distils from a teacher
            terms["kd"] = self.kd.alpha * self.kd_term(student.logits, teacher.logits)
        terms.update(self.distill(student, teacher, batch))
        return terms

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        return {}

    # -- hook for the logit modifiers of methods/logits.py (logit standardisation, CTKD's temperature) --
    def kd_term(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """The KD-on-top term, unweighted; :class:`~afdistill.methods.logits.LogitMethod` overrides it."""
        assert self.kd is not None  # called only for a method with KD on top
        return self.kd.loss(student_logits, teacher_logits)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the engine's optimiser updates together with the student."""
        return (p for p in self.parameters() if p.requires_grad)

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def backward(self, terms: dict[str, Tensor]) -> None:
        cast(Tensor, sum(terms.values())).backward()  # a method returns at least its CE term

    def after_step(
        self, batch: Batch, student: nn.Module | None, teacher: Features | None, optimizer: torch.optim.Optimizer
    ) -> None:
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
    return {
        key: parameter.default
        for key, parameter in method_parameters(
            method_class(name)  # type: ignore[arg-type]  # mypy: a class object is Hashable
        ).items()
        if parameter.default is not inspect.Parameter.empty
    }


def describe_method(name: str) -> list[tuple[str, Any, str]]:
    """(parameter, default, what is allowed) for each hyper-parameter of method ``name``, in signature order."""
    return [
        (key, parameter.default, parameter.allowed())
        for key, parameter in method_parameters(
            method_class(name)  # type: ignore[arg-type]  # mypy: a class object is Hashable
        ).items()
    ]


def check_method_params(name: str, params: dict[str, Any], where: str) -> None:
    """Raise a ValueError naming ``where.key``, the value and what is allowed if ``params`` do not fit method ``name``.

    Keys, types and ranges as the constructor declares them; through the
    method's :meth:`Method.check_params`, which a method may override.
    """
    if not isinstance(params, dict):
        raise ValueError(f"{where}: expected a mapping of hyper-parameter -> value, got {params!r}")
    method_class(name).check_params(params, where)


@contextlib.contextmanager
def _batch_norms_pass_through(network: nn.Module) -> Iterator[None]:
    """Every BatchNorm returns its input while inside: the same shapes, and on the meta device
    (where BatchNorm runs as a Python decomposition) about 40% less time for a shape-only dry run."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        # an instance attribute, shadowing the class's forward (mypy: methods are not assignable)
        norm.forward = _identity  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _identity(x: Tensor) -> Tensor:
    return x


@functools.lru_cache(maxsize=64)
def _network_sample(arch: str, num_classes: int, image_size: int, options: tuple = ()) -> tuple[nn.Module, Features]:
    """A network of this architecture (``options``: its ``create_model`` options as sorted items) and its
    features on a 2-image dry run, for their shapes (cached).

    Built on the meta device, where layers allocate nothing, initialise nothing
    and compute only shapes (a ResNet-110 in a fraction of its CPU time); on the
    CPU for an architecture whose forward pass the meta device cannot run.
    """
    images = torch.zeros(2, 3, image_size, image_size)
    with torch.random.fork_rng(devices=[]):  # initialising weights must not move the caller's random stream
        try:
            with torch.device("meta"):
                network = create_model(arch, num_classes, **dict(options)).requires_grad_(False)
            with _batch_norms_pass_through(network):
                return network, dry_run(network, images.to("meta"))  # outside the device mode: less dispatch
        except (NotImplementedError, RuntimeError):
            network = create_model(arch, num_classes, **dict(options)).requires_grad_(False)
            return network, dry_run(network, images)


def check_method_fit(
    name: str,
    params: dict[str, Any],
    where: str,
    *,
    student: str | None,
    teacher: str | None,
    num_classes: int,
    image_size: int,
    n_train: int,
    batch_size: int | None = None,
    student_options: dict | None = None,
    teacher_options: dict | None = None,
) -> None:
    """Raise a ValueError, before any job starts, if run ``where`` cannot train these networks on this dataset.

    ``student``/``teacher``: architecture names, the trained and the frozen
    network (None where a job has none: the plain student has no teacher, MHGD's
    heads stage no student); ``num_classes``, ``image_size`` and
    ``n_train`` (training images) from the dataset's metadata; ``batch_size``
    from the schedule, for methods whose memory grows with it. Checks the
    parameters (:func:`check_method_params`: cheap, and a caller outside the grid may pass any), then the method's
    :meth:`Method.check_fit` on dry-run shapes of the real architectures, built
    once per (architecture, classes, image size) and only for their shapes
    (:func:`_network_sample`: on the meta device, holding no values).
    """
    check_method_params(name, params, where)
    cls = method_class(name)
    params = {**method_defaults(name), **params}
    if cls.capabilities(params).needs_teacher and teacher is None:
        raise ValueError(f"{where}: method {name!r} distils from a teacher, and this run has none")
    options = lambda given: tuple(sorted((given or {}).items()))  # noqa: E731  (hashable, for the cache)
    student_network, student_sample = (
        (None, None) if student is None else _network_sample(student, num_classes, image_size, options(student_options))
    )
    teacher_network, teacher_sample = (
        (None, None) if teacher is None else _network_sample(teacher, num_classes, image_size, options(teacher_options))
    )
    context = Context(
        student=student_network,
        teacher=teacher_network,
        student_sample=student_sample,
        teacher_sample=teacher_sample,
        num_classes=num_classes,
        train_labels=None,
        batch_size=batch_size,
    )
    cls.check_fit(params, context, where, n_train)


def build_method(name: str, params: dict[str, Any], context: Context) -> Method:
    """The method a job trains with; ``params`` were checked where the job was planned (or by ``afdistill
    train``), not again here."""
    return method_class(name)(context, **params)


def select(features: Sequence[_T], indices: list[int]) -> list[_T]:
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
