"""The memory idempotency store: one owner per key, leases that lapse, answers that expire, and its bounds."""

from __future__ import annotations

import pytest

from proxy.idempotency_store import (
    Claimed,
    Done,
    InFlight,
    MemoryIdempotencyStore,
    StoredResponse,
    entry_key,
    fingerprint,
    valid_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(body: bytes = b'{"ok":true}') -> StoredResponse:
    return StoredResponse(200, ((b"content-type", b"application/json"),), body)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_one_owner_then_in_flight_then_done(clock: Clock) -> None:
    store = MemoryIdempotencyStore(clock=clock)
    assert await store.claim("k", "fp", "a", 30) == Claimed()
    assert await store.claim("k", "fp", "b", 30) == InFlight("fp")
    assert await store.claim("k", "other", "b", 30) == InFlight("fp")  # the caller compares fingerprints
    assert await store.complete("k", "fp", "a", answer(), 86_400)
    assert await store.claim("k", "fp", "b", 30) == Done("fp", answer())
    assert await store.claim("k", "other", "b", 30) == Done("fp", None)  # another body: the answer is not read


async def test_only_the_owner_renews_releases_or_completes(clock: Clock) -> None:
    store = MemoryIdempotencyStore(clock=clock)
    await store.claim("k", "fp", "a", 30)
    assert not await store.renew("k", "b", 30)
    await store.release("k", "b")
    assert not await store.complete("k", "fp", "b", answer(), 60)
    assert await store.claim("k", "fp", "c", 30) == InFlight("fp")
    await store.release("k", "a")
    assert await store.claim("k", "fp", "c", 30) == Claimed()  # freed: the retry runs the call


async def test_a_lease_lapses_unless_renewed(clock: Clock) -> None:
    store = MemoryIdempotencyStore(clock=clock)
    await store.claim("k", "fp", "a", 30)
    clock.now += 20
    assert await store.renew("k", "a", 30)
    clock.now += 20  # 40 s after the claim, 20 after the renewal
    assert await store.claim("k", "fp", "b", 30) == InFlight("fp")
    clock.now += 11  # the owner died: nobody renewed
    assert await store.claim("k", "fp", "b", 30) == Claimed()
    assert not await store.renew("k", "a", 30)
    assert not await store.complete("k", "fp", "a", answer(), 60)  # the new owner holds the key


async def test_an_owner_whose_lease_lapsed_unclaimed_may_still_store(clock: Clock) -> None:
    store = MemoryIdempotencyStore(clock=clock)
    await store.claim("k", "fp", "a", 30)
    clock.now += 31
    assert await store.complete("k", "fp", "a", answer(), 60)
    assert await store.claim("k", "fp", "b", 30) == Done("fp", answer())


async def test_answers_expire_after_their_ttl(clock: Clock) -> None:
    store = MemoryIdempotencyStore(clock=clock)
    await store.claim("k", "fp", "a", 30)
    await store.complete("k", "fp", "a", answer(), 86_400)
    clock.now += 86_399
    assert isinstance(await store.claim("k", "fp", "b", 30), Done)
    clock.now += 2
    assert await store.claim("k", "fp", "b", 30) == Claimed()
    assert store.bytes == 0


async def test_the_sweep_drops_expired_answers_nobody_asks_for(clock: Clock) -> None:
    store = MemoryIdempotencyStore(clock=clock, sweep_every_s=60)
    for i in range(5):
        await store.claim(f"k{i}", "fp", "a", 30)
        await store.complete(f"k{i}", "fp", "a", answer(), 100)
    assert len(store) == 5 and store.bytes == 5 * answer().size
    clock.now += 101
    await store.claim("fresh", "fp", "a", 30)
    assert len(store) == 1 and store.bytes == 0


async def test_an_answer_over_the_per_response_cap_is_not_stored(clock: Clock) -> None:
    store = MemoryIdempotencyStore(clock=clock, max_response_bytes=100)
    await store.claim("k", "fp", "a", 30)
    assert not await store.complete("k", "fp", "a", answer(b"x" * 200), 60)
    assert await store.claim("k", "fp", "b", 30) == InFlight("fp")  # the caller releases it then
    await store.release("k", "a")
    assert await store.claim("k", "fp", "b", 30) == Claimed()


async def test_total_bytes_are_bounded_least_recently_replayed_first(clock: Clock) -> None:
    one = answer(b"x" * 1000)
    store = MemoryIdempotencyStore(clock=clock, max_bytes=3 * one.size)
    for key in ("a", "b", "c"):
        await store.claim(key, "fp", "o", 30)
        await store.complete(key, "fp", "o", one, 60)
    assert isinstance(await store.claim("a", "fp", "x", 30), Done)  # "a" replayed: now the most recent
    await store.claim("d", "fp", "o", 30)
    await store.complete("d", "fp", "o", one, 60)
    assert store.bytes <= store.max_bytes
    assert await store.claim("b", "fp", "x", 30) == Claimed()  # the least recently used went first
    for key in ("a", "c", "d"):
        assert isinstance(await store.claim(key, "fp", "x", 30), Done)


async def test_entries_are_bounded_but_live_leases_are_never_dropped(clock: Clock) -> None:
    store = MemoryIdempotencyStore(clock=clock, max_entries=3)
    for key in ("a", "b", "c"):
        await store.claim(key, "fp", "o", 30)  # three calls in flight
    await store.claim("d", "fp", "o", 30)
    assert len(store) == 4  # over the bound rather than letting a second copy of a running call in
    for key in ("a", "b", "c", "d"):
        assert await store.claim(key, "fp", "x", 30) == InFlight("fp")
    await store.complete("a", "fp", "o", answer(), 60)
    await store.claim("e", "fp", "o", 30)
    assert await store.claim("a", "fp", "x", 30) == Claimed()  # the stored answer was the one to go


def test_keys_are_scoped_by_org_and_key_and_tagged_by_org() -> None:
    one = entry_key("acme", "planner", "abc")
    assert one.startswith("sg:{acme}:idem:")
    assert one != entry_key("acme", "admin", "abc") != entry_key("globex", "planner", "abc")
    assert entry_key("a}b{", "k", "v").startswith("sg:{a%7Db%7B}:")  # braces cannot move the hash slot


def test_fingerprint_covers_endpoint_and_body() -> None:
    assert fingerprint("chat", b"{}") != fingerprint("completions", b"{}")
    assert fingerprint("chat", b'{"a":1}') != fingerprint("chat", b'{"a": 1}')  # the raw bytes, as sent
    assert fingerprint("chat", b"{}") == fingerprint("chat", b"{}")


@pytest.mark.parametrize(("value", "ok"), [
    ("a", True), ("x" * 255, True), ("req 42/retry:1 {ok}", True),
    ("", False), ("x" * 256, False), ("caf\u00e9", False), ("tab\there", False), ("nl\x7f", False),
])
def test_valid_key(value: str, ok: bool) -> None:
    assert valid_key(value) is ok
