"""Distillation methods by name (see :mod:`afdistill.methods.base`)."""
from . import (ab, afd, at, combined, crd, dist, dkd, dml, fact, fitnet, fsp, ft, kd, kdsvd, l2t,  # noqa: F401
               logits, mhgd, min_l2, mlkd, reviewkd, rkd, symmetry_norm)  # (importing registers them)
from .base import (Batch, Choice, Context, Method, Parameter, Range, View, build_method, check_method_fit,
                   check_method_params, describe_method, dry_run, kd_loss, list_methods, method_class,
                   method_defaults, method_parameters, register_method)

__all__ = ["Batch", "Choice", "Context", "Method", "Parameter", "Range", "View", "build_method", "check_method_fit",
           "check_method_params", "describe_method", "dry_run", "kd_loss", "list_methods", "method_class",
           "method_defaults", "method_parameters", "register_method"]
