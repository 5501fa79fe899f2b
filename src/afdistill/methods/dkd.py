"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), as megvii-research/mdistiller runs it.

KD's loss splits into a target-class part (TCKD: the KL divergence between
the binary distributions [p_target, 1 - p_target], eq. 1 and 7) and a
non-target part (NCKD: the KL divergence between the distributions over the
non-target classes, eq. 2 and 7), reweighted freely (eq. 7):

    DKD = alpha * TCKD + beta * NCKD

``alpha`` and ``beta`` are the paper's names (eq. 7) and mdistiller's
(``DKD.ALPHA``, ``DKD.BETA``); DKD adds no Hinton KD on top, so ``alpha`` is
TCKD's weight here, not the KD weight it is for the methods that offer KD on
top (:class:`~afdistill.methods.base.KDOnTop`). Both parts are taken at
temperature T and scaled by T^2, as mdistiller's ``dkd_loss`` does. As there,
the non-target softmax is taken over all classes with 1000 subtracted from
the target's tempered logit (so its probability vanishes), and the whole term
is multiplied by ``min(epoch / warmup_epochs, 1)`` (a linear warm-up over the
first 20 epochs of a 1-based epoch count, mdistiller's ``WARMUP``).
mdistiller's CIFAR defaults: CE weight 1, alpha 1, beta 8, T 4; its per-pair
configs lower beta (2 for ResNet56/110 students' teachers, 6 for WRN and VGG
pairs), which the grid sets per pair.

The logit modifiers of :mod:`afdistill.methods.logits` apply (logit
standardisation, CTKD's temperature); the warm-up factor is a buffer updated
in place, so the step runs as a CUDA graph.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Features
from .base import Batch, Context, Range, register_method
from .logits import LogitMethod

#: mdistiller's offset that removes the target class from the non-target softmax
TARGET_OFFSET = 1000.0


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float | Tensor
) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each a batch mean scaled by T^2."""
    target = F.one_hot(labels, student_logits.shape[1]).to(student_logits.dtype)
    p_student = F.softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    # binary distributions [p_target, p_not_target]
    binary_student = torch.stack([(p_student * target).sum(1), (p_student * (1 - target)).sum(1)], dim=1)
    binary_teacher = torch.stack([(p_teacher * target).sum(1), (p_teacher * (1 - target)).sum(1)], dim=1)
    batch = student_logits.shape[0]
    scale = temperature**2 / batch
    tckd = F.kl_div(torch.log(binary_student), binary_teacher, reduction="sum") * scale
    log_q_student = F.log_softmax(student_logits / temperature - TARGET_OFFSET * target, dim=1)
    # the teacher's side in log space: its target probability underflows to 0, and a learned (CTKD)
    # temperature would otherwise get a 0 * inf gradient through it
    log_q_teacher = F.log_softmax(teacher_logits / temperature - TARGET_OFFSET * target, dim=1)
    nckd = F.kl_div(log_q_student, log_q_teacher, reduction="sum", log_target=True) * scale
    return tckd, nckd


@register_method("dkd")
class DKD(LogitMethod):
    label = "DKD"
    #: the names these hyper-parameters had before they took the paper's
    renamed = {"tckd_weight": "alpha", "nckd_weight": "beta"}
    warmup: Tensor  # a buffer (register_buffer: mypy would see Tensor | Module)

    def __init__(
        self,
        context: Context,
        alpha: Annotated[float, Range(ge=0)] = 1.0,
        beta: Annotated[float, Range(ge=0)] = 8.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        warmup_epochs: Annotated[int, Range(ge=0, integer=True)] = 20,
        **modifiers,
    ):
        super().__init__(context, temperature=temperature, **modifiers)
        if int(warmup_epochs) < 0:
            raise ValueError(f"methods.dkd.warmup_epochs: must be >= 0, got {warmup_epochs}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.warmup_epochs = int(warmup_epochs)
        self.register_buffer("warmup", torch.tensor(self.warmup_factor(0)))

    @classmethod
    def check_params(cls, params: dict, where: str) -> None:
        """Also: a former name (``tckd_weight``, ``nckd_weight``) is refused naming the paper's."""
        for old, new in cls.renamed.items():
            if old in params:
                raise ValueError(
                    f"{where}.{old}: DKD's weights take the paper's names (eq. 7, mdistiller's "
                    f"DKD.ALPHA and DKD.BETA): write {new}: {params[old]!r} instead of {old}"
                )
        super().check_params(params, where)

    def warmup_factor(self, epoch: int) -> float:
        return 1.0 if self.warmup_epochs == 0 else min(epoch / self.warmup_epochs, 1.0)

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.warmup.fill_(self.warmup_factor(epoch))

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        student_logits, teacher_logits = self.prepare(student.logits, teacher.logits)
        tckd, nckd = dkd_terms(student_logits, teacher_logits, batch.labels, self.kd_temperature())
        return {"dkd": self.warmup * (self.alpha * tckd + self.beta * nckd)}
