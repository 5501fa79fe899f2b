"""The grid's progress read from job folders in their real on-disk format, and the line the pipeline prints."""

import io
import json
import os
import re
import time
from pathlib import Path

import torch
from conftest import TINY_GRID

from afdistill.grid import Grid
from afdistill.jobs import Plan, write_marker
from afdistill.watch import GridWatch, survey


def tiny_plan(tmp_path, monkeypatch) -> Plan:
    monkeypatch.chdir(tmp_path)
    grid = dict(TINY_GRID, methods={"vanilla": {}, "kd": {"alpha": 0.9, "temperature": 4}})
    return Plan(Grid(grid, source="params/default.yaml"))


def finish(job, epoch_seconds: float) -> None:
    """What a finished training job leaves: metrics with its per-epoch history, then its marker."""
    Path(job.folder).mkdir(parents=True, exist_ok=True)
    history = [
        {"epoch": e + 1, "epoch_seconds": epoch_seconds, "test_top1": 0.5}
        for e in range(job.spec.schedule.epochs if job.spec else 0)
    ]
    Path(job.path("metrics.json")).write_text(json.dumps({"test_top1": 0.5, "history": history}))
    write_marker(job)


def checkpoint(job, epoch: int, epoch_seconds: float, identity: str | None = None, age: float = 0.0) -> None:
    """A resume checkpoint as the engine saves it (the fields the survey reads)."""
    Path(job.folder).mkdir(parents=True, exist_ok=True)
    path = Path(job.folder) / "checkpoint.pt"
    torch.save(
        {
            "spec": job.spec.to_dict(),
            "identity": identity or job.fingerprint,
            "epoch": epoch,
            "complete": False,
            "history": [{"epoch": e + 1, "epoch_seconds": epoch_seconds} for e in range(epoch)],
        },
        path,
    )
    if age:
        os.utime(path, (time.time() - age, time.time() - age))


def test_states_counts_and_time_left_come_from_the_job_folders(tmp_path, monkeypatch):
    plan = tiny_plan(tmp_path, monkeypatch)
    (data,) = plan.of_kind("data")
    (teacher,) = plan.of_kind("teacher")
    students = plan.of_kind("student")  # vanilla and kd, seeds 0 and 1: one epoch each
    assert len(students) == 4
    assert survey(plan).line() == (
        f"grid 'default': 0/{len(plan.jobs)} done, {len(plan.jobs)} to run; "
        "time left unknown until a first epoch is timed"
    )

    finish(data, 0)
    finish(teacher, 10.0)
    kd0, kd1 = [job for job in students if job.spec.run == "kd"]
    vanilla0, vanilla1 = [job for job in students if job.spec.run == "vanilla"]
    finish(vanilla0, 4.0)
    checkpoint(kd0, 0, 30.0)  # running, no epoch timed yet: falls back to the student kind's mean (4 s)
    checkpoint(kd1, 0, 0.0, identity="0" * 16)  # a checkpoint of an earlier fingerprint
    current = survey(plan)
    assert current.states[kd0.folder] == "running at epoch 0/1"
    assert current.states[kd1.folder] == "outdated"
    assert current.states[vanilla1.folder] == "to run"
    # kd0: 1 epoch x 4 s (student mean), kd1: 4 s, vanilla1: 4 s (its own run's mean), the report: no epochs;
    # one job running -> one at a time.
    assert current.remaining_seconds(1) == 12.0
    line = current.line()
    assert line.startswith(f"grid 'default': 3/{len(plan.jobs)} done, 1 running (resnet8/resnet8/kd/seed0 epoch 0/1)")
    assert "1 outdated" in line and "2 to run" in line and line.endswith("about 12 s of training left at 1 at a time")

    # A job whose checkpoint has not been touched for a long time was stopped, not running.
    checkpoint(kd0, 0, 30.0, age=3600)
    assert survey(plan).states[kd0.folder] == "stopped at epoch 0/1"


def test_the_watch_prints_a_line_when_a_job_finishes_and_a_final_one(tmp_path, monkeypatch):
    plan = tiny_plan(tmp_path, monkeypatch)
    out = io.StringIO()
    watch = GridWatch(plan, interval=3600, poll=0.05, stream=out).start()
    deadline = time.monotonic() + 10
    while "0/" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    for job in plan.jobs:
        finish(job, 1.0)
        break
    while "1/" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    watch.stop()
    lines = out.getvalue().splitlines()
    total = len(plan.jobs)
    assert lines[0].startswith(f"grid 'default': 0/{total} done")
    assert any(line.startswith(f"grid 'default': 1/{total} done") for line in lines[1:])
    # No line without a change in between (the interval is an hour): start, the finished job, the final line.
    assert len(lines) == 3, lines
    assert all(re.match(r"grid 'default': \d+/\d+ done", line) for line in lines)
