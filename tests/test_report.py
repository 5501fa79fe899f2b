"""The report on hand-made metrics records: partial cells, paper values by run identity, units."""

import csv
import json
from pathlib import Path

import pytest
from conftest import TINY_GRID

from afdistill.grid import Grid
from afdistill.report import build


def record(kind, arch, run, seed, top1, teacher=None):
    spec = {"kind": kind, "arch": arch, "teacher": teacher, "run": run, "seed": seed, "method": run}
    return {"spec": spec, "test_top1": top1, "history": [{"test_top1": top1, "epoch_seconds": 1.0}]}


def write(tmp_path, records):
    paths = []
    for index, rec in enumerate(records):
        path = tmp_path / f"job{index}" / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps(rec))
        paths.append(str(path))
    return paths


def test_a_cell_with_a_missing_seed_says_how_many_it_holds(tmp_path):
    grid = Grid(json.loads(json.dumps(TINY_GRID)))
    paths = write(
        tmp_path,
        [
            record("teacher", "resnet8", "teacher", 0, 0.9),
            record("student", "resnet8", "kd", 0, 0.8, teacher="resnet8"),
            record("student", "resnet8", "kd", 1, 0.6, teacher="resnet8"),
            record("student", "resnet8", "afd", 0, 0.7, teacher="resnet8"),
        ],
    )
    build(grid, paths, tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| KD | 0.7000 ± 0.1414 |" in table
    assert "| AFD | 0.7000 (n=1/2) |" in table
    rows = {row["run"]: row for row in csv.DictReader(open(tmp_path / "report" / "table.csv"))}
    assert (rows["afd"]["n"], rows["afd"]["n_expected"]) == ("1", "2")
    assert rows["kd"]["unit"] == "fraction correct (top-1)"


def test_paper_values_are_matched_by_run_not_by_label(tmp_path):
    config = json.loads(json.dumps(TINY_GRID))
    config.update(
        dataset="cifar100",
        seeds=[0],
        pairs=[{"teacher": "resnet56", "student": "resnet20"}],
        methods={"kd": {"label": "Hinton KD"}},
        report={"paper_table": "afd_table1", "metric": "accuracy"},
    )
    paths = write(tmp_path, [record("student", "resnet20", "kd", 0, 0.71, teacher="resnet56")])
    build(Grid(config), paths, tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| Hinton KD | 0.7100 (*paper 0.7098*) |" in table
    rows = {row["run"]: row for row in csv.DictReader(open(tmp_path / "report" / "table.csv"))}
    assert rows["kd"]["paper"] == "0.7098" and rows["kd"]["paper_unit"] == "fraction correct (top-1)"


def test_error_tables_state_their_units(tmp_path):
    config = json.loads(json.dumps(TINY_GRID))
    config.update(
        dataset="cifar10",
        seeds=[0],
        pairs=[{"teacher": "wrn_16_2", "student": "wrn_16_1"}],
        methods={"at": {}},
        report={"paper_table": "at_cifar10", "metric": "error"},
    )
    paths = write(tmp_path, [record("student", "wrn_16_1", "at", 0, 0.92, teacher="wrn_16_2")])
    build(Grid(config), paths, tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    # the AT paper's shape: a row per pair, a column per method
    assert (
        "| | Teacher | ATT |\n|---|---|---|\n| wrn_16_2 → wrn_16_1 | – (*paper 6.31*) | 8.00 (*paper 7.93*) |" in table
    )
    rows = {row["run"]: row for row in csv.DictReader(open(tmp_path / "report" / "table.csv"))}
    assert rows["at"]["unit"] == "fraction correct (top-1)" and rows["at"]["paper_unit"] == "top-1 error (%)"


def test_last_and_best_epochs_are_both_shown_and_the_papers_one_is_compared(tmp_path):
    config = json.loads(json.dumps(TINY_GRID))
    config.update(
        dataset="cifar100",
        seeds=[0],
        pairs=[{"teacher": "resnet8x4", "student": "resnet8"}],
        methods={"kd": {}, "dkd": {"seeds": [0, 1]}},
        report={"paper_table": "modern_cifar100", "metric": "accuracy"},
    )
    grid = Grid(config)

    def history_record(run, seed, history):
        rec = record("student", "resnet8", run, seed, history[-1], teacher="resnet8x4")
        rec["history"] = [{"test_top1": value, "epoch_seconds": 1.0} for value in history]
        return rec

    paths = write(
        tmp_path,
        [
            history_record("kd", 0, [0.5, 0.72, 0.70]),
            history_record("dkd", 0, [0.6, 0.75, 0.74]),
            history_record("dkd", 1, [0.6, 0.73, 0.72]),
        ],
    )
    build(grid, paths, tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    # modern_cifar100's numbers are best epochs (mdistiller): the main table compares the best epoch.
    assert "Test accuracy of the **best epoch**" in table
    main, other = table.split("## Test accuracy of the last epoch")
    assert "| KD | 0.7200 |" in main and "| DKD | 0.7400 ± 0.0141 |" in main  # 2 seeds: the run's own
    assert "| KD | 0.7000 |" in other and "| DKD | 0.7300 ± 0.0141 |" in other
    assert "*Paper values:* sunshangquan/logit-standardization-KD" in main
    rows = {row["run"]: row for row in csv.DictReader(open(tmp_path / "report" / "table.csv"))}
    assert rows["kd"]["epoch"] == "best" and float(rows["kd"]["last_mean"]) == 0.70
    assert float(rows["kd"]["best_mean"]) == 0.72 and rows["dkd"]["n_expected"] == "2"


def test_the_ablation_grid_writes_each_table_shaped_like_the_papers_and_figures_3_5_6(tmp_path):
    """params/cifar100_ablations.yaml with made-up results for a few cells of each table."""
    import yaml

    from afdistill.paper import PAPER_MATRICES

    grid = Grid(yaml.safe_load(open("params/cifar100_ablations.yaml")))
    attention = [[[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.0, 0.3, 0.7]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0, 0, 1.0]]]
    summaries = [
        {  # an AFD run's epoch summary (methods.afd.AttentionRecord)
            "teacher_candidates": [0, 9, 18],
            "student_candidates": [2, 5, 8],
            "attention": a,
            "teacher_names": ["layer1.0", "layer2.0", "layer3.0"],
            "student_names": ["layer1.2", "layer2.2", "layer3.2"],
        }
        for a in attention
    ]
    records = []
    for seed, top1 in ((0, 0.70), (1, 0.72)):
        for run in ("t4_random_random", "t4_interval_afd", "t5_t27_s9"):
            rec = record("student", "resnet20", run, seed, top1, teacher="resnet56")
            rec["summaries"] = summaries
            records.append(rec)
        for run, shift in (("fig5_beta10", 0.0), ("fig5_beta200", 0.01), ("fig5_beta5000", -0.02), ("t6_kl", 0)):
            records.append(record("student", "wrn_16_2", run, seed, top1 + shift, teacher="wrn_40_2"))
    build(grid, write(tmp_path, records), tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()

    # Table 4: its seven rows under two header columns, our mean ± std and the paper's beside
    assert "| Teacher candi. | Linking method | ResNet56 → ResNet20 |" in table
    assert "| Random | Random link | 0.7100 ± 0.0141 (n=2/5) (*paper 0.6945 ± 0.002*) |" in table
    assert "| Equal interval | Ordered | – (*paper 0.7025 ± 0.002*) |" in table
    # Table 5(a): teacher counts down, student counts across; its 9 x 9 cell is Table 4's co-trained run
    assert "| # of candi. (teacher) \\ # of candi. (student) | 3 | 6 | 9 |" in table
    assert "| 27 | – (*paper 0.7121*) | – (*paper 0.7152*) | 0.7100 ± 0.0141 (n=2/5) (*paper 0.7153*) |" in table
    assert "| 9 | – (*paper 0.7109*) | – (*paper 0.7149*) | 0.7100 ± 0.0141 (n=2/5) (*paper 0.7135*) |" in table
    # Tables 6 and 7: one row, the metrics across; L2 and A2 are the beta line's beta = 200 run
    assert "| distance | L1 | L2 | KL | Cosine |" in table
    assert "| WRN-40-2 → WRN-16-2 | – (*paper 0.7513*) | 0.7200 ± 0.0141 (n=2/5) (*paper 0.7547*) |" in table
    cells = list(csv.DictReader(open(tmp_path / "report" / "ablations.csv")))
    assert (
        len(cells)
        == sum(len(m.rows) * len(m.columns) for n, m in PAPER_MATRICES.items() if n in grid.paper_matrices)
        == 7 + 9 + 7 + 9 + 4 + 3
    )
    kl = next(c for c in cells if c["table"] == "afd_table6" and c["column"] == "KL")
    assert (kl["run"], kl["n"], kl["n_expected"], kl["paper"]) == ("t6_kl", "2", "5", "0.7523")
    figures = tmp_path / "report" / "figures"
    for name in ("attention_epochs.png", "manual_vs_attention.png", "beta_sensitivity.png"):
        assert (figures / name).stat().st_size > 1000, name


def test_a_teacher_of_another_task_leaves_its_row_empty_and_table_8_is_shaped(tmp_path, monkeypatch):
    """params/transfer_mit67.yaml (its weights files written here) with made-up student results."""
    import torch
    import yaml

    from afdistill.models import create_model

    config = yaml.safe_load(open("params/transfer_mit67.yaml"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/weights").mkdir(parents=True)
    torch.save(create_model("resnet34_imagenet", 1000).state_dict(), "data/weights/resnet34-b627a593.pth")
    torch.save(create_model("resnet18_imagenet", 1000).state_dict(), "data/weights/resnet18-f37072fd.pth")
    grid = Grid(config)
    pair = dict(teacher="resnet34_imagenet")
    teacher = record("teacher", "resnet34_imagenet", "teacher", 0, None)
    students = [
        record("student", "resnet18_imagenet", run, seed, 0.6 + seed / 100, **pair)
        for run in ("afd", "ft_afd", "fig5_beta10", "fig5_beta3000")
        for seed in (0, 1, 2)
    ]
    build(grid, write(tmp_path, [teacher, *students]), tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| AFD | 0.6100 ± 0.0100 (*paper 0.6647*) |" in table and "| Scratch | – (*paper 0.4891*) |" in table
    assert "| Pretraining - Distillation | MIT67 |" in table
    assert "| AFD | 0.6100 ± 0.0100 (*paper 0.7507*) |" in table  # Table 8's row: the fine-tuned AFD
    # Figure 5's transfer line: the sweep and Table 3's beta = 1000 row
    assert (tmp_path / "report" / "figures" / "beta_sensitivity.png").stat().st_size > 1000


def test_table_3_combines_the_four_transfer_reports_a_column_each(tmp_path, monkeypatch):
    import subprocess
    import sys

    import torch
    import yaml

    from afdistill.models import create_model

    root = Path.cwd()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/weights").mkdir(parents=True)
    torch.save(create_model("resnet34_imagenet", 1000).state_dict(), "data/weights/resnet34-b627a593.pth")
    torch.save(create_model("resnet18_imagenet", 1000).state_dict(), "data/weights/resnet18-f37072fd.pth")
    folders = []
    for index, dataset in enumerate(("cub200", "mit67", "stanford40", "stanford_dogs")):
        grid = Grid(yaml.safe_load((root / f"params/transfer_{dataset}.yaml").read_text()))
        records = [
            record(
                "student",
                "resnet18_imagenet",
                run,
                seed,
                0.5 + index / 10 + seed / 100,
                teacher=None if run == "vanilla" else "resnet34_imagenet",
            )
            for run in ("vanilla", "afd")
            for seed in (0, 1, 2)
        ]
        (tmp_path / dataset).mkdir()
        folders.append(tmp_path / "reports" / f"transfer_{dataset}")
        build(grid, write(tmp_path / dataset, records), folders[-1])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "afdistill",
            "combine",
            *map(str, folders),
            "--out",
            "reports/transfer",
            "--title",
            "AFD paper, Table 3",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "reports/transfer/table.md").read_text()
    assert "| | transfer_cub200 | transfer_mit67 | transfer_stanford40 | transfer_stanford_dogs |" in table
    assert (
        "| AFD | 0.5100 ± 0.0100 (*paper 0.6829*) | 0.6100 ± 0.0100 (*paper 0.6647*) | "
        "0.7100 ± 0.0100 (*paper 0.6792*) | 0.8100 ± 0.0100 (*paper 0.7606*) |"
    ) in table
    assert "| FitNet | – (*paper 0.4893*) |" in table
    missing = subprocess.run(
        [sys.executable, "-m", "afdistill", "combine", "reports/nowhere", "--out", "x"], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "reports/nowhere/table.csv does not exist" in missing.stderr


def test_the_mhgd_tables_are_printed_in_the_posters_shape(tmp_path):
    """A row per pair (VGG, WRResNet), a column per method, the poster's value in every cell."""
    config = json.loads(json.dumps(TINY_GRID))
    config.update(
        dataset="cifar100",
        seeds=[0],
        pairs=[{"teacher": "vgg16_mhgd", "student": "vgg7_mhgd"}, {"teacher": "wrn_22_4", "student": "wrn_10_4"}],
        methods={"vanilla": {"label": "Student"}, "fsp": {"label": "FSP"}},
        report={"paper_table": "mhgd_cifar100", "metric": "accuracy"},
    )
    paths = write(
        tmp_path,
        [
            record("student", "vgg7_mhgd", "vanilla", 0, 0.60),
            record("student", "vgg7_mhgd", "fsp", 0, 0.62, teacher="vgg16_mhgd"),
            record("student", "wrn_10_4", "fsp", 0, 0.715, teacher="wrn_22_4"),
        ],
    )
    build(Grid(config), paths, tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| | Teacher | Student | FSP |" in table
    assert (
        "| vgg16_mhgd → vgg7_mhgd | – (*paper 0.6799*) | 0.6000 (*paper 0.5997*) | 0.6200 (*paper 0.6187*) |" in table
    )
    assert "| wrn_22_4 → wrn_10_4 | – (*paper 0.7722*) | – (*paper 0.7162*) | 0.7150 (*paper 0.7157*) |" in table


def test_results_timings_dvc_metrics_and_curves_are_separate_files(tmp_path):
    """An exact rerun reproduces the results byte for byte: measured timings live in timings.md alone; a metrics
    file per cell (one key set, for `dvc metrics show`); the curves' columns are the ones the DVC plots name."""
    from afdistill.report import curve_columns

    grid = Grid(json.loads(json.dumps(TINY_GRID)))
    records = [record("teacher", "resnet8", "teacher", 0, 0.9)]
    for seed, (first, last) in enumerate([(0.5, 0.7), (0.6, 0.65)]):
        rec = record("student", "resnet8", "kd", seed, last, teacher="resnet8")
        rec["history"] = [{"test_top1": first, "epoch_seconds": 1.5 + seed}, {"test_top1": last, "epoch_seconds": 2.0}]
        records.append(rec)
    build(grid, write(tmp_path, records), tmp_path / "report")
    report = tmp_path / "report"
    table, timings = (report / "table.md").read_text(), (report / "timings.md").read_text()
    assert (
        "Training cost" not in table
        and " s)" not in table
        and "epoch_seconds" not in (report / "table.csv").read_text()
    )
    assert "| KD | 1.00× (" in timings or "| KD | 1.75 s" in timings
    kd = json.loads((report / "metrics" / "resnet8_resnet8" / "kd.json").read_text())
    assert kd == {
        "last": 0.675,
        "last_std": pytest.approx(0.0353553, abs=1e-6),
        "best": 0.675,
        "best_std": pytest.approx(0.0353553, abs=1e-6),
        "seeds": 2,
    }
    assert sorted(p.name for p in (report / "metrics" / "resnet8_resnet8").iterdir()) == ["kd.json", "teacher.json"]
    with open(report / "curves" / "resnet8_resnet8.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["epoch", *curve_columns(grid, grid.pairs[0])]
    kd_seed1 = rows[0].index("KD seed1")
    assert [row[0] for row in rows[1:]] == ["1", "2"] and rows[2][kd_seed1] == "0.650000"
    assert "<strong>last epoch</strong>" in (report / "table.html").read_text()
