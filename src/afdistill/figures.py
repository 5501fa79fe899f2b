"""Figures: AFD link heatmaps, learning curves, and the AFD paper's Figures 3, 5 and 6.

Every function takes plain data (names, numpy arrays, lists, mappings), never
files of the pipeline, and writes one PNG:

- :func:`plot_links`: a link-finding run's attention at a few epochs, side by
  side, on the same axes as Figures 3 and 6;
- :func:`plot_curves`: test top-1 (%) per epoch for every method of a pair, the
  mean over seeds as a line and the min-max over seeds as a band, the teacher
  as a dashed grey line; each method has its own (colour, line style), see
  :func:`line_styles`, and the legend sits right of the axes;
- :func:`plot_attention_history` (Figure 3): the attention alpha of chosen
  training epochs beside the manual links, one row per teacher -> student pair;
- :func:`plot_accuracy_against_beta` (Figure 5): accuracy against beta, log axis,
  mean +- std over seeds, the paper's values beside;
- :func:`plot_manual_against_attention` (Figure 6): manual links against the
  converged attention, for every pair, in balanced rows with no empty panels.

Link matrices are given to the paper figures as the method stores them,
teacher x student (T x S), to :func:`plot_links` already as S x T; all are
drawn as in the paper, rows student features and columns teacher features,
labelled with feature names (``layer2.3``); lines (green, as in the paper)
separate features of different stages (the ``layer<k>`` of the names, where
size and channels change).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.gridspec import GridSpec  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LINK_COLOURS = "Blues"  # white (no link) to dark blue (alpha = 1); the green stage lines stay visible on it
STAGE_LINE = "#2ca02c"
TEACHER_LINE: dict[str, Any] = {"color": "0.45", "linestyle": "--", "linewidth": 1.6}
# Crossed with the colours (:func:`line_styles`): ten colours alone made methods 1 and 11 look the same.
LINE_STYLES = ("-", "--", "-.", ":")


def _palette(size: int) -> list:
    """Qualitative colours without grey (grey is the teacher's line), enough for ``size`` (colour, style)
    pairs: tab10's 9, tab20's 18, or, past 72 lines, evenly spaced colours of a continuous map."""
    for name in ("tab10", "tab20"):
        # drop the greys (r = g = b); ignore: tab10 and tab20 are ListedColormaps, get_cmap's stub says Colormap
        colours = [c for c in plt.get_cmap(name).colors if len(set(c)) > 1]  # type: ignore[attr-defined]
        if size <= len(colours) * len(LINE_STYLES):
            return colours
    return [tuple(c) for c in plt.get_cmap("turbo")(np.linspace(0.0, 1.0, -(-size // len(LINE_STYLES))))]


def line_styles(count: int) -> list[tuple[tuple[float, ...], str]]:
    """``count`` distinct (colour, line style) pairs, in order: every colour solid first, then every colour
    dashed, and so on, so that up to 9 lines are all solid and two lines never look the same."""
    colours = _palette(count)
    return [(tuple(colours[i % len(colours)]), LINE_STYLES[i // len(colours)]) for i in range(count)]


def _link_ticks(axis, names: Sequence[str] | None, size: int, which: str) -> None:
    """Name the features of an axis as Figures 3 and 6 do, with stage lines; without names, number them."""
    if names is None:
        names = [str(i) for i in range(size)]
    else:
        names = list(names)
        lines = axis.axvline if which == "x" else axis.axhline
        for bound in _stage_bounds(names):
            lines(bound, color=STAGE_LINE, linewidth=1.0)
    _tick_labels(axis, names, which)


def plot_links(
    panels: list[tuple[str, np.ndarray]],
    title: str,
    path: str | Path,
    teacher_names: Sequence[str] | None = None,
    student_names: Sequence[str] | None = None,
) -> None:
    """Heatmaps of student x teacher link strength; rows are student features, columns teacher features.

    With ``teacher_names`` / ``student_names`` (``layer2.3``) the axes are labelled and split by stage as in
    Figures 3 and 6; without them, the features are numbered.
    """
    count = len(panels)
    for name, matrix in panels:
        rows, cols = np.shape(matrix)
        if (student_names is not None and rows != len(student_names)) or (
            teacher_names is not None and cols != len(teacher_names)
        ):
            raise ValueError(
                f"{name}: a {(rows, cols)} link matrix for "
                f"{'?' if teacher_names is None else len(teacher_names)} teacher and "
                f"{'?' if student_names is None else len(student_names)} student features "
                "(expected student x teacher)"
            )
    figure, axes = plt.subplots(
        1, count, figsize=(3.0 * count + 1.0, 3.6), squeeze=False, sharey=True, constrained_layout=True
    )
    # One scale for all panels, from 0 to the strongest link, so that the epochs compare and a softmax spread
    # over many features is not washed out.
    vmax = max(float(np.max(matrix)) for _, matrix in panels) or 1.0
    for index, (axis, (name, matrix)) in enumerate(zip(axes[0], panels)):
        matrix = np.asarray(matrix, dtype=float)
        image = axis.imshow(matrix, cmap=LINK_COLOURS, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("teacher feature", fontsize=7)
        _link_ticks(axis, teacher_names, matrix.shape[1], "x")
        if index == 0:  # the y axis is shared: label and tick it once
            axis.set_ylabel("student feature", fontsize=7)
            _link_ticks(axis, student_names, matrix.shape[0], "y")
        elif student_names is not None:
            for bound in _stage_bounds(list(student_names)):
                axis.axhline(bound, color=STAGE_LINE, linewidth=1.0)
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="alpha")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _curve_limits(
    lines: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], teacher: float | None
) -> tuple[float, float]:
    """A y range (percent) for the curves: zoomed on the late epochs, where methods differ by a point or two,
    so the first epochs' low accuracies do not flatten them; it still holds every line's last point and
    the teacher."""
    late = np.concatenate([low[len(low) // 2 :] for _, _, low, _ in lines])
    bottom = min(float(np.percentile(late, 5)), *(float(mean[-1]) for _, mean, _, _ in lines))
    top = max(float(high.max()) for _, _, _, high in lines)
    if teacher is not None:
        bottom, top = min(bottom, teacher), max(top, teacher)
    span = max(top - bottom, 1.0)
    return max(0.0, bottom - 0.08 * span), top + 0.05 * span


def plot_curves(
    curves: Mapping[str, Mapping[int, Sequence[float]]],
    title: str,
    path: str | Path,
    teacher: float | None = None,
    ylabel: str = "test top-1 (%)",
) -> None:
    """curves: row label -> epoch -> that epoch's test top-1 of each seed (fractions in [0, 1]).
    Draws each label's mean over seeds as a line and, where it has more than one seed, a min–max band;
    the teacher's final accuracy (fraction) as a dashed grey horizontal line labelled 'Teacher'.
    Values are shown in percent."""
    for label, by_epoch in curves.items():
        if not isinstance(by_epoch, Mapping):
            raise TypeError(
                f"plot_curves: {label!r} holds a {type(by_epoch).__name__}, not a mapping of "
                "epoch -> the test top-1 of each seed"
            )
    styles = line_styles(len(curves))
    lines = []  # (epochs, mean, min, max) in percent, per drawn label
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    for (label, by_epoch), (colour, style) in zip(curves.items(), styles):
        epochs = sorted(e for e, values in by_epoch.items() if len(values))
        if not epochs:
            continue  # its colour stays reserved, so the others keep theirs
        values = [100 * np.asarray(by_epoch[e], dtype=float) for e in epochs]
        mean = np.array([v.mean() for v in values])
        low, high = np.array([v.min() for v in values]), np.array([v.max() for v in values])
        # A single epoch is a point, which a bare line would not show: mark it, and its range as a segment.
        single = len(epochs) == 1
        axis.plot(
            epochs,
            mean,
            color=colour,
            linestyle=style,
            linewidth=1.3,
            label=label,
            marker="o" if single else None,
            markersize=4,
        )
        if max(len(v) for v in values) > 1:
            if single:
                axis.vlines(epochs, low, high, color=colour, alpha=0.4, linewidth=3)
            else:
                axis.fill_between(epochs, low, high, color=colour, alpha=0.12, linewidth=0)
        lines.append((np.array(epochs), mean, low, high))
    if teacher is not None:
        teacher = 100 * float(teacher)
        axis.axhline(teacher, label="Teacher", zorder=1, **TEACHER_LINE)
    if lines:
        axis.set_ylim(*_curve_limits(lines, teacher))
    shown = sorted({int(e) for epochs, _, _, _ in lines for e in epochs})
    if 0 < len(shown) <= 12:  # few epochs: tick each (a locator would put ticks between them)
        axis.set_xticks(shown)
        axis.set_xlim(shown[0] - 0.3, shown[-1] + 0.3)
    else:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    # Right of the axes, so no line is hidden; the teacher first, where the eye starts. Long legends wrap
    # into columns of at most 28 entries and the figure grows with them (savefig's tight box keeps it all).
    handles, labels = axis.get_legend_handles_labels()
    if teacher is not None:
        handles, labels = handles[-1:] + handles[:-1], labels[-1:] + labels[:-1]
    columns = max(1, math.ceil(len(handles) / 28))
    figure.set_size_inches(6.4, max(3.8, 0.16 * math.ceil(len(handles) / columns) + 0.8))
    axis.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize=7,
        ncol=columns,
        frameon=False,
    )
    figure.savefig(path, dpi=120, bbox_inches="tight")  # tight: the legend right of the axes is kept whole
    plt.close(figure)


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
        positions[-1 if len(positions) > 1 and len(names) - 1 - positions[-1] < step else len(positions) :] = [
            len(names) - 1
        ]
    labels = [names[i] for i in positions]
    if which == "x":
        axis.set_xticks(positions)
        axis.set_xticklabels(labels, rotation=90, fontsize=6)
    else:
        axis.set_yticks(positions)
        axis.set_yticklabels(labels, fontsize=6)


def _draw_links(
    axis, matrix: np.ndarray, teacher_names: list[str], student_names: list[str], title: str, ylabel: bool = True
):
    """Draw a T x S matrix as S rows x T columns; returns the image."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (len(teacher_names), len(student_names)):
        raise ValueError(
            f"{title}: a {matrix.shape} link matrix for {len(teacher_names)} teacher and "
            f"{len(student_names)} student features (expected teacher x student)"
        )
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


def plot_attention_history(
    histories: list[AttentionHistory],
    path: str | Path,
    columns: int = 5,
    title: str = "Manual and attention-based feature links during training",
) -> None:
    """Figure 3: per pair (row), the manual links, then alpha averaged over chosen training epochs.

    ``columns`` epochs are shown per pair, evenly spaced from the first to the last recorded.
    """
    if not histories:
        raise ValueError("plot_attention_history: no pairs to draw")
    width = 1 + min(columns, max(len(h.epochs) for h in histories))
    figure, axes = plt.subplots(
        len(histories),
        width,
        figsize=(2.3 * width + 1.0, 2.6 * len(histories) + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    image = None
    for row, history in zip(axes, histories):
        if len(history.epochs) != len(history.attention):
            raise ValueError(f"{history.title}: {len(history.epochs)} epochs but {len(history.attention)} matrices")
        image = _draw_links(
            row[0], history.manual, history.teacher_names, history.student_names, f"{history.title}\nmanual (fixed)"
        )
        picks = _pick_epochs(len(history.epochs), width - 1)
        for axis, index in zip(row[1:], picks):
            _draw_links(
                axis,
                history.attention[index],
                history.teacher_names,
                history.student_names,
                f"AFD, epoch {history.epochs[index]}",
                ylabel=False,
            )
        for axis in row[1 + len(picks) :]:
            axis.axis("off")
    assert image is not None  # histories is not empty
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="link strength (alpha)")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=130)
    plt.close(figure)


def plot_accuracy_against_beta(series: list[BetaSeries], path: str | Path, title: str = "Sensitivity to beta") -> None:
    """Figure 5: test top-1 (%) against beta on a log axis, mean +- std over seeds; the paper's values as
    open markers on a dashed line of the same colour."""
    figure, axis = plt.subplots(figsize=(6.0, 3.8), constrained_layout=True)
    # ignore: tab10 is a ListedColormap (its colours), get_cmap's stub says the base Colormap
    colours = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]
    for index, line in enumerate(series):
        if len(line.betas) != len(line.accuracies):
            raise ValueError(f"{line.label}: {len(line.betas)} betas but {len(line.accuracies)} accuracy lists")
        colour = colours[index % len(colours)]
        order = np.argsort(line.betas)
        betas = np.asarray(line.betas, dtype=float)[order]
        means = np.array([100 * np.mean(line.accuracies[i]) for i in order])
        stds = np.array([100 * np.std(line.accuracies[i]) for i in order])
        axis.errorbar(
            betas,
            means,
            yerr=stds,
            color=colour,
            marker="o",
            capsize=3,
            linewidth=1.5,
            label=f"{line.label} (ours, mean ± std)",
        )
        if line.paper:
            paper_betas = sorted(line.paper)
            axis.plot(
                paper_betas,
                [100 * line.paper[b] for b in paper_betas],
                color=colour,
                linestyle="--",
                marker="s",
                markerfacecolor="white",
                linewidth=1.0,
                label=f"{line.label} (paper)",
            )
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


def plot_manual_against_attention(
    comparisons: list[LinkComparison],
    path: str | Path,
    pairs_per_row: int = 2,
    title: str = "Manual and attention-based feature links",
) -> None:
    """Figure 6: for every pair, its manual links beside the converged attention links.

    At most ``pairs_per_row`` pairs a row, the rows as even as they can be (5 pairs: 2, 2, 1) and a short last
    row centred; the figure is sized to the pairs drawn and holds no empty panels.
    """
    if not comparisons:
        raise ValueError("plot_manual_against_attention: no pairs to draw")
    rows = -(-len(comparisons) // max(1, pairs_per_row))
    per_row = -(-len(comparisons) // rows)
    figure = plt.figure(figsize=(4.6 * per_row + 1.0, 3.0 * rows + 0.6), constrained_layout=True)
    # Each panel spans two grid columns, so a row one pair short is centred by shifting it one column.
    grid = GridSpec(rows, 4 * per_row, figure=figure)
    axes, image = [], None
    for index, pair in enumerate(comparisons):
        row, column = divmod(index, per_row)
        in_row = min(per_row, len(comparisons) - row * per_row)
        left = 4 * column + 2 * (per_row - in_row)
        manual_axis = figure.add_subplot(grid[row, left : left + 2])
        attention_axis = figure.add_subplot(grid[row, left + 2 : left + 4])
        image = _draw_links(manual_axis, pair.manual, pair.teacher_names, pair.student_names, f"{pair.title}: manual")
        _draw_links(
            attention_axis,
            pair.attention,
            pair.teacher_names,
            pair.student_names,
            f"{pair.title}: attention",
            ylabel=False,
        )
        axes += [manual_axis, attention_axis]
    assert image is not None  # comparisons is not empty
    figure.colorbar(image, ax=axes, shrink=0.6, label="link strength (alpha)")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=130)
    plt.close(figure)
