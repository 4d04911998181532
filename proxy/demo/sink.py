"""Posts the demo's factory events in batches from a background thread, so agents never wait on it and the
metrics API's per-key rate limit is never approached (one request per `interval` at most)."""

from __future__ import annotations

import threading
from typing import Any

from proxy.demo.api import ApiError, SpendgateApi

MAX_BATCH = 1000  # POST /api/factory/events takes at most this many per request


class EventSink:
    """`add` queues events; a thread posts what is queued every `interval` seconds; `close` posts the rest.

    A refused batch (HTTP 4xx) is not retried: it is counted in `refused` and its error kept in `errors`."""

    def __init__(self, api: SpendgateApi, interval: float = 0.5) -> None:
        self._api = api
        self._interval = interval
        self._queue: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-events", daemon=True)
        self.posted = self.accepted = self.duplicates = self.refused = 0
        self.errors: list[str] = []

    def start(self) -> EventSink:
        self._thread.start()
        return self

    def add(self, *events: dict[str, Any]) -> None:
        with self._lock:
            self._queue.extend(events)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._flush()

    def _flush(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            if not batch:
                return
            try:
                answer = self._api.post("/api/factory/events", {"events": batch})
            except ApiError as err:
                self.refused += len(batch)
                self.errors.append(str(err))
                continue
            self.posted += len(batch)
            self.accepted += int(answer.get("accepted", 0))
            self.duplicates += int(answer.get("duplicates", 0))
