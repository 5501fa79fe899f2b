"""The measured effect of issue 18's fidelity options.

L2T: relative difference between the meta-gradients taken through virtual steps that zero
gradients in place (L2T-ww on PyTorch 1.x, now the default) and through steps that drop them
(``set_to_none``, torch 2's default), from identical parameters at initialisation.
WRN: the largest |running mean| difference of a block's bn1 after N training steps with and
without ``double_bn_update``.

    python benchmarks/fidelity.py --teacher resnet20 --student resnet8 --batch 16 --steps 20
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from afdistill.methods import Batch, Context, build_method, dry_run, l2t
from afdistill.models import create_model


def l2t_meta_gradients(teacher_arch: str, student_arch: str, batch_size: int, in_place: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    teacher, student = create_model(teacher_arch, 100).eval(), create_model(student_arch, 100)
    teacher.requires_grad_(False)
    images, labels = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 100, (batch_size,))
    context = Context(
        student,
        teacher,
        dry_run(student, images[:2]),
        dry_run(teacher, images[:2]),
        100,
        torch.arange(1000) % 100,
        batch_size,
        seed=0,
    )
    method = build_method("l2t", {}, context)
    assert isinstance(method, l2t.L2T)  # build_method("l2t") builds one
    optimizer = torch.optim.SGD(
        list(student.parameters()) + list(method.trainable_parameters()), lr=0.05, momentum=0.9, weight_decay=5e-4
    )
    with torch.no_grad():
        features = teacher(images, with_features=True)
    batch = Batch(images, labels, torch.arange(batch_size))
    optimizer.zero_grad()
    method.backward(method(student(images, with_features=True), features, batch))
    optimizer.step()
    # ignore: L2T's own meta-optimiser is an Adam; any optimiser does here, and a zero-lr SGD leaves it unused
    method.meta_optimizer = torch.optim.SGD(method.matching.meta_parameters(), lr=0.0)  # type: ignore[assignment]
    original = l2t._zero_gradients_in_place
    if not in_place:

        def drop(params):
            for p in params:
                p.grad = None

        l2t._zero_gradients_in_place = drop
    try:
        method.after_step(batch, student, features, optimizer)
    finally:
        l2t._zero_gradients_in_place = original
    return [p.grad.clone() for p in method.matching.meta_parameters()]


def wrn_running_mean_difference(arch: str, steps: int) -> tuple[float, float]:
    models = []
    for double in (False, True):
        torch.manual_seed(0)
        model = create_model(arch, 100, double_bn_update=double).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        for _ in range(steps):
            images, labels = torch.randn(16, 3, 32, 32) * 2 + 0.5, torch.randint(0, 100, (16,))
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        models.append(model)
    # ignore: sub-modules are dynamic nn.Module attributes (Tensor | Module to mypy)
    plain, official = (m.block2.layer[0].bn1.running_mean for m in models)  # type: ignore[union-attr, index]
    return (plain - official).abs().max().item(), (plain - official).norm().item() / plain.norm().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--wrn", default="wrn_16_2")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    new = l2t_meta_gradients(args.teacher, args.student, args.batch, in_place=True)
    old = l2t_meta_gradients(args.teacher, args.student, args.batch, in_place=False)
    new_flat, old_flat = torch.cat([g.flatten() for g in new]), torch.cat([g.flatten() for g in old])
    print(
        f"L2T {args.teacher} -> {args.student}, batch {args.batch}: meta-gradient |old - new| / |new| = "
        f"{((old_flat - new_flat).norm() / new_flat.norm()).item():.4g}, "
        f"cosine {F.cosine_similarity(old_flat, new_flat, dim=0).item():.4f}"
    )
    absolute, relative = wrn_running_mean_difference(args.wrn, args.steps)
    print(
        f"WRN {args.wrn}, {args.steps} steps: block2.layer.0.bn1 running mean max |difference| {absolute:.4g}, "
        f"relative {relative:.4g}"
    )


if __name__ == "__main__":
    main()
