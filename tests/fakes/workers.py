"""Client threads that keep calling a proxy until stopped (load for kill, drain and outage tests)."""

from __future__ import annotations

import threading


class Workers:
    """`threads` threads each running `self.work(i)` until `stop()`; subclasses implement `work` and check
    `self.stopped` between calls. A context manager: started on enter, stopped (and joined) on exit."""

    join_timeout_s = 30.0

    def __init__(self, threads: int) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.work, args=(i,), daemon=True) for i in range(threads)]

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def work(self, index: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.join_timeout_s)

    def __enter__(self) -> Workers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
