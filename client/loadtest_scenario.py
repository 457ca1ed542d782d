"""What a load test calls: :class:`CallSpec` (one call and its weight) and :class:`Scenario` (a weighted
mix), written in Python or read from a TOML or Python file."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import runpy
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .calls import check_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["CallSpec", "Scenario"]


@dataclasses.dataclass(frozen=True)
class CallSpec:
    """One call of a scenario: ``service.method(*args)``, picked ``weight`` times as often as a call of
    weight 1."""

    service: str
    method: str
    args: tuple[Any, ...] = ()
    weight: float = 1.0

    def describe(self) -> str:
        return f"{self.service}.{self.method}({', '.join(json.dumps(a, default=repr) for a in self.args)})"

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "method": self.method, "args": list(self.args), "weight": self.weight}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "a call") -> CallSpec:
        """A call from a TOML ``[[call]]`` table or :meth:`to_dict`; ValueError naming ``where`` if it is not one."""
        unknown = set(data) - {"service", "method", "args", "weight"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (a call has service, method, args, weight)")
        service, method, args = data.get("service"), data.get("method"), data.get("args", [])
        weight = data.get("weight", 1.0)
        if not isinstance(service, str) or not isinstance(method, str):
            raise ValueError(f'{where}: needs service and method as strings, e.g. service = "demo" method = "add"')
        if not isinstance(args, list):
            raise ValueError(f"{where}: args must be a list, e.g. args = [1, 2]")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
            raise ValueError(f"{where}: weight must be a number above 0, got {weight!r}")
        return cls(service, method, tuple(args), float(weight))


class Scenario:
    """The calls a load test makes, each picked at random in proportion to its weight."""

    def __init__(self, calls: Iterable[CallSpec]) -> None:
        self.calls = tuple(calls)
        if not self.calls:
            raise ValueError("a scenario needs at least one call")
        for call in self.calls:
            check_name(call.service, "service")
            check_name(call.method, "method")
            if not 0 < call.weight < math.inf:
                raise ValueError(f"{call.describe()}: weight must be above 0, got {call.weight!r}")
        self._cumulative = list(itertools.accumulate(c.weight for c in self.calls))

    @classmethod
    def single(cls, service: str, method: str, /, *args: Any) -> Scenario:
        return cls([CallSpec(service, method, args)])

    @classmethod
    def of(cls, calls: Scenario | CallSpec | tuple[str, str, Sequence[Any]]) -> Scenario:
        """A Scenario, from itself, one CallSpec, or a ``(service, method, args)`` tuple."""
        if isinstance(calls, Scenario):
            return calls
        if isinstance(calls, CallSpec):
            return cls([calls])
        service, method, args = calls
        return cls.single(service, method, *args)

    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        """A scenario file: one ``[[call]]`` table per call, with ``service``, ``method``, ``args`` and
        ``weight`` (default 1). ValueError, naming the file, if it is not one."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read the scenario {path}: {exc}") from None
        tables = data.get("call")
        if set(data) != {"call"} or not isinstance(tables, list):
            raise ValueError(f"{path}: a scenario holds [[call]] tables only (service, method, args, weight)")
        return cls(CallSpec.from_dict(t, f"{path}, call {n}") for n, t in enumerate(tables, 1))

    @classmethod
    def from_file(cls, path: str | Path) -> Scenario:
        """A TOML scenario (:meth:`from_toml`), or a Python file (``*.py``) that sets ``scenario`` to a
        Scenario or a list of CallSpec: for arguments TOML cannot write (bytes, arrays) or calls made up
        by code. ValueError, naming the file, if it is neither."""
        path = Path(path)
        if path.suffix != ".py":
            return cls.from_toml(path)
        try:
            found = runpy.run_path(str(path)).get("scenario")
        except Exception as exc:  # the user's own code, run here: say where it failed
            raise ValueError(f"the scenario {path} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(found, Scenario):
            return found
        if isinstance(found, (list, tuple)) and all(isinstance(c, CallSpec) for c in found):
            return cls(found)
        raise ValueError(f"{path} must set scenario = Scenario([...]) or a list of CallSpec")

    def picker(self, seed: int) -> Callable[[], CallSpec]:
        """A function returning the next call to make: a weighted random pick, reproducible from ``seed``."""
        if len(self.calls) == 1:
            (only,) = self.calls
            return lambda: only
        choose = random.Random(seed).choices
        calls, cumulative = self.calls, self._cumulative
        return lambda: choose(calls, cum_weights=cumulative)[0]

    def describe(self) -> str:
        if len(self.calls) == 1:
            return self.calls[0].describe()
        return ", ".join(f"{c.describe()} x{c.weight:g}" for c in self.calls)

    def to_list(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in self.calls]

    @classmethod
    def from_list(cls, data: Iterable[Mapping[str, Any]]) -> Scenario:
        return cls(CallSpec.from_dict(d) for d in data)
