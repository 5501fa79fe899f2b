"""The README stays true: its set-up commands are what CI runs, and its method example works."""

import re
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from afdistill.methods import (
    Batch,
    Capabilities,
    Context,
    KDOnTop,
    Method,
    Range,
    build_method,
    dry_run,
    register_method,
)
from afdistill.methods.base import _METHODS
from afdistill.models import create_model

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_installs_and_tests_the_way_the_readme_says():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    install, test = blocks[0].strip(), blocks[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert install.split(" && snakemake")[0] in ci
    assert test in ci.splitlines()


def register_the_example() -> None:
    """Register the README's example method (as ``mine``)."""
    section = README.split("## Adding a method")[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None  # the section holds the example
    code = match.group(1)
    code = "\n".join(line[3:] if line.startswith("   ") else line for line in code.splitlines())
    exec(
        code,
        {
            "nn": nn,
            "Method": Method,
            "register_method": register_method,
            "Annotated": Annotated,
            "Range": Range,
            "Capabilities": Capabilities,
            "KDOnTop": KDOnTop,
        },
    )


def test_the_add_a_method_example_runs():
    try:
        register_the_example()
        teacher, student = create_model("resnet14", 10).eval(), create_model("resnet8", 10)
        images, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
        context = Context(
            student, teacher, dry_run(student, images[:2]), dry_run(teacher, images[:2]), 10, torch.arange(20) % 10, 4
        )
        method = build_method("mine", {"beta": 10.0}, context)
        with torch.inference_mode():
            teacher_out = teacher(images, with_features=True)
        terms = method(student(images, with_features=True), teacher_out, Batch(images, labels, torch.arange(4)))
        assert set(terms) == {"ce", "kd", "mine"}
        method.backward(terms)
        assert all(p.grad is not None for p in method.parameters())
    finally:
        _METHODS.pop("mine", None)


def test_a_bad_value_for_the_example_method_is_refused_with_its_range():
    import pytest

    from afdistill.methods import check_method_params

    try:
        register_the_example()
        with pytest.raises(ValueError, match="methods.mine.beta: -1 is not allowed; expected a number >= 0"):
            check_method_params("mine", {"beta": -1}, "methods.mine")
    finally:
        _METHODS.pop("mine", None)
