"""The benchmark scripts run end to end and print the figures the README and the closing notes quote.

Tiny settings (resnet8 pairs, a few steps): these check that the scripts work and
print every line, not the speed itself (speed is measured by running them, never in tests).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tool_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.slow


def benchmark(script, *args, cwd):
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--threads", "1", *args],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def rate(line_start, text):
    match = re.search(rf"^\s*{re.escape(line_start)}\s*:?\s*([0-9.]+) images/s", text, re.MULTILINE)
    assert match, f"no '{line_start}' line in:\n{text}"
    return float(match.group(1))


def test_throughput_prints_both_paths_their_ratio_and_the_table1_estimate(tmp_path):
    text = benchmark(
        "throughput.py",
        "--teacher",
        "resnet8",
        "--student",
        "resnet8",
        "--method",
        "afd",
        "--batch-size",
        "16",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--ablation",
        "--concurrent",
        "2",
        cwd=tmp_path,
    )
    assert "synthetic random images" in text
    reference, ours = rate("reference loop", text), rate("engine (ours)", text)
    assert reference > 0 and ours > 0
    ratio = float(re.search(r"speed-up\s*:\s*([0-9.]+)x", text).group(1))
    assert ratio == pytest.approx(ours / reference, abs=0.01)
    assert rate("engine, fp32, contiguous, eager", text) > 0
    assert re.search(r"Table 1 grid \(params/cifar100.yaml: \d+ student jobs", text)
    assert re.search(r"engine\s+[0-9.]+ h on one device", text)
    together = rate("2 engine jobs at once on this device", text)
    assert together > 0
    assert re.search(r"engine with jobs_per_gpu: 2:\s+[0-9.]+ h on one device", text)


def test_method_cost_times_every_method_against_kd(tmp_path):
    text = benchmark(
        "method_cost.py",
        "--teacher",
        "resnet8",
        "--student",
        "resnet8",
        "--batch-size",
        "16",
        "--steps",
        "2",
        cwd=tmp_path,
    )
    rows = dict(re.findall(r"^\s+(\w+)\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)x$", text, re.MULTILINE))
    assert set(rows) == {
        "vanilla",
        "kd",
        "fitnet",
        "at",
        "at_grad",
        "rkd",
        "crd",
        "l2t",
        "mhgd",
        "afd",
        "afd_pretrained",
        "dkd",
        "dist",
        "mlkd",
        "reviewkd",
    }, text
    assert float(rows["kd"]) == 1.0


def test_equivalence_compares_engine_and_reference_accuracy(tmp_path):
    text = benchmark(
        "equivalence.py",
        "--teacher",
        "resnet8",
        "--student",
        "resnet8",
        "--seeds",
        "0",
        "1",
        "--epochs",
        "1",
        "--lr-decay-epochs",
        "--teacher-epochs",
        "2",
        cwd=tmp_path,
    )
    assert re.search(r"^engine\s*: mean 0\.\d{4}\s+std over seeds 0\.\d{4}\s+\(2 seeds\)$", text, re.MULTILINE), text
    assert re.search(r"^reference: mean 0\.\d{4}", text, re.MULTILINE), text
    assert re.search(r"difference of means [+-]0\.\d{4}; largest seed-to-seed std", text), text
