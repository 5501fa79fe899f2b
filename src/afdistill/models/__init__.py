"""Networks with a uniform feature interface (see :mod:`afdistill.models.features`)."""
from . import imagenet_resnet, mobilenetv2, resnet, shufflenet, vgg, wrn  # noqa: F401  (registers the architectures)
from .features import Features
from .registry import (UnknownNameError, classifier, classifier_name, create_model, list_models, model_options,
                       register_model)

__all__ = ["Features", "UnknownNameError", "classifier", "classifier_name", "create_model", "list_models",
           "model_options", "register_model"]
