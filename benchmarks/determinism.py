"""Same seed, same metrics: every method of a grid trained twice on one device, compared epoch by epoch.

    python benchmarks/determinism.py                       # params/default.yaml, on CUDA if there is one
    python benchmarks/determinism.py --epochs 2 --device cuda --compile default

Runs the grid's whole chain in this process through the engine (teacher,
AFD links, MHGD heads, then each method's student of the first pair twice
with the same seed and once with another), on the digits that ship with
scikit-learn, and prints per method whether the two same-seed runs agree on
every logged metric (loss terms, train/test accuracy) of every epoch. A
second seed that gives the same numbers would mean the seed is not used; that
is printed too. Timing metrics are left out of the comparison.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from afdistill.kinds import heads as heads_kind
from afdistill.kinds import links as links_kind
from afdistill.kinds import student as student_kind
from afdistill.kinds import teacher as teacher_kind

TIMING = {"images_per_s", "epoch_seconds"}


def comparable(record: dict) -> list[dict]:
    return [{k: v for k, v in epoch.items() if k not in TIMING} for epoch in record["history"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default=str(Path(__file__).resolve().parents[1] / "params" / "default.yaml"))
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every job (teacher: twice as many)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--compile", default="none", help="torch.compile mode of the student runs (none: eager)")
    parser.add_argument("--methods", nargs="*", help="runs of the grid to check (default: all)")
    args = parser.parse_args()

    import torch

    from afdistill.data import prepare
    from afdistill.engine import train
    from afdistill.grid import Grid
    from afdistill.links import read as read_links
    from afdistill.links import write as write_links
    from afdistill.spec import Runtime

    grid = Grid.from_file(args.grid)
    teacher, student = grid.pairs[0].teacher, grid.pairs[0].student
    runtime = Runtime(precision=args.precision, compile=args.compile, deterministic=True)

    def quiet(*a):
        return None

    def short(spec, epochs=args.epochs):
        schedule = replace(spec.schedule, epochs=epochs, lr_decay_epochs=())
        return replace(spec, schedule=schedule, device=args.device, runtime=runtime)

    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        data = scratch / "data"
        prepare(grid.dataset, data)
        teacher_run = train(
            short(teacher_kind.spec(grid, teacher), 2 * args.epochs), data, scratch / "teacher", log=quiet
        )
        checkpoint = scratch / "teacher" / "model.pt"
        device = teacher_run.record["device"]
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        print(
            f"{grid.name}: {teacher} -> {student}, {args.epochs} epochs per run, on {device} ({name}), "
            f"torch {torch.__version__}, runtime {teacher_run.record['runtime']}"
        )
        artifacts = {}
        if links_kind.pairs(grid):
            links = train(
                short(links_kind.spec(grid, teacher, student)), data, scratch / "links", checkpoint, log=quiet
            )
            write_links(links, scratch / "links")
            artifacts["links"] = read_links(scratch / "links" / "links.json", teacher, student)
        runs = args.methods or [
            run for (t, s, run, seed) in student_kind.jobs(grid) if s == student and seed == grid.seeds[0]
        ]
        failures = 0
        for run in dict.fromkeys(runs):
            spec = short(
                student_kind.spec(grid, student_kind.teacher_of(grid, teacher, run), student, run, grid.seeds[0])
            )
            artifact = None
            needs = grid.run_needs(run)
            if needs == "links":
                artifact = artifacts["links"]
            elif needs == "heads":
                heads = train(
                    short(heads_kind.spec(grid, teacher, run)), data, scratch / f"heads-{run}", checkpoint, log=quiet
                )
                artifact = heads.method.state_dict()
            records = [
                train(spec, data, scratch / f"{run}-{i}", checkpoint, artifact=artifact, log=quiet).record
                for i in range(2)
            ]
            other = train(
                replace(spec, seed=spec.seed + 1),
                data,
                scratch / f"{run}-other",
                checkpoint,
                artifact=artifact,
                log=quiet,
            ).record
            same = comparable(records[0]) == comparable(records[1])
            differs = comparable(records[0]) != comparable(other)
            failures += not (same and differs)
            print(
                f"  {run:16s} same seed: {'identical' if same else 'DIFFERENT'} "
                f"(test top-1 {records[0]['test_top1']:.4f} / {records[1]['test_top1']:.4f}, "
                f"loss {records[0]['history'][-1]['loss_total']:.6f} / {records[1]['history'][-1]['loss_total']:.6f}); "
                f"another seed: {'differs' if differs else 'SAME (seed unused?)'}"
            )
        print(f"{len(dict.fromkeys(runs)) - failures} of {len(dict.fromkeys(runs))} methods reproducible")
        raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
