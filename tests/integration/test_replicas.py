"""Three proxy processes on one Redis ledger and one PostgreSQL store hold one cap together, and its threshold
and exceeded webhooks reach the receiver once each, however many replicas saw them crossed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from policies.webhooks import secret_bytes, verify
from tests.fakes.servers import ThreadedServer, free_port
from tests.fakes.upstream import ANTHROPIC_KEY, OPENAI_KEY, FakeUpstream
from tests.harness import ADMIN, settings_data
from tests.pg import fresh_pg_database, service_unavailable
from tests.redis_helpers import PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = {"model": "fake-out30-slow50", "messages": [{"role": "user", "content": "Plan the next sprint."}],
        "max_tokens": 30}


@pytest.fixture
def pg_database() -> Iterator[str]:
    try:
        url, drop = asyncio.run(fresh_pg_database())
    except ConnectionError as exc:
        service_unavailable(str(exc))
    yield url
    asyncio.run(drop())


def test_three_replicas_share_one_cap(upstream: FakeUpstream, tmp_path: Path, closed_port: int,
                                      pg_database: str) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: Request) -> Response:
        received.append((dict(request.headers), await request.body()))
        return Response(status_code=204)

    with PrivateRedis(tmp_path) as redis, ThreadedServer(Starlette(routes=[Route("/hook", hook,
                                                                             methods=["POST"])])) as receiver:
        urls = []
        env = {**os.environ, "SG_TEST_OPENAI_KEY": OPENAI_KEY, "SG_TEST_ANTHROPIC_KEY": ANTHROPIC_KEY,
               "SG_TEST_WEBHOOK_SECRET": SECRET}
        try:
            for i in range(3):
                port = free_port()
                data = settings_data(upstream, tmp_path, closed_port, store_url=pg_database,
                                     ledger={"url": redis.url},
                                     budgets=[{"name": "cap", "scope": {"org": "acme"}, "window": "day",
                                               "limit_usd": 0.001, "alerts": [{"at_pct": 50, "action": "webhook"}]}],
                                     webhooks=[{"name": "ops", "url": receiver.url + "/hook",
                                                "secret": "env:SG_TEST_WEBHOOK_SECRET",
                                                "allow_private_network": True}])
                data["server"] = {"port": port, "log_level": "warning"}
                data["store"]["journal_path"] = str(tmp_path / f"replica{i}.journal")
                config = tmp_path / f"replica{i}.yaml"
                config.write_text(yaml.safe_dump(data))
                log = open(tmp_path / f"replica{i}.log", "wb")  # noqa: SIM115 - closed with the process
                procs.append(subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                                              cwd=ROOT, env=env, stdout=log, stderr=log))
                urls.append(f"http://127.0.0.1:{port}")
            for url in urls:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if httpx.get(url + "/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, (tmp_path / "replica0.log").read_text()[-2000:]
                    time.sleep(0.1)
            statuses = asyncio.run(_load(urls, 240))
            assert set(statuses) <= {200, 402} and 402 in statuses
            with httpx.Client(headers={"authorization": f"Bearer {ADMIN}"}) as c:
                budget = next(b for b in c.get(urls[0] + "/api/budgets").json()["budgets"] if b["name"] == "cap")
                spent = round(budget["spent_usd"] * 1e9)
                assert budget["reserved_usd"] == 0 and 0 < spent <= 1_000_000  # the cap held across replicas
                deadline = time.monotonic() + 10
                while True:  # every replica's rows reach the shared store
                    rows = c.get(urls[1] + "/api/calls", params={"limit": 1000}).json()["calls"]
                    ok = [r for r in rows if r["status"] == "ok"]
                    if len(ok) == statuses.count(200) or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            assert len(ok) == statuses.count(200)
            assert sum(r["cost_nano"] for r in ok) == spent  # ledger and store agree
            deadline = time.monotonic() + 15
            while len(received) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.5)  # a duplicate from another replica's dispatcher would arrive by now
            types = sorted(orjson.loads(body)["type"] for _, body in received)
            assert types == ["budget.exceeded", "budget.threshold"], types  # once each across three replicas
            assert all(verify(secret_bytes(SECRET), headers, body) for headers, body in received)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(20)


async def _load(urls: list[str], n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {ADMIN}"}) as client:
        sem = asyncio.Semaphore(48)

        async def one(i: int) -> int:
            async with sem:
                r = await client.post(urls[i % len(urls)] + "/v1/chat/completions", json=BODY)
                return r.status_code

        return list(await asyncio.gather(*(one(i) for i in range(n))))
