"""Same results: short distillation runs through the engine and through the reference-shaped loop.

    python benchmarks/equivalence.py --seeds 0 1 2 --epochs 8

Trains one teacher with the engine, then for every seed one student through
the engine (its default, fast runtime) and one through ``reference.py``'s
loop (per-sample transforms, fp32, eager, the per-candidate AFD loop), with
the same schedule, and prints each run's test accuracy, the mean and the
seed-to-seed standard deviation of both paths. Runs on the bundled digits
unless ``--data`` and ``--teacher-checkpoint`` name a prepared dataset and a
teacher.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--method", default="afd")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr-decay-epochs", type=int, nargs="*", default=[6, 8])
    parser.add_argument("--teacher-epochs", type=int, default=12, help="when the script trains the teacher itself")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="both paths run here; the engine uses its default runtime for the device",
    )
    parser.add_argument("--data")
    parser.add_argument("--teacher-checkpoint")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from reference import ReferenceTrainer

    from afdistill.data import prepare
    from afdistill.engine import train
    from afdistill.spec import JobSpec, Schedule

    def quiet(*a):
        return None

    schedule = Schedule(
        epochs=args.epochs, batch_size=args.batch_size, lr=0.05, lr_decay_epochs=tuple(args.lr_decay_epochs)
    )
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        data = args.data or str(scratch / "digits")
        if args.data is None:
            prepare("digits", data)
        teacher_checkpoint = args.teacher_checkpoint
        if teacher_checkpoint is None:
            teacher = train(
                JobSpec(
                    kind="teacher",
                    grid="equivalence",
                    dataset="digits",
                    arch=args.teacher,
                    method="vanilla",
                    run="teacher",
                    seed=0,
                    device=args.device,
                    schedule=Schedule(
                        epochs=args.teacher_epochs,
                        lr_decay_epochs=tuple(sorted({args.teacher_epochs * 2 // 3, args.teacher_epochs - 1})),
                    ),
                ),
                data,
                scratch / "teacher",
                log=quiet,
            )
            teacher_checkpoint = scratch / "teacher" / "model.pt"
            print(f"teacher {args.teacher}: test top-1 {teacher.record['test_top1']:.4f}")
        device = torch.device(args.device)
        results: dict[str, list[float]] = {"engine": [], "reference": []}
        for seed in args.seeds:
            spec = JobSpec(
                kind="student",
                grid="equivalence",
                dataset="digits",
                arch=args.student,
                teacher=args.teacher,
                method=args.method,
                run=args.method,
                seed=seed,
                device=args.device,
                schedule=schedule,
            )
            engine = train(spec, data, scratch / f"engine{seed}", teacher_checkpoint, log=quiet)
            results["engine"].append(engine.record["test_top1"])
            runtime = engine.record["runtime"]

            reference = ReferenceTrainer(
                data,
                teacher_checkpoint,
                args.teacher,
                args.student,
                args.method,
                {},
                args.batch_size,
                schedule.lr,
                device,
                seed,
            )
            for epoch in range(1, args.epochs + 1):
                reference.train_epoch(epoch, schedule.lr_at(epoch))
            results["reference"].append(reference.test_accuracy())
            print(
                f"seed {seed}: engine {results['engine'][-1]:.4f} "
                f"({runtime['precision']}, channels_last {runtime['channels_last']}, compile {runtime['compile']}), "
                f"reference {results['reference'][-1]:.4f} (fp32)"
            )
        for path, values in results.items():
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{path:9s}: mean {statistics.fmean(values):.4f}  std over seeds {spread:.4f}  ({len(values)} seeds)")
        gap = statistics.fmean(results["engine"]) - statistics.fmean(results["reference"])
        spread = max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in results.values())
        print(
            f"difference of means {gap:+.4f}; largest seed-to-seed std {spread:.4f}: "
            f"{'within' if abs(gap) <= spread else 'OUTSIDE'} the spread"
        )


if __name__ == "__main__":
    main()
