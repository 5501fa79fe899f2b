"""Figures: AFD link heatmaps (like the paper's Figure 3) and learning curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_links(panels: list[tuple[str, np.ndarray]], title: str, path: str | Path) -> None:
    """Heatmaps of student x teacher link strength; rows are student features, columns teacher features."""
    count = len(panels)
    figure, axes = plt.subplots(1, count, figsize=(3.0 * count + 1.0, 3.4), squeeze=False, sharey=True,
                                constrained_layout=True)
    vmax = max(float(np.max(matrix)) for _, matrix in panels)
    for index, (axis, (name, matrix)) in enumerate(zip(axes[0], panels)):
        image = axis.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("teacher feature")
        if index == 0:
            axis.set_ylabel("student feature")
        rows, cols = matrix.shape
        axis.set_xticks(range(0, cols, max(1, cols // 9)))
        axis.set_yticks(range(0, rows, max(1, rows // 9)))
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="alpha")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_curves(curves: dict[str, list[tuple[int, float]]], title: str, ylabel: str, path: str | Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 3.8))
    for name, points in curves.items():
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, label=name, linewidth=1.2)
    axis.set_xlabel("epoch")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
