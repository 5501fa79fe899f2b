"""A method's capabilities are one record: what every caller reads, what a combination derives from its parts,
and what a built method carries; KD on top is a part a method builds from its own alpha and temperature."""

import pytest
import torch

from afdistill.methods import (
    Capabilities,
    Context,
    Heads,
    KDOnTop,
    build_method,
    check_method_params,
    dry_run,
    list_methods,
    method_class,
    method_defaults,
    method_parameters,
)
from afdistill.models import create_model


@pytest.mark.parametrize("name", list_methods())
def test_every_method_states_its_capabilities_once_in_one_record(name):
    cls = method_class(name)
    caps = cls.capabilities({**method_defaults(name)})
    assert isinstance(caps, Capabilities) and caps.methods_used[0] == name
    # KD on top is read from the method's own declared alpha and temperature
    if caps.kd_on_top:
        assert {"alpha", "temperature"} <= set(method_parameters(cls))
    for gone in (
        "cuda_graphs",
        "strong_view",
        "needs_input_grad",
        "needs_artifact",
        "uses_strong_view",
        "allows_cuda_graphs",
        "reads_teacher_logits",
        "methods_used",
        "needs_teacher",
        "heads_method",
        "heads_params",
        "heads_train",
        "pre_stage",
    ):
        assert not hasattr(cls, gone), gone


def test_the_record_refuses_contradictions():
    with pytest.raises(ValueError, match="cannot be a CUDA graph"):
        Capabilities(cuda_graphs=True, needs_input_grad=True)
    with pytest.raises(ValueError, match="'heads' pre-stage and its Heads come together"):
        Capabilities(pre_stage="heads")
    with pytest.raises(ValueError, match="pre_stage: 'weights'"):
        Capabilities(pre_stage="weights")


def test_hyper_parameters_decide_where_a_method_says_they_do():
    assert method_class("afd").capabilities({"linking": "pretrained"}).pre_stage == "links"
    assert method_class("afd").capabilities({"linking": "ordered"}).pre_stage is None
    assert method_class("afd_pretrained").capabilities({}).pre_stage == "links"
    assert method_class("mlkd").capabilities({}).strong_view
    assert not method_class("mlkd").capabilities({"strong_view": False}).strong_view
    ft = method_class("ft").capabilities({})
    assert ft.heads == Heads("ft_paraphraser", ("k",), {"epochs": 30, "lr": 0.01, "lr_decay_epochs": []})


@pytest.mark.parametrize(
    "parts",
    [
        {"crd": {"nce_k": 4}, "afd": {"linking": "pretrained"}},
        {"at": {}, "mlkd": {"strong_view": False}},
        {"at_grad": {}, "dist": {}},
        {"fitnet": {}, "afd_l1": {"method": "afd", "distance": "l1"}, "dkd": {"alpha": 2.0}},
    ],
)
def test_a_combinations_record_is_its_parts_records_combined(parts):
    combined = method_class("combined").capabilities({"parts": parts})
    records = [
        method_class(entry.get("method", name)).capabilities({k: v for k, v in entry.items() if k != "method"})
        for name, entry in parts.items()
    ]
    owner = next((r for r in records if r.pre_stage), None)
    assert combined == Capabilities(
        needs_teacher=True,
        pre_stage=owner and owner.pre_stage,
        heads=owner and owner.heads,
        needs_input_grad=any(r.needs_input_grad for r in records),
        cuda_graphs=all(r.cuda_graphs for r in records),
        strong_view=any(r.strong_view for r in records),
        fuses=all(r.fuses for r in records),
        sets_gradients=any(r.sets_gradients for r in records),
        reads_teacher_logits=any(r.reads_teacher_logits for r in records),
        kd_on_top=True,
        methods_used=("combined", *(entry.get("method", name) for name, entry in parts.items())),
        relative_cost=1 + sum(r.relative_cost - 1 for r in records),  # one KD-sized base, each part's extra
    )


def small_context(artifact=None):
    torch.manual_seed(0)
    teacher, student = create_model("resnet14", 10).eval(), create_model("resnet8", 10)
    teacher.requires_grad_(False)
    images = torch.randn(2, 3, 16, 16)
    return Context(
        student,
        teacher,
        dry_run(student, images),
        dry_run(teacher, images),
        10,
        torch.arange(40) % 10,
        2,
        artifact=artifact,
    )


@pytest.mark.parametrize(
    "name, params",
    [
        ("kd", {"alpha": 0.5, "temperature": 3.0}),
        ("at", {}),
        ("fitnet", {"alpha": 0.0}),
        ("dkd", {"alpha": 2.0}),
        ("mlkd", {"strong_view": False, "alpha": 0.3}),
        ("vanilla", {}),
        ("dml", {}),
        ("combined", {"parts": {"at": {}, "mlkd": {}}, "alpha": 0.7, "temperature": 2.0}),
    ],
)
def test_a_built_method_carries_its_own_record_and_its_kd_on_top(name, params):
    method = build_method(name, params, small_context())
    assert method.caps == method_class(name).capabilities(params)
    assert (method.kd is not None) == method.caps.kd_on_top
    if method.kd is not None:
        full = {**method_defaults(name), **params}
        assert method.kd == KDOnTop(full["alpha"], full["temperature"])
    if name == "combined":  # the instance's record comes from its parts (MLKD's view and logits, both graph-safe)
        assert method.caps.strong_view and method.caps.cuda_graphs and method.caps.reads_teacher_logits


def test_a_dkd_part_keeps_its_own_alpha_and_temperature_where_kd_on_top_ones_are_refused():
    check_method_params(
        "combined", {"parts": {"at": {}, "dkd": {"alpha": 2.0, "beta": 4.0, "temperature": 2.0}}}, "methods.both"
    )
    with pytest.raises(ValueError, match=r"methods.both.parts.at.alpha: set alpha at the top level"):
        check_method_params("combined", {"parts": {"at": {"alpha": 0.5}, "dkd": {}}}, "methods.both")
    with pytest.raises(ValueError, match=r"methods.both.parts.dkd.gamma: set gamma at the top level"):
        check_method_params("combined", {"parts": {"at": {}, "dkd": {"gamma": 0.5}}}, "methods.both")
