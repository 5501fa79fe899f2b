"""Overhead of MLflow system-metrics logging on an epoch-like CPU loop (issue 17).

Runs the same fixed amount of work (small matrix products standing in for
training steps) with a JobRun on a fresh sqlite store, system metrics off and
on, alternating, and prints the median wall time and process CPU time (all
threads, so it includes the monitor's sampling thread and its writes; robust
on a shared machine where wall times are noisy) of each and the difference.

    PYTHONPATH=src python benchmarks/tracking_overhead.py --repeats 5 --interval 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from afdistill import tracking


def epoch(steps: int) -> None:
    weights = torch.randn(256, 256)
    batch = torch.randn(64, 256)
    for _ in range(steps):
        batch = torch.tanh(batch @ weights)


def timed_epoch(uri: str, system_metrics: bool, interval: float, steps: int, job: str) -> tuple[float, float]:
    run = tracking.JobRun(
        "overhead", job, {}, {}, job_id=job, uri=uri, system_metrics=system_metrics, system_metrics_interval=interval
    )
    run.start(None)
    started, cpu_started = time.perf_counter(), time.process_time()
    epoch(steps)
    run.log_metrics({"loss_total": 0.0}, step=1)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    run.finish("FINISHED")
    return seconds, cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4000, help="matrix products per epoch")
    parser.add_argument("--interval", type=float, default=1.0, help="system-metrics sampling interval (s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    uri = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    tracking.init("overhead", uri)
    epoch(args.steps // 10)  # warm-up
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for system_metrics in (False, True):
            times[system_metrics].append(
                timed_epoch(uri, system_metrics, args.interval, args.steps, f"{repeat}-{system_metrics}")
            )
    print(f"epoch of {args.steps} steps, {args.repeats} repeats, sampling every {args.interval:g} s, 1 torch thread")
    for index, what in ((0, "wall"), (1, "CPU")):
        off = statistics.median(t[index] for t in times[False])
        on = statistics.median(t[index] for t in times[True])
        print(
            f"{what:4s} s: off median {off:.3f} {[round(t[index], 3) for t in times[False]]}; "
            f"on median {on:.3f} {[round(t[index], 3) for t in times[True]]}; "
            f"overhead {on - off:+.3f} s per epoch ({100 * (on - off) / off:+.1f}%)"
        )


if __name__ == "__main__":
    main()
