"""The budget ledger: atomic counters with reservations (`Ledger` protocol; memory and Redis backends)."""

from __future__ import annotations

from policies.ledger.base import CounterSpec, CounterState, Ledger, ReserveResult
from policies.ledger.memory import MemoryLedger
from policies.ledger.redis import RedisLedger

__all__ = ["CounterSpec", "CounterState", "Ledger", "MemoryLedger", "RedisLedger", "ReserveResult"]
