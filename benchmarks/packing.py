"""Packed students against one process per job: Table 1's methods on one pair, the same steps both ways.

    PYTHONPATH=src python benchmarks/packing.py --steps 8 --rounds 3
    PYTHONPATH=src python benchmarks/packing.py --device cuda --steps 100 --rounds 2 --sizes 2 4 10 --fuse  # gpu.sh

The jobs are the Table 1 grid's own (``params/cifar100.yaml``: its specs, hyper-parameters and runtime) for
one pair and seed, cut to one epoch of ``--steps`` batches of random CIFAR-shaped images (an untrained
teacher: the cost is the same). Each job runs as its own ``python`` process, as the pipeline runs it with
``runtime.pack: false``, start-up included; each pack of the first 2, 4, 9 (every method but L2T) and 10 of
them runs as one process. Rounds interleave every process in a rotating order, so a drift of the shared
machine hits both ways alike; each round gives the ratio of the pack's wall time to the sum of its
members' separate wall times, and the medians are printed with images/s per student (the images one
student trains on, over its share of the wall time). With ``--fuse``, each pack also runs with
``runtime.fuse`` (its students whose methods allow it as one network, ``afdistill.fused``), in the same
rounds, and its ratio to the unfused pack is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def table1_specs(teacher: str, student: str, seed: int) -> list:
    """Table 1's student jobs with this teacher (every method but the plain student), L2T last."""
    from afdistill.grid import Grid
    from afdistill.jobs import Plan

    plan = Plan(Grid.from_file(ROOT / "params" / "cifar100.yaml"))
    specs = [
        spec
        for spec in (job.spec for job in plan.of_kind("student"))
        if spec is not None and spec.teacher == teacher and spec.arch == student and spec.seed == seed
    ]
    return sorted(specs, key=lambda spec: spec.method == "l2t")


def write_data(folder: Path, train: int, test: int, classes: int = 100) -> None:
    """Random CIFAR-shaped images in the prepared format (``afdistill.data.DeviceData``)."""
    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        np.savez(
            folder / f"{split}.npz",
            images=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
            labels=rng.integers(0, classes, count).astype(np.int64),
        )
    meta: dict[str, object] = {
        "num_classes": classes,
        "pad": 4,
        "flip": True,
        "image_size": 32,
        "n_train": train,
        "n_test": test,
    }
    meta.update(mean=[0.5071, 0.4865, 0.4409], std=[0.2673, 0.2564, 0.2762])
    (folder / "meta.json").write_text(json.dumps(meta))


def calibrated_teacher(arch: str):
    """An untrained teacher whose BatchNorm statistics match its weights (estimated on random images), so its
    features stay in range in eval mode, as a trained teacher's do (L2T refuses overflowing ones)."""
    import torch

    from afdistill.models import create_model

    torch.manual_seed(0)
    teacher = create_model(arch, 100)
    for module in teacher.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average over the batches below
    teacher.train()
    with torch.no_grad():
        for _ in range(4):
            teacher(torch.randn(64, 3, 32, 32))
    return teacher


def worker(job_file: str) -> None:
    """Train the specs in ``job_file`` as one pack (one spec: alone), then exit."""
    import torch

    from afdistill.engine import Member, train_pack
    from afdistill.spec import JobSpec

    job = json.loads(Path(job_file).read_text())
    torch.set_num_threads(job["threads"])
    members = [Member(JobSpec.from_dict(spec), Path(out)) for spec, out in zip(job["specs"], job["outs"])]
    for outcome in train_pack(members, job["data"], job["teacher"], log=lambda *args: None):
        if isinstance(outcome, BaseException):
            raise outcome


def timed(job: dict, folder: Path, name: str) -> float:
    """Wall time of one worker process on ``job``, its outputs in fresh folders."""
    import shutil

    outs = [folder / "out" / name / str(index) for index in range(len(job["specs"]))]
    shutil.rmtree(folder / "out" / name, ignore_errors=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({**job, "outs": [str(out) for out in outs]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", str(path)], check=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5, help="batches of the one epoch each job trains")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every process")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 9, 10], help="packs of the first N jobs")
    parser.add_argument("--fuse", action="store_true", help="also time each pack with runtime.fuse")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    import torch

    specs = table1_specs(args.teacher, args.student, args.seed)
    batch = specs[0].schedule.batch_size
    specs = [replace(spec, device=args.device, schedule=replace(spec.schedule, epochs=1)) for spec in specs]
    folder = Path(tempfile.mkdtemp(prefix="packing-"))
    write_data(folder / "data", train=args.steps * batch, test=batch)
    torch.save({"model": calibrated_teacher(args.teacher).state_dict()}, folder / "teacher.pt")
    common = {"data": str(folder / "data"), "teacher": str(folder / "teacher.pt"), "threads": args.threads}
    titles = [f"{spec.run}" for spec in specs]
    print(
        f"{args.teacher} -> {args.student}, seed {args.seed}, {args.steps} steps of {batch} 32x32 images, "
        f"{args.threads} thread(s) per process, {args.device}, torch {torch.__version__}; jobs: {', '.join(titles)}"
    )
    sizes = [size for size in args.sizes if size <= len(specs)]
    specs, titles = specs[: max(sizes)], titles[: max(sizes)]  # a job in no pack is not timed alone either
    runs = [(f"alone:{index}", [spec]) for index, spec in enumerate(specs)]
    runs += [(f"pack:{size}", specs[:size]) for size in sizes]
    if args.fuse:
        fused = [replace(spec, runtime=replace(spec.runtime, fuse=True)) for spec in specs]
        runs += [(f"fused:{size}", fused[:size]) for size in sizes]
    walls: dict[str, list[float]] = {name: [] for name, _ in runs}
    for round_index in range(args.rounds):
        shift = round_index * len(runs) // max(args.rounds, 1)
        for name, members in runs[shift:] + runs[:shift]:
            walls[name].append(
                timed({**common, "specs": [m.to_dict() for m in members]}, folder, name.replace(":", "_"))
            )
        # the tables so far after every round, so that a run cut short (gpu.sh's time limit) keeps its figures
        print(f"\nafter round {round_index + 1}/{args.rounds}:", flush=True)
        report(walls, sizes, titles, args.steps * batch, args.fuse)


def report(walls: dict[str, list[float]], sizes: list[int], titles: list[str], images: int, fuse: bool) -> None:
    """Medians and per-round ratios over the rounds done, images/s per student."""
    print(
        f"{'jobs':>6} {'packed s':>9} {'separate s':>11} {'ratio (per round)':>32} "
        f"{'img/s/student':>14} {'separate':>9}"
    )
    for size in sizes:
        packed = walls[f"pack:{size}"]
        separate = [sum(walls[f"alone:{index}"][r] for index in range(size)) for r in range(len(packed))]
        ratios = [p / s for p, s in zip(packed, separate)]
        print(
            f"{size:>6} {statistics.median(packed):>9.1f} {statistics.median(separate):>11.1f} "
            f"{statistics.median(ratios):>7.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) "
            f"{images * size / statistics.median(packed):>14.1f} {images * size / statistics.median(separate):>9.1f}"
        )
    if fuse:
        print(f"\n{'jobs':>6} {'fused s':>9} {'packed s':>9} {'ratio (per round)':>32} {'img/s/student':>14}")
        for size in sizes:
            fused_walls, packed = walls[f"fused:{size}"], walls[f"pack:{size}"]
            ratios = [f / p for f, p in zip(fused_walls, packed)]
            print(
                f"{size:>6} {statistics.median(fused_walls):>9.1f} {statistics.median(packed):>9.1f} "
                f"{statistics.median(ratios):>7.2f} ({', '.join(f'{r:.2f}' for r in ratios)}) "
                f"{images * size / statistics.median(fused_walls):>14.1f}"
            )
    print(
        "separate processes, median wall s: "
        + ", ".join(f"{title} {statistics.median(walls[f'alone:{index}']):.1f}" for index, title in enumerate(titles)),
        flush=True,
    )


if __name__ == "__main__":
    main()
