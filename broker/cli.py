"""The ``dllpool`` command: run a pool, call it, watch and scale it, show the demo, manage the 32-bit runtime.

Exit codes: 0 success, 1 a call or the pool failed, 2 bad usage or
configuration (argparse's convention), 130 interrupted. Every exit 2 is one
line on stderr naming the problem, never a traceback or a usage dump.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from protocol import ArgumentError, CallError, ConfigError, DllPoolError

from . import loadtest_cli, runtime32
from .announce import announced, find_running
from .cli_args import (
    COUNT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    GRACE,
    SECONDS,
    WORKERS,
    Parser,
    UsageError,
    config_arg,
    curve,
    curve_args,
    endpoint,
    json_literals,
)
from .config import PoolConfig, load_config
from .install import setup
from .locations import default_config_path
from .pool import Pool, wait_scaled
from .security import create_keys, load_public_keys
from .supervisor import serve_workers
from .zygote import dedicate_process

log = logging.getLogger("dllpool")

__all__ = ["main"]

_REFRESH_HELP = "rebuild the 32-bit runtime from the archive's current packages (e.g. once a mirror caught up)"


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dllpool", description="Call 32-bit shared libraries from 64-bit Python through a worker pool."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run a pool in the foreground until Ctrl-C or SIGTERM")
    config_arg(up)
    up.add_argument("--grace", type=GRACE, default=5.0, help="seconds running calls get to finish at shutdown")
    up.add_argument(
        "--json", action="store_true", help="announce the address, backend address and workers as one JSON line"
    )

    call = commands.add_parser("call", help="call one function and print its result as JSON")
    config_arg(call)
    call.add_argument("--address", help="a running pool's frontend endpoint (instead of starting one)")
    call.add_argument("--timeout", type=SECONDS, default=30.0, help="seconds to wait for the answer (default 30)")
    curve_args(call)
    call.add_argument("service", nargs="?", help="the service, as the configuration names it (e.g. demo)")
    call.add_argument("method", nargs="?", help="the function or method to call (e.g. add)")
    call.add_argument("args", nargs="*", metavar="ARG", help="JSON literals: 1, 2.5, '\"text\"', '[1, 2]'")

    loadtest_cli.add_parser(commands)

    status = commands.add_parser("status", help="show a running pool's workers, queues, rates, latencies and errors")
    _running_pool_args(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON (with --watch: one line each)")
    status.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    status.add_argument("--interval", type=SECONDS, default=1.0, help="seconds between refreshes (default 1)")

    scale = commands.add_parser("scale", help="change the number of workers of a running pool's service")
    _running_pool_args(scale)
    scale.add_argument("service", help="the service, as the configuration names it")
    scale.add_argument("workers", type=WORKERS, help="how many workers it should run (scaling down loses no call)")
    scale.add_argument("--no-wait", action="store_true", help="return at once instead of when they are ready")
    scale.add_argument("--json", action="store_true", help="machine-readable output")

    demo = commands.add_parser("demo", help="start the default pool and show concurrent calls to 32-bit workers")
    config_arg(demo)
    demo.add_argument("--json", action="store_true", help="print a JSON report instead of text")

    keys = commands.add_parser("keys", help="create a CURVE key pair for a pool or a client")
    keys.add_argument("name", help="file name stem: writes NAME.key (public) and NAME.key_secret (private)")
    keys.add_argument(
        "--dir", type=Path, default=Path("keys"), help="folder to write them to, created if its parent exists (./keys)"
    )
    keys.add_argument("--force", action="store_true", help="replace an existing key pair of that name")
    keys.add_argument("--json", action="store_true", help="machine-readable output")

    worker = commands.add_parser(
        "worker", help="run a configuration's workers against a broker elsewhere (e.g. another host)"
    )
    config_arg(worker)
    worker.add_argument(
        "--connect", required=True, type=endpoint, help="the broker's backend endpoint (`dllpool up --json` shows it)"
    )
    worker.add_argument("--service", action="append", help="only this service (repeatable; default: all)")
    worker.add_argument("--workers", type=COUNT, help="processes per service (default: the configuration's)")
    curve_args(worker, " (default: curve_server_key and curve_key under the configuration's [worker])")

    install = commands.add_parser(
        "setup", help="install what the default configuration needs: the 32-bit runtime and the demo libraries"
    )
    install.add_argument("--prefix", type=Path, help=f"32-bit runtime folder (default: {runtime32.default_prefix()})")
    install.add_argument("--refresh", action="store_true", help=_REFRESH_HELP)
    install.add_argument("--json", action="store_true", help="machine-readable output")

    rt = commands.add_parser("runtime32", help="provision or inspect the 32-bit Python runtime")
    rt_commands = rt.add_subparsers(dest="action", required=True, metavar="ACTION")
    rt_setup = rt_commands.add_parser("setup", help="install a 32-bit CPython with pyzmq and msgpack (idempotent)")
    rt_setup.add_argument("--prefix", type=Path, help=f"where to put it (default: {runtime32.default_prefix()})")
    rt_setup.add_argument("--refresh", action="store_true", help=_REFRESH_HELP)
    rt_info = rt_commands.add_parser("info", help="print the interpreter, its version and pointer size")
    rt_info.add_argument("--prefix", type=Path)
    rt_info.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        options = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(options.verbose, 2)]
    if options.command in ("up", "worker", "runtime32", "setup"):
        level = min(level, logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        handler = _HANDLERS[options.command]
        return handler(options)
    except (ConfigError, UsageError) as exc:
        print(f"dllpool {options.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except DllPoolError as exc:
        print(f"dllpool: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _up(options: argparse.Namespace) -> int:
    if options.config is None:
        setup()
    dedicate_process()
    # Until the pool runs, SIGTERM is the Pool's own (a clean stop of a half-started pool); then ours.
    # This process exists to serve: a broker process of its own would add a process and gain nothing.
    with Pool.from_config(options.config, broker="thread") as pool, announced(options.config, pool.address):
        stop = _stop_on_signals()
        if options.json:
            announcement = {"address": pool.address, "backend": pool.backend_address, "workers": pool.workers()}
            print(json.dumps(announcement), flush=True)
        else:
            print(f"dllpool: serving at {pool.address}", flush=True)
        while not stop.wait(0.5):
            pass
        pool.stop(grace=options.grace)
    return EXIT_OK


def _call(options: argparse.Namespace) -> int:
    from client import Client

    config = None if options.address else load_config(options.config)
    service, method = _call_target(options, config)
    args = json_literals(options.args)
    if config is not None and options.config is None:
        setup()
    try:
        if config is None:
            with Client(options.address, timeout=options.timeout, curve=curve(options)) as client:
                result = client.call(service, method, *args)
        else:
            only = dataclasses.replace(config, services=(config.service(service),))
            with Pool(only).start() as pool, pool.client(timeout=options.timeout) as client:
                result = client.call(service, method, *args)
    except ArgumentError as exc:  # the command line's arguments do not fit the function: a usage error
        raise UsageError(f"ArgumentError: {exc}") from None
    except CallError as exc:
        print(f"dllpool: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, default=_jsonable))
    return EXIT_OK


def _call_target(options: argparse.Namespace, config: PoolConfig | None) -> tuple[str, str]:
    """SERVICE and METHOD, checked against the configuration when there is one (no pool is started for a typo)."""
    services = [s.name for s in config.services] if config else []
    known = f"; {options.config or default_config_path()} has: {', '.join(services)}" if services else ""
    if options.service is None:
        raise UsageError(f"name the SERVICE and METHOD to call, then its arguments: dllpool call demo add 2 3{known}")
    if config is not None and options.service not in services:
        owners = [s.name for s in config.services if options.service in s.hosting.get("functions", {})]
        hint = f"; did you mean `dllpool call {owners[0]} {options.service} ...`?" if owners else known
        raise UsageError(f"no service {options.service!r} in {options.config or default_config_path()}{hint}")
    functions = sorted(config.service(options.service).hosting.get("functions", {})) if config else []
    listed = f"; {options.service!r} has: {', '.join(functions)}" if functions else ""
    if options.method is None:
        usage = f"dllpool call {options.service} METHOD [ARG ...]"
        raise UsageError(f"name the METHOD of {options.service!r} to call: {usage}{listed}")
    if functions and options.method not in functions:
        raise UsageError(f"service {options.service!r} has no function {options.method!r}{listed}")
    return options.service, options.method


def _running_pool_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", help="the pool's frontend endpoint (default: that of the `dllpool up` serving -c FILE)"
    )
    parser.add_argument(
        "-c", "--config", type=Path, default=None, help="find the `dllpool up` serving this configuration"
    )
    parser.add_argument("--timeout", type=SECONDS, default=10.0, help="seconds to wait for the broker (default 10)")
    curve_args(parser)


def _running_pool(options: argparse.Namespace) -> str:
    """The frontend of the running pool the command line names: ``--address``, else the configuration's own
    ``frontend``, else where ``dllpool up`` announced it serves that configuration."""
    if options.address:
        return str(options.address)
    if options.config is not None:
        frontend = load_config(options.config).frontend
        if frontend:
            return frontend
    return find_running(options.config)


def _status(options: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from client import Client

    from .status_view import render

    address = _running_pool(options)
    with Client(address, timeout=options.timeout, curve=curve(options)) as client:
        if not options.watch:
            state = client.status()
            if options.json:
                print(json.dumps(state, indent=2))
            else:
                Console(width=None if sys.stdout.isatty() else 132).print(render(state, address))
            return EXIT_OK
        try:
            if options.json:
                while True:
                    print(json.dumps(client.status()), flush=True)
                    time.sleep(options.interval)
            with Live(render(client.status(), address), auto_refresh=False) as live:
                while True:
                    time.sleep(options.interval)
                    live.update(render(client.status(), address), refresh=True)
        except KeyboardInterrupt:  # how a watch ends
            return EXIT_OK


def _scale(options: argparse.Namespace) -> int:
    from client import Client

    address = _running_pool(options)
    started = time.monotonic()
    with Client(address, timeout=options.timeout, curve=curve(options)) as client:
        workers = client.scale(options.service, options.workers)
        ready = wait_scaled(client, options.service, 0.0 if options.no_wait else options.timeout)
    report = {"service": options.service, "workers": workers, "ready": ready, "seconds": time.monotonic() - started}
    if options.json:
        print(json.dumps(report))
    else:
        print(f"{options.service}: {workers} workers, {ready} ready ({report['seconds']:.2f} s)")
    return EXIT_OK if options.no_wait or ready == workers else EXIT_FAILED


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _demo(options: argparse.Namespace) -> int:
    from .demo import run_demo

    if options.config is None:
        setup()
    report = run_demo(options.config)
    if options.json:
        print(json.dumps(report, indent=2, default=_jsonable))
    else:
        print(report["text"])
    return EXIT_OK if report["ok"] else EXIT_FAILED


def _worker(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    names = options.service or [s.name for s in config.services]
    try:
        services = tuple(config.service(name) for name in names)
    except KeyError as exc:
        raise ConfigError(f"no service {exc} in the configuration") from None
    if options.workers is not None:
        services = tuple(dataclasses.replace(s, workers=options.workers) for s in services)
    if not any(s.workers for s in services):
        raise UsageError("the configuration gives these services 0 workers: say how many with --workers N")
    keys = curve(options, config)
    dedicate_process()
    stop = _stop_on_signals()
    serve_workers(dataclasses.replace(config, services=services), options.connect, stop, keys)
    return EXIT_OK


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM: long-running commands shut down cleanly on either."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received; shutting down", signal.Signals(signum).name)
        # Not stop.set() here: a handler runs between two bytecodes of the main thread, which may be inside
        # stop.wait() holding the event's lock (not reentrant); set() would wait for it forever. That hung a
        # `dllpool up` given SIGTERM right after SIGCONT, when its wait(0.5) had just timed out.
        threading.Thread(target=stop.set, name="stop").start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _keys(options: argparse.Namespace) -> int:
    public, secret = create_keys(options.dir, options.name, force=options.force)
    (key,) = (k.decode("ascii") for k in load_public_keys([public]))
    if options.json:
        print(json.dumps({"public_file": str(public), "secret_file": str(secret), "public_key": key}))
    else:
        print(f"public key {key}\n  {public} (share it)\n  {secret} (keep it private)")
    return EXIT_OK


def _setup(options: argparse.Namespace) -> int:
    report = setup(options.prefix, refresh=options.refresh, bytecode=True)
    info = runtime32.describe(report.runtime.interpreter)
    if options.json:
        result = {
            "runtime32": info,
            "libraries": str(report.libraries.folder),
            "config": str(report.config),
            "actions": list(report.actions),
            "seconds": round(report.seconds, 3),
        }
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"32-bit runtime: Python {info['version']} ({info['bits']}-bit) at {info['executable']}")
    print(f"demo libraries: {report.libraries.folder}")
    print(f"default configuration: {report.config}")
    print(f"{'; '.join(report.actions) or 'everything was already in place'} ({report.seconds:.1f} s)")
    return EXIT_OK


def _runtime32(options: argparse.Namespace) -> int:
    if options.action == "setup":
        started = time.monotonic()
        result = runtime32.provision(options.prefix, refresh=options.refresh)
        info = runtime32.describe(result.interpreter)
        what = "installed" if result.actions else "already in place"
        print(f"32-bit runtime {what}: Python {info['version']} ({info['bits']}-bit) at {info['executable']}")
        print(f"took {time.monotonic() - started:.1f} s")
        return EXIT_OK
    info = runtime32.describe(runtime32.load(options.prefix))
    if options.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:>12}: {value}")
    return EXIT_OK


_HANDLERS = {
    "up": _up,
    "call": _call,
    "demo": _demo,
    "loadtest": loadtest_cli.run,
    "status": _status,
    "scale": _scale,
    "keys": _keys,
    "worker": _worker,
    "runtime32": _runtime32,
    "setup": _setup,
}

if __name__ == "__main__":
    sys.exit(main())
