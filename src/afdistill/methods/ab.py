"""Activation boundaries (Heo et al., AAAI 2019): transfer which neurons the teacher activates.

Paper: a neuron's activation boundary is where its pre-activation crosses
zero. The student's pre-activations, mapped through a connector r, are pushed
to the teacher's side of each boundary with a margin mu by the piecewise
differentiable "alternative" loss

    || rho(T) * relu(mu - r(S)) + (1 - rho(T)) * relu(mu + r(S)) ||_2^2

with rho(T) = 1 where the teacher's pre-activation is positive, used as an
initialisation stage before classification training. (We worked from the
codes below; the paper's text, and so its equation numbers, were not at hand.
The codes' element-wise terms are this loss's.)

Matched code: HobbitLong/RepDistiller@b84f547c ``distiller_zoo/AB.py``
(``ABLoss``), ``models/util.py`` (``Connector``, ``ConvReg``),
``train_student.py`` and ``helper/pretrain.py``:

* the features are the stage outputs *before* their last ReLU
  (``preact=True``, ``feat[1:-1]``; here ``Features.preact_stages``), for
  student and teacher;
* a stage whose channels and height already agree with the teacher's goes
  to the loss as it is; any other passes through ``ConvReg(use_relu=False)``:
  a convolution shaped by the size ratio (3x3 stride 2 when the student map is
  twice the teacher's, a 4x4 stride-2 transposed convolution when half, a
  (1 + dH) x (1 + dW) kernel otherwise, 1x1 for equal sizes) followed by
  batch normalisation;
* per stage: (s + m)^2 where s > -m and t <= 0, plus (s - m)^2 where s <= m
  and t > 0, summed over all elements (margin m = 1), then weighted
  w_i = 2^(i - n + 1) (the last of the n stages 1, each earlier one half the
  next), divided by the batch size and multiplied by 3/1000; stages summed.

How RepDistiller trains it: only as an initialisation stage (``init``:
30 epochs on this loss alone, updating the connector and the student's
feature modules), after which the connector is unused and the student trains
with ``loss_kd = 0``. Here it is a term minimised with cross-entropy in one
stage, the connector training with the student:

    L = gamma CE + alpha KD + beta * AB

with beta = 1 and alpha = 0, its script's ``-a 0 -b 1``.

The authors' code (bhheo/AB_distillation@a7701d3
``cifar10_AB_distillation.py``) has the same loss and scaling (per-stage sums
over the batch size, weights 1, 1/2, 1/4 from the last stage back, times
3/1000) but a bias-free 1x1 convolution + batch norm connector on every stage,
including those whose shapes agree. The TF code of the MHGD authors
(sseung0703/KD_methods_with_TF@9fb5414 ``nets/Multiple.py: AB_distillation``)
is not followed either: a 1x1 convolution (no bias) + batch norm on every
stage, post-ReLU features, the batch mean of the per-image sums, stage weights
2^i (1 for the first stage, doubling with depth), times 3e-3.
"""

from __future__ import annotations

from typing import Annotated, Any, Sequence, cast

import torch
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Context, KDOnTop, Method, Range, register_method
from .fitnet import ConvRegressor


class BoundaryConnector(ConvRegressor):
    """RepDistiller's ``ConvReg(use_relu=False)``: FitNet's regressor without its final ReLU."""

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


def _preact(features: Features, who: str) -> Sequence[Tensor]:
    if features.preact_stages is None:
        raise ValueError(f"AB compares pre-activation stage outputs, and the {who}'s features do not provide them")
    return features.preact_stages


def _connectors(context: Context) -> list[nn.Module]:
    """One connector per stage: identity where channels and height agree, else a ``BoundaryConnector``."""
    assert context.student_sample is not None and context.teacher_sample is not None  # AB needs both networks
    student, teacher = _preact(context.student_sample, "student"), _preact(context.teacher_sample, "teacher")
    if len(student) != len(teacher):
        raise ValueError(
            f"AB pairs the stages one to one; the teacher has {len(teacher)} and the student {len(student)}"
        )
    connectors: list[nn.Module] = []
    for index, (s, t) in enumerate(zip(student, teacher), start=1):
        if s.shape[1] == t.shape[1] and s.shape[2] == t.shape[2]:
            connectors.append(nn.Identity())
            continue
        try:
            connectors.append(BoundaryConnector(tuple(s.shape), tuple(t.shape)))
        except ValueError as error:
            raise ValueError(f"stage {index}: {str(error).replace('FitNet: ', '')}") from None
    return connectors


def boundary_loss(source: Tensor, target: Tensor, margin: float) -> Tensor:
    """The alternative L2 loss of one stage, summed over every element."""
    below = ((source > -margin) & (target <= 0)).to(source.dtype)
    above = ((source <= margin) & (target > 0)).to(source.dtype)
    return ((source + margin).pow(2) * below + (source - margin).pow(2) * above).sum()


def _arch(network) -> str:
    return getattr(network, "arch", type(network).__name__)


@register_method("ab")
class ActivationBoundaries(Method):
    label = "AB"
    declared_capabilities = Capabilities(cuda_graphs=True, kd_on_top=True, fuses=True)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 1.0,
        margin: Annotated[float, Range(ge=0)] = 1.0,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.beta, self.margin = float(beta), float(margin)
        self.connectors = nn.ModuleList(_connectors(context))
        n = len(self.connectors)
        self.stage_weights = [2.0 ** (i - n + 1) for i in range(n)]

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        with torch.device("meta"):  # the connectors' own size rules, without allocating them
            try:
                _connectors(context)
            except ValueError as error:
                raise ValueError(f"{where}: {_arch(context.teacher)} -> {_arch(context.student)}: {error}") from None

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        sources = _preact(student, "student")
        targets = _preact(teacher, "teacher")
        loss: float | Tensor = 0.0
        for weight, connector, s, t in zip(self.stage_weights, self.connectors, sources, targets):
            loss = loss + weight * boundary_loss(connector(s), t, self.margin)
        return {"ab": cast(Tensor, self.beta * loss / len(batch.labels) * 3 / 1000)}  # a tensor: >= 1 stage
