"""Issue 29's networks: MHGD's VGGs / modified VGG / MobileNet, KD_methods_with_TF's ResNets, AT's NINs.

Shapes against the MHGD supplementary's Figure 1 and sseung0703/KD_methods_with_TF@9fb54144 nets/ResNet.py,
parameter counts against the AT paper's (NIN-thin 0.2M, NIN-wide 1M on CIFAR-10), and the feature interface.
"""

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from afdistill.models import classifier, create_model, mhgd_nets, mobilenetv1, model_options, nin
from afdistill.models.features import block_names
from afdistill.models.fold import fold_batch_norm

NEW = [
    "vgg16_mhgd",
    "vgg7_mhgd",
    "vgg_mhgd_modified",
    "resnet32_mhgd",
    "resnet8_mhgd",
    "mobilenetv1",
    "nin_thin",
    "nin_wide",
]
WRN_TEACHER = [(64, 32), (128, 16), (256, 8)]  # wrn_22_4's stages (channels, size) on 32x32 images
VGG_CIFAR = [(64, 16), (128, 8), (256, 4), (512, 4), (512, 2)]  # no pooling after the fourth group
VGG_TINY = [(64, 32), (128, 16), (256, 8), (512, 4), (512, 2)]  # 64x64 with the "red box" pooling
RESNET_64 = [(32, 64), (64, 32), (128, 16), (256, 8), (512, 4)]  # the code's layout for non-32 images

# name, options, image size, classes, stages (channels, size), stem (channels, size), pooled width, blocks
CASES: list[tuple[str, dict[str, Any], int, int, list[tuple[int, int]], tuple[int, int], int, int]] = [
    ("vgg16_mhgd", {}, 32, 100, VGG_CIFAR, (64, 32), 1024, 13),
    ("vgg16_mhgd", {"max_pool_after_block4": True}, 64, 200, VGG_TINY, (64, 64), 1024, 13),
    ("vgg7_mhgd", {}, 32, 100, VGG_CIFAR, (64, 16), 1024, 5),
    ("vgg7_mhgd", {"max_pool_after_block4": True}, 64, 200, VGG_TINY, (64, 32), 1024, 5),
    ("vgg_mhgd_modified", {}, 32, 100, WRN_TEACHER, (16, 32), 256, 7),
    ("resnet32_mhgd", {}, 32, 100, WRN_TEACHER, (32, 32), 256, 15),
    ("resnet32_mhgd", {"image_size": 64}, 64, 200, RESNET_64, (16, 64), 512, 25),
    ("resnet8_mhgd", {}, 32, 100, WRN_TEACHER, (32, 32), 256, 3),
    ("resnet8_mhgd", {"narrow_stem": True}, 32, 100, WRN_TEACHER, (16, 32), 256, 3),
    ("resnet8_mhgd", {"image_size": 64}, 64, 200, RESNET_64, (16, 64), 512, 5),
    ("mobilenetv1", {}, 32, 100, WRN_TEACHER, (16, 32), 256, 5),
    ("mobilenetv1", {"width_multiplier": 0.5}, 32, 100, [(32, 32), (64, 16), (128, 8)], (8, 32), 128, 5),
    ("nin_wide", {}, 32, 10, [(96, 32), (192, 16), (192, 8)], (192, 32), 192, 9),
    ("nin_thin", {}, 32, 10, [(42, 32), (84, 16), (84, 8)], (84, 32), 84, 9),
]


def _shapes(maps):
    return [(m.shape[1], m.shape[2]) for m in maps]


def _randomize_bn(model):
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)


def _meta(name, classes=100, **options):
    """The network built on the meta device: shapes without initialising or computing anything."""
    with torch.device("meta"):
        return create_model(name, classes, **options)


@pytest.mark.parametrize(
    "name,options,size,classes,stages,stem,pooled,blocks",
    CASES,
    ids=[f"{c[0]}-{c[2]}px-{'-'.join(f'{k}={v}' for k, v in c[1].items()) or 'default'}" for c in CASES],
)
def test_output_stage_and_interface_shapes(name, options, size, classes, stages, stem, pooled, blocks):
    model = _meta(name, classes, **options).eval()
    features = model(torch.empty(2, 3, size, size, device="meta"), with_features=True)
    assert model(torch.empty(2, 3, size, size, device="meta")).shape == features.logits.shape == (2, classes)
    assert _shapes(features.stages) == stages
    assert (features.stem.shape[1], features.stem.shape[2]) == stem
    assert features.pooled.shape == (2, pooled)
    assert len(features.blocks) == blocks and model.afd_candidates == list(range(blocks))
    assert len(block_names(features.blocks)) == blocks
    assert [p.shape for p in features.preact_stages] == [s.shape for s in features.stages]
    # the classifier the registry finds (the last nn.Linear) reads `pooled`
    _, linear = classifier(model)
    assert linear.in_features == pooled and linear.out_features == classes


@pytest.mark.parametrize("name", NEW)
def test_feature_interface_is_filled(name):
    """Every field holds the tensors of the forward pass: the logits of a plain call, the pooled embedding
    the classifier reads, each stage among the blocks, pre-activation stages that the ReLU turns into them."""
    torch.manual_seed(0)
    model = create_model(name, 10)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model(x, with_features=True)
        torch.testing.assert_close(model(x), features.logits)
        torch.testing.assert_close(classifier(model)[1](features.pooled), features.logits)
    assert all(
        isinstance(t, torch.Tensor)
        for t in [features.stem, features.pooled, *features.blocks, *features.stages, *features.preact_stages]
    )
    assert len(features.preact_stages) == len(features.stages) >= 3
    assert all(any(stage is block for block in features.blocks) for stage in features.stages)
    for pre, stage in zip(features.preact_stages, features.stages):
        assert (pre < 0).any() and (stage >= 0).all()
        torch.testing.assert_close(F.relu(pre), stage)
    assert all((block >= 0).all() for block in features.blocks) and (features.stem >= 0).all()


def test_students_stages_match_their_teachers_for_mhgd():
    """MHGD compares singular vectors channel by channel: Table 1's students have their teachers' stage
    shapes, and Table 3's students (modified VGG, MobileNet, ResNet) the WRResNet teacher's."""
    x, tiny = torch.empty(2, 3, 32, 32, device="meta"), torch.empty(2, 3, 64, 64, device="meta")

    def stages(name, image, classes=100, **options):
        return _shapes(_meta(name, classes, **options).eval()(image, with_features=True).stages)

    teacher = stages("wrn_22_4", x)
    assert teacher == WRN_TEACHER
    for name, options in [
        ("vgg_mhgd_modified", {}),
        ("mobilenetv1", {}),
        ("resnet8_mhgd", {}),
        ("resnet8_mhgd", {"narrow_stem": True}),
        ("resnet32_mhgd", {}),
    ]:
        assert stages(name, x, **options) == teacher
    assert stages("vgg16_mhgd", x) == stages("vgg7_mhgd", x) == VGG_CIFAR
    assert stages("vgg16_mhgd", tiny, 200, max_pool_after_block4=True) == VGG_TINY
    assert stages("vgg7_mhgd", tiny, 200, max_pool_after_block4=True) == VGG_TINY
    assert stages("wrn_22_4", tiny, 200, stem_stride=2) == WRN_TEACHER  # Tiny ImageNet WRResNet: CIFAR-sized


def _parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_nin_parameter_counts_are_the_at_papers():
    """AT (ICLR 2017) Table 1, CIFAR-10: NIN-thin 0.2M, NIN-wide 1M (one decimal, as the paper prints
    WRN-16-1's 175k as 0.2M)."""
    wide, thin = _parameters(_meta("nin_wide", 10)), _parameters(_meta("nin_thin", 10))
    assert wide == 1_005_642 and round(wide / 1e6, 1) == 1.0
    assert thin == 197_298 and round(thin / 1e6, 1) == 0.2
    assert round(_parameters(_meta("wrn_16_1", 10)) / 1e6, 1) == 0.2  # the paper's rounding
    assert round(_parameters(_meta("nin_thin", 10, width=0.5)) / 1e6, 1) == 0.3  # why not half width


def test_network_structure_as_the_sources_draw_it():
    def convs(model):
        return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    def linears(model):
        return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]

    vgg16, vgg7, modified = (_meta(n) for n in ("vgg16_mhgd", "vgg7_mhgd", "vgg_mhgd_modified"))
    assert [c.out_channels for c in convs(vgg16)] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6  # 13 convs
    assert [(fc.in_features, fc.out_features) for fc in linears(vgg16)] == [(2048, 1024), (1024, 1024), (1024, 100)]
    assert [c.out_channels for c in convs(vgg7)] == [64, 128, 256, 512, 512]  # 5 convs + 2 FC = VGG7
    assert [(fc.in_features, fc.out_features) for fc in linears(vgg7)] == [(2048, 1024), (1024, 100)]
    assert [(c.out_channels, c.stride[0]) for c in convs(modified)] == [
        (16, 1),
        (64, 1),
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
    ]
    assert all(c.bias is None for c in convs(vgg16))  # BN after every convolution by default ...
    plain = _meta("vgg16_mhgd", batch_norm=False)
    assert all(c.bias is not None for c in convs(plain))  # ... or plain convolutions with biases
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert model_options("vgg16_mhgd") == {"max_pool_after_block4": False, "batch_norm": True}

    mobile = _meta("mobilenetv1")
    depthwise = [c for c in convs(mobile) if c.groups > 1]
    assert [(c.out_channels, c.stride[0]) for c in depthwise] == [(16, 1), (64, 2), (128, 1), (128, 2), (256, 1)]
    assert [c.out_channels for c in convs(mobile) if c.kernel_size == (1, 1)] == [64, 128, 128, 256, 256]
    assert convs(mobile)[0].stride == (1, 1) and convs(mobile)[0].out_channels == 16  # stride-1 stem for 32x32

    # KD_methods_with_TF's ResNets: the shapes (and names) of RepDistiller's resnet8x4 / resnet32x4
    for ours, theirs in (("resnet8_mhgd", "resnet8x4"), ("resnet32_mhgd", "resnet32x4")):
        a, b = _meta(ours).state_dict(), _meta(theirs).state_dict()
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert [len(getattr(_meta("resnet32_mhgd"), f"layer{i}")) for i in (1, 2, 3)] == [5, 5, 5]
    assert round(_parameters(_meta("resnet8_mhgd")) / 1e6, 2) == 1.23
    assert round(_parameters(_meta("resnet32_mhgd")) / 1e6, 2) == 7.43
    with pytest.raises(ValueError, match="image_size"):
        _meta("resnet8_mhgd", image_size=48)

    wide = _meta("nin_wide", 10)
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs(wide)] == [
        (3, 192, 5),
        (192, 160, 1),
        (160, 96, 1),
        (96, 192, 5),
        (192, 192, 1),
        (192, 192, 1),
        (192, 192, 3),
        (192, 192, 1),
        (192, 192, 1),
    ]


def test_he_initialisation():
    """MHGD's nets: TF1 variance scaling (FAN_OUT, truncated normal with the 1.3 correction) on every conv
    and FC weight; NIN: nin.lua's MSRinit normal(0, sqrt(2 / (k*k*out)))."""
    torch.manual_seed(0)
    vgg = create_model("vgg16_mhgd", 100)
    conv = vgg.group5[2].conv.weight  # 512 x 512 x 3 x 3: enough draws for a tight estimate
    fan_out = 9 * 512
    assert conv.abs().max() <= 2 * math.sqrt(2.6 / fan_out) + 1e-6
    assert abs(conv.std().item() / math.sqrt(2.0 / fan_out) - 1) < 0.02
    mobile = create_model("mobilenetv1", 100)
    depthwise = mobile.layer3[1].dw_conv.weight  # fan-out per group: 9
    assert depthwise.abs().max() <= 2 * math.sqrt(2.6 / 9) + 1e-6
    assert all(m.bias is None or not m.bias.any() for m in vgg.modules() if isinstance(m, torch.nn.Linear))
    wide = create_model("nin_wide", 10)
    weight = wide.block2[0].conv.weight
    assert abs(weight.std().item() / math.sqrt(2.0 / (25 * 192)) - 1) < 0.02


def _reference_preacts(model, x):
    """Each stage's tensor before its last ReLU from forward hooks on the modules that make it (the BN, or
    the bias-free conv, before that ReLU; max-pooled where the group ends with pooling): the branches
    tests/test_models.py's ``_captured_preacts`` needs for these classes."""
    seen, handles, build = {}, [], []

    def keep(key):
        def hook(module, args, output):
            seen[key] = output

        return hook

    if isinstance(model, mhgd_nets.MHGDVGG):
        for index, (group, pool) in enumerate(zip(model.groups(), model.pool_after)):
            handles.append(group[-1].register_forward_hook(keep(index)))  # the last conv (+BN)
            build.append(lambda index=index, pool=pool: F.max_pool2d(seen[index], 2, 2) if pool else seen[index])
    elif isinstance(model, mobilenetv1.MobileNetV1):
        for name in model.stage_names:
            handles.append(getattr(model, name)[-1].pw_bn.register_forward_hook(keep(name)))
            build.append(lambda name=name: seen[name])
    elif isinstance(model, nin.NIN):
        for name in ("block1", "block2", "block3"):
            handles.append(getattr(model, name)[-1].bn.register_forward_hook(keep(name)))
            build.append(lambda name=name: seen[name])
    else:
        raise AssertionError(type(model).__name__)
    try:
        with torch.no_grad():
            model(x)
        return [make() for make in build]
    finally:
        for handle in handles:
            handle.remove()


PREACT_CASES = [
    ("vgg16_mhgd", {}),
    ("vgg7_mhgd", {}),
    ("vgg_mhgd_modified", {}),
    ("vgg16_mhgd", {"batch_norm": False}),
    ("mobilenetv1", {}),
    ("nin_thin", {}),
    ("nin_wide", {}),
]


@pytest.mark.parametrize(
    "name,options", PREACT_CASES, ids=[name + ("-plain" if options else "") for name, options in PREACT_CASES]
)
def test_preact_stages_are_each_stage_before_its_last_relu(name, options):
    torch.manual_seed(0)
    model = create_model(name, 10, **options)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model(x, with_features=True)
    expected = _reference_preacts(model, x)
    for ours, theirs, stage in zip(features.preact_stages, expected, features.stages, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert (ours < 0).any() and (stage >= 0).all()
        torch.testing.assert_close(F.relu(ours), stage)
    if not isinstance(model, mobilenetv1.MobileNetV1):  # the MobileNet's stem convolution is not a block
        assert features.stem is features.blocks[0]


def test_tiny_imagenet_variants_fold_and_train():
    """The Tiny ImageNet VGG (pooling after the fourth group) keeps its features through BN folding, and a
    training step reaches every parameter (the feature taps are not in place)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for name, options in (("vgg7_mhgd", {"max_pool_after_block4": True}),):
        model = create_model(name, 200, **options)
        _randomize_bn(model)
        model.eval()
        folded = fold_batch_norm(model)
        with torch.no_grad():
            ours, theirs = folded(x, with_features=True), model(x, with_features=True)
        assert folded.folded > 0
        for a, b in zip(
            [ours.logits, ours.pooled, *ours.stages, *ours.preact_stages],
            [theirs.logits, theirs.pooled, *theirs.stages, *theirs.preact_stages],
        ):
            assert (a - b).abs().max() / b.abs().max().clamp_min(1e-6) < 1e-4
        model.train()
        features = model(x, with_features=True)
        (features.logits.sum() + sum(s.mean() for s in features.stages)).backward()
        assert all(p.grad is not None for p in model.parameters())
