"""Runs a real spendgate (uvicorn on loopback, own thread) in front of the fake upstream, and reads the
catalog independently of `pricing` so tests can assert costs to the nano-dollar."""

from __future__ import annotations

import json
import math
import os
import time
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import httpx

from proxy.app import create_app
from proxy.auth import hash_key
from proxy.settings import Settings
from tests.fakes.servers import ThreadedServer
from tests.fakes.upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream

ADMIN = "sk-test-admin-acme-0001"  # org acme, admin
AGENT = "sk-test-agent-acme-0001"  # org acme, agent role pinned to project web / agent planner
VIEWER = "sk-test-viewer-acme-0001"  # org acme, viewer
OTHER = "sk-test-admin-globex-001"  # org globex, admin
ROOT = "sk-test-root-all-orgs-01"  # org "*", admin
LIMITED = "sk-test-limited-acme-001"  # org acme, agent, may only call fake-* models

KEYS = [
    {"name": "admin", "key_sha256": hash_key(ADMIN), "org": "acme", "role": "admin"},
    {"name": "planner", "key_sha256": hash_key(AGENT), "org": "acme", "role": "agent",
     "project": "web", "agent": "planner"},
    {"name": "viewer", "key_sha256": hash_key(VIEWER), "org": "acme", "role": "viewer"},
    {"name": "globex", "key_sha256": hash_key(OTHER), "org": "globex", "role": "admin"},
    {"name": "root", "key_sha256": hash_key(ROOT), "org": "*", "role": "admin"},
    {"name": "limited", "key_sha256": hash_key(LIMITED), "org": "acme", "role": "agent",
     "allowed_models": ["fake-*"]},
]


def test_models(up: FakeUpstream, closed_port: int) -> list[dict[str, Any]]:
    openai = {"provider": "openai", "api_base": up.openai_base, "api_key": "env:SG_TEST_OPENAI_KEY"}
    anthropic = {"provider": "anthropic", "api_base": up.url, "api_key": "env:SG_TEST_ANTHROPIC_KEY"}
    return [
        {"name": "fake-*", "price_as": "gpt-4o-mini", **openai},
        {"name": "fast-timeout-*", "price_as": "gpt-4o-mini", "timeout_s": 0.5, **openai},
        {"name": "azure-*", "price_as": "gpt-4o-mini", **openai, "provider": "azure", "api_version": "2024-10-21"},
        {"name": "alias-mini", "upstream_model": "fake-in11-out3", "price_as": "gpt-4o-mini", **openai},
        {"name": "claude-fake-*", "price_as": "claude-sonnet-4-5", **anthropic},
        {"name": "claude-sonnet-4-5*", **anthropic},  # priced by the model actually requested
        {"name": "dead-*", "provider": "openai", "api_base": f"http://127.0.0.1:{closed_port}/v1",
         "price_as": "gpt-4o-mini"},
        {"name": "mock", "provider": "mock", "price_as": "gpt-4o-mini", "mock": {"output_tokens": 12}},
        # Fallback chains: entries sharing a name are tried in order.
        {"name": "chain-down", "provider": "openai", "api_base": f"http://127.0.0.1:{closed_port}/v1",
         "price_as": "gpt-4o-mini"},
        {"name": "chain-down", "upstream_model": "fake-in21-out4", "price_as": "gpt-4o-mini", **openai},
        {"name": "chain-503", "upstream_model": "fake-err503", "price_as": "gpt-4o-mini", **openai},
        {"name": "chain-503", "upstream_model": "fake-in22-out5", "price_as": "gpt-4o", **openai},
        {"name": "chain-400", "upstream_model": "fake-err400", "price_as": "gpt-4o-mini", **openai},
        {"name": "chain-400", "upstream_model": "fake-in23-out6", "price_as": "gpt-4o-mini", **openai},
    ]


class Proxy:
    """A running spendgate; `url` is its base (add /v1 for the SDKs)."""

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.server = ThreadedServer(create_app(settings, config_path=config_path), timeout_graceful_shutdown=2)

    def __enter__(self) -> Proxy:
        self.server.start()
        self.url = self.server.url
        self.base = self.url + "/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def client(self, key: str = ADMIN) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {key}"}, timeout=30)

    def wait_written(self, timeout: float = 10.0) -> None:
        services = getattr(self.server.app.state, "services", None)
        deadline = time.monotonic() + timeout
        while services is not None and services.writer.pending and time.monotonic() < deadline:
            time.sleep(0.01)

    def call_row(self, request_id: str, key: str = ADMIN, timeout: float = 10.0) -> dict[str, Any]:
        """The stored row of a call, waiting for the batch writer to put it in SQL."""
        deadline = time.monotonic() + timeout
        with self.client(key) as c:
            while True:
                r = c.get(f"/api/calls/{request_id}")
                if r.status_code == 200:
                    return dict(r.json())
                if time.monotonic() > deadline:
                    raise AssertionError(f"call {request_id} not stored within {timeout}s: {r.status_code} {r.text}")
                time.sleep(0.02)

    def calls(self, key: str = ADMIN, **params: Any) -> list[dict[str, Any]]:
        """GET /api/calls once every row already recorded is in SQL (a call's row is recorded before its
        answer reaches the client; the batch writer puts it in SQL up to flush_interval_ms later)."""
        self.wait_written()
        with self.client(key) as c:
            r = c.get("/api/calls", params=params)
            assert r.status_code == 200, r.text
            return list(r.json()["calls"])


def make_settings(up: FakeUpstream, tmp_path: Path, closed_port: int, *, store_url: str | None = None,
                  **overrides: Any) -> Settings:
    return Settings.model_validate(settings_data(up, tmp_path, closed_port, store_url=store_url, **overrides))


def settings_data(up: FakeUpstream, tmp_path: Path, closed_port: int, *, store_url: str | None = None,
                  **overrides: Any) -> dict[str, Any]:
    """The test config as plain data (to validate, or to write as a config.yaml)."""
    os.environ["SG_TEST_OPENAI_KEY"] = OPENAI_KEY
    os.environ["SG_TEST_ANTHROPIC_KEY"] = ANTHROPIC_KEY
    data: dict[str, Any] = {
        "server": {"max_body_bytes": 200_000},
        "store": {"url": store_url or f"sqlite+aiosqlite:///{tmp_path / 'spendgate.db'}",
                  "journal_path": str(tmp_path / "spendgate.journal"), "flush_interval_ms": 10},
        "models": test_models(up, closed_port),
        "keys": KEYS,
    }
    data.update(overrides)
    return data


# --- the catalog, read independently of pricing/ -------------------------------------------------------

@cache
def _catalog() -> dict[str, Any]:
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    return dict(json.loads(path.read_text()))


def rate(model: str, key: str) -> Decimal:
    value = _catalog()[model].get(key)
    return Decimal(repr(value)) if value is not None else Decimal(0)


def expected_nano(model: str, *, input: int, output: int, cached: int = 0, cache_write: int = 0,
                  reasoning: int = 0) -> int:
    """Cost in nano-USD per the catalog, rounded up: input counts cached and cache-write tokens."""
    inp, out = rate(model, "input_cost_per_token"), rate(model, "output_cost_per_token")
    read = rate(model, "cache_read_input_token_cost") or inp
    write = rate(model, "cache_creation_input_token_cost") or inp
    reason = rate(model, "output_cost_per_reasoning_token") or out
    usd = ((input - cached - cache_write) * inp + cached * read + cache_write * write
           + (output - reasoning) * out + reasoning * reason)
    return math.ceil(usd * 10**9)


def usd(nano: int) -> float:
    return round(nano / 10**9, 9)
