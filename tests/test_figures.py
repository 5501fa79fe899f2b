"""The report's figures stay readable: distinct curve styles, legend off the data, the teacher line, percent,
named link axes, and Figure 6 without empty panels. Figures are caught as they are saved and inspected."""

import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from afdistill.figures import (
    LinkComparison,
    line_styles,
    links_matrix,
    plot_curves,
    plot_links,
    plot_manual_against_attention,
)

TEACHER = ["layer1.0", "layer1.1", "layer1.2", "layer2.0", "layer2.1", "layer2.2", "layer3.0", "layer3.1", "layer3.2"]
STUDENT = ["layer1.0", "layer2.0", "layer3.0"]


@pytest.fixture
def saved(monkeypatch):
    """Every Figure saved during the test, still drawable after the function under test closed it."""
    figures = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def curves(labels: int, seeds: int, epochs: int = 6) -> dict:
    rng = np.random.default_rng(0)
    return {
        f"method {i}": {e: list(0.9 - 0.5 / e - 0.002 * i + 0.01 * rng.random(seeds)) for e in range(1, epochs + 1)}
        for i in range(labels)
    }


@pytest.mark.parametrize("count", [1, 9, 10, 20, 36, 37, 72, 100])
def test_line_styles_are_distinct_and_never_the_teachers_grey(count):
    styles = line_styles(count)
    assert len(styles) == count == len({(to_rgba(colour), style) for colour, style in styles})
    assert all(len(set(to_rgba(colour)[:3])) > 1 for colour, _ in styles)  # no grey: grey is the teacher
    assert [style for _, style in styles[:9]] == ["-"] * min(count, 9)  # a few methods: all solid
    assert line_styles(count) == styles


def test_curves_of_twenty_methods_look_apart_with_bands_teacher_and_legend_outside(tmp_path, saved):
    data = curves(20, seeds=2)
    path = tmp_path / "curves.png"
    plot_curves(data, "t -> s", path, teacher=0.95)
    assert path.stat().st_size > 10_000
    (figure,) = saved
    (axis,) = figure.axes
    drawn = {line.get_label(): line for line in axis.get_lines()}
    assert set(drawn) == set(data) | {"Teacher"}
    pairs = {(to_rgba(drawn[label].get_color()), drawn[label].get_linestyle()) for label in data}
    assert len(pairs) == 20
    # percent: the line is the mean over seeds times 100
    np.testing.assert_allclose(drawn["method 3"].get_ydata(), [100 * np.mean(data["method 3"][e]) for e in range(1, 7)])
    assert len(axis.collections) == 20  # a min-max band per method with 2 seeds
    teacher = drawn["Teacher"]
    assert teacher.get_linestyle() == "--" and list(teacher.get_ydata()) == [pytest.approx(95.0)] * 2
    low, high = axis.get_ylim()
    assert low <= 95.0 <= high and high <= 100.5 and low > 40.0  # zoomed, in percent, teacher shown
    assert axis.get_xlabel() == "epoch" and "%" in axis.get_ylabel()
    canvas = FigureCanvasAgg(figure)  # closing left the figure a bare canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    legend = axis.get_legend()
    assert [text.get_text() for text in legend.get_texts()][0] == "Teacher"
    assert legend.get_window_extent(renderer).x0 >= axis.get_window_extent(renderer).x1  # off the data
    # the tight box keeps the legend: the image is wider than the figure's own canvas
    assert matplotlib.image.imread(path).shape[1] > figure.get_figwidth() * 120


def test_curves_band_only_with_seeds_and_the_teacher_stays_in_view_below(tmp_path, saved):
    data = {"one seed": {1: [0.80], 2: [0.90]}, "two seeds": {1: [0.82, 0.84], 2: [0.91, 0.93]}}
    plot_curves(data, "t -> s", tmp_path / "c.png", teacher=0.5, ylabel="accuracy (%)")
    (axis,) = saved[0].axes
    assert len(axis.collections) == 1
    assert axis.get_ylim()[0] <= 50.0 and axis.get_ylabel() == "accuracy (%)"


def test_curves_of_a_single_epoch_are_marked_points_on_whole_epoch_ticks(tmp_path, saved):
    plot_curves({"KD": {1: [0.30, 0.34]}, "AFD": {1: [0.31]}}, "t -> s", tmp_path / "c.png", teacher=0.4)
    (axis,) = saved[0].axes
    drawn = {line.get_label(): line for line in axis.get_lines()}
    assert drawn["KD"].get_marker() == "o" and drawn["AFD"].get_marker() == "o"  # a bare line would not show
    assert list(axis.get_xticks()) == [1]
    assert len(axis.collections) == 1  # KD's range, as a segment; AFD has one seed


def test_curves_refuse_the_old_list_of_epoch_mean_pairs(tmp_path):
    with pytest.raises(TypeError, match="'KD' holds a list"):
        plot_curves({"KD": [(1, 0.5), (2, 0.6)]}, "t -> s", tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_links_heatmap_names_its_features_and_draws_stage_lines(tmp_path, saved):
    rng = np.random.default_rng(0)
    panels = [("epoch 1", rng.random((3, 9))), ("converged", rng.random((3, 9)))]
    plot_links(panels, "links", tmp_path / "links.png", teacher_names=TEACHER, student_names=STUDENT)
    first = saved[0].axes[0]
    assert [t.get_text() for t in first.get_xticklabels()] == TEACHER
    assert [t.get_text() for t in first.get_yticklabels()] == STUDENT
    assert len(first.get_lines()) == 2 + 2  # stage lines: 2 between teacher stages, 2 between student stages
    with pytest.raises(ValueError, match="for 9 teacher and 2 student"):
        plot_links(panels, "links", tmp_path / "bad.png", teacher_names=TEACHER, student_names=STUDENT[:2])


def test_links_heatmap_without_names_numbers_the_features(tmp_path, saved):
    plot_links([("converged", np.eye(3, 9))], "links", tmp_path / "links.png")
    axis = saved[0].axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == [str(i) for i in range(9)]
    assert not axis.get_lines()


@pytest.mark.parametrize("count", [1, 3])
def test_figure_6_has_no_empty_panels_and_fills_its_width(tmp_path, saved, count):
    manual = links_matrix(9, 3, [(2, 0), (5, 1), (8, 2)])
    pairs = [LinkComparison(f"pair {i}", TEACHER, STUDENT, manual, np.full((9, 3), 1 / 3)) for i in range(count)]
    plot_manual_against_attention(pairs, tmp_path / "fig6.png")
    figure = saved[0]
    panels = [axis for axis in figure.axes if axis.images]
    assert len(panels) == 2 * count and len(figure.axes) == 2 * count + 1  # the panels and one colour bar
    assert all(axis.axison and axis.get_visible() for axis in figure.axes)
    FigureCanvasAgg(figure).draw()
    boxes = [axis.get_position() for axis in panels]
    assert max(b.x1 for b in boxes) - min(b.x0 for b in boxes) > 0.6  # the panels span the canvas
    if count == 3:  # two rows, the short last row centred under the first
        first, last = boxes[:4], boxes[4:]
        centre = lambda row: (min(b.x0 for b in row) + max(b.x1 for b in row)) / 2  # noqa: E731
        assert centre(last) == pytest.approx(centre(first), abs=0.03)
