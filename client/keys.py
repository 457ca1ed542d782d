"""CURVE keys a client (or a worker elsewhere) presents to a pool reachable over TCP."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from protocol.errors import ConfigError

__all__ = ["CurveKeys"]


@dataclass(frozen=True)
class CurveKeys:
    """CURVE keys (Z85 text, 40 characters each) for a broker reachable from other hosts."""

    server_public: str
    public: str
    secret: str

    def __post_init__(self) -> None:
        for name in ("server_public", "public", "secret"):
            key = getattr(self, name)
            if not isinstance(key, str) or len(key) != 40:
                raise ValueError(f"CURVE key {name!r} must be a 40-character Z85 string")

    def __repr__(self) -> str:  # never print the secret key
        return f"CurveKeys(server_public={self.server_public!r}, public={self.public!r}, secret=...)"

    @classmethod
    def coerce(cls, keys: CurveKeys | Mapping[str, str]) -> CurveKeys:
        """Accept a mapping too, e.g. a table loaded from a TOML file."""
        if isinstance(keys, CurveKeys):
            return keys
        try:
            return cls(keys["server_public"], keys["public"], keys["secret"])
        except KeyError as exc:
            raise ValueError(f"CURVE keys need 'server_public', 'public' and 'secret'; {exc} is missing") from None

    @classmethod
    def from_files(cls, server_public_file: str | Path, secret_file: str | Path) -> CurveKeys:
        """From the pool's ``*.key`` and this side's ``*.key_secret``, as ``dllpool keys`` writes them."""
        try:
            server_public, _ = zmq.auth.load_certificate(server_public_file)
            public, secret = zmq.auth.load_certificate(secret_file)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read CURVE key file: {exc}") from None
        if secret is None:
            raise ConfigError(f"{secret_file} holds no secret key; give a *.key_secret file")
        return cls(server_public.decode("ascii"), public.decode("ascii"), secret.decode("ascii"))
