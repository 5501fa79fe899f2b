"""MLflow: one run per training job, nested under one run per grid invocation.

The tracking URI comes from ``MLFLOW_TRACKING_URI``; without it every job
uses ``sqlite:///<working directory>/mlflow.db`` (an absolute path, so jobs
started from elsewhere agree). With a sqlite store, artifacts live in
``mlartifacts/<experiment>/`` next to the database file. (Not ``mlruns/``:
``mlflow ui`` would take an existing ``./mlruns`` for a file store.)

Guarantees, each with a test in ``tests/test_tracking.py``:

* **Any number of processes may open a fresh store at once.** MLflow creates
  and migrates the schema when a process first opens the database, and
  several processes doing so at once crash half-way (issue 13). Every entry
  point here opens the store through :func:`open_store`, which holds an
  exclusive ``fcntl`` lock on ``<database>.lock`` while it creates, migrates
  or relocates the store, and while it creates an experiment or a job's run.
* **Artifacts follow the project.** MLflow records artifact locations as
  absolute ``file://`` paths; :func:`open_store` rewrites those under a
  moved project's ``mlartifacts/`` to where the database now is.
* **A job is one run.** Each run carries its job's identity (tag
  :data:`TAG_JOB`); a new attempt takes over the run it resumes from, marks
  other unfinished runs of the job FAILED, and (soft-)deletes an earlier
  FINISHED run it replaces, so the experiment shows one run per job. Metrics
  for a step already logged are not logged again.
"""
from __future__ import annotations

import copy
import datetime
import fcntl
import hashlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
EXPERIMENT_PREFIX = "afdistill-"  # never confused with MLflow's own "Default" experiment

# Environment variables. GRID_RUN_ENV is set by start_grid() in the process that then starts the jobs
# (Snakemake's onstart), so every job nests under that grid run.
GRID_RUN_ENV = "AFDISTILL_GRID_RUN_ID"
INVOCATION_ENV = "AFDISTILL_INVOCATION"
SYSTEM_METRICS_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"  # MLflow's own switch, honoured for client-made runs
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by `dvc exp run` in every stage command (dvc/repo/experiments/queue)
DVC_STAGE_ENV = "DVC_STAGE"  # set by `dvc repro` and `dvc exp run` in every stage command

TAG_JOB = "afdistill.job"  # the job's identity: the same job in every attempt
TAG_SPEC_HASH = "afdistill.spec_hash"
TAG_ATTEMPT = "afdistill.attempt"
TAG_INVOCATION = "afdistill.invocation"
TAG_DVC_EXPERIMENT = "afdistill.dvc_experiment"
TAG_DVC_STAGE = "afdistill.dvc_stage"
TAG_HOST, TAG_PID, TAG_PID_STARTED = "afdistill.host", "afdistill.pid", "afdistill.pid_started"
TAG_FAILURE = "afdistill.failure"
TAG_SUPERSEDED_BY = "afdistill.superseded_by"
TAG_GRID = "afdistill.grid"
TAG_GIT_DIRTY = "afdistill.git_dirty"
TAG_MODEL_FORMAT = "afdistill.model_format"
TAG_PARENT = "mlflow.parentRunId"
# Without it the UI guesses the experiment's kind and may open runs under its GenAI views.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

FINISHED, RUNNING, FAILED = "FINISHED", "RUNNING", "FAILED"


# ---- the store

def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute, or relative to the working directory)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?")[0]).resolve()


def artifact_root(uri: str) -> Path | None:
    """Where a sqlite store keeps artifacts: beside the database. ``None`` for a server, which decides."""
    database = sqlite_path(uri)
    return None if database is None else database.parent / DEFAULT_ARTIFACTS


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive lock on ``<database>.lock`` for a sqlite store (a server serialises its own writes)."""
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_opened: set[str] = set()


def _quiet() -> None:
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _ready_marker(database: Path) -> Path:
    return database.with_name(database.name + ".ready")


def _ready_stamp(database: Path) -> str:
    """Which database file, schema version and project place the marker vouches for."""
    import mlflow

    return f"{mlflow.__version__} {database.stat().st_ino} {database.parent}"


def _is_ready(uri: str) -> bool:
    """A store this MLflow version created or migrated, still at this place: opening it needs no lock."""
    database = sqlite_path(uri)
    if database is None:
        return True
    try:
        return _ready_marker(database).read_text() == _ready_stamp(database)
    except OSError:
        return False


def open_store(uri: str | None = None):
    """An ``MlflowClient`` for the store; the first call in a process creates, migrates and relocates it, locked.

    Once done, a ``<database>.ready`` marker (MLflow version, the file's
    inode and place) lets later processes open it without waiting for the lock.
    """
    _quiet()
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    if uri in _opened:
        return MlflowClient(tracking_uri=uri)
    if not _is_ready(uri):
        with store_lock(uri):
            if not _is_ready(uri):  # another process may have prepared it while this one waited
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates or migrates the schema
                relocate_artifacts(uri)
                database = sqlite_path(uri)
                if database is not None:
                    _ready_marker(database).write_text(_ready_stamp(database))
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)
    _opened.add(uri)
    return client


def relocate_artifacts(uri: str) -> int:
    """Point artifact locations under a moved project's ``mlartifacts/`` to the one beside the database now.

    MLflow stores them as absolute ``file://`` URIs in three tables; only
    locations that this module chose (``.../mlartifacts/<experiment>...``)
    are rewritten. Returns the number of experiments moved. Call it holding
    :func:`store_lock` (``open_store`` does).
    """
    database, root = sqlite_path(uri), artifact_root(uri)
    if database is None or not database.exists():
        return 0
    marker = f"/{DEFAULT_ARTIFACTS}/"
    new_root = root.as_uri()
    moved = 0
    with sqlite3.connect(database, timeout=30) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "experiments" not in tables:
            return 0
        for (location,) in connection.execute("SELECT artifact_location FROM experiments").fetchall():
            if not location or not location.startswith("file://") or marker not in location:
                continue
            old_root = location[:location.rindex(marker) + len(marker) - 1]
            if old_root == new_root:
                continue
            moved += 1
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                                  ("logged_models", "artifact_location")):
                if table in tables:
                    # the prefix includes the '/', so that ".../mlartifacts2/..." is never touched
                    connection.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                        (new_root, len(old_root) + 1, len(old_root) + 1, old_root + "/"))
    return moved


def _retry(action, attempts: int = 8):
    """SQLite may report 'database is locked' under contention; the work is idempotent, so try again."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # mlflow wraps sqlalchemy errors in several types
            text = str(error).lower()
            if attempt == attempts - 1 or "locked" not in text:
                raise
            time.sleep(0.5 * (attempt + 1))


def experiment_name(grid: str) -> str:
    """The MLflow experiment of a grid: ``afdistill-<grid>``."""
    if not grid:
        raise ValueError("experiment: the grid name is empty")
    return grid if grid.startswith(EXPERIMENT_PREFIX) else EXPERIMENT_PREFIX + grid


def ensure_experiment(client, name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``, created (with its kind tag and artifact location) if missing; locked."""
    uri = uri or client.tracking_uri
    with store_lock(uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise RuntimeError(f"MLflow experiment {name!r} ({uri}) is deleted; restore it "
                               f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                               f"or purge it (mlflow gc)")
        if experiment is None:
            root = artifact_root(uri)
            location = (root / name).as_uri() if root is not None else None
            experiment_id = client.create_experiment(name, artifact_location=location,
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:
            experiment_id = experiment.experiment_id
            if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment_id


def init(grid: str, uri: str | None = None) -> str:
    """Create the store and the grid's experiment, and fail runs of dead local jobs; safe to call at any time."""
    client = open_store(uri)
    experiment_id = ensure_experiment(client, experiment_name(grid), uri or tracking_uri())
    fail_dead_runs(client, experiment_id)
    return experiment_id


# ---- job identity and run lookup

def spec_hash(spec_json: str) -> str:
    return hashlib.sha256(spec_json.encode()).hexdigest()[:16]


def job_runs(client, experiment_id: str, job_id: str) -> list:
    """Every live (not deleted) run of a job, newest first."""
    quoted = job_id.replace("'", "\\'")
    return client.search_runs([experiment_id], filter_string=f"tags.`{TAG_JOB}` = '{quoted}'",
                              order_by=["attribute.start_time DESC"], max_results=1000)


def find_job_run(grid: str, job_id: str, uri: str | None = None) -> tuple[str, str] | None:
    """``(run_id, status)`` of a job's newest run, or ``None``: lets a caller recognise a completed job."""
    client = open_store(uri)
    experiment = client.get_experiment_by_name(experiment_name(grid))
    if experiment is None:
        return None
    runs = job_runs(client, experiment.experiment_id, job_id)
    return (runs[0].info.run_id, runs[0].info.status) if runs else None


def _process_started(pid: int) -> str:
    import psutil

    return f"{psutil.Process(pid).create_time():.2f}"


def _process_alive(pid: int, started: str) -> bool:
    import psutil

    try:
        return _process_started(pid) == started
    except psutil.Error:
        return False


def fail_dead_runs(client, experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING runs whose process (on this host) is gone; returns their ids.

    A run started on another host is left alone: only its next attempt can tell (see :meth:`JobRun.start`).
    """
    host = socket.gethostname()
    failed = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        if tags.get(TAG_HOST) != host or TAG_PID not in tags:
            continue
        if not _process_alive(int(tags[TAG_PID]), tags.get(TAG_PID_STARTED, "")):
            client.set_tag(run.info.run_id, TAG_FAILURE, f"process {tags[TAG_PID]} on {host} died")
            client.set_terminated(run.info.run_id, status=FAILED)
            failed.append(run.info.run_id)
    return failed


# ---- metric names: the engine's flat names, grouped for the UI, mapped in one place

_SPEED = {"images_per_s", "epoch_seconds"}


def metric_name(flat: str) -> str:
    """``loss_afd`` -> ``train/loss_afd``, ``test_top1`` -> ``test/top1``, ``final_test_top1`` -> ``final/test_top1``."""
    if flat.startswith("loss_") or flat == "lr":
        return f"train/{flat}"
    for prefix in ("train_", "test_", "final_"):
        if flat.startswith(prefix):
            return f"{prefix[:-1]}/{flat[len(prefix):]}"
    if flat in _SPEED:
        return f"speed/{flat}"
    return f"other/{flat}"


def flat_name(grouped: str) -> str:
    """The inverse of :func:`metric_name`."""
    group, _, name = grouped.partition("/")
    if group in ("test", "final") or (group == "train" and not name.startswith("loss_") and name != "lr"):
        return f"{group}_{name}"
    return name


# ---- context tags

def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"{commit}+dirty" if dirty and commit != "unknown" else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def context_tags(commit: str | None = None) -> dict[str, str]:
    """MLflow's own ``mlflow.user``/``mlflow.source.*`` tags (what ``mlflow.start_run`` adds), DVC's names."""
    from mlflow.tracking.context.registry import resolve_tags

    commit = commit or git_commit()
    tags = dict(resolve_tags())
    if commit != "unknown" and "mlflow.source.git.commit" not in tags:
        tags["mlflow.source.git.commit"] = commit.removesuffix("+dirty")
    if commit.endswith("+dirty"):  # MLflow's own tag names the commit; this says the tree had changes beside it
        tags[TAG_GIT_DIRTY] = "true"
    for variable, tag in ((DVC_EXPERIMENT_ENV, TAG_DVC_EXPERIMENT), (DVC_STAGE_ENV, TAG_DVC_STAGE),
                          (INVOCATION_ENV, TAG_INVOCATION)):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


def describe_runtime(resolved: Mapping[str, Any]) -> dict[str, str]:
    """The resolved runtime as ``runtime.*`` tags, plus what the process and host add to it."""
    import torch

    info = {f"runtime.{key}": str(value) for key, value in resolved.items()}
    cuda = str(resolved.get("device", "")).startswith("cuda") and torch.cuda.is_available()
    info.update({
        "runtime.threads": str(torch.get_num_threads()),
        "runtime.interop_threads": str(torch.get_num_interop_threads()),
        "runtime.world_size": os.environ.get("WORLD_SIZE", "1"),
        "runtime.torch": torch.__version__,
        "runtime.cuda": (torch.version.cuda or "none") if cuda else "none",
        "runtime.cudnn": str(torch.backends.cudnn.version()) if cuda else "none",
        "runtime.gpu": torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else "none",
        "runtime.host": socket.gethostname(),
        "runtime.python": sys.version.split()[0],
    })
    return info


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def _log_params(client, run_id: str, record: Mapping[str, Any]) -> None:
    """``record`` flattened (``schedule.lr``), in batches of MLflow's 100 params, values cut at its 6000 chars."""
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in sorted(_flatten(record).items())]
    for start in range(0, len(params), 100):
        _retry(lambda chunk=params[start:start + 100]: client.log_batch(run_id, params=chunk))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# ---- one job's run

class JobRun:
    """The engine's tracker (see :class:`afdistill.engine.Tracker`) backed by one MLflow run per job.

    ``job_id`` identifies the job across attempts. ``parent_run_id``
    (default: ``$AFDISTILL_GRID_RUN_ID``) nests the run under a grid run.
    ``system_metrics`` (default: ``$MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING``)
    samples CPU, memory, disk, network and GPU every
    ``system_metrics_interval`` seconds into ``system/*`` metrics.
    """

    def __init__(self, grid: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any], job_id: str,
                 *, uri: str | None = None, parent_run_id: str | None = None, system_metrics: bool | None = None,
                 system_metrics_interval: float = 10.0):
        if not job_id:
            raise ValueError("JobRun: job_id is empty; pass the job's identity (e.g. its spec hash)")
        self.grid, self.run_name, self.tags, self.params, self.job_id = grid, run_name, dict(tags), params, job_id
        self.uri = uri or tracking_uri()
        self.parent_run_id = parent_run_id if parent_run_id is not None else os.environ.get(GRID_RUN_ENV)
        self.system_metrics = _env_flag(SYSTEM_METRICS_ENV) if system_metrics is None else system_metrics
        self.system_metrics_interval = system_metrics_interval
        self.client = open_store(self.uri)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._last_step: dict[str, int] = {}
        self._monitor = None
        self.commit: str | None = None
        self.model_name: str | None = None  # the logged model's name (for_job: the job's); else log_model's
        self.registered_name: str | None = None  # a model registered under this name, if any
        self._final: list = []  # final metrics, logged with the model they describe (or at finish)

    def start(self, resume_run_id: str | None = None) -> str:
        """Open the job's run: take over ``resume_run_id`` (the engine resumes a checkpoint), else a new run.

        Other unfinished runs of the job are marked FAILED (their process
        died; this attempt supersedes them) and earlier FINISHED runs are
        deleted (soft: ``mlflow gc`` purges, the UI's "deleted" filter shows
        them), so the experiment holds one run per job.
        """
        self.experiment_id = ensure_experiment(self.client, experiment_name(self.grid), self.uri)
        with store_lock(self.uri):
            runs = _retry(lambda: job_runs(self.client, self.experiment_id, self.job_id))
            attempt = 1 + max((int(r.data.tags.get(TAG_ATTEMPT, "1")) for r in runs), default=0)
            resumed = next((r for r in runs if r.info.run_id == resume_run_id), None)
            if resume_run_id is not None and resumed is None:
                logging.getLogger(__name__).warning(
                    "MLflow run %s of the checkpoint is not in %s; starting a new run", resume_run_id, self.uri)
            if resumed is not None:
                self.run_id = resumed.info.run_id
                _retry(lambda: self.client.update_run(self.run_id, status=RUNNING))
            else:
                tags = {**context_tags(self.commit), **self.tags, TAG_JOB: self.job_id}
                if self.parent_run_id:
                    tags[TAG_PARENT] = self.parent_run_id
                run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags))
                self.run_id = run.info.run_id
            for run in runs:
                if run.info.run_id == self.run_id:
                    continue
                self.client.set_tag(run.info.run_id, TAG_SUPERSEDED_BY, self.run_id)
                if run.info.status == FINISHED:
                    self.client.delete_run(run.info.run_id)
                elif run.info.status in (RUNNING, "SCHEDULED"):
                    self.client.set_tag(run.info.run_id, TAG_FAILURE, f"superseded by attempt {attempt}")
                    self.client.set_terminated(run.info.run_id, status=FAILED)
        self._set_attempt_tags(attempt)
        if resumed is None:
            self._log_params()
        else:
            self._last_step = self._logged_steps()
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.system_metrics_interval,
                                                 resume_logging=resumed is not None, tracking_uri=self.uri)
            self._monitor.start()
        return self.run_id

    def _set_attempt_tags(self, attempt: int) -> None:
        from mlflow.entities import RunTag

        tags = {TAG_ATTEMPT: str(attempt), TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()),
                TAG_PID_STARTED: _process_started(os.getpid())}
        for variable, tag in ((DVC_EXPERIMENT_ENV, TAG_DVC_EXPERIMENT), (INVOCATION_ENV, TAG_INVOCATION)):
            if os.environ.get(variable):
                tags[tag] = os.environ[variable]
        if self.parent_run_id:
            tags[TAG_PARENT] = self.parent_run_id  # a resumed job moves to the grid run that finished it
        _retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]))

    def _log_params(self) -> None:
        _log_params(self.client, self.run_id, self.params)

    def _logged_steps(self) -> dict[str, int]:
        run = self.client.get_run(self.run_id)
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                for key in run.data.metrics if not key.startswith("system/")}

    def last_logged_step(self) -> int:
        """The highest step (epoch) any training metric was logged at; 0 if none."""
        return max(self._last_step.values(), default=0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log the engine's flat-named metrics under grouped names; a (name, step) logged before is skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            name = metric_name(key)
            if step <= self._last_step.get(name, -1):
                continue
            (self._final if name.startswith("final/") else batch).append(Metric(name, float(value), now, step))
            self._last_step[name] = step
        if batch:
            _retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def _log_final(self, model_id: str | None = None) -> None:
        """The final metrics, linked to the logged model where there is one (MLflow's model view lists them)."""
        from mlflow.entities import Metric

        final = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id) for m in self._final]
        self._final = []
        if final:
            _retry(lambda: self.client.log_batch(self.run_id, metrics=final))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_runtime(self, resolved: Mapping[str, Any]) -> None:
        """Record what ran: ``resolved`` is the engine's resolved runtime including ``device``; see describe_runtime."""
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in describe_runtime(resolved).items()]
        _retry(lambda: self.client.log_batch(self.run_id, tags=tags))

    def log_model(self, model, example, name: str = "student") -> str:
        """Log a network as an MLflow PyTorch model, named after its job, with its signature (images -> logits)
        and the final metrics linked to it; a teacher is also registered. Returns its model URI.

        Saved as ``torch.export``'s program (``serialization_format="pt2"``, MLflow's recommendation): it loads
        with torch alone, any batch size. A network ``torch.export`` cannot trace is pickled instead
        (it then needs ``afdistill`` to load, which its requirements name); the tag ``afdistill.model_format``
        says which.
        """
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        from . import __version__

        network = copy.deepcopy(model).cpu().float().eval()
        example = example.detach().cpu().float()
        with torch.no_grad():
            logits = network(example)
        signature = infer_signature(example.numpy(), logits.numpy())
        mlflow.set_tracking_uri(self.uri)  # log_model writes through MLflow's process-wide URI: the job's own
        name = self.model_name or name
        torch_requirement = f"torch=={torch.__version__.split('+')[0]}"
        logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id,
                                                 tags={TAG_JOB: self.job_id, **self.tags})
        common = dict(name=name, signature=signature, model_id=logged.model_id, run_id=self.run_id,
                      input_example=example.numpy(), registered_model_name=self.registered_name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # export's notes on specialised dimensions
                info = mlflow.pytorch.log_model(network, serialization_format="pt2",
                                                pip_requirements=[torch_requirement], **common)
            model_format = "pt2"
        except Exception as error:  # torch.export could not trace this network
            logging.getLogger(__name__).info("torch.export failed (%s); logging %s pickled", error, name)
            logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id,
                                                     tags={TAG_JOB: self.job_id, **self.tags})
            common["model_id"] = logged.model_id
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MLflow's note recommending pt2: tried above
                info = mlflow.pytorch.log_model(network, serialization_format="pickle",
                                                pip_requirements=[torch_requirement, f"afdistill=={__version__}"],
                                                **common)
            model_format = "pickle"
        self.client.set_tag(self.run_id, TAG_MODEL_FORMAT, model_format)
        self._log_final(logged.model_id)
        return info.model_uri

    def log_input(self, name: str, source: str | Path, images, labels, context: str = "train") -> None:
        """Log the dataset a job trained (``context="train"``) or was evaluated on (``"eval"``) as a run input."""
        import mlflow.data
        import numpy as np
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local file
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(np.asarray(images), targets=np.asarray(labels), source=str(source),
                                             name=name)
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        _retry(lambda: self.client.log_inputs(self.run_id, datasets=[entry]))

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            self._log_final()
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if self.run_id is not None:
            _retry(lambda: self.client.set_terminated(self.run_id, status=status))



def run_name(spec) -> str:
    """What differs first: method (the grid's run name), then seed, then the pair."""
    if spec.kind == "teacher":
        return f"teacher {spec.arch}"
    if spec.kind == "heads":
        return f"{spec.method} heads {spec.teacher}"
    pair = f"{spec.teacher}->{spec.arch}" if spec.teacher else spec.arch
    return f"links {pair}" if spec.kind == "links" else f"{spec.run} s{spec.seed} {pair}"


def effective_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a method runs with: its constructor's defaults under what the grid set, part by
    part for a combination (so AT's KD weight and temperature show even where the grid left them alone)."""
    from .methods import method_class, method_defaults

    resolved = {**method_defaults(method), **params}
    parts = resolved.get("parts")
    if isinstance(parts, Mapping):
        from .methods.combined import _part_method

        resolved["parts"] = {}
        for name, entry in parts.items():
            part, own = _part_method(name, entry, f"parts.{name}")
            resolved["parts"][name] = {"method": part, **effective_params(part, own)}
    method_class(method)  # an unknown name fails here, naming the registered ones
    return resolved


def job_tags(spec, row: str | None = None) -> dict[str, str]:
    """The tags a researcher filters and groups by: the table ``row`` (its label, the swept values beside) and
    the ``pair`` (``teacher->student``; the student's architecture alone for a student trained without one)."""
    tags = {"kind": spec.kind, "method": spec.method, "run": spec.run, "dataset": spec.dataset,
            "seed": str(spec.seed)}
    if spec.kind == "teacher":
        tags.update(teacher=spec.arch, pair=spec.arch, row="Teacher")
    else:
        if spec.arch:
            tags["student"] = spec.arch
        if spec.teacher:
            tags["teacher"] = spec.teacher
        tags["pair"] = f"{spec.teacher}->{spec.arch}" if spec.teacher and spec.arch else (spec.arch or spec.teacher)
        tags["row"] = row or spec.run
    return tags


def for_job(spec, commit: str | None = None, job_id: str | None = None, row: str | None = None,
            **options) -> JobRun:
    """The MLflow run of one job: tags name the table cell (:func:`job_tags`), params hold the spec with the
    method's effective hyper-parameters (the requested runtime is left to the ``runtime.*`` tags, which say
    what it resolved to).

    ``job_id`` defaults to the spec's hash (the same job, the same identity); ``options`` go to :class:`JobRun`.
    """
    digest = spec_hash(spec.to_json())
    tags = {**job_tags(spec, row), TAG_SPEC_HASH: digest, TAG_GRID: spec.grid}
    params = {key: value for key, value in spec.to_dict().items() if key not in ("runtime", "method_params")}
    params["method_params"] = effective_params(spec.method, spec.method_params)
    job = JobRun(spec.grid, run_name(spec), tags, params, job_id or digest, **options)
    job.commit = commit
    job.model_name, job.registered_name = model_name(spec), registered_name(spec)
    return job


def model_name(spec) -> str:
    """A logged model's name: its job's (``student-afd-s0-resnet56-resnet20``), so the models list reads
    like the runs list."""
    parts = [spec.kind] if spec.kind in ("teacher", "links") else [spec.kind, spec.run, f"s{spec.seed}"]
    parts += [name for name in (spec.teacher, spec.arch) if name and name not in parts]
    return "-".join(str(part).replace("/", "_") for part in parts)


def registered_name(spec) -> str | None:
    """Teachers are registered (``<grid>-teacher-<arch>``), what the grid's students read, by name."""
    return f"{spec.grid}-teacher-{spec.arch}" if spec.kind == "teacher" else None


# ---- the grid's run

def _new_invocation() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"


def _dvc_invocation() -> str | None:
    """Under ``dvc repro`` (``$DVC_STAGE`` set), the ``dvc`` process that runs every stage, as
    ``dvc-<start time>-<pid>``: the stages' Snakemake runs then share one grid run."""
    if not os.environ.get(DVC_STAGE_ENV):
        return None
    import psutil

    try:
        for process in psutil.Process().parents():
            command = process.cmdline()
            if any(Path(part).name == "dvc" for part in command[:2]):
                started = datetime.datetime.fromtimestamp(process.create_time(), datetime.timezone.utc)
                return f"dvc-{started:%Y%m%dT%H%M%SZ}-{process.pid}"
    except psutil.Error:
        return None
    return None


def start_grid(grid: str, grid_file: str | Path | None = None, invocation: str | None = None,
               uri: str | None = None, config: Mapping[str, Any] | None = None) -> str:
    """Open the parent run of one grid invocation and export it to the jobs this process starts.

    ``invocation`` defaults to ``$AFDISTILL_INVOCATION``, then
    ``$DVC_EXP_NAME``, then the ``dvc repro`` process running this stage,
    then a new timestamp; an invocation seen before reopens its run, so every
    stage of one ``dvc repro`` or ``dvc exp run`` lands under one parent. Sets ``$AFDISTILL_GRID_RUN_ID`` and
    ``$AFDISTILL_INVOCATION`` in this process's environment. ``config`` (the grid as run, overrides
    included) becomes the run's params, so that two invocations compare in MLflow's compare view.
    """
    invocation = (invocation or os.environ.get(INVOCATION_ENV) or os.environ.get(DVC_EXPERIMENT_ENV)
                  or _dvc_invocation() or _new_invocation())
    os.environ[INVOCATION_ENV] = invocation
    client = open_store(uri)
    uri = uri or tracking_uri()
    experiment_id = ensure_experiment(client, experiment_name(grid), uri)
    fail_dead_runs(client, experiment_id)
    with store_lock(uri):
        quoted = invocation.replace("'", "\\'")
        found = client.search_runs([experiment_id], filter_string=f"tags.kind = 'grid' and "
                                   f"tags.`{TAG_INVOCATION}` = '{quoted}'", max_results=1)
        # The invoking process (Snakemake's), so that a killed invocation's run is marked FAILED by the next one.
        owner = {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()), TAG_PID_STARTED: _process_started(os.getpid())}
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status=RUNNING)
            for key, value in owner.items():
                client.set_tag(run_id, key, value)
        else:
            tags = {**context_tags(), "kind": "grid", TAG_GRID: grid, TAG_INVOCATION: invocation, **owner}
            if grid_file is not None:
                tags[TAG_SPEC_HASH] = spec_hash(Path(grid_file).read_text())
            run_id = client.create_run(experiment_id, run_name=f"grid {grid} {invocation}", tags=tags).info.run_id
            if config is not None:
                _log_params(client, run_id, config)
    if grid_file is not None:
        client.log_artifact(run_id, str(grid_file), "grid")
    os.environ[GRID_RUN_ENV] = run_id
    return run_id


def finish_grid(status: str = FINISHED, run_id: str | None = None, uri: str | None = None) -> str | None:
    """End the grid run (``run_id``, else ``$AFDISTILL_GRID_RUN_ID``): Snakemake's ``onsuccess``/``onerror``."""
    run_id = run_id or os.environ.get(GRID_RUN_ENV)
    if run_id:
        open_store(uri).set_terminated(run_id, status=status)
    return run_id


def grid_runs(grid: str, uri: str | None = None) -> list:
    """The grid's parent runs, newest first."""
    client = open_store(uri)
    experiment = client.get_experiment_by_name(experiment_name(grid))
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string="tags.kind = 'grid'",
                              order_by=["attribute.start_time DESC"])


_FIGURES = {".png", ".svg", ".pdf", ".jpg"}


def _metric_key(text: str) -> str:
    """A name MLflow accepts (letters, digits, ``_-. :/``), the rest as ``_``."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-. :/") else "_" for c in text)


def log_grid_report(grid: str, folder: str | Path, parent_run_id: str | None = None, uri: str | None = None) -> str:
    """Log the report in ``folder`` to the grid run and finish it: every cell's mean over seeds as
    ``<teacher>_<student>/<run>/last`` and ``.../best`` metrics (from ``metrics/``), the results table as an
    MLflow table (``report/table.json``, the UI's table view), the tables as files under ``report/`` and the
    figures under ``report/figures/``.

    The grid run is ``parent_run_id``, else ``$AFDISTILL_GRID_RUN_ID``, else
    the grid's newest one, else a new one (a report made outside a pipeline).
    """
    import csv

    from mlflow.entities import Metric

    folder = Path(folder)
    client = open_store(uri)
    run_id = parent_run_id or os.environ.get(GRID_RUN_ENV)
    if not run_id:
        latest = grid_runs(grid, uri)
        run_id = latest[0].info.run_id if latest else start_grid(grid, uri=uri)
    now = int(time.time() * 1000)
    metrics = []
    for path in sorted((folder / "metrics").rglob("*.json")):
        cell = _metric_key(str(path.relative_to(folder / "metrics").with_suffix("")))
        values = json.loads(path.read_text())
        metrics += [Metric(f"{cell}/{key}", float(values[key]), now, 0) for key in ("last", "best")]
    for start in range(0, len(metrics), 1000):
        _retry(lambda chunk=metrics[start:start + 1000]: client.log_batch(run_id, metrics=chunk))
    with open(folder / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows:
        with warnings.catch_warnings():  # pandas 3's note on MLflow's own dtype selection
            warnings.simplefilter("ignore")
            client.log_table(run_id, {key: [row[key] for row in rows] for key in rows[0]}, "report/table.json")
    for path in sorted(folder.glob("*")):
        if path.is_file():
            client.log_artifact(run_id, str(path), "report")
    for path in sorted((folder / "figures").glob("*")):
        if path.suffix in _FIGURES:
            client.log_artifact(run_id, str(path), "report/figures")
    client.set_terminated(run_id, status=FINISHED)
    return run_id
