"""What the 64-bit side shares with the worker processes, in a module that imports nothing: the broker reads these
without importing the worker itself (its sockets, ctypes marshalling and wrappers: 40-60 ms of every broker start,
on the path to a pool being ready)."""

__all__ = [
    "ADOPTION_TIMEOUT",
    "EXIT_BROKER_GONE",
    "EXIT_RETIRED",
    "EXIT_STARTUP_FAILED",
    "EXIT_UNLOADABLE",
    "LIBRARY_KINDS",
    "MAX_MESSAGE",
]

EXIT_STARTUP_FAILED = 3
"""Exit code when a wrapper's constructor raised: maybe transient (a device still busy), so the supervisor
retries with back-off, never in a tight loop."""
EXIT_BROKER_GONE = 4
"""Exit code when the process that started the worker is gone."""
EXIT_UNLOADABLE = 5
"""Exit code when what the service hosts can never load as configured (a ConfigError): not retried.
The reason is in the status file, if the supervisor named one."""
EXIT_RETIRED = 6
"""Exit code after the broker said STOP (the worker was recycled or its pool scaled down): its supervisor starts a
successor at once (``dllpool worker``), or has already (a pool's own workers)."""

LIBRARY_KINDS = ("cdll", "windll", "oledll")
"""The ``kind`` values a declared library may have, as msl-loadlib's ``libtype`` names them."""

MAX_MESSAGE = 1 << 20
"""Bytes of one zygote control message: more than a command line may hold (128 KiB per argument on Linux)."""
ADOPTION_TIMEOUT = 5.0
"""Seconds a worker forked by a zygote waits to become its broker's child; longer means the broker is gone."""
