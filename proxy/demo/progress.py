"""A plain-text progress bar for the demo on a stream (stderr): redrawn in place on a terminal, one line per
tenth of the way otherwise (logs and CI keep a readable record)."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import TextIO

WIDTH = 28


class Progress:
    def __init__(self, stream: TextIO, *, seconds: float = 0.0, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._seconds = seconds  # the paced length, shown as "elapsed / planned"; 0: as fast as possible
        self._tty = stream.isatty() if tty is None else tty
        self._clock = clock
        self._started = clock()
        self._last_tenth = -1
        self._drawn = 0  # length of the line on screen (terminal), so a shorter one overwrites it whole

    def update(self, done: int, total: int, spend: Decimal, refused: int) -> None:
        fraction = min(1.0, done / total) if total else 1.0
        line = self.line(fraction, done, total, spend, refused)
        if self._tty:
            self._stream.write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
        elif int(fraction * 10) > self._last_tenth:
            self._last_tenth = int(fraction * 10)
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self, done: int, spend: Decimal, refused: int) -> None:
        """The bar at 100 %, then a newline on a terminal so the summary starts on its own line."""
        self.update(done, done, spend, refused)
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()

    def line(self, fraction: float, done: int, total: int, spend: Decimal, refused: int) -> str:
        filled = int(round(fraction * WIDTH))
        bar = "#" * filled + "-" * (WIDTH - filled)
        elapsed = _clock_text(self._clock() - self._started)
        timing = f"{elapsed} / {_clock_text(self._seconds)}" if self._seconds else elapsed
        return (f"[{bar}] {fraction * 100:3.0f}%  {done}/{total} calls  ${spend:.4f}  "
                f"{refused} refused  {timing}")


def _clock_text(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"
