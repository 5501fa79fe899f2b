"""Packs: students (and heads) that read the same teacher and batches train in one process, with the results they
get alone.

One real run of the default grid's every method (one epoch, a slice of digits): each student alone, then the
same students as packs; every metric but the timings, and every weight, bit-identical on CPU.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from afdistill.engine import Member, train_pack
from afdistill.grid import Grid
from afdistill.jobs import Plan, balance, pack_cost, packs
from afdistill.kinds import student as student_kind
from afdistill.runner import PackFailed, run, run_pack

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("images_per_s", "epoch_seconds")


def quiet(*args, **kwargs):
    pass


def one_epoch_default_grid() -> dict:
    """params/default.yaml with every method and row, one epoch and one seed each, on the CPU."""
    config = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    config.update(device="cpu", seeds=[0])
    config["train"].update(epochs=1, lr_decay_epochs=[1])
    config["teachers"]["train"] = {"epochs": 1, "lr_decay_epochs": [1]}
    config["heads"] = {"seed": 0, "train": {"epochs": 1}}
    for name, row in config["methods"].items():
        row.pop("seeds", None)
        for key in ("warmup_epochs", "ctkd_curriculum_epochs"):
            if key in row:
                row[key] = 1
    return config


def shrink(folder: Path, train: int = 192, test: int = 64) -> None:
    """The prepared digits cut to a slice, in the same on-disk format (a few steps per epoch)."""
    for split, count in (("train", train), ("test", test)):
        with np.load(folder / f"{split}.npz") as arrays:
            np.savez(folder / f"{split}.npz", images=arrays["images"][:count], labels=arrays["labels"][:count])
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(n_train=train, n_test=test)
    (folder / "meta.json").write_text(json.dumps(meta))


def outcome(folder: str) -> dict:
    """What a job's result is: its metrics but the timings, its summaries, its test accuracy (none for heads) and
    its weights."""
    record = json.loads((Path(folder) / "metrics.json").read_text())
    history = [{k: v for k, v in epoch.items() if k not in TIMINGS} for epoch in record["history"]]
    saved = torch.load(Path(folder) / "model.pt", weights_only=True)
    weights = {f"{part}.{k}": v for part in ("model", "method") for k, v in (saved[part] or {}).items()}
    return {"history": history, "summaries": record["summaries"], "top1": record.get("test_top1"), "weights": weights}


def same(a, b) -> bool:
    """Equal to the bit, tensors within containers (a method's state may hold a dict)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def member(job, folder: str) -> Member:
    """The engine's view of a planned student: its spec, a folder, what its pre-stage produced."""
    return Member(job.spec, Path(folder), student_kind._artifact(job), identity=job.fingerprint)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every student of the one-epoch default grid trained alone, then again in packs (the engine's own
    comparison: no tracker; the pipeline's packs, MLflow runs and markers are the failure test's and
    test_pipeline's)."""
    project = tmp_path_factory.mktemp("packing")
    patch = pytest.MonkeyPatch()
    patch.chdir(project)
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    try:
        plan = Plan(Grid(one_epoch_default_grid(), source="params/default.yaml"))
        (data,) = plan.of_kind("data")
        run(data, log=quiet)
        shrink(Path(data.folder))
        for job in plan.jobs:
            if job.kind.name in ("teacher", "links"):
                run(job, log=quiet)
        heads_alone = {}
        for job in plan.of_kind("heads"):  # MHGD's attention network and FT's paraphraser, each alone
            teacher = job.inputs["teacher"].path("model.pt")
            (result,) = train_pack([member(job, f"alone/{job.folder}")], data.folder, teacher, log=quiet)
            assert not isinstance(result, BaseException), job.folder
            heads_alone[job.folder] = outcome(f"alone/{job.folder}")
        (heads,) = packs(plan.of_kind("heads"))
        run_pack(heads, log=quiet)  # then as one pack, through the runner; the students read these
        heads_packed = {job.folder: outcome(job.folder) for job in heads}
        students = plan.of_kind("student")
        grouped = packs(students)
        alone, packed = {}, {}
        for job in students:
            teacher = job.inputs["teacher"].path("model.pt") if "teacher" in job.inputs else None
            (result,) = train_pack([member(job, f"alone/{job.folder}")], data.folder, teacher, log=quiet)
            assert not isinstance(result, BaseException), job.folder
            alone[job.folder] = outcome(f"alone/{job.folder}")
        for pack in grouped:
            teacher = pack[0].inputs["teacher"].path("model.pt") if "teacher" in pack[0].inputs else None
            results = train_pack([member(job, job.folder) for job in pack], data.folder, teacher, log=quiet)
            assert not any(isinstance(result, BaseException) for result in results), results
            packed.update({job.folder: outcome(job.folder) for job in pack})
        yield plan, grouped, {**heads_alone, **alone}, {**heads_packed, **packed}
    finally:
        patch.undo()


def test_every_student_of_the_default_grid_trains_in_a_pack(trained):
    plan, grouped, alone, packed = trained
    students = plan.of_kind("student")
    assert sorted(len(pack) for pack in grouped)[-1] > 10  # the pair's teacher-reading methods, one pack
    assert sum(len(pack) for pack in grouped) == len(students) and {job.folder for job in students} <= packed.keys()
    for pack in grouped:  # a pack shares its teacher and its batches
        assert len({(job.spec.teacher, job.spec.seed, job.spec.schedule.batch_size) for job in pack}) == 1
    # MLKD's strong view comes from its own stream: MLKD packs with the pair's other students
    assert any(len(pack) > 1 and "mlkd" in {job.spec.method for job in pack} for pack in grouped)


def test_balance_splits_the_last_wave_evenly_over_the_workers_and_leaves_earlier_packs_whole():
    plan = Plan(Grid.from_file(ROOT / "params" / "default.yaml"))
    grouped = packs(plan.jobs)
    assert balance(grouped, 1) == grouped
    balanced = balance(grouped, 2)
    assert sorted(job.folder for group in balanced for job in group) == sorted(job.folder for job in plan.jobs)
    wave = [group for group in grouped if len(group) > 1 and any("heads" in job.inputs for job in group)]
    untouched = [group for group in grouped if not any(group is member for member in wave)]
    assert all(group in balanced for group in untouched)  # the heads pack, the teacher-free students: whole
    parts = [group for group in balanced if group not in untouched]
    assert len(parts) <= len(wave) + 1  # McNaughton: at most workers - 1 more processes
    share = sum(map(pack_cost, wave)) / 2
    assert max(map(pack_cost, parts)) <= 1.05 * share  # no part is more than a worker's share
    # and the two workers' loads (parts filled in turn, as Snakemake starts them) are within a job of each other
    costliest_job = max(pack_cost([job]) for group in wave for job in group)
    load = 0.0
    for part in parts:
        if load + pack_cost(part) <= 1.05 * share:
            load += pack_cost(part)
    assert abs(load - (2 * share - load)) <= costliest_job
    # the part that fills the first share holds students that read the teacher alone: it starts once the teacher
    # is done, beside the links and heads
    assert all(set(job.inputs) == {"data", "teacher"} for job in parts[0])
    for part in parts:  # every part still shares its teacher and batches
        assert len({(job.spec.teacher, job.spec.seed) for job in part}) == 1


def test_heads_pretrained_on_one_teacher_train_as_one_pack(trained):
    plan, grouped, alone, packed = trained
    heads = plan.of_kind("heads")
    assert {job.spec.run for job in heads} == {"mhgd", "ft"} and packs(heads) == [heads]


def test_a_packed_student_equals_the_same_job_trained_alone_for_every_method(trained):
    plan, grouped, alone, packed = trained
    methods = {job.spec.method for job in plan.of_kind("student")}
    assert {"kd", "crd", "l2t", "mhgd", "afd", "mlkd", "dml", "combined", "at"} <= methods
    assert {job.folder for job in plan.of_kind("heads")} <= alone.keys()  # and the heads' pack
    for folder, expected in alone.items():
        got = packed[folder]
        assert got["history"] == expected["history"], folder
        assert got["summaries"] == expected["summaries"], folder
        assert got["top1"] == expected["top1"], folder
        assert got["weights"].keys() == expected["weights"].keys(), folder
        for name, value in expected["weights"].items():
            assert same(got["weights"][name], value), f"{folder}: {name}"


def test_a_failing_student_fails_alone_and_its_pack_mates_are_written(trained, monkeypatch):
    """Through the pipeline's runner (MLflow runs, markers): a pack of KD, KD+LS+CTKD and FitNet whose KD
    terms turn NaN."""
    plan, grouped, alone, packed = trained
    pack = [job for job in max(grouped, key=len) if job.spec.run in ("kd", "kd_ls_ctkd", "fitnet")]
    assert len(pack) == 3
    for job in pack:
        shutil.rmtree(job.folder)
    victims = [job for job in pack if job.spec.method == "kd"]  # the kd row and KD+LS+CTKD
    import afdistill.methods.kd as kd

    original = kd.KD.forward

    def diverge(self, student, teacher, batch):
        terms = original(self, student, teacher, batch)
        return {name: value * float("nan") for name, value in terms.items()}

    monkeypatch.setattr(kd.KD, "forward", diverge)
    with pytest.raises(PackFailed, match=rf"{len(victims)} of the pack's {len(pack)} jobs failed") as failure:
        run_pack(pack, log=quiet)
    assert all(job.folder in str(failure.value) for job in victims)
    for job in pack:
        assert Path(job.marker).is_file() == (job not in victims), job.folder
        if job in victims:
            assert not Path(job.path("metrics.json")).exists()
        else:
            assert outcome(job.folder)["history"] == alone[job.folder]["history"], job.folder


def close(a, b, where: str, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    """Equal up to rounding, tensors within containers (integer counters exactly)."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{where}: {m}")
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            close(a[key], b[key], f"{where}.{key}", rtol, atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{where}[{index}]", rtol, atol)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=rtol, abs=atol), where
    else:
        assert a == b, where


def test_fused_students_train_as_they_do_unfused_up_to_rounding(trained):
    """``runtime.fuse``: the big pack trained twice in fp32 (bfloat16's rounding would hide a real difference),
    unfused, then with its students of one architecture whose methods allow it run as one network (vmap over
    their stacked weights). Every metric, summary and weight of a fused student (BatchNorm's running statistics
    included) equals the unfused one up to float32 rounding; the students that cannot fuse, exactly."""
    from dataclasses import replace

    from afdistill.methods import method_class

    plan, grouped, alone, packed = trained
    (data,) = plan.of_kind("data")
    pack = max(grouped, key=len)
    teacher = pack[0].inputs["teacher"].path("model.pt")
    runs: dict[bool, list[str]] = {}
    for fuse in (False, True):
        members = [
            Member(
                replace(job.spec, runtime=replace(job.spec.runtime, precision="fp32", fuse=fuse)),
                Path(f"fuse-{fuse}/{job.folder}"),
                student_kind._artifact(job),
                identity=job.fingerprint,
            )
            for job in pack
        ]
        lines: list[str] = []
        results = train_pack(members, data.folder, teacher, log=lines.append)
        assert not any(isinstance(result, BaseException) for result in results), results
        runs[fuse] = lines
    caps = {job.folder: method_class(job.spec.method).capabilities(job.spec.method_params) for job in pack}
    fused = [job for job in pack if caps[job.folder].fuses and not caps[job.folder].strong_view]
    assert 8 <= len(fused) < len(pack)  # L2T, MHGD, MLKD and gradient AT run as they do unfused
    assert not any(line.startswith("fused (runtime.fuse)") for line in runs[False])
    (announced,) = [line for line in runs[True] if line.startswith("fused (runtime.fuse)")]
    assert f"{len(fused)} of them" in announced
    differs = False
    for job in pack:
        got, expected = outcome(f"fuse-True/{job.folder}"), outcome(f"fuse-False/{job.folder}")
        if job in fused:
            # float32 rounding, grown over the epoch's steps by ill-conditioned terms (DIST's correlations, RKD's
            # angles): up to 4.4e-4 in a weight here; tests/test_fused.py checks a step exactly in float64
            close(got, expected, job.folder, rtol=1e-2, atol=1e-3)
            differs = differs or not same(got["weights"], expected["weights"])
        else:
            assert same(got, expected), job.folder
    assert differs  # the fused pass ran: grouped kernels round differently somewhere
