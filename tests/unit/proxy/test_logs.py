"""The log sink: one JSON object per line, and no registered secret or bearer token in any part of it."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import logs
from proxy.logs import JsonFormatter, Redactor

SECRET = "sk-proj-SuperSecret123"


@pytest.fixture
def sink() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing through the Redactor and JsonFormatter into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor([SECRET, "short"]))
    logger = logging.getLogger(f"spendgate.test.{id(buffer)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    yield logger, buffer
    logger.handlers.clear()


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    text = buffer.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_each_record_is_one_json_object_per_line(sink: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = sink
    logger.info("first\nwith a newline", extra={"request_id": "req_1", "status": 200})
    logger.warning("second %s", "arg")
    first, second = lines(buffer)
    assert set(first) == {"ts", "level", "logger", "msg", "request_id", "status"}
    assert (first["level"], first["logger"], first["msg"]) == ("info", logger.name, "first\nwith a newline")
    assert (first["request_id"], first["status"]) == ("req_1", 200)
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert (second["level"], second["msg"]) == ("warning", "second arg")


def test_a_registered_secret_is_removed_from_message_and_args(sink: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = sink
    logger.error(f"upstream said {SECRET}")
    logger.error("calling with %s and %r", SECRET, {"key": SECRET})
    text = buffer.getvalue()
    assert SECRET not in text
    assert [entry["msg"] for entry in lines(buffer)] == [
        "upstream said [redacted]", "calling with [redacted] and {'key': '[redacted]'}"]


def test_short_strings_are_not_treated_as_secrets(sink: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = sink
    logger.info("a short word")  # "short" is under 6 characters: redacting it would garble every line
    assert lines(buffer)[0]["msg"] == "a short word"


def test_a_secret_in_exception_text_is_removed(sink: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = sink
    try:
        raise RuntimeError(f"401 from provider for key {SECRET}")
    except RuntimeError:
        logger.exception("call failed")
    (entry,) = lines(buffer)
    assert SECRET not in buffer.getvalue()
    assert "RuntimeError: 401 from provider for key [redacted]" in entry["exc"]
    assert entry["msg"] == "call failed"


def test_secrets_in_extra_fields_are_removed_even_when_nested(sink: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = sink
    logger.info("upstream call", extra={
        "url": f"https://api.example.com/v1?key={SECRET}",
        "headers": {"Authorization": "Bearer sg-abcdefgh12345", "x-api-key": "any-value-at-all", "accept": "*/*"},
        "attempts": [SECRET, 2],
        "error": ValueError(SECRET),
    })
    (entry,) = lines(buffer)
    assert SECRET not in buffer.getvalue() and "sg-abcdefgh12345" not in buffer.getvalue()
    assert "any-value-at-all" not in buffer.getvalue()
    assert entry["url"] == "https://api.example.com/v1?key=[redacted]"
    assert entry["headers"] == {"Authorization": "[redacted]", "x-api-key": "[redacted]", "accept": "*/*"}
    assert entry["attempts"] == ["[redacted]", 2]
    assert entry["error"] == "[redacted]"


@pytest.mark.parametrize("text, expected", [
    ("Authorization: Bearer sg-abcdefgh12345", "Authorization: Bearer [redacted]"),
    ("bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "bearer [redacted]"),
    ('{"x-api-key": "sk-ant-api03-abcdefgh"}', '{"x-api-key": "[redacted]"}'),
    ("api_key=sk-live-12345678", "api_key=[redacted]"),
    ("Bearer short", "Bearer short"),  # under 8 characters is not a credential
])
def test_bearer_tokens_and_api_key_values_are_redacted(text: str, expected: str) -> None:
    assert Redactor().scrub(text) == expected


def test_the_longest_secret_is_replaced_first() -> None:
    redactor = Redactor(["abcdefgh", "abcdefgh-and-more"])
    assert redactor.scrub("x abcdefgh-and-more y") == "x [redacted] y"


def test_bad_format_arguments_do_not_raise_in_the_caller(sink: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = sink
    logger.info("two %s %s", SECRET)  # one argument short
    (entry,) = lines(buffer)
    assert entry["msg"].startswith("two %s %s") and SECRET not in buffer.getvalue()


def test_extra_fields_never_replace_the_standard_ones(sink: tuple[logging.Logger, io.StringIO]) -> None:
    logger, buffer = sink
    logger.info("real", extra={"level": "fake", "ts": "fake", "logger": "fake"})
    (entry,) = lines(buffer)
    assert (entry["level"], entry["logger"]) == ("info", logger.name) and entry["ts"] != "fake"


def test_configure_installs_the_json_sink_on_the_root_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    touched = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in touched]
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    try:
        redactor = logs.configure("warning", [SECRET])
        logging.getLogger("spendgate.test.configure").warning("key %s", SECRET)
        logging.getLogger("spendgate.test.configure").info("dropped")
    finally:  # tests leave logging as they found it
        for lg, (handlers, level, propagate) in zip(touched, saved, strict=True):
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)
    assert redactor.secrets == [SECRET]
    (entry,) = lines(buffer)
    assert entry["msg"] == "key [redacted]" and entry["level"] == "warning"
