"""A training step replayed as one CUDA graph.

ResNet20 at batch 64 keeps an H100 busy for a few milliseconds per step, but
an eager step launches well over a thousand small kernels (teacher and
student passes, the method's loss, backward, the optimiser) and the host
spends far longer issuing them than the GPU spends running them. Captured
once as a graph, the whole step costs one launch.

A step qualifies when every call with the same input shapes launches the
same kernels on the same memory: no host synchronisation, no Python state
carried from one step to the next, no random numbers (augmentation stays
outside the step). Methods say whether theirs does (``Capabilities.cuda_graphs``).
"""

from __future__ import annotations

from typing import Callable

import torch


class GraphedStep:
    """Call ``step(*inputs)`` eagerly for a few warm-up batches, then capture it and replay it.

    The optimiser's learning rate is baked into the captured kernels, so a new
    learning rate (the schedule's decay at an epoch boundary) triggers a new
    capture. Inputs of another shape than the first full batch (an epoch's
    last, partial batch) run eagerly; they update the same parameters and
    optimiser state in place, so eager and replayed steps interleave freely.
    Outputs of a replayed step are the graph's static tensors: read them
    before the next call.
    """

    def __init__(self, step: Callable, optimizer: torch.optim.Optimizer, warmup: int = 3):
        self.step = step
        self.optimizer = optimizer
        self.warmup = warmup  # eager steps on a side stream first: lazy initialisation, optimiser state
        self.shapes: tuple | None = None
        self.lrs: tuple | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.outputs = None
        self.eager_steps = 0
        self.captures = 0

    def __call__(self, *inputs: torch.Tensor):
        shapes = tuple((x.shape, x.dtype, x.stride()) for x in inputs)
        if self.shapes is None:
            self.shapes = shapes
        if shapes != self.shapes:
            return self.step(*inputs)
        lrs = tuple(group["lr"] for group in self.optimizer.param_groups)
        if self.graph is not None and lrs == self.lrs:
            for static, x in zip(self.inputs, inputs):
                static.copy_(x)
            self.graph.replay()
            return self.outputs
        if self.eager_steps < self.warmup:
            self.eager_steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                outputs = self.step(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return outputs
        return self._capture(inputs, lrs)

    def _capture(self, inputs: tuple[torch.Tensor, ...], lrs: tuple):
        self.graph = self.outputs = None  # frees the previous capture's memory
        self.inputs = tuple(x.clone() for x in inputs)
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then written, not accumulated, by the graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.step(*self.inputs)
        self.graph, self.lrs = graph, lrs
        self.captures += 1
        graph.replay()  # capturing records the step without running it
        return self.outputs
