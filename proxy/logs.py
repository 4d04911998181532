"""Structured JSON logs with one redaction layer at the sink: no registered secret ever reaches a log line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName", "color_message"}
# Mapping keys whose values are credentials whatever they look like (a headers dict logged as an extra field).
_SECRET_FIELD = re.compile(r"(?i)^(authorization|proxy-authorization|x-api-key|api[-_]?key|secret|password|token)$")
# The request id of the proxied call the current task is serving (set by proxy.relay and proxy.streaming):
# every line logged meanwhile carries it, whichever module logs it. Per task, so concurrent calls never mix.
REQUEST_ID: ContextVar[str | None] = ContextVar("spendgate_request_id", default=None)
_BEARER = re.compile(r"(?i)(bearer\s+|x-api-key[\"':=\s]+|api[-_]key[\"':=\s]+)([A-Za-z0-9._\-]{8,})")


class Redactor(logging.Filter):
    """Replaces every known secret (provider keys) and anything shaped like a credential with [redacted]."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return _BEARER.sub(r"\1[redacted]", text)

    def scrub_value(self, value: object) -> object:
        """`value` with every string inside it scrubbed (extra fields may be dicts, e.g. headers)."""
        if isinstance(value, str):
            return self.scrub(value)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, dict):
            return {self.scrub(str(k)): "[redacted]" if _SECRET_FIELD.match(str(k)) else self.scrub_value(v)
                    for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.scrub_value(v) for v in value]
        return self.scrub(str(value))  # what the JSON sink would print (orjson default=str)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad format args: log what there is rather than raise in the caller
            message = f"{record.msg} {record.args!r}"
        record.msg = self.scrub(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, self.scrub_value(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():  # extra fields; they never replace the four above
            if key not in _STANDARD and not key.startswith("_"):
                entry.setdefault(key, value)
        if "request_id" not in entry:
            request_id = REQUEST_ID.get()
            if request_id is not None:
                entry["request_id"] = request_id
        if record.exc_text:
            entry["exc"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "info", secrets: Iterable[str] = ()) -> Redactor:
    """Install the JSON sink on the root logger (CLI only; libraries and tests leave logging alone)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    redactor = Redactor(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    return redactor
