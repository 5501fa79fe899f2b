"""L2T's step through the engine against L2T-ww's own loop, on the same networks and batch.

    PYTHONPATH=src python benchmarks/l2t_speed.py --l2t-ww PATH/TO/L2T-ww --teacher resnet56 --student resnet20

``--l2t-ww`` is a checkout of alinlab/L2T-ww (checked with f4dde04): its ``MetaSGD`` and its matching, weight
and loss-weight networks are imported from there (nothing of it is in this repository), sized by this
package's networks' stages, with every (teacher stage, student stage) pair, as ``afdistill``'s L2T pairs
them. One iteration of its training loop (``train_l2t_ww.py``'s ``main``) is timed: the real step, ``T = 2``
matching-only steps and one cross-entropy step through ``MetaSGD.step``, then ``meta_backward`` and the
meta-networks' Adam step. Its ``zero_grad`` fills zeros, as PyTorch 1.x's did, which ``meta_backward`` needs.

Against it, the same iteration of ``afdistill``'s L2T (``alpha: 0``, so both minimise CE plus the weighted
matching loss) two ways: through the engine's own step function (``engine.train_step``: both forward passes,
the loss, backward, SGD, ``after_step``) and driven by hand in the same order; both students must end equal.
Rounds interleave the three in alternating order; the first round is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import statistics
import sys
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l2t-ww", required=True, help="a checkout of github.com/alinlab/L2T-ww")
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # L2T-ww's deprecated add_(scalar, tensor) overload

    sys.path.insert(0, args.l2t_ww)
    reference: Any = importlib.import_module("train_l2t_ww")
    meta_sgd: Any = importlib.import_module("train.meta_optimizers").MetaSGD

    from afdistill import distributed, engine
    from afdistill.methods import Batch, Context, build_method, dry_run
    from afdistill.models import create_model

    torch.manual_seed(0)
    teacher, initial = create_model(args.teacher, args.classes), create_model(args.student, args.classes)
    images = torch.randn(args.batch_size, 3, 32, 32)
    labels = torch.randint(0, args.classes, (args.batch_size,))
    teacher.train()
    with torch.no_grad():  # BatchNorm statistics that fit the weights, as a trained teacher's do
        for _ in range(20):
            teacher(torch.randn(args.batch_size, 3, 32, 32))
    teacher.eval().requires_grad_(False)
    teacher_channels = [f.shape[1] for f in dry_run(teacher, images[:2]).stages]
    student_channels = [f.shape[1] for f in dry_run(initial, images[:2]).stages]
    pairs = [(t, s) for t in range(len(teacher_channels)) for s in range(len(student_channels))]
    batch = Batch(images, labels, torch.arange(args.batch_size))

    def ours():
        student = copy.deepcopy(initial).train()
        context = Context(
            student,
            teacher,
            dry_run(student, images[:2]),
            dry_run(teacher, images[:2]),
            args.classes,
            torch.arange(1000) % args.classes,
            args.batch_size,
            seed=0,
        )
        torch.manual_seed(1)
        method = build_method("l2t", {"alpha": 0.0}, context)
        trainable = list(student.parameters()) + list(method.trainable_parameters())
        optimizer = torch.optim.SGD(trainable, lr=0.05, momentum=0.9, weight_decay=5e-4)
        return student, method, trainable, optimizer

    through_engine, by_hand = ours(), ours()
    group = distributed.Group(0, 1, 0)

    def engine_step() -> None:
        student, method, trainable, optimizer = through_engine
        engine.train_step(
            images,
            labels,
            batch.indices,
            method=method,
            method_forward=method,
            student=student,
            student_forward=student,
            teacher_forward=teacher,
            optimizer=optimizer,
            trainable=trainable,
            bf16=False,
            group=group,
        )

    def hand_step() -> None:
        student, method, _, optimizer = by_hand
        with torch.inference_mode():
            features = teacher(images, with_features=True)
        terms = method(student(images, with_features=True), features, batch)
        optimizer.zero_grad(set_to_none=True)
        method.backward(terms)
        optimizer.step()
        method.after_step(batch, student, features, optimizer)

    # L2T-ww's networks read their sizes from a model name: give them this pair's stages
    reference._get_num_features = lambda name: {"teacher": teacher_channels, "student": student_channels}[name]
    student_ww = copy.deepcopy(initial).train()
    weights = reference.WeightNetwork("teacher", pairs)
    gates = reference.LossWeightNetwork("teacher", pairs, "relu6", 1.0)
    matching = reference.FeatureMatching("teacher", "student", pairs)
    meta_optimizer = torch.optim.Adam([*weights.parameters(), *gates.parameters()], lr=1e-4, weight_decay=1e-4)

    student_optimizer = meta_sgd(
        [*student_ww.parameters(), *matching.parameters()],
        [student_ww, matching],
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        rollback=True,
    )
    # PyTorch 1.x's zero_grad, which fills zeros: meta_backward reads every parameter's .grad
    student_optimizer.zero_grad = functools.partial(student_optimizer.zero_grad, set_to_none=False)

    def inner_objective(data, matching_only=False):
        out = student_ww(data[0], with_features=True)
        with torch.no_grad():
            source = teacher(data[0], with_features=True).stages
        loss = matching(source, out.stages, weights(source), [0.5] * len(pairs), gates(source))
        return loss if matching_only else F.cross_entropy(out.logits, data[1]) + loss

    def outer_objective(data):
        return F.cross_entropy(student_ww(data[0]), data[1])

    def l2t_ww_step() -> None:
        data = (images, labels)
        student_optimizer.zero_grad()
        inner_objective(data).backward()
        student_optimizer.step(None)
        for _ in range(2):
            student_optimizer.zero_grad()
            student_optimizer.step(inner_objective, data, True)
        student_optimizer.zero_grad()
        student_optimizer.step(outer_objective, data)
        student_optimizer.zero_grad()
        meta_optimizer.zero_grad()
        outer_objective(data).backward()
        student_optimizer.meta_backward()
        meta_optimizer.step()

    steps = {"engine": engine_step, "by hand": hand_step, "L2T-ww": l2t_ww_step}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(args.rounds):
        for name in list(steps) if round_ % 2 else list(steps)[::-1]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    counted = {name: values[1:] for name, values in times.items()}
    print(
        f"L2T, {args.teacher} -> {args.student}, {len(pairs)} pairs, batch {args.batch_size}, "
        f"{torch.get_num_threads()} thread(s); seconds per iteration, rounds 2-{args.rounds}:"
    )
    for name, values in counted.items():
        print(f"  {name:8s} median {statistics.median(values):.3f}  " + " ".join(f"{v:.3f}" for v in values))
    for a, b in (("engine", "L2T-ww"), ("engine", "by hand")):
        ratios = [x / y for x, y in zip(counted[a], counted[b])]
        print(
            f"  {a} / {b}: {statistics.median(counted[a]) / statistics.median(counted[b]):.3f} of medians; "
            f"per round " + " ".join(f"{r:.2f}" for r in ratios)
        )
    same = all(
        torch.equal(x, y) for x, y in zip(through_engine[0].state_dict().values(), by_hand[0].state_dict().values())
    )
    print(f"  engine and by-hand students bit-identical after {args.rounds} steps: {same}")


if __name__ == "__main__":
    main()
