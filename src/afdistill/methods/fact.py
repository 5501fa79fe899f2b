"""F-ActT: full-activation transfer, the baseline column of the AT paper's CIFAR-10 table.

Zagoruyko & Komodakis (ICLR 2017) compare activation-based attention transfer
("AT") with transferring the full activations ("F-ActT") at the same places,
the outputs of the groups of residual blocks (the slides' CIFAR-10 table:
e.g. WRN-16-1 from WRN-16-2, 8.77 -> 8.51 error with F-ActT, 7.93 with AT).
Neither the paper's text nor the slides give its formula or weight, and the
official code (szagoruyko/attention-transfer@893df54) implements only AT, so
this is AT's loss (``methods/at.py``) with the attention map replaced by the
whole activation tensor:

    L = gamma CE + alpha KD + beta sum_j mean (A_S^j/||A_S^j|| - A_T^j/||A_T^j||)^2

where A^j is group j's output of one image, flattened over C x H x W and
L2-normalised (as AT normalises its attention vectors), and the mean runs over
the batch and the C x H x W entries (AT's code averages its squared
differences the same way).

Where we had to choose:

* the student's activations pass through a 1x1 convolution (no bias, trained
  with the student) to the teacher's channel count where the two differ (the
  paper's WRN-16-1 / WRN-16-2 pair has 16 vs 32 channels per group), and not
  otherwise: an adaptation layer like FitNets' regressors, without a
  hint-training stage. (A secondary summary of the paper describes F-ActT as
  "FitNets-like: 1x1 feature adaptation, then an L2 loss"; we could not check
  this against the paper's own text);
* maps of different sizes: the larger is average-pooled first, as in AT;
* beta = 1000, AT's weight, so that the two columns differ only in what is
  compared (note that averaging over C x H x W rather than H x W makes the
  term about C times smaller than AT's for the same cosine); alpha = 0, as the
  table's F-ActT column has no KD;
* teacher and student must have the same number of groups (:meth:`check_fit`).
"""

from __future__ import annotations

from typing import Annotated, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Context, KDOnTop, Method, Range, register_method
from .maps import resize_to


def normalised_activations(features: Tensor) -> Tensor:
    """Each image's activation tensor, flattened and scaled to unit L2 norm (B x CHW)."""
    return F.normalize(features.flatten(1))


def _adapters(context: Context) -> list[nn.Module]:
    assert context.student_sample is not None and context.teacher_sample is not None  # it needs both networks
    student, teacher = context.student_sample.stages, context.teacher_sample.stages
    if len(student) != len(teacher):
        raise ValueError(
            f"F-ActT pairs the groups of residual blocks one to one; the teacher has {len(teacher)} "
            f"and the student {len(student)}"
        )
    return [
        nn.Identity() if s.shape[1] == t.shape[1] else nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
        for s, t in zip(student, teacher)
    ]


def _arch(network) -> str:
    return getattr(network, "arch", type(network).__name__)


@register_method("fact")
class FullActivationTransfer(Method):
    label = "F-ActT"
    declared_capabilities = Capabilities(cuda_graphs=True, kd_on_top=True, fuses=True)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 1000.0,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.beta = float(beta)
        self.adapters = nn.ModuleList(_adapters(context))

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        with torch.device("meta"):
            try:
                _adapters(context)
            except ValueError as error:
                raise ValueError(f"{where}: {_arch(context.teacher)} -> {_arch(context.student)}: {error}") from None

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        loss: float | Tensor = 0.0
        for adapter, f_s, f_t in zip(self.adapters, student.stages, teacher.stages):
            f_s = adapter(f_s)
            s_size, t_size = f_s.shape[-2:], f_t.shape[-2:]
            if s_size[0] > t_size[0]:
                f_s = resize_to(f_s, tuple(t_size))
            elif s_size[0] < t_size[0]:
                f_t = resize_to(f_t, tuple(s_size))
            loss = loss + (normalised_activations(f_s) - normalised_activations(f_t)).pow(2).mean()
        return {"fact": cast(Tensor, self.beta * loss)}  # a tensor: there is at least one stage
