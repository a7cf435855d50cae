"""Who is asking: owners and guests, and the one check every handler goes through.

Without a login the app has one user, the local owner. With logins, users from `--auth` /
`--auth-file` are owners and users from `--guest` / `--guest-file` are guests: guests chat with
the models the owners offer, keep their own conversations and settings, and never touch a path
on the server. Handlers call `Access.caller(request)` first and pass the `Caller` on.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import Enum

import gradio as gr

from ..errors import AccessDenied
from ..store import LOCAL_USER, RESERVED_NAME


class Role(Enum):
    """What a user may do."""

    OWNER = "owner"
    GUEST = "guest"


@dataclass(frozen=True)
class Caller:
    """The user behind one request, and the browser tab it came from."""

    user: str
    role: Role
    session: str = ""

    @property
    def is_owner(self) -> bool:
        """Whether this user may change the app (models, folders, engine)."""
        return self.role is Role.OWNER


class Access:
    """The logins this app accepts and the role of each."""

    def __init__(self, owners: dict[str, str] | None = None, guests: dict[str, str] | None = None) -> None:
        self._owners = dict(owners or {})
        self._guests = dict(guests or {})
        if LOCAL_USER in self._owners or LOCAL_USER in self._guests:
            raise ValueError(RESERVED_NAME)

    @property
    def first_owner(self) -> str | None:
        """The owner named first (who keeps what was made without a login), if logins are on."""
        return next(iter(self._owners), None)

    @property
    def login_required(self) -> bool:
        """Whether the app asks for a login (otherwise there is one local owner)."""
        return bool(self._owners or self._guests)

    def authenticate(self, user: str, password: str) -> bool:
        """Gradio's login check: a known user with the right password (compared in constant time)."""
        expected = self._owners.get(user, self._guests.get(user))
        return expected is not None and hmac.compare_digest(expected.encode(), str(password).encode())

    def caller(self, request: gr.Request | None) -> Caller:
        """The user of a request; refuses a request without a login when logins are required."""
        session = (getattr(request, "session_hash", None) or "") if request is not None else ""
        if not self.login_required:
            return Caller(LOCAL_USER, Role.OWNER, session)
        user = getattr(request, "username", None) if request is not None else None
        if user in self._owners:
            return Caller(user, Role.OWNER, session)
        if user in self._guests:
            return Caller(user, Role.GUEST, session)
        raise AccessDenied("Sign in first.")

    @staticmethod
    def require_owner(caller: Caller, action: str) -> None:
        """Refuse a guest an owner's action, without looking at anything the request names."""
        if not caller.is_owner:
            raise AccessDenied(f"Only the owner of this app can {action}.")
