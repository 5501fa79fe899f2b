"""One training job as one process against two data-parallel gloo processes on this CPU (issue 14).

The same spec (ResNet20 on digits, global batch 64) runs with one process of two torch threads and as two
processes of one thread each under torchrun, alternating; prints each run's images/s (mean over its epochs
after the first) and the ratio. On a 2-core machine this measures the cost of the all-reduce and the duplicated
augmentation, not a speed-up: both layouts use the same two cores.

    PYTHONPATH=src python benchmarks/distributed.py --repeats 2 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from afdistill.data import prepare
from afdistill.spec import JobSpec, Schedule


def run(spec_file: Path, data: Path, out: Path, processes: int) -> float:
    threads = "2" if processes == 1 else "1"
    command = [
        "-m",
        "afdistill",
        "train",
        "--spec",
        str(spec_file),
        "--data",
        str(data),
        "--out",
        str(out),
        "--threads",
        threads,
    ]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *command]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{out.parent / 'mlflow.db'}", OMP_NUM_THREADS=threads)
    subprocess.run([sys.executable, *command], check=True, env=env, capture_output=True)
    history = json.loads((out / "metrics.json").read_text())["history"]
    return statistics.fmean(epoch["images_per_s"] for epoch in history[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        prepare("digits", root / "digits")
        spec = JobSpec(
            kind="student",
            grid="bench",
            dataset="digits",
            arch="resnet20",
            method="vanilla",
            run="vanilla",
            seed=0,
            device="cpu",
            schedule=Schedule(epochs=args.epochs, batch_size=64, lr_decay_epochs=(args.epochs,)),
        )
        spec_file = root / "spec.json"
        spec_file.write_text(spec.to_json())
        rates: dict[int, list[float]] = {1: [], 2: []}
        for repeat in range(args.repeats):
            for processes in (1, 2):
                rates[processes].append(run(spec_file, root / "digits", root / f"job{processes}-{repeat}", processes))
        for processes, values in rates.items():
            print(f"{processes} process(es): {', '.join(f'{v:.0f}' for v in values)} images/s")
        ratios = [two / one for one, two in zip(rates[1], rates[2])]
        print(f"two processes / one process, per round: {', '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
