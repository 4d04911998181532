"""`make bench-metrics`: how fast the metrics endpoints answer over a large PostgreSQL store (DESIGN.md
section 13: every metrics call under 300 ms over 1,000,000 usage rows). A measurement, not a test.

Creates a throwaway PostgreSQL database (tests/pg.py), seeds it with synthetic calls and factory events
(bench/metrics_seed.py), builds the rollups with `proxy.metrics.rollups.rebuild`, starts `spendgate serve` on
it as a subprocess, then times each endpoint: one warm-up request, then N sequential requests on one
keep-alive connection; prints median / p95 / max and drops the database (Ctrl-C included).

    python -m bench.metrics [--usage-rows 1000000] [--events 100000] [--requests 15] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson

from bench.metrics_seed import Seeded, now_minute, plan, write
from bench.procs import PYTHON, ROOT, Server, StartError, free_port, machine_info
from proxy.auth import hash_key
from proxy.metrics.rollups import rebuild
from proxy.store.config import StoreConfig
from proxy.store.db import Store
from tests.pg import fresh_pg_database

TARGET_MS = 300.0
SLOW_MS = 5000.0  # a warm-up slower than this: only 3 timed requests
REQUEST_TIMEOUT_S = 180.0
ADMIN, ROOT_KEY, VIEWER = "sg-bench-admin-acme", "sg-bench-root-all-orgs", "sg-bench-viewer-acme"
KEYS = {"admin": ADMIN, "root": ROOT_KEY, "viewer": VIEWER}
PROJECT = "web"  # the project of the second budget and of the /api/ai-cost reports
METRIC_TYPES = ("aggregate", "station", "cost", "provider", "handoff", "phase", "devops")
TIME_RANGES = ("7d", "30d", "90d")
RESULTS = ROOT / "bench" / "results" / "metrics-latest.md"
SERVER_LOG = ROOT / "bench" / "results" / "metrics-spendgate.log"  # kept: the errors of the last run


@dataclass(frozen=True, slots=True)
class Probe:
    """One endpoint and query to time, with the key (and X-Org-ID) to send."""

    path: str
    params: tuple[tuple[str, str], ...] = ()
    key: str = "admin"
    org_header: str | None = None

    @property
    def target(self) -> str:
        return self.path + ("?" + urllib.parse.urlencode(self.params) if self.params else "")

    @property
    def shown_params(self) -> str:
        text = "&".join(f"{k}={v[:12] + '...' if len(v) > 15 else v}" for k, v in self.params)
        return text or "-"

    @property
    def caller(self) -> str:
        return self.key + (f" + X-Org-ID {self.org_header}" if self.org_header else "")


@dataclass(frozen=True, slots=True)
class Timing:
    probe: Probe
    samples_ms: list[float]
    error: str | None = None
    requested: int = 0

    def row(self) -> str:
        p = self.probe
        if self.error is not None:
            return f"| `{p.path}` | {p.shown_params} | {p.caller} | ERROR | | | {self.error} |"
        s = self.samples_ms
        verdict = "yes" if self.p95 < TARGET_MS else "**NO**"
        if len(s) < self.requested:
            verdict += f" (n={len(s)})"
        return (f"| `{p.path}` | {p.shown_params} | {p.caller} | {statistics.median(s):.1f} | {self.p95:.1f} | "
                f"{max(s):.1f} | {verdict} |")

    @property
    def p95(self) -> float:
        """Interpolated between order statistics (with 15 samples the nearest rank would be the max)."""
        s = self.samples_ms
        return statistics.quantiles(s, n=20, method="inclusive")[18] if len(s) > 1 else max(s)


# --- the database ----------------------------------------------------------------------------------------

def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@dataclass(frozen=True, slots=True)
class Seeding:
    """What the probes and the config need from the seeded data."""

    issue: str  # acme's issue with the most calls
    org_limit_usd: int  # of the {org: acme} month budget
    project_limit_usd: int  # of the {org: acme, project: PROJECT} month budget


async def prepare(url: str, args: argparse.Namespace, log: list[str]) -> Seeding:
    """Migrate, seed, build the rollups, VACUUM ANALYZE; returns what the probes and budgets need."""
    store = await Store.open(StoreConfig(url=url))
    try:
        started = time.monotonic()
        the_plan = plan(args.seed, now_minute(), args.events)
        planned = time.monotonic()
        seeded: Seeded = await write(asyncpg_dsn(url), the_plan, args.usage_rows, args.seed)
        done = time.monotonic()
        log.append(f"Seeding: {seeded.usage_rows:,} usage rows, {seeded.events:,} factory events, "
                   f"{seeded.issues:,} issues, {seeded.runs:,} runs in {done - started:.1f} s "
                   f"(planning {planned - started:.1f} s, generating + COPY {done - planned:.1f} s)")
        print(log[-1], flush=True)
        counts = await rebuild(store)
        log.append(f"Rollup build (proxy.metrics.rollups.rebuild): {time.monotonic() - done:.1f} s "
                   f"({counts['calls']:,} calls + {counts['events']:,} spend events -> {counts['buckets']:,} "
                   f"buckets, {counts['issueDays']:,} issue-days, {counts['runAgents']:,} run-agents)")
        print(log[-1], flush=True)
    finally:
        await store.close()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        started = time.monotonic()
        await conn.execute("VACUUM ANALYZE")
        log.append(f"VACUUM ANALYZE (what autovacuum would do): {time.monotonic() - started:.1f} s")
        print(log[-1], flush=True)
        settings = await conn.fetch("SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers', "
                                    "'work_mem', 'jit', 'max_parallel_workers_per_gather') ORDER BY name")
        version = await conn.fetchval("SHOW server_version")
        log.append(f"PostgreSQL {version}: " + ", ".join(f"{r['name']}={_setting(r['setting'], r['unit'])}"
                                                         for r in settings))
        print(log[-1], flush=True)
        issue = await conn.fetchval("SELECT issue FROM usage WHERE org = 'acme' AND issue IS NOT NULL "
                                    "GROUP BY issue ORDER BY count(*) DESC, issue LIMIT 1")
        month = "grain = 'day' AND org = 'acme' AND bucket_start >= date_trunc('month', now() AT TIME ZONE 'UTC')"
        spent = await conn.fetchrow(f"SELECT coalesce(sum(cost_nano), 0) AS org, coalesce(sum(cost_nano) "
                                    f"FILTER (WHERE project = '{PROJECT}'), 0) AS project FROM metric_buckets "
                                    f"WHERE {month}")
    finally:
        await conn.close()
    return Seeding(str(issue), _limit(int(spent["org"])), _limit(int(spent["project"])))


def _setting(value: str, unit: str | None) -> str:
    if unit == "8kB":
        return f"{int(value) * 8 // 1024}MB"
    return value + (unit or "")


def _limit(spent_nano: int) -> int:
    """A month limit the spend so far reaches about two thirds of (whole hundreds of USD)."""
    return max(100, math.ceil(spent_nano * 1.5 / 1e9 / 100) * 100)


# --- spendgate -------------------------------------------------------------------------------------------

def spendgate(tmp: Path, url: str, seeding: Seeding) -> Server:
    """`spendgate serve` on the seeded database: a mock model, the three bench keys, two month budgets."""
    port = free_port()
    keys = "\n".join(f"  - {{name: {name}, key_sha256: {hash_key(key)}, org: {org}, role: {role}}}"
                     for name, key, org, role in (("admin", ADMIN, "acme", "admin"), ("root", ROOT_KEY, '"*"', "admin"),
                                                  ("viewer", VIEWER, "acme", "viewer")))
    config = tmp / "config.yaml"
    config.write_text(f"""\
server: {{host: 127.0.0.1, port: {port}, log_level: warning, metrics_rate_limit_per_minute: 1000000}}
store: {{url: "{url}", journal_path: "{tmp / 'spendgate.journal'}"}}
models:
  - {{name: mock, provider: mock, price_as: gpt-4o-mini}}
keys:
{keys}
budgets:
  - {{name: acme-monthly, scope: {{org: acme}}, window: month, limit_usd: {seeding.org_limit_usd}}}
  - {{name: acme-{PROJECT}-monthly, scope: {{org: acme, project: {PROJECT}}}, window: month,
     limit_usd: {seeding.project_limit_usd}}}
""")
    binary = Path(PYTHON).with_name("spendgate")
    argv = [str(binary), "serve", "--config", str(config)] if binary.exists() else \
        [PYTHON, "-m", "proxy.cli", "serve", "--config", str(config)]
    SERVER_LOG.parent.mkdir(exist_ok=True)
    return Server("spendgate", port, ADMIN, argv, SERVER_LOG)


def probes(issue: str) -> list[Probe]:
    out = [Probe("/api/factory/metrics", (("metricType", m), ("timeRange", t)))
           for m in METRIC_TYPES for t in TIME_RANGES]
    out += [Probe("/api/factory/cost-per-issue"), Probe("/api/factory/cost-per-issue", (("sort", "cost"),)),
            Probe("/api/factory/cost-per-issue", (("cursor", "<page 2>"),)),
            Probe(f"/api/factory/cost-per-issue/{urllib.parse.quote(issue)}"),
            Probe("/api/v1/admin/metrics/cost-optimization"),
            Probe("/api/ai-cost/monthly-summary", (("projectId", PROJECT),)),
            Probe("/api/ai-cost/monthly-trend", (("projectId", PROJECT),)),
            Probe("/api/ai-cost/cross-project-summary"),
            Probe("/api/ai-cost/recent-transactions", (("projectId", PROJECT),)),
            Probe("/api/calls", (("limit", "50"),)), Probe("/api/budgets"),
            # What the dashboard reads besides the above.
            Probe("/api/factory/daily-spend", (("days", "90"),)), Probe("/api/ai-cost/org-summary"),
            Probe("/api/factory/events", (("limit", "100"),))]
    # Other callers: the org-"*" admin over every org and naming acme; the viewer.
    out += [Probe("/api/factory/metrics", (("metricType", "aggregate"), ("timeRange", "90d")), "root"),
            Probe("/api/factory/metrics", (("metricType", "station"), ("timeRange", "90d")), "root"),
            Probe("/api/factory/cost-per-issue", (), "root"),
            Probe("/api/v1/admin/metrics/cost-optimization", (), "root", "acme"),
            Probe("/api/factory/metrics", (("metricType", "cost"), ("timeRange", "30d")), "viewer")]
    return out


# --- timing ----------------------------------------------------------------------------------------------

class RequestFailed(Exception):
    """No HTTP answer (connection closed or timed out)."""


class Client:
    """One keep-alive HTTP/1.1 connection to spendgate; `get` returns (status, body, ms)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)

    def get(self, probe: Probe, target: str | None = None) -> tuple[int, bytes, float]:
        headers = {"Authorization": f"Bearer {KEYS[probe.key]}"}
        if probe.org_header:
            headers["X-Org-ID"] = probe.org_header
        started = time.perf_counter()
        try:
            self.conn.request("GET", target or probe.target, headers=headers)
            response = self.conn.getresponse()
            body = response.read()
        except (http.client.HTTPException, OSError) as exc:
            self.conn.close()  # the next request opens a new connection
            raise RequestFailed(f"no answer after {time.perf_counter() - started:.1f} s: "
                                f"{type(exc).__name__}: {exc}") from exc
        return response.status, body, (time.perf_counter() - started) * 1000


def measure(client: Client, probe: Probe, requests: int, cursors: dict[str, str]) -> Timing:
    """One warm-up request, then `requests` timed ones (3 when the warm-up took over SLOW_MS)."""
    target = probe.target
    if dict(probe.params).get("cursor") == "<page 2>":
        if "next" not in cursors:
            return Timing(probe, [], "no next_cursor on the first page")
        target = probe.path + "?" + urllib.parse.urlencode({"cursor": cursors["next"]})
    samples: list[float] = []
    try:
        status, body, warm_ms = client.get(probe, target)
        if status != 200:
            return Timing(probe, [], _excerpt(status, body))
        if probe.path == "/api/factory/cost-per-issue" and not probe.params and probe.key == "admin":
            cursor = orjson.loads(body).get("next_cursor")
            if cursor:
                cursors["next"] = cursor
        for _ in range(min(requests, 3) if warm_ms > SLOW_MS else requests):
            status, body, ms = client.get(probe, target)
            if status != 200:
                return Timing(probe, samples, f"after {len(samples)} requests: {_excerpt(status, body)}")
            samples.append(ms)
    except RequestFailed as exc:
        return Timing(probe, samples, str(exc))
    return Timing(probe, samples, requested=requests)


def _excerpt(status: int, body: bytes) -> str:
    return f"{status}: {body[:200].decode(errors='replace')}".replace("|", "/").replace("\n", " ")


def render(timings: list[Timing], log: list[str], args: argparse.Namespace) -> str:
    head = ["| endpoint | params | key | median ms | p95 ms | max ms | p95 < 300 ms |",
            "|---|---|---|---:|---:|---:|---|"]
    slow = [t for t in timings if t.error is None and t.p95 >= TARGET_MS]
    errors = [t for t in timings if t.error is not None]
    summary = (f"{len(timings) - len(slow) - len(errors)} of {len(timings)} under {TARGET_MS:.0f} ms (p95), "
               f"{len(slow)} over, {len(errors)} errors")
    lines = [f"# bench-metrics: {args.usage_rows:,} usage rows, {args.events:,} events (seed {args.seed}); "
             f"1 warm-up + {args.requests} sequential requests per row; p95 interpolated", "", *log, "",
             *head, *(t.row() for t in timings), "", summary]
    return "\n".join(lines)


def serve_and_time(server: Server, seeding: Seeding, args: argparse.Namespace, log: list[str]) -> list[Timing]:
    started = time.monotonic()
    server.start(timeout=120)
    log.append(f"spendgate up in {time.monotonic() - started:.1f} s; acme's issue with the most calls: {seeding.issue}; "
               f"budgets acme-monthly ${seeding.org_limit_usd:,}, acme-{PROJECT}-monthly "
               f"${seeding.project_limit_usd:,} (1.5x this month's spend)")
    print(log[-1], flush=True)
    client, cursors = Client(server.port), dict[str, str]()
    timings: list[Timing] = []
    load_before = os.getloadavg()[0]
    for probe in probes(seeding.issue):
        assert server.proc is not None
        if server.proc.poll() is not None:
            timings.append(Timing(probe, [], f"spendgate exited with {server.proc.returncode}"))
            continue
        timings.append(measure(client, probe, args.requests, cursors))
        print("  " + timings[-1].row(), flush=True)
    log.append(f"Load average (1 min) before / after timing: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
               f"on {os.cpu_count()} cores (other processes share the machine)")
    if any(t.error for t in timings):
        log.append(f"Errors: spendgate's log is {SERVER_LOG.relative_to(ROOT)}; its last lines:\n\n"
                   + "\n".join("    " + line for line in server.log_tail(25).splitlines()))
    return timings


async def _call(coroutine_function: Callable[[], Awaitable[None]]) -> None:
    await coroutine_function()


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    url, drop = asyncio.run(fresh_pg_database(prefix="spendgate_bench_"))
    log = [*machine_info()[:2], f"Database: {url.rsplit('/', 1)[1]} (dropped at the end)"]
    print("\n".join(log), flush=True)
    try:
        seeding = asyncio.run(prepare(url, args, log))
        with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
            server = spendgate(Path(tmp), url, seeding)
            try:
                timings = serve_and_time(server, seeding, args, log)
            finally:
                server.stop()
    except StartError as exc:
        print(f"spendgate did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        asyncio.run(_call(drop))
    log.append(f"Whole run: {time.monotonic() - started:.0f} s")
    report = render(timings, log, args)
    print("\n" + report)
    RESULTS.write_text(report + "\n")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--usage-rows", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=15, help="timed requests per endpoint (after 1 warm-up)")
    parser.add_argument("--seed", type=int, default=7)
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
