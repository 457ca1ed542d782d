"""The floor: a bare zguide-style load-balancing (LRU) broker, in a process of its own.

    python bench/bare_broker.py --frontend ipc:///tmp/x/frontend --backend ipc:///tmp/x/backend --workers 4

One ROUTER for clients, one for workers, a deque of idle workers, nothing else: no heartbeats,
deadlines, validation or in-flight table. The backend is always polled; the frontend only while a
worker is idle, so waiting requests stay queued in ZeroMQ. Messages (routing frames included):

    client -> broker  [client, body]          broker -> worker  [worker, client, body]
    worker -> broker  [worker, READY, info]   (once per request it may hold: its credit)
    worker -> broker  [worker, client, reply] broker -> client  [client, reply]

Prints ``ready`` on stdout once --workers distinct workers have said READY; stops on SIGTERM.
bench/compare.py measures dllpool against this with bench/bare_worker.py as the workers.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections import deque
from typing import Any

import zmq

READY = b"READY"


def serve(frontend: zmq.Socket[Any], backend: zmq.Socket[Any], workers: int) -> None:
    idle: deque[bytes] = deque()
    known: set[bytes] = set()
    both = zmq.Poller()
    both.register(backend, zmq.POLLIN)
    both.register(frontend, zmq.POLLIN)
    backend_only = zmq.Poller()
    backend_only.register(backend, zmq.POLLIN)
    while True:
        events = dict((both if idle else backend_only).poll())
        if backend in events:
            worker, kind, body = backend.recv_multipart()
            idle.append(worker)
            if kind == READY:
                if worker not in known:
                    known.add(worker)
                    if len(known) == workers:
                        print("ready", flush=True)
            else:
                frontend.send_multipart([kind, body])  # kind is the client's routing id
        if frontend in events and idle:
            client, body = frontend.recv_multipart()
            backend.send_multipart([idle.popleft(), client, body])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frontend", required=True)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--workers", type=int, default=4, help="print 'ready' once this many workers said READY")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    context = zmq.Context()
    frontend = context.socket(zmq.ROUTER)
    backend = context.socket(zmq.ROUTER)
    frontend.linger = backend.linger = 0
    frontend.bind(options.frontend)
    backend.bind(options.backend)
    try:
        serve(frontend, backend, options.workers)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        frontend.close(0)
        backend.close(0)
        context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
