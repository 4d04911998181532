"""Live config: an edit applies within a second without a restart; a bad edit is refused and logged, and
the last good config stays in force."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.auth import hash_key
from proxy.settings import load_settings
from tests.fakes.upstream import FakeUpstream
from tests.harness import ADMIN, Proxy, settings_data

pytestmark = pytest.mark.integration
BODY = {"model": "fake-out5", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def call(proxy: Proxy, key: str = ADMIN) -> int:
    return httpx.post(proxy.base + "/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"},
                      timeout=10).status_code


def until(check: Any, timeout: float = 3.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError("not applied in time")


def test_edits_apply_live_and_bad_edits_are_refused(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    data = settings_data(upstream, tmp_path, closed_port,
                         budgets=[{"name": "cap", "scope": {"org": "acme"}, "window": "day", "limit_usd": 1}])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with Proxy(load_settings(path), config_path=path) as proxy:
        assert call(proxy) == 200
        data["budgets"][0]["limit_usd"] = 0.000001  # a new cap, tighter than any call
        path.write_text(yaml.safe_dump(data))
        assert until(lambda: call(proxy) == 402) < 1.5
        new_key = "sk-test-added-live-0001"
        data["keys"].append({"name": "late", "key_sha256": hash_key(new_key), "org": "acme", "role": "admin"})
        data["budgets"] = []
        path.write_text(yaml.safe_dump(data))
        until(lambda: call(proxy, new_key) == 200)
        assert call(proxy) == 200  # the budget is gone too
        caplog.set_level(logging.ERROR)
        broken = path.read_text().replace("limit_usd", "limit_dollars") + "\nbudgets: [{name: x}]\n"
        path.write_text(broken)
        until(lambda: any("config edit refused" in r.getMessage() for r in caplog.records))
        assert call(proxy, new_key) == 200  # the last good config is still in force


def test_a_budget_added_live_starts_from_the_stores_spend(upstream: FakeUpstream, tmp_path: Path,
                                                         closed_port: int) -> None:
    """A budget added by an edit counts what its window already spent (from the store), not from 0; the
    counters of budgets already running keep their live totals."""
    data = settings_data(upstream, tmp_path, closed_port,
                         budgets=[{"name": "cap", "scope": {"org": "acme"}, "window": "day", "limit_usd": 1}])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    auth = {"authorization": f"Bearer {ADMIN}"}

    def spent() -> dict[str, float]:
        r = httpx.get(proxy.url + "/api/budgets", headers=auth, timeout=10)
        return {b["name"]: b["spent_usd"] for b in r.json()["budgets"]}

    with Proxy(load_settings(path), config_path=path) as proxy:
        for _ in range(3):
            assert call(proxy) == 200
        before = spent()["cap"]
        assert before > 0
        data["budgets"].append({"name": "added", "scope": {"org": "acme"}, "window": "day", "limit_usd": 2})
        path.write_text(yaml.safe_dump(data))
        until(lambda: "added" in spent())
        assert call(proxy) == 200  # the first admission after the edit rebuilds the new budget's counter
        now = spent()
        assert now["added"] == now["cap"] > before  # the new counter holds the day's spend, the old kept its own
