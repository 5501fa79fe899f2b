"""FSP, AB, KD-SVD, F-ActT, min-l2 and the symmetry norm: values against independent computations of the official
formulas, gradients where they belong, tiny real network pairs, and the fit checks that refuse what cannot work."""

import copy
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import method_context

from afdistill.methods import Batch, Context, build_method, check_method_fit, check_method_params, method_class
from afdistill.methods.kdsvd import _RightSingularVectors
from afdistill.models import Features, create_model

DIGITS = {"num_classes": 10, "image_size": 16, "n_train": 1437}
NEW = ("fsp", "ab", "kdsvd", "fact", "min_l2", "symmetry_norm")


def networks(teacher="resnet20", student="resnet8", classes=10, size=16, batch=8, seed=0):
    torch.manual_seed(seed)
    t, s = create_model(teacher, classes).eval(), create_model(student, classes)
    t.requires_grad_(False)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    return t, s, images, labels


def batch(images, labels):
    return Batch(images, labels, torch.arange(len(images)))


def bn_train(x, bn):
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def refused(name, params, **fit):
    with pytest.raises(ValueError) as error:
        check_method_fit(name, params, f"methods.{name}", **fit)
    return str(error.value)


def test_labels_are_the_papers_column_names():
    assert [method_class(n).label for n in NEW] == ["FSP", "AB", "KD-SVD", "F-ActT", "min-l2", "Symmetry norm"]
    for name in ("min_l2", "symmetry_norm"):
        caps = method_class(name).capabilities({})
        assert not caps.needs_teacher and caps.needs_input_grad and not caps.cuda_graphs


# ---------------------------------------------------------------- FSP (RepDistiller)


def repdistiller_fsp_loss(feat_s, feat_t):
    """RepDistiller's FSP.forward, step by step: one matrix per consecutive pair of ``feat[:-1]``, mean squares."""

    def compute_fsp(g):
        matrices = []
        for i in range(len(g) - 1):
            bot, top = g[i], g[i + 1]
            b_h, t_h = bot.shape[2], top.shape[2]
            if b_h > t_h:
                bot = F.adaptive_avg_pool2d(bot, (t_h, t_h))
            elif b_h < t_h:
                top = F.adaptive_avg_pool2d(top, (b_h, b_h))
            bot = bot.unsqueeze(1)
            top = top.unsqueeze(2)
            bot = bot.view(bot.shape[0], bot.shape[1], bot.shape[2], -1)
            top = top.view(top.shape[0], top.shape[1], top.shape[2], -1)
            matrices.append((bot * top).mean(-1))
        return matrices

    return sum((s - t).pow(2).mean() for s, t in zip(compute_fsp(feat_s), compute_fsp(feat_t)))


def test_fsp_matches_repdistillers_loss():
    t, s, images, labels = networks("resnet20", "resnet8")
    method = build_method("fsp", {"beta": 2.0}, method_context(t, s, images))
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, batch(images, labels))
        expected = 2.0 * repdistiller_fsp_loss([fs.stem, *fs.stages], [ft.stem, *ft.stages])
    assert set(got) == {"ce", "fsp"}  # alpha = 0: RepDistiller's -a 0
    assert got["fsp"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_fsp_trains_the_students_features_only():
    t, s, images, labels = networks("resnet20", "resnet8")
    method = build_method("fsp", {}, method_context(t, s, images))
    with torch.inference_mode():
        ft = t(images, with_features=True)
    method(s(images, with_features=True), ft, batch(images, labels))["fsp"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in s.named_parameters() if not n.startswith("fc"))
    assert all(p.grad is None for n, p in s.named_parameters() if n.startswith("fc"))
    assert all(p.grad is None for p in t.parameters())


def test_fsp_refuses_pairs_whose_channels_differ():
    message = refused("fsp", {}, student="wrn_16_1", teacher="wrn_16_2", **DIGITS)
    assert message == (
        "methods.fsp: wrn_16_2 -> wrn_16_1: FSP compares C x C matrices between consecutive feature "
        "maps [stem, stage 1, ...], so teacher and student need the same channels at each; got "
        "teacher [16, 32, 64, 128], student [16, 16, 32, 64]"
    )
    check_method_fit("fsp", {}, "methods.fsp", student="resnet8", teacher="resnet20", **DIGITS)
    check_method_fit("fsp", {}, "methods.fsp", student="wrn_16_2", teacher="wrn_40_2", **DIGITS)


# ---------------------------------------------------------------- AB (RepDistiller)


def repdistiller_ab_loss(g_s, g_t, margin=1.0):
    """RepDistiller's ABLoss.forward, step by step, summed as its init stage sums the group."""
    n = len(g_s)
    weights = [2 ** (i - n + 1) for i in range(n)]
    bsz = g_s[0].shape[0]
    losses = []
    for source, target in zip(g_s, g_t):
        loss = (source + margin) ** 2 * ((source > -margin) & (target <= 0)).float() + (source - margin) ** 2 * (
            (source <= margin) & (target > 0)
        ).float()
        losses.append(torch.abs(loss).sum())
    losses = [w * loss for w, loss in zip(weights, losses)]
    losses = [loss / bsz for loss in losses]
    losses = [loss / 1000 * 3 for loss in losses]
    return sum(losses)


@pytest.mark.parametrize("teacher", ["resnet20", "wrn_16_2"])
def test_ab_matches_repdistillers_loss_on_pre_activations_through_the_connector(teacher):
    t, s, images, labels = networks(teacher, "resnet8")
    method = build_method("ab", {"beta": 1.5, "margin": 0.5}, method_context(t, s, images))
    method.train()
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, batch(images, labels))["ab"].item()
        sources = []
        for connector, f in zip(method.connectors, fs.preact_stages):
            if teacher == "resnet20":  # the same shapes: no connector, as RepDistiller's Connector
                assert isinstance(connector, torch.nn.Identity)
                sources.append(f)
            else:  # ConvReg(use_relu=False): conv (1x1 for equal sizes) + BN in training mode, no ReLU
                conv = connector.conv
                assert conv.kernel_size == (1, 1) and conv.bias is not None
                sources.append(bn_train(F.conv2d(f, conv.weight, conv.bias), connector.bn))
        expected = 1.5 * repdistiller_ab_loss(sources, list(ft.preact_stages), margin=0.5).item()
    assert any((f < 0).any() for f in fs.preact_stages)  # pre-activations, not post-ReLU stage outputs
    assert got == pytest.approx(expected, rel=1e-5)


def test_ab_trains_student_and_connectors():
    t, s, images, labels = networks("wrn_16_2", "resnet8")
    method = build_method("ab", {}, method_context(t, s, images))
    with torch.inference_mode():
        ft = t(images, with_features=True)
    method(s(images, with_features=True), ft, batch(images, labels))["ab"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.trainable_parameters())
    assert s.conv1.weight.grad is not None and s.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in t.parameters())


def _features(stage_shapes):
    maps = [torch.zeros(2, *shape) for shape in stage_shapes]
    return Features(torch.zeros(2, 10), maps, maps, maps[0], torch.zeros(2, stage_shapes[-1][0]), maps)


def test_ab_refuses_stages_it_cannot_pair_or_connect():
    assert (
        refused("ab", {}, student="mobilenetv2", teacher="resnet20", **DIGITS)
        == "methods.ab: resnet20 -> mobilenetv2: AB pairs the stages one to one; the teacher has 3 and the student 4"
    )
    # a student map a quarter of the teacher's size has no RepDistiller connector (ConvReg's size rules)
    student, teacher = _features([(16, 4, 4), (32, 2, 2)]), _features([(16, 16, 16), (32, 2, 2)])
    ctx = Context(torch.nn.Identity(), torch.nn.Identity(), student, teacher, 10, None, 64)
    with pytest.raises(
        ValueError,
        match=r"^methods\.ab: Identity -> Identity: stage 1: no regressor maps a 4x4 "
        r"student map to a 16x16 teacher map$",
    ):
        method_class("ab").check_fit({"beta": 1.0, "margin": 1.0}, ctx, "methods.ab", 100)
    check_method_fit("ab", {}, "methods.ab", student="wrn_16_1", teacher="wrn_40_2", **DIGITS)


# ---------------------------------------------------------------- KD-SVD (TF code, against NumPy)


def numpy_kdsvd(student_maps, teacher_maps, k):
    """KD_methods_with_TF's Shared.KD_SVD with SVP.SVD and Align_rsv in NumPy; teacher signs: largest entry > 0."""
    total, previous = 0.0, None
    for fs, ft in zip(student_maps, teacher_maps):
        b, c = fs.shape[:2]
        m_s = fs.reshape(b, c, -1).transpose(0, 2, 1)  # B x HW x C
        m_t = ft.reshape(b, c, -1).transpose(0, 2, 1)
        _, sigma_t, vh_t = np.linalg.svd(m_t, full_matrices=False)
        v_t = vh_t.transpose(0, 2, 1)[:, :, :k]
        v_t = v_t / np.linalg.norm(v_t, axis=1, keepdims=True)
        largest = np.take_along_axis(v_t, np.abs(v_t).argmax(1)[:, None, :], axis=1)
        v_t = v_t * np.where(largest >= 0, 1.0, -1.0)
        sigma_t = sigma_t[:, :k] / np.linalg.norm(sigma_t[:, :k], axis=1, keepdims=True)
        _, _, vh_s = np.linalg.svd(m_s, full_matrices=False)
        v_s = vh_s.transpose(0, 2, 1)[:, :, : k + 3]
        v_s = v_s / np.linalg.norm(v_s, axis=1, keepdims=True)
        cosine = v_s.transpose(0, 2, 1) @ v_t  # B x (k + 3) x k
        mask = np.where(np.abs(cosine) == np.abs(cosine).max(1, keepdims=True), np.sign(cosine), 0.0)
        v_s = v_s @ mask
        v_t, v_s = v_t * sigma_t[:, None, :], v_s * sigma_t[:, None, :]
        if previous is not None:
            s_rbf = np.exp(-((v_s[:, :, None, :] - previous[0][:, None, :, :]) ** 2) / 8)
            t_rbf = np.exp(-((v_t[:, :, None, :] - previous[1][:, None, :, :]) ** 2) / 8)
            square = (s_rbf - t_rbf) ** 2
            total += np.where(np.isfinite(square), square, 0.0).sum()
        previous = (v_s, v_t)
    return total


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_the_tf_codes_formulas_in_numpy(k):
    rng = np.random.default_rng(k)
    shapes = [(6, 5, 5), (8, 4, 4), (10, 3, 3)]  # HW >= C, HW >= C, HW < C
    s_maps = [rng.standard_normal((3, *shape)) for shape in shapes]
    t_maps = [rng.standard_normal((3, *shape)) for shape in shapes]

    def as_features(maps):
        return Features(torch.zeros(3, 10), [], [torch.tensor(m, dtype=torch.float32) for m in maps], None, None)  # noqa: E731

    fs, ft = as_features(s_maps), as_features(t_maps)
    ctx = Context(torch.nn.Linear(1, 1), torch.nn.Identity(), fs, ft, 10, None, 3)
    method = build_method("kdsvd", {"beta": 3.0, "k": k}, ctx)
    got = method.distill(fs, ft, batch(torch.zeros(3, 3, 5, 5), torch.zeros(3, dtype=torch.long)))["kdsvd"].item()
    expected = 3.0 * numpy_kdsvd(
        [m.astype(np.float32).astype(np.float64) for m in s_maps],
        [m.astype(np.float32).astype(np.float64) for m in t_maps],
        k,
    )
    assert got == pytest.approx(expected, rel=1e-4)


def numpy_tf_left_grad(x, n, grad_top):
    """SVP.gradient_svd's left_grad (C > HW), transcribed to NumPy: U and V swap roles, D = dV diag(1/(s + 1e-8))."""
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    v = vh.transpose(0, 2, 1)
    d_v = np.zeros_like(v)
    d_v[..., :n] = grad_top
    rank = s.shape[-1]
    eye = np.eye(rank)
    k = (1 - eye) / (s[:, :, None] ** 2 - s[:, None, :] ** 2 + eye)
    k_t = np.nan_to_num(k.transpose(0, 2, 1), nan=0.0, posinf=0.0, neginf=0.0)
    big_s = np.stack([np.diag(row) for row in s])
    msym = lambda a: a + a.transpose(0, 2, 1)  # noqa: E731
    big_u, big_v, d = v, u, d_v @ np.stack([np.diag(1 / (row + 1e-8)) for row in s])
    diag_part = np.stack([np.diag(np.diag(m)) for m in big_u.transpose(0, 2, 1) @ d])
    grad = (
        d - big_u @ (diag_part + 2 * big_s @ msym(k_t * (d.transpose(0, 2, 1) @ (big_u @ big_s))))
    ) @ big_v.transpose(0, 2, 1)
    return grad.transpose(0, 2, 1)


def test_kdsvd_svd_gradient_is_the_tf_codes():
    torch.manual_seed(0)
    weights = torch.randn(2, 6, 4, dtype=torch.float64)
    # HW >= C (right_grad): twice PyTorch's analytic gradient of the same vectors
    tall = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    (_RightSingularVectors.apply(tall, 4) * weights).sum().backward()
    reference = tall.detach().clone().requires_grad_(True)
    _, _, vh = torch.linalg.svd(reference, full_matrices=False)
    (vh.transpose(1, 2)[..., :4] * weights).sum().backward()
    assert torch.allclose(tall.grad, 2 * reference.grad, atol=1e-9)
    # HW < C (left_grad): the code's own formula, neither the analytic gradient nor twice it
    wide = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    (_RightSingularVectors.apply(wide, 4) * weights).sum().backward()
    expected = numpy_tf_left_grad(wide.detach().numpy(), 4, weights.numpy())
    assert np.allclose(wide.grad.numpy(), expected, atol=1e-9)
    analytic = wide.detach().clone().requires_grad_(True)
    _, _, vh = torch.linalg.svd(analytic, full_matrices=False)
    (vh.transpose(1, 2)[..., :4] * weights).sum().backward()
    assert not torch.allclose(wide.grad, analytic.grad) and not torch.allclose(wide.grad, 2 * analytic.grad)


def test_kdsvd_clips_each_transfer_gradient_to_the_task_gradient_on_a_rising_schedule():
    t, s, images, labels = networks("resnet8", "resnet8")
    method = build_method(
        "kdsvd", {"beta": 1e4}, method_context(t, s, images)
    )  # a large transfer gradient: clipping bites
    method.begin_epoch(1)  # sigmoid(0) = 0.5
    with torch.inference_mode():
        ft = t(images, with_features=True)
    terms = method(s(images, with_features=True), ft, batch(images, labels))
    params = list(s.parameters())
    main_grads = torch.autograd.grad(terms["ce"], params, retain_graph=True)
    transfer_grads = torch.autograd.grad(terms["kdsvd"], params, retain_graph=True, allow_unused=True)
    method.backward(terms)
    clipped = 0
    for p, g_main, g_transfer in zip(params, main_grads, transfer_grads):
        if g_transfer is None:
            assert torch.allclose(p.grad, g_main)
            continue
        limit = 0.5 * g_main.norm()
        clipped += bool(g_transfer.norm() > limit)
        assert torch.allclose(p.grad, g_main + g_transfer * min(1.0, (limit / g_transfer.norm()).item()), atol=1e-6)
    assert clipped > 0
    assert all(p.grad is None for p in t.parameters())


def test_kdsvd_without_clipping_adds_the_gradients():
    t, s, images, labels = networks("resnet8", "resnet8")
    method = build_method("kdsvd", {"clip_gradients": False}, method_context(t, s, images))
    with torch.inference_mode():
        ft = t(images, with_features=True)
    terms = method(s(images, with_features=True), ft, batch(images, labels))
    expected = torch.autograd.grad(terms["ce"] + terms["kdsvd"], list(s.parameters()), retain_graph=True)
    method.backward(terms)
    assert all(torch.allclose(p.grad, g) for p, g in zip(s.parameters(), expected))


def test_kdsvd_refuses_unequal_widths_and_too_many_vectors():
    assert refused("kdsvd", {}, student="resnet8", teacher="wrn_16_2", **DIGITS).startswith(
        "methods.kdsvd: wrn_16_2 -> resnet8: KD-SVD compares singular vectors channel by channel"
    )
    # 16 x 16 digits: resnet8's first stage is 16 channels at 16 x 16, so 16 singular vectors: k + 3 <= 16
    assert refused("kdsvd", {"k": 14}, student="resnet8", teacher="resnet20", **DIGITS) == (
        "methods.kdsvd.k: 14 is not allowed for resnet20 -> resnet8: the student's stage 1 (16 channels, 16 x 16) "
        "has 16 singular vectors, and needs k + 3; expected k from 1 to 13"
    )
    check_method_fit("kdsvd", {"k": 13}, "methods.kdsvd", student="resnet8", teacher="resnet20", **DIGITS)


# ---------------------------------------------------------------- F-ActT


def numpy_fact(student_maps, teacher_maps, adapters):
    total = 0.0
    for f_s, f_t, weight in zip(student_maps, teacher_maps, adapters):
        if weight is not None:
            f_s = np.einsum("oc,bchw->bohw", weight, f_s)
        a_s, a_t = f_s.reshape(len(f_s), -1), f_t.reshape(len(f_t), -1)
        a_s = a_s / np.linalg.norm(a_s, axis=1, keepdims=True)
        a_t = a_t / np.linalg.norm(a_t, axis=1, keepdims=True)
        total += ((a_s - a_t) ** 2).mean()
    return total


@pytest.mark.parametrize("teacher,student", [("resnet20", "resnet8"), ("wrn_16_2", "wrn_16_1")])
def test_fact_compares_normalised_full_activations(teacher, student):
    t, s, images, labels = networks(teacher, student)
    method = build_method("fact", {"beta": 10.0}, method_context(t, s, images))
    with torch.no_grad():
        fs, ft = s(images, with_features=True), t(images, with_features=True)
        got = method(fs, ft, batch(images, labels))["fact"].item()
    adapters = [
        None if isinstance(a, torch.nn.Identity) else a.weight.detach()[:, :, 0, 0].double().numpy()
        for a in method.adapters
    ]
    assert all(a is None for a in adapters) == (teacher == "resnet20")  # an adapter only where channels differ
    expected = 10.0 * numpy_fact(
        [f.double().numpy() for f in fs.stages], [f.double().numpy() for f in ft.stages], adapters
    )
    assert got == pytest.approx(expected, rel=1e-4)


def test_fact_refuses_unequal_numbers_of_groups():
    assert refused("fact", {}, student="resnet8", teacher="resnet34", **DIGITS) == (
        "methods.fact: resnet34 -> resnet8: F-ActT pairs the groups of residual blocks one to one; the teacher has 4 "
        "and the student 3"
    )
    check_method_fit("fact", {}, "methods.fact", student="wrn_16_1", teacher="wrn_40_2", **DIGITS)


# ---------------------------------------------------------------- min-l2 and the symmetry norm


def per_image_input_gradients(network, images, labels, mirrored=False):
    """Each image's own cross-entropy gradient (eval mode: images do not interact), at the image or its mirror
    image; the mirror image's gradient is mirrored back."""
    grads = []
    for i in range(len(images)):
        x = (images[i : i + 1].flip(-1) if mirrored else images[i : i + 1]).clone().requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(network(x), labels[i : i + 1]), x, create_graph=True)[0]
        grads.append(g.flip(-1) if mirrored else g)
    return torch.cat(grads)


def test_min_l2_is_half_the_squared_input_gradient_norm_and_trains_through_it():
    _, s, images, labels = networks(batch=4)
    s.eval()
    method = build_method("min_l2", {"beta": 3.0}, method_context(None, s, images))
    x = images.clone().requires_grad_(True)
    terms = method(s(x, with_features=True), None, batch(x, labels))
    assert set(terms) == {"ce", "min_l2"}
    reference = copy.deepcopy(s)
    g = per_image_input_gradients(reference, images, labels)
    expected = 3.0 / 2 * g.flatten(1).pow(2).sum(1).mean()
    assert terms["min_l2"].item() == pytest.approx(expected.item(), rel=1e-5)
    terms["min_l2"].backward()  # double backpropagation: the same weight gradient as the independent term's
    expected.backward()
    for p, q in zip(s.parameters(), reference.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-8)
    assert sum(p.grad.abs().sum() for p in s.parameters()) > 0


def test_symmetry_norm_is_eq_6_per_image():
    _, s, images, labels = networks(batch=4)
    s.eval()
    method = build_method("symmetry_norm", {"beta": 2.0}, method_context(None, s, images))
    x = images.clone().requires_grad_(True)
    got = method(s(x, with_features=True), None, batch(x, labels))["symmetry_norm"].item()
    g = per_image_input_gradients(s, images, labels)
    g_mirrored = per_image_input_gradients(s, images, labels, mirrored=True)
    expected = 2.0 / 2 * (g - g_mirrored).flatten(1).norm(dim=1).mean().item()
    assert got == pytest.approx(expected, rel=1e-4)


class MirrorSymmetric(torch.nn.Module):
    """f(x) + f(flip(x)): a network whose input gradients are mirror-symmetric by construction."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x):
        return self.network(x) + self.network(x.flip(-1))


def test_symmetry_norm_vanishes_for_a_mirror_symmetric_network():
    _, s, images, labels = networks(batch=4)
    symmetric = MirrorSymmetric(s).eval()
    method = build_method("symmetry_norm", {}, replace(method_context(None, s, images), student=symmetric))
    x = images.clone().requires_grad_(True)
    features = types.SimpleNamespace(logits=symmetric(x))
    assert method.distill(features, None, batch(x, labels))["symmetry_norm"].item() < 1e-6


def test_symmetry_norm_keeps_the_running_statistics_and_trains_the_student():
    _, s, images, labels = networks(batch=8)
    method = build_method("symmetry_norm", {}, method_context(None, s, images))
    x = images.clone().requires_grad_(True)
    features = s(x, with_features=True)  # the engine's forward pass (training mode): updates the statistics
    buffers = {k: v.clone() for k, v in s.state_dict().items() if "running" in k or "num_batches" in k}
    terms = method(features, None, batch(x, labels))
    assert all(torch.equal(v, s.state_dict()[k]) for k, v in buffers.items())
    assert all(bn.momentum == 0.1 for bn in s.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    method.backward(terms)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in s.parameters())


def test_the_teacher_free_regularisers_take_no_kd_parameters():
    for name in ("min_l2", "symmetry_norm"):
        with pytest.raises(ValueError, match=rf"^methods\.{name}\.alpha: method '{name}' has no parameter 'alpha'"):
            check_method_params(name, {"alpha": 0.9}, f"methods.{name}")
        check_method_fit(name, {}, f"methods.{name}", student="resnet8", teacher=None, **DIGITS)


# ---------------------------------------------------------------- every new method on a tiny real pair


@pytest.mark.parametrize("name", NEW)
def test_each_method_trains_a_tiny_real_pair_with_a_finite_loss(name):
    t, s, images, labels = networks("resnet8", "resnet8")
    teacher = None if name in ("min_l2", "symmetry_norm") else t
    method = build_method(name, {}, method_context(teacher, s, images))
    method.begin_epoch(1)
    x = images.clone().requires_grad_(method.caps.needs_input_grad)
    ft = None
    if teacher is not None:
        with torch.inference_mode():
            ft = t(x, with_features=True)
    terms = method(s(x, with_features=True), ft, batch(x, labels))
    assert set(terms) == {"ce", name} and all(torch.isfinite(v) for v in terms.values())
    assert terms[name].item() > 0
    method.backward(terms)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in s.parameters())
    assert all(p.grad is not None for p in method.trainable_parameters())
    assert all(p.grad is None for p in t.parameters())
    check_method_fit(
        name, {}, f"methods.{name}", student="resnet8", teacher=None if teacher is None else "resnet8", **DIGITS
    )
