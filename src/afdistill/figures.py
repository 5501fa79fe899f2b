"""Figures: AFD link heatmaps, learning curves, and the AFD paper's Figures 3, 5 and 6.

The paper-figure functions take plain data (names, numpy arrays, lists), never
files of the pipeline, and write one PNG:

- :func:`plot_attention_history` (Figure 3): the attention alpha of chosen
  training epochs beside the manual links, one row per teacher -> student pair;
- :func:`plot_accuracy_against_beta` (Figure 5): accuracy against beta, log axis,
  mean +- std over seeds, the paper's values beside;
- :func:`plot_manual_against_attention` (Figure 6): manual links against the
  converged attention, for every pair.

Link matrices are given as the method stores them, teacher x student (T x S);
they are drawn as in the paper, rows student features and columns teacher
features, labelled with feature names (``layer2.3``); lines (green, as in the
paper) separate features of different stages (the ``layer<k>`` of the names,
where size and channels change).
"""
from __future__ import annotations

from dataclasses import dataclass, field
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


LINK_COLOURS = "Blues"  # white (no link) to dark blue (alpha = 1); the green stage lines stay visible on it
STAGE_LINE = "#2ca02c"


@dataclass
class AttentionHistory:
    """One pair's links for Figure 3: per-epoch mean alpha (T x S each) and the manual links (T x S)."""

    title: str
    teacher_names: list[str]
    student_names: list[str]
    manual: np.ndarray
    epochs: list[int]
    attention: list[np.ndarray]


@dataclass
class LinkComparison:
    """One pair's manual and converged attention links for Figure 6 (T x S each)."""

    title: str
    teacher_names: list[str]
    student_names: list[str]
    manual: np.ndarray
    attention: np.ndarray


@dataclass
class BetaSeries:
    """One line of Figure 5: accuracy (fractions, as the metrics hold them) per beta, over seeds."""

    label: str
    betas: list[float]
    accuracies: list[list[float]]  # per beta, one value per seed
    paper: dict[float, float] = field(default_factory=dict)  # beta -> the paper's accuracy (fraction), if printed


def links_matrix(n_teacher: int, n_student: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """A T x S matrix with 1 at each (teacher, student) position of ``pairs``."""
    matrix = np.zeros((n_teacher, n_student))
    for t, s in pairs:
        matrix[t, s] = 1.0
    return matrix


def _stage_bounds(names: list[str]) -> list[float]:
    stages = [name.split(".")[0] for name in names]
    return [i - 0.5 for i in range(1, len(stages)) if stages[i] != stages[i - 1]]


def _tick_labels(axis, names: list[str], which: str) -> None:
    step = max(1, -(-len(names) // 14))  # at most ~14 labels an axis
    positions = list(range(0, len(names), step))
    if positions[-1] != len(names) - 1:  # always name the deepest feature, without crowding its neighbour
        positions[-1 if len(positions) > 1 and len(names) - 1 - positions[-1] < step else len(positions):] = \
            [len(names) - 1]
    labels = [names[i] for i in positions]
    if which == "x":
        axis.set_xticks(positions)
        axis.set_xticklabels(labels, rotation=90, fontsize=6)
    else:
        axis.set_yticks(positions)
        axis.set_yticklabels(labels, fontsize=6)


def _draw_links(axis, matrix: np.ndarray, teacher_names: list[str], student_names: list[str], title: str,
                ylabel: bool = True):
    """Draw a T x S matrix as S rows x T columns; returns the image."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(teacher_names), len(student_names)):
        raise ValueError(f"{title}: a {matrix.shape} link matrix for {len(teacher_names)} teacher and "
                         f"{len(student_names)} student features (expected teacher x student)")
    image = axis.imshow(matrix.T, cmap=LINK_COLOURS, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    for bound in _stage_bounds(teacher_names):
        axis.axvline(bound, color=STAGE_LINE, linewidth=1.0)
    for bound in _stage_bounds(student_names):
        axis.axhline(bound, color=STAGE_LINE, linewidth=1.0)
    axis.set_title(title, fontsize=8)
    axis.set_xlabel("teacher feature", fontsize=7)
    _tick_labels(axis, teacher_names, "x")
    _tick_labels(axis, student_names, "y")
    if ylabel:
        axis.set_ylabel("student feature", fontsize=7)
    return image


def _pick_epochs(count: int, columns: int) -> list[int]:
    if count <= columns:
        return list(range(count))
    return sorted({round(i * (count - 1) / (columns - 1)) for i in range(columns)})


def plot_attention_history(histories: list[AttentionHistory], path: str | Path, columns: int = 5,
                           title: str = "Manual and attention-based feature links during training") -> None:
    """Figure 3: per pair (row), the manual links, then alpha averaged over chosen training epochs.

    ``columns`` epochs are shown per pair, evenly spaced from the first to the last recorded.
    """
    if not histories:
        raise ValueError("plot_attention_history: no pairs to draw")
    width = 1 + min(columns, max(len(h.epochs) for h in histories))
    figure, axes = plt.subplots(len(histories), width, figsize=(2.3 * width + 1.0, 2.6 * len(histories) + 0.6),
                                squeeze=False, constrained_layout=True)
    image = None
    for row, history in zip(axes, histories):
        if len(history.epochs) != len(history.attention):
            raise ValueError(f"{history.title}: {len(history.epochs)} epochs but {len(history.attention)} matrices")
        image = _draw_links(row[0], history.manual, history.teacher_names, history.student_names,
                            f"{history.title}\nmanual (fixed)")
        picks = _pick_epochs(len(history.epochs), width - 1)
        for axis, index in zip(row[1:], picks):
            _draw_links(axis, history.attention[index], history.teacher_names, history.student_names,
                        f"AFD, epoch {history.epochs[index]}", ylabel=False)
        for axis in row[1 + len(picks):]:
            axis.axis("off")
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="link strength (alpha)")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=130)
    plt.close(figure)


def plot_accuracy_against_beta(series: list[BetaSeries], path: str | Path,
                               title: str = "Sensitivity to beta") -> None:
    """Figure 5: test top-1 (%) against beta on a log axis, mean +- std over seeds; the paper's values as
    open markers on a dashed line of the same colour."""
    figure, axis = plt.subplots(figsize=(6.0, 3.8), constrained_layout=True)
    colours = plt.get_cmap("tab10").colors
    for index, line in enumerate(series):
        if len(line.betas) != len(line.accuracies):
            raise ValueError(f"{line.label}: {len(line.betas)} betas but {len(line.accuracies)} accuracy lists")
        colour = colours[index % len(colours)]
        order = np.argsort(line.betas)
        betas = np.asarray(line.betas, dtype=float)[order]
        means = np.array([100 * np.mean(line.accuracies[i]) for i in order])
        stds = np.array([100 * np.std(line.accuracies[i]) for i in order])
        axis.errorbar(betas, means, yerr=stds, color=colour, marker="o", capsize=3, linewidth=1.5,
                      label=f"{line.label} (ours, mean ± std)")
        if line.paper:
            paper_betas = sorted(line.paper)
            axis.plot(paper_betas, [100 * line.paper[b] for b in paper_betas], color=colour, linestyle="--",
                      marker="s", markerfacecolor="white", linewidth=1.0, label=f"{line.label} (paper)")
    axis.set_xscale("log")
    ticks = sorted({float(b) for line in series for b in [*line.betas, *line.paper]})
    axis.set_xticks(ticks)
    axis.set_xticklabels([f"{b:g}" for b in ticks], fontsize=7)
    axis.minorticks_off()
    axis.set_xlabel("β (weight of the AFD loss, log scale)")
    axis.set_ylabel("test top-1 accuracy (%)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7)
    figure.savefig(path, dpi=130)
    plt.close(figure)


def plot_manual_against_attention(comparisons: list[LinkComparison], path: str | Path, pairs_per_row: int = 2,
                                  title: str = "Manual and attention-based feature links") -> None:
    """Figure 6: for every pair, its manual links beside the converged attention links."""
    if not comparisons:
        raise ValueError("plot_manual_against_attention: no pairs to draw")
    rows = -(-len(comparisons) // pairs_per_row)
    figure, axes = plt.subplots(rows, 2 * pairs_per_row, figsize=(4.6 * pairs_per_row + 1.0, 3.0 * rows + 0.6),
                                squeeze=False, constrained_layout=True)
    image = None
    for index, pair in enumerate(comparisons):
        row, column = divmod(index, pairs_per_row)
        manual_axis, attention_axis = axes[row][2 * column], axes[row][2 * column + 1]
        image = _draw_links(manual_axis, pair.manual, pair.teacher_names, pair.student_names,
                            f"{pair.title}: manual")
        _draw_links(attention_axis, pair.attention, pair.teacher_names, pair.student_names,
                    f"{pair.title}: attention", ylabel=False)
    for index in range(len(comparisons), rows * pairs_per_row):
        row, column = divmod(index, pairs_per_row)
        axes[row][2 * column].axis("off")
        axes[row][2 * column + 1].axis("off")
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="link strength (alpha)")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=130)
    plt.close(figure)
