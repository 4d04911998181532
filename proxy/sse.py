"""Server-sent events: split a byte stream into whole events without copying more than needed."""

from __future__ import annotations

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
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    if lf < 0 and crlf < 0:
        return 0
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def split_events(block: bytes) -> list[bytes]:
    """The raw events (each with its trailing blank line) of a block of complete events."""
    if b"\r\n" in block:
        block = block.replace(b"\r\n", b"\n")
    parts = block.split(b"\n\n")
    return [p + b"\n\n" for p in parts if p.strip()]


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
