"""FT and DML: values against line-by-line re-implementations of the reference formulas, gradients where they
belong, the heads stage feeding FT its paraphraser, and tiny real networks trained by the engine."""

import pytest
import torch
import torch.nn.functional as F
from conftest import method_context
from torch import nn

from afdistill.methods import (
    Batch,
    Context,
    build_method,
    check_method_fit,
    check_method_params,
    method_class,
    method_defaults,
)
from afdistill.models import create_model

DIGITS = {"num_classes": 10, "image_size": 16, "n_train": 1437}


def networks(teacher="resnet20", student="resnet8", classes=10, size=16, batch=8, seed=0):
    torch.manual_seed(seed)
    t, s = create_model(teacher, classes).eval(), create_model(student, classes)
    t.requires_grad_(False)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    return t, s, images, labels


def teacher_features(t, images):
    with torch.inference_mode():  # as the engine computes them
        return t(images, with_features=True)


def refused(name, params, **fit):
    with pytest.raises(ValueError) as error:
        check_method_fit(name, params, f"methods.{name}", **fit)
    return str(error.value)


# ---------------------------------------------------------------- FT: RepDistiller's formulas, line by line


def repdistiller_factor_loss(f_s, f_t, p1=2, p2=1):
    """RepDistiller's FactorTransfer.factor_loss (distiller_zoo/FT.py), step by step."""
    s_H, t_H = f_s.shape[2], f_t.shape[2]
    if s_H > t_H:
        f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
    elif s_H < t_H:
        f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))

    def factor(f):
        return F.normalize(f.pow(p1).mean(1).view(f.size(0), -1))

    if p2 == 1:
        return (factor(f_s) - factor(f_t)).abs().mean()
    return (factor(f_s) - factor(f_t)).pow(p2).mean()


def repdistiller_paraphraser(x, paraphraser):
    """RepDistiller's Paraphraser.forward (use_bn=False) with our module's weights: (factor, reconstruction)."""
    convs = [m for m in paraphraser.encoder if isinstance(m, nn.Conv2d)]
    deconvs = [m for m in paraphraser.decoder if isinstance(m, nn.ConvTranspose2d)]
    out = x
    for conv in convs:
        out = F.leaky_relu(F.conv2d(out, conv.weight, conv.bias, 1, 1), 0.1)
    factor = out
    for deconv in deconvs:
        out = F.leaky_relu(F.conv_transpose2d(out, deconv.weight, deconv.bias, 1, 1), 0.1)
    return factor, out


def repdistiller_translator(x, translator):
    """RepDistiller's Translator.forward (use_bn=True, training mode) with our module's weights."""
    convs = [m for m in translator.encoder if isinstance(m, nn.Conv2d)]
    norms = [m for m in translator.encoder if isinstance(m, nn.BatchNorm2d)]
    out = x
    for conv, bn in zip(convs, norms):
        out = F.conv2d(out, conv.weight, conv.bias, 1, 1)
        mean, var = out.mean((0, 2, 3), keepdim=True), out.var((0, 2, 3), unbiased=False, keepdim=True)
        out = (out - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        out = F.leaky_relu(out, 0.1)
    return out


@pytest.mark.parametrize("s_size,t_size", [(4, 4), (8, 4), (4, 8)])
def test_factor_loss_is_repdistillers(s_size, t_size):
    from afdistill.methods.ft import factor_loss

    torch.manual_seed(0)
    f_s, f_t = torch.randn(5, 6, s_size, s_size), torch.randn(5, 3, t_size, t_size)
    assert factor_loss(f_s, f_t).item() == pytest.approx(repdistiller_factor_loss(f_s, f_t).item(), rel=1e-6)


def test_paraphraser_and_translator_have_repdistillers_layers():
    from afdistill.methods.ft import Paraphraser, Translator

    paraphraser, translator = Paraphraser(64, 0.5), Translator(16, 64, 0.5)

    def shapes(module, kind):
        return [tuple(m.weight.shape) for m in module.modules() if isinstance(m, kind)]

    assert shapes(paraphraser.encoder, nn.Conv2d) == [(64, 64, 3, 3), (32, 64, 3, 3), (32, 32, 3, 3)]
    assert shapes(paraphraser.decoder, nn.ConvTranspose2d) == [(32, 32, 3, 3), (32, 64, 3, 3), (64, 64, 3, 3)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paraphraser.modules())  # use_bn=False
    assert shapes(translator, nn.Conv2d) == [(16, 16, 3, 3), (32, 16, 3, 3), (32, 32, 3, 3)]
    assert [m.num_features for m in translator.modules() if isinstance(m, nn.BatchNorm2d)] == [16, 32, 32]
    assert all(m.negative_slope == 0.1 for m in translator.modules() if isinstance(m, nn.LeakyReLU))


def test_ft_paraphraser_loss_is_the_reconstruction_mse_of_the_teachers_last_stage():
    t, _, images, labels = networks("resnet20")
    method = build_method("ft_paraphraser", {"k": 0.5}, method_context(t, None, images))
    ft = teacher_features(t, images)
    terms = method(None, ft, Batch(images, labels, torch.arange(8)))
    assert set(terms) == {"ft_paraphraser"}
    target = ft.stages[-1].clone()  # RepDistiller's feat_t[-2]
    _, reconstruction = repdistiller_paraphraser(target, method.paraphraser)
    expected = nn.MSELoss()(reconstruction, target)
    assert terms["ft_paraphraser"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ft_paraphraser_trains_only_the_paraphraser():
    t, _, images, labels = networks("resnet20")
    method = build_method("ft_paraphraser", {}, method_context(t, None, images))
    assert [id(p) for p in method.trainable_parameters()] == [id(p) for p in method.paraphraser.parameters()]
    assert method.caps.pre_stage is None and method_class("ft_paraphraser").capabilities({}).needs_teacher
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9)
    ft = teacher_features(t, images)
    before = [p.clone() for p in method.paraphraser.parameters()]
    losses = []
    for _ in range(6):
        terms = method(None, ft, Batch(images, labels, torch.arange(8)))
        optimizer.zero_grad()
        method.backward(terms)
        assert all(p.grad is not None for p in method.paraphraser.parameters())
        optimizer.step()
        losses.append(terms["ft_paraphraser"].item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, method.paraphraser.parameters()))
    assert all(p.grad is None for p in t.parameters())


def heads_state(t, images, k=0.5):
    """What the heads stage leaves for FT: the ft_paraphraser method's state dict."""
    torch.manual_seed(1)
    return build_method("ft_paraphraser", {"k": k}, method_context(t, None, images)).state_dict()


def test_ft_refuses_to_build_without_the_pretrained_paraphraser():
    t, s, images, _ = networks()
    with pytest.raises(ValueError, match="ft needs the paraphraser pretrained on the teacher"):
        build_method("ft", {}, method_context(t, s, images))


def test_ft_refuses_a_paraphraser_pretrained_with_another_rate():
    t, s, images, _ = networks()
    with pytest.raises(ValueError, match="does not fit this teacher and k = 0.5"):
        build_method("ft", {"k": 0.5}, method_context(t, s, images, artifact=heads_state(t, images, k=0.25)))


def test_ft_reads_the_heads_stage_and_matches_repdistillers_factor_transfer():
    t, s, images, labels = networks("resnet20", "resnet8")
    state = heads_state(t, images)
    method = build_method("ft", {"beta": 200.0}, method_context(t, s, images, artifact=state))
    cls = method_class("ft")
    caps = cls.capabilities({})
    assert (caps.pre_stage, caps.heads.method, method.caps.pre_stage) == ("heads", "ft_paraphraser", "heads")
    assert set(caps.heads.shared_params) <= set(method_defaults("ft_paraphraser"))  # the heads job accepts them
    assert (cls.label, method.kd.alpha, method.gamma) == ("FT", 0.0, 1.0)  # RepDistiller: -a 0 -b 200
    for key, value in method.paraphraser.state_dict().items():
        assert torch.equal(value, state[f"paraphraser.{key}"])
    trainable = {id(p) for p in method.trainable_parameters()}
    assert trainable == {id(p) for p in method.translator.parameters()}
    method.train()
    assert not method.paraphraser.training and method.translator.training

    ft = teacher_features(t, images)
    fs = s(images, with_features=True)
    terms = method(fs, ft, Batch(images, labels, torch.arange(8)))
    assert set(terms) == {"ce", "ft"}
    factor_t, _ = repdistiller_paraphraser(ft.stages[-1].clone(), method.paraphraser)
    factor_s = repdistiller_translator(fs.stages[-1], method.translator)
    expected = 200.0 * repdistiller_factor_loss(factor_s, factor_t)
    assert terms["ft"].item() == pytest.approx(expected.item(), rel=1e-5)

    method.backward(terms)
    assert all(p.grad is None for p in method.paraphraser.parameters())
    assert all(p.grad is not None for p in method.translator.parameters())
    assert all(p.grad is not None for p in s.parameters())
    assert all(p.grad is None for p in t.parameters())


def test_ft_fit_checks_refuse_a_rate_that_leaves_no_factor_channel():
    check_method_fit("ft", {}, "methods.ft", student="resnet8", teacher="resnet20", **DIGITS)
    check_method_fit("ft", {}, "methods.ft", student="resnet8", teacher="wrn_16_2", **DIGITS)  # another width
    check_method_fit("ft_paraphraser", {"k": 0.5}, "heads", student=None, teacher="resnet20", **DIGITS)
    message = refused("ft", {"k": 0.01}, student="resnet8", teacher="resnet20", **DIGITS)
    assert message.startswith("methods.ft.k: 0.01 is not allowed for resnet20")
    assert refused("ft_paraphraser", {"k": 0.01}, teacher="resnet20", student=None, **DIGITS).startswith(
        "methods.ft_paraphraser.k: 0.01 is not allowed"
    )
    with pytest.raises(ValueError, match="methods.ft.k: 0 is not allowed; expected a number > 0"):
        check_method_params("ft", {"k": 0}, "methods.ft")


# ---------------------------------------------------------------- DML


def dml_setup(peer=None, seed=0):
    _, s, images, labels = networks(student="resnet8", seed=seed)
    method = build_method("dml", {} if peer is None else {"peer": peer}, method_context(None, s, images))
    return s, method, images, labels


def test_dml_needs_no_teacher_and_owns_an_independently_initialised_peer():
    s, method, images, labels = dml_setup()
    cls = method_class("dml")
    assert not cls.capabilities({}).needs_teacher and cls.capabilities({}).pre_stage is None and cls.label == "DML"
    assert method.peer.arch == "resnet8" and method.peer is not s
    assert any(not torch.equal(a, b) for a, b in zip(s.parameters(), method.peer.parameters()))
    assert {id(p) for p in method.trainable_parameters()} == {id(p) for p in method.peer.parameters()}
    method.eval()
    assert not method.peer.training
    method.train()
    assert method.peer.training
    _, other, _, _ = dml_setup(peer="wrn_16_2")
    assert other.peer.arch == "wrn_16_2"


def test_dml_loss_is_both_cross_entropies_and_both_kl_directions():
    s, method, images, labels = dml_setup()
    fs = s(images, with_features=True)
    terms = method(fs, None, Batch(images, labels, torch.arange(8)))
    assert set(terms) == {"ce", "dml", "peer_ce", "peer_dml"}
    with torch.no_grad():
        peer_logits = method.peer(images)  # BN in training mode: the same batch statistics
        p_s, p_p = F.softmax(fs.logits, 1), F.softmax(peer_logits, 1)

        def kl(q, p):
            return (q * (q.log() - p.log())).sum(1).mean()  # KL(q || p), the paper's eq. 3 per image

        ce_s, ce_p = F.cross_entropy(fs.logits, labels), F.cross_entropy(peer_logits, labels)
    assert terms["ce"].item() == pytest.approx(ce_s.item(), rel=1e-5)
    assert terms["peer_ce"].item() == pytest.approx(ce_p.item(), rel=1e-5)
    assert terms["dml"].item() == pytest.approx(kl(p_p, p_s).item(), rel=1e-4)
    assert terms["peer_dml"].item() == pytest.approx(kl(p_s, p_p).item(), rel=1e-4)
    total = sum(terms.values()).item()
    assert total == pytest.approx((ce_s + ce_p + kl(p_p, p_s) + kl(p_s, p_p)).item(), rel=1e-5)


def test_dml_each_network_gets_only_its_own_objectives_gradient():
    s, method, images, labels = dml_setup()
    fs = s(images, with_features=True)
    method.backward(method(fs, None, Batch(images, labels, torch.arange(8))))
    student_params, peer_params = list(s.parameters()), list(method.peer.parameters())
    got_s, got_p = [p.grad.clone() for p in student_params], [p.grad.clone() for p in peer_params]

    def kl(q_logits, p_logits):  # KL(q || p), both arguments differentiable
        q = F.log_softmax(q_logits, 1)
        return (q.exp() * (q - F.log_softmax(p_logits, 1))).sum(1).mean()

    s_logits, p_logits = s(images), method.peer(images)
    own_s = F.cross_entropy(s_logits, labels) + kl(p_logits.detach(), s_logits)  # the paper's eq. 4
    own_p = F.cross_entropy(p_logits, labels) + kl(s_logits.detach(), p_logits)  # eq. 5
    want_s = torch.autograd.grad(own_s, student_params, retain_graph=True)
    want_p = torch.autograd.grad(own_p, peer_params, retain_graph=True)
    for got, want in zip(got_s + got_p, list(want_s) + list(want_p)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # without the stop-gradients the student would also follow the peer's mimicry term: a different gradient
    undetached = torch.autograd.grad(
        F.cross_entropy(s_logits, labels) + kl(p_logits, s_logits) + kl(s_logits, p_logits), student_params
    )
    assert any(not torch.allclose(g, u, rtol=1e-3, atol=1e-6) for g, u in zip(got_s, undetached))


def test_dml_one_optimiser_step_updates_both_networks_and_records_the_peers_accuracy():
    s, method, images, labels = dml_setup()
    trainable = list(s.parameters()) + list(method.trainable_parameters())
    optimizer = torch.optim.SGD(trainable, lr=0.05, momentum=0.9, weight_decay=5e-4)
    before_s, before_p = [p.clone() for p in s.parameters()], [p.clone() for p in method.peer.parameters()]
    method.train()
    method.begin_epoch(1)
    assert method.epoch_summary() == {}
    for _ in range(2):
        terms = method(s(images, with_features=True), None, Batch(images, labels, torch.arange(8)))
        optimizer.zero_grad()
        method.backward(terms)
        optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before_s, s.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_p, method.peer.parameters()))
    summary = method.epoch_summary()
    assert set(summary) == {"peer_train_top1"} and 0.0 <= summary["peer_train_top1"] <= 1.0
    method.begin_epoch(2)
    assert method.epoch_summary() == {}


def test_dml_refuses_an_unknown_peer_architecture_naming_the_key():
    check_method_fit("dml", {}, "methods.dml", student="resnet8", teacher=None, **DIGITS)
    check_method_fit("dml", {"peer": "wrn_16_2"}, "methods.dml", student="resnet8", teacher=None, **DIGITS)
    message = refused("dml", {"peer": "resnet9"}, student="resnet8", teacher=None, **DIGITS)
    assert message.startswith("methods.dml.peer: 'resnet9' is not allowed; expected one of")
    assert "'resnet8'" in message and "or None" in message
    with pytest.raises(ValueError, match=r"^methods\.dml\.peer: 5 is not allowed"):
        check_method_params("dml", {"peer": 5}, "methods.dml")
    # the class's own fit check, on the names it is given (whatever registry it sees)
    student = create_model("resnet8", 10)
    dummy = Context(student, None, None, None, 10, None, 8)
    with pytest.raises(ValueError, match=r"^grid\.dml\.peer: 'nonet' is not allowed"):
        method_class("dml").check_fit({"peer": "nonet", "beta": 1.0, "gamma": 1.0}, dummy, "grid.dml", 100)
    student.arch = "unregistered"
    with pytest.raises(ValueError, match=r"^grid\.dml\.peer: None \(the student's architecture, 'unregistered'\)"):
        method_class("dml").check_fit({"peer": None}, dummy, "grid.dml", 100)


# ---------------------------------------------------------------- through the engine and the runner


def test_the_heads_stage_pretrains_fts_paraphraser_and_dml_trains_both_networks(small_data, tmp_path):
    """Teacher, heads (ft_paraphraser), FT student reading the heads job's model.pt, and DML, one epoch each."""
    from afdistill.engine import CHECKPOINT, train
    from afdistill.kinds.heads import read as read_heads
    from afdistill.spec import JobSpec, Schedule

    quiet = lambda *a: None  # noqa: E731
    schedule = Schedule(epochs=1, batch_size=50, lr=0.05, lr_decay_epochs=())
    common = dict(grid="test", dataset="digits", seed=0, schedule=schedule, device="cpu")
    train(
        JobSpec(kind="teacher", arch="resnet8", method="vanilla", run="teacher", **common),
        small_data,
        tmp_path / "teacher",
        log=quiet,
    )
    teacher = tmp_path / "teacher" / "model.pt"

    heads_spec = JobSpec(
        kind="heads",
        arch=None,
        teacher="resnet8",
        method="ft_paraphraser",
        run="ft",
        method_params={"k": 0.5},
        **common,
    )
    heads = train(heads_spec, small_data, tmp_path / "heads", teacher, log=quiet)
    assert "loss_ft_paraphraser" in heads.record["history"][0] and "train_top1" not in heads.record["history"][0]

    ft_spec = JobSpec(
        kind="student", arch="resnet8", teacher="resnet8", method="ft", run="ft", method_params={"k": 0.5}, **common
    )
    artifact = read_heads(str(tmp_path / "heads" / "model.pt"), ft_spec)
    student = train(ft_spec, small_data, tmp_path / "ft", teacher, artifact=artifact, log=quiet)
    for key, value in student.method.paraphraser.state_dict().items():  # frozen through training
        assert torch.equal(value, artifact[f"paraphraser.{key}"].to(value.device))
    assert {"loss_ce", "loss_ft"} <= set(student.record["history"][0])

    dml_spec = JobSpec(kind="student", arch="resnet8", teacher=None, method="dml", run="dml", **common)
    dml = train(dml_spec, small_data, tmp_path / "dml", log=quiet)
    assert {"loss_ce", "loss_dml", "loss_peer_ce", "loss_peer_dml"} <= set(dml.record["history"][0])
    assert 0.0 <= dml.record["summaries"][0]["peer_train_top1"] <= 1.0
    saved = torch.load(tmp_path / "dml" / CHECKPOINT, weights_only=False)["method"]
    assert any(key.startswith("peer.") for key in saved)  # the peer resumes with the job
