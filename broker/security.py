"""CURVE authentication for endpoints other hosts can reach.

A pool that listens on TCP beyond loopback must know who may call it. The
server's key pair and the allowed clients' public keys are ZeroMQ
certificate files, as ``dllpool keys`` writes them. Workers started by the
pool get a key pair made for this run only, so they authenticate too when
the backend is on TCP.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from protocol import ConfigError

log = logging.getLogger(__name__)

__all__ = ["CurveServer", "create_keys", "load_public_keys", "start_authenticator"]


@dataclass(frozen=True)
class CurveServer:
    """The pool's CURVE identity and the public keys allowed to connect."""

    public: bytes
    secret: bytes
    allowed: frozenset[bytes]

    @classmethod
    def from_files(cls, secret_file: Path, clients: list[Path]) -> CurveServer:
        public, secret = _load(secret_file)
        if secret is None:
            raise ConfigError(
                f"{secret_file} holds no secret key; give the *.key_secret file that `dllpool keys` wrote"
            )
        return cls(public, secret, frozenset(load_public_keys(clients)))

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE server with this identity (before it binds)."""
        sock.curve_server = True
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def _load(path: Path) -> tuple[bytes, bytes | None]:
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
        # Created private before the secret is written into it: no moment where others can read it.
        os.close(os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        secret.chmod(0o600)
        zmq.auth.create_certificates(directory, name)
    except OSError as exc:
        raise ConfigError(f"cannot write the key pair into {directory}: {exc.strerror or exc}") from None
    return public, secret


class _Allowlist:
    def __init__(self, allowed: set[bytes]) -> None:
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        log.warning("refused a CURVE connection from an unknown public key %s", key.decode("ascii", "replace"))
        return False


def start_authenticator(context: zmq.Context[Any], allowed: set[bytes]) -> ThreadAuthenticator:
    """Run the ZAP handler that checks every CURVE handshake against ``allowed``."""
    auth = ThreadAuthenticator(context, log=logging.getLogger("dllpool.auth"))
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_Allowlist(allowed))
    return auth
