"""The real pipeline on a tiny grid: Snakemake runs it, MLflow records it, DVC pins and reproduces it."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_GRID, make_project, run, tool_env

pytestmark = pytest.mark.slow

STUDENT_JOBS = 22  # 11 methods x 2 seeds
RESULTS = Path("results/default")


_READ: dict[tuple, list[dict]] = {}


def mlflow_runs(project: Path) -> list[dict]:
    """Every run of the project's store, read as `mlflow ui` would: through a server on the project's store
    (the artifacts are `mlflow-artifacts:` URIs, which only a server resolves); read again only once the store
    changed (each read starts a server)."""
    store = (project / "mlflow.db").stat()
    key = (str(project), store.st_mtime_ns, store.st_size)
    if key not in _READ:
        _READ[key] = _read_runs(project)
    return _READ[key]


def _read_runs(project: Path) -> list[dict]:
    from mlflow import MlflowClient

    from afdistill import tracking

    server = tracking.serve(project, backend=f"sqlite:///{project / 'mlflow.db'}")
    try:
        assert server is not None  # a sqlite backend is served
        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name("afdistill-default")
        assert experiment is not None  # the pipeline created it
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        return [
            {
                "id": r.info.run_id,
                "status": r.info.status,
                "tags": r.data.tags,
                "metrics": r.data.metrics,
                "params": r.data.params,
                "artifacts": [a.path for a in client.list_artifacts(r.info.run_id)],
                "parent": r.data.tags.get("mlflow.parentRunId"),
                "history": client.get_metric_history(r.info.run_id, "test/top1"),
            }
            for r in runs
        ]
    finally:
        tracking.stop(server)


def job_runs(project: Path) -> list[dict]:
    return [run for run in mlflow_runs(project) if run["tags"].get("kind") not in (None, "grid")]


@pytest.fixture(scope="module")
def snakemake_project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("snakemake") / "project")
    first = run(["snakemake", "--cores", "2"], cwd=project)
    return project, first


def trained(output: str) -> list[str]:
    """Folders of the jobs a Snakemake (or DVC) run executed, from the shell commands it printed (a pack's
    command names each of its students)."""
    return [
        folder.strip("'")
        for command in re.findall(r"afdistill run ((?:\S+ )+?)--job", output)
        for folder in command.split()
    ]


def job_counts(output: str) -> dict[str, str]:
    """Snakemake's job stats with each pack rule's members counted as the jobs of their kind's rule they are
    (``distill_pack_<hash>``: students, ``pretrain_heads_pack_<hash>``: heads)."""
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", output, re.M))
    packs = [name for name in counts if "_pack_" in name]
    folders = trained(output)
    for rule in {name.split("_pack_")[0] for name in packs}:
        part = {"distill": "/students/", "pretrain_heads": "/heads/"}[rule]
        members = sum(part in folder for folder in folders)
        counts["total"] = str(int(counts["total"]) + members - int(counts.get(rule, 0)))
        counts[rule] = str(members)
    for name in packs:
        del counts[name]
        counts["total"] = str(int(counts["total"]) - 1)
    return counts


def test_snakemake_runs_the_grid_end_to_end(snakemake_project):
    project, first = snakemake_project
    log = first.stdout + first.stderr
    for rule in ("prepare_data", "train_teacher", "find_links", "pretrain_heads", "distill", "make_report"):
        assert f"(Rule: {rule})" in log
        assert list((project / "logs").rglob("*.log")), "every rule writes a log"
    # the rules' priorities: with two cores and the two vanilla students also ready, the teacher starts at once
    started = re.findall(r"^(?:local)?rule (\w+):$", log, re.M)
    assert started[0] == "prepare_data" and "train_teacher" in started[1:3], started[:3]
    assert (project / RESULTS / "links/digits/resnet8/resnet8/links.csv").exists()
    assert (project / "reports/default/figures/links_resnet8_resnet8.png").stat().st_size > 1000
    assert (project / "reports/default/figures/curves_resnet8_resnet8.png").stat().st_size > 1000
    assert (project / "reports/default/figures/activation_maps_resnet8_resnet8.png").stat().st_size > 1000
    # the AFD paper's Figures 3 and 6 from the AFD run's per-epoch attention, as it trained
    assert (project / "reports/default/figures/attention_epochs.png").stat().st_size > 1000
    assert (project / "reports/default/figures/manual_vs_attention.png").stat().st_size > 1000
    assert (project / "reports/default/ablations.csv").read_text().startswith("table,row,column,run")
    # The grid's progress beside Snakemake's job lines: from nothing done to every job done.
    progress = re.findall(r"^grid 'default': (\d+)/(\d+) done.*$", log, flags=re.MULTILINE)
    total = progress[0][1]
    assert progress[0][0] == "0" and progress[-1] == (total, total) and len(progress) > 2
    again = run(["snakemake", "--cores", "2"], cwd=project)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_every_job_is_one_finished_mlflow_run_nested_under_the_grid_run(snakemake_project):
    project, _ = snakemake_project
    runs = job_runs(project)
    kinds = sorted(r["tags"]["kind"] for r in runs)
    assert kinds == sorted(["links", "teacher", "heads"] + ["student"] * STUDENT_JOBS)
    (grid_run,) = [r for r in mlflow_runs(project) if r["tags"].get("kind") == "grid"]
    assert grid_run["status"] == "FINISHED" and "report" in grid_run["artifacts"] and "grid" in grid_run["artifacts"]
    for record in runs:
        assert record["status"] == "FINISHED" and record["parent"] == grid_run["id"]
        assert {"method", "row", "pair", "dataset", "seed", "runtime.device", "runtime.threads"} <= set(record["tags"])
        assert ("teacher" in record["tags"]) == (record["tags"]["run"] != "vanilla")  # no empty teacher tag
        assert any(a.endswith(".log") for a in record["artifacts"]), "the job's log is kept with its run"
        epochs = 2 if record["tags"]["kind"] == "teacher" else 1
        if record["tags"]["kind"] == "heads":
            assert record["tags"]["method"] == "mhan" and "train/loss_mhan" in record["metrics"]
            assert "model.pt" in record["artifacts"]  # its attention network's state
            continue
        assert record["metrics"]["final/test_top1_best"] >= record["metrics"]["final/test_top1"]
        assert [m.step for m in record["history"]] == list(range(1, epochs + 1))
        assert {"train/loss_total", "train/top1", "train/top5", "test/top5", "train/lr", "speed/images_per_s"} <= set(
            record["metrics"]
        )
        assert "train/loss_ce" in record["metrics"]
        assert "metrics.json" in record["artifacts"]
        assert record["params"]["schedule.batch_size"] == "64"
    afd = [r for r in runs if r["tags"]["method"] == "afd" and r["tags"]["kind"] == "student"]
    assert all(
        "train/loss_afd" in r["metrics"] and "train/loss_kd" in r["metrics"] and "attention.png" in r["artifacts"]
        for r in afd
    )
    links = next(r for r in runs if r["tags"]["kind"] == "links")
    assert {"links.json", "links.csv", "links.png"} <= set(links["artifacts"])


def test_the_report_holds_the_tracked_numbers(snakemake_project):
    project, _ = snakemake_project
    table = (project / "reports/default/table.md").read_text()
    for row in (
        "| Teacher |",
        "| Student |",
        "| KD |",
        "| FitNet |",
        "| ATT |",
        "| Grad-AT |",
        "| RKD |",
        "| CRD |",
        "| L2T |",
        "| MHGD |",
        "| AFD |",
        "| AFD (pre-trained links) |",
    ):
        assert row in table
    assert "## Training cost per epoch" not in table  # measured: in timings.md, apart from the results
    finals = {}
    for record in job_runs(project):
        if record["tags"]["kind"] == "student":
            finals.setdefault(record["tags"]["run"], []).append(record["metrics"]["final/test_top1"])
    with open(project / "reports/default/table.csv") as handle:
        rows = {row["run"]: row for row in csv.DictReader(handle)}
    for run_name, values in finals.items():
        assert int(rows[run_name]["n"]) == 2
        assert float(rows[run_name]["mean"]) == pytest.approx(sum(values) / 2)
    kd_mean = f"{float(rows['kd']['mean']):.4f}"
    assert re.search(rf"\| KD \| {kd_mean} ± ", table)
    metrics = json.loads((project / "reports/default/metrics/resnet8_resnet8/kd.json").read_text())
    assert metrics["seeds"] == 2 and metrics["last"] == pytest.approx(float(rows["kd"]["mean"]))
    assert "training cost per epoch, relative to KD" in (project / "reports/default/timings.md").read_text()


def test_the_readmes_mlflow_recipe_gives_the_reports_means(snakemake_project, monkeypatch):
    """The README's grouping, run as printed there, against the report's table.csv."""
    project, _ = snakemake_project
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(import mlflow\n.*?search_runs.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(project)
    printed = []
    exec(code, {"print": printed.append})
    (grouped,) = printed
    means = grouped["mean"].to_dict()
    with open(project / "reports/default/table.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["run"] != "teacher" and row["last_mean"]]
    assert len(rows) == len(means) > 10
    for row in rows:
        label = f"{row['row']} [{row['variant']}]" if row["variant"] else row["row"]
        pair = f"{row['teacher']}->{row['student']}" if row["run"] != "vanilla" else row["student"]
        assert means[(pair, label)] == pytest.approx(float(row["last_mean"]), abs=1e-12), (pair, label)


def test_snakemake_html_report_shows_the_table_and_figures(snakemake_project):
    project, _ = snakemake_project
    run(["snakemake", "--cores", "1", "--report", "report.html"], cwd=project)
    page = (project / "report.html").read_text(errors="ignore")
    assert "Tables" in page and "table.html" in page and "curves_resnet8_resnet8.png" in page
    table = (project / "reports/default/table.html").read_text()
    assert "<table>" in table and "<td>KD</td>" in table

    # The report's data: `var results = {path: {caption, labels, ...}}`, `var categories = {category:
    # {subcategory: [path]}}` and `var rulegraph_spec` (Vega), one JSON object a line.
    def embedded(name: str) -> dict:
        match = re.search(rf"^\s*var {name} = (\{{.*\}});?\s*$", page, flags=re.MULTILINE)
        assert match, f"report.html has no {name}"
        return json.loads(match.group(1))

    results, categories = embedded("results"), embedded("categories")
    folder = "reports/default"
    figures = {Path(path).name: result for path, result in results.items() if path.startswith(f"{folder}/figures/")}
    assert set(figures) == {
        "curves_resnet8_resnet8.png",
        "links_resnet8_resnet8.png",
        "activation_maps_resnet8_resnet8.png",
        "attention_epochs.png",
        "manual_vs_attention.png",
    }
    captions = {name: " ".join(re.sub(r"<[^>]+>", "", result["caption"]).split()) for name, result in figures.items()}
    assert all(captions.values()) and len(set(captions.values())) == len(captions), "each figure its own caption"
    assert "resnet8 → resnet8: test top-1 accuracy" in captions["curves_resnet8_resnet8.png"]
    assert "link-finding run" in captions["links_resnet8_resnet8.png"]
    for name, figure in (
        ("activation_maps_resnet8_resnet8.png", "Figure 4"),
        ("attention_epochs.png", "Figure 3"),
        ("manual_vs_attention.png", "Figure 6"),
    ):
        assert f"AFD paper's {figure}" in captions[name] and figure in figures[name]["labels"]["figure"]
    assert all(set(result["labels"]) == {"figure", "pair"} for result in figures.values())
    assert figures["curves_resnet8_resnet8.png"]["labels"]["pair"] == "resnet8 → resnet8"
    assert set(categories["Figures"]) == {"resnet8 → resnet8", "All pairs"}
    # Tables: each its own caption and label; the header-only ablations.csv of a grid without the AFD paper's
    # ablation tables is not shown
    listed = {
        category: [path for paths in subcategories.values() for path in paths]
        for category, subcategories in categories.items()
    }
    tables = {Path(path).name: results[path] for path in listed["Tables"]}
    assert set(tables) == {"table.html", "table.csv"} and "ablations.csv" not in page
    assert tables["table.html"]["caption"] != tables["table.csv"]["caption"]
    assert tables["table.html"]["labels"] != tables["table.csv"]["labels"]
    assert "ablation" not in tables["table.html"]["caption"]
    from afdistill.jobs import KINDS

    if "timings.md" in KINDS["report"].files:
        (timings,) = [results[path] for path in listed["Timings"]]
        assert timings["name"] == "timings.md" and "relative to KD" in timings["caption"]
    # The landing page's rule graph: each rule once (the distill jobs read different kinds, so they sit at
    # different levels of the job graph; the report draws a node per rule and level)
    (nodes,) = [data["values"] for data in embedded("rulegraph_spec")["data"] if data["name"] == "node-data"]
    rules = [node["rule"] for node in nodes]
    assert sorted(rules) == sorted(set(rules)) and "distill" in rules


def test_a_changed_method_retrains_its_students_as_a_pack_of_the_outdated_ones_only(snakemake_project, tmp_path):
    source, _ = snakemake_project
    project = tmp_path / "copy"
    shutil.copytree(source, project, ignore=shutil.ignore_patterns(".snakemake"))
    with open(project / "src/afdistill/methods/afd.py", "a") as handle:
        handle.write("\nEDITED = True  # an edit\n")
    env = tool_env()
    env["PYTHONPATH"] = str(project / "src")  # the project's own code decides its fingerprints
    plan = run(["snakemake", "-n", "--cores", "1"], cwd=project, env=env)
    output = plan.stdout + plan.stderr
    packs = [command.split() for command in re.findall(r"afdistill run ((?:\S+ )+?)--job", output)]
    packs = [[folder.strip("'") for folder in pack] for pack in packs if len(pack) > 1]
    # per seed, AFD and AFD with pre-trained links (which reads the rerun link-finding job): one pack each
    students = f"{RESULTS}/students/digits/resnet8/resnet8"
    assert sorted(map(sorted, packs)) == [
        [f"{students}/afd/seed{seed}", f"{students}/afd_pretrained/seed{seed}"] for seed in (0, 1)
    ]
    assert not any("/kd/" in folder or "/crd/" in folder for folder in trained(output))
    unpacked = run(["snakemake", "-n", "--cores", "1", "--config", "pack=false"], cwd=project, env=env)
    assert not re.search(r"_pack_", unpacked.stdout)
    assert sorted(trained(unpacked.stdout + unpacked.stderr)) == sorted(trained(output))


def test_deleting_a_jobs_outputs_reruns_exactly_that_job_and_the_report(snakemake_project, tmp_path):
    source, _ = snakemake_project
    project = tmp_path / "copy"
    shutil.copytree(source, project, ignore=shutil.ignore_patterns(".snakemake"))
    shutil.rmtree(project / RESULTS / "students/digits/resnet8/resnet8/kd/seed1")
    (project / RESULTS / "students/digits/resnet8/resnet8/crd/seed0/model.pt").unlink()
    plan = run(["snakemake", "-n", "--cores", "1"], cwd=project)
    output = plan.stdout + plan.stderr
    assert "crd/seed0: some of its files are missing; it will run again" in output
    counts = job_counts(plan.stdout)
    assert counts == {"distill": "2", "make_report": "1", "all": "1", "total": "4"}
    assert sorted(trained(output)) == [
        "reports/default",
        f"{RESULTS}/students/digits/resnet8/resnet8/crd/seed0",
        f"{RESULTS}/students/digits/resnet8/resnet8/kd/seed1",
    ]


def test_a_fresh_clone_trains_the_whole_grid(snakemake_project, tmp_path):
    # The committed report must not make the main command a no-op: a clone has reports/ but no results/.
    source, _ = snakemake_project
    repository = tmp_path / "repository"
    shutil.copytree(
        source,
        repository,
        ignore=shutil.ignore_patterns(".snakemake", "results", "data", "logs", "mlflow.db", "mlartifacts"),
    )
    _git(repository, "init", "-q")
    _git(repository, "add", "-A")
    _git(repository, "-c", "user.email=ci@example.com", "-c", "user.name=ci", "commit", "-qm", "pinned report")
    assert (repository / "reports/default/table.md").exists()
    run(["git", "clone", "-q", str(repository), str(tmp_path / "clone")], cwd=tmp_path)
    plan = run(["snakemake", "-n", "--cores", "1"], cwd=tmp_path / "clone")
    counts = job_counts(plan.stdout)
    assert counts["distill"] == str(STUDENT_JOBS) and counts["make_report"] == "1" and counts["prepare_data"] == "1"


def test_paper_grid_dry_run_lists_every_job():
    result = run(["snakemake", "-n", "--configfile", "params/cifar100.yaml"], cwd=ROOT)
    counts = job_counts(result.stdout)
    # 7 pairs x 5 seeds x (KD, FitNet, AT, RKD, CRD, L2T + AFD at four betas)
    # + the plain student once per architecture (5) x 5 seeds
    assert counts["distill"] == str(7 * 5 * 10 + 5 * 5)
    assert counts["train_teacher"] == "4" and counts["prepare_data"] == "1" and counts["make_report"] == "1"


def test_the_ablation_grid_dry_run_lists_every_job():
    result = run(["snakemake", "-n", "--configfile", "params/cifar100_ablations.yaml"], cwd=ROOT)
    counts = job_counts(result.stdout)
    # 5 seeds x (Tables 4 and 9: 7 rows each; Table 5: 9 + 9 cells, one of them Table 4's;
    #            Tables 6 and 7: 3 + 2 beside AFD as it is; Figure 5: 9 betas, AFD as it is among them)
    assert counts["distill"] == str(5 * (7 + 7 + 8 + 9 + 5 + 9))
    # "AFD (pre-trained)" reads a link-finding run on each of its two pairs; three teachers
    assert (counts["find_links"], counts["train_teacher"], counts["make_report"]) == ("2", "3", "1")


def test_the_large_scale_grids_dry_run_lists_every_job(tmp_path):
    """Table 2: Tiny ImageNet trains its teacher; ImageNet evaluates torchvision's ResNet34, which the user puts
    where the grid says (here a file in torchvision's format, written by the test)."""
    project = make_project(tmp_path / "project", dvc=False)
    result = run(["snakemake", "-n", "--configfile", "params/tinyimagenet.yaml"], cwd=project)
    counts = job_counts(result.stdout)
    # 2 pairs x 3 seeds x 6 methods + the plain student once per architecture (2) x 3 seeds
    assert counts["distill"] == str(2 * 3 * 6 + 2 * 3) and counts["train_teacher"] == "1"

    # The grid names torchvision's weights; unreachable (a mirror where nothing listens), the check says where to
    # put them by hand
    offline = {**tool_env(), "AFDISTILL_WEIGHTS_MIRROR": "http://127.0.0.1:9"}
    missing = run(["snakemake", "-n", "--configfile", "params/imagenet.yaml"], cwd=project, check=False, env=offline)
    assert missing.returncode != 0
    assert (
        "teachers.checkpoints.resnet34_imagenet: could not fetch http://127.0.0.1:9/models/resnet34-b627a593.pth"
        in missing.stdout + missing.stderr
    )
    assert "download it by hand to data/weights/resnet34-b627a593.pth" in missing.stdout + missing.stderr
    import torch

    from afdistill.models import create_model

    weights = project / "data/weights/resnet34-b627a593.pth"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(create_model("resnet34_imagenet", num_classes=1000).state_dict(), weights)
    result = run(["snakemake", "-n", "--configfile", "params/imagenet.yaml"], cwd=project)
    counts = job_counts(result.stdout)
    assert counts["distill"] == "7" and counts["train_teacher"] == "1" and counts["make_report"] == "1"

    # Table 3 (with Table 8 and Figure 5's transfer line on MIT67): the ImageNet ResNet34 teaches a ResNet18 on
    # each transfer set; the fine-tuned students start from torchvision's ResNet18
    torch.save(
        create_model("resnet18_imagenet", num_classes=1000).state_dict(), weights.parent / "resnet18-f37072fd.pth"
    )
    for dataset, students in (
        ("cub200", 3 * 4 + 3),
        ("mit67", 3 * (4 + 5 + 6) + 3),
        ("stanford40", 3 * 4 + 3),
        ("stanford_dogs", 3 * 4 + 3),
    ):
        result = run(["snakemake", "-n", "--configfile", f"params/transfer_{dataset}.yaml"], cwd=project)
        counts = job_counts(result.stdout)
        assert (counts["distill"], counts["train_teacher"], counts["prepare_data"]) == (str(students), "1", "1")
    # The AT paper's ImageNet -> CUB / Scenes table: a ResNet-34 teacher fine-tuned on the set, three students
    for dataset in ("cub200", "mit67"):
        result = run(["snakemake", "-n", "--configfile", f"params/at_transfer_{dataset}.yaml"], cwd=project)
        counts = job_counts(result.stdout)
        assert (counts["distill"], counts["train_teacher"]) == (str(3 * 3), "1")
    # MHGD's Tiny ImageNet rows (WRResNet, VGG): teacher, attention network, six columns x 3 seeds
    for grid in ("mhgd_tinyimagenet", "mhgd_tinyimagenet_vgg"):
        result = run(["snakemake", "-n", "--configfile", f"params/{grid}.yaml"], cwd=project)
        counts = job_counts(result.stdout)
        assert (counts["distill"], counts["train_teacher"], counts["pretrain_heads"]) == ("18", "1", "1")


def test_a_grid_file_without_a_name_is_refused_not_merged_into_the_default(tmp_path):
    project = make_project(tmp_path / "project")
    grid = {key: value for key, value in TINY_GRID.items() if key != "grid"}
    (project / "params" / "mine.yaml").write_text(yaml.safe_dump(grid))
    result = run(["snakemake", "-n", "--cores", "1", "--configfile", "params/mine.yaml"], cwd=project, check=False)
    assert result.returncode != 0
    assert "params/mine.yaml: grid: missing" in result.stdout + result.stderr
    assert not (project / "results").exists() and not (project / "reports" / "default").exists()


def test_an_invalid_grid_is_refused_before_any_job_starts(tmp_path):
    grid = json.loads(json.dumps(TINY_GRID))
    grid["methods"]["kd"]["temprature"] = 3
    project = make_project(tmp_path / "project", grid, dvc=False)
    result = run(["snakemake", "--cores", "1"], cwd=project, check=False)
    assert result.returncode != 0
    assert (
        "methods.kd.temprature: method 'kd' has no parameter 'temprature'; allowed: alpha, ctkd, "
        "ctkd_curriculum_epochs, ctkd_lambda_end, ctkd_lambda_start, ctkd_t_range, ctkd_t_start, "
        "gamma, logit_standardization, temperature" in (result.stdout + result.stderr)
    )
    assert not (project / "data").exists() and not (project / "mlflow.db").exists()


def _git(project, *args):
    run(["git", *args], cwd=project)


def test_dvc_repro_and_experiments_rerun_exactly_what_changed(tmp_path):
    # every stage, fewer jobs: one seed, the methods that need links and heads, and KD to change
    grid = json.loads(json.dumps(TINY_GRID))
    grid["seeds"] = [0]
    grid["methods"] = {name: grid["methods"][name] for name in ("vanilla", "kd", "mhgd", "afd_pretrained")}
    project = make_project(tmp_path / "project", grid)
    env = tool_env()
    env["PYTHONPATH"] = str(project / "src")  # the project's own code decides its fingerprints
    _git(project, "init", "-q")
    _git(project, "config", "user.email", "ci@example.com")
    _git(project, "config", "user.name", "ci")
    (project / ".gitignore").write_text("/data/\n/results/\n/logs/\n/mlflow.db\n/mlartifacts/\n/.snakemake/\n")
    run(["dvc", "init", "-q"], cwd=project)
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "pipeline")

    first = run(["dvc", "repro"], cwd=project, env=env)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"data", "teachers", "links", "heads", "students", "report"}
    outs = {out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    assert {
        "data/digits",
        "results/default/teachers/digits",
        "results/default/links/digits",
        "results/default/heads/digits",
        "results/default/students/digits",
        "reports/default/metrics",
        "reports/default/curves",
        "reports/default/table.md",
    } <= outs
    assert "reports/default/timings.md" not in outs  # measured, not pinned
    assert lock["stages"]["students"]["params"]["params/default.yaml"]["methods"]["kd"]["temperature"] == 4
    ran = trained(first.stdout + first.stderr)
    assert len(ran) == 9 and sum("/students/" in job for job in ran) == 4  # data, teacher, links, heads, report
    # Six stages, six Snakemake runs, one dvc repro: one grid run in MLflow holds every job's run.
    runs = mlflow_runs(project)
    grids = [r for r in runs if r["tags"].get("kind") == "grid"]
    assert len(grids) == 1 and grids[0]["tags"]["afdistill.invocation"].startswith("dvc-")
    assert all(r["parent"] == grids[0]["id"] for r in runs if r["tags"].get("kind") != "grid")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "pinned")

    second = run(["dvc", "repro"], cwd=project, env=env)
    assert "Running stage" not in second.stdout and "up to date" in second.stdout
    shown = run(["dvc", "metrics", "show", "-R", "reports/default/metrics"], cwd=project).stdout
    # a row per cell, a column per key
    assert re.search(r"^Path\s+best\s+best_std\s+last\s+last_std\s+seeds$", shown, re.M), shown
    assert re.search(r"^reports/default/metrics/resnet8_resnet8/afd_pretrained.json\s+[\d.]+\s", shown, re.M)
    plots = run(["dvc", "plots", "show", "dvc.yaml", "--json"], cwd=project).stdout
    assert "KD seed0" in plots and "AFD (pre-trained links) seed0" in plots and "failed" not in plots.lower()
    # An exact rerun of the report (Snakemake's, outside DVC) reproduces every pinned output byte for byte.
    run(["snakemake", "--cores", "1", "--forcerun", "make_report"], cwd=project, env=env)
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], cwd=project, env=env).stdout

    # An experiment in a temporary workspace (no .snakemake/, files restored by DVC) retrains the KD student alone.
    experiment = run(
        ["dvc", "exp", "run", "--temp", "-n", "kd-T2", "-S", "params/default.yaml:methods.kd.temperature=2"],
        cwd=project,
        env=env,
    )
    assert "Ran experiment(s): kd-T2" in experiment.stdout
    assert trained(experiment.stdout + experiment.stderr) == [
        "results/default/students/digits/resnet8/resnet8/kd/seed0",
        "reports/default",
    ]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], cwd=project).stdout)
    assert "kd-T2" in json.dumps(shown)

    # The same change in the workspace: dvc repro retrains the KD student and rebuilds the report, nothing else.
    params = yaml.safe_load((project / "params/default.yaml").read_text())
    params["methods"]["kd"]["temperature"] = 3
    (project / "params/default.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run(["dvc", "repro"], cwd=project, env=env)
    assert trained(third.stdout + third.stderr) == [
        "results/default/students/digits/resnet8/resnet8/kd/seed0",
        "reports/default",
    ]
    # against the pinned run: the KD cell's metrics changed, nothing else
    diff = run(["dvc", "metrics", "diff", "--targets", "reports/default/metrics", "-R"], cwd=project).stdout
    changed = set(re.findall(r"^(reports/default/metrics/\S+)\s", diff, re.M))
    assert changed == {"reports/default/metrics/resnet8_resnet8/kd.json"}, diff

    # A code change to augmentation: DVC marks the teachers stale, and Snakemake would retrain them.
    data = project / "src/afdistill/data.py"
    data.write_text(data.read_text().replace("        pad = self.pad\n", "        pad = self.pad + 0\n"))
    status = run(["dvc", "status", "dvc.yaml"], cwd=project, env=env).stdout
    assert "teachers:" in status and "modified:           src/afdistill/data.py" in status
    plan = run(["snakemake", "-n", "--cores", "1"], cwd=project, env=env).stdout
    assert dict(re.findall(r"^(\w+)\s+(\d+)$", plan, re.M))["train_teacher"] == "1"


def test_every_grid_has_its_dvc_pipeline_generated_and_in_sync(monkeypatch, tmp_path):
    import torch

    from afdistill.dvc import write_pipeline
    from afdistill.grid import Grid
    from afdistill.jobs import Plan
    from afdistill.models import create_model

    # A copy of the repository's pipeline files, plus the published teacher the ImageNet grid names.
    project = make_project(tmp_path / "project", yaml.safe_load((ROOT / "params/default.yaml").read_text()), dvc=False)
    weights = project / "data/weights/resnet34-b627a593.pth"
    weights.parent.mkdir(parents=True)
    torch.save(create_model("resnet34_imagenet", num_classes=1000).state_dict(), weights)
    torch.save(
        create_model("resnet18_imagenet", num_classes=1000).state_dict(), weights.parent / "resnet18-f37072fd.pth"
    )
    monkeypatch.chdir(project)
    for path in sorted(Path("params").glob("*.yaml")):
        assert not write_pipeline(Plan(Grid.from_file(path)), str(path), check=True), (
            f"the DVC pipeline of {path} is stale: run `afdistill dvc --grid {path}`"
        )


def test_the_slurm_profile_asks_one_gpu_per_training_job():
    result = run(
        [
            "snakemake",
            "-n",
            "--profile",
            "profiles/slurm",
            "--workflow-profile",
            "none",
            "--configfile",
            "params/cifar100.yaml",
        ],
        cwd=ROOT,
    )
    jobs = result.stdout.split("\nrule ")[1:]
    training = [job for job in jobs if job.startswith(("distill", "train_teacher"))]
    assert training and all("gpu=1" in job and "runtime=720" in job for job in training)
    assert all("gpu=1" not in job for job in jobs if job.startswith(("prepare_data", "make_report")))
    # A grid of data-parallel jobs: each training job asks for its GPUs and two CPUs per GPU.
    result = run(
        [
            "snakemake",
            "-n",
            "--profile",
            "profiles/slurm",
            "--workflow-profile",
            "none",
            "--configfile",
            "params/cifar100.yaml",
            "--config",
            "device=cuda",
            "gpus_per_job=2",
        ],
        cwd=ROOT,
    )
    training = [job for job in result.stdout.split("\nrule ")[1:] if job.startswith(("distill", "train_teacher"))]
    # The rule starts the ranks under torchrun itself, on two GPUs the job holds.
    assert training and all(
        "gpu=2" in job
        and "afdistill with-gpus 2 torchrun --standalone --nproc-per-node 2 -m afdistill run results/cifar100/" in job
        for job in training
    )
