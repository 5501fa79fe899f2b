"""DKD, DIST, MLKD, ReviewKD and the logit modifiers (standardisation, CTKD): values against
independent computations, gradients of the learned parts, composition, and a few training steps."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import method_context

from afdistill.methods import Batch, View, build_method, check_method_params, kd_loss, method_defaults
from afdistill.methods.dkd import dkd_terms
from afdistill.methods.logits import cosine_curriculum, standardize
from afdistill.methods.reviewkd import hierarchical_context_loss
from afdistill.models import create_model

KD_ON_TOP_LOGIT_METHODS = ("kd", "mlkd")  # DKD adds no Hinton KD on top


def networks(teacher="resnet14", student="resnet8", classes=10, size=16, batch=8, seed=0):
    torch.manual_seed(seed)
    t, s = create_model(teacher, classes).eval(), create_model(student, classes)
    t.requires_grad_(False)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    return t, s, images, labels


def logit_setup(method, params, batch=6, classes=7, seed=0):
    """A method on bare logits: the networks only give it shapes."""
    t, s, images, _ = networks(classes=classes, batch=2)
    built = build_method(method, params, method_context(t, s, images, classes=classes))
    torch.manual_seed(seed)
    student = (3 * torch.randn(batch, classes)).requires_grad_(True)
    teacher = 3 * torch.randn(batch, classes)
    labels = torch.randint(0, classes, (batch,))
    return built, student, teacher, labels


def features_of(logits):
    from afdistill.models import Features

    return Features(logits=logits, blocks=[], stages=[], stem=logits, pooled=logits)


def run_terms(method, student, teacher, labels, strong=None):
    """The method's terms; a method with a strong view gets ``strong`` (student, teacher logits), by default
    logits unrelated to the weak ones."""
    view = None
    if method.caps.strong_view:
        strong = strong or (student.detach().flip(0) * 0.5, teacher.roll(1, dims=1))
        view = View(None, features_of(strong[0]), features_of(strong[1]))
    return method(features_of(student), features_of(teacher), Batch(None, labels, torch.arange(len(labels)), view))


def np_softmax(z, T):
    e = np.exp(z / T - (z / T).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl(p, q):
    return float((p * np.log(p / q)).sum())


# ---------------------------------------------------------------- DKD


def np_dkd(zs, zt, y, T):
    tckd = nckd = 0.0
    for i in range(len(y)):
        ps, pt = np_softmax(zs[i : i + 1], T)[0], np_softmax(zt[i : i + 1], T)[0]
        bs, bt = np.array([ps[y[i]], 1 - ps[y[i]]]), np.array([pt[y[i]], 1 - pt[y[i]]])
        tckd += np_kl(bt, bs)
        others = [c for c in range(zs.shape[1]) if c != y[i]]  # the target class removed outright
        nckd += np_kl(np_softmax(zt[i : i + 1, others], T)[0], np_softmax(zs[i : i + 1, others], T)[0])
    return tckd * T * T / len(y), nckd * T * T / len(y)


def test_dkd_is_the_weighted_target_and_non_target_kl_with_its_warm_up():
    method, zs, zt, y = logit_setup("dkd", {"alpha": 1.5, "beta": 8.0, "warmup_epochs": 20})
    tckd, nckd = np_dkd(zs.detach().double().numpy(), zt.double().numpy(), y.numpy(), 4.0)
    method.begin_epoch(5)
    terms = run_terms(method, zs, zt, y)
    assert set(terms) == {"ce", "dkd"}  # no Hinton KD term by default
    assert terms["dkd"].item() == pytest.approx(5 / 20 * (1.5 * tckd + 8.0 * nckd), rel=1e-4)
    method.begin_epoch(40)
    assert run_terms(method, zs, zt, y)["dkd"].item() == pytest.approx(1.5 * tckd + 8.0 * nckd, rel=1e-4)


def test_dkd_with_unit_weights_reassembles_kd():
    """Eq. 1 of the paper: KD = TCKD + (1 - p_t^target) NCKD, per sample."""
    method, zs, zt, y = logit_setup("dkd", {"alpha": 1.0, "beta": 1.0, "warmup_epochs": 0}, batch=1)
    pt = F.softmax(zt / 4.0, dim=1)[0, y[0]].item()
    tckd, nckd = np_dkd(zs.detach().double().numpy(), zt.double().numpy(), y.numpy(), 4.0)
    assert tckd + (1 - pt) * nckd == pytest.approx(kd_loss(zs, zt, 4.0).item(), rel=1e-4)


def test_dkd_takes_the_papers_alpha_and_beta_and_adds_no_kd_on_top():
    """Eq. 7: DKD = alpha TCKD + beta NCKD (mdistiller's DKD.ALPHA, DKD.BETA); alpha is not a KD weight here, and
    CTKD's learned temperature reaches DKD's own term."""
    assert (method_defaults("dkd")["alpha"], method_defaults("dkd")["beta"]) == (1.0, 8.0)
    method, zs, zt, y = logit_setup("dkd", {"alpha": 2.0, "beta": 0.5, "warmup_epochs": 0, "ctkd": True})
    assert method.kd is None and not method.caps.kd_on_top
    method.begin_epoch(5)
    terms = run_terms(method, zs, zt, y)
    assert set(terms) == {"ce", "dkd"}
    tckd, nckd = np_dkd(zs.detach().double().numpy(), zt.double().numpy(), y.numpy(), method.kd_temperature().item())
    assert terms["dkd"].item() == pytest.approx(2.0 * tckd + 0.5 * nckd, rel=1e-4)
    terms["dkd"].backward()
    theta = method.ctkd_theta.detach().clone().requires_grad_(True)
    tckd, nckd = dkd_terms(zs.detach(), zt, y, ctkd_temperature(theta))
    (plain_grad,) = torch.autograd.grad(2.0 * tckd + 0.5 * nckd, theta)
    assert method.ctkd_theta.grad.item() == pytest.approx(-0.5 * plain_grad.item(), rel=1e-5)


@pytest.mark.parametrize("old, new", [("tckd_weight", "alpha"), ("nckd_weight", "beta")])
def test_dkd_refuses_its_former_weight_names_naming_the_papers(old, new):
    with pytest.raises(
        ValueError,
        match=rf"^methods\.dkd\.{old}: DKD's weights take the paper's names .*: "
        rf"write {new}: 2 instead of {old}$",
    ):
        check_method_params("dkd", {old: 2}, "methods.dkd")


# ---------------------------------------------------------------- DIST


def test_dist_is_one_minus_the_mean_pearson_correlation_of_rows_and_columns():
    method, zs, zt, y = logit_setup("dist", {"inter_weight": 2.0, "intra_weight": 3.0, "tau": 4.0})
    ps, pt = np_softmax(zs.detach().double().numpy(), 4.0), np_softmax(zt.double().numpy(), 4.0)
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(len(ps))])
    intra = 1 - np.mean([np.corrcoef(ps[:, j], pt[:, j])[0, 1] for j in range(ps.shape[1])])
    terms = run_terms(method, zs, zt, y)
    assert terms["dist"].item() == pytest.approx(16 * (2.0 * inter + 3.0 * intra), rel=1e-4)


# ---------------------------------------------------------------- MLKD


def np_mlkd(zs, zt, temperatures):
    pt1 = np_softmax(zt, 1.0)
    conf, class_conf = pt1.max(axis=1), pt1.sum(axis=0)
    m = float(np.mean(conf <= np.percentile(conf, 50)))
    c = float(np.mean(class_conf <= np.percentile(class_conf, 50)))

    def kd(T):
        ps, pt = np_softmax(zs, T), np_softmax(zt, T)
        return sum(np_kl(pt[i], ps[i]) for i in range(len(zs))) / len(zs) * T * T

    instance = batch = klass = 0.0
    for T in temperatures:
        ps, pt = np_softmax(zs, T), np_softmax(zt, T)
        instance += m * kd(T)
        batch += m * ((pt @ pt.T - ps @ ps.T) ** 2).sum() / zs.shape[0]
        klass += c * ((pt.T @ pt - ps.T @ ps) ** 2).sum() / zs.shape[1]
    # the official code's two unmasked KL terms, at the fixed 2 and 6 (once each, whatever the configured T)
    instance += kd(2.0) + kd(6.0)
    return instance, batch, klass


def np_cross_entropy(z, y):
    return float(-np.log(np_softmax(z, 1.0)[np.arange(len(y)), y]).mean())


@pytest.mark.parametrize("strong_view", [True, False])
def test_mlkd_aligns_instances_batches_and_classes_at_five_temperatures(strong_view):
    method, zs, zt, y = logit_setup(
        "mlkd", {"kd_weight": 2.0, "temperature": 4.0, "gamma": 0.5, "strong_view": strong_view}, batch=7
    )
    instance, batch, klass = np_mlkd(zs.detach().double().numpy(), zt.double().numpy(), (4.0, 3.0, 5.0, 2.0, 6.0))
    torch.manual_seed(1)
    strong_s, strong_t = 3 * torch.randn(7, 7), 3 * torch.randn(7, 7)
    terms = run_terms(method, zs, zt, y, strong=(strong_s, strong_t))
    assert terms["mlkd_instance"].item() == pytest.approx(2 * instance, rel=1e-4)
    assert terms["mlkd_batch"].item() == pytest.approx(2 * batch, rel=1e-4)
    assert terms["mlkd_class"].item() == pytest.approx(2 * klass, rel=1e-4)
    if not strong_view:
        assert set(terms) == {"ce", "mlkd_instance", "mlkd_batch", "mlkd_class"}
        return
    # the official loss_kd_strong's strong-view part: unmasked KD at T, 3 and 5; and a second CE at the CE weight
    a, b = strong_s.double().numpy(), strong_t.double().numpy()
    strong_instance = sum(
        sum(np_kl(np_softmax(b, T)[i], np_softmax(a, T)[i]) for i in range(7)) / 7 * T * T for T in (4.0, 3.0, 5.0)
    )
    assert terms["mlkd_instance_strong"].item() == pytest.approx(2 * strong_instance, rel=1e-4)
    assert terms["mlkd_ce_strong"].item() == pytest.approx(0.5 * np_cross_entropy(a, y.numpy()), rel=1e-5)


# ---------------------------------------------------------------- ReviewKD


def np_mse(a, b):
    return float(((a - b) ** 2).mean())


def np_pool(a, size):
    n, c, h, w = a.shape
    return a.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def test_hierarchical_context_loss_weights_the_pyramid_levels():
    torch.manual_seed(0)
    pairs = [
        (torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)),
        (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)),
        (torch.randn(2, 5, 1, 1), torch.randn(2, 5, 1, 1)),
    ]
    expected = 0.0
    for s, t in pairs:
        a, b = s.double().numpy(), t.double().numpy()
        h = a.shape[-1]
        levels = [(size, w) for size, w in ((4, 0.5), (2, 0.25), (1, 0.125)) if size < h]
        # each pooled level halves the weight of the previous one; the sum is normalised
        weights = [1.0] + [0.5 ** (k + 1) for k in range(len(levels))]
        loss = np_mse(a, b) + sum(
            0.5 ** (k + 1) * np_mse(np_pool(a, size), np_pool(b, size)) for k, (size, _) in enumerate(levels)
        )
        expected += loss / sum(weights)
    got = hierarchical_context_loss([p[0] for p in pairs], [p[1] for p in pairs])
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_reviewkd_fuses_deep_to_shallow_and_trains_its_fusion_modules():
    t, s, images, labels = networks()
    method = build_method("reviewkd", {"beta": 2.0, "warmup_epochs": 20}, method_context(t, s, images))
    method.begin_epoch(10)
    student, teacher = s(images, with_features=True), t(images, with_features=True)
    projections = method.review(student)
    # the teacher's pre-activation stage outputs (mdistiller's preact_feats[1:]) and its pooled embedding
    teacher_levels = [*teacher.preact_stages, teacher.pooled[:, :, None, None]]
    assert [p.shape for p in projections] == [f.shape for f in teacher_levels]
    # the shallowest level by hand: reduce, attention-mix with the fused map above, project
    deepest_first = method.fusions
    above = None
    levels = [*student.stages, student.pooled[:, :, None, None]][::-1]
    for x, fusion in zip(levels, deepest_first):
        r = fusion.reduce(x)
        if above is not None:
            up = F.interpolate(above, size=r.shape[-2:], mode="nearest")
            a = torch.sigmoid(F.conv2d(torch.cat([r, up], 1), fusion.attention[0].weight, fusion.attention[0].bias))
            r = r * a[:, :1] + up * a[:, 1:]
        above = r
    torch.testing.assert_close(projections[0], deepest_first[-1].project(above))
    terms = method(student, teacher, Batch(images, labels, torch.arange(len(labels))))
    expected = 2.0 * 0.5 * hierarchical_context_loss(projections, teacher_levels)
    assert terms["reviewkd"].item() == pytest.approx(expected.item(), rel=1e-5)
    terms["reviewkd"].backward()
    for fusion in method.fusions:
        assert fusion.reduce[0].weight.grad.abs().sum() > 0 and fusion.project[0].weight.grad.abs().sum() > 0
    assert all(f.attention[0].weight.grad.abs().sum() > 0 for f in method.fusions if f.attention is not None)
    assert method.fusions[0].attention is None  # the deepest level (the pooled vector) has nothing above
    assert s.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in t.parameters())


@pytest.mark.parametrize(
    "teacher_arch,student_arch", [("resnet14", "resnet8"), ("wrn_16_2", "wrn_16_1"), ("vgg11", "vgg8")]
)
def test_reviewkd_compares_with_the_teachers_pre_activation_stages(teacher_arch, student_arch):
    """mdistiller's ReviewKD: the teacher's ``preact_feats[1:]`` (before each stage's last ReLU; for a WRN the next
    BN's output), the student's post-activation ``feats``; the pooled embeddings close both lists."""
    from afdistill.models import Features

    t, s, images, labels = networks(teacher=teacher_arch, student=student_arch)
    generator = torch.Generator().manual_seed(1)
    for module in t.modules():  # a trained teacher's BNs: a WRN's then differ from the identity at init
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.5)
    method = build_method("reviewkd", {"warmup_epochs": 0}, method_context(t, s, images))
    with torch.no_grad():
        teacher = t(images, with_features=True)
    student = s(images, with_features=True)
    assert any((p < 0).any() for p in teacher.preact_stages)  # they differ from what the next layer sees
    batch = Batch(images, labels, torch.arange(len(labels)))
    loss = method(student, teacher, batch)["reviewkd"]
    projections = method.review(student)
    pooled = teacher.pooled[:, :, None, None]
    expected = hierarchical_context_loss(projections, [*teacher.preact_stages, pooled])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(
        hierarchical_context_loss(projections, [*teacher.stages, pooled]).item(), rel=1e-3
    )

    def teacher_with(stages, preact_stages):
        return Features(
            logits=teacher.logits,
            blocks=teacher.blocks,
            stages=stages,
            stem=teacher.stem,
            pooled=teacher.pooled,
            preact_stages=preact_stages,
        )

    # the teacher's post-activation stages play no part; its pre-activation ones do
    garbage = [torch.full_like(f, 7.0) for f in teacher.stages]
    assert method(student, teacher_with(garbage, teacher.preact_stages), batch)["reviewkd"].item() == pytest.approx(
        loss.item(), rel=1e-6
    )
    assert method(student, teacher_with(teacher.stages, garbage), batch)["reviewkd"].item() != pytest.approx(
        loss.item(), rel=1e-3
    )
    # and the student's side is its post-activation stages: its pre-activation ones play no part
    student_garbage = Features(
        logits=student.logits,
        blocks=student.blocks,
        stages=student.stages,
        stem=student.stem,
        pooled=student.pooled,
        preact_stages=[torch.full_like(f, 7.0) for f in student.stages],
    )
    assert method(student_garbage, teacher, batch)["reviewkd"].item() == pytest.approx(loss.item(), rel=1e-6)
    # a hand-built teacher record without them is refused, by name
    with pytest.raises(ValueError, match="preact_stages"):
        method(student, teacher_with(teacher.stages, None), batch)


def test_reviewkd_fusion_gradient_matches_finite_differences():
    t, s, images, labels = networks(batch=4)
    method = build_method("reviewkd", {"warmup_epochs": 0}, method_context(t, s, images)).double()
    s, t = s.double().eval(), t.double()
    images = images.double()
    with torch.no_grad():
        student, teacher = s(images, with_features=True), t(images, with_features=True)
    weight = method.fusions[1].attention[0].weight

    def loss():
        return method(student, teacher, Batch(images, labels, torch.arange(4)))["reviewkd"]

    (grad,) = torch.autograd.grad(loss(), weight)
    step = 1e-6
    with torch.no_grad():
        index = (1, 3, 0, 0)
        weight[index] += step
        up = loss().item()
        weight[index] -= 2 * step
        down = loss().item()
        weight[index] += step
    assert grad[index].item() == pytest.approx((up - down) / (2 * step), rel=1e-4, abs=1e-9)


# ---------------------------------------------------------------- logit modifiers


def test_standardize_is_the_per_sample_z_score_with_the_unbiased_deviation():
    z = torch.randn(4, 9) * 3 + 1
    expected = (z.numpy() - z.numpy().mean(1, keepdims=True)) / (z.numpy().std(1, ddof=1, keepdims=True) + 1e-7)
    np.testing.assert_allclose(standardize(z).numpy(), expected, rtol=1e-5, atol=1e-6)


def kd_like(method_name, params):
    """``method_name`` with only Hinton's KD term on top on (at alpha = 1), through the method's ``kd_term``."""
    off = {"kd": {}, "mlkd": {"kd_weight": 0.0}}[method_name]
    return logit_setup(method_name, {**off, "alpha": 1.0, **params})


@pytest.mark.parametrize("name", KD_ON_TOP_LOGIT_METHODS)
def test_logit_standardization_feeds_every_logit_methods_kd_term_z_scores(name):
    method, zs, zt, y = kd_like(name, {"logit_standardization": True, "temperature": 2.0})
    terms = run_terms(method, zs, zt, y)
    expected = kd_loss(standardize(zs), standardize(zt), 2.0)
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5)
    # a shift and scale of the student's logits change nothing once standardised
    assert run_terms(method, 5 * zs + 3, zt, y)["kd"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_logit_standardization_applies_inside_dkd_and_mlkd():
    dkd, zs, zt, y = logit_setup("dkd", {"logit_standardization": True, "warmup_epochs": 0, "temperature": 2.0})
    tckd, nckd = np_dkd(standardize(zs).detach().double().numpy(), standardize(zt).double().numpy(), y.numpy(), 2.0)
    assert run_terms(dkd, zs, zt, y)["dkd"].item() == pytest.approx(tckd + 8 * nckd, rel=1e-4)
    mlkd, zs, zt, y = logit_setup("mlkd", {"logit_standardization": True, "temperature": 2.0}, batch=7)
    # the official LS MLKD (sunshangquan/logit-standardization-KD, mdistiller/distillers/MLKD.py): the KL terms
    # read z-scores, the class and batch correlations (cc_loss, bc_loss) the raw logits
    instance, _, _ = np_mlkd(
        standardize(zs).detach().double().numpy(), standardize(zt).double().numpy(), (2.0, 3.0, 5.0, 2.0, 6.0)
    )
    _, batch, klass = np_mlkd(zs.detach().double().numpy(), zt.double().numpy(), (2.0, 3.0, 5.0, 2.0, 6.0))
    # the confidence masks read the raw teacher logits: recompute them so
    raw = np_softmax(zt.double().numpy(), 1.0)
    m_raw = float(np.mean(raw.max(1) <= np.percentile(raw.max(1), 50)))
    std = np_softmax(standardize(zt).double().numpy(), 1.0)
    m_std = float(np.mean(std.max(1) <= np.percentile(std.max(1), 50)))
    assert m_raw == m_std  # (a z-score keeps the ranking of confidences, so both masks agree here)
    terms = run_terms(mlkd, zs, zt, y)
    assert terms["mlkd_instance"].item() == pytest.approx(instance, rel=1e-4)
    assert terms["mlkd_batch"].item() == pytest.approx(batch, rel=1e-4)
    assert terms["mlkd_class"].item() == pytest.approx(klass, rel=1e-4)


@pytest.mark.parametrize("strong_view", [True, False])
def test_mlkd_standardizes_only_its_instance_terms(strong_view):
    """As the official LS code's MLKD: z-scores for every KL term (both views), raw logits for the correlations."""
    params = {"temperature": 4.0, "strong_view": strong_view, "gamma": 1.0}
    standardized, zs, zt, y = logit_setup("mlkd", {**params, "logit_standardization": True}, batch=7)
    plain, *_ = logit_setup("mlkd", params, batch=7)
    torch.manual_seed(1)
    strong = (3 * torch.randn(7, 7), 3 * torch.randn(7, 7))
    terms = run_terms(standardized, zs, zt, y, strong=strong)
    # the correlation terms are those of MLKD without standardisation
    raw = run_terms(plain, zs, zt, y, strong=strong)
    for name in ("mlkd_batch", "mlkd_class"):
        assert terms[name].item() == pytest.approx(raw[name].item(), rel=1e-6)
    # the instance terms are those of MLKD without standardisation on z-scored logits
    z_strong = (standardize(strong[0]), standardize(strong[1]))
    on_z_scores = run_terms(plain, standardize(zs), standardize(zt), y, strong=z_strong)
    instance_names = ["mlkd_instance"] + (["mlkd_instance_strong"] if strong_view else [])
    for name in instance_names:
        assert terms[name].item() == pytest.approx(on_z_scores[name].item(), rel=1e-5)
    if strong_view:  # the second cross-entropy reads the raw strong-view logits
        assert terms["mlkd_ce_strong"].item() == pytest.approx(raw["mlkd_ce_strong"].item(), rel=1e-6)
    # a per-sample shift and scale of both networks' logits: the instance terms do not move (z-scores), the
    # correlation terms do (softmax of the raw logits); the teacher's confidence ranking, hence the masks, is kept
    scale, shift = torch.linspace(0.5, 2.0, 7)[:, None], torch.linspace(-3.0, 3.0, 7)[:, None]
    moved = run_terms(standardized, scale * zs + shift, scale * zt + shift, y, strong=strong)
    for name in instance_names:
        assert moved[name].item() == pytest.approx(terms[name].item(), rel=1e-4)
    for name in ("mlkd_batch", "mlkd_class"):
        assert abs(moved[name].item() - terms[name].item()) > 1e-3 * abs(terms[name].item())


def ctkd_temperature(theta):
    return 1.0 + 20.0 * torch.sigmoid(theta)


@pytest.mark.parametrize("name", KD_ON_TOP_LOGIT_METHODS)
def test_ctkd_learns_the_kd_temperature_against_the_student_on_a_cosine_curriculum(name):
    method, zs, zt, y = kd_like(name, {"ctkd": True})
    assert method.kd_temperature().item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)
    method.begin_epoch(5)
    assert method.ctkd_lambda.item() == pytest.approx(-0.5, abs=1e-7)  # half-way from 0 to -1 over 10 epochs
    loss = run_terms(method, zs, zt, y)["kd"]
    loss.backward()
    theta = method.ctkd_theta.detach().clone().requires_grad_(True)
    plain = kd_loss(zs.detach(), zt, ctkd_temperature(theta))
    (plain_grad,) = torch.autograd.grad(plain, theta)
    assert method.ctkd_theta.grad.item() == pytest.approx(-0.5 * plain_grad.item(), rel=1e-5)
    # the student's gradient is the ordinary one at the current temperature
    zs2 = zs.detach().clone().requires_grad_(True)
    kd_loss(zs2, zt, ctkd_temperature(method.ctkd_theta.detach())).backward()
    torch.testing.assert_close(zs.grad, zs2.grad)
    assert any(p is method.ctkd_theta for p in method.trainable_parameters())  # the engine's SGD updates it


def test_ctkd_curriculum_follows_the_official_cosine_decay():
    values = [cosine_curriculum(e, 0.0, -1.0, 10) for e in (0, 1, 5, 10, 240)]
    assert values[0] == 0.0 and values[3] == -1.0 and values[4] == -1.0
    assert values[1] == pytest.approx((math.cos(math.pi / 10) + 1) / 2 - 1)
    assert values[2] == pytest.approx(-0.5)


def test_ctkd_and_standardization_compose_in_dkd():
    method, zs, zt, y = logit_setup("dkd", {"ctkd": True, "logit_standardization": True, "warmup_epochs": 0})
    T = ctkd_temperature(torch.tensor(1.0)).item()
    tckd, nckd = np_dkd(standardize(zs).detach().double().numpy(), standardize(zt).double().numpy(), y.numpy(), T)
    terms = run_terms(method, zs, zt, y)
    assert terms["dkd"].item() == pytest.approx(tckd + 8 * nckd, rel=1e-4)
    method.begin_epoch(10)
    terms = run_terms(method, zs, zt, y)
    terms["dkd"].backward()
    assert method.ctkd_theta.grad.item() != 0


def test_modifier_values_are_checked_by_name():
    with pytest.raises(ValueError, match="logit_standardization"):
        check_method_params("dkd", {"logit_standardization": "yes"}, "methods.dkd")
    with pytest.raises(ValueError, match="dist.*no parameter 'ctkd'"):
        check_method_params("dist", {"ctkd": True}, "methods.dist")


# ---------------------------------------------------------------- training


@pytest.mark.parametrize(
    "name, params",
    [
        ("dkd", {"warmup_epochs": 1}),
        ("dkd", {"warmup_epochs": 1, "logit_standardization": True, "ctkd": True}),
        ("dist", {}),
        ("mlkd", {"logit_standardization": True}),
        ("reviewkd", {"warmup_epochs": 1}),
    ],
)
def test_a_few_steps_lower_the_distillation_loss(name, params):
    t, s, images, labels = networks(batch=16)
    method = build_method(name, {"gamma": 0.0, **params}, method_context(t, s, images))
    method.begin_epoch(1)
    parameters = list(s.parameters()) + list(method.trainable_parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9)
    losses = []
    with torch.no_grad():
        teacher = t(images, with_features=True)
    for _ in range(8):
        strong = None
        if method.caps.strong_view:  # a second view: the same images upside down
            with torch.no_grad():
                strong_teacher = t(images.flip(2), with_features=True)
            strong = View(images.flip(2), s(images.flip(2), with_features=True), strong_teacher)
        terms = method(s(images, with_features=True), teacher, Batch(images, labels, torch.arange(16), strong))
        total = sum(v for k, v in terms.items() if "ce" not in k.split("_"))
        losses.append(total.item())
        optimizer.zero_grad()
        method.backward(terms)
        optimizer.step()
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_mlkd_median_is_numpys_50th_percentile(n):
    from afdistill.methods.mlkd import median

    values = torch.randn(n)
    assert median(values).item() == pytest.approx(float(np.percentile(values.numpy(), 50)), rel=1e-6)
