"""Distillation methods by name (see :mod:`afdistill.methods.base`)."""
from . import afd, at, combined, crd, fitnet, kd, l2t, mhgd, rkd  # noqa: F401  (registers the methods)
from .base import (Batch, Choice, Context, Method, Range, build_method, check_method_params, dry_run, kd_loss,
                   list_methods, method_class, method_defaults, register_method)

__all__ = ["Batch", "Choice", "Context", "Method", "Range", "build_method", "check_method_params", "dry_run",
           "kd_loss", "list_methods", "method_class", "method_defaults", "register_method"]
