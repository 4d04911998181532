"""`spendgate serve` in a subprocess (for faults a thread cannot simulate: `kill -9`, SIGTERM, a restart
on the same journal), and reading back every call it stored."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.fakes.servers import free_port
from tests.fakes.upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream
from tests.harness import ADMIN, settings_data

ROOT = Path(__file__).resolve().parents[2]


class ProxyProcess:
    """`spendgate serve` in a subprocess on a fixed port, config and journal; start it again after a kill.
    `overrides` are top-level config sections (budgets, ledger, approvals...), as for `settings_data`."""

    def __init__(self, upstream: FakeUpstream, tmp_path: Path, closed_port: int, store_url: str,
                 flush_interval_ms: int, **overrides: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = settings_data(upstream, tmp_path, closed_port, store_url=store_url, **overrides)
        data["server"] = {"port": self.port, "log_level": "info"}
        data["store"]["flush_interval_ms"] = flush_interval_ms
        self.journal = Path(data["store"]["journal_path"])
        self.config = tmp_path / "spendgate.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.tmp_path = tmp_path
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.tmp_path / f"proxy-{self.runs}.log"

    def launch(self) -> None:
        """Start the process without waiting for it to be ready."""
        self.runs += 1
        env = {**os.environ, "SG_TEST_OPENAI_KEY": OPENAI_KEY, "SG_TEST_ANTHROPIC_KEY": ANTHROPIC_KEY}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.config)],
                                         cwd=ROOT, env=env, stdout=log, stderr=log)

    def start(self, timeout: float = 30) -> None:
        """Start and return once /readyz answers 200."""
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def journal_records(self) -> int:
        """Records left in the journal's segment files (what the next start would replay)."""
        segments = self.journal.parent.glob(self.journal.name + ".*")
        return sum(p.read_bytes().count(b"\n") for p in segments if p.suffix != ".lock")


def stored_calls(url: str, key: str = ADMIN) -> dict[str, dict[str, Any]]:
    """Every call of the key's org through GET /api/calls, paged; fails on a request id listed twice."""
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        while True:
            params: dict[str, Any] = {"limit": 1000} | ({"cursor": cursor} if cursor else {})
            r = client.get(url + "/api/calls", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            for row in page["calls"]:
                assert row["request_id"] not in found, f"{row['request_id']} listed twice"
                found[row["request_id"]] = row
            cursor = page["next_cursor"]
            if cursor is None:
                return found
