"""A wrapper that misbehaves in every way a user's wrapper might; the worker must still answer."""

import os
import sys
import time


class Misbehaving:
    def __init__(self, **options: object) -> None:
        self.options = options

    def exit(self) -> None:
        sys.exit(3)

    def unsendable(self) -> object:
        return object()

    def hard_exit(self) -> None:
        os._exit(7)

    def scribble(self, text: str) -> int:
        """Writes ``text`` to the process's fd 1, no newline, as a library's printf would."""
        return os.write(1, text.encode())

    def echo(self, value: object) -> object:
        return value

    def option(self, name: str) -> object:
        return self.options.get(name)

    def pid(self) -> int:
        return os.getpid()

    def blob(self, size: int) -> bytes:
        return bytes(size)

    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def nap_holding(self, data: bytes, seconds: float) -> int:
        """Sleeps while it holds a (big) argument; its length."""
        time.sleep(seconds)
        return len(data)

    @staticmethod
    def static_add(a: int, b: int) -> int:
        return a + b
