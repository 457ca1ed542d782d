"""CURVE authentication for endpoints other hosts can reach.

A pool that listens on TCP beyond loopback must know who may call it. The
server's key pair and the allowed public keys are ZeroMQ certificate files,
as ``dllpool keys`` writes them. Each socket checks its own list (its ZAP
domain): the frontend takes the clients' keys, the backend the keys of
workers started elsewhere (``dllpool worker``), so a client's key never
lets it register as a worker and see other callers' arguments. Workers
started by the pool get a key pair made for this run only, so they
authenticate too when the backend is on TCP.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from protocol import ConfigError, transport

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

# zmq.auth (and its thread, which brings asyncio) is imported where keys are used: importing it took 60-110 ms
# of every pool's start, and most pools have no keys.

log = logging.getLogger(__name__)

__all__ = [
    "BACKEND",
    "FRONTEND",
    "Allowlist",
    "CurveServer",
    "HandshakeWatch",
    "create_keys",
    "load_public_keys",
    "start_authenticator",
]

FRONTEND, BACKEND = "frontend", "backend"
"""The ZAP domains of the broker's two sockets: each has its own list of allowed keys."""


@dataclass(frozen=True)
class CurveServer:
    """The pool's CURVE identity and the public keys allowed to connect."""

    public: bytes
    secret: bytes
    allowed: frozenset[bytes]
    """Clients' keys, for the frontend."""
    workers: frozenset[bytes] = frozenset()
    """Keys of workers started elsewhere, for the backend."""

    @classmethod
    def from_files(cls, secret_file: Path, clients: list[Path], workers: list[Path] | None = None) -> CurveServer:
        public, secret = _load(secret_file)
        if secret is None:
            raise ConfigError(
                f"{secret_file} holds no secret key; give the *.key_secret file that `dllpool keys` wrote"
            )
        return cls(public, secret, frozenset(load_public_keys(clients)), frozenset(load_public_keys(workers or [])))

    def apply(self, sock: zmq.Socket[Any], domain: str) -> None:
        """Make ``sock`` a CURVE server with this identity, checked against ``domain``'s keys (before it binds)."""
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.zap_domain = domain.encode("ascii")


def _load(path: Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE key file {path}: {exc}") from None


def load_public_keys(paths: list[Path]) -> set[bytes]:
    """Public keys from certificate files or folders of ``*.key`` files."""
    keys: set[bytes] = set()
    for path in paths:
        files = sorted(path.glob("*.key")) if path.is_dir() else [path]
        if not files:
            raise ConfigError(f"{path} holds no *.key public key files")
        keys.update(_load(f)[0] for f in files)
    return keys


def create_keys(directory: Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, to share) and ``NAME.key_secret`` (keep private) into ``directory``.

    ``directory`` itself is created, but not its parents: a mistyped path is an error, not a new
    tree. An existing pair is replaced only with ``force``: clients holding the old public key
    would be refused from then on.
    """
    if not name or name in (".", "..") or set(name) & {"/", "\\", "\0"}:
        raise ConfigError(f"a key name is a file name stem such as 'pool' or 'alice', not {name!r}")
    if not directory.is_dir():
        try:
            directory.mkdir()
        except FileExistsError:
            raise ConfigError(f"{directory} is not a folder") from None
        except FileNotFoundError:
            raise ConfigError(f"cannot create {directory}: its parent folder does not exist") from None
        except OSError as exc:
            raise ConfigError(f"cannot create the key folder {directory}: {exc.strerror or exc}") from None
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConfigError(f"{' and '.join(existing)} already {verb}; pass --force to replace the key pair")
    try:
        import zmq.auth

        # Created private before the secret is written into it: no moment where others can read it.
        os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        secret.chmod(0o600)
        zmq.auth.create_certificates(directory, name)
    except OSError as exc:
        raise ConfigError(f"cannot write the key pair into {directory}: {exc.strerror or exc}") from None
    return public, secret


_HINTS = {
    FRONTEND: "add its public key to curve_clients under [pool] to let it call",
    BACKEND: "add its public key to curve_workers under [pool] to let it serve (a client's key does not)",
}


class Allowlist:
    """The ZAP decision for each socket: only its own domain's keys pass.

    A refused peer tries again whenever it reconnects, so each key is logged once at WARNING, then at DEBUG
    (:class:`HandshakeWatch` counts every refusal).
    """

    def __init__(self, allowed: dict[str, set[bytes]]) -> None:
        self.allowed = allowed
        self._logged: set[tuple[str, bytes]] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed.get(domain, ()):
            return True
        level = logging.DEBUG if (domain, key) in self._logged else logging.WARNING
        self._logged.add((domain, key))
        log.log(
            level,
            "refused a CURVE connection to the %s from an unknown public key %s; %s",
            domain,
            key.decode("ascii", "replace"),
            _HINTS.get(domain, "it is in no list of allowed keys"),
        )
        return False


def start_authenticator(context: zmq.Context[Any], allowlist: Allowlist) -> ThreadAuthenticator:
    """Run the ZAP handler that checks every CURVE handshake against ``allowlist``."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context, log=logging.getLogger("dllpool.auth"))
    auth.start()
    for domain in allowlist.allowed:
        auth.configure_curve_callback(domain=domain, credentials_provider=allowlist)
    return auth


_FAILED = {
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "its key is not allowed",
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "its handshake broke the protocol (a wrong server key?)",
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "it hung up during the handshake (no keys, or a wrong server key?)",
}
"""The failed handshakes counted as refusals. A peer without keys shows as a mechanism mismatch, or, when it saw
the mismatch first and hung up, as a failure with no detail."""
_MISMATCH = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
_WARN_EVERY = 60.0
"""Seconds between warnings about failed handshakes on one socket: a misconfigured peer retries for ever."""


class HandshakeWatch:
    """Counts the CURVE handshakes a socket refused, from its monitor: also those no key was ever checked for.

    A peer without keys, or holding the wrong server key, fails before the ZAP handler is asked; only the
    socket's monitor sees it. The broker loop polls :attr:`monitor` and calls :meth:`drain`.
    """

    def __init__(self, sock: zmq.Socket[Any], name: str) -> None:
        self.name = name
        self.refused = 0
        self.monitor: zmq.Socket[Any] = sock.get_monitor_socket(sum(_FAILED))  # distinct bits: the sum is the OR
        self._next_warning = 0.0

    def drain(self, now: float) -> None:
        """Count (and now and then log) every failed handshake the monitor has reported."""
        for kind, value in transport.monitor_events(self.monitor):
            why = _FAILED.get(kind)
            if why is None:
                continue
            self.refused += 1
            if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MISMATCH:
                why = "it has no CURVE keys (a mechanism mismatch)"
            if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH or now < self._next_warning:
                log.debug("refused a connection to the %s: %s", self.name, why)  # the allowlist named the key
                continue
            self._next_warning = now + _WARN_EVERY
            log.warning(
                "refused a connection to the %s: %s (%d refused so far; this is logged at most every %.0f s)",
                self.name,
                why,
                self.refused,
                _WARN_EVERY,
            )
