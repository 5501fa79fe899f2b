"""Learning What and Where to Transfer (L2T-ww; Jang et al., ICML 2019), as alinlab/L2T-ww trains it.

Every (teacher stage, student stage) pair has a 1x1-conv regressor from the
student map to the teacher's channels. Two meta-networks read the teacher's
pooled feature: one weighs the channels of each pair ("what", a softmax),
one gates each pair per image ("where", ReLU6):

    L_wfm = beta * sum_pairs mean_b [ lw_b * sum_c w_bc * mean_hw (T_c - r(S)_c)^2 ]

The student and regressors take a normal SGD step on CE (+ alpha KD) + L_wfm.
Then, as the reference's MetaSGD does, ``T`` virtual SGD steps on L_wfm alone
and one on CE are taken, the cross-entropy after them is differentiated back
through those steps (Hessian-vector products through SGD with momentum and
weight decay) into the meta-networks, the student and regressors are rolled
back to where the real step left them, and Adam updates the meta-networks.
That bilevel step makes L2T by far the most expensive method here.

Virtual steps zero the gradients in place, as L2T-ww ran: it was written for
PyTorch 1.x, whose ``optimizer.zero_grad()`` filled every gradient with zeros
instead of dropping it, so in a virtual step a parameter the objective does not
reach (the classifier in the matching-only steps, the regressors in the
cross-entropy step) still moved by momentum and weight decay. Since PyTorch 2.0
``zero_grad`` sets gradients to ``None`` and SGD then skips those parameters,
which changes the trajectory the meta-gradient is taken through (resnet20 ->
resnet8 at initialisation: relative difference 0.29, cosine 0.958;
``benchmarks/fidelity.py``). The
reverse pass below is the derivative of the in-place trajectory: its adjoint
recursion applies momentum and weight decay to every parameter.

Teacher maps are resized to the student's resolution bilinearly, as the
reference does. Hyper-parameters are the reference's defaults: beta 0.5,
T 2, Adam with learning rate and weight decay 1e-4, ReLU6 gates starting at 1.
"""

from __future__ import annotations

import copy
from typing import Annotated, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Context, KDOnTop, Method, Range, register_method


class WeightedFeatureMatching(nn.Module):
    """The regressors and the two meta-networks of all pairs."""

    def __init__(
        self,
        student_channels: list[int],
        teacher_channels: list[int],
        pairs: list[tuple[int, int]],
        gate_init: float = 1.0,
    ):
        super().__init__()
        self.pairs = pairs
        self.regressors = nn.ModuleList(nn.Conv2d(student_channels[s], teacher_channels[t], 1) for t, s in pairs)
        self.channel_weights = nn.ModuleList(nn.Linear(teacher_channels[t], teacher_channels[t]) for t, _ in pairs)
        for layer in self.channel_weights:  # Linears (a ModuleList yields them as Module)
            nn.init.zeros_(cast(nn.Linear, layer).weight)
            nn.init.zeros_(cast(nn.Linear, layer).bias)
        self.gates = nn.ModuleList(nn.Linear(teacher_channels[t], 1) for t, _ in pairs)
        for layer in self.gates:
            nn.init.constant_(cast(nn.Linear, layer).bias, gate_init)

    def meta_parameters(self):
        return list(self.channel_weights.parameters()) + list(self.gates.parameters())

    def forward(self, student: list[Tensor], teacher: list[Tensor], gates: list[Tensor] | None = None) -> Tensor:
        """The weighted matching loss; ``gates`` (if given) receives each pair's batch-mean gate, detached."""
        loss: float | Tensor = 0.0
        for i, (t, s) in enumerate(self.pairs):
            source, target = teacher[t], student[s]
            if source.shape[-1] != target.shape[-1]:
                source = F.interpolate(source, size=target.shape[-2:], mode="bilinear", align_corners=False)
            difference = (source - self.regressors[i](target)).pow(2).mean((2, 3))  # B x C_teacher
            pooled = teacher[t].mean((2, 3))
            weights = F.softmax(self.channel_weights[i](pooled), dim=1)
            gate = F.relu6(self.gates[i](pooled)).squeeze(1)
            if gates is not None:
                gates.append(gate.detach().mean())
            loss = loss + ((difference * weights).sum(1) * gate).mean()
        return cast(Tensor, loss)  # a tensor: every stage pair is matched, and there is at least one


def _zero_gradients_in_place(params: list[Tensor]) -> None:
    """PyTorch 1.x's ``zero_grad()``: every parameter keeps a zero gradient, so SGD still applies
    momentum and weight decay to one the next objective does not reach (L2T-ww's virtual steps)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        else:
            p.grad.detach_()
            p.grad.zero_()


def _mean_over_processes(parameters: list[nn.Parameter]) -> None:
    """In a data-parallel job each process takes the meta-gradient through its own slice of the batch; their mean
    keeps the meta-networks equal on every process (L2T-ww trains on one GPU; one process is left as it is). Taken
    before the finiteness check, so that a non-finite meta-gradient stops every process, not one."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world_size = torch.distributed.get_world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= world_size


@register_method("l2t")
class L2T(Method):
    label = "L2T"
    declared_capabilities = Capabilities(kd_on_top=True)
    # buffers (register_buffer: mypy would see Tensor | Module)
    gate_sum: Tensor
    gate_count: Tensor

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 0.5,
        inner_steps: Annotated[int, Range(ge=1)] = 2,  # with none, the meta-networks get no gradient
        meta_lr: Annotated[float, Range(gt=0)] = 1e-4,
        meta_weight_decay: Annotated[float, Range(ge=0)] = 1e-4,
        alpha: Annotated[float, Range(ge=0)] = 0.9,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.beta, self.inner_steps = float(beta), int(inner_steps)
        assert context.student_sample is not None and context.teacher_sample is not None  # it needs both networks
        student, teacher = context.student_sample.stages, context.teacher_sample.stages
        pairs = [(t, s) for t in range(len(teacher)) for s in range(len(student))]
        self.matching = WeightedFeatureMatching([f.shape[1] for f in student], [f.shape[1] for f in teacher], pairs)
        self.register_buffer("gate_sum", torch.zeros(len(teacher), len(student)), persistent=False)
        self.register_buffer("gate_count", torch.zeros(()), persistent=False)
        self.meta_optimizer = torch.optim.Adam(
            self.matching.meta_parameters(), lr=meta_lr, weight_decay=meta_weight_decay
        )

    # the engine's SGD trains the student and the regressors; the meta-networks have their own Adam
    def trainable_parameters(self):
        meta = {id(p) for p in self.matching.meta_parameters()}
        return (p for p in self.parameters() if id(p) not in meta)

    def get_extra_state(self):
        return {"meta_optimizer": self.meta_optimizer.state_dict()}

    def set_extra_state(self, state):
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        gates: list[Tensor] = []
        loss = self.matching(student.stages, teacher.stages, gates)
        with torch.no_grad():  # the links the paper's Figure 4 draws: each pair's mean gate over the epoch
            self.gate_sum += torch.stack(gates).view(self.gate_sum.shape)
            self.gate_count += 1
        return {"l2t": self.beta * loss}

    def epoch_summary(self) -> dict:
        if not self.gate_count:
            return {}
        summary = {"gates": (self.gate_sum / self.gate_count).cpu()}  # teacher stages x student stages
        self.gate_sum.zero_()
        self.gate_count.zero_()
        return summary

    def after_step(
        self, batch: Batch, student: nn.Module | None, teacher: Features | None, optimizer: torch.optim.Optimizer
    ):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if any(group["nesterov"] or group.get("dampening", 0) for group in optimizer.param_groups):
            raise ValueError(
                "l2t: the meta-gradient is derived for plain SGD with momentum (no Nesterov, no dampening)"
            )

        assert student is not None and teacher is not None  # it trains a student, from a teacher

        def snapshot():
            return (
                copy.deepcopy(student.state_dict()),
                copy.deepcopy(self.matching.state_dict()),
                copy.deepcopy(optimizer.state_dict()),
            )

        def restore(state):
            student.load_state_dict(state[0])
            self.matching.load_state_dict(state[1])
            optimizer.load_state_dict(state[2])

        def matching_loss():
            return self.beta * self.matching(student(batch.images, with_features=True).stages, teacher.stages)

        def cross_entropy():
            return F.cross_entropy(student(batch.images), batch.labels)

        # Virtual steps: T on the matching loss, one on cross-entropy; remember where each started.
        records = []
        for objective in [matching_loss] * self.inner_steps + [cross_entropy]:
            records.append((snapshot(), objective))
            _zero_gradients_in_place(params)
            objective().backward()
            optimizer.step()

        # d CE / d params after the last virtual step seeds the reverse pass.
        self.meta_optimizer.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(cross_entropy(), params, allow_unused=True)
        adjoint = [
            (torch.zeros_like(p) if g is None else g.detach(), torch.zeros_like(p)) for p, g in zip(params, grads)
        ]
        group = optimizer.param_groups[0]
        lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        for state, objective in reversed(records):
            # Reverse one step theta' = theta - lr * buf', buf' = momentum * buf + g(theta) + wd * theta:
            # X = sum g . (a_buf - lr * a_theta); dX/dtheta is the Hessian-vector product, dX/dmeta the meta-gradient.
            restore(state)
            grads = torch.autograd.grad(objective(), params, create_graph=True, allow_unused=True)
            inner = sum(
                (g * (a_buf - lr * a_theta)).sum() for g, (a_theta, a_buf) in zip(grads, adjoint) if g is not None
            )
            hvp = torch.autograd.grad(inner, params + self.matching.meta_parameters(), allow_unused=True)
            for meta, g in zip(self.matching.meta_parameters(), hvp[len(params) :]):
                if g is not None:
                    meta.grad = g if meta.grad is None else meta.grad + g
            adjoint = [
                (
                    a_theta * (1 - lr * weight_decay) + weight_decay * a_buf + (0 if h is None else h.detach()),
                    momentum * a_buf - lr * momentum * a_theta,
                )
                for (a_theta, a_buf), h in zip(adjoint, hvp[: len(params)])
            ]
        # `restore` left the student where the real step put it (the reference's rollback=True).
        optimizer.zero_grad(set_to_none=True)
        _mean_over_processes(self.matching.meta_parameters())
        self._check_finite(teacher, lr)
        self.meta_optimizer.step()

    def _check_finite(self, teacher: Features, lr: float) -> None:
        """Stop, naming the cause, where L2T-ww would let Adam take a non-finite step into the meta-networks
        (it has no check; nothing else changes). L2T's matching loss is quadratic in the teacher's maps: a teacher
        whose BatchNorm running statistics lag its weights (untrained, or a few epochs into training) gives maps
        in the thousands, the first virtual step moves the student by lr x their square, and the second one's
        forward pass overflows (benchmarks/l2t_stability.py). L2T-ww reads a fully trained teacher."""
        grads = [m.grad for m in self.matching.meta_parameters() if m.grad is not None]
        if not grads or torch.isfinite(torch.stack([g.abs().sum() for g in grads]).sum()):
            return
        largest = max(float(s.detach().abs().max()) for s in teacher.stages)
        raise FloatingPointError(
            f"l2t: the meta-gradient is not finite: the virtual steps overflowed (the teacher's stage maps reach "
            f"{largest:.3g}; the matching loss grows with their square, and each virtual step moves the student by "
            f"lr {lr:g} times its gradient). A teacher whose BatchNorm statistics lag its weights does this; L2T-ww "
            f"distils from a fully trained teacher: check the teacher checkpoint"
        )
