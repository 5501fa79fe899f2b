"""Runtime options: what ``auto`` resolves to, clear refusals, and (on a CUDA machine) CUDA graphs that change no
result.

The CUDA tests are skipped where torch sees no GPU (CI); run them on one with
``pytest tests/test_runtime.py``.
"""

import subprocess
import sys

import pytest
import torch

from afdistill.engine import resolve_runtime, train
from afdistill.spec import JobSpec, Runtime, Schedule

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_runs_eagerly_on_cpu_and_forcing_cuda_graphs_is_refused():
    cpu = torch.device("cpu")
    resolved = resolve_runtime(Runtime(), cpu, "afd")
    assert not resolved.cuda_graphs and resolved.compile is None
    with pytest.raises(ValueError, match="runtime.cuda_graphs: true needs a CUDA device"):
        resolve_runtime(Runtime(cuda_graphs=True), cpu, "afd")
    assert resolved.keep_freed_memory
    assert not resolve_runtime(Runtime(keep_freed_memory=False), cpu, "afd").keep_freed_memory


# Steps that each allocate and touch nine 4 MiB feature maps and free them, as a training step does;
# minor page faults counted in a fresh process, first with glibc's initial mmap threshold (128 KiB, set
# explicitly: glibc's own adaptive threshold depends on the process's history), then after
# afdistill.heap.keep_freed_memory.
_FAULTS = """
import ctypes, resource, torch
from afdistill.heap import keep_freed_memory

def faults(steps=10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        maps = [torch.empty(2**20).fill_(1.0) for _ in range(9)]
        del maps
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
if mallopt is None or not mallopt(-3, 128 * 1024):
    print("False 0 0")
else:
    trimmed = faults()
    applied = keep_freed_memory()
    faults(2)
    print(applied, trimmed, faults())
"""


def test_keeping_freed_memory_stops_page_faults_on_every_step():
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True)
    applied, trimmed, kept = out.stdout.split()
    if applied != "True":
        pytest.skip("the C library has no glibc mallopt")
    # Each 4 MiB map in its own fresh mapping: about 1024 faults per map, every step.
    assert int(trimmed) > 9 * 1024 * 5
    assert int(kept) < int(trimmed) / 10, (trimmed, kept)


@cuda
def test_auto_graphs_the_step_of_methods_that_allow_it():
    gpu = torch.device("cuda")
    assert resolve_runtime(Runtime(), gpu, "afd").cuda_graphs
    assert not resolve_runtime(Runtime(), gpu, "crd").cuda_graphs  # draws random negatives each step
    assert not resolve_runtime(Runtime(), gpu, "at_grad").cuda_graphs
    assert resolve_runtime(Runtime(), gpu, "afd").compile is None  # the graph already removes launch costs
    assert resolve_runtime(Runtime(), gpu, "crd").compile is None  # compiling is opt-in
    assert resolve_runtime(Runtime(compile="default"), gpu, "crd").compile == "default"
    with pytest.raises(ValueError, match="method 'l2t' cannot run as a CUDA graph"):
        resolve_runtime(Runtime(cuda_graphs=True), gpu, "l2t")


def _spec(method, cuda_graphs, seed=0, **changes):
    # 400 images at batch 48: eight full batches and a partial one per epoch; the lr decays at epoch 3.
    fields = dict(
        kind="student",
        grid="test",
        dataset="digits",
        arch="resnet8",
        teacher="resnet14",
        method=method,
        run=method,
        seed=seed,
        device="cuda",
        method_params={},
        schedule=Schedule(epochs=3, batch_size=48, lr=0.05, lr_decay_epochs=(3,)),
        runtime=Runtime(cuda_graphs=cuda_graphs, compile="none"),
    )
    fields.update(changes)
    return JobSpec(**fields)


def _metrics(record):
    return [
        {k: v for k, v in epoch.items() if k not in ("images_per_s", "epoch_seconds")} for epoch in record["history"]
    ]


@cuda
@pytest.mark.parametrize("method", ["kd", "afd"])
def test_a_graphed_step_trains_exactly_like_the_eager_one(small_data, tmp_path, method):
    def quiet(*a):
        return None

    teacher = JobSpec(
        kind="teacher",
        grid="test",
        dataset="digits",
        arch="resnet14",
        method="vanilla",
        run="teacher",
        seed=0,
        device="cuda",
        schedule=Schedule(epochs=2, batch_size=48, lr=0.05, lr_decay_epochs=()),
    )
    train(teacher, small_data, tmp_path / "teacher", log=quiet)
    checkpoint = tmp_path / "teacher" / "model.pt"
    graphed = train(_spec(method, "auto"), small_data, tmp_path / "graphed", checkpoint, log=quiet)
    assert graphed.record["runtime"]["cuda_graphs"]
    again = train(_spec(method, "auto"), small_data, tmp_path / "again", checkpoint, log=quiet)
    eager = train(_spec(method, False), small_data, tmp_path / "eager", checkpoint, log=quiet)
    assert not eager.record["runtime"]["cuda_graphs"]
    assert _metrics(graphed.record) == _metrics(again.record)
    for ours, theirs in zip(_metrics(graphed.record), _metrics(eager.record)):
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-5)
    if method == "afd":  # the epoch's attention, accumulated inside the graph
        assert torch.allclose(
            torch.tensor(graphed.record["summaries"][-1]["attention"]),
            torch.tensor(eager.record["summaries"][-1]["attention"]),
            atol=1e-5,
        )
