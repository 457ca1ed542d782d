"""The broker as a state machine: events in, frames to send out, no sockets.

The socket loop (:mod:`broker.loop`) feeds it client frames, worker frames,
worker exits seen by the supervisor, and clock ticks; every method returns
the list of :data:`Action` s to carry out. Time is always passed in, so the
whole routing logic is unit-tested without a socket or a sleep.

Invariants the core keeps:

- every request it accepts gets exactly one answer: a result or an error;
- a request runs at most once, unless its method is marked idempotent, in
  which case it is re-sent once after its worker dies (never when its own
  run may have killed the worker by a fatal signal: a poison call);
- a worker holds at most ``threads`` requests, plus up to the service's
  ``prefetch`` idempotent ones sent ahead; free run slots are handed out
  least-recently-used first, and a request is sent ahead only when no
  worker of the service has a free run slot;
- the queue is served in order: nothing overtakes a request that waits for
  a free run slot;
- a reply is accepted only from the worker that holds that job;
- a client has a lifetime: one silent past its liveness window (or that
  says it is gone) is forgotten with everything it had pending, and its
  queued calls never run;
- what waits is bounded in requests and in bytes, per service, per client
  and for the whole broker; a call without a timeout still has the
  service's ``max_call_seconds``.

Each job has an explicit :class:`JobState` and each worker a
:class:`WorkerState`; a worker holds its jobs in dispatch order, and since a
worker starts them in that order, the first ``threads`` of them are the ones
that may be running. A job leaves its service's queue lazily: one cancelled
or forgotten there is marked DONE and skipped (and swept out) later, so a
client that gives up on thousands of calls costs one pass, not one per call.
"""

from __future__ import annotations

import enum
import itertools
import logging
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

from protocol import (
    BadRequest,
    BrokerUnavailable,
    Buffer,
    Busy,
    CallError,
    ClientCancel,
    ClientDisconnect,
    ClientHeartbeat,
    ClientRequest,
    ProtocolError,
    Timeout,
    UnknownService,
    WorkerCrashed,
    WorkerDisconnect,
    WorkerHeartbeat,
    WorkerReady,
    WorkerReply,
    error_to_wire,
    pack_value,
    parse_client,
    parse_worker,
    unpack_call,
)
from protocol import frames as wire

from .metrics import ServiceMeter

log = logging.getLogger(__name__)

__all__ = [
    "Action",
    "BrokerCore",
    "JobState",
    "KillWorker",
    "Retire",
    "Scale",
    "ServicePolicy",
    "ToClient",
    "ToWorker",
    "WorkerState",
]

POISON_SIGNALS = frozenset(
    int(getattr(signal, name)) for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT") if hasattr(signal, name)
)
"""A worker that ended by one of these was killed by the call it ran, not from outside."""
WINDOWS_CRASHES = {
    0xC0000005: "access violation",
    0xC000001D: "illegal instruction",
    0xC0000094: "integer division by zero",
    0xC0000096: "privileged instruction",
    0xC00000FD: "stack overflow",
    0xC0000374: "heap corruption",
    0xC0000409: "stack buffer overrun or abort",
}
"""The NTSTATUS exit codes of a Windows process that crashed: what a fatal signal is on POSIX."""
_RESERVED = b""
"""The ``lease`` of a worker kept free for a LEASE request that waits (no client socket has an empty identity)."""
CLIENT_WINDOW_FLOOR = 3.0
"""Seconds of silence before a client that asked for no window of its own is forgotten, at least: the window
of a Client with default settings (heartbeat_interval 1 s x heartbeat_liveness 3)."""
STATUS_EVERY = 0.05
"""Seconds a status is reused for: building one walks every worker."""
EXIT_REPORT_WAIT = 0.5
"""Seconds a worker whose socket went away waits for the supervisor to say how its process ended (a crashing
worker's socket often closes before its exit can be reaped); then it is lost all the same."""


@dataclass(frozen=True)
class ServicePolicy:
    """What the broker needs to know of a service; the rest is the worker's business."""

    name: str
    idempotent: frozenset[str] = frozenset()
    queue_limit: int | None = None
    """Requests queued plus held ahead by workers; more are refused with Busy."""
    queue_limit_bytes: int | None = None
    """Bytes of the requests counted by ``queue_limit``; more are refused with Busy."""
    max_call_seconds: float | None = None
    """The deadline of a call that came without one."""
    prefetch: int = 0
    """Idempotent requests a worker may hold beyond its run slots, so its next call is already there."""
    session_idle: float = 600.0
    """Seconds a leased worker (a session's) may go without a call before its lease ends."""
    max_calls_per_worker: int = 0
    """Calls after which a worker is retired and replaced; 0: never."""
    max_worker_rss: int = 0
    """Resident bytes (as the worker reports them) past which it is retired and replaced; 0: never."""
    min_free_address_space: int = 0
    """Free address space (reported by 32-bit workers only) under which a worker is retired and replaced; 0: never."""


class JobState(enum.Enum):
    """Where an accepted job is. A job whose caller was answered while a worker still holds it
    (Timeout, or its client is gone: ``answered`` is set) keeps its state until the worker's own
    answer comes, which is then discarded."""

    QUEUED = "queued"
    """In its service's queue; no worker has it."""
    AHEAD = "ahead"
    """Sent to a worker whose run slots are all taken: waiting inside it, not started."""
    RUNNING = "running"
    """Among the first ``threads`` jobs its worker holds: it may have started."""
    DONE = "done"
    """Over: answered by its worker, lost with it, dropped from the queue, or expired there."""

    __hash__ = object.__hash__
    """Members are singletons, so identity is the right hash, and a C-fast one: Enum's own hashes the name in
    Python, several times per call through the state sets below."""


_TRANSITIONS = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.AHEAD, JobState.DONE}),
    JobState.AHEAD: frozenset({JobState.RUNNING, JobState.QUEUED, JobState.DONE}),
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.DONE}),
    JobState.DONE: frozenset(),
}
"""Dispatch, promotion when a run slot of its worker frees, re-queueing when the worker dies, the end."""
_WAITING = frozenset({JobState.QUEUED, JobState.AHEAD})
"""States that count toward a service's ``queue_limit`` and ``queue_limit_bytes``."""


class WorkerState(enum.Enum):
    """A registered worker; one that is lost is forgotten."""

    SERVING = "serving"
    RETIRING = "retiring"
    """To be replaced (recycled) or removed (scaled down): it gets no new work but the calls pinned to it before,
    and is told to STOP once it holds none."""
    DOOMED = "doomed"
    """Asked to be killed (a call ran past its deadline and grace): it gets no more work, its slots stay taken."""
    GONE = "gone"
    """Its socket went away: nothing more is sent to it; it is lost when the supervisor reports how its process
    ended (which tells whether a call killed it), or after ``EXIT_REPORT_WAIT``."""


_TAKES_PINNED = frozenset({WorkerState.SERVING, WorkerState.RETIRING})
"""A retiring worker still runs the calls pinned to it before it began to retire (a handle's, a broadcast's)."""


@dataclass(slots=True)
class ToClient:
    """Frames for a client socket. (Two of these actions per call: slotted and not frozen, which makes one in a
    third of the time.)"""

    ident: bytes
    frames: list[Buffer]


@dataclass(slots=True)
class ToWorker:
    """Frames for a worker socket."""

    ident: bytes
    frames: list[Buffer]


@dataclass(frozen=True)
class KillWorker:
    """The worker cannot be trusted any more (hung call, lapsed heartbeat, socket gone): end its process."""

    pid: int
    reason: str


@dataclass(frozen=True)
class Retire:
    """The worker is being retired: the supervisor starts its replacement now (``replace``) or frees its slot
    (the pool was scaled down). The worker itself stops once it has finished its calls."""

    pid: int
    host: str | None
    """Where it runs, as it reported: only a worker of the broker's own host can be one the supervisor started."""
    reason: str
    replace: bool


@dataclass(frozen=True)
class Scale:
    """A client asked for the service to run ``workers`` workers; the loop asks the supervisor and answers."""

    service: str
    workers: int
    ident: bytes
    corr: int


Action = Union[ToClient, ToWorker, KillWorker, Retire, Scale]


@dataclass(eq=False, slots=True)
class _Job:
    job_id: int
    client: bytes
    corr: int
    service: str
    method: str
    timeout: float | None
    flags: int
    payload: list[Buffer]
    deadline: float | None
    size: int
    """Bytes of the request as it came: what it counts toward the byte limits."""
    ceiling: bool = False
    """The deadline is the service's ``max_call_seconds``: the caller gave none."""
    state: JobState = JobState.QUEUED
    attempts: int = 0
    worker: bytes | None = None
    running_since: float = 0.0
    """When it became RUNNING: a hung call gets ``kill_grace`` from the later of this and its deadline."""
    expired_at: float | None = None
    """When its deadline was seen to pass while a worker held it."""
    answered: bool = False
    """Its caller has had its one answer (Timeout, or its client is gone); the worker's is discarded."""
    pin: int | None = None
    """The pid of the one worker that may run it (a session's, a handle's, a broadcast's); never re-sent."""
    arrived: float = 0.0
    """When the broker accepted it: latencies and queue waits count from here."""


@dataclass(eq=False, slots=True)
class _Worker:
    ident: bytes
    service: str
    pid: int
    capacity: int
    info: dict[str, Any]
    expires: float
    next_heartbeat: float
    jobs: dict[int, _Job] = field(default_factory=dict)
    """What it holds, in dispatch order: it starts them in this order."""
    last_reply: float = float("-inf")
    state: WorkerState = WorkerState.SERVING
    gone_at: float = 0.0
    doomed_by: str = ""
    """Why it was asked to be killed, for the other calls it held."""
    pinned: deque[_Job] = field(default_factory=deque)
    """Jobs pinned to it that wait for one of its run slots, in arrival order."""
    lease: bytes | None = None
    """The client socket it is leased to (a session): it gets pinned jobs only."""
    spare: int = 0
    """Free run slots of a leased worker: kept out of its service's idle deque."""
    lease_used: float = 0.0
    """When its lease last saw a call: an idle lease ends after the service's ``session_idle``."""
    registered: float = 0.0
    calls: int = 0
    """Calls it answered."""
    figures: dict[str, int] = field(default_factory=dict)
    """What it last reported of itself (rss, address_space_free)."""
    retire: str = ""
    """Why it is being retired, once it is: it becomes RETIRING when no session holds it."""


@dataclass(eq=False, slots=True)
class _Service:
    policy: ServicePolicy
    queue: deque[_Job] = field(default_factory=deque)
    idle: deque[bytes] = field(default_factory=deque)
    """One entry per free run slot of a ready worker, least recently freed first."""
    workers: dict[bytes, _Worker] = field(default_factory=dict)
    queued: int = 0
    """Jobs in state QUEUED, wherever they wait: in ``queue`` (which may also hold DONE ones, not yet swept out),
    in ``lease_waiters``, or pinned to one worker (in its ``pinned``)."""
    ahead: int = 0
    """Jobs in state AHEAD: they count toward ``queue_limit``."""
    waiting_bytes: int = 0
    """Bytes of the jobs QUEUED or AHEAD: they count toward ``queue_limit_bytes``."""
    lease_waiters: deque[_Job] = field(default_factory=deque)
    """LEASE requests waiting for a worker with nothing to do."""
    reserved: bytes | None = None
    """The worker kept free for the LEASE requests waiting (its lease is ``_RESERVED``), if one is: known here so
    that no reply has to look through every worker for it."""

    @property
    def leases_waiting(self) -> int:
        """LEASE requests waiting for a worker of their own (counted when asked: the tick asks, no call does)."""
        return sum(job.state is JobState.QUEUED for job in self.lease_waiters)

    @property
    def in_queue(self) -> int:
        """Jobs QUEUED in ``queue`` itself: what any worker of the service, a new one too, could run."""
        pinned = sum(job.state is JobState.QUEUED for worker in self.workers.values() for job in worker.pinned)
        return self.queued - self.leases_waiting - pinned


@dataclass(eq=False, slots=True)
class _Client:
    """A client socket with calls pending (or that asked for a longer liveness window): all the broker
    remembers of it, dropped as soon as it has nothing pending and no window of its own."""

    ident: bytes
    expires: float
    window: float | None = None
    """The liveness window it asked for, if longer than the broker's own."""
    jobs: dict[int, _Job] = field(default_factory=dict)
    """Its unanswered jobs by correlation ID."""
    leases: set[bytes] = field(default_factory=set)
    """The workers leased to it: its record is kept while it has any, so its going away ends them."""
    bytes: int = 0
    """Bytes of those jobs: they count toward ``client_bytes_in_flight``."""


class BrokerCore:
    """Routing state of one broker: services, workers, queued and in-flight jobs."""

    def __init__(
        self,
        services: list[ServicePolicy],
        *,
        heartbeat_interval: float = 1.0,
        heartbeat_liveness: int = 3,
        kill_grace: float = 1.0,
        max_request_frames: int | None = None,
        max_request_bytes: int | None = None,
        client_bytes_in_flight: int | None = None,
        queue_limit_bytes: int | None = None,
    ) -> None:
        self._services = {p.name: _Service(p) for p in services}
        self._workers: dict[bytes, _Worker] = {}
        self._by_pid: dict[int, bytes] = {}
        self._clients: dict[bytes, _Client] = {}
        self._pending = 0
        self._job_ids = itertools.count(1)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.shortest_window = float("inf")
        """The shortest liveness window a client has declared (it gives the broker up after that much silence): the
        loop reassures clients three times within it while a long message holds the socket (ten times a second at
        most: see ``broker.loop._REASSURE_MIN``)."""
        self.kill_grace = kill_grace
        self.max_request_frames = max_request_frames
        self.max_request_bytes = max_request_bytes
        self.client_bytes_in_flight = client_bytes_in_flight
        self.queue_limit_bytes = queue_limit_bytes
        """For every service together: bytes of the requests whose payload the broker holds."""
        self.held_bytes = 0
        self.accepting = True
        self._drops = _LogThrottle()
        self._meters = {p.name: ServiceMeter() for p in services}
        self.unwanted: set[tuple[str, int]] = set()
        """Host and pid of the workers still starting when the pool was scaled down: told to STOP when they
        register (a pid alone could be another host's)."""
        self._limits_too_low: set[str] = set()
        """Services whose memory limits a fresh worker already passes (logged once; those are not recycled)."""
        self._status: tuple[float, dict[str, Any]] | None = None
        """The last status and when it was made: one per tick at most, however often clients ask."""
        self._retired: dict[bytes, float] = {}
        """Sockets of workers told to STOP, until when their last messages are ignored rather than answered."""
        self.supervision: Callable[[], dict[str, Any]] | None = None
        """What the process that starts the workers adds to :meth:`status` (worker targets and restarts)."""
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "replies",
                "errors",
                "busy",
                "expired_in_queue",
                "timed_out_running",
                "late_replies",
                "bad_client_messages",
                "bad_worker_messages",
                "workers_lost",
                "retried",
                "sent_ahead",
                "expired_ahead",
                "clients_forgotten",
                "dropped_unrun",
                "discarded_replies",
                "refused_too_big",
                "leases",
                "leases_ended",
                "workers_retired",
            ),
            0,
        )

    # --- queries ----------------------------------------------------------------

    @property
    def service_names(self) -> list[str]:
        return sorted(self._services)

    def ready_workers(self, service: str) -> int:
        return len(self.worker_pids(service))

    def worker_pids(self, service: str | None = None) -> list[int]:
        """The pids of the registered workers ready for calls (not those being retired)."""
        return sorted(
            w.pid for w in self._registered() if service in (None, w.service) and w.state is not WorkerState.RETIRING
        )

    def workers(self) -> list[dict[str, Any]]:
        """What each ready worker reported when it registered (pid, pointer size, Python, threads)."""
        return sorted(
            ({**w.info, "leased": w.lease is not None} for w in self._registered()),
            key=lambda i: (i["service"], i["pid"]),
        )

    def worker_idents(self) -> list[bytes]:
        """The sockets of the registered workers."""
        return [w.ident for w in self._registered()]

    def _registered(self) -> list[_Worker]:
        """Workers that are still reachable: a GONE one only waits for the report of its end."""
        return [w for w in self._workers.values() if w.state is not WorkerState.GONE]

    def held_ahead(self, service: str) -> int:
        """Requests of ``service`` its workers hold behind their running calls."""
        found = self._services.get(service)
        return 0 if found is None else found.ahead

    def pending(self) -> int:
        """Requests accepted and not yet answered."""
        return self._pending

    def counters(self) -> dict[str, int]:
        """The event counts of ``stats`` and the gauges of what the broker holds right now."""
        return {**self.stats, "pending": self._pending, "clients": len(self._clients), "held_bytes": self.held_bytes}

    def clients(self) -> int:
        """Client sockets the broker remembers: those with requests pending (or a liveness window of their own)."""
        return len(self._clients)

    # --- client side --------------------------------------------------------------

    def client_message(self, ident: bytes, frames: list[Buffer], now: float) -> list[Action]:
        client = self._clients.get(ident)
        if client is not None:  # any message proves the client alive
            client.expires = now + self._window(client)
        limit = self.max_request_frames
        if limit is not None and len(frames) > limit:
            size = sum(len(frame) for frame in frames)
            return self.refuse_unread(ident, frames[0], len(frames), size, "max_request_frames", limit, now)
        try:
            message = parse_client(frames)
        except ProtocolError as exc:
            self.stats["bad_client_messages"] += 1
            self._drops.warn(now, "dropped a malformed message from client %s: %s", ident.hex(), exc)
            corr = wire.corr_of(frames, wire.CLIENT_PROTOCOL)
            if corr is None:
                return []
            return [self._error_to(ident, corr, BadRequest(f"malformed request: {exc}"))]
        if isinstance(message, ClientRequest):
            return self._request(ident, message, now)
        if isinstance(message, ClientHeartbeat):
            if message.window is not None:
                self._declare_window(ident, message.window, now)
            return [ToClient(ident, wire.heartbeat_to_client())]
        if isinstance(message, ClientCancel):
            return self._cancel(ident, message.corr)
        assert isinstance(message, ClientDisconnect)
        return self._forget_client(ident, now, None)

    def _request(self, ident: bytes, req: ClientRequest, now: float) -> list[Action]:
        self.stats["requests"] += 1
        if req.method == wire.STATUS:
            return [ToClient(ident, wire.reply_to_client(req.corr, pack_value(self.status(now))))]
        service = self._services.get(req.service)
        if service is None:
            names = self.service_names
            return [
                self._error_to(
                    ident,
                    req.corr,
                    UnknownService(
                        f"no service named {req.service!r}; the services are: {', '.join(names) or 'none'}",
                        service=req.service,
                        services=names,
                    ),
                )
            ]
        if not self.accepting:
            return [
                self._error_to(
                    ident,
                    req.corr,
                    BrokerUnavailable("the broker is shutting down and takes no new requests", service=req.service),
                )
            ]
        if req.method == wire.WORKERS:
            return [ToClient(ident, wire.reply_to_client(req.corr, pack_value(self._worker_list(service))))]
        if req.method == wire.SCALE:
            return [self._scale_request(ident, req)]
        if req.method == wire.RELEASE:
            return self._release_lease(ident, req, now)
        client = self._clients.get(ident)
        if client is not None and req.corr in client.jobs:
            self.stats["bad_client_messages"] += 1
            return [
                self._error_to(
                    ident,
                    req.corr,
                    BadRequest(f"correlation ID {req.corr:#x} is already in use by a pending request"),
                )
            ]
        size = sum(map(len, req.payload))
        refusal = self._refusal(service, client, req, size)
        if refusal is not None:
            return [self._error_to(ident, req.corr, refusal)]
        target = None if req.pin is None else self._pinned_worker(req.pin, req.service)
        if req.pin is not None and target is None:
            return [self._error_to(ident, req.corr, self._bound_worker_gone(req.pin, req.service, req.method))]
        if client is None:
            client = self._clients[ident] = _Client(ident, now + self._window(None))
        timeout = req.timeout
        ceiling = timeout is None and service.policy.max_call_seconds is not None
        if ceiling:
            timeout = service.policy.max_call_seconds
        job = _Job(
            job_id=next(self._job_ids),
            client=ident,
            corr=req.corr,
            service=req.service,
            method=req.method,
            timeout=timeout,
            flags=req.flags,
            payload=req.payload,
            deadline=None if timeout is None else now + timeout,
            size=size,
            ceiling=ceiling,
            pin=req.pin,
            arrived=now,
        )
        client.jobs[req.corr] = job
        client.expires = max(client.expires, now + self._window(client))
        client.bytes += size
        self._pending += 1
        self.held_bytes += size
        service.queued += 1
        service.waiting_bytes += size
        if req.method == wire.LEASE:
            service.lease_waiters.append(job)
            return self._grant_leases(service, now)
        if target is not None:
            target.pinned.append(job)
            return self._dispatch_pinned(target, now)
        service.queue.append(job)
        return self._dispatch(service, now)

    def _refusal(self, service: _Service, client: _Client | None, req: ClientRequest, size: int) -> CallError | None:
        """Why a request of ``size`` bytes cannot be taken now, if it cannot: every limit is checked before any
        work, so a refused request costs nothing but its answer."""
        name, method = req.service, req.method
        if self.max_request_bytes is not None and size > self.max_request_bytes:
            self.stats["refused_too_big"] += 1
            return BadRequest(
                f"the request to {name}.{method} is {size} bytes; the pool's max_request_bytes is "
                f"{self.max_request_bytes}",
                service=name,
                method=method,
                size=size,
                limit=self.max_request_bytes,
            )
        policy = service.policy
        waiting = service.queued + service.ahead
        if policy.queue_limit is not None and waiting >= policy.queue_limit:
            why = f"has {waiting} requests waiting (queued, or held by a busy worker), its queue_limit"
            return self._busy(req, why, queue_limit=policy.queue_limit)
        if policy.queue_limit_bytes is not None and service.waiting_bytes + size > policy.queue_limit_bytes:
            why = (
                f"has {service.waiting_bytes} bytes of requests waiting and this one is {size} bytes; its "
                f"queue_limit_bytes is {policy.queue_limit_bytes}"
            )
            return self._busy(req, why, queue_limit_bytes=policy.queue_limit_bytes, waiting_bytes=service.waiting_bytes)
        in_flight = 0 if client is None else client.bytes
        if self.client_bytes_in_flight is not None and in_flight + size > self.client_bytes_in_flight:
            why = (
                f"already holds {in_flight} bytes of this client's requests and this one is {size} bytes; the pool's "
                f"client_bytes_in_flight is {self.client_bytes_in_flight}"
            )
            return self._busy(req, why, client_bytes_in_flight=self.client_bytes_in_flight, in_flight=in_flight)
        if self.queue_limit_bytes is not None and self.held_bytes + size > self.queue_limit_bytes:
            why = (
                f"cannot take it: the broker holds {self.held_bytes} bytes of requests and this one is {size} bytes; "
                f"the pool's queue_limit_bytes is {self.queue_limit_bytes}"
            )
            return self._busy(req, why, pool_queue_limit_bytes=self.queue_limit_bytes, held_bytes=self.held_bytes)
        return None

    def _busy(self, req: ClientRequest, why: str, **figures: int) -> Busy:
        self.stats["busy"] += 1
        return Busy(
            f"service {req.service!r} {why}; try again later",
            service=req.service,
            method=req.method,
            **figures,
        )

    def _cancel(self, ident: bytes, corr: int) -> list[Action]:
        """The caller gave up on ``corr``: it gets no answer. A queued request is dropped unrun, one a worker holds
        ahead is recalled (the worker answers it unrun), and a running one's answer will be discarded."""
        client = self._clients.get(ident)
        job = None if client is None else client.jobs.get(corr)
        if job is None:
            return []
        actions = self._give_up(job)
        self._unlink(job)
        return actions

    def _give_up(self, job: _Job) -> list[Action]:
        """Nobody waits for ``job`` any more: drop it from its queue, or have its worker's answer discarded."""
        if job.state is JobState.QUEUED:
            self.stats["dropped_unrun"] += 1
            self._move(job, JobState.DONE)
            self._sweep(self._services[job.service])
            return []
        job.answered = True
        self._release(job)
        return self._recall(job)

    def _recall(self, job: _Job) -> list[Action]:
        """Ask the worker holding ``job`` ahead to answer it unrun (if it has started by then, it finishes)."""
        worker = None if job.worker is None else self._workers.get(job.worker)
        if job.state is JobState.AHEAD and worker is not None and worker.state is not WorkerState.GONE:
            return [ToWorker(worker.ident, wire.cancel_to_worker(job.job_id))]
        return []

    def _window(self, client: _Client | None) -> float:
        """How long ``client`` may stay silent: what it asked for while it has calls pending, else the broker's
        own window, but never less than a default Client's (the pool's heartbeat settings need not match its
        clients'). A client without calls keeps no record past that, whatever it asked for."""
        own = max(self.heartbeat_interval * self.heartbeat_liveness, CLIENT_WINDOW_FLOOR)
        if client is None or client.window is None or not client.jobs:
            return own
        return client.window

    def _declare_window(self, ident: bytes, window: float, now: float) -> None:
        """A client asked for a liveness window: remembered only when longer than the broker's own."""
        self.shortest_window = min(self.shortest_window, window)
        client = self._clients.get(ident)
        longer = window if window > self._window(None) else None
        if client is None:
            if longer is None:
                return
            client = self._clients[ident] = _Client(ident, now)
        client.window = longer
        client.expires = now + self._window(client)

    def _forget_client(self, ident: bytes, now: float, silence: float | None) -> list[Action]:
        """The client is gone (it said so, or ``silence`` seconds passed without a word): its queued requests
        are dropped unrun, those held by workers have their answers discarded, and nothing of it is kept.

        A silent client may only be stopped or cut off, not dead, so it still gets one BrokerUnavailable
        answer per request (a dead one's are dropped by its socket)."""
        client = self._clients.get(ident)
        if client is None:
            return []
        actions: list[Action] = []
        if client.jobs:
            self.stats["clients_forgotten"] += 1
            log.warning(
                "forgot client %s with %d request(s) pending: %s",
                ident.hex(),
                len(client.jobs),
                "it disconnected" if silence is None else f"no word from it for {silence:.1f} s",
            )
        for job in list(client.jobs.values()):
            if silence is not None:
                actions.append(
                    self._error_to(
                        ident,
                        job.corr,
                        BrokerUnavailable(
                            f"{job.service}.{job.method} was dropped: the broker heard nothing from this client for "
                            f"{silence:.1f} s and forgot it",
                            service=job.service,
                            method=job.method,
                        ),
                    )
                )
            actions += self._give_up(job)
            self._unlink(job)
        for worker_ident in list(client.leases):
            worker = self._workers.get(worker_ident)
            if worker is not None:
                self._end_lease(worker, "its client is gone")
                actions += self._dispatch_all(self._services[worker.service], worker, now)
        self._clients.pop(ident, None)
        return actions

    def refuse_unread(
        self, ident: bytes, header: Buffer, frames: int, size: int, setting: str, limit: int, now: float
    ) -> list[Action]:
        """Refuse a message the loop stopped reading once it passed the pool's ``setting`` (``max_request_frames`` or
        ``max_request_bytes``, whose value is ``limit``); it had ``frames`` frames, ``size`` bytes. Nothing of it was
        queued or run. Answered with BadRequest only when ``header`` is a REQUEST that carries a correlation ID."""
        self.stats["bad_client_messages"] += 1
        self.stats["refused_too_big"] += 1
        self._drops.warn(
            now, "refused a message of %d frames, %d bytes from client %s: over %s", frames, size, ident.hex(), setting
        )
        corr = wire.corr_of([header], wire.CLIENT_PROTOCOL)
        if corr is None or header[4] != wire.REQUEST:
            return []
        if setting == "max_request_frames":
            what = f"{frames:,} frames"
            advice = "pass big data as fewer, larger buffers (an array, bytes), or raise"
        else:
            what = f"{size:,} bytes"
            advice = "send less data per call, or raise"
        error = BadRequest(
            f"the request has {what}, over the pool's limit of {limit:,} ({setting}); it was refused unread: "
            f"{advice} {setting} under [pool]",
            setting=setting,
            limit=limit,
            frames=frames,
            size=size,
        )
        return [self._error_to(ident, corr, error)]

    # --- worker side --------------------------------------------------------------

    def worker_message(self, ident: bytes, frames: list[Buffer], now: float) -> list[Action]:
        try:
            message = parse_worker(frames)
        except ProtocolError as exc:
            self.stats["bad_worker_messages"] += 1
            self._drops.warn(now, "dropped a malformed message from worker %s: %s", ident.hex(), exc)
            return []
        worker = self._workers.get(ident)
        if isinstance(message, WorkerReady):
            return self._ready(ident, message, now)
        if worker is None and ident in self._retired:
            return []  # what a worker told to STOP sent before it heard
        if worker is None:
            # A worker this broker does not know (e.g. after a broker restart): ask it to register.
            self._drops.warn(now, "message from unregistered worker %s; asking it to register", ident.hex())
            return [ToWorker(ident, wire.disconnect_to_worker())]
        worker.expires = now + self.heartbeat_interval * self.heartbeat_liveness
        if isinstance(message, WorkerHeartbeat):
            return [] if message.figures is None else self._measured(worker, message.figures, now)
        if isinstance(message, WorkerDisconnect):
            return self._lose_worker(worker, now, "it disconnected")
        return self._reply(worker, message, now)

    def _ready(self, ident: bytes, ready: WorkerReady, now: float) -> list[Action]:
        actions: list[Action] = []
        old = self._workers.get(ident)
        if old is not None:
            actions += self._lose_worker(old, now, "it registered again")
        service = self._services.get(ready.service)
        unwanted = (ready.info.get("host"), ready.pid)
        if unwanted in self.unwanted or ident in self._retired:
            self.unwanted.discard(unwanted)
            self._retired[ident] = now
            log.info("worker pid %d registered after it was retired (or scaled away); stopping it", ready.pid)
            return [*actions, ToWorker(ident, wire.stop_to_worker())]
        if service is None:
            self._drops.warn(now, "worker %s offers unknown service %r; dropped", ident.hex(), ready.service)
            return [*actions, ToWorker(ident, wire.disconnect_to_worker())]
        previous = self._by_pid.get(ready.pid)
        if previous is not None and previous != ident:
            host = ready.info.get("host")
            if self._workers[previous].info.get("host") != host:
                # Another machine's process with the same pid: calls are routed by pid (sessions, handles), so
                # the two cannot both serve; the one already registered keeps its place.
                self._drops.warn(now, "refused worker pid %d from host %r: that pid already serves", ready.pid, host)
                return [*actions, ToWorker(ident, wire.disconnect_to_worker())]
            # The same process on a new socket (it reconnected): its old registration is dead.
            actions += self._lose_worker(self._workers[previous], now, "it reconnected on a new socket")
        worker = _Worker(
            ident=ident,
            service=ready.service,
            pid=ready.pid,
            capacity=ready.threads,
            info=ready.info,
            expires=now + self.heartbeat_interval * self.heartbeat_liveness,
            next_heartbeat=now + self.heartbeat_interval,
            registered=now,
        )
        self._workers[ident] = worker
        self._by_pid[worker.pid] = ident
        service.workers[ident] = worker
        service.idle.extend([ident] * worker.capacity)
        log.info(
            "worker pid %d ready for %r (%d-bit, %d thread(s))",
            worker.pid,
            worker.service,
            8 * (pointer_size if isinstance(pointer_size := ready.info.get("pointer_size"), int) else 0),
            worker.capacity,
        )
        return actions + self._grant_leases(service, now) + self._dispatch(service, now)

    def _reply(self, worker: _Worker, reply: WorkerReply, now: float) -> list[Action]:
        job = worker.jobs.pop(reply.job, None)
        if job is None:
            self.stats["bad_worker_messages"] += 1
            self._drops.warn(now, "worker pid %d answered job %d it does not hold; dropped", worker.pid, reply.job)
            return []
        service = self._services[worker.service]
        worker.last_reply = now
        worker.calls += 1
        self._free_slot(service, worker, job, now)
        actions: list[Action] = []
        if job.answered:
            if job.expired_at is not None:
                self.stats["late_replies"] += 1
                log.info("discarded a late reply for %s.%s from worker pid %d", job.service, job.method, worker.pid)
            else:
                self.stats["discarded_replies"] += 1
        else:
            self._unlink(job)
            self.stats["errors" if reply.error else "replies"] += 1
            meter = self._meters[worker.service]
            meter.record(now - job.arrived)
            if reply.error:
                meter.error(_error_type(reply.payload))
            actions.append(ToClient(job.client, wire.answer_to_client(job.corr, reply.error, reply.payload)))
        self._move(job, JobState.DONE)
        limit = service.policy.max_calls_per_worker
        if limit and worker.calls >= limit:
            actions += self._recycle(worker, f"it served {worker.calls} calls (max_calls_per_worker)", now)
        return actions + self._dispatch_all(service, worker, now)

    def _dispatch_all(self, service: _Service, worker: _Worker, now: float) -> list[Action]:
        """After ``worker`` freed a run slot: first the jobs pinned to it (then, if it is being retired, its next step
        toward STOP), then a waiting lease, then the queue."""
        actions = self._dispatch_pinned(worker, now)
        if worker.retire:
            actions += self._wind_down(worker, now)
        return actions + self._grant_leases(service, now) + self._dispatch(service, now)

    def worker_exited(self, pid: int, returncode: int | None, now: float) -> list[Action]:
        """The supervisor saw a worker process end."""
        self.unwanted = {u for u in self.unwanted if u[1] != pid}
        ident = self._by_pid.get(pid)
        if ident is None:
            return []
        how = f"exit code {returncode}" if returncode is None or returncode >= 0 else f"signal {-returncode}"
        return self._lose_worker(self._workers[ident], now, f"its process ended ({how})", returncode)

    def worker_unreachable(self, ident: bytes, now: float) -> list[Action]:
        """A send to the worker failed: its socket is gone, and its process most likely ended or is ending.
        Its calls are answered once the supervisor says how it ended (see :class:`WorkerState`)."""
        worker = self._workers.get(ident)
        if worker is not None and worker.state is not WorkerState.GONE:
            self._retire(worker, WorkerState.GONE)
            worker.gone_at = now
        return []

    def _lose_worker(self, worker: _Worker, now: float, reason: str, returncode: int | None = None) -> list[Action]:
        if worker.state is WorkerState.RETIRING and not worker.jobs:
            self.stats["workers_retired"] += 1
        else:
            self.stats["workers_lost"] += 1
            self._meters[worker.service].restarts += 1
        del self._workers[worker.ident]
        if self._by_pid.get(worker.pid) == worker.ident:
            del self._by_pid[worker.pid]
        service = self._services[worker.service]
        del service.workers[worker.ident]
        service.idle = deque(i for i in service.idle if i != worker.ident)
        if worker.lease is not None:
            worker.spare = 0
            self._end_lease(worker, f"the worker was lost: {reason}")
        actions: list[Action] = []
        for job in worker.pinned:
            if job.state is JobState.QUEUED:
                self._move(job, JobState.DONE)
                self._unlink(job)
                actions.append(
                    self._error_to(job.client, job.corr, self._bound_worker_gone(worker.pid, job.service, job.method))
                )
        if worker.jobs:
            log.warning(
                "worker pid %d of %r lost with %d call(s) in flight: %s",
                worker.pid,
                worker.service,
                len(worker.jobs),
                reason,
            )
        poisoned = returncode is not None and (-returncode in POISON_SIGNALS or returncode in WINDOWS_CRASHES)
        retries: list[_Job] = []
        for job in worker.jobs.values():
            retry = (
                job.pin is None and job.method in service.policy.idempotent and job.attempts < 2 and not job.answered
            )
            if retry and not (poisoned and job.state is JobState.RUNNING):
                self.stats["retried"] += 1
                self._move(job, JobState.QUEUED)
                job.worker = None
                retries.append(job)
                continue
            held = "running" if job.state is JobState.RUNNING else "holding"
            self._move(job, JobState.DONE)
            if job.answered:
                continue
            self._unlink(job)
            why = "; not sent again: its own run may have killed the worker" if retry else ""
            if worker.doomed_by:
                why += f"; {worker.doomed_by}"
            actions.append(
                self._error_to(
                    job.client,
                    job.corr,
                    WorkerCrashed(
                        f"the worker (pid {worker.pid}) {held} {job.service}.{job.method} died: {reason}{why}",
                        service=job.service,
                        method=job.method,
                        pid=worker.pid,
                        returncode=returncode,
                    ),
                )
            )
        service.queue.extendleft(reversed(retries))
        return actions + self._grant_leases(service, now) + self._dispatch(service, now)

    # --- time ---------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Heartbeats, lapsed workers, expired deadlines; the loop calls it every few tens of ms."""
        self._drops.flush(now)
        actions: list[Action] = []
        for meter in self._meters.values():
            meter.rotate(now)
        if self._retired:
            window = self.heartbeat_interval * self.heartbeat_liveness
            self._retired = {ident: at for ident, at in self._retired.items() if now - at < window}
        for worker in list(self._workers.values()):
            lapsed = self._lapsed(worker, now)
            if lapsed is not None:
                actions.append(KillWorker(worker.pid, lapsed))
                actions += self._lose_worker(worker, now, lapsed)
                continue
            actions += self._expire_held(worker, now)
            hung = self._hung(worker, now) if worker.state in _TAKES_PINNED else None
            if hung is not None:
                self._retire(worker, WorkerState.DOOMED)
                worker.doomed_by = (
                    f"the worker was recycled because another call on it ({hung.service}.{hung.method}) ran past "
                    "its deadline"
                )
                actions.append(KillWorker(worker.pid, "a call ran past its deadline and grace period"))
            if worker.state is not WorkerState.GONE and now >= worker.next_heartbeat:
                worker.next_heartbeat = now + self.heartbeat_interval
                actions.append(ToWorker(worker.ident, wire.heartbeat_to_worker()))
            if worker.pinned:
                actions += self._dispatch_pinned(worker, now)  # expires those past their deadline
            if worker.retire:  # a backstop: a pinned call it waited for may have been cancelled or expired
                actions += self._wind_down(worker, now)
                if worker.ident not in self._workers:
                    continue
            idle_limit = self._services[worker.service].policy.session_idle
            leased = worker.lease not in (None, _RESERVED)
            if leased and not worker.jobs and now - worker.lease_used > idle_limit:
                self._end_lease(worker, f"no call for {idle_limit:g} s (session_idle)")
                actions += self._dispatch_all(self._services[worker.service], worker, now)
        for service in self._services.values():
            if service.lease_waiters:
                actions += self._grant_leases(service, now)  # expires those past their deadline
            if any(j.deadline is not None and now >= j.deadline for j in service.queue if j.state is JobState.QUEUED):
                for job in service.queue:
                    if job.state is JobState.QUEUED and job.deadline is not None and now >= job.deadline:
                        actions.append(self._expire_queued(job))
                self._sweep(service, force=True)
        for client in [c for c in self._clients.values() if now >= c.expires]:
            actions += self._forget_client(client.ident, now, now - client.expires + self._window(client))
        return actions

    def paused(self, now: float) -> None:
        """The loop could not watch its sockets for a while (the process was stopped, a long GC, a swap storm,
        one message that took long to read): silence over that time proves nothing, so every peer gets a fresh
        liveness window from ``now`` instead of being judged on what the broker could not observe."""
        window = self.heartbeat_interval * self.heartbeat_liveness
        for worker in self._workers.values():
            worker.expires = max(worker.expires, now + window)
        self.clients_unheard(now)

    def clients_unheard(self, now: float) -> None:
        """The clients' messages wait behind one long message the loop is still reading (the socket hands out the
        rest of a message first): their silence proves nothing, so each gets a fresh liveness window from ``now``.
        The loop calls this at least once a heartbeat interval until that message is read."""
        for client in self._clients.values():
            client.expires = max(client.expires, now + self._window(client))

    def _lapsed(self, worker: _Worker, now: float) -> str | None:
        """Why ``worker`` counts as lost by now, if it does."""
        if worker.state is WorkerState.GONE and now >= worker.gone_at + EXIT_REPORT_WAIT:
            return "its socket went away"
        if now >= worker.expires:
            return "its heartbeats stopped"
        return None

    def _expire_held(self, worker: _Worker, now: float) -> list[Action]:
        """Answer Timeout for the calls ``worker`` holds past their deadline; its own answer is discarded later.

        A call whose client is gone was answered already, but its deadline still counts toward recycling a
        hung worker."""
        actions: list[Action] = []
        for job in worker.jobs.values():
            if job.expired_at is None and job.deadline is not None and now >= job.deadline:
                job.expired_at = now
                if job.answered:
                    continue
                job.answered = True
                self._unlink(job)
                if job.state is JobState.RUNNING:
                    self.stats["timed_out_running"] += 1
                    actions.append(self._timeout(job, f"still running on worker pid {worker.pid}"))
                else:
                    self.stats["expired_ahead"] += 1
                    where = f"it was waiting in worker pid {worker.pid} behind another call; it will not be started"
                    actions.append(self._timeout(job, where))
                    actions += self._recall(job)
        return actions

    def _hung(self, worker: _Worker, now: float) -> _Job | None:
        """A call that may be running past its deadline and ``kill_grace``; a call waiting behind it, never
        started, does not count, and one that reached the front late gets its grace from then."""
        for job in worker.jobs.values():
            if (
                job.state is JobState.RUNNING
                and job.expired_at is not None
                and now >= max(job.expired_at, job.running_since) + self.kill_grace
            ):
                return job
        return None

    def _timeout(self, job: _Job, where: str) -> ToClient:
        limit = f"{job.timeout:g} s"
        if job.ceiling:
            limit += " (the service's max_call_seconds: the call gave no timeout)"
        return self._error_to(
            job.client,
            job.corr,
            Timeout(
                f"{job.service}.{job.method} did not finish within {limit}: {where}",
                service=job.service,
                method=job.method,
                timeout=job.timeout,
            ),
        )

    def _expire_queued(self, job: _Job) -> ToClient:
        self.stats["expired_in_queue"] += 1
        self._move(job, JobState.DONE)
        self._unlink(job)
        return self._timeout(job, "it was still queued; it never ran")

    # --- shutdown -----------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.accepting = False

    def abort_all(self, reason: str, now: float) -> list[Action]:
        """Answer every request still pending with BrokerUnavailable; the broker is going away."""
        actions: list[Action] = []
        for client in list(self._clients.values()):
            for job in list(client.jobs.values()):
                actions.append(
                    self._error_to(
                        job.client,
                        job.corr,
                        BrokerUnavailable(
                            f"{job.service}.{job.method} was not answered: {reason}", service=job.service
                        ),
                    )
                )
                if job.state is JobState.QUEUED:
                    self._move(job, JobState.DONE)
                else:
                    job.answered = True
                    job.expired_at = now if job.expired_at is None else job.expired_at
                self._unlink(job)
        for service in self._services.values():
            self._sweep(service, force=True)
        return actions

    # --- retiring, scaling and status -----------------------------------------------------

    def _scale_request(self, ident: bytes, req: ClientRequest) -> Action:
        """A SCALE request: its one argument is the worker count, which the loop takes to the supervisor."""
        try:
            args, kwargs = unpack_call(req.payload)
        except ProtocolError as exc:
            return self._error_to(ident, req.corr, BadRequest(f"malformed {wire.SCALE} request: {exc}"))
        workers = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            message = f"{wire.SCALE} needs a worker count of 0 or more, got {workers!r}"
            return self._error_to(ident, req.corr, BadRequest(message, service=req.service))
        return Scale(req.service, workers, ident, req.corr)

    def _measured(self, worker: _Worker, figures: dict[str, int], now: float) -> list[Action]:
        """A heartbeat's figures: kept for status, and a worker past its service's limits is replaced."""
        worker.figures = figures
        policy = self._services[worker.service].policy
        rss, free = figures.get("rss"), figures.get("address_space_free")
        reason = ""
        if policy.max_worker_rss and rss is not None and rss > policy.max_worker_rss:
            reason = f"its resident memory, {rss} bytes, passed max_worker_rss ({policy.max_worker_rss})"
        elif policy.min_free_address_space and free is not None and free < policy.min_free_address_space:
            reason = (
                f"its free address space, {free} bytes, fell below min_free_address_space "
                f"({policy.min_free_address_space})"
            )
        if not reason:
            return []
        if not worker.calls and not worker.jobs:  # a fresh process past the limit: its successor would be too
            if worker.service not in self._limits_too_low:
                self._limits_too_low.add(worker.service)
                log.error(
                    "worker pid %d of %r is past its limit before any call (%s): replacing it would not help, so "
                    "workers of this service that never ran a call are not recycled; fix the limit",
                    worker.pid,
                    worker.service,
                    reason,
                )
            return []
        return self._recycle(worker, reason, now)

    def _recycle(self, worker: _Worker, reason: str, now: float, replace: bool = True) -> list[Action]:
        """Retire ``worker``: it takes no new call, finishes those it has, then is told to STOP; with ``replace``
        the supervisor starts its successor at once, so the service keeps its strength meanwhile."""
        if worker.retire or worker.state is not WorkerState.SERVING:
            return []
        worker.retire = reason
        if replace:
            self._meters[worker.service].recycled += 1
        log.info("retiring worker pid %d of %r: %s", worker.pid, worker.service, reason)
        host = worker.info.get("host")
        retire = Retire(worker.pid, host if isinstance(host, str) else None, reason, replace)
        return [retire, *self._wind_down(worker, now)]

    def _wind_down(self, worker: _Worker, now: float) -> list[Action]:
        """Move a worker being retired on: RETIRING once no session holds it, told to STOP and forgotten once
        it holds no call."""
        actions: list[Action] = []
        if self._workers.get(worker.ident) is not worker:
            return actions  # stopped and forgotten already
        if worker.state is WorkerState.SERVING:
            if worker.lease not in (None, _RESERVED):
                return []  # a session's worker keeps serving it; its lease's end brings it back here
            if worker.lease == _RESERVED:
                self._end_lease(worker, "it is being retired")
            self._retire(worker, WorkerState.RETIRING)
            actions += self._grant_leases(self._services[worker.service], now)
        if worker.state is WorkerState.RETIRING and not worker.jobs and not worker.pinned:
            actions.append(ToWorker(worker.ident, wire.stop_to_worker()))
            self._retired[worker.ident] = now
            actions += self._lose_worker(worker, now, f"it was retired: {worker.retire}")
        return actions

    def retire(self, service: str, count: int, among: set[int], now: float) -> list[Action]:
        """Retire ``count`` workers of ``service`` for good (the pool is scaled down), choosing among the pids
        ``among`` (those the supervisor started): workers no session holds and with the least to do first."""
        candidates = [
            w
            for w in self._services[service].workers.values()
            if w.pid in among and w.state is WorkerState.SERVING and not w.retire
        ]
        candidates.sort(key=lambda w: (w.lease not in (None, _RESERVED), len(w.jobs) + len(w.pinned), -w.registered))
        actions: list[Action] = []
        for worker in candidates[:count]:
            actions += self._recycle(worker, "the pool was scaled down", now, replace=False)
        return actions

    def stop_unowned(self, host: str, pid: int, now: float) -> list[Action]:
        """Worker ``pid`` of ``host`` (this broker's) was started by nobody on purpose (its zygote forked it after it
        was given up on, and another was spawned in its place): retired for good if it registered (it finishes its
        calls, a session's worker once the session ends, then STOP), and told STOP whenever it registers (again)."""
        self.unwanted.add((host, pid))  # also should it register again, on a new socket, after it was retired
        ident = self._by_pid.get(pid)
        worker = None if ident is None else self._workers.get(ident)
        if worker is None or worker.info.get("host") != host:
            return []
        return self._recycle(worker, "its zygote forked it after the broker had spawned another", now, replace=False)

    def has_worker(self, pid: int) -> bool:
        """Whether the worker with that pid is registered and reachable (retiring ones included)."""
        ident = self._by_pid.get(pid)
        worker = None if ident is None else self._workers.get(ident)
        return worker is not None and worker.state is not WorkerState.GONE

    def queue_wait(self, service: str, now: float) -> float:
        """Seconds the oldest call of ``service`` still waiting for a worker has waited (0 when none waits): in its
        queue, or a session's LEASE waiting for a worker of its own (autoscaling grows the pool for either)."""
        entry = self._services[service]
        oldest = [
            next((job.arrived for job in jobs if job.state is JobState.QUEUED), now)
            for jobs in (entry.queue, entry.lease_waiters)
        ]
        return now - min(oldest)

    def reshaped(self) -> None:
        """The supervisor's side of the status changed (a scale): the next status is made afresh."""
        self._status = None

    def queued(self, service: str) -> int:
        """Calls of ``service`` waiting in its queue, for any worker (not those pinned to one, nor LEASEs)."""
        return self._services[service].in_queue

    def leases_waiting(self, service: str) -> int:
        """Sessions waiting for a worker of ``service`` of their own."""
        return self._services[service].leases_waiting

    def free_slots(self, service: str) -> int:
        """Run slots of ``service`` with nothing to do."""
        return len(self._services[service].idle)

    def status(self, now: float) -> dict[str, Any]:
        """Each service's workers, queue, calls in flight, recent rate and latency, errors by type, recycled
        and restarted workers, and totals: what ``dllpool status`` and ``Client.status()`` show. Made at most once
        per ``STATUS_EVERY`` seconds: a client asking in a loop costs the broker little."""
        if self._status is not None and now - self._status[0] < STATUS_EVERY:
            return self._status[1]
        supervision = {} if self.supervision is None else self.supervision()
        services: dict[str, Any] = {}
        for name, service in sorted(self._services.items()):
            shape = supervision.get("services", {}).get(name, {})
            restarts = shape.get("restarts", {})
            workers = [self._worker_status(w, now, restarts.get(w.pid)) for w in service.workers.values()]
            services[name] = {
                **{key: value for key, value in shape.items() if key != "restarts"},
                "workers": sorted(workers, key=lambda w: w["pid"]),
                "queued": service.queued,
                "queue_wait": self.queue_wait(name, now),
                "held_ahead": service.ahead,
                "running": sum(w["running"] for w in workers),
                **self._meters[name].snapshot(now),
            }
        totals = {
            key: sum(s[key] for s in services.values())
            for key in ("queued", "held_ahead", "running", "calls", "calls_per_s", "recycled", "restarts")
        }
        totals["workers"] = sum(len(s["workers"]) for s in services.values())
        totals["errors"] = sum(sum(s["errors"].values()) for s in services.values())
        status = {
            "broker": supervision.get("broker", {}),
            "services": services,
            "totals": totals,
            "counters": self.counters(),
        }
        self._status = (now, status)
        return status

    @staticmethod
    def _worker_status(worker: _Worker, now: float, restarts: int | None) -> dict[str, Any]:
        """One worker's line of the status; ``state`` is ``idle``, ``busy``, ``held`` (a session's), or its
        :class:`WorkerState` when it is not serving (``retiring``, ``doomed``, ``gone``)."""
        if worker.state is not WorkerState.SERVING:
            state = worker.state.value
        elif worker.lease not in (None, _RESERVED):
            state = "held"
        else:
            state = "busy" if worker.jobs else "idle"
        pointer_size = worker.info.get("pointer_size")
        return {
            "pid": worker.pid,
            "host": worker.info.get("host"),
            "bits": 8 * pointer_size if isinstance(pointer_size, int) else None,
            "threads": worker.capacity,
            "state": state,
            "running": sum(1 for j in worker.jobs.values() if j.state is JobState.RUNNING),
            "calls": worker.calls,
            "uptime": now - worker.registered,
            "restarts": restarts,
            "rss": worker.figures.get("rss"),
            "address_space_free": worker.figures.get("address_space_free"),
            "retiring": worker.retire or None,
        }

    # --- internals ----------------------------------------------------------------

    def _dispatch(self, service: _Service, now: float) -> list[Action]:
        """Hand queued jobs out in order: to a free run slot (LRU) if any worker has one, else, for an
        idempotent job, ahead to the worker holding the fewest; the first job that can go nowhere waits."""
        queue = service.queue
        if not queue:  # as after most replies: no call left to look at
            return []
        actions: list[Action] = []
        idempotent = service.policy.idempotent
        while (job := self._first_waiting(queue, now, actions)) is not None:
            if service.idle:
                worker = self._workers[service.idle.popleft()]
                self._move(job, JobState.RUNNING)
                job.running_since = now
            else:
                ahead = self._ahead_worker(service) if job.method in idempotent else None
                if ahead is None:
                    break
                worker = ahead
                self._move(job, JobState.AHEAD)
                self.stats["sent_ahead"] += 1
            queue.popleft()
            actions.append(self._send(job, worker, now))
        return actions

    def _first_waiting(self, waiting: deque[_Job], now: float, actions: list[Action]) -> _Job | None:
        """The first job of ``waiting`` still to be run, left in place; those dropped while they waited go,
        and those past their deadline go with a Timeout added to ``actions``."""
        while waiting:
            job = waiting[0]
            if job.state is JobState.QUEUED and (job.deadline is None or now < job.deadline):
                return job
            waiting.popleft()
            if job.state is JobState.QUEUED:
                actions.append(self._expire_queued(job))
        return None

    def _send(self, job: _Job, worker: _Worker, now: float) -> ToWorker:
        """Hand ``job`` (RUNNING or AHEAD by now) to ``worker``."""
        job.attempts += 1
        job.worker = worker.ident
        worker.jobs[job.job_id] = job
        worker.next_heartbeat = now + self.heartbeat_interval
        left = None if job.deadline is None else max(0.0, job.deadline - now)
        message = ToWorker(worker.ident, wire.request_to_worker(job.job_id, job.method, left, job.payload, job.flags))
        if job.pin is not None or job.method not in self._services[job.service].policy.idempotent:
            self._release(job)  # never sent again: the broker need not hold on to its bytes
        return message

    # --- pinned jobs and leases ---------------------------------------------------------

    def _pinned_worker(self, pid: int, service: str) -> _Worker | None:
        """The registered worker of ``service`` with that pid, if it is still there to take work."""
        ident = self._by_pid.get(pid)
        worker = None if ident is None else self._workers.get(ident)
        if worker is None or worker.service != service or worker.state is not WorkerState.SERVING:
            return None
        return worker

    @staticmethod
    def _bound_worker_gone(pid: int, service: str, method: str) -> WorkerCrashed:
        return WorkerCrashed(
            f"{service}.{method} is bound to worker pid {pid} (a session's, or a handle's), which is gone or "
            f"no longer serves {service!r}; the call was not run elsewhere",
            service=service,
            method=method,
            pid=pid,
            bound=True,
        )

    def _dispatch_pinned(self, worker: _Worker, now: float) -> list[Action]:
        """Give ``worker``'s free run slots to the jobs pinned to it, in order."""
        if not worker.pinned:
            return []
        actions: list[Action] = []
        service = self._services[worker.service]
        while worker.state in _TAKES_PINNED and (job := self._first_waiting(worker.pinned, now, actions)):
            if worker.spare:
                worker.spare -= 1
            elif worker.lease is None and worker.ident in service.idle:
                service.idle.remove(worker.ident)
            else:
                break
            worker.pinned.popleft()
            worker.lease_used = now
            self._move(job, JobState.RUNNING)
            job.running_since = now
            actions.append(self._send(job, worker, now))
        return actions

    def _grant_leases(self, service: _Service, now: float) -> list[Action]:
        """Lease workers with nothing to do to the LEASE requests waiting, oldest first."""
        waiters = service.lease_waiters
        if not waiters and service.reserved is None:
            return []
        actions: list[Action] = []
        while (job := self._first_waiting(waiters, now, actions)) is not None:
            worker = next((w for w in service.workers.values() if self._leasable(service, w)), None)
            if worker is None:
                self._reserve(service)
                break
            waiters.popleft()
            if worker.lease is None:
                service.idle = deque(i for i in service.idle if i != worker.ident)
            elif service.reserved == worker.ident:
                service.reserved = None
            worker.spare, worker.lease, worker.lease_used = worker.capacity, job.client, now
            self._clients[job.client].leases.add(worker.ident)
            self._move(job, JobState.DONE)
            self._unlink(job)
            self.stats["leases"] += 1
            log.info("worker pid %d of %r leased to client %s", worker.pid, worker.service, job.client.hex())
            actions.append(ToClient(job.client, wire.reply_to_client(job.corr, pack_value({"pid": worker.pid}))))
        if not waiters and service.reserved is not None:  # the LEASE it was kept for was cancelled or expired
            self._end_lease(self._workers[service.reserved], "no lease waits for it any more")
            actions += self._dispatch(service, now)
        return actions

    @staticmethod
    def _leasable(service: _Service, worker: _Worker) -> bool:
        """Whether ``worker`` has nothing to do and no lease (or is the one kept free for the leases waiting)."""
        if worker.state is not WorkerState.SERVING or worker.jobs or worker.pinned:
            return False
        if worker.lease == _RESERVED:
            return worker.spare == worker.capacity
        return worker.lease is None and service.idle.count(worker.ident) == worker.capacity

    def _reserve(self, service: _Service) -> None:
        """Keep the least busy worker from taking new work until it has none, for the lease waiting: under a
        steady load (or with ``prefetch``) no worker would ever have nothing to do on its own."""
        if service.reserved is not None:
            return
        free = [w for w in service.workers.values() if w.state is WorkerState.SERVING and w.lease is None]
        if not free:
            return
        worker = min(free, key=lambda w: len(w.jobs))
        worker.spare = service.idle.count(worker.ident)
        service.idle = deque(i for i in service.idle if i != worker.ident)
        worker.lease = _RESERVED
        service.reserved = worker.ident

    def _release_lease(self, ident: bytes, req: ClientRequest, now: float) -> list[Action]:
        """A RELEASE: end the lease ``ident`` holds on the pinned worker (answers whether it held one); the
        worker then takes what its service has waiting."""
        worker = None if req.pin is None else self._pinned_worker(req.pin, req.service)
        actions: list[Action] = [
            ToClient(
                ident,
                wire.reply_to_client(req.corr, pack_value({"released": worker is not None and worker.lease == ident})),
            )
        ]
        if worker is not None and worker.lease == ident:
            self._end_lease(worker, "its session ended")
            actions += self._dispatch_all(self._services[worker.service], worker, now)
        return actions

    def _end_lease(self, worker: _Worker, why: str) -> None:
        """``worker`` serves its whole service again; the dispatch that follows gives it work."""
        client = None if worker.lease is None else self._clients.get(worker.lease)
        service = self._services[worker.service]
        if service.reserved == worker.ident:
            service.reserved = None
        if client is not None:
            client.leases.discard(worker.ident)
            if not client.jobs and client.window is None and not client.leases:
                del self._clients[client.ident]
        worker.lease = None
        if not worker.retire:  # a worker on its way out keeps its free slots to itself (see _wind_down)
            if worker.state is WorkerState.SERVING:
                self._services[worker.service].idle.extend([worker.ident] * worker.spare)
            worker.spare = 0
        if client is not None:
            self.stats["leases_ended"] += 1
            log.info("the lease of worker pid %d of %r ended: %s", worker.pid, worker.service, why)

    def _worker_list(self, service: _Service) -> list[dict[str, Any]]:
        """What a WORKERS request answers: each registered worker of the service."""
        return [
            {
                "pid": w.pid,
                "host": w.info.get("host"),
                "threads": w.capacity,
                "leased": w.lease not in (None, _RESERVED),
            }
            for w in service.workers.values()
            if w.state is WorkerState.SERVING
        ]

    def _ahead_worker(self, service: _Service) -> _Worker | None:
        """The worker to hold a job ahead: the fewest held, then the most recent reply (a worker stuck
        in a long call has not answered for a while); None when every worker is full."""
        best: _Worker | None = None
        prefetch = service.policy.prefetch
        if not prefetch:
            return None
        for worker in service.workers.values():
            held = len(worker.jobs)
            if (
                worker.state is not WorkerState.SERVING
                or worker.lease is not None
                or worker.pinned
                or held >= worker.capacity + prefetch
            ):
                continue
            if best is None or (held, -worker.last_reply) < (len(best.jobs), -best.last_reply):
                best = worker
        return best

    def _free_slot(self, service: _Service, worker: _Worker, job: _Job, now: float) -> None:
        """``job`` left ``worker``: its run slot goes to the next job the worker holds, or back to the idle
        deque when it holds none ahead."""
        if job.state is JobState.AHEAD:  # answered before the broker saw it start (replies raced): no slot freed
            return
        waiting = next((j for j in worker.jobs.values() if j.state is JobState.AHEAD), None) if worker.jobs else None
        if waiting is not None:
            self._move(waiting, JobState.RUNNING)
            waiting.running_since = now
        elif worker.state is WorkerState.SERVING:
            if worker.lease is not None:
                worker.spare += 1
                worker.lease_used = now
            else:
                service.idle.append(worker.ident)
        elif worker.state is WorkerState.RETIRING:
            worker.spare += 1

    def _retire(self, worker: _Worker, state: WorkerState) -> None:
        """No more work for ``worker``: its free run slots leave the idle deque (a RETIRING worker keeps them as
        ``spare``, for the calls pinned to it before)."""
        worker.state = state
        service = self._services[worker.service]
        if state is WorkerState.RETIRING:
            worker.spare += service.idle.count(worker.ident)
        service.idle = deque(i for i in service.idle if i != worker.ident)

    def _move(self, job: _Job, state: JobState) -> None:
        """Change ``job``'s state, and with it its service's counts of what waits."""
        old = job.state
        assert state in _TRANSITIONS[old], f"job {job.job_id}: {old} -> {state}"
        job.state = state
        service = self._services[job.service]
        if old is JobState.QUEUED:
            service.queued -= 1
        elif old is JobState.AHEAD:
            service.ahead -= 1
        if state is JobState.QUEUED:
            service.queued += 1
        elif state is JobState.AHEAD:
            service.ahead += 1
        if (old in _WAITING) != (state in _WAITING):
            service.waiting_bytes += job.size if state in _WAITING else -job.size

    def _release(self, job: _Job) -> None:
        """Let go of ``job``'s bytes: it will not be sent again."""
        if job.payload:
            job.payload = []
            self.held_bytes -= job.size

    def _unlink(self, job: _Job) -> None:
        """``job``'s caller has had its answer (or gave up): it no longer counts for its client, which is
        forgotten once it has nothing pending and no liveness window of its own."""
        client = self._clients[job.client]
        del client.jobs[job.corr]
        client.bytes -= job.size
        self._pending -= 1
        self._release(job)
        if not client.jobs and client.window is None and not client.leases:
            del self._clients[job.client]

    def _sweep(self, service: _Service, force: bool = False) -> None:
        """Drop the DONE jobs from ``service``'s queue once they are many (or now, when ``force``)."""
        queued = service.in_queue
        dropped = len(service.queue) - queued
        if dropped and (force or dropped > max(64, queued)):
            service.queue = deque(job for job in service.queue if job.state is JobState.QUEUED)

    def _error_to(self, ident: bytes, corr: int, error: CallError) -> ToClient:
        meter = self._meters.get(str(error.details.get("service")))
        if meter is not None:
            meter.error(type(error).__name__)
        return ToClient(ident, wire.error_to_client(corr, error_to_wire(error)))


def _error_type(payload: list[Buffer]) -> str:
    """The type name of a worker's error answer (read only for status: the broker forwards it untouched)."""
    try:
        name = wire.unpack_header(payload[0], "error", wire.MAX_ERROR_LEN).get("type")
    except (ProtocolError, IndexError):
        name = None
    return name if isinstance(name, str) and name.isidentifier() and len(name) <= 64 else "CallError"


class _LogThrottle:
    """One log line per dropped message, up to a burst; then a count, so a flood cannot flood the log."""

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        self.burst = burst
        self.window = window
        self.window_start = float("-inf")
        self.logged = 0
        self.suppressed = 0

    def warn(self, now: float, message: str, *args: object) -> None:
        self.flush(now)
        if self.logged < self.burst:
            self.logged += 1
            log.warning(message, *args)
        else:
            self.suppressed += 1

    def flush(self, now: float) -> None:
        if now - self.window_start < self.window:
            return
        if self.suppressed:
            log.warning("... and %d more dropped messages in the last %.0f s", self.suppressed, self.window)
        self.window_start, self.logged, self.suppressed = now, 0, 0
