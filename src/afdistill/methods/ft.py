"""Factor transfer (FT; Kim, Park & Kwak, NeurIPS 2018, "Paraphrasing Complex Network: Network Compression via
Factor Transfer"), as HobbitLong/RepDistiller computes it (b84f547c5db6a35318d4671d7d5c4de74c822403:
``distiller_zoo/FT.py``, ``models/util.py`` Paraphraser/Translator, ``helper/pretrain.py``,
``train_student.py``, ``helper/loops.py``).

Two stages, on the teacher's last stage output ``T`` (RepDistiller's ``feat[-2]``: our ``stages[-1]``):

1. ``ft_paraphraser`` (this project's heads stage, like MHGD's ``mhan``): a convolutional auto-encoder, the
   *paraphraser*, learns to rebuild ``T`` from a factor of ``int(C_T * k)`` channels (k, the paraphrase rate,
   0.5), on the frozen teacher alone:

       L_rec = mean (P(T) - T)^2                    (``nn.MSELoss``; the paper's eq. 1 writes ||x - P(x)||^2)

   Encoder: three 3x3 convolutions C_T -> C_T -> kC_T -> kC_T; decoder: three 3x3 transposed convolutions
   kC_T -> kC_T -> C_T -> C_T; a LeakyReLU(0.1) after every layer, no BatchNorm (RepDistiller builds the
   paraphraser with ``use_bn=False``), stride 1 throughout.

2. ``ft``: the paraphraser is frozen (eval mode, no gradient); a *translator* (three 3x3 convolutions
   C_S -> C_S -> kC_T -> kC_T, each followed by BatchNorm and LeakyReLU(0.1): ``use_bn=True``), trained with
   the student, maps the student's last stage output to a factor, which is pulled to the teacher's:

       L = gamma CE + alpha KD + beta * mean | phi(F_S) - phi(F_T) |
       phi(F) = normalise_2( mean_c F_c^2 )        (one H*W vector per image)

   with beta = 200 and alpha = 0 (RepDistiller's README and ``scripts/run_cifar_distill.sh``:
   ``--distill factor -a 0 -b 200``). When the factors' spatial sizes differ, the larger is average-pooled to
   the smaller (``adaptive_avg_pool2d``), as RepDistiller's ``FactorTransfer.factor_loss`` does.

Where the paper and RepDistiller disagree, this follows RepDistiller:

* the paper's L_FT (eq. 4) is || F_T/||F_T||_2 - F_S/||F_S||_2 ||_p with p = 1 over the whole vectorised
  factor (C x H x W values); RepDistiller first reduces each factor to the channel mean of its squares (an
  attention map of H x W values: ``FactorTransfer(p1=2, p2=1)``) and takes the *mean* absolute difference
  over the batch and positions, not the sum;
* the paper's eq. 1 is a squared L2 norm; RepDistiller's ``nn.MSELoss`` averages it over all elements.

RepDistiller pretrains the paraphraser for ``--init_epochs`` 30 epochs with the student's SGD settings, at a
fixed lr 0.01 for its CIFAR ResNet/WRN students and at the base lr otherwise (``helper/pretrain.py``): the
heads stage's schedule, ``Heads.train`` in FT's capabilities (30 epochs at 0.01, no decay), which a grid's
``heads.train`` or the entry's ``heads_train:`` may change.
sseung0703/KD_methods_with_TF (``nets/Response.py`` ``Factor_Transfer``) builds another paraphraser (stride
``1/rate`` in its middle layer, rates compounding per layer, an L2 normalisation over channels); it is not
followed here.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Context, Heads, KDOnTop, Method, Range, register_method

#: RepDistiller's paraphrase rate (``Paraphraser(t_shape, k=0.5)``, ``Translator(s_shape, t_shape, k=0.5)``)
DEFAULT_RATE = 0.5


def _factor_channels(channels: int, k: float) -> int:
    return int(channels * k)  # RepDistiller: int(t_shape[1] * k)


def _block(layer: nn.Module, channels: int, batch_norm: bool) -> list[nn.Module]:
    return [layer, nn.BatchNorm2d(channels) if batch_norm else nn.Identity(), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """The teacher's auto-encoder: ``encode`` gives the factor (k x C channels), ``forward`` the reconstruction."""

    def __init__(self, channels: int, k: float = DEFAULT_RATE, batch_norm: bool = False):
        super().__init__()
        factor = _factor_channels(channels, k)
        self.encoder = nn.Sequential(
            *_block(nn.Conv2d(channels, channels, 3, 1, 1), channels, batch_norm),
            *_block(nn.Conv2d(channels, factor, 3, 1, 1), factor, batch_norm),
            *_block(nn.Conv2d(factor, factor, 3, 1, 1), factor, batch_norm),
        )
        self.decoder = nn.Sequential(
            *_block(nn.ConvTranspose2d(factor, factor, 3, 1, 1), factor, batch_norm),
            *_block(nn.ConvTranspose2d(factor, channels, 3, 1, 1), channels, batch_norm),
            *_block(nn.ConvTranspose2d(channels, channels, 3, 1, 1), channels, batch_norm),
        )

    def encode(self, features: Tensor) -> Tensor:
        return self.encoder(features)

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder(self.encoder(features))


class Translator(nn.Module):
    """The student's encoder: its last stage output (C_S channels) to a factor of the teacher's factor width."""

    def __init__(self, student_channels: int, teacher_channels: int, k: float = DEFAULT_RATE, batch_norm: bool = True):
        super().__init__()
        factor = _factor_channels(teacher_channels, k)
        self.encoder = nn.Sequential(
            *_block(nn.Conv2d(student_channels, student_channels, 3, 1, 1), student_channels, batch_norm),
            *_block(nn.Conv2d(student_channels, factor, 3, 1, 1), factor, batch_norm),
            *_block(nn.Conv2d(factor, factor, 3, 1, 1), factor, batch_norm),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.encoder(features)


def factor_map(factor: Tensor) -> Tensor:
    """RepDistiller's ``FactorTransfer.factor`` (p1 = 2): the L2-normalised channel mean of the squared factor."""
    return F.normalize(factor.pow(2).mean(1).flatten(1))


def factor_loss(student_factor: Tensor, teacher_factor: Tensor) -> Tensor:
    """Mean absolute difference of the factor maps (p2 = 1), the larger map average-pooled to the smaller's size."""
    s_size, t_size = student_factor.shape[2], teacher_factor.shape[2]
    if s_size > t_size:
        student_factor = F.adaptive_avg_pool2d(student_factor, (t_size, t_size))
    elif s_size < t_size:
        teacher_factor = F.adaptive_avg_pool2d(teacher_factor, (s_size, s_size))
    # The paper's eq. 4 takes the 1-norm of the whole normalised factors' difference; RepDistiller (followed)
    # compares channel-mean maps and averages the differences.
    return (factor_map(student_factor) - factor_map(teacher_factor)).abs().mean()


def _teacher_channels(context: Context) -> int:
    assert context.teacher_sample is not None  # FT reads the teacher's last stage
    stages = context.teacher_sample.stages
    if not stages:
        raise ValueError("FT paraphrases the teacher's last stage output, and the teacher has no stages")
    return stages[-1].shape[1]


def _check_rate(k: float, context: Context, where: str) -> None:
    channels = _teacher_channels(context)
    if _factor_channels(channels, k) < 1:
        name = getattr(context.teacher, "arch", type(context.teacher).__name__)
        raise ValueError(
            f"{where}.k: {k!r} is not allowed for {name}: the factor keeps int({channels} x k) = "
            f"{_factor_channels(channels, k)} of the {channels} channels of the teacher's last stage; "
            f"expected k >= {1 / channels:g}"
        )


@register_method("ft_paraphraser")
class ParaphraserPretraining(Method):
    """FT's first stage: the paraphraser learns to rebuild the frozen teacher's last stage output (no student)."""

    label = "FT paraphraser"

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        _check_rate(params["k"], context, where)

    def __init__(self, context: Context, k: Annotated[float, Range(gt=0)] = DEFAULT_RATE):
        super().__init__(context)
        _check_rate(k, context, "methods.ft_paraphraser")
        self.k = float(k)
        self.paraphraser = Paraphraser(_teacher_channels(context), self.k)

    def forward(self, student: Features | None, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it trains on the teacher's features (the student is None here)
        # A copy: the engine computes the teacher in inference mode, and autograd must not save such tensors.
        target = teacher.stages[-1].detach().clone()
        return {"ft_paraphraser": F.mse_loss(self.paraphraser(target), target)}


@register_method("ft")
class FactorTransfer(Method):
    label = "FT"
    declared_capabilities = Capabilities(
        cuda_graphs=True,
        kd_on_top=True,
        fuses=True,
        pre_stage="heads",
        heads=Heads("ft_paraphraser", shared_params=("k",), train={"epochs": 30, "lr": 0.01, "lr_decay_epochs": []}),
    )  # RepDistiller helper/pretrain.py:20-36

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        _check_rate(params["k"], context, where)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 200.0,
        k: Annotated[float, Range(gt=0)] = DEFAULT_RATE,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        _check_rate(k, context, "methods.ft")
        self.beta, self.k = float(beta), float(k)
        teacher_channels = _teacher_channels(context)
        self.paraphraser = Paraphraser(teacher_channels, self.k)
        if context.artifact is None:
            raise ValueError("ft needs the paraphraser pretrained on the teacher (the heads stage, ft_paraphraser)")
        state = {
            key.removeprefix("paraphraser."): value
            for key, value in context.artifact.items()
            if key.startswith("paraphraser.")
        }
        try:
            self.paraphraser.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(
                f"ft: the pretrained paraphraser does not fit this teacher and k = {self.k:g} (was it "
                f"pretrained on another teacher, or with another k?): {error}"
            ) from None
        self.paraphraser.requires_grad_(False)
        assert context.student_sample is not None  # FT trains a student
        self.translator = Translator(context.student_sample.stages[-1].shape[1], teacher_channels, self.k)

    def train(self, mode: bool = True):
        super().train(mode)
        self.paraphraser.eval()  # frozen (RepDistiller: module_list[2].eval() in every epoch)
        return self

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        with torch.no_grad():
            teacher_factor = self.paraphraser.encode(teacher.stages[-1])
        return {"ft": self.beta * factor_loss(self.translator(student.stages[-1]), teacher_factor)}
