"""Requests per minute per key for the metrics APIs: a sliding window approximated from two fixed windows
(the previous minute's count weighted by how much of it still overlaps), in process memory: the cap holds
per replica. Answers how long to wait when a request is over."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._windows: dict[str, tuple[int, int, int]] = {}  # key -> (minute, count, previous count)

    def check(self, key: str) -> float | None:
        """Count one request for `key`; None when allowed, else the seconds to wait (Retry-After)."""
        now = self._clock()
        minute = int(now // 60)
        current_minute, count, previous = self._windows.get(key, (minute, 0, 0))
        if current_minute != minute:
            previous = count if current_minute == minute - 1 else 0
            count = 0
        overlap = 1.0 - (now % 60) / 60.0  # share of the previous minute still inside the sliding window
        if previous * overlap + count + 1 > self.per_minute:
            self._windows[key] = (minute, count, previous)
            if count + 1 > self.per_minute:  # over on this minute alone: wait for the next one
                return max(1.0, 60.0 - now % 60)
            # Wait until enough of the previous minute has slid out of the window.
            needed = (previous + count + 1 - self.per_minute) / max(previous, 1)
            return max(1.0, math.ceil(needed * 60.0 - (now % 60)))
        self._windows[key] = (minute, count + 1, previous)
        if len(self._windows) > 100_000:  # keys are bounded by config; this only guards memory
            self._windows = {k: v for k, v in self._windows.items() if v[0] >= minute - 1}
        return None
