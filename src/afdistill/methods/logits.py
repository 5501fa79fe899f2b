"""Modifiers of logit-based distillation, as options of any method built on :class:`LogitMethod`.

Two published modifiers change how a logit method compares the student's and
the teacher's logits, not what it compares; so they are hyper-parameters of
every logit method (KD, DKD, MLKD) rather than methods of their own:

``logit_standardization: true``
    Sun et al., "Logit Standard Deviation as a Temperature" (CVPR 2024):
    both logit vectors are z-scored per sample (eq. 9, ``Z(z; tau)`` with the
    base temperature tau) before the softmax of the distillation loss. As in
    sunshangquan/logit-standardization-KD (``normalize``), the standard
    deviation is the unbiased one (``torch.std``) and 1e-7 is added to it; the
    cross-entropy and, in MLKD, the teacher's confidence masks still see the
    raw logits.
``ctkd: true``
    Li et al., "Curriculum Temperature for Knowledge Distillation" (AAAI 2023),
    global variant: the distillation temperature is a learned scalar,
    ``T = ctkd_t_start + ctkd_t_range * sigmoid(theta)`` (zhengli97/CTKD
    ``t_start + t_end * sigmoid``, theta initialised to 1), that the same SGD
    optimiser updates through a gradient-reversal layer, so it *maximises* the
    distillation loss the student minimises (eq. 6-8). The reversal's scale
    lambda follows the paper's cosine curriculum (eq. 9) from
    ``ctkd_lambda_start`` to ``ctkd_lambda_end`` over ``ctkd_curriculum_epochs``
    epochs; as in the official code (``CosineDecay(0, -1, 10)`` read at the
    1-based epoch, and a reversal layer whose backward multiplies by lambda
    itself), the scale is negative, i.e. the gradient is reversed.

Both are CUDA-graph safe: the curriculum scale lives in a buffer updated in
place by :meth:`LogitMethod.begin_epoch`, and neither draws random numbers.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor, nn

from .base import Capabilities, Choice, Context, Method, Range, kd_loss, method_parameters

#: added to the standard deviation, as the official logit-standardisation code does
STANDARDIZATION_EPS = 1e-7


def standardize(logits: Tensor) -> Tensor:
    """Per-sample z-score of a logit matrix (rows are samples), unbiased standard deviation."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (std + STANDARDIZATION_EPS)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (a tensor, negative to reverse it)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def scale_gradient(x: Tensor, scale: Tensor) -> Tensor:
    return _ScaleGradient.apply(x, scale)


def cosine_curriculum(epoch: int, start: float, end: float, epochs: int) -> float:
    """CTKD's ``CosineDecay.get_value``: ``start`` at epoch 0, ``end`` from ``epochs`` on, cosine between."""
    progress = min(max(epoch, 0), epochs) / epochs
    return (math.cos(math.pi * progress) + 1.0) * 0.5 * (start - end) + end


class LogitMethod(Method):
    """A method whose distillation term compares logits; it accepts the modifiers above.

    Subclasses compute their losses through :meth:`prepare` (standardised
    logits, if asked) and :meth:`kd_temperature` (CTKD's learned temperature,
    if asked, else its own ``temperature``). Hinton's KD term that a method
    offering KD on top (:class:`~afdistill.methods.base.KDOnTop`: KD, MLKD)
    adds at its ``alpha`` goes through both as well (:meth:`kd_term`).
    """

    declared_capabilities = Capabilities(cuda_graphs=True, reads_teacher_logits=True, fuses=True)
    ctkd_lambda: Tensor  # a buffer, with ctkd (register_buffer: mypy sees Tensor | Module otherwise)

    @classmethod
    def check_params(cls, params: dict, where: str) -> None:
        """Also: CTKD's settings only with ``ctkd: true``, and no fixed ``temperature`` beside the learned one
        (one of them would be silently ignored)."""
        super().check_params(params, where)
        # a value equal to the default changes nothing, whichever way it is read
        declared = method_parameters(cls)  # type: ignore[arg-type]  # mypy: a class object is Hashable
        changed = {key for key, value in params.items() if value != declared[key].default}
        settings = sorted(key for key in changed if key.startswith("ctkd_"))
        if settings and params.get("ctkd") is not True:
            raise ValueError(
                f"{where}.{settings[0]}: only read with ctkd: true (CTKD's learned temperature); "
                f"set ctkd: true or drop {', '.join(settings)}"
            )
        if params.get("ctkd") is True and "temperature" in changed:
            raise ValueError(
                f"{where}.temperature: {params['temperature']!r} would not be used: with ctkd: true the "
                f"temperature is learned (ctkd_t_start + ctkd_t_range * sigmoid(theta)); drop "
                f"temperature, or set its range with ctkd_t_start and ctkd_t_range"
            )

    def __init__(
        self,
        context: Context,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        logit_standardization: Annotated[bool, Choice(True, False)] = False,
        ctkd: Annotated[bool, Choice(True, False)] = False,
        ctkd_t_start: Annotated[float, Range(gt=0)] = 1.0,
        ctkd_t_range: Annotated[float, Range(gt=0)] = 20.0,
        ctkd_lambda_start: Annotated[float, Range(le=0)] = 0.0,
        ctkd_lambda_end: Annotated[float, Range(le=0)] = -1.0,
        ctkd_curriculum_epochs: Annotated[int, Range(ge=1, integer=True)] = 10,
        **base,
    ):
        super().__init__(context, **base)
        self.temperature = float(temperature)
        self.logit_standardization = bool(logit_standardization)
        self.ctkd = bool(ctkd)
        if self.ctkd:
            if int(ctkd_curriculum_epochs) < 1:
                raise ValueError(f"ctkd_curriculum_epochs: must be at least 1, got {ctkd_curriculum_epochs}")
            self.ctkd_t_start, self.ctkd_t_range = float(ctkd_t_start), float(ctkd_t_range)
            self.ctkd_curriculum = (float(ctkd_lambda_start), float(ctkd_lambda_end), int(ctkd_curriculum_epochs))
            self.ctkd_theta = nn.Parameter(torch.ones(()))
            self.register_buffer("ctkd_lambda", torch.tensor(cosine_curriculum(0, *self.ctkd_curriculum)))

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        if self.ctkd:
            self.ctkd_lambda.fill_(cosine_curriculum(epoch, *self.ctkd_curriculum))

    def prepare(self, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
        if self.logit_standardization:
            return standardize(student_logits), standardize(teacher_logits)
        return student_logits, teacher_logits

    def kd_temperature(self) -> float | Tensor:
        """The distillation temperature: CTKD's learned one (a 0-d tensor behind the reversal) or ``temperature``."""
        if not self.ctkd:
            return self.temperature
        theta = scale_gradient(self.ctkd_theta, self.ctkd_lambda)
        return self.ctkd_t_start + self.ctkd_t_range * torch.sigmoid(theta)

    def kd_term(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return kd_loss(*self.prepare(student_logits, teacher_logits), self.kd_temperature())

    def epoch_summary(self) -> dict:
        if not self.ctkd:
            return {}
        with torch.no_grad():
            temperature = self.ctkd_t_start + self.ctkd_t_range * torch.sigmoid(self.ctkd_theta)
        return {"ctkd_temperature": float(temperature), "ctkd_lambda": float(self.ctkd_lambda)}
