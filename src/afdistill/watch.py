"""Where a grid stands, read from its job folders: each job's state, and one line for the whole grid.

``afdistill jobs`` prints every job's state and the grid line; while
Snakemake runs a grid, :class:`GridWatch` prints the grid line to its terminal
whenever a job finishes or starts, and at least every ``interval`` seconds
(a job counts as running once it has checkpointed its first epoch)::

    grid 'default': 9/28 done, 2 running (resnet20/resnet8/kd/seed0 epoch 3/8, resnet20/resnet8/crd/seed1 epoch 1/8),
    17 to run; about 6 min of training left at 2 at a time

The estimate is each unfinished job's epochs left times the mean epoch time
measured for the most similar jobs (same run and pair, else same run, else
same kind, else any), from finished jobs and the checkpoints of running ones,
divided by the number of processes running now (a pack of students counts
once). It counts training epochs only
(not start-up, evaluation or logging) and ignores the order the DAG
imposes, so it is a guide, not a promise.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .jobs import Job, Plan

#: a checkpoint written this recently belongs to a running job (one is written every epoch)
RUNNING_WITHIN_S = 600


@dataclass
class Survey:
    """Each job's state (``done``; ``running``/``stopped`` ``at epoch e/E``: a checkpoint of this job, it resumes
    there; ``outdated``: a checkpoint of an earlier fingerprint, it runs again; ``to run``) and the epoch times
    measured so far."""

    plan: Plan
    states: dict[str, str]
    epoch_seconds: dict[tuple, list[float]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self.states.values():
            key = state.split(" at epoch")[0]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def running(self) -> list[Job]:
        return [job for job in self.plan.jobs if self.states[job.folder].startswith("running")]

    def _epoch_time(self, job: Job) -> float | None:
        if job.spec is None:
            return None
        for key in _timing_keys(job):
            if self.epoch_seconds.get(key):
                return sum(self.epoch_seconds[key]) / len(self.epoch_seconds[key])
        return None

    def remaining_seconds(self, at_once: int = 1) -> float | None:
        """Training time left with ``at_once`` jobs at a time; None until a first epoch is timed."""
        left = 0.0
        for job in self.plan.jobs:
            state = self.states[job.folder]
            if state == "done" or job.spec is None:
                continue
            seconds = self._epoch_time(job)
            if seconds is None:
                return None
            done = re.search(r"at epoch (\d+)/", state)
            left += (job.spec.schedule.epochs - (int(done.group(1)) if done else 0)) * seconds
        return left / max(1, at_once)

    def line(self) -> str:
        """One line for the whole grid: jobs done / running (which, at which epoch) / to run, and the time left."""
        from .jobs import packs

        counts = self.counts()
        total = len(self.plan.jobs)
        parts = [f"{counts.get('done', 0)}/{total} done"]
        running = self.running()
        if running:
            shown = ", ".join(
                f"{_short(job)} epoch {self.states[job.folder].split('at epoch ')[1]}" for job in running[:3]
            )
            parts.append(f"{len(running)} running ({shown}{', ...' if len(running) > 3 else ''})")
        parts += [f"{count} {state}" for state, count in counts.items() if state not in ("done", "running")]
        text = f"grid {self.plan.grid.name!r}: " + ", ".join(parts)
        if counts.get("done", 0) < total:
            # a pack's students train one after another in one process: a pack counts once
            at_once = max(1, len(packs(running)) if self.plan.grid.pack else len(running))
            left = self.remaining_seconds(at_once)
            text += (
                "; time left unknown until a first epoch is timed"
                if left is None
                else f"; about {_duration(left)} of training left at {at_once} at a time"
            )
        return text

    def cost(self) -> str:
        """The compute still to come, one job per process and packed (:func:`afdistill.jobs.packs`): training
        epochs, and the epochs of teacher forwards (a pack runs one per batch for all its members); with epoch
        times measured, the hours they take. A teacher's forward over an epoch is taken as a third of its
        training epoch (forward and backward), measured on its own job."""
        from .jobs import packs

        pending = [job for job in self.plan.jobs if job.spec is not None and self.states[job.folder] != "done"]
        if not pending:
            return "nothing left to train"
        left = {job.folder: job.spec.schedule.epochs - self._epochs_done(job) for job in pending if job.spec}
        reading = [job for job in pending if "teacher" in job.inputs]
        separate = sum(left[job.folder] for job in reading)
        grouped = packs(reading)
        packed = sum(max(left[job.folder] for job in pack) for pack in grouped)
        text = (
            f"to train: {len(pending)} jobs, {sum(left.values())} training epochs; teacher forwards over "
            f"{separate} epochs one job per process, {packed} packed ({len(grouped)} processes) "
            f"(runtime.pack: {str(self.plan.grid.pack).lower()})"
        )
        times = [self._epoch_time(job) for job in pending]
        if any(seconds is None for seconds in times):
            return text + "; time unknown until a first epoch of each kind is timed"
        one_by_one = sum(left[job.folder] * seconds for job, seconds in zip(pending, times) if seconds is not None)
        saved = 0.0
        for pack in grouped:
            forward = self._epoch_time(pack[0].inputs["teacher"])
            saved += (
                (sum(left[job.folder] for job in pack) - max(left[job.folder] for job in pack)) * (forward or 0) / 3
            )
        return (
            text + f"; about {_duration(one_by_one)} of training one job per process, "
            f"{_duration(one_by_one - saved)} packed, at the epoch times measured so far"
        )

    def _epochs_done(self, job: Job) -> int:
        done = re.search(r"at epoch (\d+)/", self.states[job.folder])
        return int(done.group(1)) if done else 0


def _timing_keys(job: Job) -> list[tuple]:
    spec = job.spec
    assert spec is not None  # only training jobs are timed
    return [(job.kind.name, spec.run, spec.teacher, spec.arch), (job.kind.name, spec.run), (job.kind.name,), ()]


def _short(job: Job) -> str:
    """The job by its wildcards, dataset left out: ``resnet20/resnet8/kd/seed0``."""
    return (
        "/".join(
            f"seed{value}" if name == "seed" else value for name, value in job.wildcards.items() if name != "dataset"
        )
        or job.kind.name
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def survey(plan: Plan) -> Survey:
    """Read every job's folder: its marker, its resume checkpoint (only where there is no marker) and the
    per-epoch times of finished jobs."""
    from .files import FileProblem, load_torch

    result = Survey(plan, {})
    now = time.time()
    for job in plan.jobs:
        checkpoint = Path(job.folder) / "checkpoint.pt"
        history: list[dict] = []
        if Path(job.marker).is_file():
            state = "done"
            metrics = Path(job.path("metrics.json"))
            if job.spec is not None and metrics.is_file():
                try:
                    history = json.loads(metrics.read_text()).get("history") or []
                except (OSError, ValueError):
                    history = []
        elif checkpoint.is_file() and job.spec is not None:
            try:
                saved = load_torch(checkpoint, "the job's resume checkpoint")
            except FileProblem:  # being rewritten right now, or corrupt (the job will set it aside)
                saved = {}
            if saved.get("identity") != job.fingerprint:
                state = "outdated"
            else:
                recent = now - checkpoint.stat().st_mtime < RUNNING_WITHIN_S
                state = f"{'running' if recent else 'stopped'} at epoch {saved['epoch']}/{job.spec.schedule.epochs}"
                history = saved.get("history") or []
        else:
            state = "to run"
        result.states[job.folder] = state
        for key in _timing_keys(job) if history else []:
            result.epoch_seconds.setdefault(key, []).extend(epoch["epoch_seconds"] for epoch in history)
    return result


class GridWatch:
    """Prints the grid line from a background thread: when a job finishes or starts (checked
    every ``poll`` seconds) and at least every ``interval`` seconds."""

    def __init__(self, plan: Plan, interval: float = 60.0, poll: float = 5.0, stream=None):
        self.plan, self.interval, self.poll = plan, interval, poll
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="afdistill-grid-watch", daemon=True)
        self._last_key: tuple | None = None
        self._last_time = 0.0

    def start(self) -> "GridWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and print the final line."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(5.0, 2 * self.poll))
        self.print_line(force=True)

    def _key(self) -> tuple:
        """What changes when a job finishes or starts (checkpoints its first epoch): cheap (file metadata only),
        polled often; the full survey reads checkpoints and runs only when a line is printed."""
        done, running, now = 0, [], time.time()
        for job in self.plan.jobs:
            if Path(job.marker).is_file():
                done += 1
                continue
            try:
                if now - (Path(job.folder) / "checkpoint.pt").stat().st_mtime < RUNNING_WITHIN_S:
                    running.append(job.folder)
            except OSError:
                pass
        return done, tuple(running)

    def print_line(self, force: bool = False) -> None:
        key: tuple | None  # None: no key read yet
        try:
            key = self._key()
            if not (force or key != self._last_key or time.monotonic() - self._last_time >= self.interval):
                return
            line = survey(self.plan).line()
        except Exception as problem:  # a watcher must never take the pipeline down
            line = f"grid {self.plan.grid.name!r}: progress unavailable ({problem})"
            key = self._last_key
        print(line, file=self.stream, flush=True)
        self._last_key, self._last_time = key, time.monotonic()

    def _loop(self) -> None:
        self.print_line(force=True)
        while not self._stop.wait(self.poll):
            self.print_line()
