"""L2T on Table 1's resnet56 -> resnet20 pair at batch 64: is it stable with teachers as the pipeline trains them?

The teacher is trained by the engine (the teacher job's code path) on a real dataset at CIFAR's shape (scikit-learn's
digits, upsampled to 32x32 RGB: the only image set this machine has), and snapshotted after several epochs of that
run. For each snapshot, and for an untrained teacher (eval-mode BatchNorm is then the identity), the L2T student of
Table 1 (beta 0.5, two virtual steps, KD alpha 0.9, T 4; lr 0.05, batch 64) trains through the engine, and the script
prints the scale of the teacher's stage maps, the L2T term of the first steps, and whether the run stays finite. With
``--trace``, the first operation of the student whose output is not finite is named (forward hooks).

    PYTHONPATH=src python benchmarks/l2t_stability.py --teacher-epochs 12 --teacher-decay 8 11 --snapshots 1 4 8 12
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from afdistill.data import prepare
from afdistill.engine import CHECKPOINT, TrainingDiverged, load_network, train
from afdistill.models import create_model
from afdistill.spec import JobSpec, Schedule


def cifar_shaped_digits(out: Path) -> Path:
    """digits at 32x32 (bilinear), in the prepared on-disk format, with CIFAR's padding."""
    source = out / "digits16"
    prepare("digits", source)
    target = out / "digits32"
    target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        with np.load(source / f"{split}.npz") as arrays:
            images = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float()
            large = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
            pixels = large.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            np.savez(target / f"{split}.npz", images=pixels, labels=arrays["labels"])
    meta = json.loads((source / "meta.json").read_text())
    meta.update(image_size=32, pad=4, source=meta["source"] + ", upsampled to 32x32")
    (target / "meta.json").write_text(json.dumps(meta))
    return target


def train_teacher(data: Path, out: Path, epochs: int, snapshots: list[int], decay: list[int]) -> dict[int, Path]:
    """The engine's teacher job (Table 1's schedule, shortened), with its weights kept after the listed epochs."""
    spec = JobSpec(
        kind="teacher",
        grid="l2t-stability",
        dataset="digits",
        arch="resnet56",
        method="vanilla",
        run="teacher",
        seed=0,
        device="cpu",
        schedule=Schedule(epochs=epochs, batch_size=64, lr=0.05, lr_decay_epochs=tuple(decay)),
    )
    folder = out / "teacher"
    kept: dict[int, Path] = {}

    def log(line: str) -> None:  # the checkpoint on disk when epoch k is logged holds epoch k - 1
        if "] epoch " in line:
            epoch = int(line.split("] epoch ")[1].split("/")[0]) - 1
            if epoch in snapshots and (folder / CHECKPOINT).exists():
                path = out / f"teacher_epoch{epoch}.pt"
                torch.save(torch.load(folder / CHECKPOINT, weights_only=True)["model"], path)
                kept[epoch] = path
            print(line, flush=True)

    train(spec, data, folder, log=log)
    if epochs in snapshots:
        kept[epochs] = folder / "model.pt"
    return kept


def stage_scale(teacher_path: Path, data: Path) -> float:
    """The largest absolute value in the teacher's stage maps on one training batch (eval mode)."""
    with np.load(data / "train.npz") as arrays:
        images = torch.from_numpy(arrays["images"][:64]).permute(0, 3, 1, 2).float() / 255
    meta = json.loads((data / "meta.json").read_text())
    images = (images - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    teacher = load_network(teacher_path, "resnet56", 10, torch.device("cpu")).eval()
    with torch.no_grad():
        return max(float(s.abs().max()) for s in teacher(images, with_features=True).stages)


def first_non_finite(student: torch.nn.Module):
    """Forward hooks that raise at the first module whose output is not finite, naming it."""

    def hook(module, inputs, output, name=""):
        tensors = (
            [output]
            if torch.is_tensor(output)
            else [o for o in output if torch.is_tensor(o)]
            if isinstance(output, (tuple, list))
            else []
        )
        if any(not torch.isfinite(t).all() for t in tensors):
            finite_in = all(torch.isfinite(t).all() for t in inputs if torch.is_tensor(t))
            raise FloatingPointError(
                f"first non-finite output: {name} ({type(module).__name__}), inputs "
                f"{'finite' if finite_in else 'not finite'}"
            )

    return [
        m.register_forward_hook(lambda m, i, o, n=name: hook(m, i, o, n))
        for name, m in student.named_modules()
        if not list(m.children())
    ]


def l2t_student(data: Path, out: Path, teacher_path: Path, steps: int, trace: bool) -> str:
    """Table 1's L2T job through the engine for ``steps`` steps (a 1-epoch schedule cut short); returns a verdict."""
    from afdistill.methods import l2t

    spec = JobSpec(
        kind="student",
        grid="l2t-stability",
        dataset="digits",
        arch="resnet20",
        method="l2t",
        run="l2t",
        seed=0,
        device="cpu",
        teacher="resnet56",
        schedule=Schedule(epochs=1, batch_size=64, lr=0.05, lr_decay_epochs=()),
        method_params={"beta": 0.5, "inner_steps": 2, "alpha": 0.9, "temperature": 4},
    )
    terms: list[float] = []
    weights: list[float] = []
    original = l2t.L2T.after_step

    def after_step(self, batch, student, teacher, optimizer):
        if len(terms) >= steps:
            raise StopIteration
        handles = first_non_finite(student) if trace else []
        try:
            original(self, batch, student, teacher, optimizer)
        finally:
            for handle in handles:
                handle.remove()
        weights.append(max(float(p.detach().abs().max()) for p in student.parameters()))
        with torch.no_grad():
            terms.append(
                float(self.matching(student(batch.images, with_features=True).stages, teacher.stages)) * self.beta
            )

    l2t.L2T.after_step = after_step  # type: ignore[method-assign]  # patched to watch each step; restored below
    folder = out / f"student_{teacher_path.stem}"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        train(spec, data, folder, teacher_checkpoint=teacher_path, log=lambda *a: None)
        verdict = "finished"
    except StopIteration:
        verdict = "finite"
    except TrainingDiverged as error:  # the job's title, then why
        verdict = "diverged: " + str(error).split(": ", 1)[1].split(". No result")[0]
    except FloatingPointError as error:
        verdict = str(error)
    finally:
        l2t.L2T.after_step = original  # type: ignore[method-assign]  # the patch undone
    finite = all(np.isfinite(terms)) and all(np.isfinite(weights))
    return (
        f"{verdict if finite or verdict != 'finite' else 'not finite'}; L2T term per step "
        f"{', '.join(f'{t:.3g}' for t in terms)}; largest student weight {max(weights, default=float('nan')):.3g}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--snapshots", type=int, nargs="+", default=[1, 3, 12])
    parser.add_argument(
        "--teacher-decay",
        type=int,
        nargs="*",
        default=[8, 11],
        help="the teacher's lr decay epochs (x0.1), as Table 1's 150/180/210 of 240, shortened",
    )
    parser.add_argument("--steps", type=int, default=8, help="L2T steps per teacher")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trace", action="store_true", help="name the first non-finite operation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        data = cifar_shaped_digits(out)
        teachers = train_teacher(data, out, args.teacher_epochs, args.snapshots, args.teacher_decay)
        untrained = out / "teacher_untrained.pt"
        torch.manual_seed(0)
        torch.save(create_model("resnet56", 10).state_dict(), untrained)
        rows = [("untrained (BN running stats at init)", untrained)] + [
            (f"pipeline teacher, epoch {e}", p) for e, p in sorted(teachers.items())
        ]
        print(
            f"L2T resnet56 -> resnet20, batch 64, 32x32 digits, beta 0.5, 2 virtual steps, lr 0.05, {args.steps} "
            f"steps per teacher"
        )
        for label, path in rows:
            scale = stage_scale(path, data)
            print(
                f"{label}: teacher stage maps up to {scale:.3g}; "
                f"{l2t_student(data, out, path, args.steps, args.trace)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
