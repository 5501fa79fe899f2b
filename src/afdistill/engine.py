"""The training engine: one loop for teachers, students and link-finding runs.

Read it top to bottom in :func:`train`. Everything that decides the result is
in the :class:`~afdistill.spec.JobSpec`; the seed fixes initialisation, data
order and augmentation (each epoch draws from its own generator seeded by
``(seed, epoch)``), so an interrupted job that resumes from its last
checkpoint continues exactly where an uninterrupted one would be.
"""
from __future__ import annotations

import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .data import DeviceData
from .graphs import GraphedStep
from .heap import keep_freed_memory
from .methods import Batch, Context, build_method, dry_run, method_class
from .models import create_model
from .models.fold import fold_batch_norm
from .spec import JobSpec, Runtime

CHECKPOINT = "checkpoint.pt"  # resumable state, rewritten atomically after every epoch
MODEL = "model.pt"  # final weights, {"model": state_dict, ...} like RepDistiller's checkpoints
METRICS = "metrics.json"


class Tracker(Protocol):
    """Where a job reports to (MLflow in the CLI); the engine knows nothing more of it."""

    def start(self, resume_run_id: str | None) -> str | None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def finish(self, status: str) -> None: ...


class NullTracker:
    def start(self, resume_run_id):
        return resume_run_id

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path):
        pass

    def finish(self, status):
        pass


class ResumeError(RuntimeError):
    """A checkpoint that belongs to a different job; nothing is overwritten."""


def pick_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_network(path: str | Path, arch: str, num_classes: int, device: torch.device) -> nn.Module:
    """Load a checkpoint with ``strict=True``: ours, RepDistiller's ``{'model': ...}`` or a bare state dict."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model = create_model(arch, num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RuntimeError(f"{path} does not hold {arch} weights for {num_classes} classes: {error}") from None
    return model.to(device)


@dataclass(frozen=True)
class Resolved:
    """What ``Runtime`` settings mean on this device, for this method."""

    bf16: bool
    channels_last: bool
    compile: str | None
    deterministic: bool = True
    cuda_graphs: bool = False
    keep_freed_memory: bool = False

    def record(self) -> dict[str, Any]:
        return {"precision": "bf16" if self.bf16 else "fp32", "channels_last": self.channels_last,
                "compile": self.compile or "none", "deterministic": self.deterministic,
                "cuda_graphs": self.cuda_graphs, "keep_freed_memory": self.keep_freed_memory}


def resolve_runtime(runtime: Runtime, device: torch.device, method: str = "vanilla") -> Resolved:
    cuda = device.type == "cuda"
    if runtime.precision == "auto":
        if cuda:
            bf16 = torch.cuda.get_device_capability(device)[0] >= 8
        else:
            bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    else:
        bf16 = runtime.precision == "bf16"
    channels_last = True if runtime.channels_last == "auto" else bool(runtime.channels_last)
    graph_safe = method_class(method).cuda_graphs and not method_class(method).needs_input_grad
    if runtime.cuda_graphs is True and not cuda:
        raise ValueError("runtime.cuda_graphs: true needs a CUDA device; use auto or false on CPU")
    if runtime.cuda_graphs is True and not graph_safe:
        raise ValueError(f"runtime.cuda_graphs: method {method!r} cannot run as a CUDA graph; use auto or false")
    graphs = cuda and graph_safe and runtime.cuda_graphs is not False
    # Compiling is opt-in: an eager CUDA step at batch 64 ran 6% slower compiled (AFD resnet56 -> resnet20 on an
    # H100, benchmarks/results/), a replayed graph already removes the launch cost compiling would cut, and
    # compiled networks inside a graph make kernels depend on what the process compiled before.
    mode = "none" if runtime.compile == "auto" else runtime.compile
    # On CUDA the host allocates little per step; on CPU every activation is a fresh heap block.
    keep = not cuda if runtime.keep_freed_memory == "auto" else bool(runtime.keep_freed_memory)
    return Resolved(bf16=bf16, channels_last=channels_last, compile=None if mode == "none" else mode,
                    deterministic=runtime.deterministic, cuda_graphs=graphs, keep_freed_memory=keep)


def set_cuda_determinism(deterministic: bool) -> None:
    """Deterministic CUDA kernels (same seed, same metrics), or cuDNN autotuning (faster, not reproducible).

    cuBLAS reads its workspace setting when it first starts, so this runs
    before the job's first matrix product; an op with no deterministic CUDA
    kernel then raises instead of silently varying.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)


def compiled(model: nn.Module, mode: str | None) -> nn.Module:
    """``torch.compile`` the network, falling back to eager execution if compilation fails."""
    if mode is None:
        return model
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    return torch.compile(model, mode=mode)


def seed_for(seed: int, epoch: int) -> int:
    """Independent, reproducible stream per (seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


@torch.inference_mode()
def evaluate(model: nn.Module, data: DeviceData, split: str = "test", runtime: Resolved | None = None,
             forward: nn.Module | None = None) -> dict[str, float]:
    model.eval()
    forward = model if forward is None else forward
    runtime = runtime or Resolved(bf16=False, channels_last=False, compile=None)
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    correct1 = correct5 = total = 0
    for images, labels in data.eval_batches(split):
        with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=runtime.bf16):
            logits = forward(images.contiguous(memory_format=layout))
        top = logits.topk(min(5, data.num_classes), dim=1).indices
        hits = top.eq(labels.unsqueeze(1))
        correct1 += hits[:, :1].sum()
        correct5 += hits.sum()
        total += len(labels)
    return {"top1": float(correct1) / total, "top5": float(correct5) / total}


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_json(record: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _progress(iterable, total: int, description: str):
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)


@dataclass
class Result:
    record: dict[str, Any]  # what metrics.json holds
    model: nn.Module
    method: nn.Module
    teacher: nn.Module | None
    data: DeviceData


def train(
    spec: JobSpec,
    data_dir: str | Path,
    out_dir: str | Path,
    teacher_checkpoint: str | Path | None = None,
    artifact: Any = None,
    tracker: Tracker | None = None,
    log=print,
) -> Result:
    """Run one job to completion, resuming if ``out_dir`` holds its checkpoint.

    Kinds: ``teacher`` (pretrain with cross-entropy, or evaluate ``spec.checkpoint``),
    ``student`` and ``links`` (distil from the teacher at ``teacher_checkpoint``),
    ``heads`` (train only the method's networks on the frozen teacher, MHGD's
    first stage). ``artifact`` is what the method's pre-stage produced.

    The tracker is started (or re-opened, on resume) here and fed every
    epoch; finishing it is the caller's, who may still log artifacts.
    """
    tracker = tracker or NullTracker()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(spec.device)
    runtime = resolve_runtime(spec.runtime, device, spec.method)
    if device.type == "cuda":
        set_cuda_determinism(runtime.deterministic)
    if runtime.keep_freed_memory:
        keep_freed_memory()
    schedule = spec.schedule
    torch.manual_seed(spec.seed)

    # ---- data, networks, method, optimiser
    data = DeviceData(data_dir, device)
    frozen = spec.kind == "heads"  # the trained network is the teacher itself, frozen
    teacher = None
    if spec.kind == "teacher" and spec.checkpoint:
        model = load_network(spec.checkpoint, spec.arch, data.num_classes, device)
    elif frozen:
        model = load_network(_required(teacher_checkpoint, spec), spec.arch, data.num_classes, device).eval()
        model.requires_grad_(False)
    else:
        model = create_model(spec.arch, data.num_classes).to(device)
    if method_class(spec.method).needs_teacher:
        teacher = load_network(_required(teacher_checkpoint, spec), spec.teacher, data.num_classes, device).eval()
        teacher.requires_grad_(False)
    sample = data.normalize(data.train.images[:2])
    context = Context(
        student=model, teacher=teacher, student_sample=dry_run(model, sample),
        teacher_sample=dry_run(teacher, sample) if teacher is not None else None,
        num_classes=data.num_classes, train_labels=data.train.labels, batch_size=schedule.batch_size,
        seed=spec.seed, artifact=artifact,
    )
    method = build_method(spec.method, spec.method_params, context).to(device)
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    student_forward = compiled(model, runtime.compile)
    teacher_forward = None
    if teacher is not None:
        teacher.to(memory_format=layout)
        # Frozen and in eval mode: its BatchNorms fold into the convolutions (same results up to rounding).
        teacher_forward = compiled(fold_batch_norm(teacher).to(memory_format=layout), runtime.compile)
    trainable = [p for p in model.parameters() if p.requires_grad] + list(method.trainable_parameters())
    optimizer = torch.optim.SGD(trainable, lr=schedule.lr, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay, nesterov=schedule.nesterov)

    # ---- resume
    history: list[dict[str, float]] = []
    summaries: list[dict[str, Any]] = []
    run_id = None
    start_epoch = 1
    checkpoint_path = out_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state["spec"] != spec.to_dict():
            changed = sorted(k for k in spec.to_dict() if state["spec"].get(k) != spec.to_dict()[k])
            raise ResumeError(
                f"{checkpoint_path} was written by a job with different {', '.join(changed)}; "
                f"remove it to start this job from scratch"
            )
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        history, summaries, run_id = state["history"], state["summaries"], state["run_id"]
        start_epoch = state["epoch"] + 1
        log(f"[{spec.title}] resuming after epoch {state['epoch']} from {checkpoint_path}")
    run_id = tracker.start(run_id)
    log(f"[{spec.title}] on {device.type}: " + ", ".join(f"{k} {v}" for k, v in runtime.record().items()))
    # No cast cache: inside a CUDA graph it would hold casts of the previous step's weights.
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=runtime.bf16,
                       cache_enabled=False)

    def step(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor):
        """One optimisation step on a batch; returns the weighted loss terms and the student's logits."""
        if method.needs_input_grad:
            images.requires_grad_(True)
        teacher_out = None
        with autocast():
            if teacher is not None:
                with torch.inference_mode():
                    teacher_out = teacher_forward(images, with_features=True)
            with torch.no_grad() if frozen else nullcontext():
                student_out = student_forward(images, with_features=True)
        if runtime.bf16:  # the networks ran in bfloat16; every loss is computed in fp32
            student_out = student_out.float()
            teacher_out = teacher_out.float() if teacher_out is not None else None
        batch = Batch(images, labels, indices)
        terms = method(student_out, teacher_out, batch)
        optimizer.zero_grad(set_to_none=True)
        method.backward(terms)
        optimizer.step()
        method.after_step(batch, model, teacher_out, optimizer)
        # Detached, so that nothing keeps this step's autograd graph alive into the next one.
        return {name: value.detach() for name, value in terms.items()}, student_out.logits.detach()

    run_step = GraphedStep(step, optimizer) if runtime.cuda_graphs else step

    # ---- the loop
    batches_per_epoch = data.num_train_batches(schedule.batch_size)
    for epoch in range(start_epoch, schedule.epochs + 1):
        lr = schedule.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train(not frozen)
        method.train()
        method.begin_epoch(epoch)
        generator = torch.Generator(device=device).manual_seed(seed_for(spec.seed, epoch))
        sums: dict[str, torch.Tensor] = {}
        correct1 = correct5 = torch.zeros((), device=device)
        seen = 0
        started = time.perf_counter()
        batches = data.train_batches(schedule.batch_size, generator)
        for images, labels, indices in _progress(batches, batches_per_epoch, f"{spec.title} epoch {epoch}"):
            terms, logits = run_step(images.contiguous(memory_format=layout), labels, indices)
            with torch.no_grad():  # running sums stay on the device: no sync per step
                n = len(labels)
                for name, value in {"total": sum(terms.values()), **terms}.items():
                    sums[name] = sums.get(name, 0) + value * n
                top = logits.topk(min(5, data.num_classes), dim=1).indices.eq(labels.unsqueeze(1))
                correct1 = correct1 + top[:, :1].sum()
                correct5 = correct5 + top.sum()
                seen += n
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - started
        test = evaluate(model, data, runtime=runtime, forward=student_forward)
        metrics = {f"loss_{name}": float(total) / seen for name, total in sums.items()}
        metrics.update({
            "train_top1": float(correct1) / seen, "train_top5": float(correct5) / seen,
            "test_top1": test["top1"], "test_top5": test["top5"],
            "lr": lr, "images_per_s": seen / train_seconds, "epoch_seconds": train_seconds,
        })
        history.append(metrics)
        summary = method.epoch_summary()
        summaries.append({k: v.tolist() if torch.is_tensor(v) else v for k, v in summary.items()})
        tracker.log_metrics(metrics, step=epoch)
        log(f"[{spec.title}] epoch {epoch}/{schedule.epochs} loss {metrics['loss_total']:.4f} "
            f"train {metrics['train_top1']:.4f} test {test['top1']:.4f} ({metrics['images_per_s']:.0f} img/s)")
        _atomic_save(
            {"spec": spec.to_dict(), "epoch": epoch, "model": model.state_dict(), "method": method.state_dict(),
             "optimizer": optimizer.state_dict(), "history": history, "summaries": summaries, "run_id": run_id},
            checkpoint_path,
        )

    final = ({"top1": history[-1]["test_top1"], "top5": history[-1]["test_top5"]} if history
             else evaluate(model, data, runtime=runtime))
    record = {
        "spec": spec.to_dict(),
        "run_id": run_id,
        "test_top1": final["top1"],
        "test_top5": final["top5"],
        "epochs": schedule.epochs,
        "device": device.type,
        "runtime": runtime.record(),
        "history": history,
        "summaries": summaries,
    }
    if teacher is not None:
        record["teacher_test_top1"] = evaluate(teacher, data, runtime=runtime)["top1"]
    _atomic_save({"model": model.state_dict(), "method": method.state_dict(), "arch": spec.arch,
                  "num_classes": data.num_classes, "spec": spec.to_dict()}, out_dir / MODEL)
    _atomic_write_json(record, out_dir / METRICS)
    tracker.log_metrics({"final_test_top1": final["top1"], "final_test_top5": final["top5"]}, step=schedule.epochs)
    checkpoint_path.unlink(missing_ok=True)  # the job is complete; model.pt and metrics.json hold its result
    return Result(record=record, model=model, method=method, teacher=teacher, data=data)


def _required(path: str | Path | None, spec: JobSpec) -> str | Path:
    if path is None:
        raise ValueError(f"{spec.title}: method {spec.method!r} needs a teacher checkpoint")
    return path
