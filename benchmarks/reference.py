"""A training loop shaped like the official AFD/RepDistiller code, for speed and accuracy comparisons.

What it mirrors (clovaai/attention-feature-distillation ``main.py``/``utils.py``):
a ``DataLoader`` over a dataset that turns each image into a PIL image and
applies ``RandomCrop(size, padding) + RandomHorizontalFlip + ToTensor +
Normalize`` one sample at a time, fp32, eager execution, contiguous memory,
the teacher's forward pass under ``no_grad`` with its features detached, and
the AFD distance computed in a Python loop over teacher candidates with the
student maps pooled by ``AdaptiveAvgPool2d`` per teacher resolution, and
cuDNN autotuning on (``cudnn.benchmark``). The
attention network's parameters are the package's, but its forward pass is
computed as the official code computes it (every key mapped to one key per
teacher candidate, then contracted with the queries), so only the loop
structure differs from the engine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from afdistill.methods import Batch, Context, build_method, dry_run, kd_loss
from afdistill.methods.base import select
from afdistill.models import create_model


class PreparedImages(Dataset):
    """A prepared split (``<dir>/<split>.npz``) served like torchvision's CIFAR classes: PIL image, then transform."""

    def __init__(self, data_dir: str | Path, split: str, train: bool):
        data_dir = Path(data_dir)
        meta = json.loads((data_dir / "meta.json").read_text())
        with np.load(data_dir / f"{split}.npz") as arrays:
            self.images, self.labels = arrays["images"], arrays["labels"]
        steps = []
        if train:
            padding_mode = "constant" if meta.get("pad_mode", "zeros") == "zeros" else "reflect"
            steps.append(transforms.RandomCrop(meta["image_size"], padding=meta["pad"], padding_mode=padding_mode))
            if meta["flip"]:
                steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), transforms.Normalize(meta["mean"], meta["std"])]
        self.transform = transforms.Compose(steps)
        self.num_classes = meta["num_classes"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class LoopAFDDistance(nn.Module):
    """The official code's distance: one teacher candidate at a time, student maps pooled per teacher size."""

    def __init__(self, teacher_sizes: list[tuple[int, ...]]):
        super().__init__()
        self.unique = list(dict.fromkeys(teacher_sizes))
        self.index = [self.unique.index(size) for size in teacher_sizes]
        self.samplers = nn.ModuleList(nn.AdaptiveAvgPool2d(size) for size in self.unique)

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], alpha: torch.Tensor) -> torch.Tensor:
        batch = student[0].shape[0]
        values_s = [
            F.normalize(
                torch.stack([sampler(f.pow(2).mean(1, keepdim=True)).view(batch, -1) for f in student], dim=1), dim=2
            )
            for sampler in self.samplers
        ]
        values_t = [F.normalize(f.pow(2).mean(1).view(batch, -1), dim=1) for f in teacher]
        losses = []
        for t, value_t in enumerate(values_t):
            diff = (values_s[self.index[t]] - value_t.unsqueeze(1)).pow(2).mean(2)
            losses.append((diff * alpha[:, t]).sum(1).mean())
        return cast(torch.Tensor, sum(losses))  # a tensor: there is at least one teacher candidate


def official_attention(attention, student_means: list[torch.Tensor], teacher_means: list[torch.Tensor]) -> torch.Tensor:
    """alpha, B x T x S, from the package's ``AFDAttention`` parameters, with the B x S x T x d mapped keys."""
    batch, n_student, n_teacher, dim = (
        student_means[0].shape[0],
        attention.n_student,
        attention.n_teacher,
        attention.qk_dim,
    )
    query = torch.stack([layer(mean) for layer, mean in zip(attention.query, teacher_means)], dim=1)
    key = torch.stack([F.relu(layer(mean)) for layer, mean in zip(attention.key, student_means)], dim=1)
    mapped = attention.bilinear(key.reshape(batch * n_student, dim)).view(batch, n_student, n_teacher, dim)
    logits = torch.einsum("bstd,btd->bts", mapped, query) + attention.p_t @ attention.p_s.t()
    return F.softmax(logits / dim**0.5, dim=2)


class ReferenceTrainer:
    """Teacher, student, method and SGD, trained the way the reference code trains them."""

    def __init__(
        self,
        data_dir,
        teacher_checkpoint,
        teacher: str,
        student: str,
        method: str,
        params: dict,
        batch_size: int,
        lr: float,
        device: torch.device,
        seed: int,
    ):
        torch.manual_seed(seed)
        self.device = device
        if device.type == "cuda":
            # As the official main.py: cuDNN autotuning, no deterministic-algorithm checks (an engine job
            # earlier in the same process may have switched them on; AdaptiveAvgPool2d's backward has none).
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.deterministic = False
            torch.use_deterministic_algorithms(False)
        self.train_set = PreparedImages(data_dir, "train", train=True)
        self.test_set = PreparedImages(data_dir, "test", train=False)
        generator = torch.Generator().manual_seed(seed)
        self.loader = DataLoader(self.train_set, batch_size=batch_size, shuffle=True, generator=generator)
        classes = self.train_set.num_classes
        self.teacher = create_model(teacher, classes)
        state = torch.load(teacher_checkpoint, map_location="cpu", weights_only=False)
        self.teacher.load_state_dict(state.get("model", state))
        self.teacher.to(device).eval()
        self.student = create_model(student, classes).to(device)
        sample = torch.stack([self.train_set[i][0] for i in range(2)]).to(device)
        context = Context(
            self.student,
            self.teacher,
            dry_run(self.student, sample),
            dry_run(self.teacher, sample),
            classes,
            torch.as_tensor(self.train_set.labels, device=device),
            batch_size,
            seed=seed,
        )
        self.method = build_method(method, params, context).to(device)
        self.loop_distance = None
        if method == "afd":
            assert context.teacher_sample is not None  # the teacher's, taken above
            # ignore: afd_candidates, a list every network sets, is a dynamic nn.Module attribute (Tensor | Module)
            candidates = select(context.teacher_sample.blocks, self.teacher.afd_candidates)  # type: ignore[arg-type]
            sizes = [tuple(f.shape[2:]) for f in candidates]
            self.loop_distance = LoopAFDDistance(sizes).to(device)
        self.optimizer = torch.optim.SGD(
            list(self.student.parameters()) + list(self.method.trainable_parameters()),
            lr=lr,
            momentum=0.9,
            weight_decay=5e-4,
        )

    def loss(self, images, labels, indices):
        with torch.no_grad():
            teacher = self.teacher(images, with_features=True)
        student = self.student(images, with_features=True)
        if self.loop_distance is None:
            return sum(self.method(student, teacher, Batch(images, labels, indices)).values())
        method = self.method
        s = select(student.blocks, method.student_candidates)
        t = [f.detach() for f in select(teacher.blocks, method.teacher_candidates)]
        alpha = official_attention(method.attention, [f.mean((2, 3)) for f in s], [f.mean((2, 3)) for f in t])
        return (
            F.cross_entropy(student.logits, labels)
            + method.kd.alpha * kd_loss(student.logits, teacher.logits, method.kd.temperature)
            + method.beta * self.loop_distance(s, t, alpha)
        )

    def train_epoch(self, epoch: int, lr: float, max_steps: int | None = None) -> tuple[int, float]:
        """Returns (images, seconds) of the epoch (or of its first ``max_steps`` steps)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.student.train()
        self.method.train()
        self.method.begin_epoch(epoch)
        seen, started = 0, time.perf_counter()
        for step, (images, labels) in enumerate(self.loader):
            if max_steps is not None and step >= max_steps:
                break
            images, labels = images.to(self.device), labels.to(self.device)
            indices = torch.arange(seen, seen + len(labels), device=self.device)
            loss = self.loss(images, labels, indices)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            seen += len(labels)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return seen, time.perf_counter() - started

    @torch.no_grad()
    def test_accuracy(self) -> float:
        self.student.eval()
        correct = total = 0
        for images, labels in DataLoader(self.test_set, batch_size=256):
            predictions = self.student(images.to(self.device)).argmax(1).cpu()
            correct += int((predictions == labels).sum())
            total += len(labels)
        return correct / total
