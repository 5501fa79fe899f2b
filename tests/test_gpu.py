"""Concurrent jobs on one machine each get a different GPU (lock files; the GPU ids are given, not probed)."""

import subprocess
import sys

from conftest import tool_env

CLAIM = """
import os, sys, time
from afdistill.gpu import claim
try:
    gpu = claim(wait_seconds=float(sys.argv[1]), log=lambda *a: None, count=int(sys.argv[3]))
except RuntimeError as error:
    print("BUSY", error, flush=True); sys.exit(3)
print("GPU", gpu, os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
time.sleep(float(sys.argv[2]))
"""


def _start(env, wait, hold, count=1):
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(wait), str(hold), str(count)], env=env, stdout=subprocess.PIPE, text=True
    )


def test_each_concurrent_job_locks_its_own_gpu(tmp_path):
    env = tool_env()
    env.update(AFDISTILL_GPUS="0,1", AFDISTILL_GPU_LOCK_DIR=str(tmp_path))
    holders = [_start(env, 5, 4) for _ in range(2)]
    lines = [p.stdout.readline().split() for p in holders]
    assert sorted(line[1] for line in lines) == ["0", "1"]
    assert all(line[1] == line[2] for line in lines)  # exported as CUDA_VISIBLE_DEVICES

    third = _start(env, 0.5, 0)
    assert third.wait(timeout=30) == 3 and third.stdout.read().startswith("BUSY")

    for p in holders:
        p.wait(timeout=30)
    later = _start(env, 5, 0)
    assert later.stdout.readline().split()[1] in ("0", "1")
    later.wait(timeout=30)


def test_a_data_parallel_job_takes_all_its_gpus_at_once(tmp_path):
    env = tool_env()
    env.update(AFDISTILL_GPUS="0,1,2", AFDISTILL_GPU_LOCK_DIR=str(tmp_path))
    single = _start(env, 5, 4)
    assert single.stdout.readline().split()[1] == "0"
    pair = _start(env, 5, 4, count=2)
    assert pair.stdout.readline().split()[1:] == ["1,2", "1,2"]
    # One GPU is free, not two: a second pair waits holding nothing, then gives up.
    second = _start(env, 0.5, 0, count=2)
    assert second.wait(timeout=30) == 3 and "no 2 free GPUs" in second.stdout.read()
    too_many = _start(env, 0.5, 0, count=4)
    assert too_many.wait(timeout=30) == 3 and "cannot run on this machine's 3" in too_many.stdout.read()
    for p in (single, pair):
        p.wait(timeout=30)


def test_small_jobs_can_share_a_gpu_breadth_first(tmp_path):
    env = tool_env()
    env.update(AFDISTILL_GPUS="0,1", AFDISTILL_GPU_LOCK_DIR=str(tmp_path), AFDISTILL_JOBS_PER_GPU="2")
    holders, gpus = [], []
    for _ in range(4):  # one after the other, so the order in which slots fill is visible
        holders.append(_start(env, 5, 4))
        gpus.append(holders[-1].stdout.readline().split()[1])
    assert gpus == ["0", "1", "0", "1"]
    fifth = _start(env, 0.5, 0)
    assert fifth.wait(timeout=30) == 3
    for p in holders:
        p.wait(timeout=30)


def test_a_scheduler_assigned_gpu_is_left_alone(tmp_path):
    env = tool_env()
    env.update(AFDISTILL_GPUS="0,1", AFDISTILL_GPU_LOCK_DIR=str(tmp_path), CUDA_VISIBLE_DEVICES="1")
    process = _start(env, 1, 0)
    assert process.stdout.readline().split() == ["GPU", "None", "1"]
    process.wait(timeout=30)
    assert not list(tmp_path.iterdir())
