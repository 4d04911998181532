"""Spreads the demo's calls evenly over the requested minutes, so a dashboard's live ticker moves while it runs.

The total is an estimate (loops stop when a budget refuses them, issues stop early); `adjust` corrects it as
visits end, and later calls are rescheduled on the corrected total."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Pacer:
    """Call `wait()` before each call: the k-th call (any thread) starts no earlier than k/total of `seconds`
    after `start()`. `seconds` 0 means as fast as possible. Setting `stop` cuts every wait short."""

    def __init__(self, total: int, seconds: float, stop: threading.Event,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._total = max(1, total)
        self._seconds = seconds
        self._stop = stop
        self._clock = clock
        self._issued = 0
        self._started = clock()
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        with self._lock:
            return max(self._total, self._issued)

    def start(self) -> None:
        with self._lock:
            self._started = self._clock()

    def due(self) -> float:
        """Take the next slot; returns when it is due (on `clock`'s scale)."""
        with self._lock:
            slot = self._issued
            self._issued += 1
            return self._started + self._seconds * slot / max(self._total, self._issued)

    def wait(self) -> None:
        if self._seconds <= 0:
            with self._lock:
                self._issued += 1
            return
        delay = self.due() - self._clock()
        if delay > 0:
            self._stop.wait(delay)

    def adjust(self, delta: int) -> None:
        """A visit made `delta` more calls than expected (negative: fewer)."""
        with self._lock:
            self._total = max(1, self._total + delta)
