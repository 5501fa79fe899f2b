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
