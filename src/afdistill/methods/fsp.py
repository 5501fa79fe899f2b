"""FSP: the flow of solution procedure (Yim et al., CVPR 2017, "A Gift from Knowledge Distillation").

Paper (equations as numbered in the CVPR version; its text is not among the
project's papers): between two feature maps F1 (h x w x m) and F2 (h x w x n)
of one network, the FSP matrix is G[i, j] = sum_{s, t} F1[s, t, i] F2[s, t, j]
/ (h w) (eq. 1); the student is trained so that its FSP matrices match the
teacher's, L_FSP = 1/N sum_x sum_i lambda_i ||G_T^i - G_S^i||_2^2 with equal
lambda_i (eq. 2), as a first stage, and then on the main task alone.

Matched code: HobbitLong/RepDistiller@b84f547c ``distiller_zoo/FSP.py`` (the
loss) and ``train_student.py`` / ``helper/pretrain.py`` (how it is used):

* the features are RepDistiller's ``feat[:-1]``, i.e. ``[stem, stage 1, ...,
  last stage]``, and one FSP matrix is taken between each consecutive pair;
* before the product, the larger of the two maps is average-pooled to the
  smaller one's size (``adaptive_avg_pool2d``);
* G[m, n] = mean over positions of top[m] * bot[n], with ``bot`` the earlier
  map, ``top`` the later one (C_top x C_bot per image);
* each pair's loss is the *mean* of the squared differences over batch and
  matrix entries (the paper's eq. 2 sums over entries; the code is matched),
  and the pairs are summed;
* the teacher and the student must have the same channel counts at every tap
  (RepDistiller raises "num of channels not equal"; its README lists FSP as
  N/A for wrn-40-2 -> wrn-40-1). :meth:`FSP.check_fit` refuses such pairs.

How RepDistiller trains it: FSP is *only* an initialisation stage there
(``init``: ``init_epochs`` = 30 epochs on the FSP loss alone, updating the
student's feature modules, at the main learning rate), after which the
student trains on ``gamma CE + alpha KD`` with ``loss_kd = 0`` (its script's
``-b 50`` multiplies nothing). Here FSP is, as the other methods, a term the
student minimises together with cross-entropy in one stage:

    L = gamma CE + alpha KD + beta sum_pairs mean (G_S - G_T)^2

with beta = 1, the weight the FSP loss has in RepDistiller's init stage, and
alpha = 0 (its script's ``-a 0``).

The TF code of the MHGD authors (sseung0703/KD_methods_with_TF@9fb5414
``nets/Shared.py: FSP``) differs, and is not followed: it takes the stage
outputs only (no stem), max-pools the earlier map 2x2 when it is larger (it
assumes a factor of two), sums the squared differences over the matrix,
halves them and averages over the batch, weights the result by 1e-3, and
trains it as a 40-epoch initialisation stage (``train_w_distill.py``), after
which the optimiser's momentum is reset.
"""

from __future__ import annotations

from typing import Annotated, Any, Sequence, cast

import torch
from torch import Tensor

from ..models import Features
from .base import Batch, Capabilities, Context, KDOnTop, Method, Range, register_method
from .maps import resize_to


def fsp_taps(features: Features) -> list[Tensor]:
    """RepDistiller's ``feat[:-1]``: the stem and every stage's output."""
    return [features.stem, *features.stages]


def fsp_matrices(maps: Sequence[Tensor]) -> list[Tensor]:
    """One B x C_later x C_earlier matrix per pair of consecutive maps, the larger map pooled to the smaller."""
    matrices = []
    for earlier, later in zip(maps[:-1], maps[1:]):
        if earlier.shape[2] > later.shape[2]:
            earlier = resize_to(earlier, tuple(later.shape[-2:]))
        elif earlier.shape[2] < later.shape[2]:
            later = resize_to(later, tuple(earlier.shape[-2:]))
        positions = earlier.shape[2] * earlier.shape[3]
        matrices.append(later.flatten(2) @ earlier.flatten(2).transpose(1, 2) / positions)
    return matrices


def _arch(network) -> str:
    return getattr(network, "arch", type(network).__name__)


def _check_taps(context: Context) -> None:
    assert context.student_sample is not None and context.teacher_sample is not None  # FSP needs both networks
    student = [f.shape[1] for f in fsp_taps(context.student_sample)]
    teacher = [f.shape[1] for f in fsp_taps(context.teacher_sample)]
    if student != teacher:
        raise ValueError(
            f"FSP compares C x C matrices between consecutive feature maps [stem, stage 1, ...], so "
            f"teacher and student need the same channels at each; got teacher {teacher}, "
            f"student {student}"
        )


@register_method("fsp")
class FSP(Method):
    label = "FSP"
    declared_capabilities = Capabilities(cuda_graphs=True, kd_on_top=True, fuses=True)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 1.0,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        _check_taps(context)
        self.beta = float(beta)

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        try:
            _check_taps(context)
        except ValueError as error:
            raise ValueError(f"{where}: {_arch(context.teacher)} -> {_arch(context.student)}: {error}") from None

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        with torch.no_grad():
            targets = fsp_matrices(fsp_taps(teacher))
        # RepDistiller's mean over images and matrix entries; the paper's eq. 2 sums the squared entries
        # (||G_T - G_S||_2^2) and averages over images only
        loss = sum((g_s - g_t).pow(2).mean() for g_s, g_t in zip(fsp_matrices(fsp_taps(student)), targets))
        return {"fsp": cast(Tensor, self.beta * loss)}  # a tensor: there are at least two maps
