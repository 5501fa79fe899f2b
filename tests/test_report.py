"""The report on hand-made metrics records: partial cells, paper values by run identity, units."""
import csv
import json

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
    paths = write(tmp_path, [record("teacher", "resnet8", "teacher", 0, 0.9),
                             record("student", "resnet8", "kd", 0, 0.8, teacher="resnet8"),
                             record("student", "resnet8", "kd", 1, 0.6, teacher="resnet8"),
                             record("student", "resnet8", "afd", 0, 0.7, teacher="resnet8")])
    build(grid, paths, tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| KD | 0.7000 ± 0.1414 |" in table
    assert "| AFD | 0.7000 (n=1/2) |" in table
    rows = {row["run"]: row for row in csv.DictReader(open(tmp_path / "report" / "table.csv"))}
    assert (rows["afd"]["n"], rows["afd"]["n_expected"]) == ("1", "2")
    assert rows["kd"]["unit"] == "fraction correct (top-1)"


def test_paper_values_are_matched_by_run_not_by_label(tmp_path):
    config = json.loads(json.dumps(TINY_GRID))
    config.update(dataset="cifar100", seeds=[0], pairs=[{"teacher": "resnet56", "student": "resnet20"}],
                  methods={"kd": {"label": "Hinton KD"}}, report={"paper_table": "afd_table1", "metric": "accuracy"})
    paths = write(tmp_path, [record("student", "resnet20", "kd", 0, 0.71, teacher="resnet56")])
    build(Grid(config), paths, tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| Hinton KD | 0.7100 (*paper 0.7098*) |" in table
    rows = {row["run"]: row for row in csv.DictReader(open(tmp_path / "report" / "table.csv"))}
    assert rows["kd"]["paper"] == "0.7098" and rows["kd"]["paper_unit"] == "fraction correct (top-1)"


def test_error_tables_state_their_units(tmp_path):
    config = json.loads(json.dumps(TINY_GRID))
    config.update(dataset="cifar10", seeds=[0], pairs=[{"teacher": "wrn_16_2", "student": "wrn_16_1"}],
                  methods={"at": {}}, report={"paper_table": "at_cifar10", "metric": "error"})
    paths = write(tmp_path, [record("student", "wrn_16_1", "at", 0, 0.92, teacher="wrn_16_2")])
    build(Grid(config), paths, tmp_path / "report")
    assert "| ATT | 8.00 (*paper 7.93*) |" in (tmp_path / "report" / "table.md").read_text()
    rows = {row["run"]: row for row in csv.DictReader(open(tmp_path / "report" / "table.csv"))}
    assert rows["at"]["unit"] == "fraction correct (top-1)" and rows["at"]["paper_unit"] == "top-1 error (%)"
