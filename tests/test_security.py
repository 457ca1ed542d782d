"""CURVE on TCP: only clients holding an allowed key get answers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from broker import Pool
from broker.security import create_keys
from client import BrokerUnavailable, Client, CurveKeys
from protocol import ConfigError

from .conftest import demo_service


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("pool", "alice", "mallory"):
        create_keys(folder, name)
    return folder


def curve_pool(keys: Path, backend: str | None = None) -> Pool:
    pool: dict[str, object] = {
        "frontend": "tcp://127.0.0.1:*",
        "curve_secret_key": str(keys / "pool.key_secret"),
        "curve_clients": [str(keys / "alice.key")],
    }
    if backend:
        pool["backend"] = backend
    return Pool.from_config({"pool": pool, "services": {"s": demo_service(workers=2)}})


def test_an_allowed_key_gets_answers_and_others_do_not(keys: Path) -> None:
    with curve_pool(keys) as pool:
        alice = CurveKeys.from_files(keys / "pool.key", keys / "alice.key_secret")
        with Client(pool.address, timeout=10, curve=alice) as client:
            assert client.call("s", "add", 2, 3) == 5
        mallory = CurveKeys.from_files(keys / "pool.key", keys / "mallory.key_secret")
        refusals = [(mallory, "refused this client's CURVE public key"), (None, "requires CURVE keys")]
        for curve, problem in refusals:
            # A 10 s liveness window: a refused handshake must fail the call at once, not when the window ends.
            with Client(pool.address, timeout=30, curve=curve, heartbeat_liveness=10) as client:
                started = time.monotonic()
                with pytest.raises(BrokerUnavailable, match=problem) as info:
                    client.call("s", "add", 2, 3)
                elapsed = time.monotonic() - started
            assert pool.address in str(info.value)
            assert elapsed < 5.0, f"the refusal took {elapsed:.1f} s to reach the caller"
        assert pool.stats()["requests"] == 1, "a refused client's request reached the broker"


def test_a_wrong_server_key_names_the_key_within_the_window(keys: Path) -> None:
    """The broker hangs up on a HELLO it cannot decrypt: to the client that looks like a dropped connection."""
    with curve_pool(keys) as pool:
        wrong = CurveKeys.from_files(keys / "mallory.key", keys / "alice.key_secret")
        with Client(pool.address, timeout=30, curve=wrong) as client:  # default heartbeats: a 3 s window
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable, match="server_public") as info:
                client.call("s", "add", 2, 3)
            elapsed = time.monotonic() - started
        assert "for 3 s" in str(info.value)
        assert elapsed < 6.0, f"BrokerUnavailable took {elapsed:.1f} s; the liveness window is 3 s"
        assert pool.stats()["requests"] == 0


def test_workers_authenticate_when_the_backend_is_tcp(keys: Path) -> None:
    with curve_pool(keys, backend="tcp://127.0.0.1:*") as pool:
        assert pool.backend_address.startswith("tcp://127.0.0.1:")
        alice = CurveKeys.from_files(keys / "pool.key", keys / "alice.key_secret")
        with Client(pool.address, timeout=10, curve=alice) as client:
            assert client.call("s", "pointer_size") == 4


def test_a_missing_or_wrong_key_file_is_a_config_error(keys: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key"):
        Pool.from_config(
            {
                "pool": {"frontend": "tcp://127.0.0.1:*", "curve_secret_key": str(tmp_path / "nope.key_secret")},
                "services": {"s": demo_service()},
            }
        )
    with pytest.raises(ConfigError, match="secret"):
        Pool.from_config(
            {
                "pool": {"frontend": "tcp://127.0.0.1:*", "curve_secret_key": str(keys / "pool.key")},
                "services": {"s": demo_service()},
            }
        )


def test_keys_command_writes_a_private_secret(tmp_path: Path) -> None:
    public, secret = create_keys(tmp_path, "host")
    assert public.exists() and secret.exists()
    assert secret.stat().st_mode & 0o077 == 0
