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
    optimizer = torch.optim.SGD(
        list(s.parameters()) + list(method.trainable_parameters()), lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    s.train()
    with torch.no_grad():
        ft = t(images, with_features=True)
    b = Batch(images, labels, torch.arange(4))
    optimizer.zero_grad()
    method.backward(method(s(images, with_features=True), ft, b))
    optimizer.step()
    return s, method, optimizer, ft, b


def test_l2t_virtual_step_moves_unreached_classifier_by_momentum_and_weight_decay():
    """In the matching-only virtual step the classifier gets no gradient, yet moves as PyTorch 1.x's SGD moved it;
    the meta step then leaves it, and every other weight, where the real step put it."""
    s, method, optimizer, ft, b = _l2t_setup()
    fc = s.fc.weight
    before = fc.detach().clone()
    buffer = optimizer.state[fc]["momentum_buffer"].clone()
    moved, trajectory, _ = method.virtual_steps(b, s, ft, optimizer)
    after_first = trajectory[1][[id(p) for p in moved].index(id(fc))]
    expected_buffer = 0.9 * buffer + 5e-4 * before  # zero gradient + weight decay, then momentum
    assert not torch.equal(after_first, before)
    assert torch.allclose(after_first, before - 0.1 * expected_buffer, rtol=0, atol=1e-7)
    weights = copy.deepcopy(dict(s.named_parameters()))
    method.meta_optimizer = torch.optim.SGD(method.matching.meta_parameters(), lr=0.0)
    method.after_step(b, s, ft, optimizer)
    assert all(torch.equal(value, weights[name]) for name, value in s.named_parameters())


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

    assert model_options("wrn_40_2") == {"double_bn_update": False, "stem_stride": 1}
    assert model_options("resnet20") == {}
    with pytest.raises(ValueError, match=r"'bn_twice'.*'wrn_40_2'.*allowed: double_bn_update"):
        create_model("wrn_40_2", 100, bn_twice=True)
    with pytest.raises(ValueError, match=r"'double_bn_update'.*'resnet20'.*allowed: none"):
        create_model("resnet20", 100, double_bn_update=True)


# ---------------------------------------------------------------- MHGD against the TF code's formulas, in NumPy


def test_mhgd_loss_matches_a_numpy_computation_of_the_tf_formulas():
    """nets/Relation.py MHGD under ResNet_arg_scope: bias-free FC, BN (scale, offset, eps 1e-5) with moving
    statistics in the reused heads, tanh, then sum KL(softmax(G_S) || softmax(G_T)) over heads, rows, columns."""
    import numpy as np

    torch.manual_seed(2)
    t, s = create_model("resnet8", 10).eval(), create_model("resnet8", 10)
    t.requires_grad_(False)
    images, labels = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    pretrain_context = Context(None, t, None, dry_run(t, images[:2]), 10, torch.arange(40) % 10, 6, seed=0)
    pretrain = build_method("mhan", {"num_heads": 2}, pretrain_context)
    for module in pretrain.modules():  # non-trivial BN parameters and moving statistics
        if isinstance(module, torch.nn.BatchNorm1d):
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.3, 0.3)
                module.running_mean.uniform_(-0.2, 0.2), module.running_var.uniform_(0.5, 2.0)
    context = Context(
        s,
        t,
        dry_run(s, images[:2]),
        dry_run(t, images[:2]),
        10,
        torch.arange(40) % 10,
        6,
        seed=0,
        artifact=pretrain.state_dict(),
    )
    method = build_method("mhgd", {"num_heads": 2, "beta": 1.0}, context)
    method.train()
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, Batch(images, labels, torch.arange(6)))["mhgd"].item()

    def svd_v(feature, n):  # SVD_eid: B x HW x D matrices, right singular vectors, l2-normalised columns
        x = feature.double().numpy().reshape(feature.shape[0], feature.shape[1], -1).transpose(0, 2, 1)
        v = np.linalg.svd(x, full_matrices=False)[2].transpose(0, 2, 1)[:, :, :n]
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def fc_bn(x, seq):  # fully_connected (no bias) then batch_norm with moving statistics
        w, bn = seq[0].weight.double().numpy(), seq[1]
        y = x @ w.T
        return (y - bn.running_mean.double().numpy()) / np.sqrt(
            bn.running_var.double().numpy() + 1e-5
        ) * bn.weight.double().numpy() + bn.bias.double().numpy()

    def attention(head, k, q, heads):  # Attention_head: [B, D*h] -> [h, B, B]
        b = k.shape[0]
        sender = fc_bn(k, head.sender).reshape(b, -1, heads).transpose(2, 0, 1)
        receiver = fc_bn(q, head.receiver).reshape(b, -1, heads).transpose(2, 1, 0)
        return np.tanh(sender @ receiver)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    v_t_all, v_s_all = [], []
    for f_t, f_s in zip(ft.stages, fs.stages):
        v_t = svd_v(f_t, 1)  # B x D x 1; sign: this project's choice (largest entry positive), TF left it to LAPACK
        largest = np.take_along_axis(v_t[:, :, 0], np.abs(v_t[:, :, 0]).argmax(1)[:, None], 1)
        v_t = v_t * np.sign(largest)[:, :, None]
        v_s = svd_v(f_s, 4)  # Align_rsv: the candidate of largest |cosine|, times the cosine's sign
        cosine = np.transpose(v_s, (0, 2, 1)) @ v_t  # B x 4 x 1
        mask = np.where(np.abs(cosine).max(1, keepdims=True) == np.abs(cosine), np.sign(cosine), 0.0)
        v_t_all.append(v_t[:, :, 0])
        v_s_all.append((v_s @ mask)[:, :, 0])
    expected = 0.0
    for i in range(1, len(v_t_all)):
        head = method.network.attention[i - 1]
        g_t = attention(head, v_t_all[i], v_t_all[i - 1], 2)
        g_s = attention(head, v_s_all[i], v_s_all[i - 1], 2)
        expected += (np.exp(log_softmax(g_s)) * (log_softmax(g_s) - log_softmax(g_t))).sum()
    assert got == pytest.approx(expected, rel=1e-4)
