"""The load generator: an async aiohttp client in its own process, C requests in flight, keep-alive.

Run by bench.run, one process per (target, scenario) cell. Protocol over stdin / stdout, so the parent can
read the proxy's CPU counters exactly around the measured requests:

    parent: python -m bench.load '<json spec>'
    child:  sends the warm-up requests, prints "warm"
    parent: reads the proxy's CPU counters, writes "go"
    child:  sends the measured requests, prints one JSON line of results, exits

Every request carries `X-Spendgate-Agent: <agent>` and `X-Spendgate-Run: run-<n>`, n cycling over `runs`
ids, whatever the target (the bare forwarders ignore them), so every target gets identical requests and
spendgate's per-agent and per-run budgets match every call.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True, slots=True)
class Spec:
    """One cell: where to send, what, how many in flight, how many in total."""

    url: str
    key: str
    body: str
    stream: bool
    concurrency: int
    warmup: int
    requests: int
    agent: str = "bench-agent"
    runs: int = 8


@dataclass(slots=True)
class Result:
    """Measured requests of one cell: latency / TTFB in seconds, wall time, errors."""

    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    client_cpu: float = 0.0


def request_headers(spec: Spec) -> list[dict[str, str]]:
    """One header set per run id; request i uses set i % runs."""
    base = {"content-type": "application/json", "authorization": "Bearer " + spec.key,
            "x-spendgate-agent": spec.agent}
    return [{**base, "x-spendgate-run": f"run-{n}"} for n in range(max(spec.runs, 1))]


async def _one(session: aiohttp.ClientSession, spec: Spec, payload: bytes, headers: dict[str, str],
               result: Result) -> None:
    start = time.perf_counter()
    ttfb = 0.0
    problem = ""
    try:
        async with session.post(spec.url, data=payload, headers=headers) as resp:
            if spec.stream:
                tail = b""
                async for chunk in resp.content.iter_any():
                    if not ttfb:
                        ttfb = time.perf_counter() - start
                    tail = (tail + chunk)[-64:]
                if resp.status != 200 or b"[DONE]" not in tail:
                    problem = f"HTTP {resp.status}, stream ended without [DONE]: {tail[-60:]!r}"
            else:
                data = await resp.read()
                ttfb = time.perf_counter() - start
                if resp.status != 200:
                    problem = f"HTTP {resp.status}: {data[:160]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        result.errors += 1
        if len(result.error_samples) < 5:
            result.error_samples.append(problem)
        return
    result.latencies.append(time.perf_counter() - start)
    result.ttfbs.append(ttfb)


async def _batch(session: aiohttp.ClientSession, spec: Spec, count: int) -> Result:
    """Send `count` requests with `spec.concurrency` in flight until all are done."""
    payload = spec.body.encode()
    header_sets = request_headers(spec)
    result = Result()
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await _one(session, spec, payload, header_sets[remaining % len(header_sets)], result)

    cpu0, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(spec.concurrency, count))))
    result.elapsed = time.perf_counter() - start
    result.client_cpu = time.process_time() - cpu0
    return result


async def run(spec: Spec) -> Result:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     skip_auto_headers=("User-Agent",)) as session:
        if spec.warmup:
            await _batch(session, spec, spec.warmup)
        print("warm", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit("bench.load: parent did not say go")
        return await _batch(session, spec, spec.requests)


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    spec = Spec(**json.loads(args[0]))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    out: dict[str, Any] = asdict(result)
    # The event loop may leave stdout non-blocking: a result line over the pipe's 64 KiB would then be cut.
    os.set_blocking(sys.stdout.fileno(), True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
