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
weight decay) into the meta-networks, the student and regressors stay where
the real step left them (the reference's rollback), and Adam updates the
meta-networks. That bilevel step makes L2T by far the most expensive method
here. The virtual steps are written out as new tensors (``torch.func``'s
``functional_call``), so one backward pass through their graph gives the
meta-gradient and each step's forward and backward pass runs once. L2T-ww's
``MetaSGD.meta_backward`` (alinlab/L2T-ww, train/meta_optimizers.py at
023c642) takes the same derivative by a reverse recursion that restores each
step's snapshot and runs the step again; the two agree to float64 rounding.

Virtual steps zero the gradients in place, as L2T-ww ran: it was written for
PyTorch 1.x, whose ``optimizer.zero_grad()`` filled every gradient with zeros
instead of dropping it, so in a virtual step a parameter the objective does not
reach (the classifier in the matching-only steps, the regressors in the
cross-entropy step) still moved by momentum and weight decay. Since PyTorch 2.0
``zero_grad`` sets gradients to ``None`` and SGD then skips those parameters,
which changes the trajectory the meta-gradient is taken through (resnet20 ->
resnet8 at initialisation: relative difference 0.29, cosine 0.958;
``benchmarks/fidelity.py``). The
virtual steps below follow the in-place trajectory: a parameter the objective
does not reach gets a zero gradient, so momentum and weight decay still move it.

Teacher maps are resized to the student's resolution bilinearly, as the
reference does. Hyper-parameters are the reference's defaults: beta 0.5,
T 2, Adam with learning rate and weight decay 1e-4, ReLU6 gates starting at 1.
"""

from __future__ import annotations

from typing import Annotated, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

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
    declared_capabilities = Capabilities(kd_on_top=True, relative_cost=16.5)
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
        if any(group["nesterov"] or group.get("dampening", 0) for group in optimizer.param_groups):
            raise ValueError(
                "l2t: the meta-gradient is derived for plain SGD with momentum (no Nesterov, no dampening)"
            )

        assert student is not None and teacher is not None  # it trains a student, from a teacher
        lr = optimizer.param_groups[0]["lr"]
        moved, trajectory, statistics = self.virtual_steps(batch, student, teacher, optimizer)
        # d CE / d meta after the virtual steps: autograd back through all of them (their Hessian-vector products)
        outer = F.cross_entropy(self._student_at(student, moved, trajectory[-1])(batch.images), batch.labels)
        self.meta_optimizer.zero_grad(set_to_none=True)
        metas = self.matching.meta_parameters()
        for meta, grad in zip(metas, torch.autograd.grad(outer, metas, allow_unused=True)):
            meta.grad = grad
        with torch.no_grad():  # once the graph that read them is done with
            for buffer, kept in zip(student.buffers(), statistics):
                buffer.copy_(kept)
        optimizer.zero_grad(set_to_none=True)
        _mean_over_processes(metas)
        self._check_finite(teacher, lr)
        self.meta_optimizer.step()

    def virtual_steps(
        self, batch: Batch, student: nn.Module, teacher: Features, optimizer: torch.optim.Optimizer
    ) -> tuple[list[nn.Parameter], list[list[Tensor]], list[Tensor]]:
        """L2T-ww's virtual steps from where the real step left the student and the regressors: T SGD steps on the
        matching loss, then one on cross-entropy, with the optimiser's learning rate, momentum and weight decay.

        Returns the parameters they move and the trajectory: their values at the start and after each step, as new
        tensors that are differentiable in the meta-networks. Nothing is written to the student or the regressors,
        so nothing is rolled back (the reference's ``rollback``). Also returns the student's buffers as the first
        step's forward pass left them: L2T-ww's BatchNorm running statistics keep that one update (its reverse
        recursion ends on that step), which the caller restores once it is done with the graph."""
        group = optimizer.param_groups[0]
        lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        in_matching = {id(p): name for name, p in self.matching.named_parameters()}
        in_student = {id(p) for p in student.parameters()}
        # a parameter that neither objective reads (CTKD's temperature) moves by momentum and weight decay alone
        # and changes nothing here
        params = [p for group in optimizer.param_groups for p in group["params"]]
        moved = [p for p in params if id(p) in in_student or id(p) in in_matching]

        def matching_loss(values: list[Tensor]) -> Tensor:
            stages = self._student_at(student, moved, values)(batch.images, with_features=True).stages
            regressors = {in_matching[id(p)]: v for p, v in zip(moved, values) if id(p) in in_matching}
            return self.beta * functional_call(self.matching, regressors, (stages, teacher.stages))

        def cross_entropy(values: list[Tensor]) -> Tensor:
            return F.cross_entropy(self._student_at(student, moved, values)(batch.images), batch.labels)

        theta = [p.detach().requires_grad_() for p in moved]
        buffers = [optimizer.state[p].get("momentum_buffer") for p in moved]
        trajectory, statistics = [theta], []
        for step, objective in enumerate([matching_loss] * self.inner_steps + [cross_entropy]):
            grads = torch.autograd.grad(objective(theta), theta, create_graph=True, allow_unused=True)
            if step == 0:
                statistics = [buffer.detach().clone() for buffer in student.buffers()]
            # PyTorch 1.x's in-place zero_grad: a parameter the objective does not reach gets a zero gradient, so it
            # still moves by momentum and weight decay (the module docstring)
            directions = [(torch.zeros_like(t) if g is None else g) + weight_decay * t for t, g in zip(theta, grads)]
            buffers = [d if b is None else momentum * b + d for b, d in zip(buffers, directions)]
            theta = [t - lr * b for t, b in zip(theta, buffers)]
            trajectory.append(theta)
        return moved, trajectory, statistics

    @staticmethod
    def _student_at(student: nn.Module, moved: list[nn.Parameter], values: list[Tensor]):
        """The student's forward pass with ``values`` in place of its parameters among ``moved``."""
        names = {id(p): name for name, p in student.named_parameters()}
        weights = {names[id(p)]: v for p, v in zip(moved, values) if id(p) in names}
        return lambda *args, **kwargs: functional_call(student, weights, args, kwargs)

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
