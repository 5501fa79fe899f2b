"""MLflow: one run per training job, in the experiment named after its grid.

The tracking URI comes from ``MLFLOW_TRACKING_URI``; without it every job
uses ``sqlite:///<working directory>/mlflow.db`` (an absolute path, so jobs
started from elsewhere agree) with artifacts under ``mlartifacts/<experiment>/``, which is
what ``mlflow ui`` opens when started in the same directory. (Not ``mlruns/``:
``mlflow ui`` would take an existing ``./mlruns`` for a file store.)

SQLite takes many concurrent writers once the schema exists, but several
processes creating it at once can collide, so the pipeline creates the
database and the experiment once before any job starts (:func:`init`).
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def _client():
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def _retry(action, attempts: int = 8):
    """SQLite may report 'database is locked' under contention; the work is idempotent, so try again."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # mlflow wraps sqlalchemy errors in several types
            text = str(error).lower()
            if attempt == attempts - 1 or not any(word in text for word in ("locked", "unique", "integrity", "already exists")):
                raise
            time.sleep(0.5 * (attempt + 1))


def experiment_id(client, name: str) -> str:
    def get_or_create():
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if "MLFLOW_TRACKING_URI" not in os.environ:
            location = (Path.cwd().resolve() / DEFAULT_ARTIFACTS / name).as_uri()
        return client.create_experiment(name, artifact_location=location)

    return _retry(get_or_create)


def init(experiment: str) -> str:
    """Create the tracking database (if local) and the experiment; safe to call repeatedly."""
    return experiment_id(_client(), experiment)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"{commit}+dirty" if dirty and commit != "unknown" else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class MlflowRun:
    """The engine's tracker (see :class:`afdistill.engine.Tracker`) backed by one MLflow run."""

    def __init__(self, experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any]):
        self.experiment, self.run_name, self.tags, self.params = experiment, run_name, tags, params
        self.client = _client()
        self.run_id: str | None = None

    def start(self, resume_run_id: str | None) -> str:
        if resume_run_id is not None:
            self.run_id = resume_run_id
            _retry(lambda: self.client.update_run(resume_run_id, status="RUNNING"))
            return resume_run_id
        experiment = experiment_id(self.client, self.experiment)
        run = _retry(lambda: self.client.create_run(experiment, run_name=self.run_name, tags=self.tags))
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in sorted(_flatten(self.params).items())]
        for start in range(0, len(params), 100):
            _retry(lambda chunk=params[start:start + 100]: self.client.log_batch(self.run_id, params=chunk))
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        _retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: str | Path) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path)))

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            _retry(lambda: self.client.set_terminated(self.run_id, status=status))


def for_job(spec, commit: str | None = None) -> MlflowRun:
    """The MLflow run of one job: tags name the table cell, params hold the whole spec."""
    tags = {
        "kind": spec.kind,
        "method": spec.method,
        "run": spec.run,
        "student": spec.arch if spec.kind != "teacher" else "",
        "teacher": spec.teacher if spec.kind != "teacher" else spec.arch,
        "dataset": spec.dataset,
        "seed": str(spec.seed),
        "git_commit": commit or git_commit(),
    }
    return MlflowRun(spec.grid, spec.title, tags, spec.to_dict())


def load_runs(run_ids: list[str]) -> dict[str, Any]:
    """Final and per-epoch metrics of the given runs, keyed by run id."""
    client = _client()
    runs = {}
    for run_id in run_ids:
        run = client.get_run(run_id)
        history = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
                   for key in ("test_top1", "train_top1", "loss_total")}
        runs[run_id] = {"tags": run.data.tags, "metrics": run.data.metrics, "status": run.info.status,
                        "history": history}
    return runs
