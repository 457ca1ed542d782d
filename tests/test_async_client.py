"""AsyncClient (issue 10, item 5) against real pools of 32-bit workers: the Client's operations as coroutines,
with the same results and errors; a thousand tasks at once; cancelling a task cancels its call at the broker;
timeouts, close with calls pending and a broker that goes away.

Each test runs its coroutine with ``asyncio.run`` (no pytest plugin), and waits for observable states (the
broker's counters, a worker inside ``sleep_ms``) by polling them from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy
import pytest

from broker import Pool
from client import (
    ArgumentError,
    AsyncClient,
    BrokerUnavailable,
    Timeout,
    UnknownMethod,
    UnknownService,
    WorkerCrashed,
)
from client import shm as client_shm
from client.handles import Handle

from .conftest import ROOT, demo_service, in_nanosleep
from .test_cli import children_of
from .test_client_paths import Brokers
from .test_shm import arrays_service

SHARE_MIN = 64 * 1024
"""shared_memory_min of the clients that test shared memory: small, so the arrays stay cheap."""


def run(coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(coroutine(), 120))


async def until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Wait, without blocking the event loop, until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def segments() -> list[str]:
    """This process's shared-memory segments in /dev/shm."""
    prefix = f"dllpool.{os.getpid()}."
    return [name for name in os.listdir(client_shm.SHM_DIR) if name.startswith(prefix)]


def sleeping(pool: Pool) -> bool:
    return any(in_nanosleep(pid) for pid in pool.worker_pids("s"))


@pytest.fixture(scope="module")
def one() -> Iterator[Pool]:
    """Service ``s``: one worker, so a call queues behind the one running; ``a``: test_shm's wrapper."""
    service = demo_service(workers=1)
    functions = service["functions"]
    assert isinstance(functions, dict)
    functions["scale"] = {"c": "void scale(double *x, int n, double k)", "params": {"x": "inout[n]"}}
    with Pool.from_config({"services": {"s": service, "a": arrays_service()}}) as pool:
        yield pool


def test_call_submit_proxy_and_map_answer_as_the_client_does(pool: Pool) -> None:
    with pool.client(timeout=30) as client:
        expected = list(client.map("demo", "add", [(i, -2 * i) for i in range(1500)], chunksize=100))

    async def main() -> None:
        async with pool.async_client(timeout=30) as ac:
            assert await ac.call("demo", "add", 2, 3) == 5
            assert await ac.submit("demo", "add", 4, 5) == 9
            demo = ac.service("demo")
            assert await demo.add(6, 7) == 13
            assert await demo.add.submit(8, 9) == 17
            assert await demo.upper("Hello", 64) == {"return": 5, "out": "HELLO"}
            got = [r async for r in ac.map("demo", "add", [(i, -2 * i) for i in range(1500)], chunksize=100)]
            assert got == expected
            assert [r async for r in ac.map("demo", "add", iter([]))] == []
            result = await demo.scale(numpy.arange(5, dtype=numpy.float64), 5, 3.0)
            assert isinstance(result["x"], numpy.ndarray)
            numpy.testing.assert_array_equal(result["x"], [0.0, 3.0, 6.0, 9.0, 12.0])
            assert not ac._core.pending

    run(main)


def test_errors_are_the_clients_types(pool: Pool) -> None:
    async def main() -> None:
        async with pool.async_client(timeout=30) as ac:
            with pytest.raises(UnknownMethod) as info:
                await ac.call("demo", "no_such_function")
            assert info.value.details["service"] == "demo"
            with pytest.raises(UnknownService):
                await ac.call("no_such_service", "add", 1, 2)
            with pytest.raises(ArgumentError, match="argument 2"):
                ac.submit("demo", "add", 1, object())  # refused at once: nothing is sent
            with pytest.raises(ArgumentError):
                await ac.call("demo", "scale", [1.0], 1_000_000, 2.0)  # refused by the worker
            with pytest.raises(ValueError, match="method name"):
                ac.submit("demo", "")
            with pytest.raises(TypeError, match="timeout"):
                ac.submit("demo", "add", 1, 2, timeout="soon")  # type: ignore[arg-type]
            items: list[Any] = [(1, 2), "not a tuple", (3, object()), (4, 5)]
            got = [r async for r in ac.map("demo", "add", items, chunksize=2, return_exceptions=True)]
            assert got[0] == 3 and got[3] == 9
            assert isinstance(got[1], ArgumentError) and "AsyncClient.map needs a tuple" in str(got[1])
            assert isinstance(got[2], ArgumentError)
            seen = []
            with pytest.raises(ArgumentError):
                async for r in ac.map("demo", "add", items):
                    seen.append(r)
            assert seen == [3]
            assert await ac.call("demo", "add", 1, 1) == 2
            assert not ac._core.pending

    run(main)
    with pool.client(timeout=30) as client, pytest.raises(UnknownMethod):  # the same type from the Client
        client.call("demo", "no_such_function")


def test_a_thousand_concurrent_tasks_on_one_client_each_get_their_own_answer(pool: Pool) -> None:
    async def main() -> None:
        async with pool.async_client(timeout=60) as ac:
            tasks = [asyncio.create_task(ac.call("demo", "add", i, 1000 * i)) for i in range(1000)]
            assert await asyncio.gather(*tasks) == [1001 * i for i in range(1000)]
            assert not ac._core.pending
            assert ac.stats["late_replies"] == 0

    run(main)


def test_cancelling_the_task_cancels_its_call_at_the_broker(one: Pool) -> None:
    async def main() -> None:
        async with one.async_client(timeout=60) as ac:
            assert await ac.call("s", "count_calls") == 1
            stats = one.stats()
            busy = ac.submit("s", "sleep_ms", 1000)
            await until(lambda: sleeping(one), "the worker to run the sleep")
            queued = asyncio.create_task(ac.call("s", "count_calls"))
            await until(lambda: one.stats()["requests"] == stats["requests"] + 2, "the broker to queue the call")
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            await until(lambda: one.stats()["dropped_unrun"] == stats["dropped_unrun"] + 1, "the broker to drop it")
            assert [call.handle for call in ac._core.pending.values()] == [busy], "the cancelled call is pending"
            assert ac.stats["cancels_sent"] == 1
            assert await busy is None
            assert await ac.call("s", "count_calls") == 2, "the cancelled call ran after all"

            # A running call cannot be stopped: its answer is discarded, and the next call runs once it ends.
            running = asyncio.create_task(ac.call("s", "sleep_ms", 300))
            await until(lambda: sleeping(one), "the worker to run the sleep")
            running.cancel()
            assert await ac.call("s", "add", 2, 2) == 4
            assert one.stats()["discarded_replies"] == stats["discarded_replies"] + 1
            assert not ac._core.pending

    run(main)


def test_a_cancelled_call_releases_its_shared_memory(one: Pool) -> None:
    async def main() -> None:
        async with one.async_client(timeout=60, shared_memory_min=SHARE_MIN) as ac:
            assert not segments()
            values = numpy.arange(SHARE_MIN // 8 * 2, dtype=numpy.float64)
            result = await ac.call("s", "scale", values, len(values), 2.0)
            numpy.testing.assert_array_equal(result["x"], values * 2)
            assert not segments()
            busy = ac.submit("s", "sleep_ms", 500)
            await until(lambda: sleeping(one), "the worker to run the sleep")
            queued = ac.submit("s", "scale", values, len(values), 2.0)
            assert segments(), "the array did not go through shared memory"
            queued.cancel()
            await asyncio.sleep(0)  # the Future's done-callbacks run on the loop's next turn
            assert not segments()
            await busy

    run(main)


def test_a_call_whose_worker_cannot_open_its_shared_memory_goes_again_with_frames(
    one: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if the worker were on another host: it answers SharedMemoryError, the call goes again with frames,
    and for a while that service's calls go with frames at once."""
    made: list[str] = []
    write = client_shm._write_segment

    def written_then_gone(data: memoryview) -> Any:
        name, mapping = write(data)
        made.append(name)
        os.unlink(os.path.join(client_shm.SHM_DIR, name))
        return name, mapping

    monkeypatch.setattr(client_shm, "_write_segment", written_then_gone)
    values = numpy.arange(SHARE_MIN // 8 * 2, dtype=numpy.float64)

    async def main() -> None:
        async with one.async_client(timeout=30, shared_memory_min=SHARE_MIN) as ac:
            numpy.testing.assert_array_equal(await ac.call("a", "scale", values, 3.0), values * 3.0)
            assert len(made) == 1
            numpy.testing.assert_array_equal(await ac.call("a", "scale", values, 2.0), values * 2.0)
            assert len(made) == 1, "a call after the fallback tried shared memory again"

    run(main)
    assert not segments()


def test_timeouts_are_the_brokers_answer(pool: Pool) -> None:
    async def main() -> None:
        async with pool.async_client(timeout=0.2) as ac:
            with pytest.raises(Timeout) as info:
                await ac.call("demo", "sleep_ms", 2000)
            assert 0 < info.value.details["timeout"] <= 0.2
            assert await ac.call("demo", "sleep_ms", 1, timeout=None) is None
            got = [r async for r in ac.map("demo", "sleep_ms", [(500,)] * 4, timeout=0.1, return_exceptions=True)]
            assert len(got) == 4 and all(isinstance(r, Timeout) for r in got)
            assert ac.stats["timeouts"] == 0, "the client's backstop answered, not the broker"

    run(main)


def test_close_fails_the_pending_calls_and_the_broker_drops_the_queued_ones(one: Pool) -> None:
    async def main() -> None:
        ac = one.async_client(timeout=60)
        assert await ac.call("s", "add", 1, 1) == 2
        dropped = one.stats()["dropped_unrun"]
        requests = one.stats()["requests"]
        pending = [ac.submit("s", "sleep_ms", 2000)] + [ac.submit("s", "add", i, i) for i in range(5)]
        await until(lambda: one.stats()["requests"] == requests + 6, "the broker to take the calls")
        await until(lambda: sleeping(one), "the worker to run the sleep")
        await ac.close()
        assert sleeping(one), "close() waited for the running call"
        for future in pending:
            with pytest.raises(BrokerUnavailable, match="client closed"):
                await future
        await until(lambda: one.stats()["dropped_unrun"] == dropped + 5, "the broker to drop the queued calls")
        with pytest.raises(BrokerUnavailable, match="closed"):
            await ac.call("s", "add", 1, 1)
        await ac.close()  # idempotent

    run(main)


def test_a_broker_that_goes_away_gives_broker_unavailable(tmp_path: Path) -> None:
    brokers = Brokers(tmp_path)
    process = brokers.start()

    async def main() -> None:
        # A 30 s liveness window: the failure must come from the dropped connection, not from silence.
        async with AsyncClient(brokers.address, timeout=60, heartbeat_liveness=30) as ac:
            assert await ac.call("s", "add", 1, 2) == 3
            pending = ac.submit("s", "sleep_ms", 20_000)
            await until(lambda: any(in_nanosleep(pid) for pid in children_of(process.pid)), "the call to run")
            process.kill()
            with pytest.raises(BrokerUnavailable, match="may or may not have run") as info:
                await pending
            assert info.value.details["service"] == "s"
        async with AsyncClient(f"ipc://{tmp_path}/nobody", heartbeat_interval=0.1) as ac:
            with pytest.raises(BrokerUnavailable, match="nothing answers"):
                await ac.call("s", "add", 1, 2)

    try:
        run(main)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=30)


def test_an_async_client_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError, match="running event loop"):
        AsyncClient("ipc:///nowhere")


def test_the_readmes_asyncio_example_prints_what_it_says(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "async_client" in block)
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["5 9", "999000", "99990000"]


def test_a_request_over_the_brokers_message_limit_fails_alone() -> None:
    """Big requests go on a socket of their own, as with Client: the broker dropping that connection over a
    message above its max_message_size fails that call (saying why), not the others."""
    config = {"pool": {"max_message_size": 1 << 20}, "services": {"s": demo_service(workers=1)}}

    async def main(pool: Pool) -> None:
        async with pool.async_client() as ac:
            small = ac.submit("s", "sleep_ms", 300)
            await until(lambda: sleeping(pool), "the worker to run the sleep")
            with pytest.raises(BrokerUnavailable, match="bigger than its max_message_size"):
                await ac.call("s", "add", b"x" * (2 << 20), 1)
            assert await small is None
            assert await ac.call("s", "add", 2, 3, timeout=30) == 5

    with Pool.from_config(config) as pool:
        asyncio.run(asyncio.wait_for(main(pool), 120))


def test_a_session_keeps_its_worker_and_its_order_while_others_call_and_broadcast_reaches_every_worker(
    pool: Pool,
) -> None:
    async def main() -> None:
        async with pool.async_client(timeout=30) as ac:
            async with ac.session("demo") as session:
                first = await session.call("count_calls")
                others = asyncio.gather(*(ac.call("demo", "worker_pid") for _ in range(100)))
                assert [await session.call("count_calls") for _ in range(5)] == list(range(first + 1, first + 6))
                assert session.pid not in set(await others), "another caller reached the leased worker"
                assert await session.service().worker_pid() == session.pid
                counts = await asyncio.gather(*(session.submit("count_calls") for _ in range(20)))
                assert counts == list(range(first + 6, first + 26)), "a session's calls ran out of order"
            assert session.closed
            with pytest.raises(ValueError, match="closed"):
                session.submit("count_calls")
            answers = await ac.broadcast("demo", "worker_pid")
            assert sorted(answers) == sorted(pool.worker_pids("demo"))
            assert all(pid == answer for pid, answer in answers.items())
            assert not ac._core.pending

    run(main)


def test_a_session_whose_worker_dies_fails_with_worker_crashed(one: Pool) -> None:
    async def main() -> None:
        async with one.async_client(timeout=30) as ac:
            session = await ac.session("s")
            assert await session.call("add", 1, 2) == 3
            assert session.pid is not None
            one.kill_worker(session.pid)
            with pytest.raises(WorkerCrashed):
                await session.call("add", 1, 2)
            await session.close()

    run(main)
    one.wait_ready()


def test_handles_route_to_their_worker_from_many_tasks_and_a_dropped_one_is_closed(pool: Pool) -> None:
    async def reads(ac: AsyncClient, device_id: int) -> tuple[Handle, list[int]]:
        device = await ac.call("demo", "device_open", device_id)
        return device, [await ac.call("demo", "device_read", device) for _ in range(100)]

    async def main() -> None:
        async with pool.async_client(timeout=30) as ac:
            results = await asyncio.gather(*(reads(ac, device_id) for device_id in range(1, 9)))
            for device_id, (device, got) in enumerate(results, 1):
                assert isinstance(device, Handle) and device.pid in pool.worker_pids("demo")
                assert got == [device_id * 1000 + n for n in range(1, 101)], f"a read of device {device_id} went astray"
                await ac.call("demo", "device_close", device)
            device = await ac.call("demo", "device_open", 3)
            pid = device.pid
            before = (await ac.broadcast("demo", "devices_open"))[pid]
            del device, results
            gc.collect()
            deadline = time.monotonic() + 30
            while (await ac.broadcast("demo", "devices_open"))[pid] != before - 1:
                assert time.monotonic() < deadline, "the worker never closed the dropped device"
                await asyncio.sleep(0.02)

    run(main)
