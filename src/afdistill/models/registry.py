"""Models by name, as timm does it: ``create_model("resnet56", num_classes=100)``."""
from __future__ import annotations

from typing import Callable

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


def create_model(name: str, num_classes: int) -> nn.Module:
    if name not in _MODELS:
        raise UnknownNameError(f"unknown architecture {name!r}; allowed: {', '.join(list_models())}")
    model = _MODELS[name](num_classes=num_classes)
    model.arch = name
    return model
