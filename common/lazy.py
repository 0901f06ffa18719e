"""Lazy public names for a package ``__init__`` (PEP 562), so that light submodules stay light.

A package's config module is validated by every entry point before any work; if the package's
``__init__`` imported its torch or Lightning modules eagerly, importing the config would too.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, public: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``public[name]`` (a module path) on first access."""

    def __getattr__(name: str) -> Any:
        if name not in public:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(public[name]), name)

    return __getattr__
