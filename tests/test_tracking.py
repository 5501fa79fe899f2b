"""MLflow tracking against real stores: one run per job, nesting, models; served: many writers, moves."""

import multiprocessing
import os
import re
import shutil
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
    tracking.ensure_experiment(tracking.client(uri), "afdistill-shared", uri)
    return uri


def spec(seed=0, method="afd", grid="shared"):
    return JobSpec(
        kind="student",
        grid=grid,
        dataset="digits",
        arch="resnet8",
        teacher="resnet14",
        method=method,
        run=method,
        seed=seed,
        device="cpu",
        schedule=Schedule(epochs=3),
    )


def steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


# ---- 2. a job is one run


def test_a_resumed_attempt_takes_over_its_run_and_logs_each_epoch_once(store):
    client = tracking.client(store)
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
    client = tracking.client(store)
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
    assert sorted((r.info.run_id, r.info.status) for r in live) == sorted(
        [(again_id, "FINISHED"), (stale_id, "FAILED")]
    )
    assert client.get_run(fresh_id).info.lifecycle_stage == "deleted"
    assert client.get_run(again_id).data.tags[tracking.TAG_ATTEMPT] == "3"


# ---- 3. grid-level view


def test_jobs_nest_under_their_grid_run_which_holds_the_report(tmp_path, monkeypatch):
    uri = sqlite_uri(tmp_path)
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-puma")
    monkeypatch.delenv(tracking.INVOCATION_ENV, raising=False)
    monkeypatch.delenv(tracking.GRID_RUN_ENV, raising=False)
    grid_file = tmp_path / "default.yaml"
    grid_file.write_text("grid: nest\n")
    parent = tracking.start_grid(
        "nest", grid_file, uri=uri, config={"grid": "nest", "seeds": [0, 1], "schedule": {"lr": 0.05}}
    )
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

    client = tracking.client(uri)
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
    assert {a.path for a in client.list_artifacts(parent, "report")} == {
        "report/table.md",
        "report/table.csv",
        "report/table.json",
        "report/figures",
    }
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

    client = tracking.client(store)
    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["runtime.device"] == "cpu" and tags["runtime.precision"] == "fp32"
    assert tags["runtime.threads"] == str(torch.get_num_threads()) and tags["runtime.torch"] == torch.__version__
    assert tags["runtime.gpu"] == "none" and tags["runtime.world_size"] == "1"
    assert "mlflow.user" in tags and "mlflow.source.name" in tags
    assert tags["runtime.cuda"] == "none" and "git_commit" not in tags
    assert (tags["row"], tags["pair"], tags["teacher"], tags["student"]) == (
        "afd",
        "resnet14->resnet8",
        "resnet14",
        "resnet8",
    )
    # the hyper-parameters the method ran with, defaults included; the runtime only as resolved (tags)
    params = run.data.params
    assert params["method_params.beta"] == "200.0" and params["method_params.temperature"] == "4.0"
    assert not any(key.startswith("runtime.") for key in params)
    assert run.data.metrics["final/test_top1_best"] == 0.75
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "digits" and dataset_input.tags[0].value == "train"
    # the model is named after its job, exported (pt2), its final metrics linked to it
    [logged] = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string="name = 'student-afd-s20-resnet14-resnet8'"
    )
    assert tags[tracking.TAG_MODEL_FORMAT] == "pt2"
    assert {m.key: m.value for m in logged.metrics} == {"final/test_top1": 0.5, "final/test_top1_best": 0.75}
    assert logged.source_run_id == run_id
    [output] = client.get_run(run_id).outputs.model_outputs  # the run lists its model, at its last epoch
    assert (output.model_id, output.step) == (logged.model_id, 3)

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

    teacher = JobSpec(
        kind="teacher",
        grid="shared",
        dataset="digits",
        arch="resnet8",
        teacher=None,
        method="vanilla",
        run="teacher",
        seed=0,
        device="cpu",
        schedule=Schedule(epochs=1),
    )
    job = tracking.for_job(teacher, uri=store)
    job.start(None)
    torch.manual_seed(1)
    model = create_model("resnet8", 10).eval()
    job.log_model(model, torch.randn(2, 3, 32, 32), name="teacher")
    job.finish("FINISHED")
    tags = tracking.client(store).get_run(job.run_id).data.tags
    assert tags["teacher"] == "resnet8" and "student" not in tags
    import mlflow

    mlflow.set_tracking_uri(store)
    loaded = mlflow.pytorch.load_model("models:/shared-teacher-resnet8/1")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_metric_names_are_grouped_and_map_back():
    table = {
        "loss_total": "train/loss_total",
        "loss_afd": "train/loss_afd",
        "lr": "train/lr",
        "train_top1": "train/top1",
        "test_top5": "test/top5",
        "final_test_top1": "final/test_top1",
        "images_per_s": "speed/images_per_s",
        "epoch_seconds": "speed/epoch_seconds",
    }
    assert {flat: tracking.metric_name(flat) for flat in table} == table
    assert {tracking.flat_name(grouped) for grouped in table.values()} == set(table)
    assert tracking.experiment_name("default") == "afdistill-default"


def test_system_metrics_are_logged_when_switched_on(store, monkeypatch):
    monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, "true")
    job = tracking.for_job(spec(seed=30), uri=store, system_metrics_interval=0.2)
    run_id = job.start(None)
    time.sleep(1.0)
    job.finish("FINISHED")
    metrics = tracking.client(store).get_run(run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics)

    monkeypatch.setenv(tracking.SYSTEM_METRICS_ENV, "false")
    quiet = tracking.for_job(spec(seed=31), uri=store, system_metrics_interval=0.2)
    quiet_id = quiet.start(None)
    time.sleep(0.5)
    quiet.finish("FINISHED")
    assert not any(k.startswith("system/") for k in tracking.client(store).get_run(quiet_id).data.metrics)


# ---- 6. the pipeline's tracking server: many writers, artifacts that follow the project


@pytest.fixture
def no_uri(monkeypatch):
    """No MLFLOW_TRACKING_URI, and whatever serve() exports undone after the test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.GRID_RUN_ENV, raising=False)


def _log_job(uri, barrier, job, folder):
    barrier.wait()
    run = tracking.JobRun("served", f"job {job}", {"kind": "student"}, {"job": job}, job_id=f"job-{job}", uri=uri)
    run.start(None)
    for step in (1, 2, 3):
        run.log_metrics({"loss_total": job + step / 10}, step=step)
    (folder / f"{job}.json").write_text(str(job))
    run.log_artifact(folder / f"{job}.json")
    run.finish("FINISHED")


def test_eight_processes_log_their_jobs_through_one_served_store(tmp_path, no_uri):
    server = tracking.serve(tmp_path)
    try:
        assert os.environ["MLFLOW_TRACKING_URI"] == server.uri and server.uri.startswith("http://127.0.0.1:")
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(8)
        processes = [context.Process(target=_log_job, args=(server.uri, barrier, job, tmp_path)) for job in range(8)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        assert [p.exitcode for p in processes] == [0] * 8

        client = tracking.client(server.uri)
        experiment = client.get_experiment_by_name("afdistill-served")  # created once, by whichever came first
        assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
        assert experiment.artifact_location.startswith("mlflow-artifacts:/")  # relative to the served directory
        runs = client.search_runs([experiment.experiment_id])
        assert sorted(r.data.tags[tracking.TAG_JOB] for r in runs) == [f"job-{j}" for j in range(8)]
        assert {r.info.status for r in runs} == {"FINISHED"}
        for run in runs:
            job = int(run.data.params["job"])
            assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss_total")] == [
                (step, job + step / 10) for step in (1, 2, 3)
            ]
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"{job}.json"]
    finally:
        tracking.stop(server)
    assert server.process.returncode is not None
    assert len(list((tmp_path / "mlartifacts").rglob("*.json"))) == 8


def _listed(uri: str, run_id: str) -> list[str]:
    return sorted(a.path for a in tracking.client(uri).list_artifacts(run_id))


@pytest.mark.slow
def test_artifacts_follow_the_project_and_a_job_run_by_hand_reaches_them(tmp_path, no_uri, monkeypatch):
    before, after = tmp_path / "before" / "project", tmp_path / "after" / "project"
    before.mkdir(parents=True)
    (before / "metrics.json").write_text("{}")
    server = tracking.serve(before)
    try:
        job = tracking.for_job(spec(seed=40, grid="moving"))
        run_id = job.start(None)
        job.log_metrics({"test_top1": 0.5}, step=1)
        job.log_artifact(before / "metrics.json")
        job.finish("FINISHED")
        run = tracking.client().get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["test/top1"] == 0.5
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    finally:
        tracking.stop(server)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    after.parent.mkdir()
    shutil.move(before, after)

    # a job run by hand in the moved project (no server, no MLFLOW_TRACKING_URI) serves the store for itself
    monkeypatch.chdir(after)
    hand = tracking.for_job(spec(seed=41, grid="moving"))
    hand_id = hand.start(None)
    assert hand.uri.startswith("http://127.0.0.1:")
    hand.log_artifact(after / "metrics.json")
    hand.finish("FINISHED")
    assert hand._server.process.returncode is not None  # stopped with the job
    # `afdistill init-tracking` makes an experiment of the same kind, through a server of its own
    made = tracking.init("made-by-hand", sqlite_uri(after))

    server = tracking.serve(after)  # as `mlflow ui` would there
    try:
        assert _listed(server.uri, run_id) == ["metrics.json"] and _listed(server.uri, hand_id) == ["metrics.json"]
        assert tracking.client(server.uri).get_experiment(made).artifact_location.startswith("mlflow-artifacts:/")
        assert len(list((after / "mlartifacts").rglob("metrics.json"))) == 2
    finally:
        tracking.stop(server)


def test_a_server_that_cannot_start_says_why(tmp_path, no_uri):
    (tmp_path / "mlflow.db").write_text("not a database")
    with pytest.raises(RuntimeError, match="mlflow-server.log ends:") as error:
        tracking.serve(tmp_path, timeout=60)
    assert "file is not a database" in str(error.value) and "MLFLOW_TRACKING_URI" not in os.environ


def test_a_named_server_is_used_as_it_is(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.serve(".") is None and tracking.tracking_uri() == "http://tracking.example:5000"
    tracking.stop(None)


def test_every_stage_of_one_dvc_repro_shares_an_invocation(monkeypatch, tmp_path):
    for name in (tracking.INVOCATION_ENV, tracking.DVC_EXPERIMENT_ENV, tracking.DVC_STAGE_ENV):
        monkeypatch.delenv(name, raising=False)
    assert re.fullmatch(rf"\d{{8}}T\d{{6}}Z-{os.getpid()}", tracking.current_invocation())  # a new one
    monkeypatch.setenv(tracking.DVC_STAGE_ENV, "students")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    assert tracking.current_invocation() == f"dvc-project-pg{os.getpgrp()}"
    monkeypatch.setenv(tracking.DVC_EXPERIMENT_ENV, "tidy-puma")
    assert tracking.current_invocation() == "tidy-puma"
