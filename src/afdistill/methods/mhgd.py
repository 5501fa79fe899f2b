"""Multi-head graph distillation (MHGD; Lee & Song, BMVC 2019), as sseung0703/KD_methods_with_TF computes it.

Each stage output (C x H x W per image) is summarised by its dominant right
singular vector V (C values: which channel combination carries the most
energy). Between consecutive stages, a multi-head attention network (MHAN)
relates the images of a batch:

    G_a = BN(W_s V^B) . BN(W_r V^F)^T     one B x B graph per head a

It is first trained on the frozen teacher alone (``mhan``, its own pipeline
stage: 20 epochs at a fixed learning rate, 8 heads), with an estimator that
must rebuild the back-end vectors V^B from the front-end ones V^F through the
graphs (loss: 1 - cosine). The student then learns to make its graphs match
the teacher's (``mhgd``):

    L_transfer = sum_pairs sum_{a,i,j} KL(softmax(tanh G^S) || softmax(tanh G^T))

with the student's top-4 singular vectors, the one best aligned with the
teacher's (with its sign) standing in for V^S. The transfer gradient of each
student parameter is clipped to the norm of its classification gradient times
sigmoid(epochs since distillation began), the poster's schedule.

Layer settings as the TF1 code ran them (checked against ``nets/Relation.py``
and the scopes around it): the MHGD graph is built inside
``nets_factory.get_network_fn``'s ``ResNet_arg_scope``, which overrides the
``tf.contrib.layers`` defaults for every layer that does not set them itself:
``fully_connected`` gets no bias (``biases_initializer=None``) and FAN_OUT
variance-scaling weights, ``batch_norm`` learns scale and offset with epsilon
1e-5 and decay 0.9 (PyTorch momentum 0.1). Only the estimator's output layer
(``fc1``) sets a zero-initialised bias. Hence the bias-free sender, receiver and
embedding layers and ``nn.BatchNorm1d``'s defaults here. (TF's initializer draws a
truncated normal with a 1.3-corrected standard deviation; we draw a plain normal.)
The current file (5f066d3, 2019-08-09) is followed over the earlier versions:
from the first upload (40a7561, 2019-07-16) until 5f066d3, both graphs had the
teacher graph's row mean subtracted before tanh and the student used its top
singular vector only; in 5654178 and b8f56a0 (2019-07-16) ``drop_head`` also
returned ``2G - stop_gradient(G)`` (same value, doubled gradient into the MHAN
during pretraining), removed in d28ddc2 (2019-07-24). The repository cannot
tell which version produced the poster's numbers.

Where we had to choose: the sign of the teacher's singular vector, which the
reference leaves to LAPACK, is fixed so that its largest entry is positive;
the SVD backward keeps the reference's (KD-SVD) formula, twice the analytic
gradient, with the same zeroing of undefined (degenerate) terms.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Context, Heads, KDOnTop, Method, Range, clip_transfer_gradients, register_method


class _TopRightSingularVectors(torch.autograd.Function):
    """Top-k right singular vectors of a batch of HW x C matrices, via the eigenvectors of the C x C Gram matrix."""

    @staticmethod
    def forward(ctx, matrices: Tensor, k: int) -> Tensor:
        gram = matrices.transpose(1, 2).double() @ matrices.double()
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
        eigenvalues, eigenvectors = eigenvalues.flip(-1), eigenvectors.flip(-1)
        ctx.save_for_backward(matrices, eigenvalues, eigenvectors)
        ctx.k = k
        return eigenvectors[..., :k].to(matrices.dtype)

    @staticmethod
    def backward(ctx, grad_top: Tensor):
        matrices, eigenvalues, eigenvectors = ctx.saved_tensors
        k = ctx.k
        grad_v = torch.zeros_like(eigenvectors)
        grad_v[..., :k] = grad_top.double()
        # Eigenvector perturbation of C = A^T A: dv_i = sum_{j != i} v_j v_j^T dC v_i / (l_i - l_j).
        gaps = eigenvalues.unsqueeze(-2) - eigenvalues.unsqueeze(-1)  # [j, i] = l_i - l_j
        inverse = torch.where(gaps.abs() > 0, 1.0 / gaps, torch.zeros_like(gaps))
        inverse = torch.nan_to_num(inverse, nan=0.0, posinf=0.0, neginf=0.0)
        weights = inverse * (eigenvectors.transpose(1, 2) @ grad_v)
        grad_gram = eigenvectors @ weights @ eigenvectors.transpose(1, 2)
        # dL/dA = A (C_bar + C_bar^T); the reference (KD-SVD) formula is twice this.
        grad = 2.0 * (matrices.double() @ (grad_gram + grad_gram.transpose(1, 2)))
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0).to(matrices.dtype), None


def singular_vectors(features: Tensor, k: int) -> Tensor:
    """B x C x k, unit columns, for B x C x H x W feature maps."""
    matrices = features.flatten(2).transpose(1, 2)  # B x HW x C
    return F.normalize(_TopRightSingularVectors.apply(matrices, k), dim=1)


def teacher_vector(features: Tensor) -> Tensor:
    with torch.no_grad():
        v = singular_vectors(features, 1).squeeze(2)
        largest = v.gather(1, v.abs().argmax(1, keepdim=True))
        return v * torch.where(largest >= 0, 1.0, -1.0)


def aligned_student_vector(features: Tensor, teacher: Tensor, k: int = 4) -> Tensor:
    """The student's singular vector closest to the teacher's, with the sign that agrees (reference Align_rsv)."""
    candidates = singular_vectors(features, k)  # B x C x k
    cosine = torch.einsum("bck,bc->bk", candidates, teacher)
    best = cosine.abs().argmax(1, keepdim=True)
    sign = torch.sign(cosine.gather(1, best)).detach()
    return candidates.gather(2, best.unsqueeze(1).expand(-1, candidates.shape[1], 1)).squeeze(2) * sign


def _linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.kaiming_normal_(layer.weight, mode="fan_out")  # the reference's variance scaling (FAN_OUT)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class AttentionHead(nn.Module):
    """G[a, i, j]: how much image i's back-end vector attends to image j's front-end vector, per head a."""

    def __init__(self, back_dim: int, front_dim: int, hidden: int, heads: int):
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.sender = nn.Sequential(_linear(back_dim, hidden * heads, bias=False), nn.BatchNorm1d(hidden * heads))
        self.receiver = nn.Sequential(_linear(front_dim, hidden * heads, bias=False), nn.BatchNorm1d(hidden * heads))

    def forward(self, back: Tensor, front: Tensor) -> Tensor:
        batch = back.shape[0]
        sender = self.sender(back).view(batch, self.hidden, self.heads).permute(2, 0, 1)  # heads x B x hidden
        receiver = self.receiver(front).view(batch, self.hidden, self.heads).permute(2, 1, 0)  # heads x hidden x B
        return sender @ receiver


class Estimator(nn.Module):
    """Rebuilds the back-end vectors from the front-end ones through the (head-dropped) graphs."""

    def __init__(self, front_dim: int, back_dim: int, heads: int):
        super().__init__()
        middle = (front_dim + back_dim) // 2
        self.heads = heads
        self.embed = nn.Sequential(_linear(front_dim, middle, bias=False), nn.BatchNorm1d(middle), nn.ReLU())
        self.out = _linear(middle * heads, back_dim, bias=True)

    def forward(self, front: Tensor, graphs: Tensor, generator: torch.Generator | None) -> Tensor:
        heads, batch, _ = graphs.shape
        graphs = F.softmax(graphs, dim=2)
        noise = torch.randn(heads, batch, 1, generator=generator, device=graphs.device)
        graphs = graphs * (noise - noise.mean(0, keepdim=True) > 0).float()  # drop about half the heads per image
        mixed = graphs @ self.embed(front)  # heads x B x middle
        return F.normalize(self.out(mixed.transpose(0, 1).reshape(batch, -1)), dim=1)


class MHAN(nn.Module):
    """One attention head and one estimator per pair of consecutive stages."""

    def __init__(self, dims: list[int], heads: int):
        super().__init__()
        self.attention = nn.ModuleList(
            AttentionHead(dims[i], dims[i - 1], (dims[i] + dims[i - 1]) // 2, heads) for i in range(1, len(dims))
        )
        self.estimators = nn.ModuleList(Estimator(dims[i - 1], dims[i], heads) for i in range(1, len(dims)))


def _check_stages(context: Context, teacher_only: bool) -> list[int]:
    assert context.teacher_sample is not None  # MHGD relates the teacher's stages
    teacher = [f.shape[1] for f in context.teacher_sample.stages]
    if len(teacher) < 2:
        raise ValueError("MHGD needs at least two stages to relate")
    if not teacher_only:
        assert context.student_sample is not None  # MHGD (not its pretraining) trains a student
        student = [f.shape[1] for f in context.student_sample.stages]
        if student != teacher:
            raise ValueError(
                f"MHGD compares singular vectors channel by channel, so teacher and student stages need "
                f"the same widths; got teacher {teacher}, student {student}"
            )
    return teacher


def _check_stages_fit(context: Context, where: str, teacher_only: bool) -> None:
    """``_check_stages`` at grid-check time, its message naming the run and the architectures."""
    try:
        _check_stages(context, teacher_only)
    except ValueError as error:
        names = [getattr(n, "arch", type(n).__name__) for n in (context.teacher, context.student) if n is not None]
        raise ValueError(f"{where}: {' -> '.join(names)}: {error}") from None


@register_method("mhan")
class MHANPretraining(Method):
    """MHGD's first stage: the attention network learns the teacher's embedding procedure."""

    label = "MHAN"  # trains only its own network, on the frozen teacher's features (no student)

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        _check_stages_fit(context, where, teacher_only=True)

    def __init__(self, context: Context, num_heads: Annotated[int, Range(ge=1)] = 8):
        super().__init__(context)
        self.network = MHAN(_check_stages(context, teacher_only=True), num_heads)
        self.seed = context.seed
        self.generator: torch.Generator | None = None

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        # (the cast: a ModuleList yields its Estimators as Module)
        self.generator = torch.Generator(device=cast(Estimator, self.network.estimators[0]).out.weight.device)
        self.generator.manual_seed(self.seed * 104_729 + epoch)

    def forward(self, student: Features | None, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it trains on the teacher's features (the student is None here)
        vectors = [teacher_vector(f) for f in teacher.stages]
        loss: float | Tensor = 0.0
        for i in range(1, len(vectors)):
            graphs = self.network.attention[i - 1](vectors[i], vectors[i - 1])
            estimate = self.network.estimators[i - 1](vectors[i - 1], graphs, self.generator)
            loss = loss + (1 - (estimate * vectors[i]).sum(1)).mean()
        return {"mhan": cast(Tensor, loss)}  # a tensor: at least two stages (_check_stages)


@register_method("mhgd")
class MHGD(Method):
    label = "MHGD"
    # MHGD supplementary: "the learning rate was fixed at 0.1, and only 20 epochs were learned" (the rate is the
    # grid's, 0.1 in its grids)
    declared_capabilities = Capabilities(
        kd_on_top=True,
        sets_gradients=True,
        pre_stage="heads",
        heads=Heads("mhan", shared_params=("num_heads",), train={"epochs": 20, "lr_decay_epochs": []}),
        relative_cost=4.7,
    )

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        _check_stages_fit(context, where, teacher_only=False)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 1.0,
        num_heads: Annotated[int, Range(ge=1)] = 8,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.beta = float(beta)
        self.network = MHAN(_check_stages(context, teacher_only=False), num_heads)
        if context.artifact is None:
            raise ValueError("mhgd needs the attention network pretrained on the teacher (the heads stage)")
        state = {k.removeprefix("network."): v for k, v in context.artifact.items() if k.startswith("network.")}
        self.network.load_state_dict(state)
        self.network.requires_grad_(False)
        assert context.student is not None  # it trains a student
        self._student_parameters = [p for p in context.student.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        self.network.eval()  # frozen, with the running statistics of its pretraining
        return self

    def graphs(self, vectors: list[Tensor]) -> list[Tensor]:
        return [torch.tanh(self.network.attention[i - 1](vectors[i], vectors[i - 1])) for i in range(1, len(vectors))]

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        t_vectors = [teacher_vector(f) for f in teacher.stages]
        s_vectors = [aligned_student_vector(f, v) for f, v in zip(student.stages, t_vectors)]
        loss: float | Tensor = 0.0
        for g_s, g_t in zip(self.graphs(s_vectors), self.graphs(t_vectors)):
            log_s, log_t = F.log_softmax(g_s, dim=2), F.log_softmax(g_t, dim=2)
            loss = loss + (log_s.exp() * (log_s - log_t)).sum()
        return {"mhgd": cast(Tensor, self.beta * loss)}  # a tensor: at least two stages (_check_stages)

    def backward(self, terms: dict[str, Tensor]) -> None:
        """Clip each parameter's transfer gradient to its task-gradient norm x sigmoid(epochs into distillation)."""
        clip_transfer_gradients(terms, "mhgd", self._student_parameters, self.epoch)
