"""Which source files decide a job's result, and a hash of what they compute.

A job's result depends on the package modules its computation imports. The
import graph is read statically from the sources (``from .x import y``), so
the set is derived, never listed by hand. Package ``__init__`` modules are
registries: they import every method (or model) so names resolve, but a job
uses only the ones it names, so their imports do not count and a job adds
the modules that define the method and architectures it names. (A registry
is recognised by its form: ``from . import afd, crd`` in a package's
``__init__``; its ``from .base import ...`` lines do count.) Editing
``methods/crd.py`` then changes the fingerprint of CRD's jobs alone.

The hash covers each module's code with docstrings removed and comments
dropped (``ast.unparse``), so rewording a comment retrains nothing.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = "afdistill"
ROOT = Path(__file__).resolve().parent


def module_path(module: str) -> Path:
    relative = module.split(".")[1:]
    base = ROOT.joinpath(*relative)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module:
    return ast.parse(module_path(module).read_text(), filename=str(module_path(module)))


def _resolve(module: str, level: int, name: str | None) -> str:
    is_package = module_path(module).name == "__init__.py"
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _existing(module: str) -> bool:
    return module.split(".")[0] == PACKAGE and module_path(module).is_file()


@lru_cache(maxsize=None)
def imports(module: str) -> tuple[str, ...]:
    """Package modules that ``module`` imports (anywhere in its body, lazily imported ones included),
    except the registrations of a package ``__init__`` (``from . import afd, crd``)."""
    registry = module_path(module).name == "__init__.py"
    found: list[str] = []
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node.level, node.module) if node.level else (node.module or "")
            if not target.startswith(PACKAGE):
                continue
            if registry and node.level == 1 and node.module is None:
                continue
            for alias in node.names:  # `from .models import fold` imports a submodule
                sub = f"{target}.{alias.name}"
                found.append(sub if _existing(sub) else target)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith(PACKAGE + ".")]
    return tuple(dict.fromkeys(m for m in found if _existing(m) and m != module))


def closure(roots: list[str]) -> list[str]:
    """The modules ``roots`` depend on."""
    seen: dict[str, None] = {}
    stack = list(roots)
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen[module] = None
        stack += imports(module)
    return sorted(seen)


def files(modules: list[str]) -> list[str]:
    """Source paths relative to the repository root (``src/afdistill/...``)."""
    repository = ROOT.parent.parent
    return [str(module_path(m).relative_to(repository)) for m in modules]


@lru_cache(maxsize=None)
def _module_hash(module: str) -> str:
    tree = ast.parse(module_path(module).read_text())  # a fresh tree: this one is edited below
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()


def fingerprint(modules: list[str]) -> str:
    digest = hashlib.sha256()
    for module in sorted(modules):
        digest.update(f"{module}:{_module_hash(module)}\n".encode())
    return digest.hexdigest()


def defining_module(obj) -> str:
    """The module that defines a registered class or factory (a method type, an architecture)."""
    return obj.__module__
