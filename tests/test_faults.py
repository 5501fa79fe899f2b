"""Faults: corrupt and missing files are named with what to do; a diverging loss stops the job; nothing is lost."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from afdistill.data import DataError, DeviceData
from afdistill.engine import CHECKPOINT, TrainingDiverged, load_network, train
from afdistill.files import FileProblem, atomic_write, load_json
from afdistill.spec import JobSpec, Schedule

SCHEDULE = Schedule(epochs=2, batch_size=16, lr=0.05, lr_decay_epochs=(2,))
quiet = lambda *args: None  # noqa: E731


def spec(**changes):
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


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_dataset_names_the_file_and_the_fix(small_data):
    truncate(small_data / "train.npz")
    with pytest.raises(FileProblem, match=r"train\.npz: a prepared split cannot be read .* run its data stage again"):
        DeviceData(small_data)


def test_labels_out_of_range_are_refused_when_the_data_is_loaded(small_data):
    with np.load(small_data / "test.npz") as arrays:
        images, labels = arrays["images"], arrays["labels"].copy()
    labels[3] = 12
    np.savez(small_data / "test.npz", images=images, labels=labels)
    with pytest.raises(DataError, match=r"test\.npz: labels range over 0\.\.12; meta\.json says 10 classes"):
        DeviceData(small_data)


def test_a_truncated_teacher_names_the_file(small_data, tmp_path):
    train(spec(), small_data, tmp_path / "teacher", log=quiet)
    model = tmp_path / "teacher" / "model.pt"
    truncate(model)
    with pytest.raises(FileProblem, match=rf"{model}: the resnet8 weights cannot be read .* truncated or corrupt"):
        load_network(model, "resnet8", 10, torch.device("cpu"))


def test_a_corrupt_checkpoint_is_kept_aside_and_the_job_restarts_cleanly(small_data, tmp_path):
    reference = train(spec(), small_data, tmp_path / "straight", log=quiet)
    job = tmp_path / "job"
    job.mkdir()
    (job / CHECKPOINT).write_bytes(b"PK\x03\x04 not a whole checkpoint")
    messages = []
    result = train(spec(), small_data, job, log=messages.append)
    assert any("cannot be read" in m and "starting from scratch" in m for m in messages)
    (kept,) = job.glob(f"{CHECKPOINT}.corrupt-*")
    assert kept.read_bytes() == b"PK\x03\x04 not a whole checkpoint"
    assert result.record["test_top1"] == reference.record["test_top1"]


@pytest.mark.parametrize("name,what", [("metrics.json", "a job's metrics"), ("links.json", "the links")])
def test_truncated_json_names_the_file(tmp_path, name, what):
    path = tmp_path / name
    path.write_text(json.dumps({"alpha": [[0.5, 0.5]], "teacher": "a", "student": "b"}))
    truncate(path)
    with pytest.raises(FileProblem, match=rf"{name}: {what}.* cannot be read \(JSONDecodeError"):
        if name == "links.json":
            from afdistill.links import read

            read(path, "a", "b")
        else:
            load_json(path, what)


def test_a_diverging_loss_stops_the_job_without_a_result(small_data, tmp_path):
    # Valid hyper-parameters, but a learning rate no network survives.
    diverging = spec(
        kind="student",
        method="kd",
        run="kd",
        teacher="resnet8",
        schedule=Schedule(epochs=2, batch_size=16, lr=1e12, lr_decay_epochs=()),
    )
    teacher = tmp_path / "teacher"
    train(spec(), small_data, teacher, log=quiet)
    with pytest.raises(TrainingDiverged, match=r"method 'kd' diverged in epoch 1: loss_"):
        train(diverging, small_data, tmp_path / "job", teacher_checkpoint=teacher / "model.pt", log=quiet)
    assert not (tmp_path / "job" / "metrics.json").exists() and not (tmp_path / "job" / CHECKPOINT).exists()


@pytest.fixture
def small_disk(tmp_path):
    """A real filesystem that fills up: a 256 KiB tmpfs (needs root, as CI and these machines have)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_named_and_leaves_no_temporary_file(small_disk):
    target = small_disk / "model.pt"
    with pytest.raises(FileProblem, match=rf"no space left on {small_disk} while writing model\.pt"):
        atomic_write(target, lambda handle: torch.save(torch.zeros(200_000), handle))
    assert list(small_disk.iterdir()) == []


def test_a_job_whose_checkpoint_does_not_fit_says_so(small_data, small_disk):
    with pytest.raises(FileProblem, match=rf"no space left on {small_disk / 'job'} while writing {CHECKPOINT}"):
        train(spec(), small_data, small_disk / "job", log=quiet)
    assert not list((small_disk / "job").glob(".*.tmp"))
