"""EventSplitter hands back whole events only, whatever the chunking; split / parse keep the bytes as sent."""

from __future__ import annotations

import random

import pytest

from proxy.sse import EventSplitter, comment, iter_events, parse_event, split_events

EVENTS = [
    b'data: {"id":"c1","choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b": keep-alive\n\n",
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":5}}\n\n',
    b"data: line one\ndata: line two\n\n",
    b"data: [DONE]\n\n",
]
STREAM = b"".join(EVENTS)
CRLF_EVENTS = [e.replace(b"\n", b"\r\n") for e in EVENTS]
CRLF_STREAM = b"".join(CRLF_EVENTS)


def feed_all(chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    """Every non-empty block feed() returned, and the tail."""
    splitter = EventSplitter()
    blocks = [out for chunk in chunks if (out := splitter.feed(chunk))]
    return blocks, splitter.tail()


def random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        size = rng.randint(1, 17)
        chunks.append(data[i:i + size])
        i += size
    return chunks


def events_of(blocks: list[bytes]) -> list[bytes]:
    return [event for block in blocks for event in split_events(block)]


@pytest.mark.parametrize("stream, expected", [(STREAM, EVENTS), (CRLF_STREAM, CRLF_EVENTS)], ids=["lf", "crlf"])
def test_one_byte_at_a_time_gives_exactly_the_whole_events(stream: bytes, expected: list[bytes]) -> None:
    blocks, tail = feed_all([stream[i:i + 1] for i in range(len(stream))])
    assert blocks == expected  # each event comes out the moment its blank line is complete, never earlier
    assert tail == b""


@pytest.mark.parametrize("stream, expected", [(STREAM, EVENTS), (CRLF_STREAM, CRLF_EVENTS)], ids=["lf", "crlf"])
def test_every_single_cut_point_gives_whole_events(stream: bytes, expected: list[bytes]) -> None:
    for cut in range(len(stream) + 1):
        blocks, tail = feed_all([stream[:cut], stream[cut:]])
        assert b"".join(blocks) == stream and tail == b"", cut
        assert events_of(blocks) == expected, cut
        for block in blocks:
            assert block.endswith((b"\n\n", b"\r\n\r\n")), (cut, block)


@pytest.mark.parametrize("stream, expected", [(STREAM, EVENTS), (CRLF_STREAM, CRLF_EVENTS)], ids=["lf", "crlf"])
def test_random_chunkings_give_whole_events(stream: bytes, expected: list[bytes]) -> None:
    rng = random.Random(20240501)
    for _ in range(300):
        blocks, tail = feed_all(random_chunks(stream, rng))
        assert b"".join(blocks) == stream and tail == b""
        assert events_of(blocks) == expected


def test_a_chunk_holding_several_events_comes_back_in_one_block() -> None:
    splitter = EventSplitter()
    assert splitter.feed(STREAM) == STREAM
    assert splitter.feed(EVENTS[0] + b"data: par") == EVENTS[0]
    assert splitter.feed(b"tial\n") == b""
    assert splitter.feed(b"\n") == b"data: partial\n\n"


def test_tail_returns_the_unfinished_event_once() -> None:
    splitter = EventSplitter()
    assert splitter.feed(EVENTS[0] + b"data: cut mid-ev") == EVENTS[0]
    assert splitter.tail() == b"data: cut mid-ev"
    assert splitter.tail() == b""
    assert splitter.feed(b"data: x\n\n") == b"data: x\n\n"  # nothing of the old tail is left behind


def test_mixed_line_endings_still_end_an_event() -> None:
    for raw in (b"data: a\r\n\n", b"data: a\n\r\n"):
        splitter = EventSplitter()
        assert splitter.feed(raw) == raw
        assert split_events(raw) == [raw]
        assert parse_event(raw) == (None, b"a")


def test_split_events_keeps_the_bytes_as_sent() -> None:
    assert split_events(STREAM) == EVENTS
    assert split_events(CRLF_STREAM) == CRLF_EVENTS
    assert b"".join(split_events(CRLF_STREAM)) == CRLF_STREAM


def test_split_events_keeps_extra_blank_lines_with_the_event_before() -> None:
    block = b"data: a\n\n\n\ndata: b\n\n\n"
    assert split_events(block) == [b"data: a\n\n\n\n", b"data: b\n\n\n"]
    assert b"".join(split_events(block)) == block
    assert split_events(b"\n\ndata: a\n\n") == [b"\n\ndata: a\n\n"]
    assert split_events(b"") == [] and split_events(b"\n\n\r\n") == []


def test_split_events_returns_an_unterminated_last_event() -> None:
    assert split_events(b"data: a\n\ndata: [DONE]\n") == [b"data: a\n\n", b"data: [DONE]\n"]


def test_parse_event_joins_multi_line_data_with_lf() -> None:
    raw = b"event: update\ndata: {\"a\":\ndata:  1}\nid: 7\nretry: 10\n\n"
    assert parse_event(raw) == ("update", b'{"a":\n 1}')  # only the one space after the colon is dropped
    assert parse_event(raw.replace(b"\n", b"\r\n")) == ("update", b'{"a":\n 1}')


def test_parse_event_without_space_comment_only_and_no_event_name() -> None:
    assert parse_event(b"data:x\n\n") == (None, b"x")
    assert parse_event(b": just a comment\n\n") == (None, b"")
    assert parse_event(b"data: \n\n") == (None, b"")


def test_iter_events_yields_raw_name_and_data() -> None:
    assert list(iter_events(EVENTS[2] + EVENTS[4])) == [
        (EVENTS[2], "message_delta", b'{"type":"message_delta","usage":{"output_tokens":5}}'),
        (EVENTS[4], None, b"[DONE]"),
    ]


def test_comment_is_an_sse_comment_event() -> None:
    raw = comment("spendgate cost_usd=0.01")
    assert raw == b": spendgate cost_usd=0.01\n\n"
    assert parse_event(raw) == (None, b"")
    assert split_events(raw) == [raw]
