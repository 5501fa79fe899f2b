"""Several distillation methods as one run (the AFD paper's Appendix A trains CRD + AFD).

Declared in a grid as a run of method ``combined`` whose ``parts`` name the
methods and their hyper-parameters::

    crd_afd: {method: combined, parts: {crd: {beta: 0.8}, afd: {beta: 200}}, alpha: 0.9, temperature: 4,
              label: CRD+AFD}

A part's key is the registered method it runs, or any name when the part says
``method:`` (``parts: {afd_l1: {method: afd, distance: l1}, ...}``). The loss is

    gamma CE + alpha KD(temperature) + sum over parts of each part's distillation terms

with CE and KD counted once, from the top level (a part's own ``gamma``,
and its ``alpha`` and ``temperature`` where they are its KD on top, are
refused: they would not be used; DKD's ``alpha`` and ``temperature`` are its
own term's and stay the part's). Each
term keeps its name when it is named after its part (``crd``, ``afd``) and is
called ``<part>.<term>`` otherwise; ``epoch_summary`` keys are
``<part>.<key>`` (e.g. ``afd.attention``).

Hooks reach every part: ``begin_epoch``, ``after_step`` (in the order of
``parts``), ``epoch_summary``, ``trainable_parameters``, ``train``/``eval``.
What cannot be composed honestly is refused: parts that shape their own
gradients (``backward``, MHGD's clipping would treat the other parts' terms as
its task gradient) or replace ``forward`` (MHAN's pretraining), parts that add
no term of their own (``vanilla``, ``kd``: CE and KD are the top level's),
nested ``combined``, two parts that each need a pre-stage, and a part that
needs a network pretrained on the teacher (FT's paraphraser: its heads job
would not see the part's hyper-parameters). Its capabilities are its parts'
combined (:meth:`Combined.capabilities`): it steps as a CUDA graph only if
every part's step may, needs the input gradient if any part does, and so on.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import chain
from typing import Annotated, Any, Iterator, cast

from torch import Tensor, nn

from ..models import Features, UnknownNameError
from .base import (
    Batch,
    Capabilities,
    Context,
    KDOnTop,
    Method,
    Range,
    check_method_params,
    method_class,
    method_defaults,
    method_parameters,
    register_method,
)

TOP_LEVEL = ("gamma", "alpha", "temperature")  # CE's weight, then KD on top's (KDOnTop)
RESERVED = ("ce", "kd", "total")  # term names of the top level and the engine


def _part_method(name: str, entry: Any, where: str) -> tuple[str, dict[str, Any]]:
    """(method name, its hyper-parameters) of one part entry."""
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping of hyper-parameters, got {entry!r}")
    params = dict(entry)
    method = params.pop("method", name)
    return method, params


def _parts(params: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], Capabilities]]:
    """(part name, method, its hyper-parameters, its capabilities) of every part, in order."""
    found = []
    for name, entry in (params.get("parts") or {}).items():
        method, part_params = _part_method(name, entry, name)
        found.append((name, method, part_params, method_class(method).capabilities(part_params)))
    return found


@register_method("combined")
class Combined(Method):
    label = "Combined"

    def __init__(
        self,
        context: Context,
        parts: dict | None = None,
        gamma: Annotated[float, Range(ge=0)] = 1.0,
        alpha: Annotated[float, Range(ge=0)] = 0.9,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
    ):
        super().__init__(context, gamma=gamma)
        self.kd = KDOnTop(alpha, temperature)
        where = f"methods.{self.method_name}"
        # Also checked here, so that a base.check_method_params that does not dispatch to check_params still
        # never builds an unchecked combination.
        type(self).check_params({"parts": parts}, where)
        assert parts is not None  # check_params refuses anything but a mapping of parts
        self.caps = type(self).capabilities({"parts": parts})
        owner = self.pre_stage_part({"parts": parts})
        self.parts = nn.ModuleDict()
        for name, entry in parts.items():
            method, params = _part_method(name, entry, f"{where}.parts.{name}")
            part_context = replace(context, artifact=context.artifact if owner and owner[0] == name else None)
            self.parts[name] = method_class(method)(part_context, **params)

    # ---- declaration

    @classmethod
    def check_params(cls, params: dict[str, Any], where: str) -> None:
        """The top-level keys as any method's, then every part (recursively, through ``check_method_params``)."""
        top = {k: v for k, v in params.items() if k != "parts"}
        inherited = getattr(super(), "check_params", None)
        if inherited is not None:
            inherited(top, where)
        else:
            allowed = ("parts",) + TOP_LEVEL
            for key in top:
                if key not in allowed:
                    raise ValueError(
                        f"{where}.{key}: method 'combined' has no parameter {key!r}; "
                        f"allowed: {', '.join(sorted(allowed))}"
                    )
        if "parts" not in params:
            return  # a sweep checks single values
        parts = params["parts"]
        if not isinstance(parts, dict) or len(parts) < 2:
            raise ValueError(
                f"{where}.parts: expected a mapping of at least two parts, part name -> "
                f"hyper-parameters (e.g. {{crd: {{beta: 0.8}}, afd: {{beta: 200}}}}), got {parts!r}"
            )
        stages = []
        teacher = False
        methods: dict[str, str] = {}
        for name, entry in parts.items():
            here = f"{where}.parts.{name}"
            if not isinstance(name, str) or not name.replace("_", "").isalnum() or name in RESERVED:
                raise ValueError(f"{here}: part names use letters, digits and '_' and are not {', '.join(RESERVED)}")
            method, part_params = _part_method(name, entry, here)
            try:
                part = method_class(method)
            except UnknownNameError as error:
                raise ValueError(f"{here}{'.method' if method != name else ''}: {error}") from None
            reason = _why_not_composable(part)
            if reason:
                raise ValueError(f"{here}: method {method!r} cannot be a part: {reason}")
            if method in methods:
                raise ValueError(
                    f"{here}: method {method!r} is already the part {methods[method]!r}; a run "
                    f"adds each method's term once (two of them would train two copies of its modules "
                    f"on one summed loss): give it one part"
                )
            methods[method] = name
            caps = part.capabilities(part_params)
            for key in TOP_LEVEL:
                # a part's alpha and temperature are refused where they would be its KD on top, not its own
                own = (
                    key != "gamma"
                    and not caps.kd_on_top
                    # (the ignore: mypy does not take a class object for Hashable)
                    and key in method_parameters(part)  # type: ignore[arg-type]
                )
                if key in part_params and not own:
                    raise ValueError(
                        f"{here}.{key}: set {key} at the top level of the run; CE and KD are counted once, not per part"
                    )
            check_method_params(method, part_params, here)
            if caps.pre_stage == "heads":
                assert caps.heads is not None  # Capabilities pairs a "heads" pre-stage with its Heads
                raise ValueError(
                    f"{here}: method {method!r} cannot be a part: it needs a network pretrained on "
                    f"the teacher ({caps.heads.method}), whose job would not see the part's "
                    f"hyper-parameters"
                )
            if caps.pre_stage is not None:
                stages.append((name, caps.pre_stage))
            teacher = teacher or caps.needs_teacher
        if len(stages) > 1:
            raise ValueError(
                f"{where}.parts: parts {', '.join(n for n, _ in stages)} each need a pre-stage "
                f"({', '.join(s for _, s in stages)}); a run reads at most one"
            )
        if not teacher:
            raise ValueError(f"{where}.parts: no part distils from the teacher")

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        """A combination needs its parts (a sweep's single values skip that in ``check_params``); each part's
        own fit check runs on the same networks (a FitNet hint layer, CRD's negatives, AFD's candidates)."""
        if not params.get("parts"):
            raise ValueError(
                f"{where}.parts: missing; a combined run names at least two parts, part name -> "
                f"hyper-parameters (e.g. {{crd: {{beta: 0.8}}, afd: {{beta: 200}}}})"
            )
        cls.check_params({"parts": params["parts"]}, where)
        for name, entry in params["parts"].items():
            method, part_params = _part_method(name, entry, name)
            method_class(method).check_fit(
                {**method_defaults(method), **part_params}, context, f"{where}.parts.{name}", n_train
            )

    @classmethod
    def capabilities(cls, params: dict[str, Any]) -> Capabilities:
        """Its parts' capabilities combined: the pre-stage (and its heads) of the part that reads one; the input
        gradient, the second view and the teacher's logits if any part needs them; a CUDA graph only if every
        part's step may be one. It needs a teacher (a combination whose parts need none is refused) and adds
        KD on top at its own ``alpha`` and ``temperature``."""
        parts = _parts(params)
        owner = next((caps for _, _, _, caps in parts if caps.pre_stage is not None), None)
        return Capabilities(
            needs_teacher=True,
            pre_stage=None if owner is None else owner.pre_stage,
            heads=None if owner is None else owner.heads,
            needs_input_grad=any(caps.needs_input_grad for *_, caps in parts),
            cuda_graphs=bool(parts) and all(caps.cuda_graphs for *_, caps in parts),
            strong_view=any(caps.strong_view for *_, caps in parts),
            fuses=bool(parts) and all(caps.fuses for *_, caps in parts),
            sets_gradients=any(caps.sets_gradients for *_, caps in parts),
            reads_teacher_logits=any(caps.reads_teacher_logits for *_, caps in parts),
            kd_on_top=True,
            methods_used=(cls.method_name, *(method for _, method, _, _ in parts)),
            relative_cost=1 + sum(caps.relative_cost - 1 for *_, caps in parts),  # each part adds its own terms
        )

    @classmethod
    def pre_stage_part(cls, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
        """(part name, method, its hyper-parameters) of the part that reads a pre-stage, if any."""
        return next(
            (
                (name, method, part_params)
                for name, method, part_params, caps in _parts(params)
                if caps.pre_stage is not None
            ),
            None,
        )

    # ---- training

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for name, part in self.parts.items():
            for term, value in cast(Method, part).distill(student, teacher, batch).items():  # parts hold Methods
                terms[term if term == name else f"{name}.{term}"] = value
        return terms

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return chain.from_iterable(cast(Method, part).trainable_parameters() for part in self.parts.values())

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        for part in self.parts.values():
            cast(Method, part).begin_epoch(epoch)

    def after_step(self, batch, student, teacher, optimizer) -> None:
        for part in self.parts.values():
            cast(Method, part).after_step(batch, student, teacher, optimizer)

    def epoch_summary(self) -> dict[str, Any]:
        return {
            f"{name}.{key}": value
            for name, part in self.parts.items()
            for key, value in cast(Method, part).epoch_summary().items()
        }


def _why_not_composable(part: type[Method]) -> str | None:
    if part is Combined:
        return "combinations do not nest; list every part in one `parts`"
    if part.backward is not Method.backward:
        return "it shapes its own gradients (backward), which would take the other parts' terms as its own"
    if part.forward is not Method.forward:
        return "it replaces the training objective (forward) instead of adding a term"
    if part.distill is Method.distill:
        return "it adds no term of its own (CE and KD come from the run's gamma, alpha and temperature)"
    return None
