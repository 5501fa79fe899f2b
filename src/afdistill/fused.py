"""Several students of one architecture run as one network (``runtime.fuse``), the way ``torch.func`` documents
model ensembling: their weights stacked, ``vmap`` over ``functional_call``, so that each layer is one grouped
kernel for all of them instead of one kernel each (what HFTA does by hand).

A pack's step then goes: :meth:`FusedStudents.compute` runs the fused forward pass on the batch and hands each
student its own :class:`~afdistill.models.Features` as fresh leaf tensors; each student's method computes its
terms and back-propagates them as alone, which stops at those leaves; :meth:`FusedStudents.backward` then takes
every student's gradients at its leaves through the fused pass in one backward pass, into each student's own
parameters, before each optimiser steps. Only methods whose step reaches the student through those features
(``Capabilities.fuses``) take part. Each student keeps its own parameters, optimiser and checkpoint; BatchNorm
updates its running statistics in the stacked copies, which are written back after every forward pass.

Grouped kernels sum in another order than single ones, so the results equal the unfused ones up to rounding
(``tests/test_fused.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .models import Features

_FIELDS = ("logits", "blocks", "stages", "stem", "pooled", "preact_stages")


class FusedStudents:
    """The students (same architecture and options, in training mode) that one fused pass runs."""

    def __init__(self, networks: Sequence[nn.Module]):
        self.networks = list(networks)
        self.skeleton = copy.deepcopy(self.networks[0]).to("meta")  # the architecture, without weights
        self.parameters = [dict(network.named_parameters()) for network in self.networks]
        self.buffers = [dict(network.named_buffers()) for network in self.networks]
        self.layout: dict[str, list[int] | int | None] = {}  # where each Features field is among the outputs
        self.outputs: list[Tensor] = []  # the fused pass's outputs, stacked over the students
        self.leaves: list[list[Tensor]] = []  # per student: its slices of them, as leaves its method reads
        self.features: dict[int, Features] = {}

    def compute(self, images: Tensor, bf16: bool) -> None:
        """The fused forward pass on a batch (bfloat16 autocast with ``bf16``); every student's features kept for
        its step (:meth:`features_of`)."""
        # NCHW, maps and weights: on channels-last maps adaptive pooling restrides its output in place, which vmap
        # runs student by student (its fallback), and grouped kernels gain nothing from that layout
        images = images.contiguous()
        params = {name: torch.stack([p[name] for p in self.parameters]).contiguous() for name in self.parameters[0]}
        buffers = {name: torch.stack([b[name] for b in self.buffers]) for name in self.buffers[0]}
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            # randomness="error": a network that draws random numbers (dropout) would not draw each student's own
            self.outputs = list(vmap(self._run, in_dims=(0, 0, None), randomness="error")(params, buffers, images))
        with torch.no_grad():  # BatchNorm updated the stacked running statistics; each student keeps its own
            for index, own in enumerate(self.buffers):
                for name, buffer in own.items():
                    buffer.copy_(buffers[name][index])
        self.leaves = [[out[index].detach().requires_grad_() for out in self.outputs] for index in range(len(self))]
        self.features = {id(network): self._features(leaves) for network, leaves in zip(self.networks, self.leaves)}

    def features_of(self, network: nn.Module) -> Features:
        return self.features[id(network)]

    def backward(self) -> None:
        """The gradients every student's method left at its leaves, through the fused pass, into each student's
        parameters (accumulated, as a backward pass does)."""
        outputs, gradients = [], []
        for position, stacked in enumerate(self.outputs):
            grads = [leaves[position].grad for leaves in self.leaves]
            if all(grad is None for grad in grads):
                continue
            outputs.append(stacked)
            gradients.append(torch.stack([torch.zeros_like(stacked[0]) if grad is None else grad for grad in grads]))
        if outputs:
            torch.autograd.backward(outputs, gradients)
        self.clear()

    def clear(self) -> None:
        self.outputs, self.leaves, self.features = [], [], {}

    def __len__(self) -> int:
        return len(self.networks)

    def _run(self, params: dict[str, Tensor], buffers: dict[str, Tensor], images: Tensor) -> tuple[Tensor, ...]:
        """One student's forward pass, its features as a flat tuple of distinct tensors (the lists share some:
        a block that ends a stage is in both, and a method may rely on that)."""
        features = functional_call(self.skeleton, (params, buffers), (images,), {"with_features": True})
        distinct: dict[int, int] = {}
        tensors: list[Tensor] = []

        def place(tensor: Tensor) -> int:
            if id(tensor) not in distinct:
                distinct[id(tensor)] = len(tensors)
                tensors.append(tensor)
            return distinct[id(tensor)]

        for name in _FIELDS:
            value = getattr(features, name)
            if value is None:
                self.layout[name] = None
            elif isinstance(value, Tensor):
                self.layout[name] = place(value)
            else:
                self.layout[name] = [place(tensor) for tensor in value]
        return tuple(tensors)

    def _features(self, tensors: list[Tensor]) -> Features:
        fields: dict[str, Any] = {}
        for name, where in self.layout.items():
            if where is None:
                fields[name] = None
            elif isinstance(where, int):
                fields[name] = tensors[where]
            else:
                fields[name] = [tensors[index] for index in where]
        return Features(**fields)


def fusable(networks: Sequence[nn.Module]) -> bool:
    """Whether these networks can run as one: the same parameter and buffer names, shapes and types."""

    def shapes(network: nn.Module) -> list[tuple]:
        return [(name, tuple(t.shape), t.dtype) for name, t in [*network.named_parameters(), *network.named_buffers()]]

    first = shapes(networks[0])
    return all(type(network) is type(networks[0]) and shapes(network) == first for network in networks[1:])
