"""Training throughput: the engine the pipeline uses against a loop shaped like the official code.

    python benchmarks/throughput.py --teacher resnet56 --student resnet20 --method afd --batch-size 64

Both paths train the same teacher -> student pair with the same method on the
same device, each in its own process (so peak memory is its own), and the
script prints images/s of each, their ratio, peak memory, and the wall time
the paper's Table 1 grid would take at the measured rate. Without ``--data``
it uses random CIFAR-shaped images (speed does not depend on content) and a
randomly initialised teacher, and says so. ``--ablation`` also times the
engine with its optimisations switched off one by one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from afdistill.kinds import student as student_kind
from afdistill.kinds import teacher as teacher_kind

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def synthetic_dataset(out: Path, n_train: int, n_test: int = 500, classes: int = 100, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        np.savez(
            out / f"{split}.npz",
            images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            labels=rng.integers(0, classes, n).astype(np.int64),
        )
    meta = {
        "dataset": "synthetic",
        "num_classes": classes,
        "image_size": size,
        "pad": 4,
        "pad_mode": "zeros",
        "flip": True,
        "mean": [0.5071, 0.4867, 0.4408],
        "std": [0.2675, 0.2565, 0.2761],
        "n_train": n_train,
        "n_test": n_test,
        "source": "random uint8 images shaped like CIFAR-100",
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def worker(args) -> dict:
    """One timed path in this process; prints a JSON record."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = json.loads(args.params)
    if args.worker == "reference":
        from reference import ReferenceTrainer

        trainer = ReferenceTrainer(
            args.data,
            args.teacher_checkpoint,
            args.teacher,
            args.student,
            args.method,
            params,
            args.batch_size,
            0.05,
            device,
            seed=0,
        )
        trainer.train_epoch(1, 0.05, max_steps=args.warmup)
        seen, seconds = trainer.train_epoch(1, 0.05, max_steps=args.steps)
        ips = seen / seconds
    else:
        from afdistill.engine import train
        from afdistill.spec import JobSpec, Runtime, Schedule

        runtime = Runtime(**json.loads(args.runtime))
        spec = JobSpec(
            kind="student",
            grid="benchmark",
            dataset="synthetic",
            arch=args.student,
            teacher=args.teacher,
            method=args.method,
            run=args.method,
            seed=0,
            method_params=params,
            device=args.device,
            schedule=Schedule(epochs=2, batch_size=args.batch_size, lr=0.05, lr_decay_epochs=()),
            runtime=runtime,
        )
        with tempfile.TemporaryDirectory() as out:
            result = train(spec, args.data, out, teacher_checkpoint=args.teacher_checkpoint, log=lambda *a: None)
        ips = result.record["history"][-1]["images_per_s"]  # epoch 2: after warm-up (and compilation)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        peak_kind = "CUDA allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_kind = "process RSS"
    return {"images_per_s": ips, "peak_mib": peak, "peak_kind": peak_kind}


def run_worker(args, path: str, runtime: dict | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", path, "--runtime", json.dumps(runtime or {})]
    for key in (
        "teacher",
        "student",
        "method",
        "batch_size",
        "steps",
        "warmup",
        "device",
        "threads",
        "params",
        "data",
        "teacher_checkpoint",
    ):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{path} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(args, paths: dict[str, tuple[str, dict | None]]) -> dict[str, dict]:
    """Images/s of every path, ``--repeats`` rounds that each run every path once in a fresh process.

    Interleaving keeps slow drifts of the machine (CPU timings here wander by
    10-20% over minutes) out of the ratios: each round's ratio compares runs
    made minutes apart at most, and the medians over rounds are reported.
    """
    rounds = []
    for _ in range(args.repeats):
        rounds.append({name: run_worker(args, worker, runtime) for name, (worker, runtime) in paths.items()})
    results = {}
    for name in paths:
        rates = [r[name]["images_per_s"] for r in rounds]
        results[name] = {
            "images_per_s": float(np.median(rates)),
            "low": min(rates),
            "high": max(rates),
            "peak_mib": max(r[name]["peak_mib"] for r in rounds),
            "peak_kind": rounds[0][name]["peak_kind"],
            "ratio": float(np.median([r[name]["images_per_s"] / r["reference"]["images_per_s"] for r in rounds])),
        }
    return results


def range_of(record: dict) -> str:
    return f" [{record['low']:.0f}-{record['high']:.0f}]" if record["high"] > record["low"] else ""


def table1_estimate(images_per_s: float) -> tuple[float, int, int, int]:
    """Hours for every training job of params/cifar100.yaml at this rate, on one device."""
    from afdistill.grid import Grid

    grid = Grid.from_file(ROOT / "params" / "cifar100.yaml")
    n_train = 50_000
    epochs = sum(student_kind.spec(grid, t, s, r, seed).schedule.epochs for t, s, r, seed in student_kind.jobs(grid))
    epochs += sum(teacher_kind.spec(grid, t).schedule.epochs for t in grid.teachers())
    return epochs * n_train / images_per_s / 3600, len(student_kind.jobs(grid)), len(grid.teachers()), epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--method", default="afd")
    parser.add_argument("--params", default="{}", help="method hyper-parameters as JSON")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per path")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--data", help="a prepared dataset (afdistill prepare); default: synthetic CIFAR-shaped")
    parser.add_argument("--teacher-checkpoint")
    parser.add_argument("--ablation", action="store_true", help="also time the engine without each optimisation")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds, each timing every path once in a fresh process; medians are reported",
    )
    parser.add_argument(
        "--concurrent",
        type=int,
        default=1,
        help="also run this many engine jobs at once on the device (jobs_per_gpu) and sum their rates",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        notes = []
        if args.data is None:
            args.data = str(synthetic_dataset(scratch / "data", n_train=args.batch_size * args.steps))
            notes.append("data: synthetic random images shaped like CIFAR-100 (speed does not depend on content)")
        if args.teacher_checkpoint is None:
            from afdistill.data import DeviceData
            from afdistill.models import create_model

            classes = DeviceData(args.data).num_classes
            args.teacher_checkpoint = str(scratch / "teacher.pt")
            torch.save({"model": create_model(args.teacher, classes).state_dict()}, args.teacher_checkpoint)
            notes.append("teacher: randomly initialised (speed does not depend on its weights)")
        device_name = (
            torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        )
        print(
            f"{args.teacher} -> {args.student}, {args.method}, batch {args.batch_size}, {args.steps} timed steps "
            f"on {args.device} ({device_name}); torch {torch.__version__}"
        )
        for note in notes:
            print(f"  {note}")

        paths: dict[str, tuple[str, dict | None]] = {"reference": ("reference", None), "ours": ("ours", None)}
        variants = {}
        if args.ablation:
            eager = {"cuda_graphs": False, "compile": "none"}
            variants = {
                "engine, fp32, contiguous, eager": {"precision": "fp32", "channels_last": False, **eager},
                "engine, fp32, channels_last": {"precision": "fp32", "channels_last": True, **eager},
                "engine, bf16, channels_last": {"precision": "bf16", "channels_last": True, **eager},
            }
            if args.device == "cpu":
                variants["engine, fp32, channels_last, heap trimmed"] = {
                    "precision": "fp32",
                    "channels_last": True,
                    "keep_freed_memory": False,
                    **eager,
                }
            if args.device == "cuda":
                variants.update(
                    {
                        "engine, bf16, channels_last, compiled": {
                            "precision": "bf16",
                            "channels_last": True,
                            "cuda_graphs": False,
                            "compile": "default",
                        },
                        "engine, fp32, contiguous, CUDA graph": {
                            "precision": "fp32",
                            "channels_last": False,
                            "cuda_graphs": True,
                        },
                        "engine, bf16, channels_last, CUDA graph": {
                            "precision": "bf16",
                            "channels_last": True,
                            "cuda_graphs": True,
                        },
                        "engine, CUDA graph of compiled networks": {"cuda_graphs": True, "compile": "default"},
                        "engine, CUDA graph, cuDNN autotuned": {"cuda_graphs": True, "deterministic": False},
                    }
                )
        paths.update({name: ("ours", runtime) for name, runtime in variants.items()})
        results = measure(args, paths)
        reference, ours = results["reference"], results["ours"]
        print(
            f"reference loop : {reference['images_per_s']:9.1f} images/s{range_of(reference)}   peak "
            f"{reference['peak_kind']} {reference['peak_mib']:6.0f} MiB   (per-sample transforms in a DataLoader, "
            f"fp32, eager)"
        )
        print(
            f"engine (ours)  : {ours['images_per_s']:9.1f} images/s{range_of(ours)}   peak {ours['peak_kind']} "
            f"{ours['peak_mib']:6.0f} MiB   (runtime auto)"
        )
        print(
            f"speed-up       : {ours['ratio']:.2f}x"
            + (
                f" (median over {args.repeats} interleaved rounds of the per-round ratio; [min-max] images/s)"
                if args.repeats > 1
                else ""
            )
        )
        for name in variants:
            record = results[name]
            print(
                f"  {name:40s}: {record['images_per_s']:9.1f} images/s{range_of(record)} "
                f"({record['ratio']:.2f}x reference)"
            )
        together = None
        if args.concurrent > 1:
            # Every job times its second epoch, after its own warm-up, so the timed epochs overlap.
            with ThreadPoolExecutor(args.concurrent) as pool:
                records = list(pool.map(lambda _: run_worker(args, "ours"), range(args.concurrent)))
            rates = [r["images_per_s"] for r in records]
            together = sum(rates)
            print(
                f"{args.concurrent} engine jobs at once on this device: {together:9.1f} images/s together "
                f"({together / reference['images_per_s']:.2f}x one reference loop; "
                f"{min(rates):.0f}-{max(rates):.0f} each)"
            )
        hours, jobs, teachers, epochs = table1_estimate(ours["images_per_s"])
        ref_hours = table1_estimate(reference["images_per_s"])[0]
        print(
            f"Table 1 grid (params/cifar100.yaml: {jobs} student jobs + {teachers} teachers, {epochs} epochs of 50,000 "
            f"images), if every job ran at this pair's rate on this device:"
        )
        print(f"  engine {hours:8.1f} h on one device ({hours / 4:.1f} h on four); reference loop {ref_hours:8.1f} h")
        if together:
            shared = table1_estimate(together)[0]
            print(
                f"  engine with jobs_per_gpu: {args.concurrent}: {shared:8.1f} h on one device "
                f"({shared / 4:.1f} h on four)"
            )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
