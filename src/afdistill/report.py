"""The report stage: a grid's jobs as the paper's tables and figures.

Inputs are the jobs' ``metrics.json`` files (final accuracies and per-epoch
histories) and the links files: the pipeline's declared outputs, nothing
else, so the report is the same wherever and whenever it is built.

Outputs under ``reports/<grid>/``:

``table.md`` / ``table.csv`` / ``table.html``
    Rows Teacher, Student, KD, ..., AFD; columns the teacher -> student pairs;
    mean +- std over seeds; a cell holding fewer seeds than the run asks for
    says how many (``n=1/2``); the paper's value beside ours where the grid
    matches a cell of the paper's table (matched by run name, not label).
    Published tables mix the last epoch's test accuracy and the best epoch's:
    the main table shows the one the paper used (``PaperTable.epoch``; the
    last where unknown), with the paper's note on its source, and a second
    table the other. A third gives each method's training time per epoch
    relative to KD on the same pair. The CSV names each value column's unit
    and which epoch ``mean`` is, and holds both (``last_*``, ``best_*``).
``timings.md``
    Each method's training time per epoch relative to KD on the same pair: measured, so it differs from run
    to run, and kept apart from the results, which an exact rerun reproduces byte for byte.
``metrics/<teacher>_<student>/<run>.json``
    One file per table cell (``last``, ``best``, their ``*_std``, ``seeds``), for ``dvc metrics show``
    (a row per cell) and ``dvc metrics diff``; the ablation tables' cells under
    ``metrics/<table>/<row>/<column>.json``.
``curves/<teacher>_<student>.csv``
    Test top-1 per epoch, a column per row and seed (:func:`curve_columns`): the grid's ``dvc plots``.
``figures/curves_<teacher>_<student>.png``, ``figures/links_<teacher>_<student>.png``
    Test accuracy per epoch (mean over seeds, min-max band, the teacher's line) and the AFD link heatmaps.
The AFD paper's ablations (:mod:`afdistill.ablations`)
    ``report.paper_matrices`` tables shaped as the paper's (in ``table.md``,
    cells in ``ablations.csv``); ``figures/attention_epochs.png`` (Figure 3),
    ``figures/manual_vs_attention.png`` (Figure 6) where AFD runs co-trained
    their links, ``figures/beta_sensitivity.png`` (Figure 5) where AFD sweeps beta.
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import ablations
from .files import load_json
from .grid import Grid
from .paper import PAPER_TABLES


class ReportError(RuntimeError):
    pass


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _format(value: float, metric: str) -> str:
    return f"{100 * (1 - value):.2f}" if metric == "error" else f"{value:.4f}"


def _format_cell(values: list[float], metric: str, expected: int = 1) -> str:
    """Mean ± std; a cell with fewer values than the grid's seeds says how many it holds."""
    if not values:
        return "–"
    mean, std = _mean_std(values)
    if metric == "error":
        text = f"{100 * (1 - mean):.2f} ± {100 * std:.2f}" if len(values) > 1 else f"{100 * (1 - mean):.2f}"
    else:
        text = f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}"
    return text if len(values) >= expected else f"{text} (n={len(values)}/{expected})"


def _load(paths: list[str]) -> tuple[list[dict], list[Path]]:
    records, links = [], []
    for path in map(Path, paths):
        if path.name == "links.json":
            links.append(path)
        elif path.name == "metrics.json":
            record = load_json(path, "a job's metrics")
            record["_path"] = str(path)
            records.append(record)
        else:
            raise ReportError(f"{path}: the report reads metrics.json and links.json files only")
    return records, links


def build(grid: Grid, inputs: list[str], out_dir: str | Path) -> dict[str, Any]:
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    records, link_files = _load(inputs)
    metric = grid.metric

    teachers = {r["spec"]["arch"]: r for r in records if r["spec"]["kind"] == "teacher"}
    cells: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    record: dict | None  # a job's metrics; None below where a teacher has none
    for record in records:
        spec = record["spec"]
        if spec["kind"] != "student":
            continue
        # A student trained without a teacher fills that row for every pair with its architecture.
        teachers_of = (
            [spec["teacher"]] if spec["teacher"] else [p.teacher for p in grid.pairs if p.student == spec["arch"]]
        )
        for teacher in teachers_of:
            cells[(teacher, spec["arch"], spec["run"])].append(record)

    paper = PAPER_TABLES.get(grid.paper_table) if grid.paper_table else None
    if paper is not None and paper.dataset != grid.dataset:
        paper = None
    # Published tables mix the last epoch's test accuracy and the best epoch's: the main table shows the one
    # the paper used (the last where unknown), the second table the other.
    compared = paper.epoch if paper is not None and paper.epoch else "last"

    def score(record: dict, epoch: str) -> float:
        history = record.get("history") or []
        return max(h["test_top1"] for h in history) if epoch == "best" and history else record["test_top1"]

    groups = list(dict.fromkeys(run.group for run in grid.runs.values()))
    columns = [(pair.teacher, pair.student) for pair in grid.pairs]
    rows: list[dict[str, Any]] = []  # one per (row label, pair)
    chosen: dict[tuple[str, str, str], str] = {}  # (group, teacher, student) -> run picked from a sweep

    for teacher, student in columns:
        record = teachers.get(teacher)
        if record is not None and record["test_top1"] is None:
            record = None  # a teacher of another task (transfer): no accuracy on this dataset
        value = [record["test_top1"]] if record else []
        rows.append(
            {
                "row": "Teacher",
                "run": "teacher",
                "teacher": teacher,
                "student": student,
                "values": value,
                "last": value,
                "best": [score(record, "best")] if record else [],
                "variant": "",
                "epoch_seconds": None,
            }
        )
    for group in groups:
        members = [run for run in grid.runs.values() if run.group == group]
        label = members[0].label
        for teacher, student in columns:
            pair_runs = grid.pair(teacher, student).runs
            if not any(run.name in pair_runs for run in members):
                continue  # this column has no such row
            candidates = [
                (run, [score(r, compared) for r in cells.get((teacher, student, run.name), [])]) for run in members
            ]
            candidates = [(run, values) for run, values in candidates if values]
            if not candidates:
                rows.append(
                    {
                        "row": label,
                        "run": group,
                        "teacher": teacher,
                        "student": student,
                        "values": [],
                        "last": [],
                        "best": [],
                        "variant": "",
                        "epoch_seconds": None,
                    }
                )
                continue
            # A sweep keeps its best variant per pair, as the paper chose beta ("choose the best performer").
            run, values = max(candidates, key=lambda item: statistics.fmean(item[1]))
            chosen[(group, teacher, student)] = run.name
            seconds = [
                statistics.fmean(h["epoch_seconds"] for h in r["history"])
                for r in cells[(teacher, student, run.name)]
                if r["history"]
            ]
            records = cells[(teacher, student, run.name)]
            rows.append(
                {
                    "row": label,
                    "run": run.name,
                    "teacher": teacher,
                    "student": student,
                    "values": values,
                    "last": [score(r, "last") for r in records],
                    "best": [score(r, "best") for r in records],
                    "variant": run.variant,
                    "epoch_seconds": statistics.fmean(seconds) if seconds else None,
                    "epochs": grid.run_schedule(grid.pair(teacher, student), run.name).epochs,
                }
            )

    seeds_of_group = {run.group: len(run.seeds) for run in grid.runs.values()}
    for row in rows:
        cell = paper.cells.get((row["teacher"], row["student"]), {}) if paper else {}
        # a row is a run, or a swept entry (its group) none of whose variants has finished yet
        group = "teacher" if row["run"] == "teacher" else getattr(grid.runs.get(row["run"]), "group", row["run"])
        row["paper"] = cell.get(group)
        row["expected"] = 1 if row["run"] == "teacher" else seeds_of_group[group]

    _write_csv(rows, out_dir / "table.csv", paper, compared)
    lines = _markdown(grid, rows, columns, paper, metric, compared)
    matrix_lines, matrix_cells = ablations.matrix_tables(grid, cells, score, compared)
    lines += matrix_lines
    _write_matrix_csv(matrix_cells, out_dir / "ablations.csv", compared)
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    (out_dir / "table.html").write_text(_html(lines))
    (out_dir / "timings.md").write_text("\n".join(_timings(grid, rows, columns)) + "\n")
    flat = _write_metrics(rows, matrix_cells, out_dir / "metrics")

    from .figures import plot_curves  # matplotlib, only where a figure is drawn

    (out_dir / "curves").mkdir(exist_ok=True)
    for teacher, student in columns:
        curves: dict[str, dict[int, list[float]]] = {}
        by_column: dict[str, dict[int, float]] = {}
        for group in groups:
            name = chosen.get((group, teacher, student))
            if name is None:
                continue
            label = grid.runs[name].label
            for record in sorted(cells[(teacher, student, name)], key=lambda r: r["spec"]["seed"]):
                for step, epoch in enumerate(record["history"], start=1):
                    curves.setdefault(label, {}).setdefault(step, []).append(epoch["test_top1"])
                    by_column.setdefault(_curve_column(label, record["spec"]["seed"]), {})[step] = epoch["test_top1"]
        _write_curves(
            by_column, curve_columns(grid, grid.pair(teacher, student)), out_dir / "curves" / f"{teacher}_{student}.csv"
        )
        if curves:
            record = teachers.get(teacher)
            plot_curves(
                curves,
                f"{teacher} → {student} ({grid.dataset}): test top-1 per epoch, mean and range over seeds",
                figures / f"curves_{teacher}_{student}.png",
                teacher=record["test_top1"] if record else None,
            )
    # The AFD paper's Figures 3, 5 and 6, wherever the grid's runs allow them
    ablations.link_figures(grid, cells, figures)
    ablations.beta_figures(grid, cells, score, compared, figures)
    for path in link_files:
        record = load_json(path, "a link-finding run's links")
        shutil.copyfile(path.with_suffix(".png"), figures / f"links_{record['teacher']}_{record['student']}.png")
    return {"rows": rows, "metrics": flat}


def _slug(text: str) -> str:
    """A file name for a row or column label (``AFD (β=200)`` -> ``AFD_β=200``)."""
    return "_".join("".join(c if c.isalnum() or c in "=.+-" else " " for c in text).split()) or "_"


def _write_metrics(rows: list[dict], matrix_cells: list[dict], folder: Path) -> dict[str, dict]:
    """One small JSON file per cell, all with the same keys, so that ``dvc metrics show`` prints a row per
    cell and a column per key; returns them keyed by their path under ``folder``."""
    if folder.exists():
        shutil.rmtree(folder)  # a cell the grid no longer has must not linger as a metric
    written: dict[str, dict] = {}

    def write(relative: str, last: list[float], best: list[float]) -> None:
        values = {
            "last": _mean_std(last)[0],
            "last_std": _mean_std(last)[1],
            "best": _mean_std(best)[0],
            "best_std": _mean_std(best)[1],
            "seeds": len(last),
        }
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2) + "\n")
        written[relative] = values

    for row in rows:
        if row["last"]:
            write(f"{row['teacher']}_{row['student']}/{row['run']}.json", row["last"], row["best"])
    for cell in matrix_cells:
        if cell["last"]:
            write(
                f"{_slug(cell['table'])}/{_slug(cell['row'])}/{_slug(cell['column'])}.json", cell["last"], cell["best"]
            )
    return written


def _curve_column(label: str, seed: int) -> str:
    return f"{label.replace(',', ';')} seed{seed}"


def curve_columns(grid: Grid, pair) -> list[str]:
    """The columns of ``curves/<teacher>_<student>.csv`` after ``epoch``: a row label and seed each, in the
    table's order (a swept row's chosen variant under the row's label). The grid's ``dvc.yaml`` plots name
    them, so the two are derived here, once."""
    columns = []
    for group in dict.fromkeys(run.group for run in grid.runs.values()):
        members = [run for run in grid.runs.values() if run.group == group and run.name in pair.runs]
        if members:
            columns += [_curve_column(members[0].label, seed) for seed in members[0].seeds]
    return columns


def _write_curves(by_column: dict[str, dict[int, float]], columns: list[str], path: Path) -> None:
    """Test top-1 per epoch, a column per row label and seed; a job not run (yet) leaves its column empty."""
    epochs = sorted({epoch for values in by_column.values() for epoch in values})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *columns])
        for epoch in epochs:
            writer.writerow(
                [epoch, *(f"{by_column[c][epoch]:.6f}" if epoch in by_column.get(c, {}) else "" for c in columns)]
            )


def _write_csv(rows: list[dict], path: Path, paper, compared: str) -> None:
    """One row per cell; ``unit`` says what mean, std and values are, ``paper_unit`` what paper is; ``epoch``
    whether mean, std and values are the last or the best epoch's (``last_*`` and ``best_*`` give both)."""
    paper_unit = (
        "" if paper is None else ("fraction correct (top-1)" if paper.metric == "accuracy" else "top-1 error (%)")
    )
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "row",
                "run",
                "teacher",
                "student",
                "variant",
                "n",
                "n_expected",
                "epoch",
                "mean",
                "std",
                "unit",
                "paper",
                "paper_unit",
                "values",
                "last_mean",
                "last_std",
                "best_mean",
                "best_std",
                "best_values",
            ]
        )
        for row in rows:
            mean, std = _mean_std(row["values"]) if row["values"] else (None, None)
            last = _mean_std(row["last"]) if row["last"] else (None, None)
            best = _mean_std(row["best"]) if row["best"] else (None, None)
            writer.writerow(
                [
                    row["row"],
                    row["run"],
                    row["teacher"],
                    row["student"],
                    row["variant"],
                    len(row["values"]),
                    row["expected"],
                    compared,
                    mean,
                    std,
                    "fraction correct (top-1)",
                    row["paper"],
                    paper_unit if row["paper"] is not None else "",
                    " ".join(f"{v:.6f}" for v in row["values"]),
                    *last,
                    *best,
                    " ".join(f"{v:.6f}" for v in row["best"]),
                ]
            )


def _write_matrix_csv(cells: list[dict], path: Path, compared: str) -> None:
    """The ablation tables' cells (``report.paper_matrices``), one row each; empty but for its header if none."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "table",
                "row",
                "column",
                "run",
                "teacher",
                "student",
                "n",
                "n_expected",
                "epoch",
                "mean",
                "std",
                "paper",
                "last_mean",
                "best_mean",
                "values",
            ]
        )
        for cell in cells:
            mean, std = _mean_std(cell["values"]) if cell["values"] else (None, None)
            writer.writerow(
                [
                    cell["table"],
                    cell["row"],
                    cell["column"],
                    cell["run"],
                    cell["teacher"],
                    cell["student"],
                    len(cell["values"]),
                    cell["expected"],
                    compared,
                    mean,
                    std,
                    cell["paper"],
                    _mean_std(cell["last"])[0] if cell["last"] else None,
                    _mean_std(cell["best"])[0] if cell["best"] else None,
                    " ".join(f"{v:.6f}" for v in cell["values"]),
                ]
            )


def _markdown(
    grid: Grid, rows: list[dict], columns: list[tuple[str, str]], paper, metric: str, compared: str
) -> list[str]:
    by_cell = {(r["row"], r["teacher"], r["student"]): r for r in rows}
    labels = list(dict.fromkeys(r["row"] for r in rows))
    unit = "top-1 error (%)" if metric == "error" else "top-1 accuracy"
    lines = [f"# Grid `{grid.name}`: {grid.dataset}, {unit}", ""]
    lines.append(
        f"Test accuracy of the **{compared} epoch**, mean ± std over seeds {grid.seeds}"
        + (f"; *paper* = {paper.title}." if paper else ".")
        + " A cell with fewer seeds says how many it holds (n=done/asked)."
    )
    sweeps = [r for r in rows if r["variant"]]
    if sweeps:
        lines.append("Swept rows show the best setting per pair (in brackets), as the paper chose β.")

    def main_cell(label: str, teacher: str, student: str) -> str:
        row = by_cell.get((label, teacher, student))
        if row is None:
            return ""
        text = _format_cell(row["values"], metric, row["expected"])
        if row["variant"]:
            text += f" [{row['variant']}]"
        if row["paper"] is not None:
            text += f" (*paper {_format(row['paper'], metric) if paper.metric == 'accuracy' else row['paper']}*)"
        return text

    transpose = bool(paper is not None and paper.pairs_as_rows)
    lines += [""] + _cells_table(labels, columns, main_cell, transpose)
    if paper is not None and paper.note:
        lines += ["", f"*Paper values:* {paper.note}"]

    other = "best" if compared == "last" else "last"
    lines += [
        "",
        f"## Test accuracy of the {other} epoch",
        "",
        f"The same runs: {'the highest test accuracy over the epochs' if other == 'best' else 'after training'}.",
        "",
    ]

    def other_cell(label: str, teacher: str, student: str) -> str:
        row = by_cell.get((label, teacher, student))
        return "" if row is None else _format_cell(row[other], metric, row["expected"])

    lines += _cells_table(labels, columns, other_cell, transpose)

    return lines


def _timings(grid: Grid, rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    """Each row's training time per epoch relative to KD on the same pair (``timings.md``)."""
    by_cell = {(r["row"], r["teacher"], r["student"]): r for r in rows}
    labels = list(dict.fromkeys(r["row"] for r in rows))
    lines = [
        f"# Grid `{grid.name}`: training cost per epoch, relative to KD on the same pair",
        "",
        "Measured on the machine that trained each job (mean of its epochs' wall time; a student trained in a "
        "pack counts its own steps and an equal share of the batches and the teacher's forward it shared), so "
        "these figures differ from run to run; the results are in table.md.",
        "",
        "| | " + " | ".join(f"{t} → {s}" for t, s in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for label in labels[1:]:
        cells = []
        for teacher, student in columns:
            row = by_cell.get((label, teacher, student))
            kd = next(
                (r for r in rows if r["run"] == "kd" and r["teacher"] == teacher and r["student"] == student), None
            )
            if row is None or row["epoch_seconds"] is None:
                cells.append("")
            elif kd is None or not kd["epoch_seconds"]:
                cells.append(f"{row['epoch_seconds']:.2f} s")
            else:
                cells.append(f"{row['epoch_seconds'] / kd['epoch_seconds']:.2f}× ({row['epoch_seconds']:.2f} s)")
            pair_epochs = grid.pair(teacher, student).schedule.epochs
            # a run with its own schedule (a non-empty cell has a row)
            if cells[-1] and row is not None and row.get("epochs", pair_epochs) != pair_epochs:
                cells[-1] += f", {row['epochs']} epochs"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _cells_table(labels: list[str], columns: list[tuple[str, str]], cell, transpose: bool) -> list[str]:
    """A Markdown table of ``cell(label, teacher, student)``: a row per label and a column per pair, or, where the
    paper prints it that way (``transpose``), a row per pair and a column per label."""
    pairs = [f"{t} → {s}" for t, s in columns]
    if transpose:
        lines = ["| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        lines += [
            f"| {name} | " + " | ".join(cell(label, *pair) for label in labels) + " |"
            for name, pair in zip(pairs, columns)
        ]
        return lines
    lines = ["| | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(columns)]
    return lines + [f"| {label} | " + " | ".join(cell(label, *pair) for pair in columns) + " |" for label in labels]


def _html(markdown: list[str]) -> str:
    """The Markdown report as a standalone HTML page (Snakemake's HTML report shows it inline)."""
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)

    body, table = [], []
    for line in markdown + [""]:
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip("|").split("|")])
            continue
        if table:
            head, *rest = [r for r in table if not all(set(c) <= set("-") for c in r)]
            body.append(
                "<table><thead><tr>"
                + "".join(f"<th>{inline(c)}</th>" for c in head)
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rest)
                + "</tbody></table>"
            )
            table = []
        if line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line:
            body.append(f"<p>{inline(line)}</p>")
    style = (
        "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #bbb;"
        "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{style}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def combine(report_dirs: list[str | Path], out_dir: str | Path, title: str) -> list[str]:
    """One table from several grids' reports, a column per grid (the AFD paper's Table 3: one transfer grid per
    target set). Reads each report's ``table.csv`` (a declared output of its report job), so it can run
    whenever the reports exist; rows in first-seen order, the paper's value beside ours where the CSV has one.
    Writes ``table.md`` and ``table.csv`` under ``out_dir``; returns the Markdown lines."""
    columns, cells, rows = [], {}, []
    record: dict[str, str] | None  # a row of a table.csv; None below where a column has none
    for folder in map(Path, report_dirs):
        path = folder / "table.csv"
        if not path.is_file():
            raise ReportError(
                f"{path} does not exist: run that grid's report first "
                f"(snakemake make_report --configfile params/{folder.name}.yaml)"
            )
        with open(path, newline="") as handle:
            records = list(csv.DictReader(handle))
        columns.append(folder.name)
        for record in records:
            if record["row"] not in rows:
                rows.append(record["row"])
            cells[(record["row"], folder.name)] = record
    lines = [
        f"# {title}",
        "",
        f"Mean ± std over seeds of each grid's compared epoch (see each report); "
        f"*paper* beside ours. Columns: the reports under {', '.join(f'`{c}`' for c in columns)}.",
        "",
        "| | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in rows:
        texts = []
        for column in columns:
            record = cells.get((row, column))
            if record is None or not record["mean"]:
                text = "–"
            else:
                mean, std = float(record["mean"]), float(record["std"])
                text = f"{mean:.4f} ± {std:.4f}"
                if record["n"] != record["n_expected"]:
                    text += f" (n={record['n']}/{record['n_expected']})"
            if record is not None and record["paper"]:
                text += f" (*paper {float(record['paper']):.4f}*)"
            texts.append(text)
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    with open(out_dir / "table.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "report", "run", "n", "n_expected", "epoch", "mean", "std", "paper"])
        for row in rows:
            for column in columns:
                record = cells.get((row, column))
                if record is not None:
                    writer.writerow(
                        [
                            row,
                            column,
                            record["run"],
                            record["n"],
                            record["n_expected"],
                            record["epoch"],
                            record["mean"],
                            record["std"],
                            record["paper"],
                        ]
                    )
    return lines
