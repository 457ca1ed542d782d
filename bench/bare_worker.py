"""The floor's worker: a minimal 32-bit loop calling the demo library's ``add`` through ctypes.

    <32-bit python> bench/bare_worker.py --connect ipc:///tmp/x/backend --library examples/build/32/libdemo.so
                                         [--credit 1] [--function add|sleep_ms]

Started by bench/compare.py with the project's 32-bit runtime; it needs only Python 3.9+, pyzmq,
msgpack and ctypes (no dllpool package). A zguide load-balancing worker: a DEALER that says READY
``--credit`` times (how many requests the broker may give it at once), then answers each request
``[client, body]`` with ``[client, reply]``, where body is msgpack ``[a, b]`` and reply is msgpack
``add(a, b)`` (with ``--function sleep_ms``, body ``[ms]`` and reply ``None``: bench/scaling.py's slow
call). No heartbeats, no errors, no validation: the cheapest worker that does the same call.
"""

import argparse
import ctypes
import os
import signal
import sys

import msgpack
import zmq

READY = b"READY"
SIGNATURES = {"add": ((ctypes.c_int, ctypes.c_int), ctypes.c_int), "sleep_ms": ((ctypes.c_int,), None)}
"""The demo library's functions this worker can call: their argument and result types."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", required=True, help="the bare broker's backend endpoint")
    parser.add_argument("--library", required=True, help="the 32-bit demo library (libdemo.so)")
    parser.add_argument("--credit", type=int, default=1, help="requests this worker may hold at once")
    parser.add_argument("--function", choices=sorted(SIGNATURES), default="add", help="the function called")
    options = parser.parse_args()

    function = getattr(ctypes.CDLL(options.library), options.function)
    function.argtypes, function.restype = SIGNATURES[options.function]
    packb, unpackb = msgpack.packb, msgpack.unpackb

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(options.connect)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    info = packb({"pid": os.getpid(), "pointer_size": ctypes.sizeof(ctypes.c_void_p)})
    for _ in range(options.credit):
        sock.send_multipart([READY, info])
    recv_multipart, send_multipart = sock.recv_multipart, sock.send_multipart
    try:
        while True:
            client, body = recv_multipart()
            send_multipart([client, packb(function(*unpackb(body)))])
    except (KeyboardInterrupt, SystemExit):
        return 0
    finally:
        sock.close(0)
        context.term()


if __name__ == "__main__":
    sys.exit(main())
