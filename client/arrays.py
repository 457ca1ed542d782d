"""Typed arrays a worker sends back, as NumPy arrays.

NumPy is optional on the 64-bit side: a worker answers with a typed array only to a call that sent one (a
caller with NumPy), so without NumPy an answer keeps the protocol's :class:`~protocol.codec.NDArray`.
"""

from __future__ import annotations

from typing import Any

from protocol.codec import NDArray

__all__ = ["from_wire"]


def from_wire(received: NDArray) -> Any:
    """A NumPy array over the received bytes (no copy; writable, as the bytes are this call's own)."""
    try:
        import numpy
    except ImportError:
        return received
    if received.data is None:
        return received
    return numpy.frombuffer(received.data, dtype=received.typestr).reshape(received.shape)
