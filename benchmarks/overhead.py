"""Per-job overhead of a grid that ran: its training processes' wall time minus their training loops, per job.

    python benchmarks/overhead.py PROJECT [--grid params/default.yaml]

Every training job's process prints its wall time last (``process wall time: X s for N job(s)``, start-up
included), in the log its rule keeps under ``logs/``; a pack's one log holds one line for all its students.
A job's training loop is the sum of its epochs' ``epoch_seconds`` in its ``metrics.json`` (in a pack, each
student's share of the pack's loop). The overhead is everything else a job costs: the interpreter and
imports, building networks, evaluation, checkpoints, MLflow. Only the newest log naming each job counts.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

WALL = re.compile(r"^process wall time: ([\d.]+) s for (\d+) job\(s\)$", re.M)
DONE = re.compile(r"^(\S+): done \([0-9a-f]{16}\)$", re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--grid", default="params/default.yaml", help="relative to the project")
    args = parser.parse_args()

    from afdistill.grid import Grid
    from afdistill.jobs import Plan

    plan = Plan(Grid.from_file(args.project / args.grid))
    training = {job.folder for job in plan.jobs if job.spec is not None}
    newest: dict[str, tuple[float, Path]] = {}
    for log in (args.project / "logs").rglob("*.log"):
        for folder in DONE.findall(log.read_text(errors="replace")):
            if folder in training and (folder not in newest or log.stat().st_mtime > newest[folder][0]):
                newest[folder] = (log.stat().st_mtime, log)
    logs = {log for _, log in newest.values()}
    wall = processes = 0.0
    for log in logs:
        found = WALL.findall(log.read_text(errors="replace"))
        if found:
            wall += float(found[-1][0])
            processes += 1
    loops = 0.0
    for folder in newest:
        history = json.loads((args.project / folder / "metrics.json").read_text())["history"]
        loops += sum(epoch["epoch_seconds"] for epoch in history)
    jobs = len(newest)
    print(
        f"{args.project} ({plan.grid.name}): {jobs} training jobs of {len(training)} in {int(processes)} processes; "
        f"wall {wall:.1f} s, training loops {loops:.1f} s, overhead {wall - loops:.1f} s = "
        f"{(wall - loops) / max(jobs, 1):.2f} s per job"
    )


if __name__ == "__main__":
    main()
