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
``preact_stages``
    One tensor per stage, the same shapes as ``stages``: the stage's output
    *before* its last ReLU, as RepDistiller's models return them with
    ``preact=True`` and megvii-research/mdistiller's as
    ``feats["preact_feats"][1:]`` (HobbitLong/RepDistiller b84f547c,
    megvii-research/mdistiller a08d46f1, ``mdistiller/models/cifar/*.py``).
    ReviewKD compares with the teacher's. Per architecture:

    * post-activation ResNets (CIFAR, ResNet18/34/50, the ImageNet ones):
      the last block's residual sum before its final ReLU, so
      ``relu(preact_stages[k])`` is ``stages[k]``;
    * VGG: the stage's last conv + BN output before its ReLU (likewise);
    * ShuffleNetV1: the last block's sum (or concatenation, in a block that
      halves the resolution) before its final ReLU (likewise);
    * ShuffleNetV2: the last block's ``cat([kept half, branch BN output])``
      before the branch's ReLU *and before the channel shuffle*, as the
      official code returns it; so ``relu(preact_stages[k])`` is ``stages[k]``
      with its channels unshuffled. This is the one field any model builds
      with a copy (one concatenation per stage, made only when features are
      asked for);
    * WideResNets (pre-activation): the stage's raw residual sum after the BN
      the next layer applies to it (the next group's first ``bn1``, or the
      head's ``bn1``) and before that layer's ReLU; ``relu(preact_stages[k])``
      is the block feature that ends stage ``k`` in ``blocks``;
    * MobileNetV2: no ReLU ends its stages (linear bottlenecks), and the
      official models return the same tensors with or without ``preact``:
      ``preact_stages`` holds the ``stages`` tensors themselves.

    Apart from ShuffleNetV2's concatenations these are references to tensors
    the forward pass computes anyway (no extra arithmetic; the ReLUs after
    them are not in place, so they keep their negative values). ``None`` in a
    hand-built record (tests) means "not available".

:func:`block_names` names the blocks ``layer<k>.<j>`` for reports and figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor


class _Fp32View(Sequence):
    """A list of tensors seen in fp32, each converted only when a method first reads it."""

    def __init__(self, tensors: Sequence[Tensor], cache: dict[int, Tensor]):
        self.source, self._cache = tensors, cache

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        tensor = self.source[index]
        if id(tensor) not in self._cache:
            self._cache[id(tensor)] = tensor.float()
        return self._cache[id(tensor)]


def as_computed(maps: Sequence[Tensor]) -> Sequence[Tensor]:
    """The tensors behind a :meth:`Features.float` view, in the precision the network ran in.

    For a method that reduces maps itself and wants to skip the fp32 copies
    (AFD, through ``methods.maps.energy_and_mean``); plain sequences come back as they are.
    """
    return maps.source if isinstance(maps, _Fp32View) else maps


@dataclass
class Features:
    logits: Tensor
    blocks: Sequence[Tensor]
    stages: Sequence[Tensor]
    stem: Tensor
    pooled: Tensor
    preact_stages: Sequence[Tensor] | None = None

    def float(self) -> "Features":
        """The same features in fp32, for losses after a reduced-precision forward pass.

        Block, stage and pre-activation maps are converted when a method reads
        them (most read a few), each once: the lists share tensors.
        """
        cache: dict[int, Tensor] = {}
        preact = None if self.preact_stages is None else _Fp32View(self.preact_stages, cache)
        return Features(
            logits=self.logits.float(),
            blocks=_Fp32View(self.blocks, cache),
            stages=_Fp32View(self.stages, cache),
            stem=self.stem.float(),
            pooled=self.pooled.float(),
            preact_stages=preact,
        )


def run_stages(groups: Sequence, out: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor]]:
    """Run groups of blocks that each return ``(output, pre-activation)``: the last output, every block's output,
    each group's output and each group's last pre-activation (ResNets, MobileNet v1)."""
    blocks, stages, preact_stages = [], [], []
    for group in groups:
        for block in group:
            out, preact = block(out)
            blocks.append(out)
        stages.append(out)
        preact_stages.append(preact)
    return out, blocks, stages, preact_stages


def block_names(blocks: Sequence) -> list[str]:
    """Names of a network's blocks, ``layer<k>.<j>``, from anything with a ``.shape`` (N x C x H x W).

    ``k`` (from 1) counts the runs of consecutive blocks at one spatial
    resolution, ``j`` (from 0) is the position within the run. For the CIFAR
    ResNets and ResNet18/34 these are the modules' own names (``layer2.3`` is
    ``model.layer2[3]``); for WideResNets ``layer2.3`` is ``block2.layer[3]``;
    for VGG and MobileNetV2 ``k`` counts resolutions, not the modules' groups.
    """
    names, stage, position, previous = [], 0, 0, None
    for block in blocks:
        size = tuple(block.shape[-2:])
        if size != previous:
            stage, position, previous = stage + 1, 0, size
        names.append(f"layer{stage}.{position}")
        position += 1
    return names
