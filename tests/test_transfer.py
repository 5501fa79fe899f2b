"""Transfer (the AFD paper's Tables 3 and 8): a teacher of another task lends its features, a student can
start from ImageNet weights with a new classifier, and L2T-ww's cosine schedule."""

import math

import pytest
import torch
import yaml
from test_archives import _mit67

from afdistill.data import prepare
from afdistill.engine import load_network, train
from afdistill.grid import Grid, GridError
from afdistill.kinds import student as student_kind
from afdistill.models import create_model
from afdistill.spec import JobSpec, Schedule

QUIET = dict(log=lambda *a: None)


@pytest.fixture
def mit67(tmp_path):
    prepare("mit67", tmp_path / "mit67", root=_mit67(tmp_path / "raw"))  # 3 classes, 12 train, 6 test images
    return tmp_path / "mit67"


@pytest.fixture
def imagenet_weights(tmp_path):
    """Files in torchvision's format (bare state dicts with its names), 1000 classes, as published."""
    torch.manual_seed(0)
    paths = {}
    for arch in ("resnet34_imagenet", "resnet18_imagenet"):
        paths[arch] = tmp_path / f"{arch}.pth"
        torch.save(create_model(arch, 1000).state_dict(), paths[arch])
    return paths


def spec(**changes):
    fields = dict(
        kind="student",
        grid="transfer",
        dataset="mit67",
        arch="resnet18_imagenet",
        method="afd",
        run="afd",
        seed=0,
        device="cpu",
        teacher="resnet34_imagenet",
        schedule=Schedule(epochs=1, batch_size=4, lr=0.01, lr_decay_epochs=()),
        method_params={"alpha": 0, "beta": 1000, "qk_dim": 16},
    )
    fields.update(changes)
    return JobSpec(**fields)


def test_an_imagenet_teacher_lends_its_features_to_a_student_of_another_task(mit67, imagenet_weights, tmp_path):
    result = train(spec(), mit67, tmp_path / "afd", imagenet_weights["resnet34_imagenet"], **QUIET)
    assert result.teacher.fc.out_features == 1000 and result.model.fc.out_features == 3
    assert 0 <= result.record["test_top1"] <= 1 and result.record["teacher_test_top1"] is None
    assert math.isfinite(result.record["history"][-1]["loss_afd"])


def test_a_published_network_of_another_task_is_checked_but_has_no_accuracy(mit67, imagenet_weights, tmp_path):
    teacher = spec(
        kind="teacher",
        arch="resnet34_imagenet",
        teacher=None,
        method="vanilla",
        run="teacher",
        method_params={},
        checkpoint=str(imagenet_weights["resnet34_imagenet"]),
        schedule=Schedule(epochs=0, batch_size=4, lr_decay_epochs=()),
    )
    record = train(teacher, mit67, tmp_path / "teacher", **QUIET).record
    assert record["test_top1"] is None and record["num_classes"] == 1000
    assert "1000-class network on a 3-class dataset" in record["note"]


def test_fine_tuning_starts_from_every_imagenet_weight_but_the_classifier(imagenet_weights):
    path = imagenet_weights["resnet18_imagenet"]
    published = torch.load(path)
    model = load_network(path, "resnet18_imagenet", 3, torch.device("cpu"), new_classifier=True)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in published.items() if not k.startswith("fc."))
    assert state["fc.weight"].shape == (3, 512)
    with pytest.raises(RuntimeError, match="does not hold resnet34_imagenet weights"):
        load_network(path, "resnet34_imagenet", 3, torch.device("cpu"), new_classifier=True)


def test_a_fine_tuned_student_trains_from_its_init(mit67, imagenet_weights, tmp_path):
    job = spec(
        method="at",
        run="ft_at",
        method_params={"alpha": 0, "beta": 1000},
        checkpoint=str(imagenet_weights["resnet18_imagenet"]),
        new_classifier=True,
    )
    result = train(job, mit67, tmp_path / "ft", imagenet_weights["resnet34_imagenet"], **QUIET)
    assert result.model.fc.out_features == 3 and result.record["test_top1"] is not None


def test_l2t_ww_cosine_schedule_steps_before_each_epoch():
    schedule = Schedule(epochs=200, lr=0.1, lr_schedule="cosine", lr_decay_epochs=())
    # torch's CosineAnnealingLR(T_max=200), stepped once before epoch 1's training, as train_l2t_ww.py does
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 200)
    expected = []
    for _ in range(200):
        optimizer.step()
        scheduler.step()
        expected.append(optimizer.param_groups[0]["lr"])
    assert [schedule.lr_at(e) for e in range(1, 201)] == pytest.approx(expected, abs=1e-12)


def test_transfer_grids_refuse_methods_that_read_the_teachers_logits(tmp_path, imagenet_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "data/weights"
    weights.mkdir(parents=True)
    imagenet_weights["resnet34_imagenet"].rename(weights / "resnet34-b627a593.pth")
    imagenet_weights["resnet18_imagenet"].rename(weights / "resnet18-f37072fd.pth")
    from conftest import ROOT

    config = yaml.safe_load((ROOT / "params/transfer_mit67.yaml").read_text())
    grid = Grid(config)
    assert student_kind.spec(grid, "resnet34_imagenet", "resnet18_imagenet", "ft_afd", 0).new_classifier
    assert student_kind.spec(grid, "resnet34_imagenet", "resnet18_imagenet", "afd", 0).checkpoint is None
    config["methods"]["kd"] = {"temperature": 4}
    with pytest.raises(
        GridError,
        match=r"methods.kd: its method reads the teacher's logits, but teacher "
        r"resnet34_imagenet \(data/weights/resnet34-b627a593.pth\) has 1000 "
        r"classes, not mit67's 67",
    ):
        Grid(config)
    del config["methods"]["kd"]
    config["methods"]["afd"]["alpha"] = 0.9
    with pytest.raises(GridError, match="methods.afd: alpha: 0.9 adds KD on the teacher's logits"):
        Grid(config)


def test_a_teacher_fine_tuned_from_imagenet_trains_with_a_new_classifier(mit67, imagenet_weights, tmp_path):
    """The AT paper's transfer table: the ResNet-34 teacher is fine-tuned on the target set (teachers.init)."""
    teacher = spec(
        kind="teacher",
        arch="resnet34_imagenet",
        teacher=None,
        method="vanilla",
        run="teacher",
        method_params={},
        checkpoint=str(imagenet_weights["resnet34_imagenet"]),
        new_classifier=True,
    )
    result = train(teacher, mit67, tmp_path / "teacher", **QUIET)
    assert result.model.fc.out_features == 3 and 0 <= result.record["test_top1"] <= 1
    published = torch.load(imagenet_weights["resnet34_imagenet"])
    assert not torch.equal(result.model.state_dict()["conv1.weight"], published["conv1.weight"])  # it trained
