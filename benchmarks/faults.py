"""Fault suite: run a short grid while killing it at random points, then check nothing was lost or duplicated.

One project runs the grid uninterrupted (the reference). A second runs the
same grid under `snakemake`, which this script kills with SIGKILL (the whole
process group: scheduler and jobs, as a node failure or `scancel` would) at
chosen moments, then restarts, until the grid completes:

  mid-epoch          a random moment while jobs train
  mid-checkpoint     as soon as a checkpoint's temporary file appears
  before-checkpoint  as soon as a job's log shows it started, before any checkpoint
  around-completion  as soon as a new fingerprint marker appears

After a kill, Snakemake refuses to start until its directory lock is removed
(`snakemake --unlock`, as its message says); the script does that.

At the end it checks: every job finished (its marker is there); every job's
final metrics and per-epoch history equal the uninterrupted run's; MLflow
holds exactly one FINISHED run per job and none left RUNNING; no epoch was
logged twice. It prints the rounds, the kills by kind and every mismatch.

    python benchmarks/faults.py --rounds 8 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ["Snakefile", "workflow", "profiles", "params", "src"]
GRID: dict[str, Any] = {
    "grid": "faults",
    "dataset": "digits",
    "device": "cpu",
    "seeds": [0],
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.05, "lr_decay_epochs": [3]},
    "teachers": {"seed": 0, "train": {"epochs": 3}},
    "links": {"seed": 0, "train": {"epochs": 2, "lr_decay_epochs": []}},
    "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
    "methods": {"vanilla": {}, "kd": {}, "crd": {"nce_k": 16}, "afd": {"qk_dim": 16}, "afd_pretrained": {}},
}
MODES = ("mid-epoch", "mid-checkpoint", "before-checkpoint", "around-completion")
VOLATILE = ("images_per_s", "epoch_seconds")


def project(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in PIPELINE:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, path / name)
    (path / "params" / "faults.yaml").write_text(yaml.safe_dump(GRID, sort_keys=False))
    return path


def environment(path: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(path / "src")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def snakemake(path: Path, threads: int) -> subprocess.Popen:
    return subprocess.Popen(
        ["snakemake", "--cores", str(threads), "--configfile", "params/faults.yaml"],
        cwd=path,
        env=environment(path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def markers(path: Path) -> set[Path]:
    return set((path / "results").rglob("fingerprint-*.json")) | set((path / "reports").rglob("fingerprint-*.json"))


def wait_for(path: Path, mode: str, process: subprocess.Popen, rng: random.Random, budget: float) -> bool:
    """Wait for the moment to kill; False if the run ended first."""
    deadline = time.monotonic() + (rng.uniform(2, budget) if mode == "mid-epoch" else budget)
    before = markers(path)
    logs = set((path / "logs").rglob("*.log")) if (path / "logs").exists() else set()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if mode == "mid-checkpoint" and any((path / "results").rglob(".checkpoint.pt.tmp")):
            return True
        if mode == "before-checkpoint" and (path / "logs").exists():
            for log in set((path / "logs").rglob("*.log")) - logs:
                if not (
                    path / Path(*log.relative_to(path / "logs").parts).with_suffix("").with_suffix("") / "checkpoint.pt"
                ).exists():
                    return True
        if mode == "around-completion" and markers(path) - before:
            return True
        time.sleep(0.02)
    return mode == "mid-epoch"


def results(path: Path) -> dict[str, dict]:
    found = {}
    for metrics in (path / "results").rglob("metrics.json"):
        record = json.loads(metrics.read_text())
        history = [{k: v for k, v in epoch.items() if k not in VOLATILE} for epoch in record["history"]]
        found[str(metrics.parent.relative_to(path))] = {"top1": record.get("test_top1"), "history": history}
    return found


def mlflow_problems(path: Path) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(GRID["grid"]) or next(
        (e for e in client.search_experiments() if e.name.endswith(GRID["grid"])), None
    )
    if experiment is None:
        return ["no MLflow experiment for the grid"]
    problems: list[str] = []
    by_job: dict[str, list[str]] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=10_000):
        if run.info.status == "RUNNING":
            problems.append(f"run {run.info.run_id} ({run.info.run_name}) left RUNNING")
        if run.info.status == "FINISHED":
            by_job.setdefault(run.info.run_name, []).append(run.info.run_id)
        for key in ("test_top1", "test/top1"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            if len(steps) != len(set(steps)):
                problems.append(f"run {run.info.run_name}: epochs logged twice in {key}: {sorted(steps)}")
    problems += [f"{name}: {len(ids)} FINISHED runs" for name, ids in by_job.items() if len(ids) > 1]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="kills before the grid is let to finish")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="snakemake --cores")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="afdistill-faults-"))
    reference, faulty = project(work / "reference"), project(work / "faulty")

    started = time.monotonic()
    if snakemake(reference, args.threads).wait() != 0:
        raise SystemExit(f"the uninterrupted run failed; see {reference}/logs")
    print(f"reference run: {time.monotonic() - started:.0f} s, {len(markers(reference))} jobs")

    kills = {mode: 0 for mode in MODES}
    rounds = killed = 0
    while True:
        process = snakemake(faulty, args.threads)
        if killed < args.rounds:
            mode = MODES[killed % len(MODES)] if killed < len(MODES) else rng.choice(MODES)
            if wait_for(faulty, mode, process, rng, budget=60):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                kills[mode] += 1
                rounds += 1
                killed += 1
                print(f"round {rounds}: SIGKILL {mode}, {len(markers(faulty))} jobs done so far")
                continue
        code = process.wait()
        if code == 0:
            break
        rounds += 1
        # A killed Snakemake leaves its directory lock behind; it says to run --unlock, as a person would.
        subprocess.run(
            ["snakemake", "--unlock", "--configfile", "params/faults.yaml"],
            cwd=faulty,
            env=environment(faulty),
            capture_output=True,
        )
        print(f"round {rounds}: snakemake exited {code} (the killed run's lock); unlocked and rerunning")
        if rounds > 2 * args.rounds + 5:
            raise SystemExit(f"the grid did not complete after {rounds} rounds; see {faulty}/logs")

    expected, got = results(reference), results(faulty)
    mismatches = [job for job in expected if expected[job] != got.get(job)]
    relative = lambda path: {m.relative_to(path) for m in markers(path)}  # noqa: E731
    missing = sorted(relative(reference) - relative(faulty))
    problems = mlflow_problems(faulty)
    print(f"rounds: {rounds}; kills: " + ", ".join(f"{mode} {count}" for mode, count in kills.items()))
    print(
        f"jobs: {len(markers(faulty))} of {len(markers(reference))} finished"
        + (f"; missing: {', '.join(map(str, missing))}" if missing else "")
    )
    print(f"final metrics equal to the uninterrupted run: {len(expected) - len(mismatches)} of {len(expected)}")
    for job in mismatches:
        print(f"  mismatch: {job}")
    print(f"MLflow problems: {len(problems)}")
    for problem in problems:
        print(f"  {problem}")
    if not args.keep:
        shutil.rmtree(work)
    else:
        print(f"projects kept in {work}")
    if mismatches or problems or missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
