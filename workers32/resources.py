"""What a worker measures of itself for the broker: resident memory and, in a 32-bit process, free address space.

A leaking vendor DLL shows up as resident memory; a 32-bit one that leaks or fragments runs out of address space
long before the machine runs out of memory (a 32-bit process has 4 GiB at most, 3 GiB under a 32-bit kernel or
2 GiB on Windows without large-address awareness), and then every allocation fails. The worker sends both
figures with its heartbeats, so the broker can show them and retire the worker before it fails a call.

Linux reads ``/proc/self``; Windows asks ``kernel32`` (``K32GetProcessMemoryInfo``, ``GlobalMemoryStatusEx``,
whose ``ullAvailVirtual`` is exactly the process's free user address space). Elsewhere a figure is missing,
never made up.
"""

import ctypes
import os
import struct
import sys
from typing import Optional

__all__ = ["address_space_free", "figures", "rss"]

_POINTER_BITS = 8 * struct.calcsize("P")
_GIB = 1 << 30


def rss() -> Optional[int]:
    """Resident bytes of this process, or None where it cannot be read."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/statm", "rb") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None
    if sys.platform == "win32":
        return _windows_rss()
    return None


def address_space_free() -> Optional[int]:
    """Bytes of user address space a 32-bit process has not reserved or mapped; None in a 64-bit one."""
    if _POINTER_BITS != 32:
        return None
    if sys.platform.startswith("linux"):
        return _linux_address_space_free()
    if sys.platform == "win32":
        return _windows_memory_status("ullAvailVirtual")
    return None


def figures() -> "dict[str, int]":
    """What the heartbeat reports (see ``protocol.frames.FIGURES``): only the figures this platform gives."""
    measured = {"rss": rss(), "address_space_free": address_space_free()}
    return {name: value for name, value in measured.items() if value is not None}


def _linux_address_space_free() -> Optional[int]:
    """The user address space less every mapping in ``/proc/self/maps``. Its top is 4 GiB under a 64-bit
    kernel and 3 GiB under a 32-bit one; the stack, always mapped near the top, tells which."""
    used = top = 0
    try:
        with open("/proc/self/maps", "rb") as f:
            for line in f:
                start, _, end = line.partition(b" ")[0].partition(b"-")
                low, high = int(start, 16), int(end, 16)
                used += high - low
                top = max(top, high)
    except (OSError, ValueError):
        return None
    limit = 4 * _GIB if top > 3 * _GIB else 3 * _GIB
    return max(0, limit - used)


class _MemoryStatusEx(ctypes.Structure):
    _fields_ = [
        ("dwLength", ctypes.c_ulong),
        ("dwMemoryLoad", ctypes.c_ulong),
        ("ullTotalPhys", ctypes.c_ulonglong),
        ("ullAvailPhys", ctypes.c_ulonglong),
        ("ullTotalPageFile", ctypes.c_ulonglong),
        ("ullAvailPageFile", ctypes.c_ulonglong),
        ("ullTotalVirtual", ctypes.c_ulonglong),
        ("ullAvailVirtual", ctypes.c_ulonglong),
        ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
    ]


class _ProcessMemoryCounters(ctypes.Structure):
    _fields_ = [
        ("cb", ctypes.c_ulong),
        ("PageFaultCount", ctypes.c_ulong),
        ("PeakWorkingSetSize", ctypes.c_size_t),
        ("WorkingSetSize", ctypes.c_size_t),
        ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
        ("QuotaPagedPoolUsage", ctypes.c_size_t),
        ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
        ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
        ("PagefileUsage", ctypes.c_size_t),
        ("PeakPagefileUsage", ctypes.c_size_t),
    ]


def _windows_memory_status(field: str) -> Optional[int]:
    status = _MemoryStatusEx()
    status.dwLength = ctypes.sizeof(status)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        return None
    return int(getattr(status, field))


def _windows_rss() -> Optional[int]:
    counters = _ProcessMemoryCounters()
    counters.cb = ctypes.sizeof(counters)
    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    if not kernel32.K32GetProcessMemoryInfo(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb):
        return None
    return int(counters.WorkingSetSize)
