"""The server of msl-loadlib's tests/test_server32_shutdown.py (MIT License, Copyright (c) Measurement
Standards Laboratory of New Zealand), with only its import lines changed: a shutdown handler that hangs."""

import os
import time

from workers32 import Server32


class ShutdownHangs(Server32):
    def __init__(self, host: str, port: int) -> None:
        path = os.path.join(os.path.dirname(__file__), "cpp_lib32")
        super().__init__(path, "cdll", host, port)

    def add(self, x: int, y: int) -> int:
        result: int = self.lib.add(x, y)
        return result

    def shutdown_handler(self) -> None:
        time.sleep(999)
