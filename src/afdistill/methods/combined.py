"""Several distillation methods as one run (the AFD paper's Appendix A trains CRD + AFD).

Declared in a grid as a run of method ``combined`` whose ``parts`` name the
methods and their hyper-parameters::

    crd_afd: {method: combined, parts: {crd: {beta: 0.8}, afd: {beta: 200}}, alpha: 0.9, temperature: 4,
              label: CRD+AFD}

A part's key is the registered method it runs, or any name when the part says
``method:`` (``parts: {afd_l1: {method: afd, distance: l1}, ...}``). The loss is

    gamma CE + alpha KD(temperature) + sum over parts of each part's distillation terms

with CE and KD counted once, from the top level (a part's own ``gamma``,
``alpha`` and ``temperature`` are refused: they would not be used). Each
term keeps its name when it is named after its part (``crd``, ``afd``) and is
called ``<part>.<term>`` otherwise; ``epoch_summary`` keys are
``<part>.<key>`` (e.g. ``afd.attention``).

Hooks reach every part: ``begin_epoch``, ``after_step`` (in the order of
``parts``), ``epoch_summary``, ``trainable_parameters``, ``train``/``eval``.
What cannot be composed honestly is refused: parts that shape their own
gradients (``backward``, MHGD's clipping would treat the other parts' terms as
its task gradient) or replace ``forward`` (MHAN's pretraining), parts that add
no term of their own (``vanilla``, ``kd``: CE and KD are the top level's),
nested ``combined``, and two parts that each need a pre-stage. The run steps as
a CUDA graph only if every part's step may (:meth:`Combined.allows_cuda_graphs`);
it needs the input gradient if any part does.
"""
from __future__ import annotations

from dataclasses import replace
from itertools import chain
from typing import Annotated, Any, Iterator

from torch import Tensor, nn

from ..models import Features, UnknownNameError
from .base import (Batch, Context, Method, Range, check_method_params, method_class, method_defaults,
                   register_method)

TOP_LEVEL = ("gamma", "alpha", "temperature")
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


@register_method("combined")
class Combined(Method):
    label = "Combined"
    # Class-level answers for code that asks before building; a combination without a part that needs the
    # teacher is refused, and whether its step may be a CUDA graph depends on its parts: allows_cuda_graphs.
    needs_teacher = True
    cuda_graphs = False

    def __init__(self, context: Context, parts: dict | None = None, gamma: Annotated[float, Range(ge=0)] = 1.0,
                 alpha: Annotated[float, Range(ge=0)] = 0.9, temperature: Annotated[float, Range(gt=0)] = 4.0):
        super().__init__(context, gamma=gamma, alpha=alpha, temperature=temperature)
        where = f"methods.{self.method_name}"
        # Also checked here, so that a base.check_method_params that does not dispatch to check_params still
        # never builds an unchecked combination.
        type(self).check_params({"parts": parts}, where)
        owner = self.pre_stage_part({"parts": parts})
        self.parts = nn.ModuleDict()
        for name, entry in parts.items():
            method, params = _part_method(name, entry, f"{where}.parts.{name}")
            part_context = replace(context, artifact=context.artifact if owner and owner[0] == name else None)
            self.parts[name] = method_class(method)(part_context, **params)
        self.needs_input_grad = any(part.needs_input_grad for part in self.parts.values())
        self.cuda_graphs = all(part.cuda_graphs for part in self.parts.values()) and not self.needs_input_grad
        self.strong_view = any(part.strong_view for part in self.parts.values())

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
                    raise ValueError(f"{where}.{key}: method 'combined' has no parameter {key!r}; "
                                     f"allowed: {', '.join(sorted(allowed))}")
        if "parts" not in params:
            return  # a sweep checks single values
        parts = params["parts"]
        if not isinstance(parts, dict) or len(parts) < 2:
            raise ValueError(f"{where}.parts: expected a mapping of at least two parts, part name -> "
                             f"hyper-parameters (e.g. {{crd: {{beta: 0.8}}, afd: {{beta: 200}}}}), got {parts!r}")
        stages = []
        teacher = False
        methods: dict[str, str] = {}
        for name, entry in parts.items():
            here = f"{where}.parts.{name}"
            if not isinstance(name, str) or not name.replace("_", "").isalnum() or name in RESERVED:
                raise ValueError(f"{here}: part names use letters, digits and '_' and are not "
                                 f"{', '.join(RESERVED)}")
            method, part_params = _part_method(name, entry, here)
            try:
                part = method_class(method)
            except UnknownNameError as error:
                raise ValueError(f"{here}{'.method' if method != name else ''}: {error}") from None
            reason = _why_not_composable(part)
            if reason:
                raise ValueError(f"{here}: method {method!r} cannot be a part: {reason}")
            if method in methods:
                raise ValueError(f"{here}: method {method!r} is already the part {methods[method]!r}; a run "
                                 f"adds each method's term once (two of them would train two copies of its modules "
                                 f"on one summed loss): give it one part")
            methods[method] = name
            for key in TOP_LEVEL:
                if key in part_params:
                    raise ValueError(f"{here}.{key}: set {key} at the top level of the run; CE and KD are "
                                     f"counted once, not per part")
            check_method_params(method, part_params, here)
            stage = part.pre_stage(part_params)
            if stage is not None:
                stages.append((name, stage))
            teacher = teacher or part.needs_teacher
        if len(stages) > 1:
            raise ValueError(f"{where}.parts: parts {', '.join(n for n, _ in stages)} each need a pre-stage "
                             f"({', '.join(s for _, s in stages)}); a run reads at most one")
        if not teacher:
            raise ValueError(f"{where}.parts: no part distils from the teacher")

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        """A combination needs its parts (a sweep's single values skip that in ``check_params``); each part's
        own fit check runs on the same networks (a FitNet hint layer, CRD's negatives, AFD's candidates)."""
        if not params.get("parts"):
            raise ValueError(f"{where}.parts: missing; a combined run names at least two parts, part name -> "
                             f"hyper-parameters (e.g. {{crd: {{beta: 0.8}}, afd: {{beta: 200}}}})")
        cls.check_params({"parts": params["parts"]}, where)
        for name, entry in params["parts"].items():
            method, part_params = _part_method(name, entry, name)
            method_class(method).check_fit({**method_defaults(method), **part_params}, context, f"{where}.parts.{name}", n_train)

    @classmethod
    def pre_stage_part(cls, params: dict[str, Any]) -> tuple[str, str, dict[str, Any]] | None:
        """(part name, method, its hyper-parameters) of the part that reads a pre-stage, if any."""
        for name, entry in (params.get("parts") or {}).items():
            method, part_params = _part_method(name, entry, name)
            if method_class(method).pre_stage(part_params) is not None:
                return name, method, part_params
        return None

    @classmethod
    def pre_stage(cls, params: dict[str, Any]) -> str | None:
        owner = cls.pre_stage_part(params)
        return None if owner is None else method_class(owner[1]).pre_stage(owner[2])

    @classmethod
    def uses_strong_view(cls, params: dict[str, Any]) -> bool:
        return any(method_class(method).uses_strong_view(part_params) for method, part_params in
                   (_part_method(name, entry, name) for name, entry in (params.get("parts") or {}).items()))

    @classmethod
    def reads_teacher_logits(cls, params: dict[str, Any]) -> bool:
        return any(method_class(method).reads_teacher_logits(part_params) for method, part_params in
                   (_part_method(name, entry, name) for name, entry in (params.get("parts") or {}).items()))

    @classmethod
    def methods_used(cls, params: dict[str, Any]) -> list[str]:
        return [cls.method_name] + [_part_method(n, e, n)[0] for n, e in (params.get("parts") or {}).items()]

    @classmethod
    def allows_cuda_graphs(cls, params: dict[str, Any]) -> bool:
        """Whether a run with these parts may step as a CUDA graph: every part's step may."""
        classes = [method_class(_part_method(n, e, n)[0]) for n, e in (params.get("parts") or {}).items()]
        return bool(classes) and all(c.cuda_graphs and not c.needs_input_grad for c in classes)

    # ---- training

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for name, part in self.parts.items():
            for term, value in part.distill(student, teacher, batch).items():
                terms[term if term == name else f"{name}.{term}"] = value
        return terms

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return chain.from_iterable(part.trainable_parameters() for part in self.parts.values())

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        for part in self.parts.values():
            part.begin_epoch(epoch)

    def after_step(self, batch, student, teacher, optimizer) -> None:
        for part in self.parts.values():
            part.after_step(batch, student, teacher, optimizer)

    def epoch_summary(self) -> dict[str, Any]:
        return {f"{name}.{key}": value for name, part in self.parts.items()
                for key, value in part.epoch_summary().items()}


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
