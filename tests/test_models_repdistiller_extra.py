"""ShuffleNetV1/V2 and ResNet50 with RepDistiller's parameter names; every modern method runs on their pairs."""

import pytest
import torch
from conftest import method_context

from afdistill.methods import Batch, View, build_method
from afdistill.models import create_model

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def conv_bn(prefix, index, out_channels, in_per_group, kernel):
    """RepDistiller's `conv<i>` + `bn<i>` entries: name -> shape."""
    keys = {f"{prefix}conv{index}.weight": (out_channels, in_per_group, kernel, kernel)}
    for name in BN:
        keys[f"{prefix}bn{index}.{name}"] = () if name == "num_batches_tracked" else (out_channels,)
    return keys


def shufflev1_keys(classes):
    keys = conv_bn("", 1, 24, 3, 1)
    in_planes, groups = 24, 3
    for layer, (planes, blocks) in enumerate(zip([240, 480, 960], [4, 8, 4]), start=1):
        for i in range(blocks):
            out = planes - in_planes if i == 0 else planes
            mid, first = out // 4, (1 if in_planes == 24 else groups)
            prefix = f"layer{layer}.{i}."
            keys |= conv_bn(prefix, 1, mid, in_planes // first, 1) | conv_bn(prefix, 2, mid, 1, 3)
            keys |= conv_bn(prefix, 3, out, mid // groups, 1)
            in_planes = planes
    return keys | {"linear.weight": (classes, 960), "linear.bias": (classes,)}


def shufflev2_keys(classes):
    keys = conv_bn("", 1, 24, 3, 1)
    in_channels = 24
    for layer, (channels, blocks) in enumerate(zip([116, 232, 464], [3, 7, 3]), start=1):
        mid, prefix = channels // 2, f"layer{layer}.0."
        keys |= conv_bn(prefix, 1, in_channels, 1, 3) | conv_bn(prefix, 2, mid, in_channels, 1)
        keys |= (
            conv_bn(prefix, 3, mid, in_channels, 1) | conv_bn(prefix, 4, mid, 1, 3) | conv_bn(prefix, 5, mid, mid, 1)
        )
        for i in range(1, blocks + 1):
            prefix = f"layer{layer}.{i}."
            keys |= conv_bn(prefix, 1, mid, mid, 1) | conv_bn(prefix, 2, mid, 1, 3) | conv_bn(prefix, 3, mid, mid, 1)
        in_channels = channels
    keys |= conv_bn("", 2, 1024, 464, 1)
    return keys | {"linear.weight": (classes, 1024), "linear.bias": (classes,)}


def resnet50_keys(classes):
    keys = conv_bn("", 1, 64, 3, 3)
    in_planes = 64
    for layer, (planes, blocks) in enumerate(zip([64, 128, 256, 512], [3, 4, 6, 3]), start=1):
        for i in range(blocks):
            prefix, stride = f"layer{layer}.{i}.", (2 if i == 0 and layer > 1 else 1)
            keys |= conv_bn(prefix, 1, planes, in_planes, 1) | conv_bn(prefix, 2, planes, planes, 3)
            keys |= conv_bn(prefix, 3, 4 * planes, planes, 1)
            if stride != 1 or in_planes != 4 * planes:
                keys[f"{prefix}shortcut.0.weight"] = (4 * planes, in_planes, 1, 1)
                for name in BN:
                    keys[f"{prefix}shortcut.1.{name}"] = () if name == "num_batches_tracked" else (4 * planes,)
            in_planes = 4 * planes
    return keys | {"linear.weight": (classes, 2048), "linear.bias": (classes,)}


@pytest.mark.parametrize(
    "arch,expected,params,stage_channels",
    [
        # parameter counts as the CRD paper (RepDistiller) lists them for CIFAR-100: 0.95M, 1.36M, 23.71M
        ("shufflev1", shufflev1_keys, 0.95e6, [240, 480, 960]),
        ("shufflev2", shufflev2_keys, 1.36e6, [116, 232, 464]),
        ("resnet50", resnet50_keys, 23.71e6, [256, 512, 1024, 2048]),
    ],
)
def test_parameter_names_and_shapes_are_repdistillers(arch, expected, params, stage_channels):
    model = create_model(arch, 100)
    state = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    assert state == expected(100)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, abs=0.005e6)
    # A checkpoint saved the way RepDistiller saves them loads strictly.
    model.load_state_dict({"model": model.state_dict()}["model"], strict=True)
    features = model(torch.randn(2, 3, 32, 32), with_features=True)
    assert [s.shape[1] for s in features.stages] == stage_channels
    assert features.stages[-1].shape[-1] == 4 and (features.stages[-1] >= 0).all()  # post-ReLU, as feat[1:-1]
    assert features.blocks[-1] is features.stages[-1] and len(model.afd_candidates) == len(features.blocks)


PAIRS = [
    ("resnet32x4", "shufflev1"),
    ("resnet32x4", "shufflev2"),
    ("wrn_40_2", "shufflev1"),
    ("resnet50", "mobilenetv2"),
    ("resnet50", "vgg8"),
]
METHODS = {
    "kd": {},
    "dkd": {"warmup_epochs": 0},
    "dist": {},
    "mlkd": {},
    "afd": {"qk_dim": 16},
    "reviewkd": {"warmup_epochs": 0},
}


@pytest.mark.parametrize("teacher_arch,student_arch", PAIRS)
def test_every_modern_method_trains_on_the_heterogeneous_pairs(teacher_arch, student_arch):
    torch.manual_seed(0)
    teacher, student = create_model(teacher_arch, 10).eval(), create_model(student_arch, 10)
    teacher.requires_grad_(False)
    images, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    context = method_context(teacher, student, images)
    for name, params in METHODS.items():
        if name == "reviewkd" and len(context.student_sample.stages) != len(context.teacher_sample.stages):
            continue  # ReviewKD pairs stage by stage (the grid leaves it out of these pairs)
        method = build_method(name, params, context)
        method.begin_epoch(1)
        with torch.no_grad():
            teacher_out = teacher(images, with_features=True)
        strong = None
        if method.caps.strong_view:  # MLKD: a second view, here the images flipped upside down
            with torch.no_grad():
                strong_teacher = teacher(images.flip(2), with_features=True)
            strong = View(images.flip(2), student(images.flip(2), with_features=True), strong_teacher)
        terms = method(student(images, with_features=True), teacher_out, Batch(images, labels, torch.arange(4), strong))
        total = sum(terms.values())
        assert torch.isfinite(total), (name, terms)
        student.zero_grad()
        total.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), name
