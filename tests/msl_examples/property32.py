"""The server of msl-loadlib's tests/test_server32_property.py (MIT License, Copyright (c) Measurement
Standards Laboratory of New Zealand), with only its import lines changed; the client is in the test."""

from __future__ import annotations

import os
from ctypes import c_float

from workers32 import Server32


class Property32(Server32):
    CONSTANT: int = 2

    def __init__(self, host: str, port: int) -> None:
        path = os.path.join(os.path.dirname(__file__), "cpp_lib32")
        super().__init__(path, "cdll", host, port)

        self.three: int = self.lib.add(1, 2)

    def subtract(self, a: float, b: float) -> float:
        self.lib.subtract.restype = c_float
        result: float = self.lib.subtract(c_float(a), c_float(b))
        return result

    @property
    def seven(self) -> int:
        return 7

    @property
    def parameters(self) -> dict[str, int | str | complex]:
        return {"one": 1, "string": "hey", "complex": 7j}

    @property
    def multiple(self) -> tuple[int, str, complex]:
        return 1, "hey", 7j
