"""FitNet (Romero et al. 2015) as HobbitLong/RepDistiller trains it: one hint, one learned regressor.

RepDistiller's ``hint`` method: the student feature at ``hint_layer`` goes
through a convolutional regressor (conv + BN + ReLU, shaped to the teacher's
map) and is pulled to the teacher's feature at the same index by mean squared
error, in a single stage together with cross-entropy (beta = 100).
``hint_layer`` indexes RepDistiller's feature list ``[stem, stage 1, ...,
last stage, pooled]``; its default 2 is the second stage's output.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Context, KDOnTop, Method, Range, register_method, repdistiller_taps


class ConvRegressor(nn.Module):
    """RepDistiller's ``ConvReg``: maps a student map onto the teacher map's channels and size."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        _, s_channels, s_height, s_width = student_shape
        _, t_channels, t_height, t_width = teacher_shape
        self.conv: nn.Conv2d | nn.ConvTranspose2d
        if s_height == 2 * t_height:
            self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=3, stride=2, padding=1)
        elif s_height * 2 == t_height:
            self.conv = nn.ConvTranspose2d(s_channels, t_channels, kernel_size=4, stride=2, padding=1)
        elif s_height >= t_height:
            self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=(1 + s_height - t_height, 1 + s_width - t_width))
        else:
            raise ValueError(
                f"FitNet: no regressor maps a {s_height}x{s_width} student map to a {t_height}x{t_width} teacher map"
            )
        self.bn = nn.BatchNorm2d(t_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


@register_method("fitnet")
class FitNet(Method):
    label = "FitNet"
    declared_capabilities = Capabilities(cuda_graphs=True, kd_on_top=True, fuses=True)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 100.0,
        hint_layer: Annotated[int, Range(ge=0)] = 2,
        alpha: Annotated[float, Range(ge=0)] = 0.9,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.beta = float(beta)
        assert context.student_sample is not None and context.teacher_sample is not None  # it needs both networks
        student, teacher = repdistiller_taps(context.student_sample), repdistiller_taps(context.teacher_sample)
        _check_hint_layer(hint_layer, context, f"methods.{self.method_name}")
        self.hint_layer = hint_layer
        self.regressor = ConvRegressor(tuple(student[hint_layer].shape), tuple(teacher[hint_layer].shape))

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        hint_layer = params["hint_layer"]
        _check_hint_layer(hint_layer, context, where)
        assert context.student_sample is not None and context.teacher_sample is not None  # it needs both networks
        student, teacher = repdistiller_taps(context.student_sample), repdistiller_taps(context.teacher_sample)
        with torch.device("meta"):  # the constructor's own size rules, without allocating the layer
            try:
                ConvRegressor(tuple(student[hint_layer].shape), tuple(teacher[hint_layer].shape))
            except ValueError as error:
                raise ValueError(
                    f"{where}.hint_layer: {hint_layer} is not allowed for "
                    f"{_arch(context.teacher)} -> {_arch(context.student)}: {error}"
                ) from None

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        hint = self.regressor(repdistiller_taps(student)[self.hint_layer])
        guide = repdistiller_taps(teacher)[self.hint_layer]
        return {"fitnet": self.beta * (hint - guide).pow(2).mean()}


def _arch(network) -> str:
    return getattr(network, "arch", type(network).__name__)


def _check_hint_layer(hint_layer: int, context: Context, where: str) -> None:
    """The hint must be a feature map (stem or a stage's output, not the pooled vector) that both networks have."""
    assert context.student_sample is not None and context.teacher_sample is not None  # it needs both networks
    student, teacher = repdistiller_taps(context.student_sample), repdistiller_taps(context.teacher_sample)
    spatial = min(len(student), len(teacher)) - 1  # the last tap is the pooled vector
    if not 0 <= hint_layer < spatial:
        raise ValueError(
            f"{where}.hint_layer: {hint_layer} is not allowed; expected an integer from 0 to {spatial - 1}: "
            f"the index counts the feature maps [stem, stage 1, ...], of which {_arch(context.student)} has "
            f"{len(student) - 1} and {_arch(context.teacher)} {len(teacher) - 1}"
        )
