"""The two rows every table starts with: the plain student and Hinton's KD."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from .base import Capabilities, Context, KDOnTop, Method, Range, register_method
from .logits import LogitMethod


@register_method("vanilla")
class Vanilla(Method):
    """Cross-entropy only: the "Student" row, and how teachers are pretrained."""

    label = "Student"
    declared_capabilities = Capabilities(needs_teacher=False, cuda_graphs=True, fuses=True)

    def __init__(self, context: Context):
        super().__init__(context)


@register_method("kd")
class KD(LogitMethod):
    """Hinton et al. 2015; alpha=0.9, T=4 as the official AFD code (loss = CE + 0.9 KD).

    RepDistiller and the AT code weight the cross-entropy by 0.1 (``gamma``) instead. The logit modifiers
    (``logit_standardization``, ``ctkd``: :class:`~afdistill.methods.logits.LogitMethod`) apply to its KD term.
    """

    label = "KD"
    declared_capabilities = replace(LogitMethod.declared_capabilities, kd_on_top=True)

    def __init__(
        self,
        context: Context,
        gamma: Annotated[float, Range(ge=0)] = 1.0,
        alpha: Annotated[float, Range(ge=0)] = 0.9,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **modifiers,
    ):
        super().__init__(context, gamma=gamma, temperature=temperature, **modifiers)
        self.kd = KDOnTop(alpha, temperature)
