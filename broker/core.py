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
- a reply is accepted only from the worker that holds that job.

Each job has an explicit :class:`JobState` and each worker a
:class:`WorkerState`; a worker holds its jobs in dispatch order, and since a
worker starts them in that order, the first ``threads`` of them are the ones
that may be running.
"""

from __future__ import annotations

import enum
import itertools
import logging
import signal
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Union

from protocol import (
    BadRequest,
    BrokerUnavailable,
    Buffer,
    Busy,
    CallError,
    ClientCancel,
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
    parse_client,
    parse_worker,
)
from protocol import frames as wire

log = logging.getLogger(__name__)

__all__ = ["Action", "BrokerCore", "JobState", "KillWorker", "ServicePolicy", "ToClient", "ToWorker", "WorkerState"]

POISON_SIGNALS = frozenset(
    int(getattr(signal, name)) for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT") if hasattr(signal, name)
)
"""A worker that ended by one of these was killed by the call it ran, not from outside."""
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
    prefetch: int = 0
    """Idempotent requests a worker may hold beyond its run slots, so its next call is already there."""


class JobState(enum.Enum):
    """Where an accepted, unanswered job is. An answered job is forgotten, except one answered
    ``Timeout`` while a worker still holds it (``abandoned_at`` is set): it keeps its state until
    the worker's own answer comes, which is then discarded."""

    QUEUED = "queued"
    """In its service's queue; no worker has it."""
    AHEAD = "ahead"
    """Sent to a worker whose run slots are all taken: waiting inside it, not started."""
    RUNNING = "running"
    """Among the first ``threads`` jobs its worker holds: it may have started."""


_TRANSITIONS = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.AHEAD}),
    JobState.AHEAD: frozenset({JobState.RUNNING, JobState.QUEUED}),
    JobState.RUNNING: frozenset({JobState.QUEUED}),
}
"""Dispatch, promotion when a run slot of its worker frees, and re-queueing when the worker dies."""


class WorkerState(enum.Enum):
    """A registered worker; one that is lost is forgotten."""

    SERVING = "serving"
    DOOMED = "doomed"
    """Asked to be killed (a call ran past its deadline and grace): it gets no more work, its slots stay taken."""
    GONE = "gone"
    """Its socket went away: nothing more is sent to it; it is lost when the supervisor reports how its process
    ended (which tells whether a call killed it), or after ``EXIT_REPORT_WAIT``."""


@dataclass(frozen=True)
class ToClient:
    ident: bytes
    frames: list[Buffer]


@dataclass(frozen=True)
class ToWorker:
    ident: bytes
    frames: list[Buffer]


@dataclass(frozen=True)
class KillWorker:
    """The worker cannot be trusted any more (hung call, lapsed heartbeat, socket gone): end its process."""

    pid: int
    reason: str


Action = Union[ToClient, ToWorker, KillWorker]


@dataclass(eq=False)
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
    state: JobState = JobState.QUEUED
    attempts: int = 0
    worker: bytes | None = None
    running_since: float = 0.0
    """When it became RUNNING: a hung call gets ``kill_grace`` from the later of this and its deadline."""
    abandoned_at: float | None = None
    """When the caller was told ``Timeout`` while a worker still held the job."""

    def move(self, state: JobState) -> None:
        assert state in _TRANSITIONS[self.state], f"job {self.job_id}: {self.state} -> {state}"
        self.state = state


@dataclass(eq=False)
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


@dataclass(eq=False)
class _Service:
    policy: ServicePolicy
    queue: deque[_Job] = field(default_factory=deque)
    idle: deque[bytes] = field(default_factory=deque)
    """One entry per free run slot of a ready worker, least recently freed first."""
    workers: dict[bytes, _Worker] = field(default_factory=dict)
    ahead: int = 0
    """Jobs in state AHEAD: they count toward ``queue_limit``."""


class BrokerCore:
    """Routing state of one broker: services, workers, queued and in-flight jobs."""

    def __init__(
        self,
        services: list[ServicePolicy],
        *,
        heartbeat_interval: float = 1.0,
        heartbeat_liveness: int = 3,
        kill_grace: float = 1.0,
    ) -> None:
        self._services = {p.name: _Service(p) for p in services}
        self._workers: dict[bytes, _Worker] = {}
        self._by_pid: dict[int, bytes] = {}
        self._jobs: dict[tuple[bytes, int], _Job] = {}
        self._job_ids = itertools.count(1)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.kill_grace = kill_grace
        self.accepting = True
        self._drops = _LogThrottle()
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
        return sorted(w.pid for w in self._registered() if service in (None, w.service))

    def workers(self) -> list[dict[str, Any]]:
        """What each ready worker reported when it registered (pid, pointer size, Python, threads)."""
        return sorted((dict(w.info) for w in self._registered()), key=lambda i: (i["service"], i["pid"]))

    def _registered(self) -> list[_Worker]:
        """Workers that are still reachable: a GONE one only waits for the report of its end."""
        return [w for w in self._workers.values() if w.state is not WorkerState.GONE]

    def held_ahead(self, service: str) -> int:
        """Requests of ``service`` its workers hold behind their running calls."""
        found = self._services.get(service)
        return 0 if found is None else found.ahead

    def pending(self) -> int:
        """Requests accepted and not yet answered."""
        return len(self._jobs)

    # --- client side --------------------------------------------------------------

    def client_message(self, ident: bytes, frames: list[Buffer], now: float) -> list[Action]:
        try:
            message = parse_client(frames)
        except ProtocolError as exc:
            self.stats["bad_client_messages"] += 1
            self._drops.warn(now, "dropped a malformed message from client %s: %s", ident.hex(), exc)
            corr = wire.corr_of(frames, wire.CLIENT_PROTOCOL)
            if corr is None:
                return []
            return [self._error_to(ident, corr, BadRequest(f"malformed request: {exc}"))]
        if isinstance(message, ClientHeartbeat):
            return [ToClient(ident, wire.heartbeat_to_client())]
        if isinstance(message, ClientCancel):
            return self._cancel(ident, message.corr)
        if isinstance(message, ClientRequest):
            return self._request(ident, message, now)
        return []

    def _request(self, ident: bytes, req: ClientRequest, now: float) -> list[Action]:
        self.stats["requests"] += 1
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
        limit = service.policy.queue_limit
        if limit is not None and len(service.queue) + service.ahead >= limit:
            self.stats["busy"] += 1
            return [
                self._error_to(
                    ident,
                    req.corr,
                    Busy(
                        f"service {req.service!r} has {len(service.queue) + service.ahead} requests waiting "
                        "(queued, or held by a busy worker), its limit; try again later",
                        service=req.service,
                        method=req.method,
                        queue_limit=limit,
                    ),
                )
            ]
        if (ident, req.corr) in self._jobs:
            self.stats["bad_client_messages"] += 1
            return [
                self._error_to(
                    ident,
                    req.corr,
                    BadRequest(f"correlation ID {req.corr:#x} is already in use by a pending request"),
                )
            ]
        timeout = req.timeout
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
        )
        self._jobs[(ident, req.corr)] = job
        service.queue.append(job)
        return self._dispatch(service, now)

    def _cancel(self, ident: bytes, corr: int) -> list[Action]:
        """Forget a queued request the caller gave up on; one a worker holds cannot be recalled."""
        job = self._jobs.get((ident, corr))
        if job is not None and job.state is JobState.QUEUED:
            self._services[job.service].queue.remove(job)
            del self._jobs[(ident, corr)]
        return []

    def refuse_unread(
        self, ident: bytes, header: Buffer, frames: int, size: int, setting: str, limit: int, now: float
    ) -> list[Action]:
        """Refuse a message the loop stopped reading once it passed the pool's ``setting`` (``max_request_frames`` or
        ``max_request_bytes``, whose value is ``limit``); it had ``frames`` frames, ``size`` bytes. Nothing of it was
        queued or run. Answered with BadRequest only when ``header`` is a REQUEST that carries a correlation ID."""
        self.stats["bad_client_messages"] += 1
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
        if worker is None:
            # A worker this broker does not know (e.g. after a broker restart): ask it to register.
            self._drops.warn(now, "message from unregistered worker %s; asking it to register", ident.hex())
            return [ToWorker(ident, wire.disconnect_to_worker())]
        worker.expires = now + self.heartbeat_interval * self.heartbeat_liveness
        if isinstance(message, WorkerHeartbeat):
            return []
        if isinstance(message, WorkerDisconnect):
            return self._lose_worker(worker, now, "it disconnected")
        return self._reply(worker, message, now)

    def _ready(self, ident: bytes, ready: WorkerReady, now: float) -> list[Action]:
        actions: list[Action] = []
        old = self._workers.get(ident)
        if old is not None:
            actions += self._lose_worker(old, now, "it registered again")
        service = self._services.get(ready.service)
        if service is None:
            self._drops.warn(now, "worker %s offers unknown service %r; dropped", ident.hex(), ready.service)
            return [*actions, ToWorker(ident, wire.disconnect_to_worker())]
        previous = self._by_pid.get(ready.pid)
        if previous is not None and previous != ident:
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
        return actions + self._dispatch(service, now)

    def _reply(self, worker: _Worker, reply: WorkerReply, now: float) -> list[Action]:
        job = worker.jobs.pop(reply.job, None)
        if job is None:
            self.stats["bad_worker_messages"] += 1
            self._drops.warn(now, "worker pid %d answered job %d it does not hold; dropped", worker.pid, reply.job)
            return []
        service = self._services[worker.service]
        worker.last_reply = now
        self._free_slot(service, worker, job, now)
        actions: list[Action] = []
        if job.abandoned_at is not None:
            self.stats["late_replies"] += 1
            log.info("discarded a late reply for %s.%s from worker pid %d", job.service, job.method, worker.pid)
        else:
            del self._jobs[(job.client, job.corr)]
            self.stats["errors" if reply.error else "replies"] += 1
            actions.append(ToClient(job.client, wire.answer_to_client(job.corr, reply.error, reply.payload)))
        return actions + self._dispatch(service, now)

    def worker_exited(self, pid: int, returncode: int | None, now: float) -> list[Action]:
        """The supervisor saw a worker process end."""
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
        self.stats["workers_lost"] += 1
        del self._workers[worker.ident]
        if self._by_pid.get(worker.pid) == worker.ident:
            del self._by_pid[worker.pid]
        service = self._services[worker.service]
        del service.workers[worker.ident]
        service.idle = deque(i for i in service.idle if i != worker.ident)
        if worker.jobs:
            log.warning(
                "worker pid %d of %r lost with %d call(s) in flight: %s",
                worker.pid,
                worker.service,
                len(worker.jobs),
                reason,
            )
        poisoned = returncode is not None and -returncode in POISON_SIGNALS
        actions: list[Action] = []
        retries: list[_Job] = []
        for job in worker.jobs.values():
            if job.state is JobState.AHEAD:
                service.ahead -= 1
            if job.abandoned_at is not None:
                continue
            retry = job.method in service.policy.idempotent and job.attempts < 2
            if retry and not (poisoned and job.state is JobState.RUNNING):
                self.stats["retried"] += 1
                job.move(JobState.QUEUED)
                job.worker = None
                retries.append(job)
                continue
            del self._jobs[(job.client, job.corr)]
            held = "running" if job.state is JobState.RUNNING else "holding"
            why = "; not sent again: its own run may have killed the worker" if retry else ""
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
        return actions + self._dispatch(service, now)

    # --- time ---------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Heartbeats, lapsed workers, expired deadlines; the loop calls it every few tens of ms."""
        self._drops.flush(now)
        actions: list[Action] = []
        for worker in list(self._workers.values()):
            lapsed = self._lapsed(worker, now)
            if lapsed is not None:
                actions.append(KillWorker(worker.pid, lapsed))
                actions += self._lose_worker(worker, now, lapsed)
                continue
            actions += self._expire_held(worker, now)
            if worker.state is WorkerState.SERVING and self._hung(worker, now):
                self._retire(worker, WorkerState.DOOMED)
                actions.append(KillWorker(worker.pid, "a call ran past its deadline and grace period"))
            if worker.state is not WorkerState.GONE and now >= worker.next_heartbeat:
                worker.next_heartbeat = now + self.heartbeat_interval
                actions.append(ToWorker(worker.ident, wire.heartbeat_to_worker()))
        for service in self._services.values():
            if any(j.deadline is not None and now >= j.deadline for j in service.queue):
                keep: deque[_Job] = deque()
                for job in service.queue:
                    if job.deadline is not None and now >= job.deadline:
                        self.stats["expired_in_queue"] += 1
                        del self._jobs[(job.client, job.corr)]
                        actions.append(self._timeout(job, "it was still queued; it never ran"))
                    else:
                        keep.append(job)
                service.queue = keep
        return actions

    def paused(self, now: float) -> None:
        """The loop could not watch its sockets for a while (the process was stopped, a long GC, a swap storm,
        one message that took long to read): silence over that time proves nothing, so every peer gets a fresh
        liveness window from ``now`` instead of being judged on what the broker could not observe."""
        window = self.heartbeat_interval * self.heartbeat_liveness
        for worker in self._workers.values():
            worker.expires = max(worker.expires, now + window)

    def _lapsed(self, worker: _Worker, now: float) -> str | None:
        """Why ``worker`` counts as lost by now, if it does."""
        if worker.state is WorkerState.GONE and now >= worker.gone_at + EXIT_REPORT_WAIT:
            return "its socket went away"
        if now >= worker.expires:
            return "its heartbeats stopped"
        return None

    def _expire_held(self, worker: _Worker, now: float) -> list[Action]:
        """Answer Timeout for the calls ``worker`` holds past their deadline; its own answer is discarded later."""
        actions: list[Action] = []
        for job in worker.jobs.values():
            if job.abandoned_at is None and job.deadline is not None and now >= job.deadline:
                job.abandoned_at = now
                del self._jobs[(job.client, job.corr)]
                if job.state is JobState.RUNNING:
                    self.stats["timed_out_running"] += 1
                    actions.append(self._timeout(job, f"still running on worker pid {worker.pid}"))
                else:
                    self.stats["expired_ahead"] += 1
                    where = f"it was waiting in worker pid {worker.pid} behind another call; it will not be started"
                    actions.append(self._timeout(job, where))
        return actions

    def _hung(self, worker: _Worker, now: float) -> bool:
        """A call that may be running is past its deadline and ``kill_grace``; a call waiting behind it, never
        started, does not count, and one that reached the front late gets its grace from then."""
        return any(
            job.state is JobState.RUNNING
            and job.abandoned_at is not None
            and now >= max(job.abandoned_at, job.running_since) + self.kill_grace
            for job in worker.jobs.values()
        )

    def _timeout(self, job: _Job, where: str) -> ToClient:
        return self._error_to(
            job.client,
            job.corr,
            Timeout(
                f"{job.service}.{job.method} did not finish within {job.timeout} s: {where}",
                service=job.service,
                method=job.method,
            ),
        )

    # --- shutdown -----------------------------------------------------------------

    def stop_accepting(self) -> None:
        self.accepting = False

    def abort_all(self, reason: str, now: float) -> list[Action]:
        """Answer every request still pending with BrokerUnavailable; the broker is going away."""
        actions: list[Action] = [
            self._error_to(
                job.client,
                job.corr,
                BrokerUnavailable(f"{job.service}.{job.method} was not answered: {reason}", service=job.service),
            )
            for job in self._jobs.values()
        ]
        self._jobs.clear()
        for service in self._services.values():
            service.queue.clear()
        for worker in self._workers.values():
            for job in worker.jobs.values():
                if job.abandoned_at is None:
                    job.abandoned_at = now
        return actions

    # --- internals ----------------------------------------------------------------

    def _dispatch(self, service: _Service, now: float) -> list[Action]:
        """Hand queued jobs out in order: to a free run slot (LRU) if any worker has one, else, for an
        idempotent job, ahead to the worker holding the fewest; the first job that can go nowhere waits."""
        actions: list[Action] = []
        queue = service.queue
        while queue:
            job = queue[0]
            if job.deadline is not None and now >= job.deadline:
                queue.popleft()
                self.stats["expired_in_queue"] += 1
                del self._jobs[(job.client, job.corr)]
                actions.append(self._timeout(job, "it was still queued; it never ran"))
                continue
            if service.idle:
                worker = self._workers[service.idle.popleft()]
                job.move(JobState.RUNNING)
                job.running_since = now
            else:
                ahead = self._ahead_worker(service) if job.method in service.policy.idempotent else None
                if ahead is None:
                    break
                worker = ahead
                job.move(JobState.AHEAD)
                service.ahead += 1
                self.stats["sent_ahead"] += 1
            queue.popleft()
            job.attempts += 1
            job.worker = worker.ident
            worker.jobs[job.job_id] = job
            worker.next_heartbeat = now + self.heartbeat_interval
            left = None if job.deadline is None else max(0.0, job.deadline - now)
            actions.append(
                ToWorker(worker.ident, wire.request_to_worker(job.job_id, job.method, left, job.payload, job.flags))
            )
        return actions

    def _ahead_worker(self, service: _Service) -> _Worker | None:
        """The worker to hold a job ahead: the fewest held, then the most recent reply (a worker stuck
        in a long call has not answered for a while); None when every worker is full."""
        best: _Worker | None = None
        prefetch = service.policy.prefetch
        if not prefetch:
            return None
        for worker in service.workers.values():
            held = len(worker.jobs)
            if worker.state is not WorkerState.SERVING or held >= worker.capacity + prefetch:
                continue
            if best is None or (held, -worker.last_reply) < (len(best.jobs), -best.last_reply):
                best = worker
        return best

    def _free_slot(self, service: _Service, worker: _Worker, job: _Job, now: float) -> None:
        """``job`` left ``worker``: its run slot goes to the next job the worker holds, or back to the idle
        deque when it holds none ahead."""
        if job.state is JobState.AHEAD:  # answered before the broker saw it start (replies raced): no slot freed
            service.ahead -= 1
            return
        waiting = next((j for j in worker.jobs.values() if j.state is JobState.AHEAD), None)
        if waiting is not None:
            waiting.move(JobState.RUNNING)
            waiting.running_since = now
            service.ahead -= 1
        elif worker.state is WorkerState.SERVING:
            service.idle.append(worker.ident)

    def _retire(self, worker: _Worker, state: WorkerState) -> None:
        """No more work for ``worker``: its free run slots leave the idle deque."""
        worker.state = state
        service = self._services[worker.service]
        service.idle = deque(i for i in service.idle if i != worker.ident)

    def _error_to(self, ident: bytes, corr: int, error: CallError) -> ToClient:
        return ToClient(ident, wire.error_to_client(corr, error_to_wire(error)))


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
