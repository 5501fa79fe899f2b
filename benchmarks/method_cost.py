"""Training cost of every method relative to KD, on one pair, one after the other in one process.

    python benchmarks/method_cost.py --teacher resnet56 --student resnet20 --steps 20

Each method trains through the engine for two short epochs of ``--steps``
batches on the same data (random CIFAR-shaped images unless ``--data`` is
given; the teacher, MHGD's attention network and the AFD links are untrained,
which does not change the cost); the second epoch is timed. Prints images/s,
seconds per epoch of ``--epoch-images`` images, and the ratio to KD; with
``--repeats`` it runs that many rounds over all methods and reports medians
(CPU timings on a shared machine drift by 10-20% over minutes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = [
    "vanilla",
    "kd",
    "fitnet",
    "at",
    "at_grad",
    "rkd",
    "crd",
    "l2t",
    "mhgd",
    "afd",
    "afd_pretrained",
    "dkd",
    "dist",
    "mlkd",
    "reviewkd",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epoch-images", type=int, default=50_000, help="images per epoch to scale seconds to")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data", help="a prepared dataset; default: synthetic CIFAR-shaped images")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all methods; medians are reported")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from throughput import synthetic_dataset

    from afdistill.data import DeviceData
    from afdistill.engine import train
    from afdistill.methods import Context, build_method, dry_run
    from afdistill.models import create_model
    from afdistill.spec import JobSpec, Runtime, Schedule

    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        data = args.data or str(synthetic_dataset(scratch / "data", n_train=args.batch_size * args.steps, n_test=64))
        classes = DeviceData(data).num_classes
        teacher, student = create_model(args.teacher, classes).eval(), create_model(args.student, classes)
        checkpoint = scratch / "teacher.pt"
        torch.save({"model": teacher.state_dict()}, checkpoint)
        sample = (
            torch.randn(2, 3, 32, 32)
            if args.data is None
            else DeviceData(data).normalize(DeviceData(data).train.images[:2])
        )
        context = Context(None, teacher, None, dry_run(teacher, sample), classes, torch.zeros(4, dtype=torch.long), 2)
        heads = build_method("mhan", {}, context).state_dict()
        # ignore: afd_candidates, a list every network sets, is a dynamic nn.Module attribute (Tensor | Module)
        t_count, s_count = len(teacher.afd_candidates), len(student.afd_candidates)  # type: ignore[arg-type]
        links = {"teacher": args.teacher, "student": args.student, "alpha": [[1 / s_count] * s_count] * t_count}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(
            f"{args.teacher} -> {args.student}, batch {args.batch_size}, {args.steps} timed steps per method, "
            f"{device}, precision {args.precision}" + ("" if args.data else ", synthetic CIFAR-shaped data")
        )
        rounds: list[dict[str, float]] = []
        skipped: dict[str, str] = {}
        for round_index in range(args.repeats):  # every method once per round: slow drifts hit all alike
            rates: dict[str, float] = {}
            for method in args.methods:
                if method in skipped:
                    continue
                spec = JobSpec(
                    kind="student",
                    grid="cost",
                    dataset="synthetic",
                    arch=args.student,
                    teacher=args.teacher,
                    method=method,
                    run=method,
                    seed=0,
                    device=device,
                    method_params={"nce_k": args.batch_size} if method == "crd" else {},
                    schedule=Schedule(epochs=2, batch_size=args.batch_size, lr_decay_epochs=()),
                    runtime=Runtime(precision=args.precision),
                )
                artifact = {"mhgd": heads, "afd_pretrained": links}.get(method)
                try:
                    result = train(
                        spec,
                        data,
                        scratch / f"{method}-{round_index}",
                        checkpoint,
                        artifact=artifact,
                        log=lambda *a: None,
                    )
                except ValueError as error:  # e.g. MHGD on a pair whose stage widths differ
                    skipped[method] = str(error)
                    continue
                rates[method] = result.record["history"][-1]["images_per_s"]
            rounds.append(rates)
        for method, reason in skipped.items():
            print(f"  {method:15s} skipped: {reason}")
        print(
            f"  {'method':15s} {'images/s':>9s} {'s/epoch':>9s} {'vs KD':>7s}"
            + (f"   (medians over {args.repeats} rounds)" if args.repeats > 1 else "")
        )
        for method in rounds[0]:
            rate = statistics.median(r[method] for r in rounds)
            ratio = (
                f"{statistics.median(r['kd'] / r[method] for r in rounds):6.2f}x" if "kd" in rounds[0] else "      -"
            )
            print(f"  {method:15s} {rate:9.1f} {args.epoch_images / rate:9.1f} {ratio}")


if __name__ == "__main__":
    main()
