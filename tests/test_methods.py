"""FitNet, AT, RKD, CRD, L2T and MHGD: values against independent computations, gradients where they belong."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import method_context

from afdistill.methods import Batch, Context, build_method, dry_run
from afdistill.methods.mhgd import _TopRightSingularVectors
from afdistill.models import create_model

torch.set_default_dtype(torch.float32)


def networks(teacher="resnet14", student="resnet8", classes=10, size=16, batch=8, seed=0):
    torch.manual_seed(seed)
    t, s = create_model(teacher, classes).eval(), create_model(student, classes)
    t.requires_grad_(False)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    return t, s, images, labels


def batch(images, labels):
    return Batch(images, labels, torch.arange(len(images)))


def bn_train(x, bn):
    dims = [0, 2, 3] if x.dim() == 4 else [0]
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


# ---------------------------------------------------------------- FitNet


def test_fitnet_is_mse_between_the_regressed_hint_and_the_guide():
    t, s, images, labels = networks("resnet20", "resnet8")
    method = build_method("fitnet", {"alpha": 0.0, "beta": 100.0}, method_context(t, s, images))
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, batch(images, labels))["fitnet"]
        conv = method.regressor.conv
        hint = F.relu(
            bn_train(F.conv2d(fs.stages[1], conv.weight, conv.bias, padding=conv.padding), method.regressor.bn)
        )
        expected = 100.0 * ((hint - ft.stages[1]) ** 2).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fitnet_regressor_follows_repdistiller_for_each_size_ratio():
    from afdistill.methods.fitnet import ConvRegressor

    assert isinstance(ConvRegressor((1, 16, 32, 32), (1, 32, 16, 16)).conv, torch.nn.Conv2d)
    assert isinstance(ConvRegressor((1, 16, 8, 8), (1, 32, 16, 16)).conv, torch.nn.ConvTranspose2d)
    assert ConvRegressor((1, 16, 8, 8), (1, 32, 6, 6)).conv.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="no regressor"):
        ConvRegressor((1, 16, 4, 4), (1, 32, 16, 16))


# ---------------------------------------------------------------- AT


def numpy_attention(a, p, mapping):
    energy = np.abs(a) ** p
    energy = energy.sum(1) if mapping == "sum" else energy.max(1)  # the paper's F_sum^p / F_max^p
    flat = energy.reshape(len(a), -1)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def numpy_pool(a, size):
    n, c, h, w = a.shape
    return a.reshape(n, c, size, h // size, size, w // size).mean((3, 5))


@pytest.mark.parametrize("p,mapping", [(2.0, "sum"), (1.0, "sum"), (4.0, "sum"), (1.0, "max")])
def test_attention_transfer_matches_the_papers_mapping_functions(p, mapping):
    t, s, images, labels = networks("wrn_16_2", "wrn_16_1")
    method = build_method(
        "at", {"alpha": 0.0, "beta": 1000.0, "p": p, "mapping": mapping}, method_context(t, s, images)
    )
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, batch(images, labels))["at"].item()
    expected = 0.0
    for a_s, a_t in zip(fs.stages, ft.stages):  # raw (signed) WRN group outputs: |A| matters for odd p
        q_s, q_t = numpy_attention(a_s.numpy(), p, mapping), numpy_attention(a_t.numpy(), p, mapping)
        expected += ((q_s - q_t) ** 2).mean()
    assert got == pytest.approx(1000.0 * expected, rel=1e-4)


def test_attention_transfer_pools_the_larger_map_first():
    t, s, images, labels = networks("resnet8", "mobilenetv2", size=32)  # mobilenet's stages are coarser
    method = build_method("at", {"alpha": 0.0, "beta": 1.0}, method_context(t, s, images))
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, batch(images, labels))["at"].item()
    expected = 0.0
    for a_s, a_t in zip(fs.stages, ft.stages):
        a_s, a_t = a_s.numpy(), a_t.numpy()
        if a_s.shape[2] > a_t.shape[2]:
            a_s = numpy_pool(a_s, a_t.shape[2])
        elif a_s.shape[2] < a_t.shape[2]:
            a_t = numpy_pool(a_t, a_s.shape[2])
        expected += ((numpy_attention(a_s, 2, "sum") - numpy_attention(a_t, 2, "sum")) ** 2).mean()
    assert got == pytest.approx(expected, rel=1e-4)


def test_gradient_attention_transfer_compares_input_gradients_and_trains_through_them():
    t, s, images, labels = networks()
    method = build_method("at_grad", {"beta": 2.0}, method_context(t, s, images))
    x = images.clone().requires_grad_(True)
    with torch.inference_mode():
        ft = t(x, with_features=True)
    fs = s(x, with_features=True)
    terms = method(fs, ft, Batch(x, labels, torch.arange(8)))
    # independent: per-image input gradients of each network's own loss
    reference = 0.0
    for i in range(8):
        xi = images[i : i + 1].clone().requires_grad_(True)
        s_copy = copy.deepcopy(s)
        logits = s_copy(torch.cat([images[:i], xi, images[i + 1 :]]))
        g_s = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), xi)[0]
        g_t = torch.autograd.grad(F.cross_entropy(t(xi), labels[i : i + 1], reduction="sum"), xi)[0]
        reference += (g_s - g_t).norm().item() / 8
    assert terms["at_grad"].item() == pytest.approx(2.0 / 2 * reference, rel=1e-4)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in s.parameters())
    assert all(p.grad is None for p in t.parameters())


# ---------------------------------------------------------------- RKD


def huber(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def test_rkd_matches_distance_and_angle_potentials():
    t, s, images, labels = networks("resnet14", "resnet8")
    method = build_method("rkd", {"alpha": 0.0}, method_context(t, s, images))
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, batch(images, labels))["rkd"].item()
    e_s, e_t = fs.pooled.double().numpy(), ft.pooled.double().numpy()

    def distance(e):
        d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(2))
        return d / d[d > 0].mean()

    def angle(e):
        out = []
        for j in range(len(e)):
            for i in range(len(e)):
                for k in range(len(e)):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out.append(0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv))
        return np.array(out)

    expected = 25 * huber(distance(e_s), distance(e_t)) + 50 * huber(angle(e_s), angle(e_t))
    assert got == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------- CRD


def test_crd_samples_other_classes_and_computes_the_nce_loss_of_eq_18():
    t, s, images, labels = networks(batch=6)
    labels = torch.arange(6) % 10
    ctx = method_context(t, s, images, n_train=40)
    method = build_method("crd", {"alpha": 0.0, "beta": 1.0, "nce_k": 5}, ctx)
    method.begin_epoch(1)
    contrast = method.sample_contrast(labels, torch.arange(6))
    assert torch.equal(contrast[:, 0], torch.arange(6))
    assert all((method.train_labels[contrast[i, 1:]] != labels[i]).all() for i in range(6))
    assert all(len(set(contrast[i, 1:].tolist())) == 5 for i in range(6))  # without replacement

    memory_s, memory_t = method.memory_s.clone(), method.memory_t.clone()
    method.begin_epoch(1)  # same draw again
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, Batch(images, labels, torch.arange(6)))["crd"].item()
        v_s, v_t = method.embed_s(fs.pooled), method.embed_t(ft.pooled)
    scores_s = np.exp(np.einsum("bkd,bd->bk", memory_t[contrast].numpy(), v_s.numpy()) / 0.07)
    scores_t = np.exp(np.einsum("bkd,bd->bk", memory_s[contrast].numpy(), v_t.numpy()) / 0.07)
    scores_s, scores_t = scores_s / (scores_s.mean() * 40), scores_t / (scores_t.mean() * 40)

    def nce(x):
        m, pn = x.shape[1] - 1, 1 / 40
        return -(
            np.log(x[:, 0] / (x[:, 0] + m * pn + 1e-7)).sum() + np.log(m * pn / (x[:, 1:] + m * pn + 1e-7)).sum()
        ) / len(x)

    assert got == pytest.approx(nce(scores_s) + nce(scores_t), rel=1e-4)
    updated = 0.5 * memory_s[:6] + 0.5 * v_s
    assert torch.allclose(method.memory_s[:6], updated / updated.norm(dim=1, keepdim=True), atol=1e-6)
    assert torch.equal(method.memory_s[6:], memory_s[6:])


# ---------------------------------------------------------------- L2T


def test_l2t_matching_loss_weights_channels_and_pairs():
    t, s, images, labels = networks("resnet14", "resnet8")
    method = build_method("l2t", {"alpha": 0.0, "beta": 0.5}, method_context(t, s, images))
    for layer in method.matching.channel_weights:
        torch.nn.init.normal_(layer.weight, std=0.1)
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, batch(images, labels))["l2t"].item()
        expected = 0.0
        m = method.matching
        for i, (ti, si) in enumerate(m.pairs):
            source, target = ft.stages[ti], fs.stages[si]
            if source.shape[-1] != target.shape[-1]:
                source = F.interpolate(source, size=target.shape[-2:], mode="bilinear", align_corners=False)
            regressed = F.conv2d(target, m.regressors[i].weight, m.regressors[i].bias)
            pooled = ft.stages[ti].mean((2, 3))
            w = torch.softmax(pooled @ m.channel_weights[i].weight.t() + m.channel_weights[i].bias, 1)
            gate = torch.clamp(pooled @ m.gates[i].weight.t() + m.gates[i].bias, 0, 6)[:, 0]
            expected += (((source - regressed) ** 2).mean((2, 3)) * w).sum(1).mul(gate).mean().item()
    assert len(m.pairs) == 9
    assert got == pytest.approx(0.5 * expected, rel=1e-5)


def test_l2t_meta_gradient_matches_finite_differences_and_rolls_the_student_back():
    """The hypergradient through T virtual SGD steps (momentum, weight decay) equals a numerical derivative."""
    torch.set_default_dtype(torch.float64)
    try:
        t, s, images, labels = networks("resnet8", "resnet8", size=8, batch=4, seed=3)
        method = build_method("l2t", {"alpha": 0.0, "inner_steps": 2}, method_context(t, s, images))
        optimizer = torch.optim.SGD(
            list(s.parameters()) + list(method.trainable_parameters()), lr=0.05, momentum=0.9, weight_decay=5e-4
        )
        s.train()
        with torch.no_grad():
            ft = t(images, with_features=True)
        b = batch(images, labels)
        for _ in range(2):  # real steps, so the momentum buffers are not empty
            optimizer.zero_grad()
            method.backward(method(s(images, with_features=True), ft, b))
            optimizer.step()
        start = (
            copy.deepcopy(s.state_dict()),
            copy.deepcopy(method.matching.regressors.state_dict()),
            copy.deepcopy(optimizer.state_dict()),
        )
        metas = method.matching.meta_parameters()
        method.meta_optimizer = torch.optim.SGD(metas, lr=0.0)  # keep the meta-networks fixed; read their .grad
        method.after_step(b, s, ft, optimizer)
        analytic = [p.grad.clone() for p in metas]
        for name, value in s.named_parameters():  # weights rolled back to where the real steps left them
            assert torch.equal(value, start[0][name])  # (BN statistics keep the reverse pass's update, as in L2T-ww)

        def outer_after_virtual_steps():
            s.load_state_dict(start[0])
            method.matching.regressors.load_state_dict(start[1])
            optimizer.load_state_dict(copy.deepcopy(start[2]))  # loading keeps the buffers, which steps then change
            for group in optimizer.param_groups:  # after a real step every parameter holds a gradient tensor
                for p in group["params"]:
                    p.grad = torch.zeros_like(p)
            for objective in ("match", "match", "ce"):
                optimizer.zero_grad(set_to_none=False)  # PyTorch 1.x's in-place zeroing, as L2T-ww's virtual steps
                if objective == "match":
                    loss = method.beta * method.matching(s(images, with_features=True).stages, ft.stages)
                else:
                    loss = F.cross_entropy(s(images), labels)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                return F.cross_entropy(s(images), labels).item()

        checks = [(0, (3, 5)), (1, (0,)), (len(metas) - 1, (0,))]  # a channel weight, its bias, a gate bias
        for index, position in checks:
            numeric = []
            for sign in (1, -1):
                with torch.no_grad():
                    metas[index][position] += sign * 1e-5
                numeric.append(outer_after_virtual_steps())
                with torch.no_grad():
                    metas[index][position] -= sign * 1e-5
            derivative = (numeric[0] - numeric[1]) / 2e-5
            assert analytic[index][position].item() == pytest.approx(derivative, rel=1e-3, abs=1e-9)
        assert any(a.abs().sum() > 0 for a in analytic)
    finally:
        torch.set_default_dtype(torch.float32)


# ---------------------------------------------------------------- MHGD


def test_singular_vector_backward_is_the_reference_formula():
    torch.manual_seed(0)
    a = torch.randn(3, 12, 5, dtype=torch.float64, requires_grad=True)
    v = _TopRightSingularVectors.apply(a, 2)
    _, _, vh = torch.linalg.svd(a.detach(), full_matrices=False)
    assert torch.allclose(v.abs(), vh.transpose(1, 2)[..., :2].abs(), atol=1e-8)
    weights = torch.randn(3, 5, 2, dtype=torch.float64)
    (v * weights).sum().backward()
    # numerical derivative of the same (sign-consistent) function
    numeric = torch.zeros_like(a)
    for index in np.ndindex(*a.shape):
        values = []
        for sign in (1, -1):
            shifted = a.detach().clone()
            shifted[index] += sign * 1e-6
            w = _TopRightSingularVectors.apply(shifted, 2)
            w = w * torch.sign((w * v.detach()).sum(1, keepdim=True))  # the same sign as the unshifted vectors
            values.append((w * weights).sum().item())
        numeric[index] = (values[0] - values[1]) / 2e-6
    assert torch.allclose(a.grad, 2 * numeric, atol=1e-5)  # KD-SVD's gradient is twice the analytic one


def mhgd_setup(beta=1.0):
    t, s, images, labels = networks("resnet14", "resnet8", batch=8)
    pretrain = build_method(
        "mhan", {"num_heads": 2}, Context(None, t, None, dry_run(t, images[:2]), 10, torch.arange(40) % 10, 8, seed=0)
    )
    pretrain.begin_epoch(1)
    with torch.no_grad():
        ft = t(images, with_features=True)
    terms = pretrain(None, ft, batch(images, labels))
    terms["mhan"].backward()
    assert all(p.grad is not None for p in pretrain.parameters())
    method = build_method(
        "mhgd", {"num_heads": 2, "beta": beta}, method_context(t, s, images, artifact=pretrain.state_dict())
    )
    return t, s, images, labels, method, ft


def test_mhgd_transfers_the_kl_of_the_teachers_attention_graphs():
    t, s, images, labels, method, ft = mhgd_setup()
    method.train()
    assert not method.network.training and not any(p.requires_grad for p in method.network.parameters())
    with torch.no_grad():
        fs = s(images, with_features=True)
        got = method(fs, ft, batch(images, labels))["mhgd"].item()

    def top_vector(f, k):
        m = f.flatten(2).transpose(1, 2).double()
        _, _, vh = torch.linalg.svd(m, full_matrices=False)
        return vh[:, :k].transpose(1, 2).float()  # B x C x k

    def graph(head, back, front):
        def branch(seq, x):
            return bn_eval(x @ seq[0].weight.t(), seq[1]).view(len(x), head.hidden, head.heads)

        return torch.tanh(torch.einsum("bdh,cdh->hbc", branch(head.sender, back), branch(head.receiver, front)))

    def bn_eval(x, bn):
        return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias

    t_vectors, s_vectors = [], []
    for f_t, f_s in zip(ft.stages, fs.stages):
        v_t = top_vector(f_t, 1)[..., 0]
        v_t = v_t * torch.sign(v_t.gather(1, v_t.abs().argmax(1, keepdim=True)))
        candidates = top_vector(f_s, 4)
        cosine = torch.einsum("bck,bc->bk", candidates, v_t)
        best = cosine.abs().argmax(1)
        v_s = torch.stack([candidates[b, :, best[b]] * torch.sign(cosine[b, best[b]]) for b in range(8)])
        t_vectors.append(v_t)
        s_vectors.append(v_s)
    expected = 0.0
    for i in (1, 2):
        head = method.network.attention[i - 1]
        g_s, g_t = graph(head, s_vectors[i], s_vectors[i - 1]), graph(head, t_vectors[i], t_vectors[i - 1])
        p_s = torch.softmax(g_s, 2)
        expected += (p_s * (torch.log_softmax(g_s, 2) - torch.log_softmax(g_t, 2))).sum().item()
    assert got == pytest.approx(expected, rel=1e-3)


def test_mhgd_clips_each_transfer_gradient_to_the_task_gradient_on_a_rising_schedule():
    t, s, images, labels, method, ft = mhgd_setup(beta=1e4)  # a large transfer gradient, so clipping bites
    method.train()
    method.begin_epoch(1)  # first epoch of distillation: sigmoid(0) = 0.5
    terms = method(s(images, with_features=True), ft, batch(images, labels))
    params = [p for p in s.parameters()]
    main_grads = torch.autograd.grad(terms["ce"], params, retain_graph=True, allow_unused=True)
    transfer_grads = torch.autograd.grad(terms["mhgd"], params, retain_graph=True, allow_unused=True)
    method.backward(terms)
    clipped = 0
    for p, g_main, g_transfer in zip(params, main_grads, transfer_grads):
        g_main = torch.zeros_like(p) if g_main is None else g_main
        if g_transfer is None:
            assert torch.allclose(p.grad, g_main)
            continue
        limit = 0.5 * g_main.norm()
        expected = g_transfer * min(1.0, (limit / g_transfer.norm()).item())
        clipped += g_transfer.norm() > limit
        assert torch.allclose(p.grad, g_main + expected, atol=1e-6)
    assert 0 < clipped < len(params)
    assert all(p.grad is None for p in method.network.parameters())
    assert all(p.grad is None for p in t.parameters())


def test_mhgd_needs_matching_stage_widths():
    t, s, images, labels = networks("wrn_16_2", "resnet8")
    with pytest.raises(ValueError, match="same widths"):
        build_method("mhgd", {}, method_context(t, s, images, artifact={}))


# ---------------------------------------------------------------- every method


@pytest.mark.parametrize("name", ["fitnet", "at", "rkd", "crd", "l2t"])
def test_gradients_reach_student_and_heads_but_never_the_teacher(name):
    t, s, images, labels = networks()
    method = build_method(name, {"nce_k": 4} if name == "crd" else {}, method_context(t, s, images))
    method.begin_epoch(1)
    with torch.inference_mode():
        ft = t(images, with_features=True)
    terms = method(s(images, with_features=True), ft, batch(images, labels))
    assert set(terms) == {"ce", "kd", name}
    method.backward(terms)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())
    assert all(p.grad is not None for p in method.trainable_parameters())
    assert all(p.grad is None for p in t.parameters())


def _l2t_table1_step(calibrate: bool):
    """Table 1's L2T pair and batch (resnet56 -> resnet20, 64 CIFAR-shaped images, 100 classes): a real step,
    then L2T's meta step. ``calibrate``: the teacher's BatchNorm statistics recomputed at its weights, as a
    trained teacher's are (without it, eval-mode BatchNorm is the identity, as in a teacher that has not trained)."""
    t, s, images, labels = networks("resnet56", "resnet20", classes=100, size=32, batch=64, seed=0)
    if calibrate:
        for module in t.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the passes below
        t.train()
        with torch.no_grad():
            for _ in range(2):
                t(torch.randn(64, 3, 32, 32))
        t.eval()
    method = build_method(
        "l2t",
        {"beta": 0.5, "inner_steps": 2, "alpha": 0.9, "temperature": 4},
        method_context(t, s, images, classes=100),
    )
    optimizer = torch.optim.SGD(
        list(s.parameters()) + list(method.trainable_parameters()), lr=0.05, momentum=0.9, weight_decay=5e-4
    )
    with torch.no_grad():
        ft = t(images, with_features=True)
    b = batch(images, labels)
    optimizer.zero_grad()
    method.backward(method(s(images, with_features=True), ft, b))
    optimizer.step()
    method.after_step(b, s, ft, optimizer)
    return t, s, method, ft


def test_l2t_on_table_1s_pair_is_stable_with_a_teacher_whose_statistics_fit_its_weights():
    _, s, method, ft = _l2t_table1_step(calibrate=True)
    assert max(float(f.abs().max()) for f in ft.stages) < 100
    assert all(torch.isfinite(p).all() for p in s.parameters())
    grads = [p.grad for p in method.matching.meta_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert max(float(g.abs().max()) for g in grads) < 1.0  # about 1e-2: the meta step moves the meta-networks gently


def test_l2t_stops_naming_the_teacher_when_its_virtual_steps_overflow():
    """A teacher whose eval-mode BatchNorm does not normalise (untrained) gives maps in the thousands: the
    first virtual step moves the student by lr x their square and the second overflows. The job stops there,
    saying so, instead of letting Adam take a NaN step into the meta-networks (L2T-ww has no check)."""
    with pytest.raises(
        FloatingPointError,
        match=r"l2t: the meta-gradient is not finite: the virtual steps "
        r"overflowed \(the teacher's stage maps reach [0-9.e+]+",
    ):
        _l2t_table1_step(calibrate=False)
