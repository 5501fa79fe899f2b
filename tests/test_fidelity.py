"""Fidelity to the official codes as they ran: L2T-ww's virtual steps, MHGD's TF code, AFD's WideResNets."""
import copy

import pytest
import torch
import torch.nn.functional as F

from afdistill.methods import Batch, Context, build_method, dry_run
from afdistill.models import create_model


def _l2t_setup():
    torch.manual_seed(1)
    t, s = create_model("resnet8", 10).eval(), create_model("resnet8", 10)
    t.requires_grad_(False)
    images, labels = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    context = Context(s, t, dry_run(s, images[:2]), dry_run(t, images[:2]), 10, torch.arange(40) % 10, 4, seed=0)
    method = build_method("l2t", {"alpha": 0.0, "inner_steps": 1}, context)
    optimizer = torch.optim.SGD(list(s.parameters()) + list(method.trainable_parameters()), lr=0.1,
                                momentum=0.9, weight_decay=5e-4)
    s.train()
    with torch.no_grad():
        ft = t(images, with_features=True)
    b = Batch(images, labels, torch.arange(4))
    optimizer.zero_grad()
    method.backward(method(s(images, with_features=True), ft, b))
    optimizer.step()
    return s, method, optimizer, ft, b


def test_l2t_virtual_step_moves_unreached_classifier_by_momentum_and_weight_decay():
    """In the matching-only virtual step the classifier gets no gradient, yet moves as PyTorch 1.x's SGD moved it."""
    s, method, optimizer, ft, b = _l2t_setup()
    fc = s.fc.weight
    before = fc.detach().clone()
    buffer = optimizer.state[fc]["momentum_buffer"].clone()
    seen = []
    original_step = optimizer.step

    def recording_step(*args, **kwargs):  # record the classifier after the first (matching-only) virtual step
        result = original_step(*args, **kwargs)
        if not seen:
            seen.append(fc.detach().clone())
        return result

    optimizer.step = recording_step
    method.meta_optimizer = torch.optim.SGD(method.matching.meta_parameters(), lr=0.0)
    method.after_step(b, s, ft, optimizer)
    expected_buffer = 0.9 * buffer + 5e-4 * before  # zero gradient + weight decay, then momentum
    expected = before - 0.1 * expected_buffer
    assert not torch.equal(seen[0], before)
    assert torch.allclose(seen[0], expected, rtol=0, atol=1e-7)
    assert torch.equal(fc, before)  # rolled back after the meta step


# ---------------------------------------------------------------- AFD's WideResNets: bn1 twice per block


def _official_afd_wrn_logits(model, x, bn1_calls):
    """A plain pre-activation WRN forward written as the AFD code's: each block's bn1 runs `bn1_calls` times."""
    out = model.conv1(x)
    for group in (model.block1, model.block2, model.block3):
        for block in group.layer:
            normalised = [block.bn1(out) for _ in range(bn1_calls)]  # the first is the AFD code's feature
            activated = F.relu(normalised[-1])
            residual = block.conv2(F.relu(block.bn2(block.conv1(activated))))
            out = residual + (out if block.convShortcut is None else block.convShortcut(activated))
    pooled = F.relu(model.bn1(out)).mean((2, 3))
    return model.fc(pooled)


def _train(model, forward, steps=3):
    torch.manual_seed(5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(steps):
        images, labels = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))
        optimizer.zero_grad()
        F.cross_entropy(forward(model, images), labels).backward()
        optimizer.step()
    return model.state_dict()


@pytest.mark.parametrize("double", [False, True])
def test_wrn_double_bn_update_matches_a_plain_reference_that_calls_bn1_twice(double):
    torch.manual_seed(0)
    ours = create_model("wrn_16_1", 10, double_bn_update=double).double()
    reference = copy.deepcopy(ours)
    got = _train(ours, lambda m, x: m(x))
    expected = _train(reference, lambda m, x: _official_afd_wrn_logits(m, x, 2 if double else 1))
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(got[key].double(), expected[key].double(), rtol=1e-9, atol=1e-12), key
    block_bn = "block2.layer.0.bn1.num_batches_tracked"
    assert got[block_bn].item() == (6 if double else 3)
    assert got["bn1.num_batches_tracked"].item() == 3  # the head's BN runs once in the AFD code too


def test_wrn_option_keeps_state_dict_keys_and_defaults_to_repdistiller():
    plain, official = create_model("wrn_16_1", 10), create_model("wrn_16_1", 10, double_bn_update=True)
    assert plain.state_dict().keys() == official.state_dict().keys()
    official.load_state_dict(plain.state_dict(), strict=True)
    assert not plain.block1.layer[0].double_bn_update


def test_model_options_lists_defaults_and_create_model_names_unknown_options():
    from afdistill.models.registry import model_options

    assert model_options("wrn_40_2") == {"double_bn_update": False}
    assert model_options("resnet20") == {}
    with pytest.raises(ValueError, match=r"'bn_twice'.*'wrn_40_2'.*allowed: double_bn_update"):
        create_model("wrn_40_2", 100, bn_twice=True)
    with pytest.raises(ValueError, match=r"'double_bn_update'.*'resnet20'.*allowed: none"):
        create_model("resnet20", 100, double_bn_update=True)
