"""Shared memory on one host (issue 9, item 3): big arrays cross as segments of /dev/shm, written once.

Through a real pool of 32-bit workers hosting tests/wrappers/shm_arrays.py, whose methods get a
``protocol.codec.NDArray`` and change it in place: the results are the same through shared memory, through
frames (``shared_memory_min=0``) and through the fallback (a worker that cannot open a segment); a
``shared_array`` is never copied; and however a call ends, its segments leave /dev/shm. The refusals are
tested on one worker this test talks to directly, frame by frame.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy
import pytest
import zmq

from broker import Pool, runtime32
from broker.config import load_config
from client import (
    BadRequest,
    BrokerUnavailable,
    Client,
    ConfigError,
    SharedMemoryError,
    Timeout,
    WorkerCrashed,
    close_shared_array,
    shared_array,
)
from client import shm as client_shm
from protocol import frames as wire
from protocol import pack_call, unpack_value
from protocol.codec import NDArray

from .conftest import ROOT, in_nanosleep, library, pid_alive, wait_for

WRAPPER = Path(__file__).resolve().parent / "wrappers" / "shm_arrays.py"
MIN = 64 * 1024
"""The clients' shared_memory_min here: small, so the tests stay cheap."""
BIG = MIN // 8 * 2
"""Doubles in an array that goes through shared memory."""


def arrays_service(workers: int = 1, threads: int = 1) -> dict[str, Any]:
    return {
        "workers": workers,
        "threads": threads,
        "module": str(WRAPPER),
        "class": "Arrays",
        "options": {"path": library(32)},
    }


def segments(pid: int | None = None) -> list[str]:
    """The shared-memory segments of process ``pid`` (this one by default)."""
    prefix = f"dllpool.{os.getpid() if pid is None else pid}."
    return sorted(name for name in os.listdir(client_shm.SHM_DIR) if name.startswith(prefix))


@pytest.fixture(autouse=True)
def no_segments_left() -> Iterator[None]:
    """Every test starts and must end with no segment of this process in /dev/shm (its own helpers included)."""
    assert not segments(), "a segment of this process was left by an earlier test"
    yield
    gc.collect()  # the shared_array segments of a test go with their arrays
    left = segments()
    for name in left:
        os.unlink(os.path.join(client_shm.SHM_DIR, name))
    assert not left, f"segments left in /dev/shm: {left}"


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    config = {"pool": {"kill_grace": 0.2}, "services": {"a": arrays_service(), "t": arrays_service(threads=2)}}
    with Pool.from_config(config) as running:
        yield running


@pytest.fixture()
def client(pool: Pool) -> Iterator[Client]:
    pool.wait_ready()  # a test before may have cost a worker
    with pool.client(timeout=30, shared_memory_min=MIN) as c:
        yield c


def _worker_in_call(pool: Pool, service: str = "a") -> int:
    """The pid of ``service``'s worker once it sleeps inside the library (``sleep_holding``)."""
    found: list[int] = []

    def sleeping() -> bool:
        found[:] = [pid for pid in pool.worker_pids(service) if in_nanosleep(pid)]
        return bool(found)

    wait_for(sleeping, 30, "the worker to be inside the library")
    return found[0]


# --- the same results on every path ------------------------------------------------


CASES = [
    ("<f8", (0,)),
    ("<f8", (10,)),
    ("<f8", (MIN // 8 - 1,)),  # just below the threshold
    ("<f8", (MIN // 8,)),  # the threshold itself
    ("<f8", (BIG,)),
    ("<f8", (64, 300)),  # 2-D, above
    ("<i4", (MIN // 4 + 5,)),
    ("|u1", (MIN * 2 + 3,)),
    ("|b1", (MIN + 1,)),
    ("<i2", (3, MIN // 6)),
]


def _array(typestr: str, shape: tuple[int, ...]) -> numpy.ndarray[Any, Any]:
    count = int(numpy.prod(shape))
    return (numpy.arange(count) % 251).astype(typestr).reshape(shape)


@pytest.mark.parametrize(("typestr", "shape"), CASES)
def test_results_are_the_same_through_shared_memory_frames_and_the_fallback(
    pool: Pool, client: Client, typestr: str, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    values = _array(typestr, shape)
    expected = values.ravel()[::-1].reshape(shape)
    shared = values.nbytes >= MIN

    result, segment = client.call("a", "reverse", values)
    assert result.dtype == values.dtype and numpy.array_equal(result, expected)
    assert (segment is not None) == shared, "the array did not take the path its size says"
    assert numpy.array_equal(values, _array(typestr, shape)), "the caller's own array changed"

    with pool.client(timeout=30, shared_memory_min=0) as frames_only:
        result, segment = frames_only.call("a", "reverse", values)
    assert numpy.array_equal(result, expected) and segment is None

    with pool.client(timeout=30, shared_memory_min=MIN, heartbeat_interval=0.9) as fallback:
        _no_segment_reaches_a_worker(monkeypatch)
        result, segment = fallback.call("a", "reverse", values)
        assert numpy.array_equal(result, expected) and segment is None
        result = fallback.submit("a", "reverse", values).result()[0]
        assert numpy.array_equal(result, expected)


def _no_segment_reaches_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if every worker were on another host: each segment is gone before the request leaves."""
    write = client_shm._write_segment

    def written_then_gone(data: memoryview) -> Any:
        name, mapping = write(data)
        os.unlink(os.path.join(client_shm.SHM_DIR, name))
        return name, mapping

    monkeypatch.setattr(client_shm, "_write_segment", written_then_gone)


def test_a_call_that_falls_back_to_frames_is_sent_once_more_and_later_calls_skip_shared_memory(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker answers SharedMemoryError (before it calls the library), the client sends the call again with
    frames, and for a while that service's calls go with frames at once."""
    values = _array("<f8", (BIG,))
    made: list[str] = []
    write = client_shm._write_segment

    def counted(data: memoryview) -> Any:
        name, mapping = write(data)
        made.append(name)
        os.unlink(os.path.join(client_shm.SHM_DIR, name))
        return name, mapping

    monkeypatch.setattr(client_shm, "_write_segment", counted)
    with pool.client(timeout=30, shared_memory_min=MIN, heartbeat_interval=0.8) as c:
        assert numpy.array_equal(c.call("a", "scale", values, 3.0), values * 3.0)
        assert len(made) == 1
        assert numpy.array_equal(c.call("a", "scale", values, 2.0), values * 2.0)
        assert len(made) == 1, "a call after the fallback tried shared memory again"
        assert numpy.array_equal(c.call("t", "scale", values, 2.0), values * 2.0)
        assert len(made) == 2, "another service lost shared memory too"


def test_a_worker_with_threads_maps_and_releases_as_well(client: Client) -> None:
    values = _array("<f8", (BIG,))
    futures = [client.submit("t", "scale", values, float(i)) for i in range(6)]
    for i, future in enumerate(futures):
        assert numpy.array_equal(future.result(), values * float(i))


def test_an_array_passed_twice_is_two_arrays_to_the_library_as_with_frames(client: Client) -> None:
    values = _array("<f8", (BIG,))
    first, second = client.call("a", "segment", values), client.call("a", "segment", values)
    assert first != second, "two calls shared a segment"
    first, second, aliased = client.call("t", "alias", values, values)
    assert None not in (first, second) and first != second and not aliased, "as with frames, two arrays"


def test_a_ctypes_array_a_wrapper_keeps_over_the_mapping_stays_valid(client: Client) -> None:
    """Unmapping under a live buffer would crash the worker: the mapping stays until that buffer goes."""
    values = numpy.full(BIG, 7.0)
    assert client.call("a", "keep", values) == 7
    assert not segments(), "the call ended but its segment is still there"
    assert client.call("a", "read_kept") == 7.0
    assert client.call("a", "keep", numpy.full(BIG, 9.0)) == 9  # the first mapping goes with the first array


# --- the caller's own shared arrays ------------------------------------------------


def test_a_shared_array_is_never_copied_and_the_library_changes_it_in_place(client: Client) -> None:
    values = shared_array((2, BIG // 2), "f8")
    values[:] = _array("<f8", (2, BIG // 2))
    (name,) = segments()
    assert client.call("a", "segment", values) == name
    result = client.call("a", "scale", values, 2.0)
    assert numpy.array_equal(values, 2.0 * _array("<f8", (2, BIG // 2)))
    assert numpy.shares_memory(result, values)
    assert segments() == [name], "the call made a segment of its own, or unlinked the caller's"
    assert client.call("a", "segment", values[:1]) == name, "a leading slice is shared too"
    assert client.call("a", "segment", values[1:]) not in (None, name), "a view past the start was not copied"
    del result
    close_shared_array(values)
    assert not segments()
    assert values[0, 1] == 2.0, "the array stopped working when its segment was unlinked"
    copied = client.call("a", "scale", values, 0.5)
    assert numpy.array_equal(copied, _array("<f8", (2, BIG // 2))) and copied[0, 1] == 1.0
    assert values[0, 1] == 2.0, "a closed shared array is copied like any other"


def _mappings_of(pid: int, name: str) -> int:
    """How many mappings of segment ``name`` process ``pid`` has."""
    return sum(f"/dev/shm/{name}" in line for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def test_the_worker_keeps_a_shared_arrays_mapping_between_calls_and_lets_go_once_it_is_closed(
    pool: Pool, client: Client
) -> None:
    values = shared_array(BIG)
    values[:] = 1.0
    (name,) = segments()
    (worker,) = pool.worker_pids("a")
    for _ in range(3):
        client.call("a", "scale", values, 2.0)
    assert numpy.array_equal(values, numpy.full(BIG, 8.0))
    assert _mappings_of(worker, name) == 1, "each call mapped the segment again"
    close_shared_array(values)
    wait_for(lambda: not _mappings_of(worker, name), 30, "the worker to let go of the unlinked segment")


def test_a_small_shared_array_is_shared_too_and_a_bad_shape_leaves_no_segment(client: Client) -> None:
    tiny = shared_array(4, "f8")
    tiny[:] = 1.0
    assert client.call("a", "segment", tiny) == segments()[0]
    assert numpy.array_equal(client.call("a", "scale", tiny, 3.0), numpy.full(4, 3.0))
    assert numpy.array_equal(tiny, numpy.full(4, 3.0)), "the library's change did not show in the array"
    close_shared_array(tiny)
    with pytest.raises(ValueError, match="shape"):
        shared_array((-1,))
    assert not segments()


def test_a_shared_array_is_unlinked_when_garbage_collected(client: Client) -> None:
    small = shared_array(MIN // 16, "i4")  # under the threshold, over 16 KiB: shared all the same
    assert client.call("a", "segment", small) == segments()[0]
    view = small[:]
    del small
    gc.collect()
    assert len(segments()) == 1, "the segment went while a view of its array lived"
    del view
    gc.collect()
    assert not segments()


def test_a_shared_array_travels_as_frames_where_shared_memory_is_off(pool: Pool) -> None:
    values = shared_array(BIG)
    values[:] = 1.0
    with pool.client(timeout=30, shared_memory_min=0) as c:
        assert numpy.array_equal(c.call("a", "scale", values, 4.0), numpy.full(BIG, 4.0))
    assert numpy.array_equal(values, numpy.ones(BIG)), "with frames the caller's array is not the library's"


def test_an_empty_shared_array_works(client: Client) -> None:
    values = shared_array(0, "f8")
    assert values.shape == (0,)
    assert client.call("a", "scale", values, 2.0).shape == (0,)


# --- every ending leaves /dev/shm clean ----------------------------------------------


def test_a_timeout_releases_the_segments_of_its_call(pool: Pool, client: Client) -> None:
    with pytest.raises(Timeout):
        client.call("a", "sleep_holding", numpy.ones(BIG), 5000, timeout=0.5)
    assert not segments()


def test_a_cancel_releases_the_segments_of_its_call(client: Client) -> None:
    running = client.submit("a", "sleep_holding", numpy.ones(BIG), 1000)
    waiting = client.submit("a", "sleep_holding", numpy.ones(BIG), 1000)
    assert len(segments()) == 2
    assert waiting.cancel()
    assert len(segments()) == 1, "the cancelled call's segment is still there"
    assert running.result() == BIG * 8
    assert not segments()


@pytest.mark.parametrize("method", ["exit_holding", "crash_holding"])
def test_a_worker_that_dies_in_the_call_leaves_no_segment(pool: Pool, client: Client, method: str) -> None:
    with pytest.raises(WorkerCrashed):
        client.call("a", method, numpy.ones(BIG))
    assert not segments()


def test_closing_a_client_with_calls_pending_releases_their_segments(pool: Pool) -> None:
    c = pool.client(timeout=30, shared_memory_min=MIN)
    futures = [c.submit("a", "sleep_holding", numpy.ones(BIG), 500) for _ in range(3)]
    worker = _worker_in_call(pool)
    assert len(segments()) == 3
    c.close()
    assert not segments()
    for future in futures:
        with pytest.raises(BrokerUnavailable):
            future.result()
    wait_for(lambda: not in_nanosleep(worker), 30, "the running call to end")


_KILLED_CLIENT = """
import sys
import numpy
from client import Client
client = Client(sys.argv[1], shared_memory_min={min})
client.submit("a", "sleep_holding", numpy.ones({big}), 1500)
client.submit("a", "sleep_holding", numpy.ones({big}), 1500)
sys.stdin.read()
"""


def test_a_killed_client_leaves_no_segment_the_broker_does_not_sweep(pool: Pool) -> None:
    """SIGKILL: the client unlinks nothing, so the broker's sweep (every couple of seconds) removes its segments,
    one of them still mapped by the worker running its call."""
    script = textwrap.dedent(_KILLED_CLIENT.format(min=MIN, big=BIG))
    process = subprocess.Popen(
        [sys.executable, "-c", script, pool.address], cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: len(segments(process.pid)) == 2, 30, "the client to make its segments")
        _worker_in_call(pool)
    finally:
        process.kill()
        process.wait()
    wait_for(lambda: not segments(process.pid), 30, "the broker to sweep the killed client's segments")
    wait_for(lambda: not any(in_nanosleep(pid) for pid in pool.worker_pids("a")), 30, "the worker to be free")


def test_the_sweep_removes_segments_of_dead_processes_only(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    assert not pid_alive(gone.pid)
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        names = [f"dllpool.{pid}.{os.urandom(8).hex()}" for pid in (gone.pid, alive.pid, os.getpid())]
        for name in [*names, f"dllpool.{gone.pid}.not-hex"]:
            (Path(client_shm.SHM_DIR) / name).write_bytes(b"x")
        try:
            assert client_shm.sweep() >= 1
            assert segments(gone.pid) == [f"dllpool.{gone.pid}.not-hex"], "not a dllpool name: not ours to remove"
            assert segments(alive.pid) == [names[1]] and segments() == [names[2]]
        finally:
            for name in [*names, f"dllpool.{gone.pid}.not-hex"]:
                (Path(client_shm.SHM_DIR) / name).unlink(missing_ok=True)
    finally:
        alive.stdin.close()  # type: ignore[union-attr]
        alive.wait()


def test_a_broker_that_dies_or_restarts_releases_the_segments_of_the_calls_it_held(tmp_path: Path) -> None:
    config = {
        "pool": {"frontend": f"ipc://{tmp_path}/frontend", "heartbeat_interval": 0.2},
        "services": {"a": arrays_service()},
    }
    first = Pool.from_config(config, broker="process")
    try:
        with first.client(timeout=30, shared_memory_min=MIN, heartbeat_interval=0.2) as c:
            running = c.submit("a", "sleep_holding", numpy.ones(BIG), 5000)
            queued = c.submit("a", "sleep_holding", numpy.ones(BIG), 5000)
            (worker,) = first.worker_pids("a")
            broker = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
            _worker_in_call(first)
            os.kill(broker, signal.SIGKILL)
            for future in (running, queued):
                with pytest.raises(BrokerUnavailable):
                    future.result()
            assert not segments()
            first.stop()
            with Pool.from_config(config, broker="process") as second:
                values = _array("<f8", (BIG,))
                wait_for(lambda: _reaches(c), 30, "the client to reach the new broker")
                assert c.call("a", "segment", values) is not None
                pending = c.submit("a", "sleep_holding", values, 5000)
                _worker_in_call(second)
                second.stop(grace=0)
                with pytest.raises(BrokerUnavailable):
                    pending.result()
                assert not segments()
    finally:
        first.stop()


def _reaches(client: Client) -> bool:
    try:
        return client.call("a", "segment", numpy.ones(4), timeout=1.0) is None
    except (BrokerUnavailable, Timeout):
        return False


# --- what a worker refuses -----------------------------------------------------------


class _Worker:
    """One real 32-bit worker of the wrapper, connected to a ROUTER this test holds, as the broker would be."""

    def __init__(self, router: zmq.Socket[Any], ident: bytes) -> None:
        self.router = router
        self.ident = ident
        self.jobs = 0

    def call(self, method: str, *args: Any) -> Any:
        """The result, or the error map the worker answered."""
        self.jobs += 1
        self.router.send_multipart([self.ident, *wire.request_to_worker(self.jobs, method, None, pack_call(args, {}))])
        while True:
            assert self.router.poll(30_000), "the worker did not answer"
            message = wire.parse_worker(self.router.recv_multipart()[1:])
            if isinstance(message, wire.WorkerReply):
                assert message.job == self.jobs
                if message.error:
                    return wire.unpack_header(message.payload[0], "error")
                return unpack_value(message.payload)


@contextmanager
def _worker(tmp_path: Path, **spec: Any) -> Iterator[_Worker]:
    router: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    endpoint = f"ipc://{tmp_path}/backend"
    router.bind(endpoint)
    service = arrays_service()
    full = {
        "service": "a",
        "heartbeat_interval": 1.0,
        "heartbeat_liveness": 60,  # this test sends no heartbeats
        "module": service["module"],
        "class": service["class"],
        "options": service["options"],
        "path": [],
        **spec,
    }
    interp = runtime32.load()
    process = subprocess.Popen(
        [*interp.command, "-s", "-m", "workers32", "--connect", endpoint, "--spec", json.dumps(full)],
        cwd=ROOT,
        env=runtime32.command_env(interp, [str(ROOT)]),
        stdin=subprocess.DEVNULL,
    )
    try:
        assert router.poll(30_000), "the worker did not register"
        ident, *frames = router.recv_multipart()
        assert isinstance(wire.parse_worker(frames), wire.WorkerReady)
        yield _Worker(router, ident)
    finally:
        process.terminate()
        process.wait(timeout=30)
        router.close()


def _segment_of(size: int) -> str:
    """A segment of ``size`` bytes (sparse: nothing is written), named as a client names its own."""
    name, fd = client_shm._create(size)
    os.close(fd)
    return name


def test_a_worker_refuses_more_shared_memory_than_its_limit_naming_the_limit(tmp_path: Path) -> None:
    with _worker(tmp_path, shared_memory_max=64 * 1024) as worker:
        small, big = _segment_of(64 * 1024), _segment_of(64 * 1024 + 8)
        try:
            assert worker.call("segment", NDArray("<f8", (8192,), shared=small)) == small
            error = worker.call("scale", NDArray("<f8", (8193,), shared=big), 2.0)
            assert error["type"] == "SharedMemoryError"
            assert error["details"]["limit"] == 65536 and error["details"]["size"] == 65544
            assert "65,536" in error["message"] and "the library was not called" in error["message"]
            two = worker.call("segment", [NDArray("<f8", (4096,), shared=small)] * 3)
            assert two["type"] == "SharedMemoryError" and two["details"]["size"] == 3 * 32768, "the limit is per call"
        finally:
            for name in (small, big):
                client_shm._unlink(name)


def test_a_segment_the_32_bit_address_space_cannot_hold_is_refused_naming_the_limit(tmp_path: Path) -> None:
    """Past the default bound (the most one mapping can hold in a 32-bit process) the worker refuses before it
    maps; with the bound raised, the mapping itself fails, and is refused naming the limit all the same."""
    size = 3 << 30  # sparse: no memory is used
    (tmp_path / "raised").mkdir()
    with _worker(tmp_path) as default, _worker(tmp_path / "raised", shared_memory_max=1 << 40) as raised:
        name = _segment_of(size)
        try:
            for worker, limit in ((default, (1 << 31) - 1), (raised, 1 << 40)):
                error = worker.call("segment", NDArray("<f8", (size // 8,), shared=name))
                assert error["type"] == "SharedMemoryError", error
                assert error["details"]["limit"] == limit and f"{limit:,}" in error["message"]
                assert "32-bit" in error["message"]
        finally:
            client_shm._unlink(name)


def test_a_worker_refuses_names_and_files_that_are_not_dllpool_segments(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"\x01" * 64)
    planted = f"dllpool.{os.getpid()}.{os.urandom(8).hex()}"
    fifo = f"dllpool.{os.getpid()}.{os.urandom(8).hex()}"
    missing = f"dllpool.{os.getpid()}.{os.urandom(8).hex()}"
    os.symlink(victim, os.path.join(client_shm.SHM_DIR, planted))
    os.mkfifo(os.path.join(client_shm.SHM_DIR, fifo), 0o600)
    short = _segment_of(16)
    try:
        with _worker(tmp_path) as worker:
            for hostile in ("../etc/passwd", "/etc/passwd", "pulse-shm-1234", "dllpool.1.x"):
                error = worker.call("scale", NDArray("<f8", (8,), shared=hostile), 0.0)
                assert error["type"] == "BadRequest" and "not a dllpool segment" in error["message"], error
            for name, reason in ((planted, "refused"), (fifo, "refused"), (short, "size"), (missing, "unavailable")):
                error = worker.call("scale", NDArray("<f8", (8,), shared=name), 0.0)
                assert error["type"] == "SharedMemoryError", error
                assert error["details"]["reason"] == reason and error["details"]["segment"] == name
        assert victim.read_bytes() == b"\x01" * 64
    finally:
        for name in (planted, fifo):
            os.unlink(os.path.join(client_shm.SHM_DIR, name))
        client_shm._unlink(short)


def test_a_caller_gets_the_refusal_of_a_segment_that_is_not_its_own(client: Client) -> None:
    with pytest.raises(BadRequest, match="not a dllpool segment"):
        client.call("a", "segment", NDArray("<f8", (8,), shared="../etc/passwd"))
    with pytest.raises(SharedMemoryError, match="cannot be opened") as info:
        client.call("a", "segment", NDArray("<f8", (8,), shared=f"dllpool.1.{os.urandom(8).hex()}"))
    assert info.value.details["reason"] == "unavailable"


# --- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("ipc:///tmp/x", True),
        ("inproc://x", True),
        ("tcp://127.0.0.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://10.0.0.5:5555", False),
        ("tcp://example.com:5555", False),
        ("udp://127.0.0.1:1", False),
    ],
)
def test_shared_memory_is_used_only_with_a_broker_on_this_host(address: str, local: bool) -> None:
    assert client_shm.on_this_host(address) is local


def test_the_pool_setting_reaches_its_clients_and_is_checked() -> None:
    base = {"services": {"a": arrays_service()}}
    assert load_config(base).shared_memory_min == client_shm.DEFAULT_MIN
    assert load_config({**base, "pool": {"shared_memory_min": 0}}).shared_memory_min == 0
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigError, match="shared_memory_min"):
            load_config({**base, "pool": {"shared_memory_min": bad}})
    for wrong in (-1, True):
        with pytest.raises(ValueError, match="shared_memory_min"):
            Client("ipc:///nonexistent", shared_memory_min=wrong)


def test_a_pools_clients_take_its_setting(tmp_path: Path) -> None:
    config = {"pool": {"shared_memory_min": 0}, "services": {"a": arrays_service()}}
    with Pool.from_config(config) as pool, pool.client(timeout=30) as c:
        assert c.call("a", "segment", numpy.ones(BIG)) is None
        with pool.client(timeout=30, shared_memory_min=MIN) as other:
            assert other.call("a", "segment", numpy.ones(BIG)) is not None
