"""The real pipeline on a tiny grid: Snakemake runs it, MLflow records it, DVC pins and reproduces it."""
import csv
import json
import re
import sqlite3
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_GRID, make_project, run, tool_env

pytestmark = pytest.mark.slow

STUDENT_JOBS = 22  # 11 methods x 2 seeds
RESULTS = Path("results/default")


def mlflow_runs(project: Path) -> list[dict]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("default")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [{"id": r.info.run_id, "status": r.info.status, "tags": r.data.tags, "metrics": r.data.metrics,
             "params": r.data.params, "artifacts": [a.path for a in client.list_artifacts(r.info.run_id)],
             "history": client.get_metric_history(r.info.run_id, "test_top1")} for r in runs]


@pytest.fixture(scope="module")
def snakemake_project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("snakemake") / "project")
    first = run(["snakemake", "--cores", "2"], cwd=project)
    return project, first


def test_snakemake_runs_the_grid_end_to_end(snakemake_project):
    project, first = snakemake_project
    log = first.stdout + first.stderr
    for rule in ("prepare_data", "train_teacher", "find_links", "pretrain_heads", "distill", "report"):
        assert f"(Rule: {rule})" in log
    assert (project / RESULTS / "links/digits/resnet8/resnet8/links.csv").exists()
    assert (project / "reports/default/figures/links_resnet8_resnet8.png").stat().st_size > 1000
    assert (project / "reports/default/figures/curves_resnet8_resnet8.png").stat().st_size > 1000
    again = run(["snakemake", "--cores", "2"], cwd=project)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_every_job_is_one_finished_mlflow_run_with_per_epoch_metrics(snakemake_project):
    project, _ = snakemake_project
    runs = mlflow_runs(project)
    kinds = sorted(r["tags"]["kind"] for r in runs)
    assert kinds == sorted(["links", "teacher", "heads"] + ["student"] * STUDENT_JOBS)
    for record in runs:
        assert record["status"] == "FINISHED"
        assert {"method", "teacher", "student", "dataset", "seed", "git_commit"} <= set(record["tags"])
        epochs = 2 if record["tags"]["kind"] == "teacher" else 1
        if record["tags"]["kind"] == "heads":
            assert record["tags"]["method"] == "mhan" and "loss_mhan" in record["metrics"]
        assert [m.step for m in record["history"]] == list(range(1, epochs + 1))
        assert {"loss_total", "train_top1", "train_top5", "test_top5", "lr", "images_per_s"} <= set(record["metrics"])
        assert "loss_ce" in record["metrics"] or record["tags"]["kind"] == "heads"
        assert "metrics.json" in record["artifacts"]
        assert record["params"]["schedule.batch_size"] == "64"
    afd = [r for r in runs if r["tags"]["method"] == "afd" and r["tags"]["kind"] == "student"]
    assert all("loss_afd" in r["metrics"] and "loss_kd" in r["metrics"] and "attention.png" in r["artifacts"]
               for r in afd)
    links = next(r for r in runs if r["tags"]["kind"] == "links")
    assert {"links.json", "links.csv", "links.png"} <= set(links["artifacts"])


def test_the_report_holds_the_tracked_numbers(snakemake_project):
    project, _ = snakemake_project
    table = (project / "reports/default/table.md").read_text()
    for row in ("| Teacher |", "| Student |", "| KD |", "| FitNet |", "| ATT |", "| Grad-AT |", "| RKD |", "| CRD |",
                "| L2T |", "| MHGD |", "| AFD |", "| AFD (pre-trained links) |"):
        assert row in table
    assert "## Training cost per epoch, relative to KD" in table
    finals = {}
    for record in mlflow_runs(project):
        if record["tags"]["kind"] == "student":
            finals.setdefault(record["tags"]["run"], []).append(record["metrics"]["final_test_top1"])
    with open(project / "reports/default/table.csv") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    for run_name, values in finals.items():
        assert int(rows[run_name]["n"]) == 2
        assert float(rows[run_name]["mean"]) == pytest.approx(sum(values) / 2)
    kd_mean = f"{float(rows['kd']['mean']):.4f}"
    assert re.search(rf"\| KD \| {kd_mean} ± ", table)
    metrics = json.loads((project / "reports/default/metrics.json").read_text())
    assert metrics["resnet8->resnet8/kd"]["n"] == 2


def test_snakemake_html_report(snakemake_project):
    project, _ = snakemake_project
    run(["snakemake", "--cores", "1", "--report", "report.html"], cwd=project)
    assert "Tables" in (project / "report.html").read_text(errors="ignore")


def test_paper_grid_dry_run_lists_every_job():
    result = run(["snakemake", "-n", "--configfile", "params/cifar100.yaml"], cwd=ROOT)
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M))
    # 7 pairs x 5 seeds x (KD, FitNet, AT, RKD, CRD, L2T + AFD at four betas)
    # + the plain student once per architecture (5) x 5 seeds
    assert counts["distill"] == str(7 * 5 * 10 + 5 * 5)
    assert counts["train_teacher"] == "4" and counts["prepare_data"] == "1" and counts["report"] == "1"


def test_an_invalid_grid_is_refused_before_any_job_starts(tmp_path):
    grid = json.loads(json.dumps(TINY_GRID))
    grid["methods"]["kd"]["temprature"] = 3
    project = make_project(tmp_path / "project", grid)
    result = run(["snakemake", "--cores", "1"], cwd=project, check=False)
    assert result.returncode != 0
    assert "methods.kd.temprature: method 'kd' has no parameter 'temprature'; allowed: alpha, gamma, temperature" in (
        result.stdout + result.stderr)
    assert not (project / "data").exists() and not (project / "mlflow.db").exists()


def _git(project, *args):
    run(["git", *args], cwd=project)


def test_dvc_repro_pins_the_pipeline_and_reruns_only_what_changed(tmp_path):
    # every stage, fewer jobs: one seed, the methods that need links and heads, and KD to change
    grid = json.loads(json.dumps(TINY_GRID))
    grid["seeds"] = [0]
    grid["methods"] = {name: grid["methods"][name] for name in ("vanilla", "kd", "mhgd", "afd_pretrained")}
    project = make_project(tmp_path / "project", grid)
    _git(project, "init", "-q")
    _git(project, "config", "user.email", "ci@example.com")
    _git(project, "config", "user.name", "ci")
    (project / ".gitignore").write_text("/data/\n/results/\n/mlflow.db\n/mlartifacts/\n/.snakemake/\n")
    run(["dvc", "init", "-q"], cwd=project)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "pipeline")

    first = run(["dvc", "repro"], cwd=project)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"data", "teachers", "links", "heads", "students", "report"}
    outs = {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    assert {"data/digits", "results/default/teachers", "results/default/links", "results/default/heads",
            "results/default/students", "reports/default/metrics.json", "reports/default/table.md"} <= outs
    assert lock["stages"]["students"]["params"]["params/default.yaml"]["methods"]["kd"]["temperature"] == 4
    assert "Running stage 'report'" in first.stdout

    second = run(["dvc", "repro"], cwd=project)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout

    shown = run(["dvc", "metrics", "show", "--json"], cwd=project).stdout
    assert "resnet8->resnet8/afd" in shown

    params = yaml.safe_load((project / "params/default.yaml").read_text())
    params["methods"]["kd"]["temperature"] = 3
    (project / "params/default.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run(["dvc", "repro"], cwd=project)
    ran = set(re.findall(r"Running stage '(\w+)'", third.stdout))
    assert ran == {"students", "report"}
    trained = re.findall(r'afdistill train --spec \'(\{.*?\})\'', third.stdout + third.stderr)
    assert [json.loads(spec)["run"] for spec in trained] == ["kd"]


def test_the_slurm_profile_asks_one_gpu_per_training_job():
    result = run(["snakemake", "-n", "--profile", "profiles/slurm", "--configfile", "params/cifar100.yaml"], cwd=ROOT)
    jobs = result.stdout.split("\nrule ")[1:]
    training = [job for job in jobs if job.startswith(("distill", "train_teacher"))]
    assert training and all("gpu=1" in job and "slurm_partition=" in job for job in training)
    assert all("gpu=1" not in job for job in jobs if job.startswith(("prepare_data", "report")))
