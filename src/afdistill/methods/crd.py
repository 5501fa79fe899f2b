"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020) as RepDistiller runs it.

Student and teacher pooled embeddings go through linear heads to 128-d unit
vectors. Two memory banks hold one slowly updated (momentum 0.5) vector per
training image for each network. For every image, its own slot (the
positive) and ``nce_k`` slots of images of *other classes* (RepDistiller's
"exact" sampling) are scored against the other network's embedding,
exp(v . m / T) normalised by a constant Z fixed on the first batch, and a
noise-contrastive loss (eq. 18 of the paper, uniform noise 1/N) is summed
for both anchors. RepDistiller's default is 16,384 negatives; the AFD paper
sets their number to the batch size, which the paper grids do.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Context, KDOnTop, Method, Range, register_method

EPS = 1e-7
#: ``check_fit`` refuses settings whose memory banks and per-step gathers would need more than this
MEMORY_LIMIT = 32 * 2**30


class Embed(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def contrast_loss(scores: Tensor, n_data: int) -> Tensor:
    """NCE loss with K negatives: column 0 holds the positive's score."""
    negatives = scores.shape[1] - 1
    noise = negatives / n_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


@register_method("crd")
class CRD(Method):
    label = "CRD"
    # no CUDA graph: it draws random negatives each step
    declared_capabilities = Capabilities(kd_on_top=True, fuses=True, relative_cost=1.5)
    # buffers (register_buffer: mypy would see Tensor | Module)
    train_labels: Tensor
    memory_s: Tensor
    memory_t: Tensor
    z: Tensor

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 0.8,
        nce_k: Annotated[int, Range(ge=1)] = 16384,  # negatives per anchor
        nce_t: Annotated[float, Range(gt=0)] = 0.07,  # softmax temperature
        nce_m: Annotated[float, Range(ge=0, lt=1)] = 0.5,  # memory momentum; 1 would never update it
        feat_dim: Annotated[int, Range(ge=1)] = 128,
        alpha: Annotated[float, Range(ge=0)] = 0.9,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.beta, self.nce_k, self.nce_t, self.nce_m = float(beta), int(nce_k), float(nce_t), float(nce_m)
        if self.nce_k < 1:
            raise ValueError(f"methods.crd.nce_k: must be at least 1, got {nce_k}")
        assert context.student_sample is not None and context.teacher_sample is not None  # it needs both networks
        self.embed_s = Embed(context.student_sample.pooled.shape[1], feat_dim)
        self.embed_t = Embed(context.teacher_sample.pooled.shape[1], feat_dim)
        labels = context.train_labels
        assert labels is not None  # given to a method that trains (None only in a fit check, which builds none)
        self.n_data = len(labels)
        self.register_buffer("train_labels", labels.clone(), persistent=False)
        self.smallest_pool = int(self.n_data - torch.bincount(labels).max())  # fewest images of other classes
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(self.n_data, feat_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_t", torch.rand(self.n_data, feat_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("z", torch.full((2,), -1.0))  # normalisation constants, set on the first batch
        self.seed = context.seed
        self.generator: torch.Generator | None = None
        self._z_ready = False  # checked once per process, not once per step (a device sync)

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        nce_k, feat_dim = params["nce_k"], params["feat_dim"]
        if nce_k >= n_train:
            raise ValueError(
                f"{where}.nce_k: {nce_k} is not allowed; expected an integer from 1 to {n_train - 1}: "
                f"the negatives are drawn from the {n_train} training images"
            )
        needed = memory_bytes(n_train, feat_dim, nce_k, context.batch_size)
        if needed > MEMORY_LIMIT:
            per_step = "" if context.batch_size is None else f", 2 x {context.batch_size} x {nce_k + 1} per step"
            raise ValueError(
                f"{where}.feat_dim: {feat_dim} is not allowed with nce_k {nce_k}: CRD would hold "
                f"{needed / 2**30:.0f} GiB (vectors of {feat_dim} floats: 2 x {n_train} in the memory "
                f"banks{per_step}); expected at most {MEMORY_LIMIT // 2**30} GiB"
            )

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.generator = torch.Generator(device=self.memory_s.device).manual_seed(self.seed * 7_919 + epoch)

    def sample_contrast(self, labels: Tensor, indices: Tensor) -> Tensor:
        """B x (1 + K): each image's own index, then K images of other classes."""
        allowed = (self.train_labels.unsqueeze(0) != labels.unsqueeze(1)).float()
        replace = self.nce_k > self.smallest_pool
        negatives = torch.multinomial(allowed, self.nce_k, replacement=replace, generator=self.generator)
        return torch.cat([indices.unsqueeze(1), negatives], dim=1)

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        v_s = self.embed_s(student.pooled)
        v_t = self.embed_t(teacher.pooled.clone())  # a normal tensor: the head's backward keeps its input
        contrast = self.sample_contrast(batch.labels, batch.indices)
        # student anchor against the teacher memory, teacher anchor against the student memory
        scores_s = torch.exp(torch.bmm(self.memory_t[contrast].detach(), v_s.unsqueeze(2)).squeeze(2) / self.nce_t)
        scores_t = torch.exp(torch.bmm(self.memory_s[contrast].detach(), v_t.unsqueeze(2)).squeeze(2) / self.nce_t)
        if not self._z_ready:
            if bool(self.z[0] < 0):
                self.z.copy_(torch.stack([scores_s.mean(), scores_t.mean()]).detach() * self.n_data)
            self._z_ready = True
        scores_s, scores_t = scores_s / self.z[0], scores_t / self.z[1]
        with torch.no_grad():
            for memory, fresh in ((self.memory_s, v_s), (self.memory_t, v_t)):
                updated = memory[batch.indices] * self.nce_m + fresh.detach() * (1 - self.nce_m)
                memory.index_copy_(0, batch.indices, F.normalize(updated, dim=1))
        loss = contrast_loss(scores_s, self.n_data) + contrast_loss(scores_t, self.n_data)
        return {"crd": self.beta * loss}


def memory_bytes(n_train: int, feat_dim: int, nce_k: int, batch_size: int | None) -> int:
    """Float32 bytes CRD holds: both memory banks, and per step both gathered contrast sets (kept for the
    backward pass) and the other-class mask negatives are sampled from (per-step terms only with a batch size)."""
    banks = 2 * n_train * feat_dim
    per_step = 0 if batch_size is None else 2 * batch_size * (nce_k + 1) * feat_dim + batch_size * n_train
    return 4 * (banks + per_step)
