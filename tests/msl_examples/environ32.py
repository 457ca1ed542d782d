"""A Server32 that reports the environment its library is loaded in (append_environ_path)."""

import os

from workers32 import Server32

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "build", "32", "libdemo")


class Environ32(Server32):
    def __init__(self, host, port, **kwargs):
        super().__init__(DEMO, "cdll", host, port)

    def path_entries(self):
        return os.environ.get("PATH", "").split(os.pathsep)
