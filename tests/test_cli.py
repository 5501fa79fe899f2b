"""The command line: an interrupted job resumes into the same MLflow run; bad input is named before work starts."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import TINY_GRID, run, tool_env

from afdistill.spec import JobSpec, Schedule


def afdistill(*args, cwd, check=True):
    return run([sys.executable, "-m", "afdistill.cli", *args], cwd=cwd, check=check)


def test_ctrl_c_then_rerun_resumes_the_same_job_and_mlflow_run(small_data, tmp_path):
    spec = JobSpec(
        kind="teacher",
        grid="resume",
        dataset="digits",
        arch="resnet20",  # a few seconds of training after the first checkpoint: time for the signal to land
        method="vanilla",
        run="teacher",
        seed=0,
        device="cpu",
        schedule=Schedule(epochs=5, batch_size=16, lr_decay_epochs=(4,)),
    )
    command = [
        sys.executable,
        "-m",
        "afdistill.cli",
        "train",
        "--spec",
        spec.to_json(),
        "--data",
        str(small_data),
        "--out",
        str(tmp_path / "job"),
        "--threads",
        "1",
    ]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C's default action, even where the suite itself was started in the background (a shell without job
        # control starts background commands with SIGINT ignored, and Python then keeps ignoring it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    checkpoint = tmp_path / "job" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    assert "rerun the same command to resume" in output
    assert not (tmp_path / "job" / "metrics.json").exists()

    resumed = subprocess.run(command, cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert [round(h["lr"], 6) for h in metrics["history"]] == [0.05, 0.05, 0.05, 0.005, 0.005]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("afdistill-resume").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == metrics["run_id"] and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(metrics["run_id"], "test/top1")] == [1, 2, 3, 4, 5]


def test_a_bad_grid_is_named_with_its_allowed_values(tmp_path):
    grid = json.loads(json.dumps(TINY_GRID))
    grid["pairs"][0]["student"] = "resnet9"
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    result = afdistill("check", "--grid", "grid.yaml", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert (
        "grid.yaml: pairs[0].student: unknown architecture 'resnet9'; allowed: mobilenetv1, mobilenetv2, nin_thin"
        in result.stderr
    )


def test_missing_cifar_stops_the_prepare_stage_with_directions(tmp_path):
    result = afdistill(
        "prepare", "--dataset", "cifar100", "--out", "data/cifar100", "--root", "data/raw", cwd=tmp_path, check=False
    )
    assert result.returncode == 2
    assert "data/raw/cifar-100-python lacks train, test, meta" in result.stderr
    assert "--download" in result.stderr and not (tmp_path / "data" / "cifar100").exists()


def test_a_student_job_without_its_inputs_is_refused_before_training(small_data, tmp_path):
    spec = JobSpec(
        kind="student",
        grid="x",
        dataset="digits",
        arch="resnet8",
        teacher="resnet8",
        method="afd_pretrained",
        run="afd_pretrained",
        seed=0,
        device="cpu",
    )
    result = afdistill(
        "train",
        "--spec",
        spec.to_json(),
        "--data",
        str(small_data),
        "--out",
        "job",
        "--teacher-checkpoint",
        "missing.pt",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0 and "needs --artifact (the links stage's links.json)" in result.stderr
    assert not Path(tmp_path / "job").exists() and not (tmp_path / "mlflow.db").exists()
