"""The App API panel: the app's own OpenAI-compatible API switched on and off, its keys, its latest requests."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import gradio as gr

from .. import errors
from ..api.activity import RequestRecord
from ..api.keys import ApiKey, ApiKeys
from ..api.runner import ApiServer
from ..net import is_loopback
from ..store import Store
from .access import Access
from .feedback import user_errors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiView:
    """What the App API panel shows."""

    running: bool
    url: str
    host: str
    port: int
    origins: list[str]
    keys: list[ApiKey]
    requests: list[RequestRecord]


class ApiPart:
    """Handlers of the App API panel (owners only), and its start with the app."""

    def __init__(self, server: ApiServer, store: Store, access: Access) -> None:
        self.server = server
        self.store = store
        self.access = access

    @property
    def keys(self) -> ApiKeys:
        return self.server.service.keys

    def startup(self, port: int | None = None) -> None:
        """Start the API if it was on when the app last ran, or on `port` (the command line) for this run; a
        failure is told on the page, the app starts anyway."""
        settings = self.store.settings.app()
        if port is None and not settings["api_enabled"]:
            return
        try:
            self.server.start(settings["api_host"], port or settings["api_port"], settings["api_origins"])
        except errors.ApiStartFailed as exc:
            log.warning("The API did not start: %s", exc)
            self.store.notify(f"The API did not start: {exc}")

    def shutdown(self) -> None:
        self.server.stop()

    def view(self, request: gr.Request) -> ApiView:
        """Handler: the panel as it is now."""
        with user_errors("show the API"):
            self._owner(request)
            return self._view()

    def apply(self, enabled: bool, host: str, port: float | None, origins: str, request: gr.Request) -> ApiView:
        """Handler: save the API's settings and start, restart or stop it to match."""
        with user_errors("change the API"):
            self._owner(request)
            host = (host or "").strip() or "127.0.0.1"
            if port is None or port != int(port):
                raise errors.ApiStartFailed("The API's port must be a whole number from 1024 to 65535.")
            listed = [o.strip() for o in (origins or "").replace(",", "\n").splitlines() if o.strip()]
            if enabled:
                self.server.start(host, int(port), listed)
            else:
                self.server.stop()
            self.store.settings.update_app(api_enabled=bool(enabled), api_host=host, api_port=int(port),
                                           api_origins=listed)
            return self._view()

    def create_key(self, name: str, request: gr.Request) -> tuple[ApiView, str]:
        """Handler: a new key; its secret is returned this once."""
        with user_errors("make an API key"):
            self._owner(request)
            key, secret = self.keys.create(name)
            log.info("API key %r made (%s…)", key.name, key.hint)
            return self._view(), secret

    def revoke_key(self, key_id: str, request: gr.Request) -> ApiView:
        """Handler: revoke a key; the last one cannot go while the API listens on the network."""
        with user_errors("revoke the API key"):
            self._owner(request)
            keys = self.keys.all()
            if not any(k.id == key_id for k in keys):
                raise errors.ApiKeyRefused("Pick a key from the list.")
            if len(keys) == 1 and self.server.running and not is_loopback(self.server.host):
                raise errors.ApiKeyRefused(f"This is the last key, and the API listens on {self.server.host}, "
                                            "where it needs one: stop the API or move it to 127.0.0.1 first.")
            self.keys.revoke(key_id)
            log.info("API key %s revoked", key_id)
            return self._view()

    def _owner(self, request: gr.Request) -> None:
        self.access.require_owner(self.access.caller(request), "use the app's API")

    def _view(self) -> ApiView:
        """The API as it runs (which may be on `--api-port` for this run only), else as saved."""
        settings = self.store.settings.app()
        running = self.server.running
        return ApiView(running, self.server.url, self.server.host if running else settings["api_host"],
                       self.server.port if running else settings["api_port"], settings["api_origins"],
                       self.keys.all(), self.server.service.requests.latest())
