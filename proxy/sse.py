"""Server-sent events: split a byte stream into whole events without copying more than needed."""

from __future__ import annotations

import re
from collections.abc import Iterator


class EventSplitter:
    """Feeds raw bytes, hands back the prefix made of complete events (ending in a blank line).

    Partial events stay buffered: a client gains nothing from half an event, and holding it lets the
    meter see (and if needed drop) whole events only. Both LF and CRLF line endings are understood.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._buf + chunk if self._buf else chunk
        cut = _last_boundary(data)
        if cut == 0:
            self._buf = data
            return b""
        self._buf = data[cut:]
        return data[:cut]

    def tail(self) -> bytes:
        """Whatever is buffered after the last complete event (a stream cut mid-event)."""
        rest, self._buf = self._buf, b""
        return rest


def _last_boundary(data: bytes) -> int:
    """End of the last blank line: a line ending followed by an empty line (`\n\n`, `\r\n\r\n`, or mixed)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 3 if crlf >= 0 else 0)


_BOUNDARY = re.compile(rb"\n\r?\n")


def split_events(block: bytes) -> list[bytes]:
    """The raw events (each with its trailing blank line) of a block of complete events.

    The bytes are the ones received (CRLF stays CRLF): joined, the events give back the block, so a relay that
    drops one event leaves every other byte as the provider sent it. Extra blank lines stay with the event
    before them; a block of only whitespace has no events.
    """
    events: list[bytes] = []
    pending = b""
    start = 0
    ends = [m.end() for m in _BOUNDARY.finditer(block)]
    if not ends or ends[-1] != len(block):
        ends.append(len(block))  # an unterminated last event (the tail of a stream cut short)
    for end in ends:
        piece = block[start:end]
        start = end
        if piece.strip():
            events.append(pending + piece)
            pending = b""
        elif events:
            events[-1] += piece
        else:
            pending += piece
    return events


def parse_event(raw: bytes) -> tuple[str | None, bytes]:
    """(event name or None, data payload) of one raw event; multi-line data is joined with LF."""
    name: str | None = None
    data: list[bytes] = []
    for line in raw.splitlines():
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
    return name, b"\n".join(data)


def iter_events(block: bytes) -> Iterator[tuple[bytes, str | None, bytes]]:
    """(raw, event name, data) for each event of a block of complete events."""
    for raw in split_events(block):
        name, data = parse_event(raw)
        yield raw, name, data


def comment(text: str) -> bytes:
    """An SSE comment line: ignored by every client, visible to a human reading the stream."""
    return b": " + text.encode("utf-8") + b"\n\n"
