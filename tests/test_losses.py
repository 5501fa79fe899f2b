"""Loss values against independent computations written here from the papers' formulas."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from afdistill.methods import Batch, Context, build_method, check_method_params, dry_run, kd_loss, method_defaults
from afdistill.methods.maps import energy_and_mean
from afdistill.models import Features, create_model


def test_kd_is_hintons_temperature_scaled_kl():
    torch.manual_seed(0)
    s, t, T = torch.randn(5, 7), torch.randn(5, 7), 4.0
    p_s, p_t = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    expected = sum(float((p_t[b] * (p_t[b] / p_s[b]).log()).sum()) for b in range(5)) * T * T / 5
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-5)


def _features(maps):
    pooled = maps[-1].mean((2, 3))
    return Features(logits=torch.zeros(maps[0].shape[0], 3), blocks=maps, stages=maps, stem=maps[0], pooled=pooled)


def _synthetic_context(student_maps, teacher_maps):
    student = SimpleNamespace(afd_candidates=list(range(len(student_maps))))
    teacher = SimpleNamespace(afd_candidates=list(range(len(teacher_maps))))
    return Context(
        student=student,
        teacher=teacher,
        student_sample=_features(student_maps),
        teacher_sample=_features(teacher_maps),
        num_classes=3,
        train_labels=torch.arange(100) % 3,
        batch_size=4,
    )


def _bn_train(x, bn):
    mean, var = x.mean(0), x.var(0, unbiased=False)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias


def _value(map_, size):
    energy = (map_**2).mean(0)  # C x H x W -> H x W
    h, w = energy.shape
    th, tw = size
    pooled = torch.empty(th, tw)
    for i in range(th):  # adaptive average pooling, cell by cell
        for j in range(tw):
            r0, r1 = (i * h) // th, -(-((i + 1) * h) // th)
            c0, c1 = (j * w) // tw, -(-((j + 1) * w) // tw)
            pooled[i, j] = energy[r0:r1, c0:c1].mean()
    flat = pooled.flatten()
    return flat / flat.norm().clamp_min(1e-12)


def independent_afd(method, student_maps, teacher_maps):
    """Eq. 1-3 as the official code computes them, one scalar at a time."""
    att = method.attention
    B, T, S, d = student_maps[0].shape[0], len(teacher_maps), len(student_maps), att.qk_dim
    q = [_bn_train(att.query[t].linear(teacher_maps[t].mean((2, 3))), att.query[t].bn) for t in range(T)]
    k = [torch.relu(_bn_train(att.key[s].linear(student_maps[s].mean((2, 3))), att.key[s].bn)) for s in range(S)]
    keys = torch.stack(k, 1).reshape(B * S, d)
    bk = _bn_train(att.bilinear.linear(keys), att.bilinear.bn).view(B, S, T, d)
    total = 0.0
    for t in range(T):
        size = teacher_maps[t].shape[2:]
        for b in range(B):
            logits = torch.stack([(bk[b, s, t] @ q[t][b] + att.p_t[t] @ att.p_s[s]) / math.sqrt(d) for s in range(S)])
            alpha = torch.softmax(logits, 0)
            v_t = _value(teacher_maps[t][b], size)
            for s in range(S):
                v_s = _value(student_maps[s][b], size)
                total = total + alpha[s] * ((v_s - v_t) ** 2).mean() / B
    return total


def _maps(generator, batch, specs):
    return [torch.randn(batch, c, h, h, generator=generator).relu() for c, h in specs]


def test_afd_loss_matches_an_independent_computation():
    generator = torch.Generator().manual_seed(0)
    # Student maps both larger and smaller than teacher maps: pooled down and repeated up.
    student = _maps(generator, 4, [(3, 8), (5, 4), (6, 2)])
    teacher = _maps(generator, 4, [(4, 8), (4, 8), (7, 4), (2, 2)])
    torch.manual_seed(0)
    method = build_method("afd", {"alpha": 0.0, "beta": 1.0, "qk_dim": 8}, _synthetic_context(student, teacher))
    terms = method(_features(student), _features(teacher), Batch(None, torch.zeros(4, dtype=torch.long), None))
    assert terms["afd"].item() == pytest.approx(independent_afd(method, student, teacher).item(), rel=1e-5)
    # beta scales the term; the attention of the batch is kept for the epoch's links record
    method.beta = 50.0
    terms = method(_features(student), _features(teacher), Batch(None, torch.zeros(4, dtype=torch.long), None))
    assert terms["afd"].item() == pytest.approx(50 * independent_afd(method, student, teacher).item(), rel=1e-5)
    attention = method.epoch_summary()["attention"]
    assert attention.shape == (4, 3) and torch.allclose(attention.sum(1), torch.ones(4))


def test_afd_with_fixed_links_weights_the_same_distances():
    generator = torch.Generator().manual_seed(1)
    student = _maps(generator, 3, [(3, 8), (5, 4)])
    teacher = _maps(generator, 3, [(4, 8), (6, 4), (6, 4)])
    links = torch.softmax(torch.randn(3, 2, generator=generator), 1)
    context = _synthetic_context(student, teacher)
    context.artifact = {"alpha": links.tolist(), "teacher": "t", "student": "s"}
    method = build_method("afd_pretrained", {"alpha": 0.0, "beta": 1.0}, context)
    got = method(_features(student), _features(teacher), Batch(None, torch.zeros(3, dtype=torch.long), None))["afd"]
    expected = 0.0
    for t, t_map in enumerate(teacher):
        for b in range(3):
            v_t = _value(t_map[b], t_map.shape[2:])
            for s, s_map in enumerate(student):
                expected += links[t, s] * ((_value(s_map[b], t_map.shape[2:]) - v_t) ** 2).mean() / 3
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    context.artifact = {"alpha": [[1.0, 0.0]], "teacher": "t", "student": "s"}
    with pytest.raises(ValueError, match=r"\(1, 2\).*needs \(3, 2\)"):
        build_method("afd_pretrained", {}, context)


@pytest.mark.parametrize("name", ["kd", "afd"])
def test_gradients_reach_student_and_method_but_not_the_teacher(name):
    torch.manual_seed(0)
    teacher, student = create_model("resnet14", 10).eval(), create_model("resnet8", 10)
    teacher.requires_grad_(False)
    images, labels = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    context = Context(
        student, teacher, dry_run(student, images[:2]), dry_run(teacher, images[:2]), 10, torch.arange(100) % 10, 8
    )
    method = build_method(name, {}, context)
    with torch.inference_mode():
        teacher_out = teacher(images, with_features=True)
    terms = method(student(images, with_features=True), teacher_out, Batch(images, labels, torch.arange(8)))
    assert set(terms) == {"ce", "kd"} | ({"afd"} if name == "afd" else set())
    sum(terms.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None for p in method.parameters())
    # A bias followed by training-mode BatchNorm has zero gradient: BN subtracts it again.
    inert = {"attention.bilinear.linear.bias"}
    assert all(p.grad.abs().sum() > 0 for name, p in method.named_parameters() if name not in inert)
    assert all(p.grad is None for p in teacher.parameters())


def test_method_hyper_parameters_are_checked_by_name():
    assert method_defaults("afd") == {
        "alpha": 0.9,
        "gamma": 1.0,
        "temperature": 4.0,
        "beta": 200.0,
        "qk_dim": 128,
        "linking": "afd",
        "distance": "l2",
        "pooling": "a2",
        "teacher_candidates": 0,
        "student_candidates": 0,
        "teacher_selection": "interval",
        "student_selection": "interval",
    }
    assert method_defaults("vanilla") == {}
    # checked where a grid (or `afdistill train`'s spec) comes in, before any job builds the method
    with pytest.raises(
        ValueError,
        match="methods.afd.delta: .*allowed: alpha, beta, distance, gamma, linking, pooling, "
        "qk_dim, student_candidates, student_selection, teacher_candidates, "
        "teacher_selection, temperature",
    ):
        check_method_params("afd", {"delta": 1}, "methods.afd")
    with pytest.raises(ValueError, match="methods.afd.qk_dim: 'big' is not allowed; expected an integer"):
        check_method_params("afd", {"qk_dim": "big"}, "methods.afd")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("outputs", ["both", "energy", "mean"])
def test_fused_energy_and_mean_has_autograds_values_and_gradients(dtype, outputs):
    """AFD reads maps in the network's precision; the fused reductions must equal fp32 autograd on a copy."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, 4, 6, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
    w_energy, w_mean = torch.randn(3, 1, 4, 6, generator=generator), torch.randn(3, 5, generator=generator)

    def objective(energy, mean):
        return (energy * w_energy).sum() * (outputs != "mean") + (mean * w_mean).sum() * (outputs != "energy")

    fused = maps.clone().requires_grad_(True)
    energy, mean = energy_and_mean(fused)
    objective(energy, mean).backward()

    plain = maps.clone().requires_grad_(True)
    full = plain.float()
    expected_energy, expected_mean = full.pow(2).mean(1, keepdim=True), full.mean((2, 3))
    objective(expected_energy, expected_mean).backward()

    assert energy.dtype == mean.dtype == torch.float32
    torch.testing.assert_close(energy, expected_energy)
    torch.testing.assert_close(mean, expected_mean)
    assert fused.grad.dtype == dtype
    torch.testing.assert_close(
        fused.grad.float(), plain.grad.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-6
    )


@pytest.mark.parametrize("training", [True, False])
def test_afd_bilinear_scores_equal_the_mapped_keys_of_the_official_code(training):
    # The folded computation must give the Linear+BN mapped keys' scores, their gradients and BN's running stats.
    torch.manual_seed(0)
    from afdistill.methods.afd import AFDAttention

    fast = AFDAttention([4, 6, 6], [3, 5], qk_dim=8)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for parameter in fast.bilinear.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
        fast.bilinear.bn.running_mean.normal_()
        fast.bilinear.bn.running_var.uniform_(0.5, 2.0)
    plain = copy.deepcopy(fast)
    fast.train(training), plain.train(training)
    key = torch.randn(5, 2, 8).relu().requires_grad_()
    query = torch.randn(5, 3, 8, requires_grad=True)
    got = fast.bilinear_scores(key, query)
    mapped = plain.bilinear(key.reshape(10, 8)).view(5, 2, 3, 8)
    expected = torch.einsum("bstd,btd->bts", mapped, query)
    assert torch.allclose(got, expected, atol=1e-5)
    weights = torch.randn(5, 3, 2)
    got_grads = torch.autograd.grad((got * weights).sum(), [key, query, *fast.bilinear.parameters()])
    expected_grads = torch.autograd.grad((expected * weights).sum(), [key, query, *plain.bilinear.parameters()])
    for a, b in zip(got_grads, expected_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    for name, buffer in plain.bilinear.bn.named_buffers():
        assert torch.allclose(getattr(fast.bilinear.bn, name).float(), buffer.float(), atol=1e-5), name
