"""The first declaration form, ``{ args = ["double*", "int", "double"], returns = "double" }``, made into the
normalized declaration CFunction takes, until the 64-bit configuration parser does that for every form.

The type names are checked on the 64-bit side with :func:`check_type`. An argument ``T*`` used to be an input
array of any length; here its length is the first integer parameter after it (as in every such function the
demos declare), so that the worker checks it like any declared length.
"""

from collections.abc import Mapping
from typing import Any

from protocol.errors import ConfigError

from .marshal import SCALARS

__all__ = ["POINTER_SUFFIX", "check_type", "normalize", "type_names"]

_ALIASES = {name + "_t": name for name in SCALARS if name[-1].isdigit()}
_ALIASES.update({"unsigned int": "uint", "unsigned": "uint", "char": "int8", "unsigned char": "uint8"})

POINTER_SUFFIX = "*"
"""``double*`` etc.: an input array, passed as a list of numbers, an ``array.array`` or raw bytes."""

_STRINGS = {"char*": "char", "wchar*": "wchar"}
_INTEGERS = {name for name, ctype in SCALARS.items() if name not in ("float", "double", "bool")}


def type_names() -> list[str]:
    """Every type name the first form may use."""
    names = sorted(SCALARS) + sorted(_ALIASES) + sorted(_STRINGS)
    return names + [n + POINTER_SUFFIX for n in sorted(SCALARS) if n != "bool"] + ["void"]


def _canonical(name: str) -> str:
    name = " ".join(str(name).split()).replace(" *", "*")
    return _ALIASES.get(name, name)


def _is_array(canonical: str) -> bool:
    return canonical.endswith(POINTER_SUFFIX) and canonical[:-1] in SCALARS and canonical != "bool*"


def check_type(name: str, *, returns: bool = False) -> None:
    """Raise ConfigError for a type name a worker would refuse, before any worker starts."""
    canonical = _canonical(name)
    if returns and canonical not in SCALARS and canonical not in _STRINGS and canonical != "void":
        raise ConfigError(
            f"unknown return type {name!r}; use void, char*, wchar* or one of: {', '.join(sorted(SCALARS))}"
        )
    if not returns and canonical not in SCALARS and canonical not in _STRINGS and not _is_array(canonical):
        raise ConfigError(f"unknown argument type {name!r}; known types: {', '.join(type_names())}")


def normalize(name: str, decl: Mapping[str, Any]) -> dict[str, Any]:
    """The normalized declaration of a first-form one (unnamed parameters are ``arg1``, ``arg2``...)."""
    args = [str(a) for a in decl.get("args", [])]
    returns = str(decl.get("returns", "int"))
    for arg in args:
        check_type(arg)
    check_type(returns, returns=True)
    canonical = [_canonical(a) for a in args]
    params: list[dict[str, Any]] = []
    for index, arg in enumerate(canonical):
        param: dict[str, Any] = {"name": f"arg{index + 1}"}
        if arg in _STRINGS:
            param.update(kind="string", type=_STRINGS[arg])
        elif _is_array(arg):
            lengths = [f"arg{i + 1}" for i in range(index + 1, len(args)) if canonical[i] in _INTEGERS]
            if not lengths:
                raise ConfigError(f"{name}: argument {index + 1} ({args[index]}) has no integer length after it")
            param.update(kind="array", dir="in", type=arg[:-1], dims=[lengths[0]], storage=[None])
        else:
            param.update(kind="value", type=arg)
        params.append(param)
    ret = _canonical(returns)
    return {
        "symbol": decl.get("symbol") or name,
        "signature": f"{returns} {name}({', '.join(args)})",
        "returns": None
        if ret == "void"
        else {"kind": "string", "type": _STRINGS[ret]}
        if ret in _STRINGS
        else {"kind": "value", "type": ret},
        "params": params,
    }
