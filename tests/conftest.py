import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ["Snakefile", "workflow", "profiles", "dvc.yaml", "pipelines", "params", "src"]  # src: DVC's code deps


def tool_env(tmp_path: Path | None = None) -> dict:
    """Environment for subprocesses: this interpreter's scripts first on PATH, a private MLflow store."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def method_context(teacher, student, images, *, classes=10, n_train=40, seed=0, artifact=None):
    """A method's ``Context`` for unit tests: each network's dry-run features on two of ``images`` (either may be
    ``None``), ``n_train`` training labels cycling over ``classes``, the batch size of ``images``."""
    import torch

    from afdistill.methods import Context, dry_run

    return Context(
        student,
        teacher,
        None if student is None else dry_run(student, images[:2]),
        None if teacher is None else dry_run(teacher, images[:2]),
        classes,
        torch.arange(n_train) % classes,
        len(images),
        seed=seed,
        artifact=artifact,
    )


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout: int = 900):
    result = subprocess.run(cmd, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


TINY_GRID = {
    "grid": "default",
    "dataset": "digits",
    "data": {"root": "data/raw", "download": False, "verify_checksums": True},
    "device": "cpu",
    "seeds": [0, 1],
    "train": {
        "epochs": 1,
        "batch_size": 64,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.0005,
        "lr_decay_epochs": [1],
        "lr_decay_rate": 0.1,
    },
    "teachers": {"seed": 0, "train": {"epochs": 2}},
    "runtime": {"precision": "auto", "channels_last": "auto", "compile": "auto"},
    "links": {"seed": 0},
    "heads": {"seed": 0, "train": {"epochs": 1}},
    "pairs": [{"teacher": "resnet8", "student": "resnet8"}],
    "methods": {
        "vanilla": {},
        "kd": {"alpha": 0.9, "temperature": 4},
        "fitnet": {},
        "at": {},
        "at_grad": {},
        "rkd": {},
        "crd": {"nce_k": 16},
        "l2t": {},
        "mhgd": {"num_heads": 2},
        "afd": {"beta": 200, "qk_dim": 16},
        "afd_pretrained": {"beta": 200},
    },
    "report": {"metric": "accuracy"},
}


def make_project(path: Path, grid: dict | None = None, dvc: bool = True) -> Path:
    """A copy of the pipeline (Snakefile, rules, profiles, src) with a tiny params/default.yaml and its dvc.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, path / name)
    (path / "params" / "default.yaml").write_text(yaml.safe_dump(grid or TINY_GRID, sort_keys=False))
    if dvc:  # the grid's own DVC pipeline (a grid that is invalid on purpose has none)
        run(["afdistill", "dvc", "--grid", "params/default.yaml"], cwd=path)
    return path


@pytest.fixture
def small_data(tmp_path) -> Path:
    """A prepared dataset in the real on-disk format: a class-balanced slice of digits."""
    from afdistill.data import prepare

    full = tmp_path / "digits_full"
    prepare("digits", full)
    out = tmp_path / "digits_small"
    out.mkdir()
    for split, count in (("train", 400), ("test", 100)):
        with np.load(full / f"{split}.npz") as arrays:
            np.savez(out / f"{split}.npz", images=arrays["images"][:count], labels=arrays["labels"][:count])
    meta = yaml.safe_load((full / "meta.json").read_text())
    meta.update(n_train=400, n_test=100)
    import json

    (out / "meta.json").write_text(json.dumps(meta))
    return out
