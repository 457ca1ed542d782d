"""``python -m workers32 --connect ENDPOINT --spec JSON``: started by the broker's supervisor.

A worker forked by the zygote (:mod:`workers32.zygote`) gets the same arguments and goes through
:func:`serve` too, so both ways of starting a worker read one command line and end the same way.
"""

import argparse
import json
import logging
import os
import sys
from typing import NoReturn, Optional

from .worker import run


def parse(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers32", description="A dllpool worker process.")
    parser.add_argument("--connect", required=True, help="the broker's backend endpoint")
    parser.add_argument("--spec", required=True, help="the service spec as JSON (written by the broker)")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (the broker) is gone")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--status-file", help="where to write why the service cannot load (see report_unloadable)")
    parser.add_argument(
        "--stop-on-eof", action="store_true", help="stop cleanly once stdin ends (how to ask without POSIX signals)"
    )
    return parser.parse_args(argv)


def serve(options: argparse.Namespace, parent_pid: Optional[int]) -> NoReturn:
    """Run the worker ``options`` describe, watching ``parent_pid`` (None: someone else watches the broker)."""
    logging.basicConfig(
        level=options.log_level.upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,  # a forked worker replaces its zygote's handler, which wrote to the zygote's stderr
    )
    code = run(options.connect, json.loads(options.spec), parent_pid, options.status_file, options.stop_on_eof)
    logging.shutdown()
    sys.stderr.flush()
    # A call stuck in the library would block the interpreter's exit-time thread join.
    os._exit(code)


def main() -> None:
    options = parse()
    serve(options, options.parent_pid)


if __name__ == "__main__":
    main()
