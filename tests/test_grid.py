"""Grid files: every mistake is named with its key and the allowed values; grids expand to the right jobs."""

import copy
from pathlib import Path

import pytest
import yaml

from afdistill.grid import NO_TEACHER, Grid, GridError
from afdistill.kinds import links as links_kind
from afdistill.kinds import student as student_kind
from afdistill.kinds import teacher as teacher_kind

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())


def grid_with(**changes):
    config = copy.deepcopy(BASE)
    config.update(changes)
    return config


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            {"dataset": "mnist"},
            "dataset: unknown dataset 'mnist'; allowed: cifar10, cifar100, cifar10_flip, cub200, digits, imagenet, "
            "mit67, stanford40, stanford_dogs, tinyimagenet, tinyimagenet_mhgd",
        ),
        (
            {"pairs": [{"teacher": "resnet21", "student": "resnet8"}]},
            "pairs[0].teacher: unknown architecture 'resnet21'; allowed: ",
        ),
        (
            {"methods": {"kd": {}, "fitnett": {}}},
            "methods.fitnett: unknown method 'fitnett' (name the type with `method:`); allowed: ",
        ),
        ({"methods": {"x": {"method": "nope"}}}, "methods.x.method: unknown method 'nope'; allowed: "),
        (
            {"methods": {"kd": {"temprature": 4}}},
            "methods.kd.temprature: method 'kd' has no parameter 'temprature'; allowed: alpha, ctkd, "
            "ctkd_curriculum_epochs, ctkd_lambda_end, ctkd_lambda_start, ctkd_t_range, ctkd_t_start, "
            "gamma, logit_standardization, temperature",
        ),
        ({"methods": {"kd": {"alpha": "high"}}}, "methods.kd.alpha: 'high' is not allowed; expected a number >= 0"),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key; allowed: epochs, batch_size"),
        (
            {"train": {"lr_decay_epochs": 150}},
            "train.lr_decay_epochs: 150 is not allowed; expected a list of an integer >= 1",
        ),
        ({"train": {"epochs": 0}}, "train.epochs: 0 is not allowed; expected an integer >= 1"),
        (
            {"train": {"epochs": 3, "lr_decay_epochs": [2, 10]}},
            "train.lr_decay_epochs: [2, 10] decays after the last epoch (3) at [10]; list epochs from 1 to 3",
        ),
        ({"train": {"lr": -0.1}}, "train.lr: -0.1 is not allowed; expected a number > 0"),
        (
            {"teachers": {"checkpoints": {"resnet20": "missing/ckpt.pth"}}},
            "teachers.checkpoints.resnet20: missing/ckpt.pth does not exist",
        ),
        (
            {"teachers": {"checkpoints": {"resnet56": "README.md"}}},
            "teachers.checkpoints.resnet56: resnet56 is not a teacher of any pair; teachers: resnet20",
        ),
        ({"device": "tpu"}, "device: 'tpu' is not allowed; allowed: auto, cpu, cuda"),
        (
            {"architectures": {"wrn_16_2": {"double_bn": True}}},
            "architectures.wrn_16_2.double_bn: unknown option; allowed: double_bn_update",
        ),
        (
            {"architectures": {"resnet8": {"double_bn_update": True}}},
            "architectures.resnet8.double_bn_update: unknown option; allowed: none (resnet8 takes no options)",
        ),
        ({"runtime": {"deterministic": "yes"}}, "runtime.deterministic: 'yes' is not allowed; expected true or false"),
        ({"runtime": {"compile": True}}, "runtime.compile: True is not allowed; allowed: "),
        ({"seeds": [0, 0]}, "seeds: [0, 0] repeats a seed"),
        (
            {"jobs_per_gpu": 2, "gpus_per_job": 4},
            "jobs_per_gpu: 2 with gpus_per_job: 4; a job either shares a GPU or "
            "spans several, not both: set one of them to 1",
        ),
        ({"gpus_per_job": 0}, "gpus_per_job: 0 is not allowed; expected an integer >= 1"),
        ({"methods": {"kd": {"seeds": [1, 1]}}}, "methods.kd.seeds: [1, 1] repeats a seed"),
        (
            {"methods": {"kd": {"seeds": 3}}},
            "methods.kd.seeds: expected a non-empty list of seeds (integers >= 0), got 3",
        ),
        ({"colour": "red"}, "colour: unknown key; allowed: grid, dataset"),
        ({"report": {"paper_table": "table9"}}, "report.paper_table: unknown table 'table9'; allowed: afd_table1"),
        (
            {"report": {"paper_matrices": ["table4"]}},
            "report.paper_matrices[0]: unknown table 'table4'; allowed: afd_table4, afd_table5a",
        ),
        (
            {"report": {"paper_matrices": ["afd_table6"]}},
            "report.paper_matrices[0]: afd_table6 is on cifar100 wrn_40_2 -> wrn_16_2, which this grid does not train",
        ),
        (
            {"pairs": [{"teacher": "resnet20", "student": "resnet8", "methods": {"akd": {"beta": 1}}}]},
            "pairs[0].methods.akd: no such entry under methods; allowed: vanilla, kd, fitnet, at, at_grad, rkd, crd, "
            "l2t, mhgd, afd, afd_pretrained, afd_beta, afd_choices, crd_afd, dkd, reviewkd, dist, mlkd, "
            "kd_ls_ctkd, fsp, ab, kdsvd, dml, ft, fact, min_l2, symmetry_norm, links",
        ),
        (
            {"pairs": [{"teacher": "resnet20", "student": "resnet8"}, {"teacher": "resnet20", "student": "resnet8"}]},
            "pairs[1]: the pair resnet20 -> resnet8 is listed twice",
        ),
    ],
)
def test_mistakes_name_the_key_and_the_allowed_values(changes, message):
    with pytest.raises(GridError) as error:
        Grid(grid_with(**changes), source="params/x.yaml")
    assert f"params/x.yaml: {message}" in str(error.value)


def test_default_grid_expands_to_its_jobs():
    grid = Grid(BASE)
    assert grid.teachers() == ["resnet20"]
    assert [(p.teacher, p.student) for p in links_kind.pairs(grid)] == [("resnet20", "resnet8")]
    jobs = student_kind.jobs(grid)
    # the plain student needs no teacher and is trained once per architecture and seed
    assert (NO_TEACHER, "resnet8", "vanilla", 0) in jobs and ("resnet20", "resnet8", "kd", 1) in jobs
    assert len(jobs) == sum(len(run.seeds) for run in grid.runs.values())
    spec = student_kind.spec(grid, "resnet20", "resnet8", "afd", 1)
    assert (spec.method, spec.seed, spec.teacher, spec.method_params["beta"]) == ("afd", 1, "resnet20", 200)
    assert student_kind.spec(grid, NO_TEACHER, "resnet8", "vanilla", 0).teacher is None


def test_paper_grid_is_table_one_with_a_beta_sweep():
    grid = Grid.from_file(ROOT / "params" / "cifar100.yaml")
    assert len(grid.pairs) == 7 and grid.seeds == [0, 1, 2, 3, 4]
    assert grid.schedule.epochs == 240 and grid.schedule.lr_decay_epochs == (150, 180, 210)
    assert (grid.schedule.lr, grid.schedule.batch_size, grid.schedule.weight_decay) == (0.05, 64, 5e-4)
    betas = sorted(run.params["beta"] for run in grid.runs.values() if run.group == "afd")
    assert betas == [30, 50, 100, 200]
    assert {run.label for run in grid.runs.values()} >= {"Student", "KD", "AFD"}
    spec = student_kind.spec(grid, "wrn_40_2", "wrn_16_2", "afd_beta50", 3)
    assert spec.method_params == {"alpha": 0.9, "temperature": 4, "qk_dim": 128, "beta": 50}


def test_pair_overrides_apply_to_that_pair_only_and_cannot_fight_a_sweep():
    config = grid_with(
        pairs=[
            {"teacher": "resnet20", "student": "resnet8", "methods": {"kd": {"temperature": 2}}},
            {"teacher": "resnet20", "student": "resnet14"},
        ]
    )
    grid = Grid(config)
    assert student_kind.spec(grid, "resnet20", "resnet8", "kd", 0).method_params["temperature"] == 2
    assert student_kind.spec(grid, "resnet20", "resnet14", "kd", 0).method_params["temperature"] == 4
    config["methods"]["kd"] = {"sweep": {"temperature": [2, 4]}}
    with pytest.raises(GridError, match=r"pairs\[0\].methods.kd.temperature: this parameter is swept"):
        Grid(config)


def test_labels_and_method_types_can_differ_from_run_names():
    grid = Grid(grid_with(methods={"at_kd": {"method": "kd", "label": "AT+KD"}}))
    assert grid.runs["at_kd"].method == "kd" and grid.runs["at_kd"].label == "AT+KD"


def test_a_run_may_train_its_own_seeds():
    grid = Grid(
        grid_with(
            seeds=[0, 1],
            methods={
                "kd": {},
                "l2t": {"seeds": [0]},
                "crd": {"nce_k": 64, "seeds": [2], "sweep": {"beta": [0.5, 0.8]}},
            },
        )
    )
    jobs = {(run, seed) for _, _, run, seed in student_kind.jobs(grid)}
    assert jobs == {("kd", 0), ("kd", 1), ("l2t", 0), ("crd_beta0p5", 2), ("crd_beta0p8", 2)}


def test_lr_schedule_decays_at_the_start_of_the_listed_epochs():
    schedule = Grid.from_file(ROOT / "params" / "cifar100.yaml").schedule
    assert [schedule.lr_at(e) for e in (1, 149, 150, 179, 180, 210, 240)] == pytest.approx(
        [0.05, 0.05, 0.005, 0.005, 0.0005, 0.00005, 0.00005]
    )


def test_the_snakemake_schema_is_generated_from_the_grid_declarations():
    from afdistill.grid import schema_yaml

    committed = (ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()
    assert committed == schema_yaml(), "workflow/schemas/config.schema.yaml is stale: run `afdistill schema`"


def test_every_params_grid_passes_its_own_schema():
    import jsonschema

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for path in sorted((ROOT / "params").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


def test_architecture_options_reach_the_specs_of_the_networks_trained_with_them():
    config = yaml.safe_load((ROOT / "params" / "cifar100.yaml").read_text())
    grid = Grid(config)
    assert teacher_kind.spec(grid, "wrn_40_2").model_options == {"double_bn_update": True}
    assert student_kind.spec(grid, "wrn_40_2", "wrn_16_2", "kd", 0).model_options == {"double_bn_update": True}
    assert student_kind.spec(grid, "resnet56", "resnet20", "kd", 0).model_options == {}
    # the frozen teacher runs with its own options too (MHGD's Tiny ImageNet WRNs: a stride-2 first convolution)
    assert student_kind.spec(grid, "wrn_40_2", "wrn_16_2", "kd", 0).teacher_options == {"double_bn_update": True}
    assert student_kind.spec(grid, "resnet56", "resnet20", "kd", 0).teacher_options == {}


def test_an_ablation_table_whose_runs_the_grid_does_not_train_is_refused():
    config = yaml.safe_load((ROOT / "params" / "cifar100_ablations.yaml").read_text())
    config["pairs"][2]["runs"].remove("t6_kl")
    with pytest.raises(
        GridError,
        match=r"report.paper_matrices\[4\]: afd_table6 needs the runs t6_kl on "
        r"wrn_40_2 -> wrn_16_2, which the grid does not train there",
    ):
        Grid(config, source="params/cifar100_ablations.yaml")


def test_the_fit_check_builds_each_network_with_its_architecture_options(monkeypatch):
    import afdistill.methods as methods_module
    from afdistill.jobs import Plan
    from afdistill.methods.base import _network_sample

    seen = []
    real = methods_module.check_method_fit
    monkeypatch.setattr(methods_module, "check_method_fit", lambda *a, **k: seen.append(k) or real(*a, **k))
    Plan(Grid(yaml.safe_load((ROOT / "params" / "mhgd_tinyimagenet.yaml").read_text())))
    assert seen and all(k["teacher_options"] == {"stem_stride": 2} for k in seen if k["teacher"])
    assert all(k["student_options"] == {"stem_stride": 2} for k in seen if k["student"])
    _, strided = _network_sample("wrn_10_4", 200, 64, (("stem_stride", 2),))
    _, plain = _network_sample("wrn_10_4", 200, 64)
    assert (strided.stages[0].shape[-1], plain.stages[0].shape[-1]) == (32, 64)


def test_a_strong_view_on_a_streamed_dataset_is_refused_before_any_job():
    config = {
        "grid": "t",
        "dataset": "cub200",
        "pairs": [{"teacher": "resnet34_imagenet", "student": "resnet18_imagenet"}],
        "methods": {"afd_mlkd": {"method": "combined", "parts": {"afd": {}, "mlkd": {}}}},
    }
    with pytest.raises(
        GridError,
        match="methods.afd_mlkd: trains on a second, strongly augmented view, which the "
        "streamed dataset cub200 does not provide; set strong_view: false",
    ):
        Grid(config)
    config["methods"]["afd_mlkd"]["parts"]["mlkd"] = {"strong_view": False}
    Grid(config)


def test_a_run_carries_its_own_schedule_over_its_pairs():
    config = grid_with(
        methods={"kd": {"alpha": 0.9}, "mlkd": {"train": {"epochs": 8, "lr": 0.025, "lr_decay_epochs": [7]}}},
        pairs=[
            {"teacher": "resnet20", "student": "resnet8", "methods": {"mlkd": {"kd_weight": 2, "train": {"lr": 0.01}}}}
        ],
    )
    grid = Grid(config)
    mlkd = student_kind.spec(grid, "resnet20", "resnet8", "mlkd", 0)
    assert (mlkd.schedule.epochs, mlkd.schedule.lr, mlkd.schedule.lr_decay_epochs) == (8, 0.01, (7,))
    assert mlkd.method_params == {"kd_weight": 2}
    assert (
        student_kind.spec(grid, "resnet20", "resnet8", "kd", 0).schedule == grid.schedule
    )  # the others keep the pair's
    from afdistill.jobs import Plan

    plan = Plan(grid)
    fingerprints = {job.spec.run: job.fingerprint for job in plan.of_kind("student")}
    config["methods"]["mlkd"]["train"]["epochs"] = 9
    changed = {job.spec.run: job.fingerprint for job in Plan(Grid(config)).of_kind("student")}
    assert changed["kd"] == fingerprints["kd"] and changed["mlkd"] != fingerprints["mlkd"]
    config["methods"]["mlkd"]["train"] = {"epochs": 3}
    with pytest.raises(
        GridError,
        match=r"methods\.mlkd\.train\.lr_decay_epochs: \[5, 6\] decays after the last "
        r"epoch \(3\)",
    ):
        Grid(config)


def test_the_modern_grid_trains_each_row_with_its_official_recipe():
    """Spot checks of issue 25's audit (sources in the grid's header)."""
    grid = Grid.from_file(ROOT / "params" / "cifar100_modern.yaml")
    spec = lambda t, s, run: student_kind.spec(grid, t, s, run, 0)  # noqa: E731
    # mdistiller's codes decay after epochs 150/180/210, AFD's at their start
    assert spec("resnet56", "resnet20", "kd").schedule.lr_decay_epochs == (151, 181, 211)
    assert spec("resnet56", "resnet20", "afd_beta200").schedule.lr_decay_epochs == (150, 180, 210)
    # DKD+LS: both DKD weights multiplied by the KD weight (LS tools/train.py), per-pair from the logs
    assert {k: spec("resnet32x4", "resnet8x4", "dkd_ls").method_params[k] for k in ("alpha", "beta")} == {
        "alpha": 9,
        "beta": 72,
    }
    assert spec("resnet56", "resnet20", "dkd_ls").method_params["temperature"] == 3
    # CTKD+LS's temperature floor, DKD+CTKD without warm-up
    assert spec("resnet56", "resnet20", "kd_ctkd_ls").method_params["ctkd_t_start"] == 2
    assert spec("resnet56", "resnet20", "dkd_ctkd").method_params["warmup_epochs"] == 0
    # MLKD's release configs: 480 epochs at 0.025, 960 at 0.01 for resnet32x4 -> ShuffleNet
    assert (spec("vgg13", "vgg8", "mlkd").schedule.epochs, spec("vgg13", "vgg8", "mlkd").schedule.lr) == (480, 0.025)
    mlkd_ls = spec("resnet32x4", "shufflev2", "mlkd_ls")
    assert (mlkd_ls.schedule.epochs, mlkd_ls.schedule.lr, mlkd_ls.method_params["kd_weight"]) == (960, 0.01, 6)
    # ReviewKD's own recipe beside mdistiller's port
    dvlab = spec("resnet32x4", "shufflev2", "reviewkd_dvlab")
    assert (dvlab.schedule.batch_size, dvlab.schedule.lr, dvlab.schedule.nesterov, dvlab.method_params["beta"]) == (
        128,
        0.02,
        True,
        8,
    )
    assert spec("resnet56", "resnet20", "reviewkd").schedule.batch_size == 64
    assert spec("resnet50", "vgg8", "kd").schedule.lr == 0.05
