"""Hyper-parameters: every method declares each one's range, bad values are refused before any job, by name."""

import time
from typing import Annotated, Any

import pytest
import torch

from afdistill.methods import Context, KDOnTop, build_method, dry_run, list_methods, method_class, method_defaults
from afdistill.methods.base import (
    _METHODS,
    Choice,
    Method,
    Range,
    _declared_parameter,
    _network_sample,
    check_method_fit,
    check_method_params,
    describe_method,
    method_parameters,
    register_method,
)
from afdistill.methods.crd import MEMORY_LIMIT, memory_bytes
from afdistill.models import Features, create_model

# the digits dataset the default grid trains on: 10 classes, 16 x 16 images, 1437 training images
DIGITS = {"num_classes": 10, "image_size": 16, "n_train": 1437}


def refused(name: str, params: dict, **fit) -> str:
    """The message of the ValueError that checking ``params`` raises (a fit check when ``fit`` is given)."""
    with pytest.raises(ValueError) as error:
        if fit:
            check_method_fit(name, params, f"methods.{name}", **fit)
        else:
            check_method_params(name, params, f"methods.{name}")
    return str(error.value)


# ---------------------------------------------------------------- keys, types and ranges


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("kd", {"temperature": 0}, "methods.kd.temperature: 0 is not allowed; expected a number > 0"),
        ("kd", {"alpha": -3}, "methods.kd.alpha: -3 is not allowed; expected a number >= 0"),
        ("kd", {"gamma": -0.1}, "methods.kd.gamma: -0.1 is not allowed; expected a number >= 0"),
        ("at", {"mapping": "avg"}, "methods.at.mapping: 'avg' is not allowed; expected one of 'sum', 'max'"),
        ("at", {"p": 0}, "methods.at.p: 0 is not allowed; expected a number > 0"),
        ("mhgd", {"num_heads": 0}, "methods.mhgd.num_heads: 0 is not allowed; expected an integer >= 1"),
        ("mhan", {"num_heads": -2}, "methods.mhan.num_heads: -2 is not allowed; expected an integer >= 1"),
        ("fitnet", {"beta": -5}, "methods.fitnet.beta: -5 is not allowed; expected a number >= 0"),
        ("fitnet", {"hint_layer": -1}, "methods.fitnet.hint_layer: -1 is not allowed; expected an integer >= 0"),
        ("crd", {"nce_k": 0}, "methods.crd.nce_k: 0 is not allowed; expected an integer >= 1"),
        ("crd", {"nce_m": 1}, "methods.crd.nce_m: 1 is not allowed; expected a number >= 0 and < 1"),
        ("crd", {"nce_t": 0.0}, "methods.crd.nce_t: 0.0 is not allowed; expected a number > 0"),
        ("l2t", {"inner_steps": 0}, "methods.l2t.inner_steps: 0 is not allowed; expected an integer >= 1"),
        ("l2t", {"meta_lr": 0}, "methods.l2t.meta_lr: 0 is not allowed; expected a number > 0"),
        ("rkd", {"angle_weight": -1}, "methods.rkd.angle_weight: -1 is not allowed; expected a number >= 0"),
        ("at_grad", {"beta": -1}, "methods.at_grad.beta: -1 is not allowed; expected a number >= 0"),
        # types: booleans are not numbers, floats are not integers, nan and inf are not allowed anywhere
        (
            "kd",
            {"alpha": True},
            "methods.kd.alpha: True is not allowed; expected a number >= 0 (True/False is not a number)",
        ),
        ("kd", {"alpha": "high"}, "methods.kd.alpha: 'high' is not allowed; expected a number >= 0"),
        ("crd", {"nce_k": 64.0}, "methods.crd.nce_k: 64.0 is not allowed; expected an integer >= 1"),
        (
            "crd",
            {"nce_k": False},
            "methods.crd.nce_k: False is not allowed; expected an integer >= 1 (True/False is not a number)",
        ),
        ("kd", {"temperature": float("nan")}, "methods.kd.temperature: nan is not allowed; expected a number > 0"),
        ("kd", {"temperature": float("inf")}, "methods.kd.temperature: inf is not allowed; expected a number > 0"),
        ("kd", {"temperature": None}, "methods.kd.temperature: None is not allowed; expected a number > 0"),
        ("at", {"mapping": 1}, "methods.at.mapping: 1 is not allowed; expected one of 'sum', 'max'"),
        # keys
        (
            "kd",
            {"temprature": 4},
            "methods.kd.temprature: method 'kd' has no parameter 'temprature'; allowed: alpha, ctkd, "
            "ctkd_curriculum_epochs, ctkd_lambda_end, ctkd_lambda_start, ctkd_t_range, ctkd_t_start, "
            "gamma, logit_standardization, temperature",
        ),
        (
            "vanilla",
            {"alpha": 0.9},
            "methods.vanilla.alpha: method 'vanilla' has no parameter 'alpha'; "
            "allowed: none (it takes no hyper-parameters)",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_the_key_the_value_and_what_is_allowed(name, params, message):
    assert refused(name, params) == message


def test_the_grid_key_is_named_as_given():
    with pytest.raises(ValueError, match=r"^pairs\[2\]\.methods\.kd_hot\.temperature: -1 is not allowed"):
        check_method_params("kd", {"temperature": -1}, "pairs[2].methods.kd_hot")
    with pytest.raises(ValueError, match=r"^methods\.kd: expected a mapping of hyper-parameter -> value, got 4"):
        check_method_params("kd", 4, "methods.kd")


@pytest.mark.parametrize(
    "name,params",
    [
        (
            "kd",
            {"temperature": 1, "alpha": 0, "gamma": 0.1},
        ),  # integers stand for floats; zero weights switch a term off
        ("at", {"mapping": "max", "p": 4}),
        ("crd", {"nce_k": 64, "nce_m": 0, "feat_dim": 1}),
        ("l2t", {"inner_steps": 1}),
        ("fitnet", {}),
    ],
)
def test_values_inside_the_declared_ranges_pass(name, params):
    check_method_params(name, params, f"methods.{name}")


@pytest.mark.parametrize("name", [name for name in list_methods() if name != "combined"])  # combined needs parts
def test_every_methods_defaults_pass_its_own_declaration(name):
    check_method_params(name, method_defaults(name), f"methods.{name}")


def test_every_registered_hyper_parameter_declares_its_range_or_choices():
    undeclared = [
        f"{name}.{key}"
        for name in list_methods()
        for key, parameter in method_parameters(method_class(name)).items()
        if parameter.rule is None and parameter.kind is not dict
    ]
    assert undeclared == []


def test_method_defaults_still_read_the_constructor_and_its_bases():
    assert method_defaults("kd") == {
        "gamma": 1.0,
        "alpha": 0.9,
        "temperature": 4.0,
        "logit_standardization": False,
        "ctkd": False,
        "ctkd_t_start": 1.0,
        "ctkd_t_range": 20.0,
        "ctkd_lambda_start": 0.0,
        "ctkd_lambda_end": -1.0,
        "ctkd_curriculum_epochs": 10,
    }
    assert method_defaults("fitnet") == {"beta": 100.0, "hint_layer": 2, "alpha": 0.9, "gamma": 1.0, "temperature": 4.0}
    assert method_defaults("vanilla") == {}


def test_describe_method_lists_each_parameter_with_its_default_and_range():
    assert describe_method("kd")[:3] == [
        ("gamma", 1.0, "a number >= 0"),
        ("alpha", 0.9, "a number >= 0"),
        ("temperature", 4.0, "a number > 0"),
    ]
    assert ("logit_standardization", False, "one of True, False") in describe_method("kd")
    rows = {param: (default, allowed) for param, default, allowed in describe_method("at")}
    assert rows["mapping"] == ("sum", "one of 'sum', 'max'")
    assert rows["p"] == (2.0, "a number > 0")
    assert dict((p, a) for p, _, a in describe_method("crd"))["nce_m"] == "a number >= 0 and < 1"
    assert describe_method("vanilla") == []


# ---------------------------------------------------------------- how declarations are read


def test_declarations_read_annotated_optional_and_plain_forms():
    plain = _declared_parameter("x", float, 1.0)
    assert (plain.kind, plain.rule, plain.optional) == (float, None, False)
    ranged = _declared_parameter("k", Annotated[int, Range(ge=1)] | None, None)
    assert (ranged.kind, ranged.rule, ranged.optional) == (int, Range(ge=1), True)
    assert ranged.allowed() == "an integer >= 1 or None"
    ranged.check(None, "k")
    ranged.check(3, "k")
    with pytest.raises(ValueError, match="k: 0 is not allowed; expected an integer >= 1 or None"):
        ranged.check(0, "k")
    undeclared = _declared_parameter("y", Any, 2)  # typing.Any is not a type: any value
    undeclared.check("anything", "y")
    mapping = _declared_parameter("parts", dict | None, None)
    assert mapping.allowed() == "a mapping or None"
    with pytest.raises(ValueError, match=r"parts: \[1\] is not allowed; expected a mapping or None"):
        mapping.check([1], "parts")


def test_range_and_choice_admit_exactly_their_values():
    unit = Range(ge=0, lt=1)
    assert [unit.admits(v) for v in (-0.01, 0, 0.5, 1)] == [False, True, True, False]
    assert [Range(gt=2, le=3, integer=True).admits(v) for v in (2, 2.5, 3, 3.0, 4)] == [False, False, True, True, False]
    assert Choice(1.0, 2.0).admits(2) and not Choice(1, 2).admits(True) and not Choice("1").admits(1)


@pytest.fixture
def composite():
    """A registered method whose parameters nest, and which therefore overrides check_params (then unregistered)."""

    class Nested(Method):
        calls = []

        def __init__(
            self,
            context: Context,
            parts: dict | None = None,
            alpha: Annotated[float, Range(ge=0)] = 0.9,
            temperature: Annotated[float, Range(gt=0)] = 4.0,
            **base,
        ):
            super().__init__(context, **base)
            self.kd = KDOnTop(alpha, temperature)

        @classmethod
        def check_params(cls, params, where):
            cls.calls.append(where)
            super().check_params({k: v for k, v in params.items() if k != "parts"}, where)
            for part, part_params in (params.get("parts") or {}).items():
                check_method_params(part, part_params, f"{where}.parts.{part}")

    register_method("test_nested")(Nested)
    yield Nested
    del _METHODS["test_nested"]


def test_check_method_params_dispatches_to_a_methods_own_check(composite):
    check_method_params("test_nested", {"alpha": 0.5, "parts": {"kd": {"temperature": 2}}}, "methods.both")
    assert composite.calls == ["methods.both"]
    assert (
        refused("test_nested", {"parts": {"kd": {"temperature": 0}}})
        == "methods.test_nested.parts.kd.temperature: 0 is not allowed; expected a number > 0"
    )
    assert (
        refused("test_nested", {"alpha": -1}) == "methods.test_nested.alpha: -1 is not allowed; expected a number >= 0"
    )
    assert method_defaults("test_nested") == {"parts": None, "alpha": 0.9, "gamma": 1.0, "temperature": 4.0}


# ---------------------------------------------------------------- shapes and dataset size, before any job


def test_fitnet_hint_layer_beyond_the_feature_maps_is_refused_saying_how_many_there_are():
    message = refused("fitnet", {"hint_layer": 10}, student="resnet8", teacher="resnet20", **DIGITS)
    assert message == (
        "methods.fitnet.hint_layer: 10 is not allowed; expected an integer from 0 to 3: the index "
        "counts the feature maps [stem, stage 1, ...], of which resnet8 has 4 and resnet20 4"
    )
    # a teacher with four stages does not lift the student's limit
    message = refused("fitnet", {"hint_layer": 4}, student="resnet8", teacher="resnet34", **DIGITS)
    assert "expected an integer from 0 to 3" in message and "resnet8 has 4 and resnet34 5" in message


@pytest.mark.parametrize("student,teacher", [("resnet8", "resnet20"), ("mobilenetv2", "resnet20"), ("resnet8", "vgg8")])
def test_fitnet_fit_check_agrees_with_building_the_method(student, teacher):
    """For every hint layer, the grid-time check refuses exactly what the constructor refuses on real networks."""
    torch.manual_seed(0)
    s, t = create_model(student, 10), create_model(teacher, 10).eval()
    images = torch.randn(2, 3, 16, 16)
    context = Context(s, t, dry_run(s, images), dry_run(t, images), 10, torch.arange(40) % 10, 8)
    for hint_layer in range(7):
        try:
            build_method("fitnet", {"hint_layer": hint_layer}, context)
            built = True
        except ValueError:
            built = False
        try:
            check_method_fit(
                "fitnet", {"hint_layer": hint_layer}, "methods.fitnet", student=student, teacher=teacher, **DIGITS
            )
            checked = True
        except ValueError:
            checked = False
        assert built == checked, hint_layer


def _features(stage_shapes: list[tuple[int, int, int]]) -> Features:
    maps = [torch.zeros(2, *shape) for shape in stage_shapes]
    return Features(torch.zeros(2, 10), maps, maps, maps[0], torch.zeros(2, stage_shapes[-1][0]))


def test_fitnet_refuses_a_hint_no_regressor_can_map():
    """A student map a quarter of the teacher's size has no RepDistiller regressor (ConvReg's rules)."""
    student, teacher = _features([(16, 4, 4), (32, 2, 2)]), _features([(16, 16, 16), (32, 8, 8)])
    context = Context(torch.nn.Identity(), torch.nn.Identity(), student, teacher, 10, None, 64)
    FitNet = method_class("fitnet")
    with pytest.raises(
        ValueError,
        match=r"^methods\.fitnet\.hint_layer: 1 is not allowed for Identity -> Identity: "
        r"FitNet: no regressor maps a 4x4 student map to a 16x16 teacher map",
    ):
        FitNet.check_fit({**method_defaults("fitnet"), "hint_layer": 1}, context, "methods.fitnet", 100)


def test_crd_needs_fewer_negatives_than_training_images():
    message = refused("crd", {"nce_k": 1_000_000}, student="resnet8", teacher="resnet20", **DIGITS)
    assert message == (
        "methods.crd.nce_k: 1000000 is not allowed; expected an integer from 1 to 1436: the negatives "
        "are drawn from the 1437 training images"
    )
    assert "from 1 to 1436" in refused("crd", {"nce_k": 1437}, student="resnet8", teacher="resnet20", **DIGITS)
    check_method_fit("crd", {"nce_k": 1436}, "methods.crd", student="resnet8", teacher="resnet20", **DIGITS)


def test_crd_refuses_memory_no_accelerator_holds():
    # 4 bytes x (2 banks x 50000 x d + 2 x 64 x 16385 x d + 64 x 50000), by hand for d = 128
    assert memory_bytes(50_000, 128, 16_384, 64) == 4 * (2 * 50_000 * 128 + 2 * 64 * 16_385 * 128 + 64 * 50_000)
    assert memory_bytes(50_000, 128, 16_384, None) == 4 * 2 * 50_000 * 128
    cifar = {"num_classes": 100, "image_size": 32, "n_train": 50_000}
    check_method_fit(
        "crd", {"nce_k": 16_384}, "methods.crd", student="resnet8", teacher="resnet20", batch_size=64, **cifar
    )  # RepDistiller's default: about 1 GiB
    message = refused("crd", {"feat_dim": 100_000}, student="resnet8", teacher="resnet20", batch_size=64, **cifar)
    gib = memory_bytes(50_000, 100_000, 16_384, 64) / 2**30
    assert gib > MEMORY_LIMIT / 2**30
    assert message == (
        f"methods.crd.feat_dim: 100000 is not allowed with nce_k 16384: CRD would hold {gib:.0f} GiB "
        f"(vectors of 100000 floats: 2 x 50000 in the memory banks, 2 x 64 x 16385 per step); "
        f"expected at most 32 GiB"
    )


def test_mhgd_needs_equal_stage_widths_and_mhan_two_stages():
    message = refused("mhgd", {}, student="resnet8", teacher="wrn_16_2", **DIGITS)
    assert message.startswith("methods.mhgd: wrn_16_2 -> resnet8: MHGD compares singular vectors channel by channel")
    assert "got teacher [32, 64, 128], student [16, 32, 64]" in message
    check_method_fit("mhgd", {}, "methods.mhgd", student="resnet8", teacher="resnet20", **DIGITS)
    check_method_fit("mhan", {"num_heads": 2}, "heads", student=None, teacher="resnet20", **DIGITS)


def test_a_distillation_method_without_a_teacher_is_refused():
    assert (
        refused("kd", {}, student="resnet8", teacher=None, **DIGITS)
        == "methods.kd: method 'kd' distils from a teacher, and this run has none"
    )
    check_method_fit("vanilla", {}, "methods.vanilla", student="resnet8", teacher=None, **DIGITS)


def test_the_fit_check_checks_the_ranges_first():
    assert (
        refused("fitnet", {"hint_layer": "2"}, student="resnet8", teacher="resnet20", **DIGITS)
        == "methods.fitnet.hint_layer: '2' is not allowed; expected an integer >= 0"
    )


def test_the_fit_check_leaves_the_callers_random_stream_alone():
    _network_sample.cache_clear()  # so that the networks are built (and initialised) here
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check_method_fit("kd", {}, "methods.kd", student="resnet8", teacher="resnet14", **DIGITS)
    assert torch.equal(torch.rand(3), expected)


PAPER_PAIRS = [
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet56"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_2"),
    ("wrn_40_2", "resnet56"),
    ("resnet34", "wrn_28_2"),
]


COMPARED = ("vanilla", "kd", "fitnet", "at", "at_grad", "rkd", "crd", "l2t", "mhgd")  # the AFD paper's baselines


def test_every_method_with_its_defaults_fits_the_default_and_paper_grids_pairs():
    """The defaults of every method fit every pair of the paper's Table 1 (and the digits grid's pair), except
    MHGD across widths, which the method cannot do. Prints how long the whole check took (not asserted)."""
    _network_sample.cache_clear()
    start = time.perf_counter()
    cifar = {"num_classes": 100, "image_size": 32, "n_train": 50_000, "batch_size": 64}
    refusals = []
    for teacher, student in PAPER_PAIRS:
        for name in COMPARED:
            params = {"nce_k": 64} if name == "crd" else {}  # as the paper sets it
            try:
                check_method_fit(
                    name,
                    params,
                    f"methods.{name}",
                    student=student,
                    teacher=None if name == "vanilla" else teacher,
                    **cifar,
                )
            except ValueError as error:
                refusals.append((teacher, student, name, str(error).split(":")[0]))
        check_method_fit("mhan", {}, "heads", student=None, teacher=teacher, **cifar)
    elapsed = time.perf_counter() - start
    print(f"\nfit check of {len(PAPER_PAIRS)} pairs x {len(COMPARED)} methods: {elapsed:.2f} s")
    assert refusals == [
        ("wrn_40_2", "resnet56", "mhgd", "methods.mhgd"),
        ("resnet34", "wrn_28_2", "mhgd", "methods.mhgd"),
    ]


def test_the_fit_checks_networks_hold_shapes_only():
    """The samples a fit check sees are meta tensors: no weights initialised, no activations computed."""
    network, sample = _network_sample("resnet8", 10, 16)
    assert sample.pooled.shape == (2, 64) and sample.pooled.device.type == "meta"
    assert [tuple(f.shape) for f in sample.stages] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    assert all(p.device.type == "meta" for p in network.parameters())
