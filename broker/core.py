"""The broker as a state machine: events in, frames to send out, no sockets.

The socket loop (:mod:`broker.loop`) feeds it client frames, worker frames,
worker exits seen by the supervisor, and clock ticks; every method returns
the list of :data:`Action` s to carry out. Time is always passed in, so the
whole routing logic is unit-tested without a socket or a sleep.

Invariants the core keeps:

- every request it accepts gets exactly one answer: a result or an error;
- a request runs at most once, unless its method is marked idempotent, in
  which case it is re-sent once after its worker dies;
- a worker gets at most ``threads`` requests at once; idle capacity is
  handed out least-recently-used first;
- a reply is accepted only from the worker that holds that job.
"""

from __future__ import annotations

import itertools
import logging
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

__all__ = ["Action", "BrokerCore", "KillWorker", "ServicePolicy", "ToClient", "ToWorker"]


@dataclass(frozen=True)
class ServicePolicy:
    """What the broker needs to know of a service; the rest is the worker's business."""

    name: str
    idempotent: frozenset[str] = frozenset()
    queue_limit: int | None = None


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
    """The worker cannot be trusted any more (hung call, lapsed heartbeat): end its process."""

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
    attempts: int = 0
    worker: bytes | None = None
    abandoned_at: float | None = None
    """When the caller was told ``Timeout`` while the job was still running."""


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
    doomed: bool = False
    """Asked to be killed: it gets no more work and its slots are not handed out again."""


@dataclass(eq=False)
class _Service:
    policy: ServicePolicy
    queue: deque[_Job] = field(default_factory=deque)
    idle: deque[bytes] = field(default_factory=deque)
    """One entry per free slot of a ready worker, least recently freed first."""


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
            ),
            0,
        )

    # --- queries ----------------------------------------------------------------

    @property
    def service_names(self) -> list[str]:
        return sorted(self._services)

    def ready_workers(self, service: str) -> int:
        return sum(1 for w in self._workers.values() if w.service == service)

    def worker_pids(self, service: str | None = None) -> list[int]:
        return sorted(w.pid for w in self._workers.values() if service in (None, w.service))

    def workers(self) -> list[dict[str, Any]]:
        """What each ready worker reported when it registered (pid, pointer size, Python, threads)."""
        return sorted((dict(w.info) for w in self._workers.values()), key=lambda i: (i["service"], i["pid"]))

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
        return self._request(ident, message, now)

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
        if limit is not None and len(service.queue) >= limit:
            self.stats["busy"] += 1
            return [
                self._error_to(
                    ident,
                    req.corr,
                    Busy(
                        f"service {req.service!r} has {len(service.queue)} requests queued, its limit; try again later",
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
        """Forget a queued request the caller gave up on; a running one cannot be stopped."""
        job = self._jobs.get((ident, corr))
        if job is not None and job.worker is None:
            self._services[job.service].queue.remove(job)
            del self._jobs[(ident, corr)]
        return []

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
        if not worker.doomed:
            service.idle.append(worker.ident)
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
        """A send to the worker failed: its socket is gone."""
        worker = self._workers.get(ident)
        return [] if worker is None else self._lose_worker(worker, now, "its socket went away")

    def _lose_worker(self, worker: _Worker, now: float, reason: str, returncode: int | None = None) -> list[Action]:
        self.stats["workers_lost"] += 1
        del self._workers[worker.ident]
        if self._by_pid.get(worker.pid) == worker.ident:
            del self._by_pid[worker.pid]
        service = self._services[worker.service]
        service.idle = deque(i for i in service.idle if i != worker.ident)
        if worker.jobs:
            log.warning(
                "worker pid %d of %r lost with %d call(s) in flight: %s",
                worker.pid,
                worker.service,
                len(worker.jobs),
                reason,
            )
        actions: list[Action] = []
        for job in worker.jobs.values():
            if job.abandoned_at is not None:
                continue
            if job.method in service.policy.idempotent and job.attempts < 2:
                self.stats["retried"] += 1
                job.worker = None
                service.queue.appendleft(job)
                continue
            del self._jobs[(job.client, job.corr)]
            actions.append(
                self._error_to(
                    job.client,
                    job.corr,
                    WorkerCrashed(
                        f"the worker (pid {worker.pid}) running {job.service}.{job.method} died: {reason}",
                        service=job.service,
                        method=job.method,
                        pid=worker.pid,
                        returncode=returncode,
                    ),
                )
            )
        return actions + self._dispatch(service, now)

    # --- time ---------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Heartbeats, lapsed workers, expired deadlines; the loop calls it every few tens of ms."""
        self._drops.flush(now)
        actions: list[Action] = []
        for worker in list(self._workers.values()):
            if now >= worker.expires:
                actions.append(KillWorker(worker.pid, "its heartbeats stopped"))
                actions += self._lose_worker(worker, now, "its heartbeats stopped")
                continue
            for job in worker.jobs.values():
                if job.abandoned_at is None and job.deadline is not None and now >= job.deadline:
                    self.stats["timed_out_running"] += 1
                    job.abandoned_at = now
                    del self._jobs[(job.client, job.corr)]
                    actions.append(self._timeout(job, f"still running on worker pid {worker.pid}"))
            if not worker.doomed and any(
                j.abandoned_at is not None and now >= j.abandoned_at + self.kill_grace for j in worker.jobs.values()
            ):
                worker.doomed = True
                service = self._services[worker.service]
                service.idle = deque(i for i in service.idle if i != worker.ident)
                actions.append(KillWorker(worker.pid, "a call ran past its deadline and grace period"))
            if now >= worker.next_heartbeat:
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
        actions: list[Action] = []
        while service.queue and service.idle:
            job = service.queue.popleft()
            if job.deadline is not None and now >= job.deadline:
                self.stats["expired_in_queue"] += 1
                del self._jobs[(job.client, job.corr)]
                actions.append(self._timeout(job, "it was still queued; it never ran"))
                continue
            worker = self._workers[service.idle.popleft()]
            job.attempts += 1
            job.worker = worker.ident
            worker.jobs[job.job_id] = job
            worker.next_heartbeat = now + self.heartbeat_interval
            left = None if job.deadline is None else max(0.0, job.deadline - now)
            actions.append(
                ToWorker(worker.ident, wire.request_to_worker(job.job_id, job.method, left, job.payload, job.flags))
            )
        return actions

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
