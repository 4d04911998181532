"""Turns measured cells into the Markdown report `make bench` prints: medians per cell, then the CPU ratios."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.procs import BUDGETS_MEMORY, BUDGETS_REDIS, LITELLM, SPENDGATE, machine_info

REFERENCE, SUBJECT = "bare aiohttp", SPENDGATE


@dataclass(slots=True)
class Cell:
    """One measured (target, scenario) repetition; latencies in seconds, CPU in ms per request."""

    scenario: str
    concurrency: int
    target: str
    stream: bool
    requests: int
    rps: float
    latencies: list[float]
    ttfbs: list[float]
    errors: int
    error_samples: list[str] = field(default_factory=list)
    cpu_ms: float | None = None
    rss_mb: float | None = None
    client_cpu_pct: float = 0.0
    aux_cpu_ms: float | None = None  # the redis-server behind the Redis ledger, for that target only


@dataclass(frozen=True, slots=True)
class Overshoot:
    """One cap-overshoot run: `sent` concurrent calls against a proxy whose budget is `cap_usd`."""

    target: str
    budget: str  # what kind of budget enforced it
    cap_usd: float
    sent: int
    ok: int  # answered 200, i.e. forwarded to (and billed by) the upstream
    refused: int  # answered 402 / 429 (the budget said no)
    other: int  # any other status or a transport error
    cost_per_call: float
    detail: str = ""

    @property
    def spend(self) -> float:
        return self.ok * self.cost_per_call


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of unsorted values; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Row:
    """The median over repetitions of one (scenario, concurrency, target)."""

    scenario: str
    concurrency: int
    target: str
    stream: bool
    rps: float
    p50_ms: float
    p99_ms: float
    ttfb_ms: float
    cpu_ms: float | None
    rss_mb: float | None
    errors: int
    client_cpu_pct: float
    aux_cpu_ms: float | None = None


def aggregate(cells: Sequence[Cell]) -> list[Row]:
    groups: dict[tuple[str, int, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.scenario, c.concurrency, c.target), []).append(c)
    rows = []
    for (scenario, conc, target), cs in groups.items():
        cpus = [c.cpu_ms for c in cs if c.cpu_ms is not None]
        rss = [c.rss_mb for c in cs if c.rss_mb is not None]
        aux = [c.aux_cpu_ms for c in cs if c.aux_cpu_ms is not None]
        rows.append(Row(
            scenario=scenario, concurrency=conc, target=target, stream=cs[0].stream,
            rps=statistics.median(c.rps for c in cs),
            p50_ms=1000 * statistics.median(percentile(c.latencies, 50) for c in cs),
            p99_ms=1000 * statistics.median(percentile(c.latencies, 99) for c in cs),
            ttfb_ms=1000 * statistics.median(percentile(c.ttfbs, 50) for c in cs),
            cpu_ms=statistics.median(cpus) if cpus else None, rss_mb=max(rss) if rss else None,
            errors=sum(c.errors for c in cs), client_cpu_pct=statistics.median(c.client_cpu_pct for c in cs),
            aux_cpu_ms=statistics.median(aux) if aux else None,
        ))
    order = {"direct": 0, "bare aiohttp": 1, "bare httpx": 2, SPENDGATE: 3, BUDGETS_MEMORY: 4, BUDGETS_REDIS: 5,
             LITELLM: 6}
    rows.sort(key=lambda r: (r.stream, r.concurrency, order.get(r.target, 9)))
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in values) / len(values))


def litellm_section(rows: Sequence[Row], target: float) -> list[str]:
    """spendgate (each variant) against LiteLLM's proxy: CPU per call and LiteLLM / spendgate."""
    by_key = {(r.scenario, r.concurrency, r.target): r for r in rows}
    if not any(r.target == LITELLM for r in rows):
        return []
    subjects = [(SPENDGATE, "spendgate"), (BUDGETS_MEMORY, "budgets (memory)"), (BUDGETS_REDIS, "budgets (redis)")]
    out = ["", f"## CPU per call: LiteLLM's proxy / spendgate (target: spendgate at least {target:g}x less)", "",
           "| scenario | concurrency | LiteLLM CPU ms/req | LiteLLM p50 ms | LiteLLM TTFB p50 ms | LiteLLM peak RSS MB "
           "| spendgate CPU ms/req | LiteLLM / spendgate | LiteLLM / budgets (memory) | LiteLLM / budgets (redis) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ratios: dict[str, list[float]] = {name: [] for name, _ in subjects}
    for r in rows:
        if r.target != LITELLM or not r.cpu_ms:
            continue
        cols = []
        for name, _ in subjects:
            sub = by_key.get((r.scenario, r.concurrency, name))
            if sub is None or not sub.cpu_ms:
                cols.append("n/a")
                continue
            ratio = r.cpu_ms / sub.cpu_ms
            ratios[name].append(ratio)
            cols.append(f"{ratio:.1f}x {'PASS' if ratio >= target else 'FAIL'}")
        sg = by_key.get((r.scenario, r.concurrency, SPENDGATE))
        out.append(f"| {r.scenario} | {r.concurrency} | {r.cpu_ms:.3f} | {r.p50_ms:.2f} | "
                   f"{_fmt(r.ttfb_ms) if r.stream else '-'} | {_fmt(r.rss_mb, 1)} | "
                   f"{_fmt(sg.cpu_ms, 3) if sg else 'n/a'} | {' | '.join(cols)} |")
    for name, label in subjects:
        rs = ratios[name]
        if rs:
            overall = _geomean(rs)
            out += ["", f"**LiteLLM / {label}, overall (geometric mean of {len(rs)} scenarios): {overall:.1f}x -> "
                    f"{'PASS' if overall >= target else 'FAIL'}** (target >= {target:g}x)"]
    return out


def overshoot_section(runs: Sequence[Overshoot]) -> list[str]:
    if not runs:
        return []
    out = ["", "## Cap overshoot: concurrent calls against a small cap (target: spend / cap <= 1.00)", "",
           "| proxy | budget | cap USD | calls sent at once | answered 200 | refused | other | spend USD "
           "| spend / cap | verdict |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in runs:
        ratio = o.spend / o.cap_usd if o.cap_usd else 0.0
        out.append(f"| {o.target} | {o.budget} | {o.cap_usd:.6f} | {o.sent} | {o.ok} | {o.refused} | {o.other} | "
                   f"{o.spend:.6f} | {ratio:.2f} | {'PASS' if ratio <= 1.0 and not o.other else 'FAIL'} |")
    out.append("")
    out.append(f"Spend = calls answered 200 x ${runs[0].cost_per_call:.6f} (each call: 200 prompt + 50 output tokens "
               "at gpt-4o-mini prices, the same in every proxy's config): what the upstream would bill.")
    out += [f"- {o.target}: {o.detail}" for o in runs if o.detail]
    return out


def render(cells: Sequence[Cell], *, reps: int, target: float, target_redis: float,
           notes: Sequence[str] = (), litellm_target: float = 5.0,
           overshoot: Sequence[Overshoot] = ()) -> tuple[str, int]:
    """The whole report as Markdown, and the total count of failed requests."""
    rows = aggregate(cells)
    cores = os.cpu_count() or 0
    out = ["# spendgate benchmark", ""]
    out += [f"- {line}" for line in machine_info()]
    out.append(f"- The load generator, the fake upstream and the proxy under test share these {cores} cores, so "
               "req/s and latency are bounded by contention; proxy CPU ms/req is the comparable figure.")
    out.append(f"- Each cell is the median of {reps} repetition(s); targets interleaved per scenario. "
               "Requests per cell: " + ", ".join(sorted({f'{c.scenario} c={c.concurrency}: {c.requests}'
                                                        for c in cells})))
    out += ["", "| scenario | concurrency | target | req/s | p50 ms | p99 ms | TTFB p50 ms | proxy CPU ms/req "
            "| peak RSS MB | errors | client CPU % |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.scenario} | {r.concurrency} | {r.target} | {r.rps:.0f} | {r.p50_ms:.2f} | "
                   f"{r.p99_ms:.2f} | {_fmt(r.ttfb_ms) if r.stream else '-'} | {_fmt(r.cpu_ms, 3)} | "
                   f"{_fmt(r.rss_mb, 1)} | {r.errors} | {r.client_cpu_pct:.0f} |")
    by_key = {(r.scenario, r.concurrency, r.target): r for r in rows}
    subjects = [(SUBJECT, "spendgate", target), (BUDGETS_MEMORY, "budgets (memory)", target),
                (BUDGETS_REDIS, "budgets (redis)", target_redis)]
    out += ["", "## CPU per call / bare aiohttp (targets: " +
            ", ".join(f"{label} <= {t}x" for _, label, t in subjects) + ")", "",
            "| scenario | concurrency | bare aiohttp CPU ms/req | spendgate CPU ms/req | spendgate / bare aiohttp "
            "| verdict | budgets (memory) / bare aiohttp | budgets (redis) / bare aiohttp "
            "| redis-server CPU ms/req | bare httpx / bare aiohttp |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in subjects}
    for r in rows:
        if r.target != REFERENCE or not r.cpu_ms:
            continue
        ref = r.cpu_ms
        cols = []
        for name, _, limit in subjects:
            sub = by_key.get((r.scenario, r.concurrency, name))
            if sub is None or sub.cpu_ms is None:
                cols.append("n/a")
                continue
            ratio = sub.cpu_ms / ref
            ratios[name].append(ratio)
            cols.append(f"{ratio:.2f}x {'PASS' if ratio <= limit else 'FAIL'}")
        bare = by_key.get((r.scenario, r.concurrency, SUBJECT))
        redis = by_key.get((r.scenario, r.concurrency, BUDGETS_REDIS))
        httpx = by_key.get((r.scenario, r.concurrency, "bare httpx"))
        hx = f"{httpx.cpu_ms / ref:.2f}x" if httpx and httpx.cpu_ms is not None else "n/a"
        sg_ms = _fmt(bare.cpu_ms, 3) if bare else "n/a"
        sg_ratio, sg_verdict = cols[0].split(" ") if cols[0] != "n/a" else ("n/a", "")
        out.append(f"| {r.scenario} | {r.concurrency} | {ref:.3f} | {sg_ms} | {sg_ratio} | {sg_verdict} | "
                   f"{cols[1]} | {cols[2]} | {_fmt(redis.aux_cpu_ms, 3) if redis else 'n/a'} | {hx} |")
    for name, label, limit in subjects:
        rs = ratios[name]
        if rs:
            overall = math.exp(sum(math.log(x) for x in rs) / len(rs))
            out += ["", f"**{label} / bare aiohttp, overall (geometric mean of {len(rs)} scenarios): "
                    f"{overall:.2f}x -> {'PASS' if overall <= limit else 'FAIL'}** (target <= {limit}x)"]
    out += ["", "redis-server CPU is its own process, beside (not counted in) the Redis variant's ratio."]
    out += litellm_section(rows, litellm_target)
    out += overshoot_section(overshoot)
    errors = sum(r.errors for r in rows)
    if errors:
        out += ["", f"## Errors: {errors} failed requests"]
        seen: set[str] = set()
        for c in cells:
            for sample in c.error_samples:
                if sample not in seen:
                    seen.add(sample)
                    out.append(f"- {c.target} ({c.scenario} c={c.concurrency}): {sample}")
    if notes:
        out += ["", *(f"- {n}" for n in notes)]
    return "\n".join(out) + "\n", errors
