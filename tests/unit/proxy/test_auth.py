"""KeyRing: the presented token is hashed, then looked up; Principal carries org, pins and role."""

from __future__ import annotations

import hashlib

import pytest

from proxy.auth import KeyRing, Principal, hash_key, new_key, presented_token
from proxy.errors import Forbidden, Unauthorized
from proxy.settings import KeyConfig

AGENT_KEY = "sg-agent-key-0123456789"
ADMIN_KEY = "sg-admin-key-9876543210"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing([
        KeyConfig(name="planner", key_sha256=sha(AGENT_KEY), org="acme", project="web", agent="planner"),
        KeyConfig(name="root", key_sha256=sha(ADMIN_KEY), org="*", role="admin"),
    ])


def test_hash_key_is_hex_sha256_and_new_keys_are_fresh() -> None:
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    keys = {new_key() for _ in range(20)}
    assert len(keys) == 20 and all(k.startswith("sg-") and len(k) >= 40 for k in keys)


@pytest.mark.parametrize("headers", [
    {"authorization": f"Bearer {AGENT_KEY}"},
    {"authorization": f"bearer   {AGENT_KEY}  "},
    {"x-api-key": AGENT_KEY},
    {"x-api-key": f" {AGENT_KEY}\t"},
])
def test_bearer_and_x_api_key_authenticate(ring: KeyRing, headers: dict[str, str]) -> None:
    assert ring.authenticate(headers) == Principal("planner", "acme", "agent", project="web", agent="planner")


def test_a_configured_hash_authenticates_its_key_but_not_itself(ring: KeyRing) -> None:
    assert ring.authenticate({"x-api-key": ADMIN_KEY}).key_name == "root"
    with pytest.raises(Unauthorized, match="invalid API key"):
        ring.authenticate({"authorization": f"Bearer {sha(ADMIN_KEY)}"})  # a leaked config is no credential


def test_an_unknown_key_is_unauthorized(ring: KeyRing) -> None:
    with pytest.raises(Unauthorized) as info:
        ring.authenticate({"authorization": "Bearer sg-not-a-key"})
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    assert "sg-not-a-key" not in info.value.message


@pytest.mark.parametrize("headers", [
    {}, {"authorization": ""}, {"authorization": "Bearer "}, {"authorization": "Bearer"}, {"x-api-key": "  "},
    {"authorization": "Basic xyz"}, {"authorization": f"Basic {AGENT_KEY}"}, {"authorization": AGENT_KEY},
])
def test_a_missing_or_non_bearer_key_is_unauthorized(ring: KeyRing, headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized, match="missing API key"):
        ring.authenticate(headers)


def test_presented_token_prefers_authorization() -> None:
    assert presented_token({"authorization": "Bearer a-token", "x-api-key": "other"}) == "a-token"
    assert presented_token({"x-api-key": "k"}) == "k"
    assert presented_token({}) is None


def test_len_counts_the_configured_keys(ring: KeyRing) -> None:
    assert len(ring) == 2 and len(KeyRing([])) == 0


@pytest.mark.parametrize("org, role, expected", [
    ("*", "admin", True), ("*", "viewer", False), ("*", "agent", False), ("acme", "admin", False),
])
def test_all_orgs_only_for_an_admin_of_org_star(org: str, role: str, expected: bool) -> None:
    assert Principal("k", org, role).all_orgs is expected


def test_require_passes_a_listed_role_and_refuses_the_others() -> None:
    viewer = Principal("v", "acme", "viewer")
    viewer.require("viewer", "admin")
    with pytest.raises(Forbidden) as info:
        viewer.require("admin")
    assert info.value.status == 403 and info.value.code == "forbidden"
    assert "viewer" in info.value.message and "admin" in info.value.message
