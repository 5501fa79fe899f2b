"""Weights files (published teachers, ImageNet weights to fine-tune from, this project's ``model.pt``): read
safely and matched against the network they are meant for, naming the file and what does not fit.

Both the grid check (before any job, on a network built on the meta device, tensors left on disk) and
:func:`afdistill.engine.load_network` (in the job) go through :func:`match`, so a file of another
architecture is refused by ``afdistill check`` with the same message the job would give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import FileProblem, load_torch
from .models import classifier_name, create_model

#: what to do about a weights file the user named (not one a job of the pipeline wrote)
GIVEN = (
    "for a file the grid names, check its path or download it again; for one a job wrote, delete it and rerun that job"
)


class WeightsMismatch(FileProblem):
    """A readable weights file whose tensors do not fit the architecture it is given for."""


def state_dict_of(loaded: Any, path: str | Path) -> dict:
    """The state dict inside a loaded file: ours and torchvision's are bare, RepDistiller's and mdistiller's
    ``{'model': state_dict, ...}``."""
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not loaded or not all(hasattr(v, "shape") for v in loaded.values()):
        raise WeightsMismatch(
            f"{path}: holds no state dict (a mapping of parameter names to tensors, alone or under 'model'); {GIVEN}"
        )
    return loaded


def read(path: str | Path, arch: str, mmap: bool = False, fix: str = GIVEN) -> dict:
    """The state dict of a weights file for ``arch``, read with ``weights_only`` (:func:`files.load_torch`)."""
    return state_dict_of(load_torch(path, f"the {arch} weights", "cpu", fix=fix, mmap=mmap), path)


def classes_of(state: dict, path: str | Path, arch: str, options: dict | None = None) -> int:
    """How many classes the file's classifier has."""
    head = classifier_name(arch, **(options or {}))
    weight = state.get(f"{head}.weight")
    if weight is None or len(weight.shape) != 2:
        raise WeightsMismatch(
            f"{path}: does not hold {arch} weights: no classifier {head}.weight (it holds {_sample(state)}); {GIVEN}"
        )
    return int(weight.shape[0])


def match(
    state: dict,
    path: str | Path,
    arch: str,
    num_classes: int,
    options: dict | None = None,
    new_classifier: bool = False,
    network=None,
) -> None:
    """Raise :class:`WeightsMismatch` unless ``state`` loads into ``arch`` strictly (every tensor but the
    classifier's with ``new_classifier``), naming missing, unexpected and mis-shaped tensors. ``network``: the
    architecture already built (the job's); otherwise one is built on the meta device (no memory)."""
    import torch

    if network is None:
        with torch.device("meta"):
            network = create_model(arch, num_classes, **(options or {}))
    expected = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    head = classifier_name(arch, **(options or {})) + "."
    skip = (lambda key: key.startswith(head)) if new_classifier else (lambda key: False)
    missing = [k for k in expected if k not in state and not skip(k)]
    unexpected = [k for k in state if k not in expected and not skip(k)]
    shapes = [
        f"{k} {tuple(state[k].shape)} (the network's {expected[k]})"
        for k in expected
        if k in state and not skip(k) and tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or shapes):
        return
    problems = [
        f"{label} {', '.join(items[:3])}{f' and {len(items) - 3} more' if len(items) > 3 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("other shapes:", shapes))
        if items
    ]
    what = "" if new_classifier else f" for {num_classes} classes"
    raise WeightsMismatch(
        f"{path}: does not hold {arch} weights{what} ({'; '.join(problems)}): a file of another "
        f"architecture or options; {GIVEN}"
    )


def _sample(state: dict) -> str:
    keys = list(state)
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
