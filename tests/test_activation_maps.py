"""The paper's Figure 4: AT maps of stage outputs and the links each method draws, against plain computations."""

import numpy as np
import torch
from conftest import method_context

from afdistill import activation_maps
from afdistill.methods import Batch, build_method
from afdistill.models import create_model


def test_maps_are_the_channel_mean_of_squared_stage_outputs_scaled_to_one():
    torch.manual_seed(0)
    model, images = create_model("resnet8", 10), torch.randn(2, 3, 16, 16)
    maps = activation_maps.attention_maps(model, images)
    with torch.no_grad():
        stages = model.eval()(images, with_features=True).stages
    assert len(maps) == len(stages) == 3
    for got, stage in zip(maps, stages):
        for n in range(2):
            energy = (stage[n] ** 2).mean(0).numpy()
            expected = (energy - energy.min()) / (energy.max() - energy.min())
            np.testing.assert_allclose(got[n], expected, rtol=1e-5, atol=1e-6)


def test_links_att_in_order_l2t_by_largest_gate_afd_by_attention_summed_per_stage():
    assert activation_maps.links("at", {}, 3, 3) == [0, 1, 2]
    gates = [[0.1, 0.9, 0.0], [0.5, 0.05, 0.2], [0.2, 0.3, 0.7]]  # teacher stage x student stage
    assert activation_maps.links("l2t", {"gates": gates}, 3, 3) == [1, 0, 2]
    # Teacher blocks 0-1 in stage 0, 2-3 in stage 1; student blocks 0 and 1 in stages 0 and 1.
    summary = {
        "teacher_candidates": [0, 1, 2, 3],
        "student_candidates": [0, 1],
        "attention": [[0.3, 0.0], [0.3, 0.1], [0.4, 0.5], [0.0, 0.4]],
    }
    # student stage 0: teacher stage 0 holds 0.6 against 0.4; student stage 1: 0.1 against 0.9
    assert activation_maps.links("afd", summary, 2, 2, [0, 0, 1, 1], [0, 1]) == [0, 1]
    assert activation_maps.links("l2t", {}, 3, 3) is None  # a run that recorded no gates draws no links


def test_l2t_records_each_pairs_mean_gate_over_the_epoch():
    torch.manual_seed(0)
    teacher, student = create_model("resnet14", 10).eval(), create_model("resnet8", 10)
    images, labels = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    context = method_context(teacher, student, images)
    method = build_method("l2t", {"alpha": 0.0}, context)
    for layer in method.matching.gates:
        torch.nn.init.normal_(layer.weight, std=0.5)
    expected = torch.zeros(3, 3)
    with torch.no_grad():
        for half in (images[:3], images[3:]):
            fs, ft = student(half, with_features=True), teacher(half, with_features=True)
            method(fs, ft, Batch(half, labels[:3], torch.arange(3)))
            for i, (t, s) in enumerate(method.matching.pairs):
                pooled = ft.stages[t].mean((2, 3))
                gate = method.matching.gates[i]
                expected[t, s] += torch.clamp(pooled @ gate.weight.t() + gate.bias, 0, 6).mean() / 2
    summary = method.epoch_summary()
    torch.testing.assert_close(summary["gates"], expected, rtol=1e-5, atol=1e-6)
    assert method.epoch_summary() == {}  # reset for the next epoch
