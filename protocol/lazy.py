"""Package names imported when first asked for (PEP 562): a package re-exports its public names from
``__init__``, but a process that uses few of them should not pay for importing the rest."""

import importlib
import sys
from collections.abc import Mapping
from typing import Any, Callable

__all__ = ["on_first_use"]


def on_first_use(package: str, names: Mapping[str, str]) -> "tuple[Callable[[str], Any], Callable[[], list[str]]]":
    """``package``'s ``__getattr__`` and ``__dir__``: each of ``names`` is imported from the submodule it maps to
    when first asked for, then kept in the package like any other name."""
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        submodule = names.get(name)
        if submodule is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{submodule}"), name)
        setattr(module, name, value)
        return value

    def __dir__() -> "list[str]":
        return sorted({*vars(module), *names})

    return __getattr__, __dir__
