"""Webhook signing (Standard Webhooks test vector), verification, egress check, retry schedule."""

from __future__ import annotations

import random

import orjson
import pytest

from policies.webhooks import (
    EgressRefused,
    check_egress,
    event_body,
    retry_delay,
    secret_bytes,
    should_retry,
    sign,
    signed_headers,
    verify,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    body = b'{"test": 2432232314}'
    assert sign(secret_bytes(SECRET), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")


def test_a_plain_secret_is_used_as_raw_bytes() -> None:
    assert secret_bytes("not-base64!") == b"not-base64!"


def test_verify_accepts_its_own_signature_and_rejects_tampering() -> None:
    key = secret_bytes(SECRET)
    body = event_body("budget.threshold", {"budget": "org-monthly", "pct": 80.0}, at=1_800_000_000.5)
    headers = signed_headers(key, "msg_1", 1_800_000_000, body)
    assert verify(key, headers, body, now=1_800_000_010)
    assert not verify(key, headers, body + b" ", now=1_800_000_010)
    assert not verify(b"other", headers, body, now=1_800_000_010)
    assert not verify(key, headers, body, now=1_800_000_000 + 301)  # replayed too late
    assert not verify(key, {**headers, "webhook-timestamp": "soon"}, body)
    rotated = {**headers, "webhook-signature": "v1,AAAA " + headers["webhook-signature"]}
    assert verify(key, rotated, body, now=1_800_000_000)


def test_event_body_shape() -> None:
    parsed = orjson.loads(event_body("approval.requested", {"approval_id": "ap_1"}, at=0.25))
    assert parsed == {"type": "approval.requested", "timestamp": "1970-01-01T00:00:00.250Z",
                      "data": {"approval_id": "ap_1"}}
    with pytest.raises(ValueError):
        event_body("budget.nope", {}, at=0)


def fake_dns(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    return lambda host, port: answers.get(host, [])


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "172.16.5.5", "169.254.1.1",
                                     "::1", "fd12::1", "100.64.0.1", "0.0.0.0"])
def test_private_and_local_targets_are_refused(address: str) -> None:
    with pytest.raises(EgressRefused):
        check_egress("https://hooks.example.com/x", allow_private=False,
                     resolve=fake_dns({"hooks.example.com": [address]}))


def test_one_private_answer_among_public_ones_is_refused() -> None:
    with pytest.raises(EgressRefused):
        check_egress("https://hooks.example.com/x", allow_private=False,
                     resolve=fake_dns({"hooks.example.com": ["93.184.216.34", "10.0.0.1"]}))


def test_metadata_is_refused_even_when_private_networks_are_allowed() -> None:
    with pytest.raises(EgressRefused, match="metadata"):
        check_egress("http://169.254.169.254/latest/meta-data", allow_private=True, resolve=fake_dns({}))


def test_allowed_private_target_is_pinned_to_the_checked_addresses() -> None:
    target = check_egress("http://receiver.internal:8080/hook", allow_private=True,
                          resolve=fake_dns({"receiver.internal": ["10.0.0.7"]}))
    assert (target.host, target.port, target.addresses) == ("receiver.internal", 8080, ("10.0.0.7",))
    public = check_egress("https://hooks.example.com/x", allow_private=False,
                          resolve=fake_dns({"hooks.example.com": ["93.184.216.34"]}))
    assert public.port == 443 and public.addresses == ("93.184.216.34",)


@pytest.mark.parametrize("url", ["ftp://x.example.com/", "https://user:pw@hooks.example.com/", "https:///x",
                                 "https://nowhere.example/"])
def test_malformed_or_unresolvable_urls_are_refused(url: str) -> None:
    with pytest.raises(EgressRefused):
        check_egress(url, allow_private=False, resolve=fake_dns({}))


def test_retry_delay_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        delay = retry_delay(attempt, base_s=1, cap_s=60, rng=rng)
        assert 0 <= delay <= min(60, 2**attempt)
    assert max(retry_delay(40, base_s=1, cap_s=60, rng=rng) for _ in range(200)) > 30


def test_which_answers_are_retried() -> None:
    assert should_retry(None) and should_retry(500) and should_retry(503) and should_retry(429)
    assert not should_retry(200) and not should_retry(204) and not should_retry(400) and not should_retry(410)
