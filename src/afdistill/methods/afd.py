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

The paper's ablations (Tables 4-7 and 9) are hyper-parameters of ``afd``;
the defaults are the method above. The official code has none of them, so
where the paper is silent the choice is ours and stated here.

``teacher_candidates`` / ``student_candidates`` (Tables 4, 5, 9): how many
    candidates to take from the network's candidate pool (``model.afd_candidates``:
    every block, every second one for ResNet110); 0 takes the whole pool (the
    official setting). ``teacher_selection`` / ``student_selection`` say how:
    ``interval`` takes pool positions ``floor((i + 1) M / N) - 1`` for
    i = 0..N-1 (N of M, equally spaced, ending at the deepest block: 3 of 9 are
    the three stage outputs); ``random`` draws N distinct positions with a
    generator seeded by the job's seed, kept in depth order.
``linking`` (Tables 4 and 9): ``afd`` co-trains the attention of eq. 1-2;
    ``pretrained`` fixes alpha to the links a link-finding AFD run converged to
    (the "links" pre-stage); ``ordered`` links teacher candidate t to student
    candidate ``ceil((t + 1) S / T) - 1``, the one at the same relative depth
    (t -> t when T = S); ``random`` gives the teacher candidates the ordered
    assignment's student targets in an order drawn by a seeded permutation (a
    uniformly random one-to-one assignment when T = S; each student receives as
    many teachers as in ``ordered``). Fixed links are one-hot rows of alpha.
``distance`` (Table 6), between the values v_t, v_s: the pooled maps, the
    student's resized to the teacher's H x W, flattened to HW entries and
    L2-normalised:
      ``l2``      mean_hw (v_t - v_s)^2                 (the official code)
      ``l1``      mean_hw |v_t - v_s|
      ``cosine``  1 - v_t . v_s   (= 1 - cos(v_t, v_s); for unit vectors this is
                  HW/2 times ``l2``, so it differs from ``l2`` by weighting the
                  larger maps more)
      ``kl``      KL(p_t || p_s) = sum_hw p_t log(p_t / p_s), where p = v / sum_hw v
                  is the pooled map as a distribution over positions (teacher to
                  student, like KD); log p_s is taken at max(p_s, 1e-8) so that a
                  position where every student channel is zero costs a finite amount.
``pooling`` (Table 7): the channel-wise pooling phi^C of eq. 3, ``a2`` (default),
    ``a1`` or ``max`` (``methods.maps``); the attention's GAP is unchanged.

Records: ``teacher_candidates`` / ``student_candidates`` (block indices) and
``teacher_names`` / ``student_names`` (``layer<k>.<j>``) are attributes, and
``fixed_links`` the (teacher, student) name pairs of ``ordered``/``random``
links; :meth:`AFD.epoch_summary` returns them every epoch beside the epoch's
mean attention, so each run's metrics.json holds them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Annotated, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from ..models.features import as_computed, block_names
from .base import Batch, Capabilities, Choice, Context, KDOnTop, Method, Range, register_method, select
from .maps import POOLINGS, pooled_and_mean, resize_to

LINKINGS = ("afd", "pretrained", "ordered", "random")
DISTANCES = ("l2", "l1", "kl", "cosine")
SELECTIONS = ("interval", "random")
KL_FLOOR = 1e-8  # log p_s is taken at max(p_s, KL_FLOOR)


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
        # a BatchNorm1d with its defaults: it tracks running statistics, with a momentum
        assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
        assert bn.momentum is not None
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
    """D[b, t, s]: the ``distance`` (module docstring) between v^T_t and v^S_s, for all pairs at once.

    Teacher candidates are grouped by resolution; within a group the student
    maps are resized once and the distances of the group come from one batched
    computation (for ``l2`` the matrix product |v_s|^2 + |v_t|^2 - 2 v_t . v_s,
    instead of a Python loop over t and a B x T x S x HW difference tensor).
    """

    unpermute: Tensor  # a buffer (register_buffer: mypy would see Tensor | Module)

    def __init__(self, teacher_sizes: list[tuple[int, ...]], distance: str = "l2"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance {distance!r} is not allowed; allowed: {', '.join(DISTANCES)}")
        self.kind = distance
        self.sizes = list(dict.fromkeys(teacher_sizes))  # unique, in order of first appearance
        groups = [[t for t, size in enumerate(teacher_sizes) if size == unique] for unique in self.sizes]
        self.groups = groups
        order = [t for group in groups for t in group]
        # Concatenating the groups permutes teachers; this index undoes it.
        self.register_buffer("unpermute", torch.tensor([order.index(t) for t in range(len(order))]), persistent=False)

    def forward(self, student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
        """Takes each candidate's channel-pooled map (``maps.channel_pool``), B x 1 x H x W."""
        distances = []
        for size, group in zip(self.sizes, self.groups):
            v_s = torch.cat([resize_to(e, size).flatten(1).unsqueeze(1) for e in student_maps], dim=1)
            v_s = F.normalize(v_s, dim=2)  # B x S x HW
            v_t = F.normalize(torch.stack([teacher_maps[t].flatten(1) for t in group], dim=1), dim=2)
            distances.append(self.pairwise(v_t, v_s))
        return torch.cat(distances, dim=1).index_select(1, self.unpermute)

    def pairwise(self, v_t: Tensor, v_s: Tensor) -> Tensor:
        """B x T x HW and B x S x HW (L2-normalised) -> B x T x S."""
        positions = v_s.shape[2]
        if self.kind == "l2":
            cross = torch.bmm(v_t, v_s.transpose(1, 2))  # B x T_group x S
            squared = v_t.pow(2).sum(2, keepdim=True) + v_s.pow(2).sum(2).unsqueeze(1) - 2 * cross
            return squared.clamp(min=0) / positions
        if self.kind == "cosine":
            return 1 - torch.bmm(v_t, v_s.transpose(1, 2))
        if self.kind == "l1":
            return torch.cdist(v_t, v_s, p=1) / positions
        p_t = v_t / v_t.sum(2, keepdim=True).clamp_min(1e-12)
        p_s = v_s / v_s.sum(2, keepdim=True).clamp_min(1e-12)
        negative_entropy = torch.xlogy(p_t, p_t).sum(2, keepdim=True)  # 0 log 0 = 0
        return negative_entropy - torch.bmm(p_t, p_s.clamp_min(KL_FLOOR).log().transpose(1, 2))


def candidate_statistics(
    features: Features, candidates: list[int], pooling: str = "a2"
) -> tuple[list[Tensor], list[Tensor]]:
    """Channel-pooled maps and channel means (fp32) of the AFD candidates, read in the precision the network ran in."""
    pairs = [pooled_and_mean(f, pooling) for f in select(as_computed(features.blocks), candidates)]
    return [pooled for pooled, _ in pairs], [mean for _, mean in pairs]


def select_candidates(pool: list[int], count: int, selection: str, seed: int, salt: int) -> list[int]:
    """``count`` entries of ``pool`` (0: all) at equal intervals or at random (module docstring), in pool order."""
    size = len(pool)
    if count == 0 or count == size:
        return list(pool)
    if selection == "interval":
        return [pool[(i + 1) * size // count - 1] for i in range(count)]
    generator = torch.Generator().manual_seed(_stream(seed, salt))
    return [pool[i] for i in sorted(torch.randperm(size, generator=generator)[:count].tolist())]


def ordered_links(n_teacher: int, n_student: int) -> list[int]:
    """Student position linked to each teacher position: the one at the same relative depth."""
    return [-(-(t + 1) * n_student // n_teacher) - 1 for t in range(n_teacher)]


def random_links(n_teacher: int, n_student: int, seed: int) -> list[int]:
    """The ordered assignment's student targets, given to the teacher positions in a seeded random order."""
    targets = ordered_links(n_teacher, n_student)
    order = torch.randperm(n_teacher, generator=torch.Generator().manual_seed(_stream(seed, 3))).tolist()
    return [targets[i] for i in order]


def _stream(seed: int, salt: int) -> int:
    """One generator seed per (job seed, purpose): teacher candidates 1, student candidates 2, links 3."""
    return int(seed) * 1_000_003 + salt


def _check_option(method: str, key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"methods.{method}.{key}: {value!r} is not allowed; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class AttentionRecord:
    """What an AFD run records of its candidates and links at the end of every epoch (its ``epoch_summary``,
    kept in ``metrics.json``'s ``summaries``), as the links stage, the figures and the reports read it: written
    and read here only."""

    teacher_candidates: list[int]  # block indices of the teacher's candidates
    student_candidates: list[int]
    teacher_names: list[str]  # their block names (``layer<k>.<j>``)
    student_names: list[str]
    links: list[list[str]] | None = None  # fixed (teacher, student) block-name links of a run that learns none
    attention: Any = None  # the epoch's mean alpha, teacher x student candidates (``linking: afd``)

    def summary(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def of(cls, summary: Mapping[str, Any] | None) -> AttentionRecord | None:
        """The record in an epoch's summary; None for a summary of another method."""
        if not summary or "teacher_candidates" not in summary:
            return None
        return cls(**{f.name: summary.get(f.name) for f in fields(cls)})  # type: ignore[arg-type]  # as written

    @classmethod
    def history(cls, summaries: list[Mapping[str, Any]]) -> list[Any]:
        """The mean alpha of every epoch that learnt one, in order."""
        records = [cls.of(summary) for summary in summaries]
        return [record.attention for record in records if record is not None and record.attention is not None]


@register_method("afd")
class AFD(Method):
    label = "AFD"
    declared_capabilities = Capabilities(cuda_graphs=True, kd_on_top=True, fuses=True, relative_cost=1.7)
    #: hyper-parameters a link-finding run must share with a ``linking: pretrained`` run (its links' shape)
    link_params = ("teacher_candidates", "student_candidates", "teacher_selection", "student_selection")
    # buffers (register_buffer: mypy would see Tensor | Module); fixed_alpha only with fixed links
    fixed_alpha: Tensor
    attention_sum: Tensor
    attention_count: Tensor

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 200.0,
        qk_dim: Annotated[int, Range(ge=1, integer=True)] = 128,
        linking: Annotated[str, Choice(*LINKINGS)] = "afd",
        distance: Annotated[str, Choice(*DISTANCES)] = "l2",
        pooling: Annotated[str, Choice(*POOLINGS)] = "a2",
        teacher_candidates: Annotated[int, Range(ge=0, integer=True)] = 0,
        student_candidates: Annotated[int, Range(ge=0, integer=True)] = 0,
        teacher_selection: Annotated[str, Choice(*SELECTIONS)] = "interval",
        student_selection: Annotated[str, Choice(*SELECTIONS)] = "interval",
        alpha: Annotated[float, Range(ge=0)] = 0.9,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.caps = type(self).capabilities({"linking": linking})
        for key, value, allowed in (
            ("linking", linking, LINKINGS),
            ("distance", distance, DISTANCES),
            ("pooling", pooling, POOLINGS),
            ("teacher_selection", teacher_selection, SELECTIONS),
            ("student_selection", student_selection, SELECTIONS),
        ):
            _check_option(self.method_name, key, value, allowed)
        self.beta = float(beta)
        self.linking, self.pooling = linking, pooling
        assert context.teacher is not None and context.student is not None  # it needs both networks
        # (the casts: every registered architecture sets afd_candidates, a list of block indices)
        self.teacher_candidates = self._choose(
            cast(list[int], context.teacher.afd_candidates),
            teacher_candidates,
            teacher_selection,
            context.seed,
            1,
            f"methods.{self.method_name}.teacher_candidates",
        )
        self.student_candidates = self._choose(
            cast(list[int], context.student.afd_candidates),
            student_candidates,
            student_selection,
            context.seed,
            2,
            f"methods.{self.method_name}.student_candidates",
        )
        assert context.student_sample is not None and context.teacher_sample is not None  # and their features
        teacher = select(context.teacher_sample.blocks, self.teacher_candidates)
        student = select(context.student_sample.blocks, self.student_candidates)
        self.teacher_names = select(block_names(context.teacher_sample.blocks), self.teacher_candidates)
        self.student_names = select(block_names(context.student_sample.blocks), self.student_candidates)
        n_teacher, n_student = len(teacher), len(student)
        self.fixed_links: list[tuple[str, str]] = []
        if linking == "afd":
            self.attention = AFDAttention([f.shape[1] for f in teacher], [f.shape[1] for f in student], qk_dim)
        else:
            if linking == "pretrained":
                matrix = self._pretrained(context.artifact, (n_teacher, n_student))
            else:
                targets = (
                    ordered_links(n_teacher, n_student)
                    if linking == "ordered"
                    else random_links(n_teacher, n_student, context.seed)
                )
                matrix = torch.zeros(n_teacher, n_student)
                matrix[torch.arange(n_teacher), torch.tensor(targets)] = 1.0
                self.fixed_links = [(self.teacher_names[t], self.student_names[s]) for t, s in enumerate(targets)]
            self.register_buffer("fixed_alpha", matrix)
        self.distance = PairDistance([tuple(f.shape[2:]) for f in teacher], distance)
        # The epoch's attention, summed over samples in place (a replayed CUDA graph keeps writing here).
        self.register_buffer("attention_sum", torch.zeros(n_teacher, n_student), persistent=False)
        self.register_buffer("attention_count", torch.zeros(()), persistent=False)

    @classmethod
    def capabilities(cls, params: dict[str, Any]) -> Capabilities:
        """With ``linking: pretrained`` it reads the links of the links stage."""
        caps = super().capabilities(params)
        return replace(caps, pre_stage="links") if params.get("linking") == "pretrained" else caps

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        for side, network in (("teacher", context.teacher), ("student", context.student)):
            assert network is not None  # it needs both networks
            # (the cast: every registered architecture sets afd_candidates, a list of block indices)
            count, pool = params[f"{side}_candidates"], cast(list[int], network.afd_candidates)
            if count > len(pool):
                raise ValueError(
                    f"{where}.{side}_candidates: {count} is not allowed for {network.arch}; expected "
                    f"an integer from 0 to {len(pool)} (its candidate blocks; 0 takes all)"
                )

    @staticmethod
    def _choose(pool: list[int], count: int, selection: str, seed: int, salt: int, key: str) -> list[int]:
        if not 0 <= count <= len(pool):
            raise ValueError(f"{key}: {count} candidates asked; this network has {len(pool)} (0 takes all)")
        return select_candidates(list(pool), int(count), selection, seed, salt)

    def _pretrained(self, links: Any, expected: tuple[int, int]) -> Tensor:
        if links is None:
            raise ValueError(
                f"{self.method_name} with pre-trained links needs a links file (the output of the links stage)"
            )
        for side in ("teacher", "student"):
            found, ours = links.get(f"{side}_candidates"), getattr(self, f"{side}_candidates")
            if found is not None and list(found) != ours:
                raise ValueError(
                    f"links file for {links.get('teacher')}->{links.get('student')} links {side} "
                    f"blocks {list(found)}; this run uses {ours} (the link-finding run must share "
                    f"{', '.join(self.link_params)})"
                )
        matrix = torch.tensor(links["alpha"], dtype=torch.float32)  # T x S
        if tuple(matrix.shape) != expected:
            raise ValueError(
                f"links file for {links.get('teacher')}->{links.get('student')} has a {tuple(matrix.shape)} "
                f"teacher x student matrix; this pair needs {expected}"
            )
        return matrix

    def links(self, student: Features, teacher: Features) -> Tensor:
        """alpha for this batch, B x T x S."""
        if self.linking != "afd":
            return self.fixed_alpha.expand(student.logits.shape[0], -1, -1)
        return self.attention(
            candidate_statistics(student, self.student_candidates, self.pooling)[1],
            candidate_statistics(teacher, self.teacher_candidates, self.pooling)[1],
        )

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        s_maps, s_mean = candidate_statistics(student, self.student_candidates, self.pooling)
        t_maps, t_mean = candidate_statistics(teacher, self.teacher_candidates, self.pooling)
        distances = self.distance(s_maps, t_maps)
        if self.linking != "afd":
            return {"afd": self.beta * (distances * self.fixed_alpha).sum((1, 2)).mean()}
        alpha = self.attention(s_mean, t_mean)
        with torch.no_grad():
            self.attention_sum.add_(alpha.sum(0))
            self.attention_count.add_(alpha.shape[0])
        loss = (distances * alpha).sum((1, 2)).mean()
        return {"afd": self.beta * loss}

    def choices(self) -> AttentionRecord:
        """The candidates (block indices and names) and fixed links this run uses, for reports."""
        return AttentionRecord(
            teacher_candidates=list(self.teacher_candidates),
            student_candidates=list(self.student_candidates),
            teacher_names=list(self.teacher_names),
            student_names=list(self.student_names),
            links=[list(pair) for pair in self.fixed_links] if self.fixed_links else None,
        )

    def epoch_summary(self) -> dict:
        record = self.choices()
        if self.linking == "afd" and self.attention_count:
            record = replace(record, attention=(self.attention_sum / self.attention_count).cpu())
            self.attention_sum.zero_()
            self.attention_count.zero_()
        return record.summary()


@register_method("afd_pretrained")
class AFDPretrainedLinks(AFD):
    """The AFD distance with alpha fixed to the links a link-finding AFD run converged to (paper's Table 4):
    ``afd`` with ``linking: pretrained``."""

    label = "AFD (pre-trained links)"
    declared_capabilities = replace(AFD.declared_capabilities, pre_stage="links")

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 200.0,
        distance: Annotated[str, Choice(*DISTANCES)] = "l2",
        pooling: Annotated[str, Choice(*POOLINGS)] = "a2",
        teacher_candidates: Annotated[int, Range(ge=0, integer=True)] = 0,
        student_candidates: Annotated[int, Range(ge=0, integer=True)] = 0,
        teacher_selection: Annotated[str, Choice(*SELECTIONS)] = "interval",
        student_selection: Annotated[str, Choice(*SELECTIONS)] = "interval",
        alpha: Annotated[float, Range(ge=0)] = 0.9,
        gamma: Annotated[float, Range(ge=0)] = 1.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
    ):
        super().__init__(
            context,
            beta=beta,
            linking="pretrained",
            distance=distance,
            pooling=pooling,
            teacher_candidates=teacher_candidates,
            student_candidates=student_candidates,
            teacher_selection=teacher_selection,
            student_selection=student_selection,
            alpha=alpha,
            gamma=gamma,
            temperature=temperature,
        )


def stage_output_links(teacher_names: list[str], student_names: list[str]) -> list[tuple[int, int]]:
    """The manual links of FitNet/AT-style methods among AFD candidates: (teacher, student) positions.

    The last candidate of each teacher stage (``layer<k>``) is linked to the last
    candidate of the student's stage ``k``, for the stages both have. What the
    paper's Figures 3 and 6 draw as "manual" links.
    """

    def stage_ends(names: list[str]) -> dict[str, int]:
        return {name.split(".")[0]: index for index, name in enumerate(names)}  # the last index wins

    teacher, student = stage_ends(teacher_names), stage_ends(student_names)
    return [(teacher[stage], student[stage]) for stage in teacher if stage in student]
