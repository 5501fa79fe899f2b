"""Multi-level Logit Distillation (Jin, Wang & Lin, CVPR 2023), on the one batch the engine gives.

Three alignments of the tempered predictions P = softmax(Z / T) (B x C), each
summed over the temperatures ``(T, 3, 5, 2, 6)`` (the paper's multi-scale
"prediction augmentation", Sec. 3.2; T is ``temperature``):

* instance level (eq. 3): KL(P_t || P_s) per sample, batch mean, times T^2;
* batch level (eq. 5, the "batch correlation"): || P_s P_s^T - P_t P_t^T ||_F^2 / B;
* class level (eq. 7, the "class correlation"): || P_s^T P_s - P_t^T P_t ||_F^2 / C.

What the official code (Jin-Ying/Multi-Level-Logit-Distillation,
``KD_ours.forward_train``) does and this module follows:

* confidence masking (Sec. 3.3): the teacher's weak-view confidence
  (max softmax at T = 1) selects the samples at or below its median
  (``np.percentile(., 50)``; here the same linear interpolation from a
  sort, without a host sync), and the per-class summed confidence
  the classes at or below theirs. The code multiplies each already-averaged
  loss by the mask and averages again, so the mask acts as the *fraction*
  kept (about 1/2), not as a per-sample selection; so does this module;
* instance terms at all five temperatures carry the sample mask; the code adds
  two unmasked instance terms at T = 2 and 6 that read the weak view (in its
  "strong" sum), which this module keeps; the batch terms carry the sample
  mask, the class terms the class mask; every term has weight ``kd_weight``;
  the strong-view class and batch terms the code computes are not in its
  returned loss, and are absent here too.

The strong view (``strong_view``, default on, as the official code trains):
the engine gives each batch a second, strongly augmented view (crop, flip,
RandAugment and Cutout: :mod:`afdistill.augment`) and both networks' logits
of it; on it the code adds a second cross-entropy (weight ``gamma``, as its
``CE_WEIGHT`` weighs both) and unmasked instance terms at T, 3 and 5. With
``strong_view: false`` those three terms are absent and everything is
computed on the given (weak: crop + flip) batch, with no extra forward pass.

Logit modifiers (:mod:`afdistill.methods.logits`) apply. Standardisation
(``logit_standardization``) z-scores the logits of the *instance* (KL) terms
only, on both views; the batch- and class-correlation terms, the confidence
masks and both cross-entropies see the raw logits. That is what the
logit-standardisation authors' MLKD does (sunshangquan/logit-standardization-KD
at commit f6e5aa5172bad618e801163c3385322eea673754,
``mdistiller/distillers/MLKD.py``): its ``kd_loss`` takes ``logit_stand`` and
z-scores both inputs, every weak- and strong-view KL term passes it, while
``cc_loss`` and ``bc_loss`` have no such argument and receive the raw logits;
the masks come from the softmax of the raw weak-view teacher logits. CTKD's
learned temperature replaces T (the fixed 2, 3, 5, 6 stay) in every term.
No state across steps, no random numbers, no host sync: a CUDA graph.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Annotated, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Features
from .base import Batch, Capabilities, Choice, Context, KDOnTop, Range, kd_loss, register_method
from .logits import LogitMethod

#: the official code's fixed temperatures besides the configured one
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
#: the two instance terms the official code adds unmasked
UNMASKED_TEMPERATURES = (2.0, 6.0)


def batch_correlation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature) -> Tensor:
    p_s, p_t = F.softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1)
    return (p_t @ p_t.t() - p_s @ p_s.t()).pow(2).sum() / student_logits.shape[0]


def class_correlation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature) -> Tensor:
    p_s, p_t = F.softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1)
    return (p_t.t() @ p_t - p_s.t() @ p_s).pow(2).sum() / student_logits.shape[1]


def median(values: Tensor) -> Tensor:
    """``np.percentile(values, 50)`` (linear interpolation) from a sort: no host sync."""
    ordered = values.sort().values
    position = 0.5 * (values.numel() - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fraction_at_or_below_median(values: Tensor) -> Tensor:
    return (values <= median(values)).float().mean()


@register_method("mlkd")
class MLKD(LogitMethod):
    label = "MLKD"
    declared_capabilities = replace(LogitMethod.declared_capabilities, kd_on_top=True, relative_cost=2.2)

    @classmethod
    def capabilities(cls, params: dict) -> Capabilities:
        """The second, strongly augmented view with ``strong_view`` (its default)."""
        return replace(super().capabilities(params), strong_view=bool(params.get("strong_view", True)))

    def __init__(
        self,
        context: Context,
        kd_weight: Annotated[float, Range(ge=0)] = 1.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        strong_view: Annotated[bool, Choice(True, False)] = True,
        **modifiers,
    ):
        super().__init__(context, temperature=temperature, **modifiers)
        self.kd = KDOnTop(alpha, temperature)
        self.caps = type(self).capabilities({"strong_view": strong_view})
        self.kd_weight = float(kd_weight)
        self.strong_view = bool(strong_view)

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        with torch.no_grad():
            p_teacher = F.softmax(teacher.logits, dim=1)
            sample_fraction = fraction_at_or_below_median(p_teacher.max(dim=1).values)
            class_fraction = fraction_at_or_below_median(p_teacher.sum(dim=0))
        # the KL terms read the (optionally) standardised logits, the correlation terms the raw ones
        s, t = self.prepare(student.logits, teacher.logits)
        raw_s, raw_t = student.logits, teacher.logits
        temperatures = (self.kd_temperature(), *EXTRA_TEMPERATURES)
        instance = sample_fraction * sum(kd_loss(s, t, T) for T in temperatures)
        instance = instance + sum(kd_loss(s, t, T) for T in UNMASKED_TEMPERATURES)
        batch_level = sample_fraction * sum(batch_correlation_loss(raw_s, raw_t, T) for T in temperatures)
        class_level = class_fraction * sum(class_correlation_loss(raw_s, raw_t, T) for T in temperatures)
        terms = {
            "mlkd_instance": self.kd_weight * instance,
            "mlkd_batch": self.kd_weight * batch_level,
            "mlkd_class": self.kd_weight * class_level,
        }
        if self.strong_view:
            # the engine adds the second view and both networks' features of it (Capabilities.strong_view)
            assert batch.strong is not None and batch.strong.student is not None and batch.strong.teacher is not None
            strong_s, strong_t = self.prepare(batch.strong.student.logits, batch.strong.teacher.logits)
            terms["mlkd_ce_strong"] = self.gamma * F.cross_entropy(batch.strong.student.logits, batch.labels)
            terms["mlkd_instance_strong"] = cast(  # a tensor: a sum over three temperatures
                Tensor, self.kd_weight * sum(kd_loss(strong_s, strong_t, T) for T in temperatures[:3])
            )
        return terms
