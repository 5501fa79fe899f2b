"""AFD's ablation options (candidates, linking, distance, pooling) against independent computations."""

import numpy as np
import pytest
import torch
from conftest import method_context
from test_losses import _features, _maps, _synthetic_context, independent_afd

from afdistill.methods import Batch, build_method, check_method_params, dry_run
from afdistill.methods.afd import ordered_links, random_links, select_candidates
from afdistill.methods.maps import channel_pool
from afdistill.models import create_model
from afdistill.models.features import block_names


def numpy_pool(maps, pooling):
    """phi^C of the paper's Table 7 on B x C x H x W: (1/C) sum_c |h_c|^p, or max_c |h_c|."""
    if pooling == "max":
        return np.abs(maps).max(1)
    p = {"a1": 1, "a2": 2}[pooling]
    return (np.abs(maps) ** p).sum(1) / maps.shape[1]


def numpy_resize(map_, size):
    """Average pooling by an integer factor or repetition by one (C-free H x W)."""
    h, th = map_.shape[0], size[0]
    if h >= th:
        f = h // th
        return map_.reshape(th, f, th, f).mean((1, 3))
    f = th // h
    return np.repeat(np.repeat(map_, f, 0), f, 1)


def numpy_distance(a, b, distance):
    """Between two pooled maps of equal size (teacher a, student b), written out from the module docstring."""
    v_t, v_s = a.ravel() / np.linalg.norm(a), b.ravel() / np.linalg.norm(b)
    if distance == "l2":
        return np.mean((v_t - v_s) ** 2)
    if distance == "l1":
        return np.mean(np.abs(v_t - v_s))
    if distance == "cosine":
        return 1 - float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
    p_t, p_s = a.ravel() / a.sum(), b.ravel() / b.sum()  # the same distributions, from the unnormalised maps
    present = p_t > 0
    return np.sum(p_t[present] * np.log(p_t[present] / np.maximum(p_s[present], 1e-8)))


@pytest.mark.parametrize("pooling", ["a2", "a1", "max"])
def test_channel_pooling_is_the_papers_phi_c(pooling):
    maps = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0))  # signed: |h| matters
    got = channel_pool(maps, pooling)
    assert got.shape == (2, 1, 3, 4)
    np.testing.assert_allclose(got[:, 0].numpy(), numpy_pool(maps.numpy(), pooling), rtol=1e-6)


@pytest.mark.parametrize("distance", ["l2", "l1", "kl", "cosine"])
@pytest.mark.parametrize("pooling", ["a2", "a1", "max"])
def test_each_distance_and_pooling_equals_an_independent_loss(distance, pooling):
    generator = torch.Generator().manual_seed(2)
    student = _maps(generator, 3, [(3, 8), (5, 4), (6, 2)])  # pooled down to and repeated up to teacher sizes
    teacher = _maps(generator, 3, [(4, 8), (7, 4), (2, 2)])
    student[1][0, :, 1, 2] = 0.0  # a position where every channel is zero: p_s = 0 there for KL
    params = {"alpha": 0.0, "beta": 3.0, "linking": "ordered", "distance": distance, "pooling": pooling}
    method = build_method("afd", params, _synthetic_context(student, teacher))
    got = method(_features(student), _features(teacher), Batch(None, torch.zeros(3, dtype=torch.long), None))["afd"]
    expected = 0.0
    for t, s in enumerate([0, 1, 2]):  # ordered, T = S: t -> t
        for b in range(3):
            size = teacher[t].shape[2:]
            a = numpy_pool(teacher[t][b : b + 1].double().numpy(), pooling)[0]
            v = numpy_resize(numpy_pool(student[s][b : b + 1].double().numpy(), pooling)[0], size)
            expected += numpy_distance(a, v, distance) / 3
    assert got.item() == pytest.approx(3.0 * expected, rel=1e-5)
    assert np.isfinite(got.item())


@pytest.mark.parametrize("distance", ["l1", "kl", "cosine"])
def test_distances_weight_every_pair_by_the_attention_and_train_the_student(distance):
    torch.manual_seed(0)
    teacher, student = create_model("resnet14", 10).eval(), create_model("resnet8", 10)
    teacher.requires_grad_(False)
    images, labels = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    context = method_context(teacher, student, images, n_train=100)
    method = build_method("afd", {"alpha": 0.0, "beta": 1.0, "distance": distance}, context)
    fs, ft = student(images, with_features=True), teacher(images, with_features=True)
    terms = method(fs, ft, Batch(images, labels, torch.arange(6)))
    alpha = method.links(fs, ft).detach()
    pairs = torch.zeros(6, len(method.teacher_candidates), len(method.student_candidates), dtype=torch.float64)
    for t, ti in enumerate(method.teacher_candidates):
        a_all = numpy_pool(ft.blocks[ti].double().numpy(), "a2")
        for s, si in enumerate(method.student_candidates):
            v_all = numpy_pool(fs.blocks[si].detach().double().numpy(), "a2")
            for b in range(6):
                pairs[b, t, s] = numpy_distance(a_all[b], numpy_resize(v_all[b], a_all[b].shape), distance)
    expected = (pairs * alpha.double()).sum((1, 2)).mean()
    assert terms["afd"].item() == pytest.approx(expected.item(), rel=1e-4)
    terms["afd"].backward()
    assert all(
        torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in student.parameters() if p.grad is not None
    )
    assert all(p.grad is not None for p in method.attention.parameters())


def test_ordered_links_pair_the_same_relative_depth():
    assert ordered_links(9, 9) == list(range(9))
    assert ordered_links(27, 9) == [t // 3 for t in range(27)]
    assert ordered_links(3, 9) == [2, 5, 8]
    assert ordered_links(4, 6) == [1, 2, 4, 5]  # ceil((t+1) 6/4) - 1


def test_random_links_are_a_seeded_permutation_of_the_ordered_targets():
    links = random_links(9, 9, seed=4)
    assert sorted(links) == list(range(9))  # one-to-one
    assert links == random_links(9, 9, seed=4)
    assert any(random_links(9, 9, seed=s) != links for s in range(5, 8))
    many = random_links(27, 9, seed=1)
    assert sorted(many) == sorted(ordered_links(27, 9))  # every student gets three teachers, as in ordered


def test_interval_and_random_candidates_pick_what_they_claim():
    pool = list(range(27))
    assert select_candidates(pool, 0, "interval", 0, 1) == pool
    assert select_candidates(pool, 3, "interval", 0, 1) == [8, 17, 26]
    assert select_candidates(pool, 9, "interval", 0, 1) == [2, 5, 8, 11, 14, 17, 20, 23, 26]
    assert select_candidates(list(range(9)), 6, "interval", 0, 1) == [0, 2, 3, 5, 6, 8]
    assert select_candidates([1, 3, 5, 7], 2, "interval", 0, 1) == [3, 7]  # positions in the pool, not blocks
    chosen = select_candidates(pool, 9, "random", 3, 1)
    assert len(set(chosen)) == 9 and chosen == sorted(chosen) and set(chosen) <= set(pool)
    assert chosen == select_candidates(pool, 9, "random", 3, 1)
    assert chosen != select_candidates(pool, 9, "random", 4, 1)
    assert chosen != select_candidates(pool, 9, "random", 3, 2)  # teacher and student draws differ


def resnet_context(seed=0):
    torch.manual_seed(0)
    teacher, student = create_model("resnet56", 10).eval(), create_model("resnet20", 10)
    images = torch.randn(4, 3, 16, 16)
    return method_context(teacher, student, images, seed=seed), images


def test_the_method_records_its_candidates_and_fixed_links_by_name():
    context, images = resnet_context(seed=5)
    method = build_method("afd", {"teacher_candidates": 9, "linking": "ordered"}, context)
    assert method.teacher_candidates == [2, 5, 8, 11, 14, 17, 20, 23, 26]
    assert method.student_candidates == list(range(9))
    assert method.teacher_names == [
        "layer1.2",
        "layer1.5",
        "layer1.8",
        "layer2.2",
        "layer2.5",
        "layer2.8",
        "layer3.2",
        "layer3.5",
        "layer3.8",
    ]
    assert method.student_names[3] == "layer2.0"
    assert method.fixed_links[4] == ("layer2.5", "layer2.1")
    assert torch.equal(method.fixed_alpha, torch.eye(9))
    summary = method.epoch_summary()
    assert summary["links"][0] == ["layer1.2", "layer1.0"] and summary["teacher_candidates"][0] == 2
    assert "attention" not in summary and not any(True for _ in method.parameters())

    drawn = build_method("afd", {"teacher_candidates": 9, "teacher_selection": "random", "linking": "random"}, context)
    again = build_method("afd", {"teacher_candidates": 9, "teacher_selection": "random", "linking": "random"}, context)
    assert drawn.teacher_candidates == again.teacher_candidates and drawn.fixed_links == again.fixed_links
    rows = drawn.fixed_alpha.argmax(1).tolist()
    assert sorted(rows) == list(range(9)) and rows == random_links(9, 9, seed=5)
    assert [pair[1] for pair in drawn.fixed_links] == [drawn.student_names[s] for s in rows]
    with pytest.raises(ValueError, match=r"methods.afd.student_candidates: 12 candidates asked; .* has 9"):
        build_method("afd", {"student_candidates": 12}, context)
    # refused where the grid is checked, naming what is allowed; the method itself refuses it too
    with pytest.raises(
        ValueError, match=r"methods.afd.distance: 'l3' is not allowed; expected one of 'l2', 'l1', 'kl', 'cosine'"
    ):
        check_method_params("afd", {"distance": "l3"}, "methods.afd")
    with pytest.raises(ValueError, match=r"methods.afd.distance: 'l3' is not allowed"):
        build_method("afd", {"distance": "l3"}, context)


def test_block_names_follow_the_modules():
    context, _ = resnet_context()
    names = block_names(context.student_sample.blocks)
    assert names == [f"layer{k}.{j}" for k in (1, 2, 3) for j in range(3)]
    student = create_model("resnet20", 10)
    assert [n for n, _ in student.named_children() if n.startswith("layer")] == ["layer1", "layer2", "layer3"]
    wrn = dry_run(create_model("wrn_16_2", 10), torch.randn(2, 3, 32, 32))
    assert block_names(wrn.blocks) == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]


def test_defaults_are_todays_afd_and_pretrained_linking_is_afd_pretrained():
    generator = torch.Generator().manual_seed(0)
    student = _maps(generator, 4, [(3, 8), (5, 4), (6, 2)])
    teacher = _maps(generator, 4, [(4, 8), (4, 8), (7, 4), (2, 2)])
    context = _synthetic_context(student, teacher)
    torch.manual_seed(0)
    default = build_method("afd", {"alpha": 0.0, "beta": 1.0, "qk_dim": 8}, context)
    torch.manual_seed(0)
    explicit = build_method(
        "afd",
        {
            "alpha": 0.0,
            "beta": 1.0,
            "qk_dim": 8,
            "linking": "afd",
            "distance": "l2",
            "pooling": "a2",
            "teacher_candidates": 4,
            "student_candidates": 3,
            "teacher_selection": "random",
            "student_selection": "random",
        },
        context,
    )
    for name, value in default.state_dict().items():  # same initial weights from the same seed
        assert torch.equal(value, explicit.state_dict()[name]), name
    batch = Batch(None, torch.zeros(4, dtype=torch.long), None)
    got = default(_features(student), _features(teacher), batch)["afd"]
    assert got.item() == pytest.approx(independent_afd(default, student, teacher).item(), rel=1e-5)
    assert explicit(_features(student), _features(teacher), batch)["afd"].item() == pytest.approx(got.item(), rel=1e-6)

    links = torch.softmax(torch.randn(4, 3, generator=generator), 1)
    context.artifact = {
        "alpha": links.tolist(),
        "teacher": "t",
        "student": "s",
        "teacher_candidates": [0, 1, 2, 3],
        "student_candidates": [0, 1, 2],
    }
    fixed = build_method("afd", {"alpha": 0.0, "beta": 1.0, "linking": "pretrained"}, context)
    legacy = build_method("afd_pretrained", {"alpha": 0.0, "beta": 1.0}, context)
    assert fixed(_features(student), _features(teacher), batch)["afd"].item() == pytest.approx(
        legacy(_features(student), _features(teacher), batch)["afd"].item(), rel=1e-6
    )
    assert type(fixed).capabilities({"linking": "pretrained"}).pre_stage == "links"
    assert type(fixed).capabilities({}).pre_stage is None
    assert type(legacy).capabilities({}).pre_stage == "links"
    assert fixed.caps.pre_stage == legacy.caps.pre_stage == "links"  # each instance's record, from its own params
    with pytest.raises(ValueError, match=r"links teacher blocks \[0, 1, 2, 3\]; this run uses \[1, 3\]"):
        build_method("afd", {"linking": "pretrained", "teacher_candidates": 2}, context)


# ---------------------------------------------------------------- combined


def crd_afd_setup(parts=None, **top):
    torch.manual_seed(0)
    teacher, student = create_model("resnet14", 10).eval(), create_model("resnet8", 10)
    teacher.requires_grad_(False)
    images, labels = torch.randn(6, 3, 16, 16), torch.arange(6) % 10
    context = method_context(teacher, student, images)
    parts = parts or {"crd": {"beta": 0.8, "nce_k": 4}, "afd": {"beta": 200.0, "qk_dim": 8}}
    return build_method("combined", {"parts": parts, **top}, context), teacher, student, images, labels


def test_a_combination_is_ce_and_kd_once_plus_each_parts_own_terms():
    import copy

    from afdistill.methods import kd_loss

    method, teacher, student, images, labels = crd_afd_setup(alpha=0.9, temperature=4.0, gamma=0.5)
    alone = {name: copy.deepcopy(part) for name, part in method.parts.items()}  # same weights and memories
    method.begin_epoch(1)
    for part in alone.values():
        part.begin_epoch(1)  # the same CRD negatives
    batch = Batch(images, labels, torch.arange(6))
    with torch.no_grad():
        fs, ft = student(images, with_features=True), teacher(images, with_features=True)
        terms = method(fs, ft, batch)
        crd, afd = alone["crd"].distill(fs, ft, batch), alone["afd"].distill(fs, ft, batch)
    assert set(terms) == {"ce", "kd", "crd", "afd"}
    assert terms["ce"].item() == pytest.approx(0.5 * torch.nn.functional.cross_entropy(fs.logits, labels).item())
    assert terms["kd"].item() == pytest.approx(0.9 * kd_loss(fs.logits, ft.logits, 4.0).item())
    assert terms["crd"].item() == pytest.approx(crd["crd"].item(), rel=1e-6)
    assert terms["afd"].item() == pytest.approx(afd["afd"].item(), rel=1e-6)
    assert torch.equal(method.parts["crd"].memory_s, alone["crd"].memory_s)  # the part's state moved alike
    summary = method.epoch_summary()
    assert summary["afd.teacher_names"][0] == "layer1.0" and summary["afd.attention"].shape == (6, 3)
    own = {id(p) for part in method.parts.values() for p in part.trainable_parameters()}
    assert {id(p) for p in method.trainable_parameters()} == own and len(own) > 0
    assert not method.caps.cuda_graphs and not method.caps.needs_input_grad  # CRD's step is not graph-safe


def test_parts_may_repeat_a_method_under_their_own_names_and_hooks_reach_them():
    parts = {"afd_l1": {"method": "afd", "distance": "l1", "qk_dim": 8}, "at": {"beta": 1000.0}}
    method, teacher, student, images, labels = crd_afd_setup(parts)
    terms = method(
        student(images, with_features=True), teacher(images, with_features=True), Batch(images, labels, torch.arange(6))
    )
    assert set(terms) == {"ce", "kd", "afd_l1.afd", "at"}
    assert method.parts["afd_l1"].distance.kind == "l1"
    assert method.caps.cuda_graphs and type(method).capabilities({"parts": parts}).cuda_graphs
    method.begin_epoch(3)
    assert method.parts["at"].epoch == 3 and method.parts["afd_l1"].epoch == 3
    method.eval()
    assert not method.parts["afd_l1"].training


@pytest.mark.parametrize(
    "parts,message",
    [
        ({"crd": {}}, r"methods.combined.parts: expected a mapping of at least two parts"),
        ({"crd": {"alpha": 0.5}, "afd": {}}, r"methods.combined.parts.crd.alpha: set alpha at the top level"),
        ({"crd": {"gamma": 0.5}, "afd": {}}, r"methods.combined.parts.crd.gamma: set gamma at the top level"),
        (
            {"dkd": {"temperature": 2.0}, "mlkd": {"temperature": 2.0}},
            r"methods.combined.parts.mlkd.temperature: set temperature at the top level",
        ),  # MLKD's is its KD on top's
        (
            {"crd": {}, "ft": {}},
            r"parts.ft: method 'ft' cannot be a part: it needs a network pretrained on the teacher",
        ),
        ({"crd": {}, "mhgd": {}}, r"methods.combined.parts.mhgd: method 'mhgd' cannot be a part: it shapes"),
        ({"soft": {"method": "kd"}, "afd": {}}, r"parts.soft: method 'kd' cannot be a part: it adds no term"),
        ({"kd": {"method": "crd"}, "afd": {}}, r"parts.kd: part names .* are not ce, kd, total"),
        ({"crd": {}, "x": {"method": "nope"}}, r"parts.x.method: unknown method 'nope'"),
        ({"crd": {"delta": 1}, "afd": {}}, r"methods.combined.parts.crd.delta: method 'crd' has no parameter 'delta'"),
        (
            {"afd": {"linking": "pretrained"}, "afd_pretrained": {}},
            r"parts afd, afd_pretrained each need a pre-stage \(links, links\)",
        ),
    ],
)
def test_combinations_that_cannot_be_composed_are_refused_by_name(parts, message):
    with pytest.raises(ValueError, match=message):
        crd_afd_setup(parts)


def test_check_params_names_the_run_and_the_part_and_one_pre_stage_is_forwarded():
    from afdistill.methods.combined import Combined

    with pytest.raises(
        ValueError, match=r"methods.crd_afd.parts.afd.qk_dim: 'big' is not allowed; expected an integer >= 1"
    ):
        Combined.check_params({"parts": {"crd": {}, "afd": {"qk_dim": "big"}}}, "methods.crd_afd")
    params = {"parts": {"crd": {}, "afd": {"linking": "pretrained"}}}
    Combined.check_params(params, "methods.crd_afd")
    assert Combined.capabilities(params).pre_stage == "links"
    assert Combined.pre_stage_part(params) == ("afd", "afd", {"linking": "pretrained"})
    assert Combined.capabilities({"parts": {"crd": {}, "afd": {}}}).pre_stage is None
    Combined.check_params({"alpha": 0.5}, "methods.crd_afd.sweep")  # a sweep's single values


# ---------------------------------------------------------------- figures


def test_stage_output_links_join_the_last_features_of_each_shared_stage():
    from afdistill.methods.afd import stage_output_links

    teacher = ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0"]
    student = ["layer1.0", "layer2.0", "layer2.1", "layer3.0"]
    assert stage_output_links(teacher, student) == [(1, 0), (3, 2), (5, 3)]


def test_paper_figures_draw_plain_data_and_check_its_shapes(tmp_path):
    from afdistill.figures import (
        AttentionHistory,
        BetaSeries,
        LinkComparison,
        links_matrix,
        plot_accuracy_against_beta,
        plot_attention_history,
        plot_manual_against_attention,
    )

    teacher, student = ["layer1.0", "layer1.1", "layer2.0"], ["layer1.0", "layer2.0"]
    manual = links_matrix(3, 2, [(1, 0), (2, 1)])
    assert manual.tolist() == [[0, 0], [1, 0], [0, 1]]
    attention = [np.full((3, 2), 0.5), np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])]
    plot_attention_history(
        [AttentionHistory("t -> s", teacher, student, manual, [1, 2], attention)], tmp_path / "fig3.png"
    )
    plot_accuracy_against_beta(
        [BetaSeries("t -> s", [30, 100], [[0.5, 0.52], [0.55, 0.56]], paper={30: 0.6})], tmp_path / "fig5.png"
    )
    plot_manual_against_attention(
        [LinkComparison("t -> s", teacher, student, manual, attention[1])] * 3, tmp_path / "fig6.png"
    )
    assert all((tmp_path / f"fig{n}.png").stat().st_size > 10_000 for n in (3, 5, 6))
    with pytest.raises(ValueError, match=r"t -> s: manual: a \(2, 3\) link matrix for 3 teacher and 2 student"):
        plot_manual_against_attention(
            [LinkComparison("t -> s", teacher, student, manual.T, attention[1])], tmp_path / "bad.png"
        )
