"""MLflow: one run per training job, nested under one run per grid invocation, through MLflow's client API only.

The pipeline starts MLflow's tracking server (:func:`serve`, from Snakemake's ``onstart``) on ``./mlflow.db``:
one writer for every job, and artifacts stored under ``./mlartifacts`` as ``mlflow-artifacts:`` URIs relative
to it, so that the project can move (``mlflow ui`` in its new place lists them). ``MLFLOW_TRACKING_URI``
naming a server is used as it is. A job run by hand without it writes to ``sqlite:///<cwd>/mlflow.db``.

A job is one run (tag :data:`TAG_JOB`): a new attempt takes over the run it resumes from, marks other
unfinished runs of the job FAILED and soft-deletes an earlier FINISHED one; a step logged before is not
logged again.
"""

from __future__ import annotations

import atexit
import copy
import datetime
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
EXPERIMENT_PREFIX = "afdistill-"  # never confused with MLflow's own "Default" experiment

URI_ENV = "MLFLOW_TRACKING_URI"
GRID_RUN_ENV = "AFDISTILL_GRID_RUN_ID"  # set by start_grid() in Snakemake's process: every job nests under it
INVOCATION_ENV = "AFDISTILL_INVOCATION"
SYSTEM_METRICS_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"  # MLflow's own switch, honoured for client-made runs
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by `dvc exp run` in every stage command
DVC_STAGE_ENV = "DVC_STAGE"  # set by `dvc repro` and `dvc exp run` in every stage command

TAG_JOB = "afdistill.job"  # the job's identity: the same job in every attempt
TAG_SPEC_HASH = "afdistill.spec_hash"
TAG_ATTEMPT = "afdistill.attempt"
TAG_INVOCATION = "afdistill.invocation"
TAG_DVC_EXPERIMENT = "afdistill.dvc_experiment"
TAG_DVC_STAGE = "afdistill.dvc_stage"
TAG_FAILURE = "afdistill.failure"
TAG_SUPERSEDED_BY = "afdistill.superseded_by"
TAG_GRID = "afdistill.grid"
TAG_GIT_DIRTY = "afdistill.git_dirty"
TAG_MODEL_FORMAT = "afdistill.model_format"
TAG_PARENT = "mlflow.parentRunId"
# Without it the UI guesses the experiment's kind and may open runs under its GenAI views.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

FINISHED, RUNNING, FAILED = "FINISHED", "RUNNING", "FAILED"


# ---- the store and its server


def tracking_uri() -> str:
    return os.environ.get(URI_ENV) or f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else ``None``."""
    return Path(uri[len("sqlite:///") :].split("?")[0]).resolve() if uri.startswith("sqlite:///") else None


def client(uri: str | None = None):
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri())


@dataclass
class Server:
    process: subprocess.Popen
    uri: str


def serve(
    project_dir: str | Path = ".", public: bool = False, backend: str | None = None, timeout: float = 120.0
) -> Server | None:
    """Start ``mlflow server`` and wait for its ``/health``; artifacts go to ``mlartifacts/`` beside the database.

    Without ``backend`` (Snakemake's ``onstart``) it serves ``$MLFLOW_TRACKING_URI``'s store, else
    ``<project_dir>/mlflow.db``, and exports its URI as ``$MLFLOW_TRACKING_URI`` to the jobs; ``None`` where that
    already names a server. ``public``: listen on every interface, advertised by this host's name (SLURM jobs).
    Its output goes to ``<project_dir>/.snakemake/log/mlflow-server.log``.
    """
    export, project = backend is None, Path(project_dir).resolve()
    backend = backend or os.environ.get(URI_ENV) or f"sqlite:///{project / DEFAULT_DB}"
    if backend.startswith(("http://", "https://")):
        return None
    database = sqlite_path(backend)
    with socket.socket() as probe:  # a free port
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    host = socket.getfqdn() if public else "127.0.0.1"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str((database.parent if database else project) / DEFAULT_ARTIFACTS),
        "--port",
        str(port),
        "--host",
        "0.0.0.0" if public else host,
        "--workers",
        "1",
    ]
    if public:  # MLflow answers only requests addressed to localhost or a private IP unless told the name
        command += ["--allowed-hosts", f"{host},{host}:{port},localhost,localhost:{port},127.0.0.1,127.0.0.1:{port}"]
    log = project / ".snakemake" / "log" / "mlflow-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job workers
    env.pop(URI_ENV, None)
    with open(log, "a") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=project, start_new_session=True
        )
    server = Server(process, f"http://{host}:{port}")
    atexit.register(stop, server)  # if Snakemake ends without onsuccess/onerror
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            break
        except OSError:
            exited = process.poll() is not None
            if exited or time.monotonic() > deadline:
                stop(server)
                with open(log) as handle:
                    handle.seek(offset)
                    tail = handle.read()[-3000:]
                raise RuntimeError(
                    f"MLflow's tracking server ({' '.join(command)}) "
                    f"{'exited' if exited else f'did not answer within {timeout:.0f} s'}; "
                    f"{log} ends:\n{tail}"
                ) from None
            time.sleep(0.25)
    if export:
        os.environ[URI_ENV] = server.uri
    return server


def stop(server: Server | None) -> None:
    """Stop a server from :func:`serve` and its workers (its process group); a second call does nothing."""
    if server is None or server.process.returncode is not None:
        return
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
    except ProcessLookupError:  # the whole group is gone already
        server.process.wait()


def _served(uri: str, experiment_id: str) -> Server | None:
    """A server for a job or report run by hand on the sqlite store of an experiment the pipeline's server made:
    only a server resolves its ``mlflow-artifacts:`` locations. ``None`` where none is needed."""
    database = sqlite_path(uri)
    if database is None or not client(uri).get_experiment(experiment_id).artifact_location.startswith(
        "mlflow-artifacts:"
    ):
        return None
    return serve(database.parent, backend=uri)


def experiment_name(grid: str) -> str:
    """The MLflow experiment of a grid: ``afdistill-<grid>``."""
    if not grid:
        raise ValueError("experiment: the grid name is empty")
    return grid if grid.startswith(EXPERIMENT_PREFIX) else EXPERIMENT_PREFIX + grid


def ensure_experiment(mlflow_client, name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``, created if missing: a server chooses its artifact location
    (``mlflow-artifacts:``), a sqlite store's is ``mlartifacts/<name>`` beside the database."""
    from mlflow.exceptions import MlflowException

    uri = uri or mlflow_client.tracking_uri
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        database = sqlite_path(uri)
        location = (database.parent / DEFAULT_ARTIFACTS / name).as_uri() if database else None
        try:
            return mlflow_client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException as error:  # another job created it meanwhile
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = mlflow_client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise RuntimeError(
            f"MLflow experiment {name!r} ({uri}) is deleted; restore it (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}) or purge it (mlflow gc)"
        )
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def init(grid: str, uri: str | None = None) -> str:
    """Create the store and the grid's experiment (``afdistill init-tracking``); returns the experiment's id.
    A sqlite store is served meanwhile, so that the experiment's artifacts are the pipeline's kind (relative)."""
    uri = uri or tracking_uri()
    server = serve(cast(Path, sqlite_path(uri)).parent, backend=uri) if sqlite_path(uri) else None  # a sqlite URI
    try:
        return ensure_experiment(client(server.uri if server else uri), experiment_name(grid))
    finally:
        stop(server)


def spec_hash(spec_json: str) -> str:
    return hashlib.sha256(spec_json.encode()).hexdigest()[:16]


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def job_runs(mlflow_client, experiment_id: str, job_id: str) -> list:
    """Every live (not deleted) run of a job, newest first."""
    return mlflow_client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_JOB}` = '{_quote(job_id)}'",
        order_by=["attribute.start_time DESC"],
        max_results=1000,
    )


def find_job_run(grid: str, job_id: str, uri: str | None = None) -> tuple[str, str] | None:
    """``(run_id, status)`` of a job's newest run, or ``None``."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(experiment_name(grid))
    runs = job_runs(mlflow_client, experiment.experiment_id, job_id) if experiment else []
    return (runs[0].info.run_id, runs[0].info.status) if runs else None


# ---- metric names: the engine's flat names, grouped for the UI

_SPEED = {"images_per_s", "epoch_seconds"}


def metric_name(flat: str) -> str:
    """``loss_afd`` -> ``train/loss_afd``, ``test_top1`` -> ``test/top1``, ``final_test_top1`` -> ``final/...``."""
    if flat.startswith("loss_") or flat == "lr":
        return f"train/{flat}"
    for prefix in ("train_", "test_", "final_"):
        if flat.startswith(prefix):
            return f"{prefix[:-1]}/{flat[len(prefix) :]}"
    return f"speed/{flat}" if flat in _SPEED else f"other/{flat}"


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
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return f"{commit}+dirty" if dirty and commit != "unknown" else commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _env_tags() -> dict[str, str]:
    pairs = ((DVC_EXPERIMENT_ENV, TAG_DVC_EXPERIMENT), (DVC_STAGE_ENV, TAG_DVC_STAGE), (INVOCATION_ENV, TAG_INVOCATION))
    return {tag: os.environ[variable] for variable, tag in pairs if os.environ.get(variable)}


def context_tags(commit: str | None = None) -> dict[str, str]:
    """MLflow's own ``mlflow.user``/``mlflow.source.*`` tags (what ``mlflow.start_run`` adds), DVC's names."""
    from mlflow.tracking.context.registry import resolve_tags

    commit = commit or git_commit()
    tags = dict(resolve_tags())
    if commit != "unknown" and "mlflow.source.git.commit" not in tags:
        tags["mlflow.source.git.commit"] = commit.removesuffix("+dirty")
    if commit.endswith("+dirty"):  # MLflow's own tag names the commit; this says the tree had changes beside it
        tags[TAG_GIT_DIRTY] = "true"
    return {**tags, **_env_tags()}


def describe_runtime(resolved: Mapping[str, Any]) -> dict[str, str]:
    """The resolved runtime as ``runtime.*`` tags, plus what the process and host add to it."""
    import torch

    info = {f"runtime.{key}": str(value) for key, value in resolved.items()}
    cuda = str(resolved.get("device", "")).startswith("cuda") and torch.cuda.is_available()
    info.update(
        {
            "runtime.threads": str(torch.get_num_threads()),
            "runtime.interop_threads": str(torch.get_num_interop_threads()),
            "runtime.world_size": os.environ.get("WORLD_SIZE", "1"),
            "runtime.torch": torch.__version__,
            "runtime.cuda": (torch.version.cuda or "none") if cuda else "none",
            "runtime.cudnn": str(torch.backends.cudnn.version()) if cuda else "none",
            "runtime.gpu": torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else "none",
            "runtime.host": socket.gethostname(),
            "runtime.python": sys.version.split()[0],
        }
    )
    return info


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _log_params(mlflow_client, run_id: str, record: Mapping[str, Any]) -> None:
    """``record`` flattened (``schedule.lr``), in batches of MLflow's 100 params, values cut at its 6000 chars."""
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in sorted(_flatten(record).items())]
    for start in range(0, len(params), 100):
        mlflow_client.log_batch(run_id, params=params[start : start + 100])


# ---- one job's run


class JobRun:
    """The engine's tracker (:class:`afdistill.engine.Tracker`): one MLflow run per job.

    ``job_id`` identifies the job across attempts. ``parent_run_id`` (default ``$AFDISTILL_GRID_RUN_ID``)
    nests the run under a grid run. ``system_metrics`` (default ``$MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING``)
    samples CPU, memory, disk, network and GPU every ``system_metrics_interval`` seconds into ``system/*``.
    """

    def __init__(
        self,
        grid: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        job_id: str,
        *,
        uri: str | None = None,
        parent_run_id: str | None = None,
        system_metrics: bool | None = None,
        system_metrics_interval: float = 10.0,
    ):
        if not job_id:
            raise ValueError("JobRun: job_id is empty; pass the job's identity (e.g. its spec hash)")
        self.grid, self.run_name, self.tags, self.params, self.job_id = grid, run_name, dict(tags), params, job_id
        self.uri = uri or tracking_uri()
        self.parent_run_id = parent_run_id if parent_run_id is not None else os.environ.get(GRID_RUN_ENV)
        if system_metrics is None:
            system_metrics = os.environ.get(SYSTEM_METRICS_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        self.system_metrics = system_metrics
        self.system_metrics_interval = system_metrics_interval
        self.client = client(self.uri)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._last_step: dict[str, int] = {}
        self._monitor: SystemMetricsMonitor | None = None
        self._server: Server | None = None
        self.commit: str | None = None
        self.model_name: str | None = None  # the logged model's name (for_job: the job's); else log_model's
        self.registered_name: str | None = None  # a model registered under this name, if any
        self._final: list = []  # final metrics, logged with the model they describe (or at finish)

    def start(self, resume_run_id: str | None = None) -> str:
        """Open the job's run: take over ``resume_run_id`` (the checkpoint's), else create one. Other unfinished
        runs of the job are marked FAILED, earlier FINISHED ones soft-deleted (``mlflow gc`` purges them)."""
        self.experiment_id = ensure_experiment(self.client, experiment_name(self.grid), self.uri)
        self._server = _served(self.uri, self.experiment_id)
        if self._server is not None:
            self.uri, self.client = self._server.uri, client(self._server.uri)
        runs = job_runs(self.client, self.experiment_id, self.job_id)
        attempt = 1 + max((int(r.data.tags.get(TAG_ATTEMPT, "1")) for r in runs), default=0)
        resumed = next((r for r in runs if r.info.run_id == resume_run_id), None)
        if resume_run_id is not None and resumed is None:
            logging.getLogger(__name__).warning(
                "MLflow run %s of the checkpoint is not in %s; starting a new run", resume_run_id, self.uri
            )
        if resumed is not None:
            self.run_id = resumed.info.run_id
            self.client.update_run(self.run_id, status=RUNNING)
        else:
            tags = {**context_tags(self.commit), **self.tags, TAG_JOB: self.job_id}
            if self.parent_run_id:
                tags[TAG_PARENT] = self.parent_run_id
            self.run_id = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags).info.run_id
        for run in runs:
            if run.info.run_id == self.run_id:
                continue
            self.client.set_tag(run.info.run_id, TAG_SUPERSEDED_BY, self.run_id)
            if run.info.status == FINISHED:
                self.client.delete_run(run.info.run_id)
            elif run.info.status in (RUNNING, "SCHEDULED"):
                self.client.set_tag(run.info.run_id, TAG_FAILURE, f"superseded by attempt {attempt}")
                self.client.set_terminated(run.info.run_id, status=FAILED)
        tags = {TAG_ATTEMPT: str(attempt), **_env_tags()}
        tags.pop(TAG_DVC_STAGE, None)
        if self.parent_run_id:
            tags[TAG_PARENT] = self.parent_run_id  # a resumed job moves to the grid run that finished it
        self._log_tags(tags)
        if resumed is None:
            _log_params(self.client, self.run_id, self.params)
        else:
            self._last_step = {
                key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                for key in resumed.data.metrics
                if not key.startswith("system/")
            }
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=self.system_metrics_interval,
                resume_logging=resumed is not None,
                tracking_uri=self.uri,
            )
            self._monitor.start()
        return self.run_id

    def _log_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def last_logged_step(self) -> int:
        """The highest step (epoch) any training metric was logged at; 0 if none."""
        return max(self._last_step.values(), default=0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log the engine's flat-named metrics under grouped names; a (name, step) logged before is skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch: list[Metric] = []
        for key, value in metrics.items():
            name = metric_name(key)
            if step <= self._last_step.get(name, -1):
                continue
            (self._final if name.startswith("final/") else batch).append(Metric(name, float(value), now, step))
            self._last_step[name] = step
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def _log_final(self, model_id: str | None = None) -> None:
        """The final metrics, linked to the logged model where there is one (MLflow's model view lists them)."""
        from mlflow.entities import Metric

        final = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id) for m in self._final]
        self._final = []
        if final:
            self.client.log_batch(self.run_id, metrics=final)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_runtime(self, resolved: Mapping[str, Any]) -> None:
        """Record what ran: ``resolved`` is the engine's resolved runtime including ``device``."""
        self._log_tags(describe_runtime(resolved))

    def log_model(self, model, example, name: str = "student") -> str:
        """Log the network as an MLflow PyTorch model named after its job, with its signature and the final
        metrics linked to it; a teacher is also registered. Returns its model URI.

        Saved as ``torch.export``'s program (``pt2``): it loads with torch alone, any batch size. A network
        ``torch.export`` cannot trace is pickled (it then needs ``afdistill``); tag ``afdistill.model_format``.
        """
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import infer_signature

        from . import __version__

        network = copy.deepcopy(model).cpu().float().eval()
        example = example.detach().cpu().float()
        with torch.no_grad():
            logits = network(example)
        mlflow.set_tracking_uri(self.uri)  # log_model writes through MLflow's process-wide URI: the job's own
        name = self.model_name or name
        torch_requirement = f"torch=={torch.__version__.split('+')[0]}"
        # No run_id: given one, MLflow reads back the whole history of every metric of the run (a request per
        # metric) to link those logged at the model's step to it. The model is still the run's (its source run,
        # and the run's output below), and its final metrics are linked to it by _log_final.
        common = dict(
            name=name,
            signature=infer_signature(example.numpy(), logits.numpy()),
            input_example=example.numpy(),
            registered_model_name=self.registered_name,
        )
        # The exported program is traced on the example, which is all the check MLflow would add by loading it
        # back to serve the example (a third of a second a job); a pickled network keeps that check (there
        # ``validate_serving_input`` would reach torch.save).
        for model_format, requirements, extra in (
            ("pt2", [torch_requirement], {"validate_serving_input": False}),
            ("pickle", [torch_requirement, f"afdistill=={__version__}"], {}),
        ):
            logged = self.client.create_logged_model(
                self.experiment_id, name=name, source_run_id=self.run_id, tags={TAG_JOB: self.job_id, **self.tags}
            )
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # export's notes on dimensions; MLflow's advice to use pt2
                    info = mlflow.pytorch.log_model(
                        network,
                        serialization_format=model_format,
                        pip_requirements=requirements,
                        model_id=logged.model_id,
                        **common,
                        **extra,
                    )
                break
            except Exception as error:  # torch.export could not trace this network
                if model_format != "pt2":
                    raise
                logging.getLogger(__name__).info("torch.export failed (%s); logging %s pickled", error, name)
        self.client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=self.last_logged_step())])
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
            dataset = mlflow.data.from_numpy(  # type: ignore[attr-defined]  # mlflow.data sets it with setattr
                np.asarray(images), targets=np.asarray(labels), source=str(source), name=name
            )
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        from mlflow.exceptions import MlflowException

        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=[entry])
                return
            except MlflowException as error:
                # The server looks the dataset up, then inserts it: two jobs logging the same new dataset at
                # once collide on its unique key, and the next try finds the one the other job inserted.
                if "UNIQUE constraint failed" not in str(error) or attempt == 2:
                    raise

    def finish(self, status: str) -> None:
        try:
            if self.run_id is not None:
                self._log_final()
            if self._monitor is not None:
                self._monitor.finish()
                self._monitor = None
            if self.run_id is not None:
                self.client.set_terminated(self.run_id, status=status)
        finally:
            stop(self._server)


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
    tags = {"kind": spec.kind, "method": spec.method, "run": spec.run, "dataset": spec.dataset, "seed": str(spec.seed)}
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


def for_job(spec, commit: str | None = None, job_id: str | None = None, row: str | None = None, **options) -> JobRun:
    """The run of one job: tags name the table cell (:func:`job_tags`), params hold the spec with the method's
    effective hyper-parameters (the runtime goes to ``runtime.*`` tags as resolved). ``job_id`` defaults to the
    spec's hash; ``options`` go to :class:`JobRun`."""
    digest = spec_hash(spec.to_json())
    tags = {**job_tags(spec, row), TAG_SPEC_HASH: digest, TAG_GRID: spec.grid}
    params = {key: value for key, value in spec.to_dict().items() if key not in ("runtime", "method_params")}
    params["method_params"] = effective_params(spec.method, spec.method_params)
    job = JobRun(spec.grid, spec.title, tags, params, job_id or digest, **options)
    job.commit = commit
    job.model_name, job.registered_name = model_name(spec), registered_name(spec)
    return job


def model_name(spec) -> str:
    """A logged model's name: its job's (``student-afd-s0-resnet56-resnet20``)."""
    parts = [spec.kind] if spec.kind in ("teacher", "links") else [spec.kind, spec.run, f"s{spec.seed}"]
    parts += [name for name in (spec.teacher, spec.arch) if name and name not in parts]
    return "-".join(str(part).replace("/", "_") for part in parts)


def registered_name(spec) -> str | None:
    """Teachers are registered (``<grid>-teacher-<arch>``), what the grid's students read, by name."""
    return f"{spec.grid}-teacher-{spec.arch}" if spec.kind == "teacher" else None


# ---- the grid's run


def current_invocation() -> str:
    """``$AFDISTILL_INVOCATION``, else ``$DVC_EXP_NAME``, else under ``dvc repro`` a name every stage of one
    ``dvc repro`` shares (its stage commands inherit the ``dvc`` command's process group), else a timestamp."""
    if os.environ.get(INVOCATION_ENV) or os.environ.get(DVC_EXPERIMENT_ENV):
        return os.environ.get(INVOCATION_ENV) or os.environ[DVC_EXPERIMENT_ENV]
    if os.environ.get(DVC_STAGE_ENV):
        return f"dvc-{Path(os.environ.get('DVC_ROOT') or Path.cwd()).name}-pg{os.getpgrp()}"
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"


def start_grid(
    grid: str,
    grid_file: str | Path | None = None,
    invocation: str | None = None,
    uri: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> str:
    """Open the parent run of one grid invocation (:func:`current_invocation`; one seen before reopens its run) and
    export its id as ``$AFDISTILL_GRID_RUN_ID`` to the jobs this process starts. ``config`` (the grid as run)
    becomes its params, so that two invocations compare in MLflow's compare view."""
    name = invocation or current_invocation()
    os.environ[INVOCATION_ENV] = name
    mlflow_client = client(uri)
    experiment_id = ensure_experiment(mlflow_client, experiment_name(grid), uri or tracking_uri())
    found = mlflow_client.search_runs(
        [experiment_id],
        max_results=1,
        filter_string=f"tags.kind = 'grid' and tags.`{TAG_INVOCATION}` = '{_quote(name)}'",
    )
    if found:
        run_id = found[0].info.run_id
        mlflow_client.update_run(run_id, status=RUNNING)
    else:
        tags = {**context_tags(), "kind": "grid", TAG_GRID: grid, TAG_INVOCATION: name}
        if grid_file is not None:
            tags[TAG_SPEC_HASH] = spec_hash(Path(grid_file).read_text())
        run_id = mlflow_client.create_run(experiment_id, run_name=f"grid {grid} {name}", tags=tags).info.run_id
        if config is not None:
            _log_params(mlflow_client, run_id, config)
    if grid_file is not None:
        mlflow_client.log_artifact(run_id, str(grid_file), "grid")
    os.environ[GRID_RUN_ENV] = run_id
    return run_id


def finish_grid(status: str = FINISHED, run_id: str | None = None, uri: str | None = None) -> str | None:
    """End the grid run (``run_id``, else ``$AFDISTILL_GRID_RUN_ID``): Snakemake's ``onsuccess``/``onerror``."""
    run_id = run_id or os.environ.get(GRID_RUN_ENV)
    if run_id:
        client(uri).set_terminated(run_id, status=status)
    return run_id


def grid_runs(grid: str, uri: str | None = None) -> list:
    """The grid's parent runs, newest first."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(experiment_name(grid))
    if experiment is None:
        return []
    return mlflow_client.search_runs(
        [experiment.experiment_id], filter_string="tags.kind = 'grid'", order_by=["attribute.start_time DESC"]
    )


_FIGURES = {".png", ".svg", ".pdf", ".jpg"}


def _metric_key(text: str) -> str:
    """A name MLflow accepts (letters, digits, ``_-. :/``), the rest as ``_``."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-. :/") else "_" for c in text)


def log_grid_report(grid: str, folder: str | Path, parent_run_id: str | None = None, uri: str | None = None) -> str:
    """Log the report in ``folder`` to the grid run and finish it: every cell's mean over seeds as
    ``<teacher>_<student>/<run>/last`` and ``.../best`` metrics (from ``metrics/``), the results table as an
    MLflow table (``report/table.json``), the tables under ``report/`` and the figures under ``report/figures/``.

    The grid run is ``parent_run_id``, else ``$AFDISTILL_GRID_RUN_ID``, else the grid's newest, else a new one.
    """
    import csv

    from mlflow.entities import Metric

    folder, uri = Path(folder), uri or tracking_uri()
    run_id = parent_run_id or os.environ.get(GRID_RUN_ENV)
    if not run_id:
        latest = grid_runs(grid, uri)
        run_id = latest[0].info.run_id if latest else start_grid(grid, uri=uri)
    server = _served(uri, client(uri).get_run(run_id).info.experiment_id)
    try:
        mlflow_client = client(server.uri if server else uri)
        now = int(time.time() * 1000)
        metrics = []
        for path in sorted((folder / "metrics").rglob("*.json")):
            cell = _metric_key(str(path.relative_to(folder / "metrics").with_suffix("")))
            values = json.loads(path.read_text())
            metrics += [Metric(f"{cell}/{key}", float(values[key]), now, 0) for key in ("last", "best")]
        for start in range(0, len(metrics), 1000):
            mlflow_client.log_batch(run_id, metrics=metrics[start : start + 1000])
        with open(folder / "table.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            with warnings.catch_warnings():  # pandas 3's note on MLflow's own dtype selection
                warnings.simplefilter("ignore")
                mlflow_client.log_table(
                    run_id, {key: [row[key] for row in rows] for key in rows[0]}, "report/table.json"
                )
        for path in sorted(folder.glob("*")):
            if path.is_file():
                mlflow_client.log_artifact(run_id, str(path), "report")
        for path in sorted((folder / "figures").glob("*")):
            if path.suffix in _FIGURES:
                mlflow_client.log_artifact(run_id, str(path), "report/figures")
        mlflow_client.set_terminated(run_id, status=FINISHED)
    finally:
        stop(server)
    return run_id
