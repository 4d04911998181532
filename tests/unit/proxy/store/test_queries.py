"""list_calls / get_call: DESIGN §12 shape, filters, org scoping, pins, keyset pagination."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.store.db import Store
from proxy.store.queries import CallFilter, InvalidCursor, encode_cursor, get_call, list_calls
from proxy.store.records import CallRecord
from tests.unit.proxy.store.conftest import RecordFactory

CALL_FIELDS = {
    "request_id", "started_at", "ended_at", "duration_ms", "status", "http_status", "org", "project",
    "agent", "station", "run", "issue", "actor", "retry_of", "endpoint", "provider", "model",
    "input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens",
    "cost_usd", "usage_source", "cost_nano", "upstream_model", "enforcement",
}  # fmt: skip


@pytest.fixture
async def seeded(store: Store, make_record: RecordFactory) -> list[CallRecord]:
    records = [
        make_record(org="acme", run="r1", issue="I-1", agent="planner", station="dev", project="web"),
        make_record(org="acme", run="r1", issue="I-2", agent="coder", station="qa", project="web"),
        make_record(org="acme", run="r2", issue="I-1", agent="planner", station="dev", project="api"),
        make_record(org="globex", run="r1", issue="I-1", agent="planner", station="dev", project="web"),
        make_record(org="acme", run="r2", agent="coder", station="dev", project="web", retry_of="req-00000"),
    ]
    await store.insert_calls(records)
    return records


def _ids(calls: list[dict[str, object]]) -> list[str]:
    return [str(c["request_id"]) for c in calls]


async def test_call_shape_times_and_money(store: Store, make_record: RecordFactory) -> None:
    rec = make_record(cost_nano=1_234_567_891, cached_input_tokens=10, reasoning_tokens=5, actor="human")
    await store.insert_calls([rec])
    call = await get_call(store, org="acme", request_id=rec.request_id)
    assert call is not None and set(call) == CALL_FIELDS
    assert call["cost_usd"] == 1.234567891 and call["cost_nano"] == 1_234_567_891
    assert call["started_at"] == "2026-05-01T12:00:00Z" and call["ended_at"] == "2026-05-01T12:00:01.250000Z"
    assert call["duration_ms"] == 1250 and call["actor"] == "human" and call["usage_source"] == "provider"
    assert call["enforcement"] is None  # "bypassed" only when the ledger was down under on_unavailable: allow
    assert datetime.fromisoformat(str(call["started_at"])) == rec.started_at


async def test_newest_first_and_org_scoping(store: Store, seeded: list[CallRecord]) -> None:
    calls, cursor = await list_calls(store, org="acme", filters=CallFilter())
    assert _ids(calls) == [r.request_id for r in reversed(seeded) if r.org == "acme"]
    assert cursor is None
    globex, _ = await list_calls(store, org="globex", filters=CallFilter())
    assert {c["org"] for c in globex} == {"globex"}
    everyone, _ = await list_calls(store, org=None, filters=CallFilter())
    assert len(everyone) == 5
    assert await list_calls(store, org="initech", filters=CallFilter()) == ([], None)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (CallFilter(run="r1"), [1, 0]),
        (CallFilter(issue="I-1"), [2, 0]),
        (CallFilter(agent="coder", station="dev"), [4]),
        (CallFilter(project="api"), [2]),
        (CallFilter(run="r2", project="web"), [4]),
        (CallFilter(run="nope"), []),
    ],
)
async def test_filters(
    store: Store, seeded: list[CallRecord], filters: CallFilter, expected: list[int]
) -> None:
    calls, _ = await list_calls(store, org="acme", filters=filters)
    assert _ids(calls) == [seeded[i].request_id for i in expected]


async def test_pins_narrow_lists_and_single_reads(store: Store, seeded: list[CallRecord]) -> None:
    pins = {"project": "web", "agent": "planner"}
    calls, _ = await list_calls(store, org="acme", filters=CallFilter(), pins=pins)
    assert _ids(calls) == [seeded[0].request_id]
    calls, _ = await list_calls(store, org="acme", filters=CallFilter(agent="coder"), pins=pins)
    assert calls == []  # a filter can never widen a pin
    assert await get_call(store, org="acme", request_id=seeded[2].request_id, pins=pins) is None
    assert await get_call(store, org="acme", request_id=seeded[0].request_id, pins=pins) is not None
    with pytest.raises(ValueError, match="cannot pin"):
        await list_calls(store, org="acme", filters=CallFilter(), pins={"cost_nano; --": "1"})


async def test_get_call_is_scoped_by_org(store: Store, seeded: list[CallRecord]) -> None:
    globex_id = seeded[3].request_id
    assert await get_call(store, org="acme", request_id=globex_id) is None
    found = await get_call(store, org="globex", request_id=globex_id)
    assert found is not None and found["org"] == "globex"
    assert await get_call(store, org=None, request_id=globex_id) == found
    assert await get_call(store, org="acme", request_id="missing") is None


async def test_cursor_pagination_covers_every_row_once(store: Store, make_record: RecordFactory) -> None:
    same_time = datetime(2026, 5, 2, tzinfo=UTC)
    # Ties on started_at are broken by request_id, so no row is skipped or repeated at a page edge.
    records = [make_record() for _ in range(23)] + [make_record(started_at=same_time) for _ in range(9)]
    records.append(make_record(org="globex"))
    await store.insert_calls(records)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        calls, cursor = await list_calls(store, org="acme", filters=CallFilter(), limit=5, cursor=cursor)
        seen += _ids(calls)
        pages += 1
        if cursor is None:
            break
    acme = [r for r in records if r.org == "acme"]
    expected = sorted(acme, key=lambda r: (r.started_at, r.request_id), reverse=True)
    assert seen == [r.request_id for r in expected] and pages == 7


async def test_limit_is_clamped_and_bad_cursors_refused(store: Store, seeded: list[CallRecord]) -> None:
    calls, cursor = await list_calls(store, org="acme", filters=CallFilter(), limit=0)
    assert len(calls) == 1 and cursor is not None
    calls, _ = await list_calls(store, org="acme", filters=CallFilter(), limit=10**9)
    assert len(calls) == 4
    for bad in ("", "not-base64!", encode_cursor(datetime.now(UTC), "x")[:-3], "W10"):
        with pytest.raises(InvalidCursor):
            await list_calls(store, org="acme", filters=CallFilter(), cursor=bad)
