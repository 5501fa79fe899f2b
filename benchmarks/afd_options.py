"""Per-step cost of AFD's distances and poolings relative to today's AFD (l2, a2), in one process.

    python benchmarks/afd_options.py --teacher resnet56 --student resnet20 --steps 10 --repeats 3

For each variant, a training step as the engine takes it on CPU (teacher
forward under inference mode, student forward, the method's loss, backward,
SGD step on the student and the method) on one fixed random CIFAR-shaped
batch, and separately the AFD term alone (forward and backward on fixed
features). Variants run round-robin, one timed block of ``--steps`` steps each
per round, each round starting with the next variant, so a slow drift of a
shared machine hits all alike; medians over ``--repeats`` rounds are printed
with their ratio to the default. Times are the process's CPU time
(``time.process_time``), not wall time: on a machine shared with other jobs,
wall time mostly measures the others; run it with ``--threads 1`` there, since
idle OpenMP threads spinning at barriers count as CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

VARIANTS = {
    "l2, a2 (default)": {},
    "l1": {"distance": "l1"},
    "kl": {"distance": "kl"},
    "cosine": {"distance": "cosine"},
    "a1": {"pooling": "a1"},
    "max": {"pooling": "max"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all variants; medians are reported")
    parser.add_argument("--threads", type=int, default=1, help="0: PyTorch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from afdistill.methods import Batch, Context, build_method, dry_run
    from afdistill.models import create_model

    torch.manual_seed(0)
    classes = 100
    teacher = create_model(args.teacher, classes).eval()
    teacher.requires_grad_(False)
    student = create_model(args.student, classes)
    images = torch.randn(args.batch_size, 3, 32, 32)
    labels = torch.randint(0, classes, (args.batch_size,))
    batch = Batch(images, labels, torch.arange(args.batch_size))
    context = Context(
        student,
        teacher,
        dry_run(student, images[:2]),
        dry_run(teacher, images[:2]),
        classes,
        torch.arange(1000) % classes,
        args.batch_size,
    )
    methods = {name: build_method("afd", params, context) for name, params in VARIANTS.items()}
    optimizers = {
        name: torch.optim.SGD(list(student.parameters()) + list(m.trainable_parameters()), lr=1e-3, momentum=0.9)
        for name, m in methods.items()
    }
    with torch.inference_mode():
        fixed_teacher = teacher(images, with_features=True)
    fixed_student = dry_run(student, images)
    fixed_blocks = [f.clone().requires_grad_(True) for f in fixed_student.blocks]
    fixed_student.blocks = fixed_blocks

    def train_step(name: str) -> None:
        method, optimizer = methods[name], optimizers[name]
        with torch.inference_mode():
            teacher_out = teacher(images, with_features=True)
        terms = method(student(images, with_features=True), teacher_out, batch)
        optimizer.zero_grad(set_to_none=True)
        method.backward(terms)
        optimizer.step()

    def loss_step(name: str) -> None:
        methods[name].distill(fixed_student, fixed_teacher, batch)["afd"].backward()

    timings: dict[str, dict[str, list[float]]] = {kind: {name: [] for name in VARIANTS} for kind in ("step", "loss")}
    for name in VARIANTS:  # warm-up: allocator, first-call costs
        train_step(name)
        loss_step(name)
    names = list(VARIANTS)
    for round_index in range(args.repeats):
        shift = round_index % len(names)  # each round starts with another variant: no variant always goes first
        for name in names[shift:] + names[:shift]:
            for kind, step in (("step", train_step), ("loss", loss_step)):
                started = time.process_time()
                for _ in range(args.steps):
                    step(name)
                timings[kind][name].append((time.process_time() - started) / args.steps)

    print(
        f"AFD options, {args.teacher} -> {args.student}, batch {args.batch_size}, CPU, "
        f"{torch.get_num_threads()} threads, {args.steps} steps x {args.repeats} rounds (medians)"
    )
    print(f"  {'variant':18s} {'CPU ms/step':>11s} {'vs default':>10s}   {'AFD term CPU ms':>15s} {'vs default':>10s}")
    default = next(iter(VARIANTS))
    step_base = statistics.median(timings["step"][default])
    loss_base = statistics.median(timings["loss"][default])
    for name in VARIANTS:
        step_time, loss_time = statistics.median(timings["step"][name]), statistics.median(timings["loss"][name])
        print(
            f"  {name:18s} {1000 * step_time:11.1f} {step_time / step_base:9.2f}x   "
            f"{1000 * loss_time:15.2f} {loss_time / loss_base:9.2f}x"
        )


if __name__ == "__main__":
    main()
