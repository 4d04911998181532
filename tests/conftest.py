"""Shared fixtures: the fake upstream (one per session) and a running proxy in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.servers import free_port
from tests.fakes.upstream import FakeUpstream
from tests.harness import Proxy, make_settings


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="session")
def closed_port() -> int:
    return free_port()  # nothing listens there: connection refused


@pytest.fixture
def proxy(upstream: FakeUpstream, tmp_path: Path, closed_port: int) -> Iterator[Proxy]:
    upstream.clear()
    with Proxy(make_settings(upstream, tmp_path, closed_port)) as p:
        yield p
