"""Test helpers for Redis: the machine's shared Redis under a unique key prefix, and private redis-servers.

Tests never stop, flush or reconfigure the shared Redis: each gets a prefix `sgtest:<hex>:` and every key
under it is deleted afterwards. Fault tests start their own `redis-server` on a free loopback port and stop
or restart it at will. When the shared Redis is unreachable tests skip loudly, or fail when
SPENDGATE_REQUIRE_SERVICES=1 (CI).

Use from a test module: `from tests import redis_helpers`, then `redis_prefix = redis_helpers.redis_prefix`
(likewise `redis_url`, `private_redis`) so pytest sees the fixtures and ruff sees no shadowed import.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.fakes.servers import free_port
from tests.pg import service_unavailable

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


def fresh_prefix() -> str:
    """A key prefix no other test or process uses (no braces: it must not change hash slots)."""
    return f"sgtest:{secrets.token_hex(6)}:"


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix` (SCAN, never FLUSH*); returns how many were deleted."""
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A unique prefix on the shared Redis; its keys are deleted after the test. Skips (or fails) if down.

    Synchronous on purpose: async fixtures (such as a parametrized ledger) can request it by name.
    """
    try:
        with redis.Redis.from_url(SHARED_REDIS_URL, socket_connect_timeout=2, socket_timeout=2) as client:
            client.ping()
    except (redis.RedisError, OSError) as exc:
        service_unavailable(f"Redis at {SHARED_REDIS_URL} unreachable ({type(exc).__name__}: {exc})")
    prefix = fresh_prefix()
    yield prefix
    delete_prefix(SHARED_REDIS_URL, prefix)


@pytest.fixture
def redis_url(redis_prefix: str) -> str:
    """URL of the shared Redis; pair it with the `redis_prefix` fixture (which cleans up)."""
    return SHARED_REDIS_URL


class PrivateRedis:
    """A redis-server of our own on 127.0.0.1:<free port>, no persistence; stop() and start() at will."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_unavailable("redis-server binary not found")
        self._proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self._workdir), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"private redis-server on port {self.port} did not start")

    def stop(self) -> None:
        """Kill our own server (only the process we started) and wait until it is gone."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)  # a paused server must be able to die
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP our server: connections stay open but nothing answers (a hung Redis, for timeouts)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A running private redis-server, stopped after the test whatever happened."""
    with PrivateRedis(tmp_path) as server:
        yield server
