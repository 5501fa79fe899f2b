"""Bad input on every surface, as a new user gives it: one table of cases, each refused by the real CLI
(`afdistill check`, `afdistill prepare`) before any job, with exit code 2 and a message naming the key or the
file, the value and what is allowed; no traceback. One case also goes through Snakemake."""

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, make_project, run
from test_archives import _tiny_imagenet

from afdistill import cli
from afdistill.kinds import student as student_kind
from afdistill.models import create_model

BASE = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
PWNED = "pwned-by-a-checkpoint"  # the file a malicious checkpoint's pickle would create


class RunsCode:
    """What a malicious 'checkpoint' pickles: loading it would call os.system."""

    def __reduce__(self):
        return os.system, (f"touch {PWNED}",)


def write_files(folder: Path) -> None:
    """Teacher-checkpoint files of every bad kind, beside a good one, in the formats a user would meet."""
    state = create_model("resnet20", 10).state_dict()
    torch.save({"model": state, "epoch": 240}, folder / "good.pth")  # RepDistiller's layout
    data = (folder / "good.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    (folder / "empty.pth").write_bytes(b"")
    (folder / "text.pth").write_text("<html>404 Not Found</html>\n")
    torch.save({"model": state, "hook": RunsCode()}, folder / "code.pth")
    torch.save(create_model("resnet8", 10).state_dict(), folder / "resnet8.pth")


def edit(config: dict, path: str, value) -> None:
    """Set a dotted key (``methods.kd.init``) in a grid config."""
    *parents, last = path.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[last] = value


# (case, {dotted key: value} applied to params/default.yaml, message fragments in the error)
CASES = [
    # checkpoints and weights files
    (
        "empty checkpoint",
        {"teachers.checkpoints": {"resnet20": "empty.pth"}},
        ["teachers.checkpoints.resnet20: empty.pth", "is an empty file (0 bytes)"],
    ),
    (
        "text checkpoint",
        {"teachers.checkpoints": {"resnet20": "text.pth"}},
        ["teachers.checkpoints.resnet20: text.pth", "is not a file torch.save wrote (it starts with b'<html>404"],
    ),
    (
        "truncated checkpoint",
        {"teachers.checkpoints": {"resnet20": "truncated.pth"}},
        ["teachers.checkpoints.resnet20: truncated.pth", "cannot be read", "truncated or corrupt"],
    ),
    (
        "checkpoint that runs code",
        {"teachers.checkpoints": {"resnet20": "code.pth"}},
        ["teachers.checkpoints.resnet20: code.pth", "GLOBAL posix.system", "refused, because loading it would run"],
    ),
    (
        "checkpoint of another architecture",
        {"teachers.checkpoints": {"resnet20": "resnet8.pth"}},
        ["teachers.checkpoints.resnet20: resnet8.pth: does not hold resnet20 weights for 10 classes (missing"],
    ),
    (
        "init file missing",
        {"methods.kd.init": "weights/resnet8_imagenet.pth"},
        ["methods.kd.init: weights/resnet8_imagenet.pth does not exist"],
    ),
    (
        "init of another architecture",
        {"methods.kd.init": "good.pth"},
        ["methods.kd.init: good.pth: does not hold resnet8 weights (unexpected layer1.1.conv1.weight"],
    ),
    # architecture options and devices
    (
        "stem_stride 0",
        {"architectures": {"wrn_16_2": {"stem_stride": 0}}},
        ["architectures.wrn_16_2.stem_stride: 0 is not allowed; allowed: 1 (CIFAR), 2"],
    ),
    (
        "device cuda without CUDA",
        {"device": "cuda"},
        ["device: cuda, but this machine has no CUDA GPU", "use device: auto"],
    ),
    (
        "gpus_per_job on a CPU",
        {"gpus_per_job": 2},
        ["gpus_per_job: 2, but the jobs run on the CPU here", "set gpus_per_job: 1"],
    ),
    (
        "cuda_graphs on CPU",
        {"device": "cpu", "runtime.cuda_graphs": True},
        ["runtime.cuda_graphs: true needs CUDA, and device is cpu; use auto or false"],
    ),
    (
        "fuse without packs",
        {"runtime": {"fuse": True, "pack": False}},
        ["runtime.fuse: true runs a pack's students as one network; it needs runtime.pack: true"],
    ),
    (
        "batch that does not split over GPUs",
        {"gpus_per_job": 2, "train.batch_size": 63},
        ["train.batch_size: 63 does not split over gpus_per_job: 2 processes", "use a multiple of 2"],
    ),
    # sweeps
    (
        "sweep over a mapping",
        {"methods.afd_beta.sweep": {"parts": [{"crd": {}}, {"afd": {}}]}},
        ["methods.afd_beta.sweep.parts: {'crd': {}} is not allowed; a swept value is a finite number, a string"],
    ),
    (
        "sweep repeating a value",
        {"methods.afd_beta.sweep": {"beta": [30, 30.0]}},
        ["methods.afd_beta.sweep.beta: [30, 30.0] repeats 30", "list each value once"],
    ),
    (
        "sweep colliding with a run",
        {"methods.afd_beta_beta30": {"method": "afd"}},
        ["methods.afd_beta.sweep: the run it generates for {'beta': 30} is named 'afd_beta_beta30', like another run"],
    ),
    (
        "sweep over a key the entry sets",
        {"methods.afd_beta.beta": 200},
        ["methods.afd_beta.sweep.beta: the entry also sets beta: 200", "drop it from the entry"],
    ),
    (
        "sweep value out of range",
        {"methods.afd_beta.sweep": {"beta": [30, -1]}},
        ["methods.afd_beta.sweep (beta: -1).beta: -1 is not allowed; expected a number >= 0"],
    ),
    # combined methods
    (
        "combined without parts",
        {"methods.crd_afd": {"method": "combined", "label": "CRD+AFD"}},
        ["methods.crd_afd.parts: missing; a combined run names at least two parts"],
    ),
    (
        "combined part repeating a method",
        {"methods.crd_afd.parts": {"afd": {}, "afd_l1": {"method": "afd"}}},
        ["methods.crd_afd.parts.afd_l1: method 'afd' is already the part 'afd'"],
    ),
    (
        "CRD negatives out of range inside combined",
        {"methods.crd_afd.parts.crd.nce_k": 100000},
        ["methods.crd_afd.parts.crd.nce_k: 100000 is not allowed; expected an integer from 1 to 1436"],
    ),
    (
        "FitNet hint layer out of range inside combined",
        {"methods.crd_afd.parts": {"fitnet": {"hint_layer": 9}, "afd": {}}},
        ["methods.crd_afd.parts.fitnet.hint_layer: 9 is not allowed; expected an integer from 0 to 3"],
    ),
    (
        "pair override with an unknown part",
        {"pairs": [{"teacher": "resnet20", "student": "resnet8", "methods": {"crd_afd": {"parts": {"rkd": {}}}}}]},
        ["pairs[0].methods.crd_afd.parts.rkd: no such part of methods.crd_afd"],
    ),
    (
        "pair override out of range inside a part",
        {
            "pairs": [
                {"teacher": "resnet20", "student": "resnet8", "methods": {"crd_afd": {"parts": {"afd": {"beta": -5}}}}}
            ]
        },
        ["pairs[0].methods.crd_afd.parts.afd.beta: -5 is not allowed; expected a number >= 0"],
    ),
    # CTKD and logit standardisation
    (
        "CTKD settings without ctkd",
        {"methods.kd.ctkd_t_start": 2},
        ["methods.kd.ctkd_t_start: only read with ctkd: true", "set ctkd: true or drop ctkd_t_start"],
    ),
    (
        "CTKD with a fixed temperature",
        {"methods.kd_ls_ctkd.temperature": 2},
        ["methods.kd_ls_ctkd.temperature: 2 would not be used: with ctkd: true the temperature is learned"],
    ),
    # AFD options
    (
        "links run with fixed links",
        {"links.params": {"linking": "ordered"}},
        ["links.params.linking: 'ordered' is not allowed; the links run learns its links (linking: afd)"],
    ),
    (
        "AFD candidates beyond the blocks",
        {"methods.afd.teacher_candidates": 99},
        ["methods.afd.teacher_candidates: 99 is not allowed for resnet20; expected an integer from 0 to 9"],
    ),
    (
        "pre-trained links of other candidates",
        {"methods.afd_pretrained.student_candidates": 2},
        ["methods.afd_pretrained.student_candidates: 2 on resnet20 -> resnet8, but the links run it reads uses 0"],
    ),
    (
        "ReviewKD on networks with different stage counts",
        {"pairs": [{"teacher": "wrn_16_2", "student": "vgg8", "runs": ["reviewkd"]}]},
        ["methods.reviewkd: vgg8 has 4 stages and wrn_16_2 3; ReviewKD pairs them level by level"],
    ),
    # archives
    (
        "archive folder missing",
        {"dataset": "tinyimagenet", "data.root": "data/none"},
        [
            "data.root: tinyimagenet: data/none is missing (the folder the archive was extracted into)",
            "tiny-imagenet-200.zip",
        ],
    ),
    (
        "archive folder empty",
        {"dataset": "tinyimagenet", "data.root": "empty_folder"},
        ["data.root: tinyimagenet: empty_folder is empty; it should hold the extracted Tiny ImageNet"],
    ),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad_input")
    write_files(folder)
    (folder / "empty_folder").mkdir()
    return folder


def check(config: dict, folder: Path, capsys, monkeypatch) -> tuple[int | str | None, str]:
    """`afdistill check` of a grid file, through the CLI's entry point, in ``folder``: (exit code, stderr)."""
    monkeypatch.chdir(folder)
    monkeypatch.delenv("AFDISTILL_GPUS", raising=False)
    (folder / "grid.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    code: int | str | None  # 0, or SystemExit's code
    try:
        cli.main(["check", "--grid", "grid.yaml"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, changes, fragments", CASES, ids=[case for case, _, _ in CASES])
def test_bad_input_is_refused_by_the_check_naming_what_and_why(case, changes, fragments, workdir, capsys, monkeypatch):
    config = copy.deepcopy(BASE)
    for key, value in changes.items():
        edit(config, key, value)
    code, err = check(config, workdir, capsys, monkeypatch)
    assert code == 2, f"{case}: accepted (exit {code})\n{err}"
    assert err.startswith("error: grid.yaml: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{case}: {fragment!r} not in {err!r}"
    assert not (workdir / PWNED).exists()  # no checkpoint ran its code


def test_what_the_cases_change_is_all_that_is_wrong(workdir, capsys, monkeypatch):
    """The base of the table passes: each case is refused for its own change."""
    assert check(copy.deepcopy(BASE), workdir, capsys, monkeypatch)[0] == 0


def test_sweep_names_are_safe_and_a_pair_override_changes_one_part(workdir, monkeypatch):
    from afdistill.grid import Grid

    monkeypatch.chdir(workdir)
    config = copy.deepcopy(BASE)
    edit(config, "methods.afd_beta.sweep", {"beta": [1e20, 0.5, 30.0]})
    config["pairs"] = [
        {"teacher": "resnet20", "student": "resnet8", "methods": {"crd_afd": {"parts": {"afd": {"beta": 50}}}}}
    ]
    grid = Grid(config)
    assert [r for r in grid.runs if r.startswith("afd_beta_")] == [
        "afd_beta_beta1e20",
        "afd_beta_beta0p5",
        "afd_beta_beta30",
    ]
    spec = student_kind.spec(grid, "resnet20", "resnet8", "crd_afd", 0)
    assert spec.method_params["parts"] == {"crd": {"nce_k": 64}, "afd": {"beta": 50}}


def test_a_good_published_checkpoint_loads_and_its_classes_are_read(workdir, monkeypatch):
    from afdistill.grid import Grid

    monkeypatch.chdir(workdir)
    config = copy.deepcopy(BASE)
    edit(config, "teachers.checkpoints", {"resnet20": "good.pth"})
    assert Grid(config).teacher_classes == {"resnet20": 10}


def _corrupt_tiny_imagenet(root: Path) -> Path:
    _tiny_imagenet(root)
    base = root / "tiny-imagenet-200"
    bad = base / "train" / "n01" / "images" / "n01_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    (base / "val" / "images" / "val_4.JPEG").write_bytes(b"")  # a zero-byte one
    return root


def prepare(args: list[str], capsys) -> tuple[int | str | None, str]:
    capsys.readouterr()
    code: int | str | None  # 0, or SystemExit's code
    try:
        cli.main(["prepare", *args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_images_that_do_not_decode_are_listed_and_refused_or_skipped(tmp_path, capsys):
    root = _corrupt_tiny_imagenet(tmp_path / "raw")
    out = tmp_path / "prepared"
    code, err = prepare(["--dataset", "tinyimagenet", "--root", str(root), "--out", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "tinyimagenet: 2 image(s) do not decode" in err and "data.skip_corrupt: true" in err
    report = (out / "corrupt_images.tsv").read_text().splitlines()
    assert report[0] == "path\tsplits\terror" and len(report) == 3
    assert any("n01_2.JPEG\ttrain\t" in line for line in report) and any(
        "val_4.JPEG\ttest\t" in line for line in report
    )
    assert not (out / "meta.json").exists()

    code, err = prepare(["--dataset", "tinyimagenet", "--root", str(root), "--out", str(out), "--skip-corrupt"], capsys)
    assert code == 0, err
    meta = yaml.safe_load((out / "meta.json").read_text())
    assert meta["n_train"] == 11 and meta["n_test"] == 5
    assert meta["skipped_corrupt"] == {"train": 1, "test": 1, "report": "corrupt_images.tsv"}


def test_a_class_without_training_images_is_refused_by_name(tmp_path, capsys):
    root = tmp_path / "raw"
    _tiny_imagenet(root)
    for image in (root / "tiny-imagenet-200" / "train" / "n02" / "images").iterdir():
        image.unlink()
    code, err = prepare(["--dataset", "tinyimagenet", "--root", str(root), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "tinyimagenet: 1 class(es) have no training images" in err and "n02" in err


def test_snakemake_refuses_a_bad_checkpoint_before_any_job(workdir):
    """The same check through Snakemake's real run: it stops before scheduling anything."""
    project = make_project(workdir / "project", dvc=False)
    (project / "code.pth").write_bytes((workdir / "code.pth").read_bytes())
    config = yaml.safe_load((project / "params" / "default.yaml").read_text())
    config["teachers"]["checkpoints"] = {"resnet8": "code.pth"}
    (project / "params" / "default.yaml").write_text(yaml.safe_dump(config))
    result = run(["snakemake", "--cores", "1"], cwd=project, check=False, timeout=300)
    assert result.returncode != 0
    assert "teachers.checkpoints.resnet8: code.pth" in result.stderr + result.stdout
    assert "refused, because loading it would run" in result.stderr + result.stdout
    assert not (project / "results").exists() and not (project / PWNED).exists()
