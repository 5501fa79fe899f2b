"""Models by name, as timm does it: ``create_model("resnet56", num_classes=100)``.

A factory's keyword parameters after ``num_classes`` are the architecture's options
(``create_model("wrn_40_2", 100, double_bn_update=True)``); ``model_options`` lists
them with their defaults so a grid can validate its keys before any job runs.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class UnknownNameError(ValueError):
    """A name that is not in one of the registries; the message lists the allowed names."""


def register_model(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = factory.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = factory
    return factory


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_factory(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise UnknownNameError(f"unknown architecture {name!r}; allowed: {', '.join(list_models())}")
    return _MODELS[name]


def model_options(name: str) -> dict[str, Any]:
    """The options ``create_model`` accepts for architecture ``name``, each with its default."""
    parameters = inspect.signature(model_factory(name)).parameters
    return {key: p.default for key, p in parameters.items() if key != "num_classes"}


def create_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    factory = model_factory(name)
    allowed = model_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UnknownNameError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for architecture {name!r}; "
            f"allowed: {', '.join(allowed) if allowed else 'none'}"
        )
    model = factory(num_classes=num_classes, **options)
    model.arch = name  # type: ignore[assignment]  # a plain attribute: Module.__setattr__'s stub wants a Tensor/Module
    return model


def classifier_name(arch: str, **options: Any) -> str:
    """The name of an architecture's classifier in its state dict, from a network built on the meta device
    (no memory, no initialisation)."""
    import torch

    with torch.device("meta"):
        return classifier(create_model(arch, 1, **options))[0]


def classifier(model) -> tuple[str, nn.Linear]:
    """The network's classifier: its last ``nn.Linear`` (every registered architecture ends with it), by name."""
    import torch.nn as nn

    found = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return found[-1]
