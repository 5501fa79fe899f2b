"""Data-parallel training over several processes (one per GPU, or gloo processes on a CPU), under ``torchrun``.

``torchrun --standalone --nproc_per_node=N -m afdistill train ...`` (or the
pipeline, for a grid with ``gpus_per_job: N``) starts N processes; each one
reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from the environment and
joins one process group (NCCL on CUDA, gloo on a CPU).

What each rank does, and why:

* every rank draws the same shuffled, augmented global batch from the same
  per-epoch generator and keeps its own contiguous slice of it
  (:func:`shard`), so a two-process job sees exactly the data, in the same
  order and with the same augmentation, that a one-process job with the same
  global batch sees;
* the student and the method's trainable modules run under torch's
  DistributedDataParallel (:func:`data_parallel`), whose hooks average their
  gradients over the ranks in buckets while the backward pass runs, as
  torchvision's references train: the step is the global batch's mean
  gradient, as in one process (the schedule's learning rate is the global
  batch's). A method that sets its gradients itself instead of one backward
  pass (``Capabilities.sets_gradients``: MHGD's and KD-SVD's clipping) steps
  outside those hooks (``no_sync``), and its gradients are averaged after its
  backward in one flat all-reduce (:func:`average_gradients`);
* BatchNorm normalises each rank's slice with that slice's statistics (as
  DistributedDataParallel does without SyncBatchNorm), and the running
  statistics (not broadcast from rank 0 at every forward pass, as DDP's
  ``broadcast_buffers`` would) are averaged over the ranks at the end of every epoch
  (:func:`average_buffers`), so every rank evaluates, and rank 0 saves, the
  same network. This, and losses that relate the samples of a batch (CRD's
  memory bank sees each rank's slice; RKD, DIST and MLKD's batch terms
  relate the samples of a slice), is why a two-process job is close to, not
  equal to, a one-process job;
* rank 0 alone writes checkpoints, ``model.pt``, ``metrics.json``, the log
  lines and the MLflow run; the others wait for it at the end of each epoch,
  so after any rank dies every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import functools
import os
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


@functools.lru_cache(maxsize=1)
def from_environment() -> Group:
    """This process's rank, world size and local rank, as torchrun sets them (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``): read here, once per process; a process not started by torchrun is rank 0 of 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Group()
    return Group(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def start(device_type: str) -> Group:
    """Join the process group torchrun describes in the environment (a one-process job joins nothing)."""
    group = from_environment()
    if group.active and not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return group


def device_for(group: Group, device: torch.device) -> torch.device:
    """Each rank's own GPU (the one of its local rank); a CPU stays the CPU."""
    if device.type == "cuda" and group.active:
        torch.cuda.set_device(group.local_rank)
        return torch.device("cuda", group.local_rank)
    return device


def shard(group: Group, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's contiguous slice of a global batch (sizes differ by at most one in a last, short batch)."""
    if not group.active:
        return tensors
    size = len(tensors[0])
    start_at = size * group.rank // group.world_size
    stop_at = size * (group.rank + 1) // group.world_size
    return tuple(tensor[start_at:stop_at] for tensor in tensors)


def data_parallel(group: Group, module: nn.Module | None, device: torch.device, every_step: bool = True):
    """``module`` under DistributedDataParallel in a data-parallel job (as it is otherwise, or with nothing to
    train). ``every_step``: every parameter gets a gradient at every step (the student); a method's modules may
    sit some steps out, which DDP then looks for. BatchNorm buffers are left to :func:`average_buffers`."""
    if not group.active or module is None or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
        find_unused_parameters=not every_step,
    )


def unwrapped(module):
    """The network inside a DDP wrapper (anything else as it is)."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


def no_sync(*modules) -> ExitStack:
    """DDP's hooks off for a step whose gradients are set outside a backward pass (then :func:`average_gradients`)."""
    stack = ExitStack()
    for module in modules:
        if hasattr(module, "no_sync"):
            stack.enter_context(module.no_sync())
    return stack


def average_gradients(group: Group, parameters: list[nn.Parameter]) -> None:
    """Every rank's gradients replaced by their mean over the ranks (one flat all-reduce)."""
    if not group.active:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= group.world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def average_buffers(group: Group, module: nn.Module | None) -> None:
    """BatchNorm running statistics averaged over the ranks (counters are equal already)."""
    if not group.active or module is None:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= group.world_size


def total(group: Group, value: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over the ranks."""
    if group.active:
        value = value.clone()
        dist.all_reduce(value)
    return value


def barrier(group: Group) -> None:
    if group.active:
        dist.barrier()


def stop(group: Group) -> None:
    if group.active and dist.is_initialized():
        dist.destroy_process_group()
