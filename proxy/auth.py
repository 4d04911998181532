"""Virtual keys: the presented token is hashed, looked up, and turned into a Principal (org, pins, role)."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proxy.errors import Forbidden, Unauthorized
from proxy.settings import KeyConfig

ROLES = ("agent", "viewer", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name, its org, optional project / agent pins, and its role."""

    key_name: str
    org: str
    role: str
    project: str | None = None
    agent: str | None = None
    allowed_models: tuple[str, ...] | None = None
    require_tags: tuple[str, ...] = ()

    def may_use(self, model: str) -> bool:
        """Whether this key may call `model` (no `allowed_models` list: any configured model)."""
        if self.allowed_models is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.allowed_models)

    @property
    def all_orgs(self) -> bool:
        """An admin of org "*" may read every org (and pick one with X-Org-ID)."""
        return self.org == "*" and self.role == "admin"

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise Forbidden(f"this key's role ({self.role}) may not do this; it needs {' or '.join(roles)}")


def hash_key(key: str) -> str:
    """Hex sha256 of a virtual key: the only form in which keys are stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh high-entropy virtual key (256 bits)."""
    return "sg-" + secrets.token_urlsafe(32)


class KeyRing:
    """The configured keys, indexed by hash. Every presented token is hashed before any lookup."""

    def __init__(self, keys: Iterable[KeyConfig]) -> None:
        self._by_hash: dict[str, tuple[str, Principal]] = {
            k.key_sha256: (k.key_sha256, Principal(k.name, k.org, k.role, k.project, k.agent, k.allowed_models,
                                                   k.require_tags))
            for k in keys
        }

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        token = presented_token(headers)
        if not token:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`")
        digest = hash_key(token)
        # The lookup is keyed by the sha256 of the token, so its timing says nothing an attacker can steer
        # towards a stored key; the stored hash is then confirmed with a constant-time comparison.
        entry = self._by_hash.get(digest)
        if entry is None or not hmac.compare_digest(entry[0], digest):
            raise Unauthorized("invalid API key")
        return entry[1]


def presented_token(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None
