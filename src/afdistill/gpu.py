"""A GPU for each job, chosen by lock files, since Snakemake assigns none.

Snakemake counts ``gpu=1`` resources but never sets ``CUDA_VISIBLE_DEVICES``
when it runs jobs locally. Each job takes a non-blocking ``flock`` on a free
``afdistill-gpu<N>-slot<S>.lock`` and keeps it for its whole life; the kernel
drops the lock when the process ends, however it ends. Each GPU has
``jobs_per_gpu`` slots (``AFDISTILL_JOBS_PER_GPU``, default 1): small runs
such as ResNet20 at batch 64 leave most of a modern GPU idle, so several can
share one. Slots fill breadth-first, one job per GPU before a second on any.
This must run before torch initialises CUDA. Under SLURM (or whenever
``CUDA_VISIBLE_DEVICES`` is already set) nothing is done.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TextIO

_held: list[TextIO] = []  # open lock files: closing them would release the GPU


def visible_gpus() -> list[str]:
    """GPU ids on this machine, without initialising CUDA (``AFDISTILL_GPUS`` overrides: "0,1")."""
    override = os.environ.get("AFDISTILL_GPUS")
    if override is not None:
        return [g for g in override.split(",") if g.strip()]
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return [str(i) for i in range(len(list(proc.iterdir())))]
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]
    return []


def jobs_per_gpu() -> int:
    value = os.environ.get("AFDISTILL_JOBS_PER_GPU", "1")
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"AFDISTILL_JOBS_PER_GPU must be a positive integer, got {value!r}")
    return int(value)


def claim(
    lock_dir: str | None = None, wait_seconds: float = 3600.0, log=print, per_gpu: int | None = None, count: int = 1
) -> str | None:
    """Lock a free GPU slot (``count`` whole GPUs for a data-parallel job), export the GPUs' ids in
    ``CUDA_VISIBLE_DEVICES`` and return them ("0" or "2,3").

    ``per_gpu``: jobs sharing one GPU (the grid's ``jobs_per_gpu``; default: the environment's).
    Several GPUs are taken all at once or not at all, so two jobs never each hold a part of what both wait for.

    Returns None when there is no GPU or a scheduler already chose one.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    gpus = visible_gpus()
    if not gpus:
        return None
    if count > 1:
        return _claim_several(gpus, count, lock_dir, wait_seconds, log)
    slots = [(gpu, slot) for slot in range(per_gpu or jobs_per_gpu()) for gpu in gpus]
    directory = Path(lock_dir or os.environ.get("AFDISTILL_GPU_LOCK_DIR", tempfile.gettempdir()))
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        for gpu, slot in slots:
            handle = open(directory / f"afdistill-gpu{gpu}-slot{slot}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _hold(handle)
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            return gpu
        if time.monotonic() > deadline:
            raise RuntimeError(f"no free GPU among {gpus} after {wait_seconds:.0f} s (locks in {directory})")
        if not announced:
            log(f"all GPUs {gpus} are busy; waiting for one to free up")
            announced = True
        time.sleep(2.0)


def _hold(handle) -> None:
    """Keep a locked file open for the process's life, with the holder's PID in it (for people)."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held.append(handle)


def _claim_several(gpus: list[str], count: int, lock_dir: str | None, wait_seconds: float, log) -> str:
    if count > len(gpus):
        raise RuntimeError(f"a job of {count} GPUs cannot run on this machine's {len(gpus)} ({', '.join(gpus)})")
    directory = Path(lock_dir or os.environ.get("AFDISTILL_GPU_LOCK_DIR", tempfile.gettempdir()))
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        taken = []
        for gpu in gpus:
            handle = open(directory / f"afdistill-gpu{gpu}-slot0.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            taken.append((gpu, handle))
            if len(taken) == count:
                for _, held in taken:
                    _hold(held)
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu for gpu, _ in taken)
                return os.environ["CUDA_VISIBLE_DEVICES"]
        for _, handle in taken:  # not enough free: give back what was taken, try again later
            handle.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {count} free GPUs among {gpus} after {wait_seconds:.0f} s (locks in {directory})")
        if not announced:
            log(f"waiting for {count} of the GPUs {gpus} to be free")
            announced = True
        time.sleep(2.0)
