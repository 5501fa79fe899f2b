"""Networks with a uniform feature interface (see :mod:`afdistill.models.features`)."""

from . import (  # noqa: F401
    imagenet_resnet,
    mhgd_nets,
    mobilenetv1,
    mobilenetv2,
    nin,
    resnet,
    shufflenet,
    vgg,
    wrn,  # (importing registers the architectures)
)
from .features import Features
from .registry import (
    UnknownNameError,
    classifier,
    classifier_name,
    create_model,
    list_models,
    model_options,
    register_model,
)

__all__ = [
    "Features",
    "UnknownNameError",
    "classifier",
    "classifier_name",
    "create_model",
    "list_models",
    "model_options",
    "register_model",
]
