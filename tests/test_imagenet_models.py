"""ImageNet ResNets: torchvision's weights load with strict=True and give torchvision's logits."""

import pytest
import torch
import torchvision

from afdistill.models import create_model


def _randomize_bn(model):
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)


@pytest.mark.parametrize("depth", [18, 34])
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_logits(depth):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    _randomize_bn(reference)
    ours = create_model(f"resnet{depth}_imagenet", 1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)
        features = ours(x, with_features=True)
        torch.testing.assert_close(features.logits, reference(x), rtol=1e-4, atol=1e-4)
        # the last block, as torchvision computes it, and the pooled embedding fed to fc
        stem = reference.relu(reference.bn1(reference.conv1(x)))
        last = reference.layer4(reference.layer3(reference.layer2(reference.layer1(reference.maxpool(stem)))))
    torch.testing.assert_close(features.stem, stem)
    torch.testing.assert_close(features.blocks[-1], last, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(features.pooled, last.mean((2, 3)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name, n_blocks, stem_size",
    [
        ("resnet34_imagenet", 16, 32),
        ("resnet18_imagenet", 8, 32),
        ("resnet34_tiny", 16, 64),
        ("resnet18_tiny", 8, 64),
    ],
)
def test_feature_candidates_are_every_block_as_the_official_layer_table(name, n_blocks, stem_size):
    model = create_model(name, 200).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64), with_features=True)
    assert len(features.blocks) == n_blocks and model.afd_candidates == list(range(n_blocks))
    assert [s.shape[1] for s in features.stages] == [64, 128, 256, 512]
    assert features.stages[-1] is features.blocks[-1]
    assert features.stem.shape[-1] == stem_size
    # Tiny variant: 3x3 stride-1 stem, no max-pool, so layer1 sees 64x64 and layer4 8x8.
    last = features.blocks[-1].shape[-1]
    assert last == (8 if name.endswith("tiny") else 2)
    assert features.logits.shape == (1, 200)


def test_tiny_variant_keeps_torchvision_names_except_the_stem_shape():
    tiny = create_model("resnet18_tiny", 200).state_dict()
    imagenet = create_model("resnet18_imagenet", 200).state_dict()
    assert list(tiny) == list(imagenet)
    assert tiny["conv1.weight"].shape == (64, 3, 3, 3) and imagenet["conv1.weight"].shape == (64, 3, 7, 7)
