"""The report stage: a grid's MLflow runs as the paper's tables and figures.

Inputs are the jobs' ``metrics.json`` files (each names its MLflow run) and
the links files. Final accuracies and learning curves are read back from
MLflow by run id, so the table shows what the tracking store recorded (and
the report fails, naming the run, if the store and the files disagree).

Outputs under ``reports/<grid>/``:

``table.md`` / ``table.csv``
    Rows Teacher, Student, KD, ..., AFD; columns the teacher -> student pairs;
    mean +- std over seeds; the paper's value beside ours where the grid
    matches a cell of the paper's table. A second table gives each method's
    training time per epoch relative to KD on the same pair.
``metrics.json``
    The same numbers, flat, for ``dvc metrics show``.
``figures/curves_<teacher>_<student>.png``, ``figures/links_<teacher>_<student>.png``
    Test accuracy per epoch (mean over seeds) and the AFD link heatmaps.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from . import tracking
from .figures import plot_curves
from .grid import Grid
from .paper import PAPER_TABLES


class ReportError(RuntimeError):
    pass


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _format(value: float, metric: str) -> str:
    return f"{100 * (1 - value):.2f}" if metric == "error" else f"{value:.4f}"


def _format_cell(values: list[float], metric: str) -> str:
    if not values:
        return "–"
    mean, std = _mean_std(values)
    if metric == "error":
        return f"{100 * (1 - mean):.2f} ± {100 * std:.2f}" if len(values) > 1 else f"{100 * (1 - mean):.2f}"
    return f"{mean:.4f} ± {std:.4f}" if len(values) > 1 else f"{mean:.4f}"


def _load(paths: list[str]) -> tuple[list[dict], list[Path]]:
    records, links = [], []
    for path in map(Path, paths):
        if path.name == "links.json":
            links.append(path)
        elif path.name == "metrics.json":
            record = json.loads(path.read_text())
            record["_path"] = str(path)
            records.append(record)
        else:
            raise ReportError(f"{path}: the report reads metrics.json and links.json files only")
    return records, links


def _check_against_tracking(records: list[dict]) -> dict[str, Any]:
    runs = tracking.load_runs([r["run_id"] for r in records])
    for record in records:
        run = runs[record["run_id"]]
        tracked = run["metrics"].get("final_test_top1")
        if tracked is None or not math.isclose(tracked, record["test_top1"], abs_tol=1e-9):
            raise ReportError(
                f"MLflow run {record['run_id']} ({tracking.tracking_uri()}) records final_test_top1={tracked}, "
                f"but {record['_path']} says {record['test_top1']}"
            )
        record["test_top1"] = tracked
    return runs


def build(grid: Grid, inputs: list[str], out_dir: str | Path) -> dict[str, Any]:
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    records, link_files = _load(inputs)
    runs = _check_against_tracking(records)
    metric = grid.metric

    teachers = {r["spec"]["arch"]: r for r in records if r["spec"]["kind"] == "teacher"}
    cells: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for record in records:
        spec = record["spec"]
        if spec["kind"] != "student":
            continue
        # A student trained without a teacher fills that row for every pair with its architecture.
        teachers_of = [spec["teacher"]] if spec["teacher"] else [p.teacher for p in grid.pairs if p.student == spec["arch"]]
        for teacher in teachers_of:
            cells[(teacher, spec["arch"], spec["run"])].append(record)

    paper = PAPER_TABLES.get(grid.paper_table) if grid.paper_table else None
    if paper is not None and paper.dataset != grid.dataset:
        paper = None

    groups = list(dict.fromkeys(run.group for run in grid.runs.values()))
    columns = [(pair.teacher, pair.student) for pair in grid.pairs]
    rows: list[dict[str, Any]] = []  # one per (row label, pair)
    chosen: dict[tuple[str, str, str], str] = {}  # (group, teacher, student) -> run picked from a sweep

    for teacher, student in columns:
        record = teachers.get(teacher)
        value = [record["test_top1"]] if record else []
        rows.append({"row": "Teacher", "run": "teacher", "teacher": teacher, "student": student, "values": value,
                     "variant": "", "epoch_seconds": None})
    for group in groups:
        members = [run for run in grid.runs.values() if run.group == group]
        label = members[0].label
        for teacher, student in columns:
            pair_runs = grid.pair(teacher, student).runs
            if not any(run.name in pair_runs for run in members):
                continue  # this column has no such row
            candidates = [(run, [r["test_top1"] for r in cells.get((teacher, student, run.name), [])])
                          for run in members]
            candidates = [(run, values) for run, values in candidates if values]
            if not candidates:
                rows.append({"row": label, "run": group, "teacher": teacher, "student": student, "values": [],
                             "variant": "", "epoch_seconds": None})
                continue
            # A sweep keeps its best variant per pair, as the paper chose beta ("choose the best performer").
            run, values = max(candidates, key=lambda item: statistics.fmean(item[1]))
            chosen[(group, teacher, student)] = run.name
            seconds = [statistics.fmean(h["epoch_seconds"] for h in r["history"])
                       for r in cells[(teacher, student, run.name)] if r["history"]]
            rows.append({"row": label, "run": run.name, "teacher": teacher, "student": student, "values": values,
                         "variant": ", ".join(f"{k}={v}" for k, v in run.sweep.items()),
                         "epoch_seconds": statistics.fmean(seconds) if seconds else None})

    for row in rows:
        cell = paper.cells.get((row["teacher"], row["student"]), {}) if paper else {}
        row["paper"] = cell.get(row["row"])

    _write_csv(rows, out_dir / "table.csv", metric)
    _write_markdown(grid, rows, columns, paper, out_dir / "table.md", metric)
    flat = {f"{r['teacher']}->{r['student']}/{r['run']}": {"mean": _mean_std(r["values"])[0],
                                                            "std": _mean_std(r["values"])[1],
                                                            "n": len(r["values"])}
            for r in rows if r["values"]}
    (out_dir / "metrics.json").write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")

    for teacher, student in columns:
        curves = {}
        for group in groups:
            name = chosen.get((group, teacher, student))
            if name is None:
                continue
            histories = [runs[r["run_id"]]["history"]["test_top1"] for r in cells[(teacher, student, name)]]
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for history in histories:
                for step, value in history:
                    by_epoch[step].append(value)
            curves[grid.runs[name].label] = sorted((step, statistics.fmean(v)) for step, v in by_epoch.items())
        if curves:
            plot_curves(curves, f"{teacher} -> {student} ({grid.dataset}), mean over seeds", "test top-1",
                        figures / f"curves_{teacher}_{student}.png")
    for path in link_files:
        record = json.loads(path.read_text())
        shutil.copyfile(path.with_suffix(".png"), figures / f"links_{record['teacher']}_{record['student']}.png")
    return {"rows": rows, "metrics": flat}


def _write_csv(rows: list[dict], path: Path, metric: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "run", "teacher", "student", "variant", "n", "mean", "std", "paper", "metric",
                         "epoch_seconds", "values"])
        for row in rows:
            mean, std = _mean_std(row["values"]) if row["values"] else (None, None)
            writer.writerow([row["row"], row["run"], row["teacher"], row["student"], row["variant"],
                             len(row["values"]), mean, std, row["paper"], "accuracy",
                             row["epoch_seconds"], " ".join(f"{v:.6f}" for v in row["values"])])


def _write_markdown(grid: Grid, rows: list[dict], columns: list[tuple[str, str]], paper, path: Path,
                    metric: str) -> None:
    by_cell = {(r["row"], r["teacher"], r["student"]): r for r in rows}
    labels = list(dict.fromkeys(r["row"] for r in rows))
    unit = "top-1 error (%)" if metric == "error" else "top-1 accuracy"
    lines = [f"# Grid `{grid.name}`: {grid.dataset}, {unit}", ""]
    lines.append(f"Mean ± std over seeds {grid.seeds}" + (f"; *paper* = {paper.title}." if paper else "."))
    sweeps = [r for r in rows if r["variant"]]
    if sweeps:
        lines.append("Swept rows show the best setting per pair (in brackets), as the paper chose β.")
    lines += ["", "| | " + " | ".join(f"{t} → {s}" for t, s in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for label in labels:
        cells = []
        for teacher, student in columns:
            row = by_cell.get((label, teacher, student))
            if row is None:
                cells.append("")
                continue
            text = _format_cell(row["values"], metric)
            if row["variant"]:
                text += f" [{row['variant']}]"
            if row["paper"] is not None:
                text += f" (*paper {_format(row['paper'], metric) if paper.metric == 'accuracy' else row['paper']}*)"
            cells.append(text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines += ["", "## Training cost per epoch, relative to KD on the same pair", "",
              "| | " + " | ".join(f"{t} → {s}" for t, s in columns) + " |", "|---|" + "---|" * len(columns)]
    for label in labels[1:]:
        cells = []
        for teacher, student in columns:
            row = by_cell.get((label, teacher, student))
            kd = next((r for r in rows if r["run"] == "kd" and r["teacher"] == teacher and r["student"] == student),
                      None)
            if row is None or row["epoch_seconds"] is None:
                cells.append("")
            elif kd is None or not kd["epoch_seconds"]:
                cells.append(f"{row['epoch_seconds']:.2f} s")
            else:
                cells.append(f"{row['epoch_seconds'] / kd['epoch_seconds']:.2f}× ({row['epoch_seconds']:.2f} s)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")
