"""MLflow tracking against real sqlite stores: concurrent creation, one run per job, nesting, models, moves."""
import multiprocessing
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import torch

from afdistill import tracking
from afdistill.spec import JobSpec, Schedule


def sqlite_uri(directory: Path) -> str:
    return f"sqlite:///{directory / 'mlflow.db'}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store shared by the tests that each use their own job identities."""
    directory = tmp_path_factory.mktemp("store")
    uri = sqlite_uri(directory)
    tracking.init("shared", uri)
    return uri


def spec(seed=0, method="afd", grid="shared"):
    return JobSpec(kind="student", grid=grid, dataset="digits", arch="resnet8", teacher="resnet14", method=method,
                   run=method, seed=seed, device="cpu", schedule=Schedule(epochs=3))


def steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


# ---- 1. concurrent first touch

def _first_touch(uri, barrier, job):
    barrier.wait()
    run = tracking.JobRun("fresh", f"job {job}", {}, {"job": job}, job_id=f"job-{job}", uri=uri)
    run.start(None)
    run.log_metrics({"loss_total": 1.0 / (job + 1)}, step=1)
    run.finish("FINISHED")


def test_eight_processes_create_a_fresh_store_at_once(tmp_path):
    uri = sqlite_uri(tmp_path)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(8)
    processes = [context.Process(target=_first_touch, args=(uri, barrier, job)) for job in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * 8

    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        names = [row[0] for row in connection.execute("SELECT name FROM experiments")]
    assert names.count("afdistill-fresh") == 1
    client = tracking.open_store(uri)
    experiment = client.get_experiment_by_name("afdistill-fresh")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags[tracking.TAG_JOB] for r in runs) == [f"job-{j}" for j in range(8)]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.metrics["train/loss_total"] for r in runs) == sorted(1.0 / (j + 1) for j in range(8))


# ---- 2. a job is one run

def test_a_resumed_attempt_takes_over_its_run_and_logs_each_epoch_once(store):
    client = tracking.open_store(store)
    first = tracking.for_job(spec(seed=10), commit="abc", uri=store)
    run_id = first.start(None)
    for epoch in (1, 2):
        first.log_metrics({"loss_total": 1.0 / epoch, "test_top1": 0.1 * epoch}, step=epoch)
    # the process dies here: no finish(); its checkpoint holds epoch 1 only (the write of epoch 2 failed)

    second = tracking.for_job(spec(seed=10), commit="abc", uri=store)
    assert second.start(run_id) == run_id
    assert second.last_logged_step() == 2
    for epoch in (2, 3):
        second.log_metrics({"loss_total": 1.0 / epoch, "test_top1": 0.1 * epoch}, step=epoch)
    second.log_metrics({"final_test_top1": 0.3}, step=3)
    second.finish("FINISHED")

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.TAG_ATTEMPT] == "2"
    assert steps(client, run_id, "test/top1") == [1, 2, 3]
    assert steps(client, run_id, "train/loss_total") == [1, 2, 3]
    assert run.data.metrics["final/test_top1"] == 0.3
    assert tracking.find_job_run("shared", first.job_id, store) == (run_id, "FINISHED")


def test_a_restart_from_scratch_fails_the_stale_run_and_a_retrain_leaves_one_finished_run(store):
    client = tracking.open_store(store)
    stale = tracking.for_job(spec(seed=11), uri=store)
    stale_id = stale.start(None)
    stale.log_metrics({"loss_total": 2.0}, step=1)  # killed before its first checkpoint

    fresh = tracking.for_job(spec(seed=11), uri=store)
    fresh_id = fresh.start(None)
    assert fresh_id != stale_id
    assert client.get_run(stale_id).info.status == "FAILED"
    assert client.get_run(stale_id).data.tags[tracking.TAG_SUPERSEDED_BY] == fresh_id
    assert fresh.last_logged_step() == 0
    fresh.log_metrics({"loss_total": 1.5}, step=1)
    fresh.finish("FINISHED")

    # outputs lost, the job trained again: the earlier FINISHED run is soft-deleted, not duplicated
    again = tracking.for_job(spec(seed=11), uri=store)
    again_id = again.start(None)
    again.finish("FINISHED")
    experiment = client.get_experiment_by_name("afdistill-shared").experiment_id
    live = client.search_runs([experiment], filter_string=f"tags.`{tracking.TAG_JOB}` = '{again.job_id}'")
    assert sorted((r.info.run_id, r.info.status) for r in live) == sorted([(again_id, "FINISHED"),
                                                                          (stale_id, "FAILED")])
    assert client.get_run(fresh_id).info.lifecycle_stage == "deleted"
    assert client.get_run(again_id).data.tags[tracking.TAG_ATTEMPT] == "3"


def _start_and_die(uri):
    tracking.for_job(spec(seed=12), uri=uri).start(None)
    os._exit(1)


def test_a_run_whose_process_died_is_marked_failed(store):
    process = multiprocessing.get_context("fork").Process(target=_start_and_die, args=(store,))
    process.start()
    process.join(timeout=60)
    client = tracking.open_store(store)
    experiment = client.get_experiment_by_name("afdistill-shared").experiment_id
    job = tracking.spec_hash(spec(seed=12).to_json())
    [run] = tracking.job_runs(client, experiment, job)
    assert run.info.status == "RUNNING"
    assert run.info.run_id in tracking.fail_dead_runs(client, experiment)
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    assert "died" in client.get_run(run.info.run_id).data.tags[tracking.TAG_FAILURE]
    # a live process's run is left alone
    live = tracking.for_job(spec(seed=13), uri=store)
    live_id = live.start(None)
    assert live_id not in tracking.fail_dead_runs(client, experiment)
    live.finish("FINISHED")


def _start_grid_and_die(uri: str) -> None:
    os.environ.pop(tracking.GRID_RUN_ENV, None)
    tracking.start_grid("killed", invocation="first", uri=uri)
    os._exit(0)  # as a SIGKILLed Snakemake: no onsuccess/onerror closes its grid run


def test_a_killed_invocations_grid_run_is_marked_failed_by_the_next(tmp_path, monkeypatch):
    uri = sqlite_uri(tmp_path)
    monkeypatch.delenv(tracking.GRID_RUN_ENV, raising=False)
    process = multiprocessing.get_context("fork").Process(target=_start_grid_and_die, args=(uri,))
    process.start()
    process.join(timeout=60)
    second = tracking.start_grid("killed", invocation="second", uri=uri)
    client = tracking.open_store(uri)
    statuses = {run.data.tags[tracking.TAG_INVOCATION]: run.info.status for run in tracking.grid_runs("killed", uri)}
    assert statuses == {"first": "FAILED", "second": "RUNNING"}
    tracking.finish_grid(run_id=second, uri=uri)
    assert client.get_run(second).info.status == "FINISHED"


# ---- 3. grid-level view

def test_jobs_nest_under_their_grid_run_which_holds_the_report(tmp_path, monkeypatch):
    uri = sqlite_uri(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-puma")
    monkeypatch.delenv(tracking.INVOCATION_ENV, raising=False)
    monkeypatch.delenv(tracking.GRID_RUN_ENV, raising=False)
    grid_file = tmp_path / "default.yaml"
    grid_file.write_text("grid: nest\n")
    parent = tracking.start_grid("nest", grid_file, uri=uri, config={"grid": "nest", "seeds": [0, 1],
                                                                      "schedule": {"lr": 0.05}})
    assert os.environ[tracking.GRID_RUN_ENV] == parent and os.environ[tracking.INVOCATION_ENV] == "tidy-puma"

    children = []
    for seed in (0, 1):
        job = tracking.for_job(spec(seed=seed, grid="nest"), uri=uri)
        children.append(job.start(None))
        job.finish("FINISHED")
    reports = tmp_path / "reports"
    (reports / "figures").mkdir(parents=True)
    (reports / "metrics" / "resnet14_resnet8").mkdir(parents=True)
    (reports / "table.md").write_text("# table\n")
    (reports / "table.csv").write_text("row,run,mean\nAFD,afd,0.5\n")
    (reports / "figures" / "curves.png").write_text("png")
    (reports / "metrics" / "resnet14_resnet8" / "afd.json").write_text('{"last": 0.5, "best": 0.625, "seeds": 2}')
    assert tracking.log_grid_report("nest", reports, uri=uri) == parent

    client = tracking.open_store(uri)
    for child in children:
        tags = client.get_run(child).data.tags
        assert tags[tracking.TAG_PARENT] == parent
        assert tags[tracking.TAG_INVOCATION] == "tidy-puma" and tags[tracking.TAG_DVC_EXPERIMENT] == "tidy-puma"
        assert len(tags[tracking.TAG_SPEC_HASH]) == 16 and tags[tracking.TAG_ATTEMPT] == "1"
    assert client.get_run(children[0]).info.run_name == "afd s0 resnet14->resnet8"
    grid = client.get_run(parent)
    assert grid.info.status == "FINISHED" and grid.data.tags["kind"] == "grid"
    assert grid.data.tags[tracking.TAG_SPEC_HASH] == tracking.spec_hash("grid: nest\n")
    assert {a.path for a in client.list_artifacts(parent)} == {"grid", "report"}
    assert {a.path for a in client.list_artifacts(parent, "report")} == {"report/table.md", "report/table.csv",
                                                                          "report/table.json", "report/figures"}
    # the grid run compares with another invocation: its config as params, every cell's means as metrics
    assert grid.data.params == {"grid": "nest", "seeds": "[0, 1]", "schedule.lr": "0.05"}
    assert grid.data.metrics == {"resnet14_resnet8/afd/last": 0.5, "resnet14_resnet8/afd/best": 0.625}
    assert [a.path for a in client.list_artifacts(parent, "report/figures")] == ["report/figures/curves.png"]
    # the same invocation (a later DVC stage) reopens the same grid run
    assert tracking.start_grid("nest", uri=uri) == parent
    assert client.get_run(parent).info.status == "RUNNING"
    assert tracking.finish_grid("FAILED", uri=uri) == parent
    assert client.get_run(parent).info.status == "FAILED"


# ---- 4 and 5. what ran, models, inputs, names, system metrics

def test_resolved_runtime_model_and_dataset_are_recorded(store):
    from afdistill.models import create_model

    job = tracking.for_job(spec(seed=20), uri=store)
    run_id = job.start(None)
    job.log_runtime({"device": "cpu", "precision": "fp32", "channels_last": True, "cuda_graphs": False})
    torch.manual_seed(0)
    model = create_model("resnet8", 10)
    images = torch.randn(4, 3, 32, 32)
    labels = torch.arange(4)
    job.log_input("digits", "/data/digits/train.npz", images.numpy(), labels.numpy(), context="train")
    job.log_metrics({"test_top1": 0.5, "final_test_top1": 0.5, "final_test_top1_best": 0.75}, step=3)
    uri = job.log_model(model, images[:2], name="student")
    job.finish("FINISHED")

    client = tracking.open_store(store)
    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["runtime.device"] == "cpu" and tags["runtime.precision"] == "fp32"
    assert tags["runtime.threads"] == str(torch.get_num_threads()) and tags["runtime.torch"] == torch.__version__
    assert tags["runtime.gpu"] == "none" and tags["runtime.world_size"] == "1"
    assert "mlflow.user" in tags and "mlflow.source.name" in tags
    assert tags["runtime.cuda"] == "none" and "git_commit" not in tags
    assert (tags["row"], tags["pair"], tags["teacher"], tags["student"]) == ("afd", "resnet14->resnet8", "resnet14",
                                                                            "resnet8")
    # the hyper-parameters the method ran with, defaults included; the runtime only as resolved (tags)
    params = run.data.params
    assert params["method_params.beta"] == "200.0" and params["method_params.temperature"] == "4.0"
    assert not any(key.startswith("runtime.") for key in params)
    assert run.data.metrics["final/test_top1_best"] == 0.75
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "digits" and dataset_input.tags[0].value == "train"
    # the model is named after its job, exported (pt2), its final metrics linked to it
    [logged] = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                           filter_string="name = 'student-afd-s20-resnet14-resnet8'")
    assert tags[tracking.TAG_MODEL_FORMAT] == "pt2"
    assert {m.key: m.value for m in logged.metrics} == {"final/test_top1": 0.5, "final/test_top1_best": 0.75}

    import mlflow.pytorch
    from mlflow.models import get_model_info

    info = get_model_info(uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 10)
    loaded = mlflow.pytorch.load_model(uri)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_a_teacher_is_registered_and_loads_by_its_name(store):
    import mlflow.pytorch

    from afdistill.models import create_model

    teacher = JobSpec(kind="teacher", grid="shared", dataset="digits", arch="resnet8", teacher=None, method="vanilla",
                      run="teacher", seed=0, device="cpu", schedule=Schedule(epochs=1))
    job = tracking.for_job(teacher, uri=store)
    job.start(None)
    torch.manual_seed(1)
    model = create_model("resnet8", 10).eval()
    job.log_model(model, torch.randn(2, 3, 32, 32), name="teacher")
    job.finish("FINISHED")
    tags = tracking.open_store(store).get_run(job.run_id).data.tags
    assert tags["teacher"] == "resnet8" and "student" not in tags
    import mlflow

    mlflow.set_tracking_uri(store)
    loaded = mlflow.pytorch.load_model("models:/shared-teacher-resnet8/1")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_metric_names_are_grouped_and_map_back():
    table = {"loss_total": "train/loss_total", "loss_afd": "train/loss_afd", "lr": "train/lr",
             "train_top1": "train/top1", "test_top5": "test/top5", "final_test_top1": "final/test_top1",
             "images_per_s": "speed/images_per_s", "epoch_seconds": "speed/epoch_seconds"}
    assert {flat: tracking.metric_name(flat) for flat in table} == table
    assert {tracking.flat_name(grouped) for grouped in table.values()} == set(table)
    assert tracking.experiment_name("default") == "afdistill-default"


def test_system_metrics_are_logged_when_switched_on(store, monkeypatch):
    monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, "true")
    job = tracking.for_job(spec(seed=30), uri=store, system_metrics_interval=0.2)
    run_id = job.start(None)
    time.sleep(1.0)
    job.finish("FINISHED")
    metrics = tracking.open_store(store).get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)

    monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, "false")
    quiet = tracking.for_job(spec(seed=31), uri=store, system_metrics_interval=0.2)
    quiet_id = quiet.start(None)
    time.sleep(0.5)
    quiet.finish("FINISHED")
    assert not any(k.startswith("system/") for k in tracking.open_store(store).get_run(quiet_id).data.metrics)


# ---- 6. artifacts follow the project

def test_artifacts_are_listed_after_the_project_moves(tmp_path):
    before, after = tmp_path / "before" / "project", tmp_path / "after" / "project"
    before.mkdir(parents=True)
    job = tracking.JobRun("moving", "job", {}, {}, job_id="job", uri=sqlite_uri(before))
    run_id = job.start(None)
    (before / "metrics.json").write_text("{}")
    job.log_artifact(before / "metrics.json")
    job.finish("FINISHED")
    after.parent.mkdir()
    shutil.move(before, after)

    from mlflow import MlflowClient

    assert MlflowClient(tracking_uri=sqlite_uri(after)).list_artifacts(run_id) == []  # what MLflow alone shows
    client = tracking.open_store(sqlite_uri(after))
    assert [a.path for a in client.list_artifacts(run_id)] == ["metrics.json"]
    assert client.get_run(run_id).info.artifact_uri.startswith((after / "mlartifacts").as_uri() + "/")


# ---- 7. a tracking server (the cluster setup)

def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_jobs_log_through_an_mlflow_server_with_served_artifacts(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    import urllib.request

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", sqlite_uri(tmp_path), "--artifacts-destination", str(tmp_path / "mlartifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "mlflow server did not answer /health within 120 s"
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        job = tracking.for_job(spec(seed=40, grid="served"))
        run_id = job.start(None)
        job.log_metrics({"test_top1": 0.5}, step=1)
        (tmp_path / "metrics.json").write_text("{}")
        job.log_artifact(tmp_path / "metrics.json")
        job.finish("FINISHED")

        client = tracking.open_store()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["test/top1"] == 0.5
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # relative to the server's destination
        assert [a.path for a in client.list_artifacts(run_id)] == ["metrics.json"]
        assert list((tmp_path / "mlartifacts").rglob("metrics.json"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
