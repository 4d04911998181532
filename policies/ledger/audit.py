"""What an audit of one ledger counter reads, and what a repair of it did (the Redis ledger's `audit` and
`repair`, used by `spendgate reconcile`). Amounts are int nano-USD."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CounterAudit:
    """One counter as stored, read without changing anything.

    `version` is bumped by every write of `spent` (settle, seed, repair): a compare-and-set keyed by it fails
    if anything booked spend in between. `settled_age_ms` is the time since the last settle (None: never).
    Live holds are reservations whose expiry has not passed; stale ones expired (a crashed or killed proxy's
    calls) and only wait for the next write to be purged. `unbacked_nano` is reserved money no hold backs.
    """

    key: str
    exists: bool
    spent_nano: int
    reserved_nano: int
    version: int
    settled_age_ms: int | None
    live_nano: int
    live_holds: int
    stale_nano: int
    stale_holds: int

    @property
    def unbacked_nano(self) -> int:
        return self.reserved_nano - self.live_nano - self.stale_nano

    @property
    def reserved_drift_nano(self) -> int:
        """What a repair takes off `reserved` (stale holds and unbacked money)."""
        return self.reserved_nano - self.live_nano

    @classmethod
    def from_reply(cls, key: str, reply: Sequence[Any]) -> CounterAudit:
        exists, spent, reserved, version, age, live, live_n, stale, stale_n = (int(v) for v in reply)
        return cls(key=key, exists=bool(exists), spent_nano=spent, reserved_nano=reserved, version=version,
                   settled_age_ms=None if age < 0 else age, live_nano=live, live_holds=live_n,
                   stale_nano=stale, stale_holds=stale_n)


@dataclass(frozen=True, slots=True)
class CounterRepair:
    """After a repair: `applied` says whether `spent` was set (False: the version had moved on)."""

    key: str
    applied: bool
    spent_nano: int
    reserved_nano: int
    version: int

    @classmethod
    def from_reply(cls, key: str, reply: Sequence[Any]) -> CounterRepair:
        applied, spent, reserved, version = (int(v) for v in reply)
        return cls(key=key, applied=bool(applied), spent_nano=spent, reserved_nano=reserved, version=version)
