"""``runtime.fuse``: students of one architecture run as one network (vmap over their stacked weights).

In float64, where rounding cannot hide a difference (AFD computes its maps in float32 and is left to the
pack test): one step of eight students, each with its own method and
weights, fused and unfused; the same gradients in every student's and method's parameters, the same BatchNorm
running statistics. (``tests/test_packing.py`` trains a whole pack fused through the engine.)
"""

import copy

import pytest
import torch
from conftest import method_context

from afdistill.fused import FusedStudents, fusable
from afdistill.methods import Batch, build_method, method_class
from afdistill.models import create_model

METHODS = {
    "kd": {},
    "fitnet": {},
    "at": {},
    "rkd": {},
    "crd": {"nce_k": 4},
    "dkd": {},
    "dist": {},
    "fsp": {},
}


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_a_fused_step_gives_every_student_its_unfused_gradients_and_statistics(float64):
    torch.manual_seed(0)
    teacher = create_model("resnet14", 10).eval().requires_grad_(False)
    students = [create_model("resnet8", 10) for _ in METHODS]  # each its own initial weights
    images, labels = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    batch = Batch(images, labels, torch.arange(16))
    methods = []
    for (name, params), student in zip(METHODS.items(), students):
        assert method_class(name).capabilities(params).fuses, name
        context = method_context(teacher, student, images)
        methods.append(build_method(name, params, context))
    with torch.no_grad():
        teacher_out = teacher(images, with_features=True)

    alone = [copy.deepcopy(pair) for pair in zip(students, methods)]
    for student, method in alone:
        method.begin_epoch(1)
        method.backward(method(student(images, with_features=True), teacher_out, batch))

    assert fusable(students)
    fused = FusedStudents(students)
    fused.compute(images, bf16=False)
    for student, method in zip(students, methods):
        method.begin_epoch(1)
        method.backward(method(fused.features_of(student), teacher_out, batch))
    fused.backward()

    for name, (student, method), (expected_student, expected_method) in zip(METHODS, zip(students, methods), alone):
        for (key, got), expected in zip(student.named_parameters(), expected_student.parameters()):
            torch.testing.assert_close(got.grad, expected.grad, rtol=1e-9, atol=1e-12, msg=f"{name}: {key}")
        for (key, got), expected in zip(method.named_parameters(), expected_method.parameters()):
            assert (got.grad is None) == (expected.grad is None), f"{name}: {key}"
            if got.grad is not None:
                torch.testing.assert_close(got.grad, expected.grad, rtol=1e-9, atol=1e-12, msg=f"{name}: {key}")
        for (key, got), expected in zip(student.named_buffers(), expected_student.buffers()):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=0, msg=f"{name}: {key}")  # running statistics
    assert int(students[0].bn1.num_batches_tracked) == 1


def test_networks_of_other_shapes_do_not_fuse():
    assert not fusable([create_model("resnet8", 10), create_model("resnet14", 10)])
    assert not fusable([create_model("resnet8", 10), create_model("resnet8", 100)])
