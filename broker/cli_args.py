"""What the ``dllpool`` subcommands share on their command lines: the parser, usage errors, argument types.

Exit codes: 0 success, 1 a call or the pool failed, 2 bad usage or configuration (argparse's convention),
130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import zmq

from client import CurveKeys
from protocol import ConfigError

from .config import PoolConfig

__all__ = [
    "COUNT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "GRACE",
    "SECONDS",
    "WORKERS",
    "Parser",
    "UsageError",
    "config_arg",
    "curve",
    "curve_args",
    "endpoint",
    "json_literals",
    "number",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line that says where help is, not the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class UsageError(Exception):
    """A command line that parses but asks for something impossible; ``main`` prints it as one line."""


def number(kind: type[float] | type[int], low: float, inclusive: bool, unit: str) -> Any:
    """An argparse ``type=`` for a finite number above ``low`` (or at it, when ``inclusive``)."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {low:g}{unit}, got {text}")
        return value

    return parse


SECONDS = number(float, 0, False, " seconds")
GRACE = number(float, 0, True, " seconds")
COUNT = number(int, 1, True, "")
WORKERS = number(int, 0, True, "")


def endpoint(text: str) -> str:
    """An argparse ``type=``: a ZeroMQ endpoint this libzmq accepts, checked by connecting a throwaway socket.

    A ``tcp://HOST:PORT`` is checked with port 0, where nothing listens: a check that reached the broker would
    start a handshake there and show up as a refused peer.
    """
    probe = text
    scheme, _, rest = text.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme == "tcp" and colon and port.isdigit():
        if not 0 < int(port) < 65536:
            raise argparse.ArgumentTypeError(f"{text!r} is not an endpoint: the port must be 1-65535")
        probe = f"tcp://{host}:0"
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    try:
        sock.connect(probe)
    except zmq.ZMQError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an endpoint ({exc}); give e.g. tcp://HOST:PORT or ipc:///PATH"
        ) from None
    finally:
        sock.close(linger=0)
    return text


def config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="pool configuration (default: the embedded one, after `dllpool setup` has prepared what it needs)",
    )


def curve_args(parser: argparse.ArgumentParser, default: str = "") -> None:
    parser.add_argument("--curve-server-key", type=Path, help=f"the pool's public key file (CURVE over TCP){default}")
    parser.add_argument("--curve-key", type=Path, help=f"this side's *.key_secret file (CURVE over TCP){default}")


def curve(options: argparse.Namespace, config: PoolConfig | None = None) -> dict[str, str] | None:
    """The keys of the command line, else those of the configuration's ``[worker]`` table (``dllpool worker``)."""
    server, own, where = options.curve_server_key, options.curve_key, "--curve-server-key and --curve-key"
    if not (server or own) and config is not None:
        server, own = config.worker_curve_server_key, config.worker_curve_key
        where = "curve_server_key and curve_key under [worker]"
    if not (server or own):
        return None
    if not (server and own):
        raise ConfigError(f"CURVE needs both {where}")
    return dataclasses.asdict(CurveKeys.from_files(server, own))


def json_literals(texts: Sequence[str]) -> list[Any]:
    """A command line's call arguments: each a JSON literal, or a UsageError that says how to write one."""
    values = []
    for number_, text in enumerate(texts, 1):
        try:
            values.append(json.loads(text))
        except json.JSONDecodeError:
            raise UsageError(
                f"argument {number_} ({text!r}) is not a JSON literal; write 2, 2.5, '\"text\"' or '[1, 2]'"
            ) from None
    return values
