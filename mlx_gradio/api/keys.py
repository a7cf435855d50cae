"""API keys: made by an owner, shown once, kept only as a hash, revoked by id."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from ..store import Records

PREFIX = "mlxg-"
MAX_NAME = 60


@dataclass(frozen=True)
class ApiKey:
    """A key as the tab lists it: never the secret itself."""

    id: str
    name: str
    hint: str  # the secret's first characters, so the owner can tell keys apart
    created: float


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class ApiKeys:
    """The keys the API accepts, in one table of the settings store."""

    def __init__(self, records: Records) -> None:
        self.records = records

    def all(self) -> list[ApiKey]:
        """Every key, oldest first."""
        documents = sorted(self.records.all(), key=lambda d: d["created"])
        return [ApiKey(d["id"], d["name"], d["hint"], d["created"]) for d in documents]

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key named `name`; returns it and its secret, which is not kept and cannot be shown again."""
        name = " ".join(str(name or "").split())[:MAX_NAME] or "key"
        secret = PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(uuid.uuid4().hex, name, secret[: len(PREFIX) + 4], time.time())
        self.records.save({"id": key.id, "name": key.name, "hint": key.hint, "created": key.created,
                           "hash": _digest(secret)})
        return key, secret

    def revoke(self, key_id: str) -> None:
        """Remove a key: requests that send it are refused from now on."""
        self.records.remove(key_id)

    def match(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None."""
        digest = _digest(secret)
        for document in self.records.all():
            if hmac.compare_digest(document["hash"], digest):
                return ApiKey(document["id"], document["name"], document["hint"], document["created"])
        return None
