"""Handles: a pointer a 32-bit library returned, held by the worker that made it, used from the caller by id.

The demo library's ``device_open`` returns a ``struct Device *``, declared ``params = { return = "handle" }``
in config/pool.toml; ``device_read`` answers ``id * 1000 + reads``, so a read that reached another device (or
another worker's memory) would show.
"""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker import Pool
from client import ArgumentError, Client, HandleLost
from client.handles import Handle
from protocol.codec import HandleRef

from .conftest import wait_for


def test_a_handle_routes_every_call_to_its_worker_from_many_threads(pool: Pool, client: Client) -> None:
    def reads(device_id: int) -> tuple[Handle, list[int]]:
        device = client.call("demo", "device_open", device_id)
        return device, [client.call("demo", "device_read", device) for _ in range(100)]

    with ThreadPoolExecutor(8) as threads:
        results = list(threads.map(reads, range(1, 9)))
    for device_id, (device, got) in enumerate(results, 1):
        assert isinstance(device, Handle) and device.kind == "Device" and device.pid in pool.worker_pids("demo")
        assert got == [device_id * 1000 + n for n in range(1, 101)], f"a read of device {device_id} went astray"
        client.call("demo", "device_close", device)
    assert len({device.pid for device, _ in results}) > 1, "the devices were all opened on one worker"


def test_a_closed_or_forged_handle_is_refused_before_the_library_is_called(pool: Pool, client: Client) -> None:
    device = client.call("demo", "device_open", 7)
    assert client.call("demo", "device_read", device) == 7001
    client.call("demo", "device_close", device)
    with pytest.raises(ArgumentError, match="not open"):
        client.call("demo", "device_read", device)
    with pytest.raises(ArgumentError, match="not open"):
        client.call("demo", "device_read", HandleRef(device.pid, device.id + 10_000, "Device"))
    with pytest.raises(ArgumentError, match="expected a handle"):
        client.call("demo", "device_read", 12345)


def test_a_dropped_handle_is_closed_by_its_worker(pool: Pool, client: Client) -> None:
    device = client.call("demo", "device_open", 3)
    pid = device.pid
    before = client.broadcast("demo", "devices_open")[pid]
    del device
    gc.collect()
    wait_for(lambda: client.broadcast("demo", "devices_open")[pid] == before - 1, 30, "the worker to close the device")


def test_a_handle_whose_worker_died_is_lost(pool: Pool, client: Client) -> None:
    device = client.call("demo", "device_open", 5)
    pool.kill_worker(device.pid)
    with pytest.raises(HandleLost, match=f"pid {device.pid}"):
        client.call("demo", "device_read", device)
    pool.wait_ready()


def test_the_table_lends_random_ids_and_a_close_claims_its_handle() -> None:
    from workers32.handles import Handles
    from workers32.marshal import Refused

    table = Handles()
    first, second = table.register(0x1000, "Device"), table.register(0x2000, "Device")
    assert first is not None and second is not None and abs(first.id - second.id) != 1
    assert table.register(0, "Device") is None, "a NULL pointer is no handle"
    assert table.pointer(first, "Device") == 0x1000 and table.pointer(first, "void") == 0x1000
    with pytest.raises(Refused, match="kind Device"):
        table.pointer(first, "Other")
    assert table.pointer(first, "Device", closing=True) == 0x1000
    with pytest.raises(Refused, match="not open"):
        table.pointer(first, "Device")  # being closed: no other call may use it
    assert table.drop([first.id]) == 0, "a drop leaves a handle being closed to its close"
    table.reopen(first)  # the close was refused before the library had it
    assert table.pointer(first, "Device") == 0x1000
    table.forget(first)
    with pytest.raises(Refused, match="not open"):
        table.pointer(first, "Device")
