"""Budget alerts for webhook receivers: Standard Webhooks signing, the egress check, and the retry schedule.

Delivery itself runs from the store's outbox (never on the hot path); this module holds the parts that
must be exactly right and are pure: what is signed and how, which addresses may be called, when to retry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

EVENTS = ("budget.threshold", "budget.exceeded", "approval.requested", "approval.decided")
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300
# Cloud metadata endpoints, refused even when private networks are allowed.
_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
                       ipaddress.ip_address("100.100.100.200")})

Resolver = Callable[[str, int], Iterable[str]]  # (host, port) -> IP address strings


class EgressRefused(ValueError):
    """The webhook URL points somewhere spendgate will not send to."""


def secret_bytes(secret: str) -> bytes:
    """A `whsec_` secret is base64 after its prefix (Standard Webhooks); any other is used as raw bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode("utf-8")


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, as the Standard Webhooks spec defines."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float | None = None,
           tolerance_s: int = DEFAULT_TOLERANCE_S) -> bool:
    """What a receiver does: the timestamp is recent and one of the space-separated signatures matches."""
    try:
        msg_id, stamp = headers["webhook-id"], int(headers["webhook-timestamp"])
        offered = headers["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - stamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, stamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def event_body(event_type: str, data: Mapping[str, Any], at: float) -> bytes:
    """The payload every receiver gets: `{type, timestamp (ISO 8601 UTC), data}`."""
    if event_type not in EVENTS:
        raise ValueError(f"unknown webhook event {event_type!r}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"
    return orjson.dumps({"type": event_type, "timestamp": stamp, "data": data})


@dataclass(frozen=True, slots=True)
class Target:
    """A checked destination: connect to one of `addresses`, never to a fresh DNS answer (no rebinding)."""

    url: str
    host: str
    port: int
    addresses: tuple[str, ...]


def check_egress(url: str, *, allow_private: bool, resolve: Resolver) -> Target:
    """Refuse loopback, private, link-local, multicast, reserved and metadata addresses unless the webhook
    entry allows private networks (metadata addresses are refused always). Only http(s), no userinfo."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EgressRefused("webhook URLs must be http(s)://host/...")
    if parts.username or parts.password:
        raise EgressRefused("webhook URLs may not carry credentials")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(parts.hostname)]
    except ValueError:
        addresses = [ipaddress.ip_address(a) for a in resolve(parts.hostname, port)]
    if not addresses:
        raise EgressRefused(f"{parts.hostname} does not resolve")
    for address in addresses:
        if address in _METADATA:
            raise EgressRefused(f"{parts.hostname} resolves to a cloud metadata address")
        if not allow_private and not address.is_global:
            raise EgressRefused(f"{parts.hostname} resolves to a non-public address ({address}); set "
                                "`allow_private_network: true` on this webhook to allow it")
        if address.is_multicast or address.is_unspecified:
            raise EgressRefused(f"{parts.hostname} resolves to an address that cannot be called ({address})")
    return Target(url, parts.hostname, port, tuple(str(a) for a in addresses))


def retry_delay(attempt: int, *, base_s: float = 1.0, cap_s: float = 3600.0,
                rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 30)))
    return (rng or random).uniform(0, ceiling)


def should_retry(status: int | None) -> bool:
    """None is a connection failure or timeout. 2xx is done; 410 means the receiver is gone for good."""
    if status is None:
        return True
    return status == 429 or status == 408 or status >= 500
