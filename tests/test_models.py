"""Models: RepDistiller-compatible parameter names and shapes, same logits, AFD's feature candidates."""

import pytest
import torch
import torch.nn.functional as F

from afdistill.engine import load_network
from afdistill.models import UnknownNameError, create_model, list_models
from afdistill.models.fold import fold_batch_norm

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn_keys(prefix, channels):
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (channels,)) for k in BN}


def expected_cifar_resnet(depth, widths, classes):
    """RepDistiller models/resnet.py naming, written out from the architecture."""
    n = (depth - 2) // 6
    keys = {"conv1.weight": (widths[0], 3, 3, 3), **bn_keys("bn1", widths[0])}
    in_planes = widths[0]
    for stage, planes in enumerate(widths[1:], start=1):
        for block in range(n):
            p = f"layer{stage}.{block}"
            keys[f"{p}.conv1.weight"] = (planes, in_planes, 3, 3)
            keys.update(bn_keys(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(bn_keys(f"{p}.bn2", planes))
            if block == 0 and (stage > 1 or in_planes != planes):
                keys[f"{p}.downsample.0.weight"] = (planes, in_planes, 1, 1)
                keys.update(bn_keys(f"{p}.downsample.1", planes))
            in_planes = planes
    keys["fc.weight"] = (classes, widths[-1])
    keys["fc.bias"] = (classes,)
    return keys


def expected_wrn(depth, k, classes):
    """RepDistiller models/wrn.py naming."""
    n = (depth - 4) // 6
    channels = [16, 16 * k, 32 * k, 64 * k]
    keys = {"conv1.weight": (16, 3, 3, 3)}
    in_planes = 16
    for group in range(1, 4):
        out = channels[group]
        for block in range(n):
            p = f"block{group}.layer.{block}"
            keys.update(bn_keys(f"{p}.bn1", in_planes))
            keys[f"{p}.conv1.weight"] = (out, in_planes, 3, 3)
            keys.update(bn_keys(f"{p}.bn2", out))
            keys[f"{p}.conv2.weight"] = (out, out, 3, 3)
            if in_planes != out:
                keys[f"{p}.convShortcut.weight"] = (out, in_planes, 1, 1)
            in_planes = out
    keys.update(bn_keys("bn1", channels[3]))
    keys["fc.weight"] = (classes, channels[3])
    keys["fc.bias"] = (classes,)
    return keys


CASES = {
    "resnet8": lambda c: expected_cifar_resnet(8, [16, 16, 32, 64], c),
    "resnet14": lambda c: expected_cifar_resnet(14, [16, 16, 32, 64], c),
    "resnet20": lambda c: expected_cifar_resnet(20, [16, 16, 32, 64], c),
    "resnet32": lambda c: expected_cifar_resnet(32, [16, 16, 32, 64], c),
    "resnet44": lambda c: expected_cifar_resnet(44, [16, 16, 32, 64], c),
    "resnet56": lambda c: expected_cifar_resnet(56, [16, 16, 32, 64], c),
    "resnet110": lambda c: expected_cifar_resnet(110, [16, 16, 32, 64], c),
    "resnet8x4": lambda c: expected_cifar_resnet(8, [32, 64, 128, 256], c),
    "resnet32x4": lambda c: expected_cifar_resnet(32, [32, 64, 128, 256], c),
    "wrn_16_1": lambda c: expected_wrn(16, 1, c),
    "wrn_16_2": lambda c: expected_wrn(16, 2, c),
    "wrn_28_2": lambda c: expected_wrn(28, 2, c),
    "wrn_40_1": lambda c: expected_wrn(40, 1, c),
    "wrn_40_2": lambda c: expected_wrn(40, 2, c),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dict_names_and_shapes_match_repdistiller(name):
    model = create_model(name, num_classes=100)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == CASES[name](100)


def test_parameter_counts_match_the_published_sizes():
    # CRD paper / RepDistiller README sizes for CIFAR-100 (in millions).
    published = {
        "resnet20": 0.28,
        "resnet56": 0.86,
        "resnet110": 1.74,
        "wrn_16_2": 0.70,
        "wrn_40_2": 2.26,
        "resnet8x4": 1.23,
        "resnet32x4": 7.43,
    }
    for name, millions in published.items():
        count = sum(p.numel() for p in create_model(name, 100).parameters())
        assert abs(count / 1e6 - millions) < 0.01, (name, count)


def _bn(x, sd, p):
    return F.batch_norm(
        x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5
    )


def reference_resnet_forward(sd, n, x):
    """RepDistiller's post-activation CIFAR ResNet, written functionally from the state dict."""
    out = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    blocks = []
    for stage in (1, 2, 3):
        for block in range(n):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = F.relu(_bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
            y = _bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                out = _bn(F.conv2d(out, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            out = F.relu(y + out)
            blocks.append(out)
    logits = F.linear(F.avg_pool2d(out, out.shape[-1]).flatten(1), sd["fc.weight"], sd["fc.bias"])
    return logits, blocks


def reference_wrn_forward(sd, n, x):
    """RepDistiller's pre-activation WRN; AFD taps relu(bn1(x)) of the following block (or the head)."""
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    taps = []
    for group in (1, 2, 3):
        for block in range(n):
            p = f"block{group}.layer.{block}"
            stride = 2 if group > 1 and block == 0 else 1
            a = F.relu(_bn(out, sd, f"{p}.bn1"))
            taps.append(a)
            y = F.relu(_bn(F.conv2d(a, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
            y = F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1)
            shortcut = (
                F.conv2d(a, sd[f"{p}.convShortcut.weight"], stride=stride) if f"{p}.convShortcut.weight" in sd else out
            )
            out = y + shortcut
    final = F.relu(_bn(out, sd, "bn1"))
    logits = F.linear(F.avg_pool2d(final, final.shape[-1]).flatten(1), sd["fc.weight"], sd["fc.bias"])
    return logits, taps[1:] + [final]


def _randomize_bn(model):
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)


@pytest.mark.parametrize(
    "name,n,family",
    [("resnet20", 3, "resnet"), ("resnet8x4", 1, "resnet"), ("wrn_16_2", 2, "wrn"), ("wrn_40_1", 6, "wrn")],
)
def test_logits_and_block_features_match_the_reference_architecture(name, n, family):
    torch.manual_seed(0)
    model = create_model(name, 10)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = model(x, with_features=True)
        reference = reference_resnet_forward if family == "resnet" else reference_wrn_forward
        logits, blocks = reference(model.state_dict(), n, x)
    torch.testing.assert_close(features.logits, logits, rtol=1e-4, atol=1e-4)
    assert len(features.blocks) == len(blocks) == 3 * n
    for ours, theirs in zip(features.blocks, blocks):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model(x), features.logits)


@pytest.mark.parametrize(
    "name,count,shapes",
    [
        ("resnet20", 9, {(16, 32), (32, 16), (64, 8)}),
        ("resnet56", 27, {(16, 32), (32, 16), (64, 8)}),
        ("resnet110", 27, {(16, 32), (32, 16), (64, 8)}),
        ("wrn_16_2", 6, {(32, 32), (64, 16), (128, 8)}),
        ("wrn_28_2", 12, {(32, 32), (64, 16), (128, 8)}),
        ("wrn_40_2", 18, {(32, 32), (64, 16), (128, 8)}),
        ("resnet34", 16, {(64, 32), (128, 16), (256, 8), (512, 4)}),
        ("resnet18", 8, {(64, 32), (128, 16), (256, 8), (512, 4)}),
    ],
)
def test_afd_candidates_are_the_official_layer_table(name, count, shapes):
    """clovaai/attention-feature-distillation utils.LAYER: 9/27/27 (every 2nd block)/6/12/18/16/8."""
    model = create_model(name, 100).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, 32, 32), with_features=True)
    candidates = [features.blocks[i] for i in model.afd_candidates]
    assert len(candidates) == count
    assert {(f.shape[1], f.shape[2]) for f in candidates} == shapes
    if name == "resnet110":
        assert model.afd_candidates == list(range(1, 54, 2))
    assert len(features.stages) == len(shapes)
    assert features.pooled.shape == (2, features.stages[-1].shape[1])


def test_repdistiller_and_bare_checkpoints_load_strictly(tmp_path):
    model = create_model("resnet8", 100).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.save({"model": model.state_dict(), "epoch": 240, "accuracy": 0.5}, tmp_path / "ckpt_epoch_240.pth")
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    for path in ("ckpt_epoch_240.pth", "bare.pth"):
        loaded = load_network(tmp_path / path, "resnet8", 100, torch.device("cpu")).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(RuntimeError, match="does not hold resnet14 weights"):
        load_network(tmp_path / "bare.pth", "resnet14", 100, torch.device("cpu"))


def test_unknown_architecture_lists_the_allowed_names():
    with pytest.raises(UnknownNameError) as error:
        create_model("resnet21", 10)
    assert "resnet21" in str(error.value) and "resnet20" in str(error.value)
    assert "wrn_40_2" in list_models()


@pytest.mark.parametrize("name", list_models())
def test_folding_batch_norm_keeps_logits_and_every_feature(name):
    """The engine runs the frozen teacher with its BatchNorms folded: same outputs up to rounding."""
    torch.manual_seed(0)
    model = create_model(name, 10)
    _randomize_bn(model)
    model.eval()
    folded = fold_batch_norm(model)
    assert folded.folded > 0 and folded.afd_candidates == model.afd_candidates
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = folded(x, with_features=True), model(x, with_features=True)
    for a, b in zip(
        [ours.logits, ours.stem, ours.pooled, *ours.blocks, *ours.stages, *ours.preact_stages],
        [theirs.logits, theirs.stem, theirs.pooled, *theirs.blocks, *theirs.stages, *theirs.preact_stages],
    ):
        scale = b.abs().max().clamp_min(1e-6)
        assert (a - b).abs().max() / scale < 1e-4
    assert len(ours.blocks) == len(theirs.blocks) and len(ours.stages) == len(theirs.stages)
    assert len(ours.preact_stages) == len(theirs.preact_stages) == len(theirs.stages)
    # stages that are blocks stay the same tensors (fp32 views convert each once)
    shared = {id(t) for t in theirs.blocks} & {id(t) for t in theirs.stages}
    assert len({id(t) for t in ours.blocks} & {id(t) for t in ours.stages}) == len(shared)
    shared = {id(t) for t in theirs.stages} & {id(t) for t in theirs.preact_stages}  # MobileNetV2's
    assert len({id(t) for t in ours.stages} & {id(t) for t in ours.preact_stages}) == len(shared)
    torch.testing.assert_close(folded(x), ours.logits)
    assert all(not p.requires_grad for p in folded.parameters())


def test_folding_refuses_a_network_in_training_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(create_model("resnet8", 10))


def test_mhgds_tiny_imagenet_wrn_takes_64_pixel_images_to_cifar_sized_blocks():
    from afdistill.models import create_model

    plain, strided = create_model("wrn_10_4", 200), create_model("wrn_10_4", 200, stem_stride=2)
    assert plain.state_dict().keys() == strided.state_dict().keys()  # the same parameters: weights load either way
    features = strided(torch.zeros(2, 3, 64, 64), with_features=True)
    assert [tuple(stage.shape[-2:]) for stage in features.stages] == [(32, 32), (16, 16), (8, 8)]
    assert features.logits.shape == (2, 200)


# ---------------------------------------------------------------- pre-activation stage outputs


def _unshuffle(x, groups=2):
    """The inverse of the ShuffleNet channel shuffle."""
    n, c, h, w = x.shape
    return x.view(n, c // groups, groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _captured_preacts(model, x):
    """Each stage's tensor before its last ReLU, rebuilt from what forward hooks see of the modules that make it
    (the BN before that ReLU, the block's input): independent of the forward's own bookkeeping. Mirrors the
    official ``preact`` features (megvii-research/mdistiller, mdistiller/models/cifar/*.py)."""
    from afdistill.models import imagenet_resnet, mhgd_nets, mobilenetv1, mobilenetv2, nin, resnet, shufflenet, vgg, wrn

    seen = {}

    def keep(key, pre=False):
        def hook(module, args, output=None):
            seen[key] = args[0] if pre else output

        return hook

    handles, build = [], []
    if isinstance(model, (resnet.ResNet, imagenet_resnet.ImageNetResNet)):
        for name in model.stage_names:
            block = getattr(model, name)[-1]
            bn = block.bn3 if hasattr(block, "bn3") else block.bn2
            handles += [
                block.register_forward_pre_hook(keep((name, "in"), pre=True)),
                bn.register_forward_hook(keep((name, "bn"))),
            ]

            def make(name=name, block=block):
                shortcut = getattr(block, getattr(block, "shortcut_name", "shortcut"))
                x_in = seen[(name, "in")]
                return seen[(name, "bn")] + (x_in if shortcut is None else shortcut(x_in))

            build.append(make)
    elif isinstance(model, wrn.WideResNet):
        # the next layer's BN applied to the stage's output, before that layer's ReLU
        for key, bn in enumerate((model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1)):
            handles.append(bn.register_forward_hook(keep(key)))
            build.append(lambda key=key: seen[key])
    elif isinstance(model, vgg.VGG):
        for index in range(1, 5):
            last = getattr(model, f"block{index}")[-1]
            assert isinstance(last, torch.nn.BatchNorm2d)
            handles.append(last.register_forward_hook(keep(index)))
            build.append(lambda index=index: seen[index])
    elif isinstance(model, shufflenet.ShuffleNetV1):
        for name in ("layer1", "layer2", "layer3"):
            block = getattr(model, name)[-1]
            handles += [
                block.register_forward_pre_hook(keep((name, "in"), pre=True)),
                block.bn3.register_forward_hook(keep((name, "bn"))),
            ]

            def make(name=name, block=block):
                out, residual = seen[(name, "bn")], block.shortcut(seen[(name, "in")])
                return torch.cat([out, residual], 1) if block.stride == 2 else out + residual

            build.append(make)
    elif isinstance(model, shufflenet.ShuffleNetV2):
        for name in ("layer1", "layer2", "layer3"):
            block = getattr(model, name)[-1]
            handles += [
                block.register_forward_pre_hook(keep((name, "in"), pre=True)),
                block.bn3.register_forward_hook(keep((name, "bn"))),
            ]

            def unshuffled(name=name):
                x_in = seen[(name, "in")]
                return torch.cat([x_in[:, : x_in.shape[1] // 2], seen[(name, "bn")]], 1)  # unshuffled, as official

            build.append(unshuffled)
    elif isinstance(model, mobilenetv2.MobileNetV2):
        return None  # no ReLU ends a stage: the pre-activation features are the stages
    elif isinstance(model, mhgd_nets.MHGDVGG):
        # each group's last conv (+BN) output, max-pooled where the group ends with pooling (pool and ReLU commute)
        for index, (group, pool) in enumerate(zip(model.groups(), model.pool_after)):
            handles.append(group[-1].register_forward_hook(keep(index)))
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
        raise AssertionError(f"no pre-activation reference for {type(model).__name__}")
    try:
        with torch.no_grad():
            features = model(x, with_features=True)
            return features, [make() for make in build]
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", list_models())
def test_preact_stages_are_each_stage_before_its_last_relu(name):
    torch.manual_seed(0)
    model = create_model(name, 10)
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    captured = _captured_preacts(model, x)
    with torch.no_grad():
        features = model(x, with_features=True)
    preacts = features.preact_stages
    assert [p.shape for p in preacts] == [s.shape for s in features.stages]
    if captured is None:  # MobileNetV2: the very stage tensors
        assert all(p is s for p, s in zip(preacts, features.stages))
        return
    _, expected = captured
    for ours, theirs in zip(preacts, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert (ours < 0).any()  # before a ReLU
    # the activated tensor the network goes on with
    for pre, stage in zip(preacts, features.stages):
        if name.startswith("wrn"):  # pre-activation: relu(bn(stage)) is the feature that ends stage k in `blocks`
            last = [i for i, b in enumerate(features.blocks) if b.shape[-1] == stage.shape[-1]][-1]
            post = features.blocks[last]
        elif name == "shufflev2":  # the official preact is taken before the channel shuffle
            post = _unshuffle(stage)
        else:
            post = stage
            assert (stage >= 0).all()
        torch.testing.assert_close(F.relu(pre), post, rtol=1e-5, atol=1e-5)


def test_preact_stages_of_the_reference_resnet_and_wrn():
    """Against RepDistiller's networks written functionally from the state dict (see the references above)."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    for name, n, family in (("resnet20", 3, "resnet"), ("wrn_16_2", 2, "wrn")):
        model = create_model(name, 10)
        _randomize_bn(model)
        model.eval()
        sd = model.state_dict()
        with torch.no_grad():
            features = model(x, with_features=True)
            expected = (reference_resnet_preacts if family == "resnet" else reference_wrn_preacts)(sd, n, x)
        for ours, theirs in zip(features.preact_stages, expected, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def reference_resnet_preacts(sd, n, x):
    """RepDistiller's CIFAR ResNet with ``preact=True``: each stage's last residual sum before its ReLU."""
    out = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    preacts = []
    for stage in (1, 2, 3):
        for block in range(n):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = F.relu(_bn(F.conv2d(out, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
            y = _bn(F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                out = _bn(F.conv2d(out, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            pre = y + out
            out = F.relu(pre)
        preacts.append(pre)
    return preacts


def reference_wrn_preacts(sd, n, x):
    """RepDistiller's WRN with ``preact=True``: ``block2.layer[0].bn1(f1)``, ``block3.layer[0].bn1(f2)``,
    ``bn1(f3)``."""
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    stages = []
    for group in (1, 2, 3):
        for block in range(n):
            p = f"block{group}.layer.{block}"
            stride = 2 if group > 1 and block == 0 else 1
            a = F.relu(_bn(out, sd, f"{p}.bn1"))
            y = F.relu(_bn(F.conv2d(a, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
            y = F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1)
            shortcut = (
                F.conv2d(a, sd[f"{p}.convShortcut.weight"], stride=stride) if f"{p}.convShortcut.weight" in sd else out
            )
            out = y + shortcut
        stages.append(out)
    return [
        _bn(stages[0], sd, "block2.layer.0.bn1"),
        _bn(stages[1], sd, "block3.layer.0.bn1"),
        _bn(stages[2], sd, "bn1"),
    ]


def test_preact_stages_survive_bf16_views_and_training_mode():
    """The fp32 view converts them (sharing conversions with the stages where the tensors are the same), and in
    training mode the student's pre-activations are still the tensors before the ReLU (nothing in place)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for name in ("resnet8", "wrn_16_1", "vgg8", "shufflev1", "mobilenetv2"):
        model = create_model(name, 10).train()
        features = model(x, with_features=True)
        assert all(p.requires_grad for p in features.preact_stages)
        view = features.float()
        for ours, fp32 in zip(features.preact_stages, view.preact_stages):
            torch.testing.assert_close(fp32, ours.float())
        if name == "mobilenetv2":
            assert all(a is b for a, b in zip(view.preact_stages, view.stages))
        else:
            assert any((p < 0).any() for p in features.preact_stages)
