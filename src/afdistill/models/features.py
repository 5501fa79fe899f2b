"""The one feature interface every model in the registry implements.

``model(x)`` returns logits. ``model(x, with_features=True)`` returns a
:class:`Features` record holding references to tensors the forward pass
computes anyway (no copies), so distillation methods can pick what they need
without per-model code in the training loop:

``blocks``
    One tensor per residual block (per conv stage for plain nets), in depth
    order, *as the next layer sees it*: after the ReLU for post-activation
    ResNets, after the next BN+ReLU for pre-activation WideResNets. These are
    exactly the per-block features clovaai/attention-feature-distillation taps
    (its models return ``[stem] + blocks + [pooled]``); AFD uses the subset
    ``model.afd_candidates`` indexes.
``stages``
    One tensor per stage (group of blocks) as HobbitLong/RepDistiller returns
    them in ``feat[1:-1]`` (post-ReLU for ResNets, the raw residual sum for
    WideResNets). FitNet, AT and MHGD use these.
``stem``
    Output of the first convolution stage (RepDistiller's ``feat[0]``).
``pooled``
    The globally pooled penultimate embedding fed to the classifier
    (RepDistiller's ``feat[-1]``); CRD and RKD use it.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Features:
    logits: Tensor
    blocks: list[Tensor]
    stages: list[Tensor]
    stem: Tensor
    pooled: Tensor

    def float(self) -> "Features":
        """The same features in fp32 (for losses after a reduced-precision forward pass)."""
        converted: dict[int, Tensor] = {}  # blocks and stages share tensors: convert each once

        def convert(tensor: Tensor) -> Tensor:
            if id(tensor) not in converted:
                converted[id(tensor)] = tensor.float()
            return converted[id(tensor)]

        return Features(logits=convert(self.logits), blocks=[convert(f) for f in self.blocks],
                        stages=[convert(f) for f in self.stages], stem=convert(self.stem), pooled=convert(self.pooled))
