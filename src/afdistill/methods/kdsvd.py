"""KD-SVD (Lee, Kim & Song, ECCV 2018, "Self-supervised knowledge distillation using singular value decomposition").

Each stage output (H x W x C per image, read as an HW x C matrix) is
compressed to its dominant right singular vectors (C values each: which
channel combination carries the most energy), and the student learns the
relations of those vectors between consecutive stages, measured by a radial
basis function, from the teacher.

No PyTorch code by the authors exists, and the paper's text is not among the
project's papers; we follow the formulas of their TF code,
sseung0703/KD_methods_with_TF@9fb5414 ``nets/Shared.py: KD_SVD`` with
``nets/SVP.py: SVD, Align_rsv, gradient_svd`` (``dist_type = 'SVD'``), on the
stage outputs (its ``feat`` collection: each residual group's last block after
its ReLU, our ``stages``), with its fixed K = 1 exposed as ``k`` (the name
RepDistiller's port gives it):

* teacher: the top k right singular vectors V_T (C x k, unit columns) and
  the top k singular values, L2-normalised over the k (so for the code's
  k = 1 the weight is 1);
* student: its top k + 3 right singular vectors; for each teacher vector,
  the candidate with the largest |cosine| to it is kept, multiplied by the
  cosine's sign (``Align_rsv``: a mask of signs at the maxima, applied by a
  matrix product, so exact ties would add up, as there);
* both sets of vectors are scaled by the teacher's normalised singular values;
* for each pair of consecutive stages (l - 1, l) and each column q, every
  entry c of stage l's vector is related to every entry c' of stage l-1's
  by R[c, c'] = exp(-(v_l[c] - v_{l-1}[c'])^2 / 8), and the loss is
  sum over the batch, the stage pairs and all (c, c', q) of
  (R_S - R_T)^2, non-finite terms set to 0 (no batch mean);
* the student's gradient through the SVD is the code's own ``Svd_`` formula,
  not PyTorch's analytic one: twice the analytic gradient where the map has
  at least as many positions as channels (HW >= C, ``right_grad``), and the
  code's transposed-problem formula (``left_grad``) where it has fewer, which
  matches neither the analytic gradient nor twice it
  (:class:`_RightSingularVectors`);
* the transfer gradient of each student parameter is clipped to the norm of
  its classification gradient times sigmoid(epoch) (``op_util.py:
  Optimizer_w_Distillation`` for ``KD-`` methods, ``tf.clip_by_norm``; its
  epoch counts from 0, ours from 1, hence sigmoid(epoch - 1)), with
  ``clip_gradients`` (default on); no initialisation stage.

    L = gamma CE + alpha KD + beta * L_KD-SVD     (code: beta = 1, alpha = 0)

Where we had to choose: the sign of the teacher's singular vectors, which the
code leaves to LAPACK (and which changes the RBF targets), is fixed so that each
vector's largest-magnitude entry is positive; singular vectors are computed in
float64. Where the code's gradient would divide by a zero singular value we set
the non-finite entries to 0.

The repository's other variant, KD-EID (``dist_type = 'EID'``, ``SVP.SVD_eid``),
computes the same vectors through an eigendecomposition of X^T X or X X^T, with
the same gradient formula; with the teacher's sign fixed as here it would give
the same loss and gradients up to rounding, so it is not a separate option.
(The MHGD poster's "KD-SVDF" column is defined neither in the poster nor in
this code.)

Other versions, not followed: the ECCV release (sseung0703/SSKD_SVD@59184b4
``nets/Distillation.py``) picks among the student's top k + 1 vectors, flips
the teacher's to the student's sign, and uses half the sum of squares times
sqrt(k), with a gradient (``Svd_grad``) that differs again where HW < C;
RepDistiller's port (HobbitLong/RepDistiller@b84f547c
``distiller_zoo/KDSVD.py``) divides by the batch size, back-propagates
PyTorch's analytic SVD gradient and does not clip.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Features
from .base import Batch, Capabilities, Choice, Context, KDOnTop, Method, Range, clip_transfer_gradients, register_method


def _finite(x: Tensor) -> Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def svd_gradient(u: Tensor, s: Tensor, v: Tensor, grad_v: Tensor) -> Tensor:
    """The TF code's ``Svd_`` gradient (``SVP.gradient_svd``) for X = U diag(s) V^T, B x HW x C, given dL/dV.

    Only dL/dV enters, as there (dL/ds and dL/dU are dropped; the loss uses neither).
    """
    rank = s.shape[-1]
    eye = torch.eye(rank, dtype=s.dtype, device=s.device)
    squares = s.square()
    k = (1 - eye) / (squares.unsqueeze(-1) - squares.unsqueeze(-2) + eye)  # [i, j] = 1/(s_i^2 - s_j^2), 0 on i = j
    k_t = _finite(k.transpose(-1, -2))  # equal singular values: 0, as the code's removenan
    S = torch.diag_embed(s)
    positions, channels = u.shape[-2], v.shape[-2]
    if channels > positions:  # the code's left_grad: the problem transposed, V in U's role
        d = grad_v / (s + 1e-8).unsqueeze(-2)
        product = k_t * (d.transpose(-1, -2) @ (v @ S))
        inner = torch.diag_embed(torch.diagonal(v.transpose(-1, -2) @ d, dim1=-2, dim2=-1)) + 2 * S @ (
            product + product.transpose(-1, -2)
        )
        return u @ (d - v @ inner).transpose(-1, -2)
    product = k_t * (v.transpose(-1, -2) @ grad_v)  # the code's right_grad
    return 2 * u @ S @ (product + product.transpose(-1, -2)) @ v.transpose(-1, -2)


class _RightSingularVectors(torch.autograd.Function):
    """The top n right singular vectors (B x C x n) of a batch of HW x C matrices, in float64, with the TF
    code's gradient (:func:`svd_gradient`)."""

    @staticmethod
    def forward(ctx, matrices: Tensor, n: int) -> Tensor:
        u, s, vh = torch.linalg.svd(matrices.double(), full_matrices=False)
        v = vh.transpose(-1, -2)
        ctx.save_for_backward(u, s, v)
        ctx.n = n
        return v[..., :n].to(matrices.dtype)

    @staticmethod
    def backward(ctx, grad_top: Tensor):
        u, s, v = ctx.saved_tensors
        grad_v = torch.zeros_like(v)
        grad_v[..., : ctx.n] = grad_top.double()
        return _finite(svd_gradient(u, s, v, grad_v)).to(grad_top.dtype), None


def as_matrices(features: Tensor) -> Tensor:
    """B x C x H x W maps as B x HW x C matrices (the TF code's NHWC reshape)."""
    return features.flatten(2).transpose(1, 2)


def student_vectors(features: Tensor, n: int) -> Tensor:
    """The student's top n right singular vectors, unit columns (B x C x n), differentiable."""
    return F.normalize(_RightSingularVectors.apply(as_matrices(features), n), dim=1)


@torch.no_grad()
def teacher_vectors(features: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(B x C x k unit vectors, each with its largest-magnitude entry positive; B x k normalised singular values)."""
    _, s, vh = torch.linalg.svd(as_matrices(features).double(), full_matrices=False)
    v = F.normalize(vh.transpose(-1, -2)[..., :k], dim=1)
    largest = v.gather(1, v.abs().argmax(1, keepdim=True))  # B x 1 x k
    v = v * torch.where(largest >= 0, 1.0, -1.0)
    return v.to(features.dtype), F.normalize(s[:, :k], dim=1).to(features.dtype)


def align(candidates: Tensor, targets: Tensor) -> Tensor:
    """``Align_rsv``: per target column, the candidate of largest |cosine|, times the cosine's sign (B x C x k)."""
    cosine = candidates.transpose(1, 2) @ targets  # B x (k + 3) x k
    magnitude = cosine.abs()
    mask = torch.where(magnitude == magnitude.amax(1, keepdim=True), torch.sign(cosine), torch.zeros_like(cosine))
    return candidates @ mask.detach()


def rbf(later: Tensor, earlier: Tensor) -> Tensor:
    """exp(-(v_l[c] - v_{l-1}[c'])^2 / 8), B x C_l x C_{l-1} x k."""
    return torch.exp(-(later.unsqueeze(2) - earlier.unsqueeze(1)).square() / 8)


def _arch(network) -> str:
    return getattr(network, "arch", type(network).__name__)


def _check_stages(context: Context, k: int, where: str) -> None:
    assert context.student_sample is not None and context.teacher_sample is not None  # it needs both networks
    teacher, student = context.teacher_sample.stages, context.student_sample.stages
    names = f"{_arch(context.teacher)} -> {_arch(context.student)}"
    t_widths, s_widths = [f.shape[1] for f in teacher], [f.shape[1] for f in student]
    if t_widths != s_widths:
        raise ValueError(
            f"{where}: {names}: KD-SVD compares singular vectors channel by channel, so teacher and "
            f"student stages need the same widths; got teacher {t_widths}, student {s_widths}"
        )
    if len(teacher) < 2:
        raise ValueError(f"{where}: {names}: KD-SVD relates consecutive stages and needs at least two")
    # the largest k each stage allows: the student needs k + 3 singular vectors, the teacher k
    limits = [
        (min(f.shape[1], f.shape[2] * f.shape[3]) - extra, who, index, f)
        for who, stages, extra in (("student", student, 3), ("teacher", teacher, 0))
        for index, f in enumerate(stages, start=1)
    ]
    largest, who, index, f = min(limits, key=lambda limit: limit[0])
    if k <= largest:
        return
    needed = "k + 3" if who == "student" else "k"
    why = (
        f"the {who}'s stage {index} ({f.shape[1]} channels, {f.shape[2]} x {f.shape[3]}) has "
        f"{min(f.shape[1], f.shape[2] * f.shape[3])} singular vectors, and needs {needed}"
    )
    if largest < 1:
        raise ValueError(f"{where}: {names}: no k fits: {why}")
    raise ValueError(f"{where}.k: {k} is not allowed for {names}: {why}; expected k from 1 to {largest}")


@register_method("kdsvd")
class KDSVD(Method):
    label = "KD-SVD"
    declared_capabilities = Capabilities(kd_on_top=True, sets_gradients=True, relative_cost=4.7)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 1.0,
        k: Annotated[int, Range(ge=1)] = 1,
        clip_gradients: Annotated[bool, Choice(True, False)] = True,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        _check_stages(context, k, f"methods.{self.method_name}")
        self.beta, self.k, self.clip_gradients = float(beta), k, bool(clip_gradients)
        assert context.student is not None  # it trains a student
        self._student_parameters = [p for p in context.student.parameters() if p.requires_grad]

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        _check_stages(context, params["k"], where)

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        loss: float | Tensor
        loss, previous = 0.0, None
        for f_s, f_t in zip(student.stages, teacher.stages):
            v_t, sigma = teacher_vectors(f_t, self.k)
            v_s = align(student_vectors(f_s, self.k + 3), v_t)
            weight = sigma.unsqueeze(1)  # B x 1 x k
            v_t, v_s = v_t * weight, v_s * weight
            if previous is not None:
                difference = (rbf(v_s, previous[0]) - rbf(v_t, previous[1])).square()
                loss = loss + torch.where(torch.isfinite(difference), difference, 0.0).sum()
            previous = (v_s, v_t)
        return {"kdsvd": cast(Tensor, self.beta * loss)}  # a tensor: at least two stages (_check_stages)

    def backward(self, terms: dict[str, Tensor]) -> None:
        """Clip each parameter's transfer gradient to its task-gradient norm x sigmoid(epoch - 1) (the code's)."""
        if not self.clip_gradients:
            return super().backward(terms)
        clip_transfer_gradients(terms, "kdsvd", self._student_parameters, self.epoch)
