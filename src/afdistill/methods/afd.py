"""Attention-based Feature Distillation (Ji, Heo & Park, AAAI 2021), as the official code computes it.

Every teacher candidate t asks a query of every student candidate s; the
softmax over s of their compatibility decides how strongly feature t is
distilled into feature s:

    q_t = BN(W^Q_t GAP(h^T_t))                          (eq. 1, f_Q = identity)
    k_s = ReLU(BN(W^K_s GAP(h^S_s)))                    (eq. 1, f_K = ReLU)
    alpha_t = softmax_s((q_t . k_{t,s} + p^T_t . p^S_s) / sqrt(d))      (eq. 2)
    L_AFD = sum_t sum_s alpha_{t,s} mean_hw (v^T_t - v^S_s)^2          (eq. 3)
    L = CE + alpha KD + beta L_AFD                                     (eq. 4)

Where the paper and clovaai/attention-feature-distillation differ, this
follows the code:

- eq. 2 writes the bilinear weight per student key, W^{Q-K}_s; the code uses
  one Linear+BN that maps each key to one key per teacher candidate,
  k_{t,s} = BN(W k_s)_t, normalised over all B x S keys together.
- eq. 3 uses the L2 distance; the code uses the *mean squared* difference
  over spatial positions (sum over s weighted by alpha, mean over the batch,
  sum over t).
- eq. 4 has no KD term; the code trains with CE + 0.9 KD(T=4) + beta AFD.
- values v are L2-normalised channel means of *squared* features ("A2" in the
  paper's Table 7); student maps are average-pooled to each teacher resolution.
- Appendix B says Xavier initialisation for every AFD parameter; the code
  applies Xavier-normal to the positional encodings only (Linear layers keep
  PyTorch's default init).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from ..models.features import as_computed
from .base import Batch, Context, Method, register_method, select
from .maps import energy_and_mean, resize_to


class LinearBN(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.bn = nn.BatchNorm1d(out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.linear(x))


class AFDAttention(nn.Module):
    """The meta-network of eq. 1-2: returns alpha, B x T x S (softmax over the student axis)."""

    def __init__(self, teacher_channels: list[int], student_channels: list[int], qk_dim: int = 128):
        super().__init__()
        self.qk_dim = qk_dim
        self.n_teacher, self.n_student = len(teacher_channels), len(student_channels)
        self.key = nn.ModuleList(LinearBN(c, qk_dim) for c in student_channels)
        self.bilinear = LinearBN(qk_dim, qk_dim * self.n_teacher)
        self.query = nn.ModuleList(LinearBN(c, qk_dim) for c in teacher_channels)
        self.p_t = nn.Parameter(torch.empty(self.n_teacher, qk_dim))
        self.p_s = nn.Parameter(torch.empty(self.n_student, qk_dim))
        nn.init.xavier_normal_(self.p_t)
        nn.init.xavier_normal_(self.p_s)

    def forward(self, student_means: list[Tensor], teacher_means: list[Tensor]) -> Tensor:
        """Takes each candidate's global-average-pooled features, B x C."""
        batch = student_means[0].shape[0]
        query = torch.stack([layer(mean) for layer, mean in zip(self.query, teacher_means)], dim=1)
        key = torch.stack([F.relu(layer(mean)) for layer, mean in zip(self.key, student_means)], dim=1)
        logits = self.bilinear_scores(key, query) + self.p_t @ self.p_s.t()
        return F.softmax(logits / math.sqrt(self.qk_dim), dim=2)

    def bilinear_scores(self, key: Tensor, query: Tensor) -> Tensor:
        """``q_t . BN(W k_s + c)_t`` for every (b, t, s), B x T x S, without the B x S x T x d mapped keys.

        The official code maps each key to T keys with one Linear+BN (BN
        statistics over all B x S keys) and contracts them with the queries.
        With ``scale = gamma / sqrt(var + eps)`` that equals

            (q_t * scale_t) W_t . k_s + q_t . (scale_t (c_t - mean_t) + beta_t)

        where, in training, ``mean = W mean(k) + c`` and ``var = w^T Cov(k) w``
        per mapped feature, as BN computes them. Folding the queries into the
        weight costs T x d x d multiply-adds per sample instead of S x T x d x d,
        with the same values and gradients. Running statistics are updated as
        BatchNorm does.
        """
        linear, bn = self.bilinear.linear, self.bilinear.bn
        dim = key.shape[2]
        weight = linear.weight  # (T d) x d
        if bn.training:
            rows = key.reshape(-1, dim)
            centre = rows.mean(0)
            centred = rows - centre
            mean = linear(centre)
            variance = ((weight @ (centred.t() @ centred / rows.shape[0])) * weight).sum(1)  # biased, as BN uses
            with torch.no_grad():
                unbiased = variance * rows.shape[0] / max(rows.shape[0] - 1, 1)
                bn.running_mean.lerp_(mean, bn.momentum)
                bn.running_var.lerp_(unbiased, bn.momentum)
                bn.num_batches_tracked.add_(1)
        else:
            mean, variance = bn.running_mean, bn.running_var
        scale = bn.weight * torch.rsqrt(variance + bn.eps)
        shape = (self.n_teacher, self.qk_dim)
        weighted = query * scale.view(shape)  # B x T x d
        folded = torch.bmm(weighted.transpose(0, 1), weight.view(*shape, dim)).transpose(0, 1)  # B x T x d_in
        constant = (query * (scale * (linear.bias - mean) + bn.bias).view(shape)).sum(2)  # B x T
        return torch.bmm(folded, key.transpose(1, 2)) + constant.unsqueeze(2)


class PairDistance(nn.Module):
    """D[b, t, s] = mean over positions of (v^T_t - v^S_s)^2, for all pairs at once, from energy maps.

    Teacher candidates are grouped by resolution; within a group the squared
    distances come from one batched matrix product,
    |v_s|^2 + |v_t|^2 - 2 v_t . v_s, instead of a Python loop over t and a
    B x T x S x HW difference tensor.
    """

    def __init__(self, teacher_sizes: list[tuple[int, int]]):
        super().__init__()
        self.sizes = list(dict.fromkeys(teacher_sizes))  # unique, in order of first appearance
        groups = [[t for t, size in enumerate(teacher_sizes) if size == unique] for unique in self.sizes]
        self.groups = groups
        order = [t for group in groups for t in group]
        # Concatenating the groups permutes teachers; this index undoes it.
        self.register_buffer("unpermute", torch.tensor([order.index(t) for t in range(len(order))]), persistent=False)

    def forward(self, student_energy: list[Tensor], teacher_energy: list[Tensor]) -> Tensor:
        """Takes each candidate's energy map (``maps.energy_map``), B x 1 x H x W."""
        distances = []
        for size, group in zip(self.sizes, self.groups):
            v_s = torch.cat([resize_to(e, size).flatten(1).unsqueeze(1) for e in student_energy], dim=1)
            v_s = F.normalize(v_s, dim=2)  # B x S x HW
            v_t = F.normalize(torch.stack([teacher_energy[t].flatten(1) for t in group], dim=1), dim=2)
            cross = torch.bmm(v_t, v_s.transpose(1, 2))  # B x T_group x S
            squared = v_t.pow(2).sum(2, keepdim=True) + v_s.pow(2).sum(2).unsqueeze(1) - 2 * cross
            distances.append(squared.clamp(min=0) / v_s.shape[2])
        return torch.cat(distances, dim=1).index_select(1, self.unpermute)


def candidate_statistics(features: Features, candidates: list[int]) -> tuple[list[Tensor], list[Tensor]]:
    """Energy maps and channel means (fp32) of the AFD candidates, read in the precision the network ran in."""
    pairs = [energy_and_mean(f) for f in select(as_computed(features.blocks), candidates)]
    return [energy for energy, _ in pairs], [mean for _, mean in pairs]


def _candidate_shapes(context: Context) -> tuple[list[Tensor], list[Tensor]]:
    teacher = select(context.teacher_sample.blocks, context.teacher.afd_candidates)
    student = select(context.student_sample.blocks, context.student.afd_candidates)
    return teacher, student


@register_method("afd")
class AFD(Method):
    cuda_graphs = True
    label = "AFD"

    def __init__(self, context: Context, beta: float = 200.0, qk_dim: int = 128, alpha: float = 0.9, **base):
        super().__init__(context, alpha=alpha, **base)
        self.beta = float(beta)
        teacher, student = _candidate_shapes(context)
        self.teacher_candidates = list(context.teacher.afd_candidates)
        self.student_candidates = list(context.student.afd_candidates)
        self.attention = AFDAttention([f.shape[1] for f in teacher], [f.shape[1] for f in student], qk_dim)
        self.distance = PairDistance([tuple(f.shape[2:]) for f in teacher])
        # The epoch's attention, summed over samples in place (a replayed CUDA graph keeps writing here).
        self.register_buffer("attention_sum", torch.zeros(len(teacher), len(student)), persistent=False)
        self.register_buffer("attention_count", torch.zeros(()), persistent=False)

    def links(self, student: Features, teacher: Features) -> Tensor:
        """alpha for this batch, B x T x S."""
        return self.attention(candidate_statistics(student, self.student_candidates)[1],
                              candidate_statistics(teacher, self.teacher_candidates)[1])

    def distill(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        s_energy, s_mean = candidate_statistics(student, self.student_candidates)
        t_energy, t_mean = candidate_statistics(teacher, self.teacher_candidates)
        alpha = self.attention(s_mean, t_mean)
        with torch.no_grad():
            self.attention_sum.add_(alpha.sum(0))
            self.attention_count.add_(alpha.shape[0])
        loss = (self.distance(s_energy, t_energy) * alpha).sum((1, 2)).mean()
        return {"afd": self.beta * loss}

    def epoch_summary(self) -> dict:
        if not self.attention_count:
            return {}
        mean = (self.attention_sum / self.attention_count).cpu()
        self.attention_sum.zero_()
        self.attention_count.zero_()
        return {"attention": mean}


@register_method("afd_pretrained")
class AFDPretrainedLinks(Method):
    """The AFD distance with alpha fixed to the links a link-finding AFD run converged to (paper's Table 4)."""

    cuda_graphs = True
    needs_artifact = "links"
    label = "AFD (pre-trained links)"

    def __init__(self, context: Context, beta: float = 200.0, alpha: float = 0.9, **base):
        super().__init__(context, alpha=alpha, **base)
        self.beta = float(beta)
        links = context.artifact
        if links is None:
            raise ValueError("afd_pretrained needs a links file (the output of the links stage)")
        teacher, student = _candidate_shapes(context)
        matrix = torch.tensor(links["alpha"], dtype=torch.float32)  # T x S
        expected = (len(teacher), len(student))
        if tuple(matrix.shape) != expected:
            raise ValueError(
                f"links file for {links.get('teacher')}->{links.get('student')} has a {tuple(matrix.shape)} "
                f"teacher x student matrix; this pair needs {expected}"
            )
        self.teacher_candidates = list(context.teacher.afd_candidates)
        self.student_candidates = list(context.student.afd_candidates)
        self.register_buffer("fixed_alpha", matrix)
        self.distance = PairDistance([tuple(f.shape[2:]) for f in teacher])

    def distill(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        s_energy, _ = candidate_statistics(student, self.student_candidates)
        t_energy, _ = candidate_statistics(teacher, self.teacher_candidates)
        loss = (self.distance(s_energy, t_energy) * self.fixed_alpha).sum((1, 2)).mean()
        return {"afd": self.beta * loss}
