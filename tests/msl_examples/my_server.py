"""msl-loadlib's documented server example (its "Direct" and "Client64" pages), with only the import line and
the library (the project's demo library, which has ``add`` and ``version``) changed."""

import os

from workers32 import Server32

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "build", "32", "libdemo")


class MyServer(Server32):
    """Wrapper around a 32-bit C library 'libdemo' that has an 'add' and 'version' function."""

    def __init__(self, host, port, **kwargs):
        # Load the 'libdemo' shared-library file using ctypes.CDLL
        super(MyServer, self).__init__(DEMO, "cdll", host, port)
        # The Server32 class has a 'lib' property that is a reference to the ctypes.CDLL object
        self.kwargs = kwargs

    def add(self, a, b):
        # The shared library's 'add' function takes two integers as inputs and returns the sum
        return self.lib.add(a, b)

    def version(self):  # type: ignore[override]  # msl-loadlib's Server32.version is a staticmethod too
        # The shared library's 'version' function takes no arguments and returns the version number
        return self.lib.version()

    def kwarg_types(self):
        return {key: type(value).__name__ for key, value in self.kwargs.items()}

    def shutdown_handler(self):
        marker = self.kwargs.get("marker")
        if marker:
            with open(marker, "w") as f:
                f.write("closed")
