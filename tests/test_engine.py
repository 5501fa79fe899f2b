"""The engine: training lowers the loss, a seed fixes the result, an interrupted job resumes exactly."""

import json
import re

import pytest
import torch

from afdistill.engine import CHECKPOINT, train
from afdistill.spec import JobSpec, Schedule

SCHEDULE = Schedule(epochs=3, batch_size=16, lr=0.05, lr_decay_epochs=(3,))


def teacher_spec(**changes):
    fields = dict(
        kind="teacher",
        grid="test",
        dataset="digits",
        arch="resnet8",
        method="vanilla",
        run="teacher",
        seed=0,
        schedule=SCHEDULE,
        device="cpu",
    )
    fields.update(changes)
    return JobSpec(**fields)


def student_spec(method, **changes):
    fields = dict(
        kind="student",
        grid="test",
        dataset="digits",
        arch="resnet8",
        teacher="resnet8",
        method=method,
        run=method,
        seed=0,
        schedule=SCHEDULE,
        device="cpu",
        method_params={},
    )
    fields.update(changes)
    return JobSpec(**fields)


@pytest.fixture
def teacher_checkpoint(small_data, tmp_path):
    train(teacher_spec(), small_data, tmp_path / "teacher", log=lambda *a: None)
    return tmp_path / "teacher" / "model.pt"


def test_training_lowers_the_loss_and_writes_its_outputs(small_data, tmp_path):
    result = train(teacher_spec(), small_data, tmp_path / "job", log=lambda *a: None)
    losses = [epoch["loss_total"] for epoch in result.record["history"]]
    assert losses[-1] < losses[0] * 0.8
    assert result.record["history"][-1]["lr"] == pytest.approx(0.005)  # decayed at the start of epoch 3
    metrics = json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert metrics["test_top1"] == result.record["test_top1"] > 0.3
    assert set(metrics["history"][0]) >= {
        "loss_total",
        "loss_ce",
        "train_top1",
        "train_top5",
        "test_top1",
        "test_top5",
        "lr",
        "images_per_s",
    }
    assert (tmp_path / "job" / "model.pt").exists()
    assert torch.load(tmp_path / "job" / CHECKPOINT, weights_only=False)["complete"]  # kept: the job is recognised


def test_the_same_seed_gives_the_same_metrics_and_another_seed_does_not(small_data, teacher_checkpoint, tmp_path):
    runs = [
        train(
            student_spec("afd", seed=seed), small_data, tmp_path / f"run{i}", teacher_checkpoint, log=lambda *a: None
        ).record["history"]
        for i, seed in enumerate((0, 0, 1))
    ]

    def strip(history):
        return [{k: v for k, v in e.items() if k not in ("images_per_s", "epoch_seconds")} for e in history]

    assert strip(runs[0]) == strip(runs[1])
    assert strip(runs[0]) != strip(runs[2])


class Interrupt:
    """Stops the job the way Ctrl-C would, when the engine reports epoch ``at``."""

    def __init__(self, at, title=""):
        self.at, self.title = at, title

    def __call__(self, message):
        if f"{self.title}] epoch {self.at}/" in message if self.title else f"epoch {self.at}/" in message:
            raise KeyboardInterrupt


def test_an_interrupted_job_resumes_from_its_last_checkpoint(small_data, teacher_checkpoint, tmp_path):
    spec = student_spec("kd")
    reference = train(spec, small_data, tmp_path / "straight", teacher_checkpoint, log=lambda *a: None)

    with pytest.raises(KeyboardInterrupt):
        train(spec, small_data, tmp_path / "resumed", teacher_checkpoint, log=Interrupt(at=2))
    checkpoint = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=False)
    assert checkpoint["epoch"] == 1
    messages = []
    resumed = train(spec, small_data, tmp_path / "resumed", teacher_checkpoint, log=messages.append)
    assert "resuming after epoch 1" in messages[0]
    assert sum("epoch" in m and "/3" in m for m in messages) == 2  # epochs 2 and 3 only

    def strip(history):
        return [{k: v for k, v in e.items() if k not in ("images_per_s", "epoch_seconds")} for e in history]

    assert strip(resumed.record["history"]) == strip(reference.record["history"])
    for a, b in zip(resumed.model.state_dict().values(), reference.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_job_is_kept_aside_not_overwritten(small_data, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(teacher_spec(), small_data, tmp_path / "job", log=Interrupt(at=2))
    before = (tmp_path / "job" / CHECKPOINT).read_bytes()
    messages = []
    train(teacher_spec(seed=5), small_data, tmp_path / "job", log=messages.append)
    assert any("different seed" in m and "starting from scratch" in m for m in messages)
    (kept,) = (tmp_path / "job").glob(f"{CHECKPOINT}.other-job-*")
    assert kept.read_bytes() == before


def test_a_completed_job_is_recognised_not_retrained(small_data, tmp_path):
    first = train(teacher_spec(), small_data, tmp_path / "job", log=lambda *a: None)
    (tmp_path / "job" / "metrics.json").unlink()  # as a scheduler deletes outputs before a rerun
    messages = []
    again = train(teacher_spec(), small_data, tmp_path / "job", log=messages.append)
    assert "already complete" in messages[0] and not any("epoch 1/" in m for m in messages)
    assert again.record["history"] == first.record["history"]
    assert json.loads((tmp_path / "job" / "metrics.json").read_text())["test_top1"] == first.record["test_top1"]


def test_a_published_teacher_checkpoint_is_evaluated_not_retrained(small_data, teacher_checkpoint, tmp_path):
    imported = train(
        teacher_spec(checkpoint=str(teacher_checkpoint), schedule=Schedule(epochs=0)),
        small_data,
        tmp_path / "imported",
        log=lambda *a: None,
    )
    original = json.loads((teacher_checkpoint.parent / "metrics.json").read_text())
    assert imported.record["history"] == []
    assert imported.record["test_top1"] == pytest.approx(original["test_top1"])


def test_evaluation_runs_through_a_compiled_network(small_data):
    # Regression: a runtime with a compile mode compiles the student, and evaluation once failed on the
    # compiled wrapper (``forward or model`` asked it for its truth value).
    from afdistill.data import DeviceData
    from afdistill.engine import evaluate
    from afdistill.models import create_model

    data = DeviceData(small_data, torch.device("cpu"))
    model = create_model("resnet8", data.num_classes)
    plain = evaluate(model, data)
    through_compiled = evaluate(model, data, forward=torch.compile(model, backend="eager"))
    assert through_compiled == plain


def test_each_epoch_prints_one_progress_line_with_lr_accuracy_speed_elapsed_and_eta(small_data, tmp_path):
    lines = []
    train(teacher_spec(), small_data, tmp_path / "job", log=lines.append)
    epochs = [line for line in lines if " epoch " in line]
    assert len(epochs) == 3
    pattern = (
        r"^\[teacher resnet8\] epoch 2/3 lr 0\.05 loss \d+\.\d{4} train 0\.\d{4} test 0\.\d{4} "
        r"\| \d+ img/s \| 0:\d\d:\d\d elapsed, ETA 0:\d\d:\d\d$"
    )
    assert re.match(pattern, epochs[1]), epochs[1]
    assert epochs[2].endswith("ETA 0:00:00")


def test_mlkd_trains_on_a_second_strong_view_that_the_seed_fixes(small_data, teacher_checkpoint, tmp_path, monkeypatch):
    from afdistill.data import DeviceData

    views = []
    real = DeviceData.strong_batch
    monkeypatch.setattr(
        DeviceData,
        "strong_batch",
        lambda self, indices, generator: views.append(indices) or real(self, indices, generator),
    )
    histories = [
        train(
            student_spec("mlkd", seed=0, method_params=params),
            small_data,
            tmp_path / name,
            teacher_checkpoint,
            log=lambda *a: None,
        ).record["history"]
        for name, params in (("a", {}), ("b", {}), ("weak", {"strong_view": False}))
    ]

    def strip(history):
        return [{k: v for k, v in e.items() if k not in ("images_per_s", "epoch_seconds")} for e in history]

    assert strip(histories[0]) == strip(histories[1])
    assert strip(histories[0]) != strip(histories[2])
    assert {"loss_mlkd_ce_strong", "loss_mlkd_instance_strong"} <= set(histories[0][0])
    assert "loss_mlkd_ce_strong" not in histories[2][0]
    # one strong view per batch of the two strong runs, none for the weak one: 3 epochs x 25 batches of 16
    assert len(views) == 2 * 3 * 25 and all(len(v) == 16 for v in views)


def test_restarting_momentum_at_a_decay_steps_as_a_new_optimiser_would():
    """szagoruyko/attention-transfer builds a new SGD at each decay: clearing the buffers in place is the same."""
    from afdistill.engine import set_epoch_lr

    schedule = Schedule(epochs=3, lr=0.1, lr_decay_epochs=(2,), lr_decay_rate=0.2, restart_momentum=True)
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.randn(5))
    kept = torch.optim.SGD([weights], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for epoch in (1, 2):
        set_epoch_lr(kept, schedule, epoch)
        if epoch == 1:  # a step with momentum before the decay
            weights.grad = torch.randn(5)
            kept.step()
    before = weights.detach().clone()
    assert kept.param_groups[0]["lr"] == pytest.approx(0.02)
    assert kept.state[weights]["momentum_buffer"].abs().sum() == 0
    gradient = torch.randn(5)
    weights.grad = gradient.clone()
    kept.step()
    fresh_weights = torch.nn.Parameter(before.clone())
    fresh = torch.optim.SGD([fresh_weights], lr=0.02, momentum=0.9, weight_decay=5e-4)
    fresh_weights.grad = gradient.clone()
    fresh.step()
    assert torch.equal(weights.detach(), fresh_weights.detach())


def test_a_killed_pack_resumes_each_student_from_its_own_checkpoint(small_data, teacher_checkpoint, tmp_path):
    from afdistill.engine import Member, train_pack

    specs = [student_spec("kd"), student_spec("at")]
    alone = [train(spec, small_data, tmp_path / "alone" / spec.run, teacher_checkpoint, log=quiet) for spec in specs]
    members = [Member(spec, tmp_path / "pack" / spec.run) for spec in specs]
    # Killed as the AT student reports its second epoch: KD has checkpointed epoch 2, AT only epoch 1.
    with pytest.raises(KeyboardInterrupt):
        train_pack(members, small_data, teacher_checkpoint, log=Interrupt(at=2, title=specs[1].title))
    saved = [torch.load(member.out_dir / CHECKPOINT, weights_only=False)["epoch"] for member in members]
    assert saved == [2, 1]
    messages = []
    resumed = train_pack(members, small_data, teacher_checkpoint, log=messages.append)
    assert any(f"[{specs[1].title}] resuming after epoch 1" in m for m in messages)
    assert sum(f"[{specs[0].title}] epoch" in m for m in messages) == 1  # KD: epoch 3 only

    def strip(history):
        return [{k: v for k, v in e.items() if k not in ("images_per_s", "epoch_seconds")} for e in history]

    for packed, reference in zip(resumed, alone):
        assert not isinstance(packed, BaseException)
        assert strip(packed.record["history"]) == strip(reference.record["history"])
        for a, b in zip(packed.model.state_dict().values(), reference.model.state_dict().values()):
            assert torch.equal(a, b)


def quiet(*args, **kwargs):
    pass
