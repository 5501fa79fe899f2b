"""The AFD paper's ablation tables (4, 5, 6, 7, 9) and Figures 3, 5 and 6, from a grid's finished runs.

The report (:mod:`afdistill.report`) calls these with the students' records
grouped by cell, ``(teacher, student, run) -> [metrics.json records]``; nothing
here reads files or reruns anything: Figure 3's per-epoch attention is what
each AFD run recorded in its ``summaries`` while it trained.

* :func:`matrix_tables`: each table of ``report.paper_matrices`` shaped as the
  paper prints it (same rows and columns), mean ± std over seeds, the paper's
  value beside ours in every cell it reports, percent as the paper prints it
  (fractions); CSV rows for ``table.csv``.
* :func:`link_figures`: Figure 3 (attention per epoch beside the manual
  links) and Figure 6 (manual against converged attention links), one row
  or panel per pair with a co-trained AFD run (seed 0, or the lowest seed).
* :func:`beta_figures`: Figure 5, accuracy against beta for every pair on
  which an AFD run sweeps ``beta`` alone.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

import numpy as np

from .figures import (
    AttentionHistory,
    BetaSeries,
    LinkComparison,
    links_matrix,
    plot_accuracy_against_beta,
    plot_attention_history,
    plot_manual_against_attention,
)
from .grid import Grid
from .methods.afd import AttentionRecord, stage_output_links
from .paper import PAPER_MATRICES

Cells = dict[tuple[str, str, str], list[dict]]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def matrix_tables(
    grid: Grid, cells: Cells, score: Callable[[dict, str], float], compared: str
) -> tuple[list[str], list[dict]]:
    """Markdown lines of every table in ``grid.paper_matrices`` and one CSV row per cell."""
    lines: list[str] = []
    csv_rows: list[dict] = []
    for name in grid.paper_matrices:
        matrix = PAPER_MATRICES[name]
        teacher, student = matrix.pair
        lines += [
            "",
            f"## {matrix.title}",
            "",
            f"Test accuracy of the {compared} epoch, mean ± std over seeds; *paper* beside ours "
            f"(mean ± std where it prints one).",
            "",
        ]
        corner = list(matrix.row_headers)
        if matrix.column_header:  # rows down, columns across: "teacher \ student"
            corner[-1] = f"{corner[-1]} \\ {matrix.column_header}" if corner[-1] else matrix.column_header
        header = [*corner, *matrix.columns]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in matrix.rows:
            texts = []
            for column in matrix.columns:
                run = matrix.runs[(row, column)]
                records = cells.get((teacher, student, run), [])
                values = [score(record, compared) for record in records]
                expected = len(grid.runs[run].seeds)
                text = _mean_std(values) + (
                    f" (n={len(values)}/{expected})" if values and len(values) < expected else ""
                )
                paper = matrix.paper.get((row, column))
                if paper is not None:
                    std = matrix.paper_std.get((row, column))
                    text += f" (*paper {paper:.4f}" + (f" ± {std:.3f}" if std is not None else "") + "*)"
                texts.append(text)
                csv_rows.append(
                    {
                        "table": name,
                        "row": " / ".join(row),
                        "column": column,
                        "run": run,
                        "teacher": teacher,
                        "student": student,
                        "values": values,
                        "expected": expected,
                        "paper": paper,
                        "best": [score(r, "best") for r in records],
                        "last": [score(r, "last") for r in records],
                    }
                )
            lines.append("| " + " | ".join([*row, *texts]) + " |")
        if matrix.note:
            lines += ["", f"*Paper values:* {matrix.note}"]
    return lines, csv_rows


def _first_seed(records: list[dict]) -> dict | None:
    return min(records, key=lambda record: record["spec"]["seed"]) if records else None


def _attention_runs(grid: Grid, cells: Cells) -> list[tuple[str, str, dict]]:
    """Per pair, the co-trained AFD run that recorded attention over the most candidates (the first in grid
    order among equals), at its lowest seed: (teacher, student, record)."""
    found = []
    for pair in grid.pairs:
        firsts = [_first_seed(cells.get((pair.teacher, pair.student, run), [])) for run in pair.runs]
        records = [
            r
            for r in firsts
            if r and r.get("summaries") and len(AttentionRecord.history(r["summaries"])) == len(r["summaries"])
        ]
        if records:
            size = lambda r: np.asarray(AttentionRecord.history(r["summaries"])[-1]).size  # noqa: E731
            found.append((pair.teacher, pair.student, max(records, key=size)))
    return found


def link_figures(grid: Grid, cells: Cells, figures: Path) -> list[Path]:
    """Figure 3 (``attention_epochs.png``) and Figure 6 (``manual_vs_attention.png``), if any AFD run trained."""
    histories, comparisons = [], []
    for teacher, student, record in _attention_runs(grid, cells):
        last = AttentionRecord.of(record["summaries"][-1])
        assert last is not None  # every epoch recorded attention (_attention_runs)
        teacher_names, student_names = last.teacher_names, last.student_names
        manual = links_matrix(len(teacher_names), len(student_names), stage_output_links(teacher_names, student_names))
        attention = [np.asarray(alpha) for alpha in AttentionRecord.history(record["summaries"])]
        title = f"{teacher} → {student} ({record['spec']['run']}, seed {record['spec']['seed']})"
        histories.append(
            AttentionHistory(title, teacher_names, student_names, manual, list(range(1, len(attention) + 1)), attention)
        )
        comparisons.append(
            LinkComparison(f"{teacher} → {student}", teacher_names, student_names, manual, attention[-1])
        )
    written = []
    if histories:
        path = figures / "attention_epochs.png"
        plot_attention_history(
            histories,
            path,
            title=f"Figure 3 ({grid.dataset}): manual links and AFD's attention (train mean) during training",
        )
        written.append(path)
        path = figures / "manual_vs_attention.png"
        plot_manual_against_attention(
            comparisons,
            path,
            title=f"Figure 6 ({grid.dataset}): manual (stage outputs) and converged attention-based links",
        )
        written.append(path)
    return written


def beta_figures(
    grid: Grid, cells: Cells, score: Callable[[dict, str], float], compared: str, figures: Path
) -> list[Path]:
    """Figure 5 (``beta_sensitivity.png``): every AFD entry that sweeps beta alone, one line per pair; a run
    of the same settings at another beta outside the sweep (a table's own row) is a point of the line too."""

    def without_beta(run) -> tuple:
        return (run.method, run.init, sorted((k, repr(v)) for k, v in run.params.items() if k != "beta"))

    series = []
    groups = sorted({run.group for run in grid.runs.values() if set(run.sweep) == {"beta"} and run.method == "afd"})
    for pair in grid.pairs:
        for group in groups:
            swept = [run for run in grid.runs.values() if run.group == group]
            alike = [
                run
                for run in grid.runs.values()
                if run.group != group
                and run.method == "afd"
                and not run.sweep
                and without_beta(run) == without_beta(swept[0])
            ]
            points: dict[float, list[float]] = {}
            for run in [*swept, *alike]:
                values = [score(r, compared) for r in cells.get((pair.teacher, pair.student, run.name), [])]
                beta = float(run.params.get("beta", run.sweep.get("beta", 0)))
                if values and run.name in pair.runs:
                    points.setdefault(beta, values)
            if len(points) > 1:
                label = f"{pair.teacher} → {pair.student}" + (f" ({group})" if len(groups) > 1 else "")
                series.append(BetaSeries(label, sorted(points), [points[beta] for beta in sorted(points)]))
    if not series:
        return []
    path = figures / "beta_sensitivity.png"
    plot_accuracy_against_beta(
        series, path, title=f"Figure 5 ({grid.dataset}): test accuracy of the {compared} epoch against beta"
    )
    return [path]
