"""The public names of each package: their annotations resolve at run time, as tools that read them need
(``typing.get_type_hints``: documentation generators, validators, IDEs' runtime inspection)."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Iterator
from typing import Any

import pytest

PACKAGES = ("broker", "client", "protocol", "workers32")


def public_callables() -> Iterator[tuple[str, Any]]:
    """Each public function, and each public class with its constructor, methods and properties."""
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isclass(value):
                yield f"{package}.{name}", value
                yield f"{package}.{name}.__init__", value.__init__
                for attr, member in vars(value).items():
                    function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                    if not attr.startswith("_") and inspect.isfunction(function):
                        yield f"{package}.{name}.{attr}", function
            elif inspect.isfunction(value):
                yield f"{package}.{name}", value


@pytest.mark.parametrize(("name", "function"), list(public_callables()), ids=lambda v: v if isinstance(v, str) else "")
def test_annotations_resolve(name: str, function: Any) -> None:
    typing.get_type_hints(function)
