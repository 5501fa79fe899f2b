"""The AFD paper's Figure 4: activation maps of the teacher and of students trained with ATT, L2T and AFD.

For the same few test images, each row is one network (the teacher, then
the students of the grid's ``at``, ``l2t`` and ``afd`` runs, first seed) and
each column one stage output (RepDistiller's ``feat[1:-1]``, the features
ATT and L2T distil). A map is AT's spatial attention of that output,
``F_sum^2 = mean_c A_c^2`` (Zagoruyko & Komodakis, the paper's activation
maps), scaled to [0, 1] per map. Each student map names the teacher stage it
is linked to, in the method's colour:

* ATT: stage i to stage i (RepDistiller's AT pairs the stages in order);
* L2T: the teacher stage whose gate (L2T-ww's per-pair weight ``lw``,
  averaged over the last epoch, as the method records it) is largest;
* AFD: the teacher stage holding most of the attention α of the last epoch
  that the student stage's candidate blocks give (α summed over the blocks of
  each teacher stage, block names ``layer<k>.<j>`` giving the stage).

The paper draws boxes between linked maps; here the link is written under
each student map ("← teacher layer2").
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .methods.afd import AttentionRecord  # noqa: E402
from .models.features import block_names  # noqa: E402

METHODS = {"at": "ATT", "l2t": "L2T", "afd": "AFD"}  # method type -> the paper's row label
COLOURS = {"ATT": "#1f77b4", "L2T": "#2ca02c", "AFD": "#d62728"}


def attention_maps(model: torch.nn.Module, images: torch.Tensor) -> list[np.ndarray]:
    """AT's F_sum^2 of every stage output: one H x W map per image and stage (list over stages of N x H x W)."""
    with torch.no_grad():
        stages = model.eval()(images, with_features=True).stages
    maps = []
    for feature in stages:
        energy = feature.float().pow(2).mean(1)
        low = energy.flatten(1).min(1).values[:, None, None]
        high = energy.flatten(1).max(1).values[:, None, None]
        maps.append(((energy - low) / (high - low).clamp_min(1e-12)).cpu().numpy())
    return maps


def stage_of_blocks(model: torch.nn.Module, images: torch.Tensor) -> list[int]:
    """The stage (0-based ``k - 1`` of ``layer<k>.<j>``) of each block."""
    with torch.no_grad():
        blocks = model.eval()(images[:1], with_features=True).blocks
    return [int(name.split(".")[0].removeprefix("layer")) - 1 for name in block_names(blocks)]


def links(
    method: str,
    summary: dict,
    teacher_stages: int,
    student_stages: int,
    teacher_block_stage: list[int] | None = None,
    student_block_stage: list[int] | None = None,
) -> list[int] | None:
    """For each student stage, the teacher stage its strongest link reaches (None: the run recorded none)."""
    attention = AttentionRecord.of(summary) if method == "afd" else None
    if (method == "l2t" and "gates" not in summary) or (
        method == "afd" and (attention is None or attention.attention is None)
    ):
        return None
    if method == "at":
        return [min(s, teacher_stages - 1) for s in range(student_stages)]
    if method == "l2t":
        gates = np.asarray(summary["gates"])  # teacher stages x student stages
        return [int(gates[:, s].argmax()) for s in range(student_stages)]
    if method == "afd":
        assert teacher_block_stage is not None and student_block_stage is not None  # AFD's links need both
        assert attention is not None  # checked above
        alpha = np.asarray(attention.attention)  # teacher candidates x student candidates
        by_stage = np.zeros((teacher_stages, student_stages))
        for i, t in enumerate(attention.teacher_candidates):
            for j, s in enumerate(attention.student_candidates):
                by_stage[teacher_block_stage[t], student_block_stage[s]] += alpha[i, j]
        return [int(by_stage[:, s].argmax()) for s in range(student_stages)]
    raise ValueError(f"no links for method {method!r}; known: {', '.join(METHODS)}")


def plot(
    rows: list[tuple[str, list[np.ndarray], list[int] | None]], images: np.ndarray, title: str, path: str | Path
) -> None:
    """``rows``: (label, maps per stage (N x H x W each), linked teacher stage per stage or None) per network;
    ``images``: N x H x W x 3 in [0, 1], shown in the first column."""
    n_images, n_stages = images.shape[0], max(len(maps) for _, maps, _ in rows)
    figure, axes = plt.subplots(
        len(rows), n_images * (n_stages + 1), figsize=(1.5 * n_images * (n_stages + 1), 1.7 * len(rows)), squeeze=False
    )
    for r, (label, maps, linked) in enumerate(rows):
        for n in range(n_images):
            column = n * (n_stages + 1)
            axes[r, column].imshow(images[n])
            axes[r, column].set_ylabel(label, color=COLOURS.get(label, "black"), fontsize=9)
            if r == 0:
                axes[r, column].set_title(f"image {n + 1}", fontsize=8)
            for s, stage_maps in enumerate(maps):
                axis = axes[r, column + 1 + s]
                axis.imshow(stage_maps[n], cmap="jet", vmin=0, vmax=1)
                if r == 0:
                    axis.set_title(f"layer{s + 1}", fontsize=8)
                if linked is not None:
                    axis.set_xlabel(f"← teacher layer{linked[s] + 1}", color=COLOURS.get(label, "black"), fontsize=7)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
