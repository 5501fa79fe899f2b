"""Deep mutual learning (DML; Zhang, Xiang, Hospedales & Lu, CVPR 2018): two networks trained from scratch
together, each also pulled to the other's predictions. No pretrained teacher.

The method owns the second network, the *peer* (``peer``: its architecture; None, the default, means the
student's own architecture, the paper's main setting of two copies, independently initialised). Its
parameters are in :meth:`trainable_parameters`, so the engine's SGD optimiser (the student's learning rate,
momentum, weight decay and schedule) updates it with the student; it sees the same augmented batch. With
p_s, p_p the two networks' softmax outputs (temperature 1), the loss is the sum of both objectives:

    student:  CE(p_s, y) + KL(p_p || p_s)        (the paper's eq. 4, with its KL of eq. 3)
    peer:     CE(p_p, y) + KL(p_s || p_p)        (eq. 5)

in each KL term the other network's probabilities are read as a constant (detached): the student's
parameters get only the gradient of the student's objective, the peer's only that of the peer's, as in the
authors' code, YingZhangDUT/Deep-Mutual-Learning (34a20583debe4e0dab1d9856db69bed278c5c011,
``train_models.py``: ``kl_loss_compute(logits_i, logits_j)`` is KL(p_j || p_i), added to network i's
cross-entropy, and each network's gradients are taken with ``var_list`` restricted to its own variables).
That code guards its logarithm with 1e-8 terms; here the KL is computed from log-softmax outputs instead.
``gamma`` weighs both cross-entropies and ``beta`` both KL terms (1 and 1: the paper's objectives).

Joint, not sequential, updates. The paper's Algorithm 1 updates the first network, recomputes both
predictions and then updates the second, on the same batch. Both reference codes run one optimiser step per
network: the authors' code runs each network's train op in turn, each pulling its own batch from the input
queue; sseung0703/KD_methods_with_TF (9fb54144fe6a80edd94259d4ba42995b594c91a0: ``train_w_distill.py``,
``op_util.py`` ``Optimizer_w_DML``) runs the student's step and then the peer's on the same fed batch, each
recomputing both forward passes. This project's engine takes ONE optimiser step per batch (one forward, one
backward), so DML here is the joint variant: both networks are updated simultaneously from the same batch and
the same predictions. With the stop-gradients above, the gradient of the summed loss with respect to each
network's parameters is exactly that network's own objective's gradient, and one SGD step over both parameter
sets equals two SGD steps with the same settings taken side by side; what the joint variant leaves out is only
that the second network's step sees the first network's already-updated predictions, which a sequential
update needs a second forward pass and a second optimiser step for.

KD_methods_with_TF also differs in its loss (``nets/Response.py`` ``DML``): both networks minimise their
cross-entropy plus the *average* of the two KL directions, (KL(p_p || p_s) + KL(p_s || p_p)) / 2; and its peer
(a deeper ResNet built under the scope "Teacher") has its BatchNorm in inference mode while training
(``is_training = tf.logical_not(is_training)``). Neither is followed: the paper's objectives are.

The peer is a submodule, so the engine's ``method.train()`` before every epoch puts it in training mode with
the student. Its running accuracy on the training batches is recorded per epoch (``peer_train_top1``). The
peer is built with ``create_model(peer, num_classes)``: without the model options a grid may set for the
student's architecture.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Features, create_model, list_models
from .base import Batch, Capabilities, Choice, Context, Method, Range, register_method


def kl_to(target_log_probs: Tensor, log_probs: Tensor) -> Tensor:
    """KL(target || p), batch mean, the target read as a constant: sum_m q_m (log q_m - log p_m), q detached."""
    target_log_probs = target_log_probs.detach()
    return (target_log_probs.exp() * (target_log_probs - log_probs)).sum(1).mean()


@register_method("dml")
class DML(Method):
    label = "DML"
    declared_capabilities = Capabilities(needs_teacher=False, fuses=True, relative_cost=1.9)

    @classmethod
    def peer_arch(cls, params: dict[str, Any], context: Context) -> str | None:
        return params.get("peer") or getattr(context.student, "arch", None)

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        arch = cls.peer_arch(params, context)
        if arch not in list_models():
            given = params.get("peer")
            what = f"{given!r}" if given is not None else f"None (the student's architecture, {arch!r})"
            raise ValueError(
                f"{where}.peer: {what} is not allowed; expected one of the architectures "
                f"{', '.join(list_models())}, or None for the student's own"
            )

    def __init__(
        self,
        context: Context,
        peer: Annotated[str | None, Choice(*list_models())] = None,
        beta: Annotated[float, Range(ge=0)] = 1.0,
        gamma: Annotated[float, Range(ge=0)] = 1.0,
    ):
        super().__init__(context, gamma=gamma)
        self.check_fit({"peer": peer}, context, "methods.dml", 0)
        self.beta = float(beta)
        self.peer_name = self.peer_arch({"peer": peer}, context)
        assert self.peer_name is not None  # check_fit refused a missing architecture
        self.peer = create_model(self.peer_name, context.num_classes)
        self._correct: Tensor | None = None
        self._seen = 0

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self._correct, self._seen = None, 0

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        peer_logits = self.peer(batch.images.detach())
        log_s, log_p = F.log_softmax(student.logits, dim=1), F.log_softmax(peer_logits, dim=1)
        with torch.no_grad():
            correct = (peer_logits.argmax(1) == batch.labels).sum()
            self._correct = correct if self._correct is None else self._correct + correct
            self._seen += len(batch.labels)
        return {
            "dml": self.beta * kl_to(log_p, log_s),  # the student's mimicry term, KL(p_p || p_s)
            "peer_ce": self.gamma * F.cross_entropy(peer_logits, batch.labels),
            "peer_dml": self.beta * kl_to(log_s, log_p),
        }  # the peer's, KL(p_s || p_p)

    def epoch_summary(self) -> dict[str, Any]:
        if not self._seen:
            return {}
        assert self._correct is not None  # counted with every image seen
        return {"peer_train_top1": float(self._correct) / self._seen}
