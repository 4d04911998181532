"""`make bench`: spendgate's CPU per call against a bare Starlette + aiohttp forwarder (DESIGN.md section 13).

Starts the fake upstream, two bare forwarders (aiohttp, httpx), three spendgates (no budgets; three
budgets on the memory ledger; the same budgets on a Redis ledger, served by the bench's own redis-server)
and LiteLLM's own proxy (from its own venv, bench/.litellm-venv, installed on demand; offline), each its own
process, drives each with the same requests from a load-generator process, and prints a Markdown
table (also written to bench/results/latest.md). Targets are interleaved per scenario and each cell is
repeated; medians are shown. Then the cap-overshoot run: 64 concurrent calls against a small cap on each
proxy that can enforce a budget offline.

    python -m bench.run [--quick] [--reps R] [--concurrency 1,16,64] [--no-litellm] [--no-overshoot]
    BENCH_REQUESTS=2 python -m bench.run      # twice as many requests per cell
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from bench import litellm
from bench.load import Spec, request_headers
from bench.procs import (
    BUDGETS_MEMORY,
    BUDGETS_REDIS,
    LITELLM,
    PYTHON,
    ROOT,
    SPENDGATE,
    Server,
    StartError,
    build_servers,
    capped_spendgate,
    cpu_seconds,
    peak_rss_mb,
)
from bench.report import Cell, Overshoot, render

TARGET = 1.3  # spendgate (no budgets) and spendgate+budgets (memory) / bare aiohttp
TARGET_REDIS = 1.5  # spendgate+budgets (redis) / bare aiohttp
PROMPT = ("You are a careful assistant. Summarise the following note in two sentences. " * 6).strip()
SETTLE_S = 0.4  # after the last answer, before reading CPU: lets a batched writer finish its flush
TARGET_LITELLM = 5.0  # LiteLLM's proxy CPU per call / spendgate's, at least
LITELLM_SHARE = 4  # LiteLLM's proxy gets 1/4 of each cell's requests (it is ~20-70x slower; still >= 0.5 s CPU)
OVERSHOOT_CALLS = 64  # fired at once against each capped proxy
COST_PER_CALL = 200 * litellm.INPUT_COST + 50 * litellm.OUTPUT_COST  # fake-in200-out50 at gpt-4o-mini prices
OVERSHOOT_CAP = 10 * COST_PER_CALL  # room for 10 calls


@dataclass(frozen=True, slots=True)
class Scenario:
    stream: bool
    concurrency: int
    requests: int
    warmup: int

    @property
    def name(self) -> str:
        return "stream chat" if self.stream else "chat"

    def body(self) -> str:
        payload: dict[str, object] = {"model": "fake-in200-out50",
                                      "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100}
        if self.stream:
            payload["stream"] = True
        return json.dumps(payload)


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    scale = float(os.environ.get("BENCH_REQUESTS", "1"))
    base, warm = (250, 25) if args.quick else (2000, 200)
    out = []
    for stream in (False, True):
        n = base // 2 if stream else base
        for c in args.concurrency:
            out.append(Scenario(stream, c, max(int(n * scale), c), max(int(warm * scale), c)))
    return out


def run_cell(target: Server, proxy: Server | None, sc: Scenario, aux: Server | None = None) -> Cell:
    """One (target, scenario) measurement; `proxy` is the process whose CPU is read (None: direct); `aux`
    a helper whose CPU is reported beside it (the redis-server behind the Redis ledger)."""
    if target.name == LITELLM:
        sc = replace(sc, requests=max(sc.concurrency, sc.requests // LITELLM_SHARE),
                     warmup=max(sc.concurrency, sc.warmup // LITELLM_SHARE))
    spec = {"url": f"{target.base}/v1/chat/completions", "key": target.key, "body": sc.body(),
            "stream": sc.stream, "concurrency": sc.concurrency, "warmup": sc.warmup, "requests": sc.requests}
    load = subprocess.Popen([PYTHON, "-m", "bench.load", json.dumps(spec)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert load.stdin is not None and load.stdout is not None
        if load.stdout.readline().strip() != "warm":
            raise RuntimeError(f"load generator failed during warm-up against {target.name}")
        cpu0 = cpu_seconds(proxy.pid) if proxy else 0.0
        aux0 = cpu_seconds(aux.pid) if aux else 0.0
        load.stdin.write("go\n")
        load.stdin.flush()
        line = load.stdout.readline()
        time.sleep(SETTLE_S)
        cpu1 = cpu_seconds(proxy.pid) if proxy else 0.0
        aux1 = cpu_seconds(aux.pid) if aux else 0.0
        load.wait(timeout=30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    if not line:
        raise RuntimeError(f"load generator against {target.name} produced no result (exit {load.returncode})")
    res = json.loads(line)
    done = len(res["latencies"]) + res["errors"] or 1
    return Cell(scenario=sc.name, concurrency=sc.concurrency, target=target.name, stream=sc.stream,
                requests=sc.requests, rps=len(res["latencies"]) / res["elapsed"] if res["elapsed"] else 0.0,
                latencies=res["latencies"], ttfbs=res["ttfbs"], errors=res["errors"],
                error_samples=res["error_samples"],
                cpu_ms=(cpu1 - cpu0) * 1000 / done if proxy else None,
                aux_cpu_ms=(aux1 - aux0) * 1000 / done if aux else None,
                rss_mb=peak_rss_mb(proxy.pid) if proxy else None,
                client_cpu_pct=100 * res["client_cpu"] / res["elapsed"] if res["elapsed"] else 0.0)


def recorded_calls(spendgate: Server, expected: int) -> str:
    """Page through spendgate's GET /api/calls to count the rows it recorded."""
    total, cursor, deadline = 0, None, time.monotonic() + 60
    while time.monotonic() < deadline:
        url = f"{spendgate.base}/api/calls?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        req = urllib.request.Request(url, headers={"authorization": f"Bearer {spendgate.key}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            page = json.loads(resp.read())
        total += len(page["calls"])
        cursor = page.get("next_cursor")
        if not cursor:
            return f"{spendgate.name} GET /api/calls answers: {total} calls recorded (requests sent: {expected})"
    return f"{spendgate.name} GET /api/calls answers: at least {total} calls recorded (stopped paging after 60 s)"


async def _fire(url: str, key: str, n: int) -> tuple[dict[int, int], list[str]]:
    """`n` identical non-streamed calls released together; counts per HTTP status (0: transport error)."""
    body = Scenario(False, n, n, 0).body()
    headers = request_headers(Spec(url, key, body, False, n, 0, n))[0]
    counts: dict[int, int] = {}
    samples: list[str] = []
    gate = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one() -> None:
            await gate.wait()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    data = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, data = 0, f"{type(exc).__name__}: {exc}".encode()
            counts[status] = counts.get(status, 0) + 1
            if status != 200 and len(samples) < 2:
                samples.append(f"HTTP {status}: {data[:140].decode(errors='replace')}")
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*tasks)
    return counts, samples


def overshoot_run(server: Server, budget: str) -> Overshoot:
    counts, samples = asyncio.run(_fire(f"{server.base}/v1/chat/completions", server.key, OVERSHOOT_CALLS))
    ok = counts.get(200, 0)
    refused = counts.get(402, 0) + counts.get(429, 0)
    detail = "; ".join(dict.fromkeys(samples)) if samples else ""
    return Overshoot(target=server.name, budget=budget, cap_usd=OVERSHOOT_CAP, sent=OVERSHOOT_CALLS, ok=ok,
                     refused=refused, other=OVERSHOOT_CALLS - ok - refused, cost_per_call=COST_PER_CALL,
                     detail=f"first refusal: {detail}" if detail else "")


def overshoot_phase(tmp: Path, upstream: Server, redis: Server, litellm_cli: Path | None,
                    started: list[Server], notes: list[str]) -> list[Overshoot]:
    """Fresh proxies, each with one small blocking budget, each hit by OVERSHOOT_CALLS calls at once."""
    plan: list[tuple[Server, str]] = [
        (capped_spendgate("spendgate (memory ledger)", tmp / "cap-memory", upstream.port, "memory://",
                          OVERSHOOT_CAP), "org budget, on_exceed: block, memory ledger"),
        (capped_spendgate("spendgate (redis ledger)", tmp / "cap-redis", upstream.port,
                          f"redis://127.0.0.1:{redis.port}/1", OVERSHOOT_CAP),
         "org budget, on_exceed: block, Redis ledger"),
    ]
    if litellm_cli is not None:
        plan.append((litellm.server(LITELLM, litellm_cli, tmp / "cap-litellm", upstream.port, OVERSHOOT_CAP),
                     "deployment max_budget (router, in memory; key max_budget needs its DB)"))
    runs = []
    for server, budget in plan:
        print(f"overshoot: starting {server.name} (cap ${OVERSHOOT_CAP:.6f}) ...", file=sys.stderr, flush=True)
        started.append(server)
        try:
            server.start()
        except StartError as exc:
            notes.append(f"cap overshoot: {server.name} did not start: {str(exc).splitlines()[0]}")
            server.stop()
            continue
        runs.append(overshoot_run(server, budget))
        server.stop()
    return runs


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions of each cell (default 3, --quick 1)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.md")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy (and its install)")
    parser.add_argument("--no-overshoot", action="store_true", help="skip the cap-overshoot run")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    signal.signal(signal.SIGTERM, _terminated)  # unwind through the finally blocks that stop the servers
    plan = scenarios(args)
    cells: list[Cell] = []
    notes: list[str] = []
    overshoot: list[Overshoot] = []
    litellm_cli: Path | None = None
    if args.no_litellm:
        notes.append("LiteLLM's proxy skipped (--no-litellm)")
    else:
        try:
            litellm_cli = litellm.ensure_venv()
        except (litellm.Unavailable, OSError) as exc:
            notes.append(f"LiteLLM's proxy NOT measured: install failed: {exc}")
            print(f"bench: LiteLLM's proxy will be missing: {exc}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="spendgate-bench-") as tmp:
        started: list[Server] = []
        try:
            helpers, proxies = build_servers(Path(tmp))
            upstream, redis = helpers
            for server in (*helpers, *proxies):
                print(f"starting {server.name} on port {server.port} ...", file=sys.stderr, flush=True)
                started.append(server)  # before start(): stopped even if it is interrupted coming up
                server.start()
            if litellm_cli is not None:
                proxy = litellm.server(LITELLM, litellm_cli, Path(tmp) / "litellm", upstream.port)
                print(f"starting {proxy.name} on port {proxy.port} ...", file=sys.stderr, flush=True)
                started.append(proxy)
                try:
                    proxy.start()
                    proxies.append(proxy)
                except StartError as exc:  # the other targets still run
                    proxy.stop()
                    notes.append(f"LiteLLM's proxy NOT measured: it did not start: {exc}")
                    print(f"bench: LiteLLM's proxy will be missing: {exc}", file=sys.stderr, flush=True)
                    litellm_cli = None
            direct = Server("direct", upstream.port, upstream.key, [], upstream.log_path)
            targets: list[tuple[Server, Server | None]] = [(direct, None), *((p, p) for p in proxies)]
            for sc in plan:
                for rep in range(reps):
                    # Rotate the order each repetition so no target always runs right after another.
                    order = targets[rep % len(targets):] + targets[:rep % len(targets)]
                    for target, proxy in order:
                        print(f"  {sc.name:11} c={sc.concurrency:<3} rep {rep + 1}/{reps} {target.name}",
                              file=sys.stderr, flush=True)
                        cells.append(run_cell(target, proxy, sc, redis if target.name == BUDGETS_REDIS else None))
            warmups = sum(sc.warmup for sc in plan) * reps
            time.sleep(1.0)  # the writers flush journaled rows to SQL in batches
            for spendgate in (p for p in proxies if p.name in (SPENDGATE, BUDGETS_MEMORY, BUDGETS_REDIS)):
                sent = sum(c.requests for c in cells if c.target == spendgate.name) + warmups
                try:
                    notes.append(recorded_calls(spendgate, sent))
                except (OSError, ValueError, KeyError) as exc:
                    notes.append(f"{spendgate.name} GET /api/calls failed: {type(exc).__name__}: {exc}")
            if not args.no_overshoot:
                overshoot = overshoot_phase(Path(tmp), upstream, redis, litellm_cli, started, notes)
        except StartError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 3
        finally:
            for server in reversed(started):  # also on Ctrl-C: KeyboardInterrupt unwinds through here
                server.stop()
    text, errors = render(cells, reps=reps, target=TARGET, target_redis=TARGET_REDIS, notes=notes,
                          litellm_target=TARGET_LITELLM, overshoot=overshoot)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"(written to {args.out})", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
