"""AFD links: the teacher x student attention a link-finding AFD run converges to.

``links.json`` holds ``alpha`` as a T x S list (row t: the softmax over
student features for teacher feature t), the candidate indices, and the mean
attention of every training epoch. ``links.csv`` is the same converged matrix
transposed to S x T (rows student features, columns teacher features, as in
the paper's Figure 3), and ``links.png`` draws it beside snapshots from
training.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from .engine import Result
from .figures import plot_links
from .files import atomic_write
from .methods.afd import AttentionRecord

if TYPE_CHECKING:
    from .methods.afd import AFD

FILES = ("links.json", "links.csv", "links.png")


@torch.inference_mode()
def converged_attention(result: Result) -> torch.Tensor:
    """alpha averaged over the training set (no augmentation), networks in eval mode: T x S."""
    assert result.model is not None and result.teacher is not None  # a link-finding run trains a student
    result.model.eval()
    result.method.eval()
    total, count = None, 0
    for images, _ in result.data.eval_batches("train"):
        student = result.model(images, with_features=True)
        teacher = result.teacher(images, with_features=True)
        alpha = cast("AFD", result.method).links(student, teacher).sum(0)  # the links run's method is AFD
        total = alpha if total is None else total + alpha
        count += len(images)
    assert total is not None  # the training split is not empty
    return (total / count).cpu()


def write(result: Result, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    spec = result.record["spec"]
    matrix = converged_attention(result)
    history = AttentionRecord.history(result.record["summaries"])
    record = {
        "teacher": spec["teacher"],
        "student": spec["arch"],
        "dataset": spec["dataset"],
        "teacher_candidates": result.method.teacher_candidates,
        "student_candidates": result.method.student_candidates,
        "alpha": matrix.tolist(),
        "epoch_mean_alpha": history,
        "run_id": result.record["run_id"],
        "test_top1": result.record["test_top1"],
    }
    text = json.dumps(record) + "\n"
    atomic_write(out_dir / "links.json", lambda handle: handle.write(text.encode()))
    with open(out_dir / "links.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student\\teacher"] + [f"t{t}" for t in record["teacher_candidates"]])
        for row, s in enumerate(record["student_candidates"]):
            writer.writerow([f"s{s}"] + [f"{matrix[t, row].item():.6f}" for t in range(matrix.shape[0])])
    panels = []
    if history:
        picks = sorted({0, len(history) // 2, len(history) - 1})
        panels = [(f"epoch {i + 1} (train mean)", np.asarray(history[i]).T) for i in picks]
    panels.append(("converged (train set)", matrix.numpy().T))
    last = AttentionRecord.of(result.record["summaries"][-1] if result.record["summaries"] else None)
    plot_links(
        panels,
        f"AFD links {spec['teacher']} -> {spec['arch']} ({spec['dataset']})",
        out_dir / "links.png",
        teacher_names=last.teacher_names if last else None,
        student_names=last.student_names if last else None,
    )
    return record


def read(path: str | Path, teacher: str | None, student: str | None) -> dict:
    """Load a links file and check it belongs to this pair."""
    from .files import load_json

    record = load_json(
        path,
        f"the links of {teacher} -> {student}",
        fix=f"delete it and rerun the links stage for {teacher} -> {student}",
    )
    if (record.get("teacher"), record.get("student")) != (teacher, student):
        raise ValueError(
            f"{path} holds links for {record.get('teacher')} -> {record.get('student')}, not {teacher} -> {student}"
        )
    return record
